//! Wire-level checks: status codes and `Status` bodies for bad input,
//! discovery documents, selectors, subresources and garbage collection,
//! spoken over plain HTTP/1.1 so nothing in a client library hides them.

use std::time::Duration;

use kube_sim::{KubeSim, Options};
use serde_json::{json, Value};
use std::io::{Read, Write};

struct Http {
    sim: KubeSim,
}

struct Reply {
    code: u16,
    body: Value,
    text: String,
}

impl Http {
    async fn start() -> Http {
        Http {
            sim: KubeSim::start(Options::default()).await.expect("start"),
        }
    }

    async fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let addr = self.sim.addr();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let body = body.to_vec();
        let raw = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            s.write_all(head.as_bytes()).expect("write");
            s.write_all(&body).expect("write");
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).expect("read");
            raw
        })
        .await
        .expect("join");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").expect("http response");
        let code: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let payload = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        let body = serde_json::from_str(&payload).unwrap_or(Value::Null);
        Reply {
            code,
            body,
            text: payload,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, "application/json", b"").await
    }

    async fn post(&self, path: &str, v: &Value) -> Reply {
        self.send("POST", path, "application/json", v.to_string().as_bytes())
            .await
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

fn assert_status(r: &Reply, code: u16, reason: &str) {
    assert_eq!(r.code, code, "{}", r.text);
    assert_eq!(r.body["kind"], "Status", "{}", r.text);
    assert_eq!(r.body["code"], code);
    assert_eq!(r.body["reason"], reason, "{}", r.text);
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_kubernetes_status_errors() {
    let h = Http::start().await;
    let r = h.send("POST", CMS, "application/json", b"{not json").await;
    assert_status(&r, 400, "BadRequest");
    let r = h.post(CMS, &json!({"metadata": {}})).await;
    assert_status(&r, 422, "Invalid");
    let r = h.post(CMS, &json!({"metadata": {"name": "UPPER"}})).await;
    assert_status(&r, 422, "Invalid");
    let r = h
        .post(
            "/api/v1/namespaces/missing/configmaps",
            &json!({"metadata": {"name": "a"}}),
        )
        .await;
    assert_status(&r, 404, "NotFound");
    let r = h.post(CMS, &json!({"metadata": {"name": "a"}})).await;
    assert_eq!(r.code, 201);
    let r = h.post(CMS, &json!({"metadata": {"name": "a"}})).await;
    assert_status(&r, 409, "AlreadyExists");
    let r = h.get(&format!("{CMS}?labelSelector=a%20in%20(b")).await;
    assert_status(&r, 400, "BadRequest");
    let r = h.get(&format!("{CMS}?fieldSelector=nonsense")).await;
    assert_status(&r, 400, "BadRequest");
    let r = h
        .send("PATCH", &format!("{CMS}/a"), "text/plain", b"{}")
        .await;
    assert_status(&r, 415, "UnsupportedMediaType");
    let r = h
        .send(
            "PATCH",
            &format!("{CMS}/a"),
            "application/json-patch+json",
            b"{}",
        )
        .await;
    assert_status(&r, 400, "BadRequest");
    let r = h
        .send(
            "PATCH",
            &format!("{CMS}/a"),
            "application/apply-patch+yaml",
            b"apiVersion: v1\nkind: ConfigMap\n",
        )
        .await;
    assert_status(&r, 422, "Invalid");
    let r = h
        .send("PUT", &format!("{CMS}/a"), "application/json", b"[1,2]")
        .await;
    assert_status(&r, 400, "BadRequest");
    let r = h
        .send("POST", &format!("{CMS}/a"), "application/json", b"{}")
        .await;
    assert_status(&r, 405, "MethodNotAllowed");
    let r = h.get("/api/v1/namespaces/default/nothings").await;
    assert_status(&r, 404, "NotFound");
    let r = h.get(&format!("{CMS}/a/status")).await;
    assert_status(&r, 404, "NotFound");
    let r = h.get(&format!("{CMS}?watch=1&resourceVersion=abc")).await;
    assert_status(&r, 400, "BadRequest");
    let r = h.get(&format!("{CMS}/nope")).await;
    assert_status(&r, 404, "NotFound");
    assert_eq!(r.body["message"], "configmaps \"nope\" not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_documents() {
    let h = Http::start().await;
    let v = h.get("/version").await;
    assert_eq!(v.body["major"], "1");
    let api = h.get("/api").await;
    assert_eq!(api.body["versions"], json!(["v1"]));
    let apis = h.get("/apis").await;
    let groups: Vec<&str> = apis.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for g in [
        "apps",
        "rbac.authorization.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(groups.contains(&g), "{g}");
    }
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "jobs.flink.example.com"},
        "spec": {"group": "flink.example.com", "scope": "Namespaced",
                 "names": {"plural": "jobs", "kind": "Job"},
                 "versions": [{"name": "v1beta1", "served": true, "storage": true,
                               "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.parallelism", "statusReplicasPath": ".status.parallelism"}}}]}
    });
    let r = h
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd,
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.text);
    let list = h.get("/apis/flink.example.com/v1beta1").await;
    let names: Vec<&str> = list.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["jobs", "jobs/status", "jobs/scale"]);
    let openapi = h.get("/openapi/v3").await;
    assert!(openapi.body["paths"]
        .get("apis/flink.example.com/v1beta1")
        .is_some());

    // The scale subresource of the custom resource works.
    let job = json!({"apiVersion": "flink.example.com/v1beta1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"parallelism": 2}});
    assert_eq!(
        h.post(
            "/apis/flink.example.com/v1beta1/namespaces/default/jobs",
            &job
        )
        .await
        .code,
        201
    );
    let scale = h
        .get("/apis/flink.example.com/v1beta1/namespaces/default/jobs/j/scale")
        .await;
    assert_eq!(scale.body["kind"], "Scale");
    assert_eq!(scale.body["spec"]["replicas"], 2);
    let r = h
        .send(
            "PATCH",
            "/apis/flink.example.com/v1beta1/namespaces/default/jobs/j/scale",
            "application/merge-patch+json",
            br#"{"spec":{"replicas":4}}"#,
        )
        .await;
    assert_eq!(r.body["spec"]["replicas"], 4, "{}", r.text);
    let j = h
        .get("/apis/flink.example.com/v1beta1/namespaces/default/jobs/j")
        .await;
    assert_eq!(j.body["spec"]["parallelism"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_generate_name_and_pod_status() {
    let h = Http::start().await;
    let pods = "/api/v1/namespaces/default/pods";
    for (name, tier) in [("a", "web"), ("b", "db"), ("c", "web")] {
        let p = json!({"metadata": {"name": name, "labels": {"tier": tier}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        assert_eq!(h.post(pods, &p).await.code, 201);
    }
    let gen = h
        .post(pods, &json!({"metadata": {"generateName": "worker-"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}))
        .await;
    assert!(gen.body["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("worker-"));
    let names = |r: &Reply| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = h.get(&format!("{pods}?labelSelector=tier%3Dweb")).await;
    assert_eq!(names(&r), vec!["a", "c"]);
    let r = h
        .get(&format!("{pods}?labelSelector=tier%20notin%20(web)"))
        .await;
    assert_eq!(names(&r).len(), 2, "b and the generated pod");
    let r = h.get(&format!("{pods}?labelSelector=!tier")).await;
    assert_eq!(names(&r).len(), 1);
    // Only the status subresource changes status.
    let r = h
        .send(
            "PATCH",
            &format!("{pods}/a/status"),
            "application/merge-patch+json",
            br#"{"status":{"phase":"Running"}}"#,
        )
        .await;
    assert_eq!(r.body["status"]["phase"], "Running", "{}", r.text);
    let r = h
        .get(&format!("{pods}?fieldSelector=status.phase%3DRunning"))
        .await;
    assert_eq!(names(&r), vec!["a"]);
    let r = h
        .get("/api/v1/pods?fieldSelector=status.phase!%3DRunning,metadata.namespace%3Ddefault")
        .await;
    assert_eq!(names(&r).len(), 3);
    // Logs are served as stored text.
    h.sim.append_pod_log("default", "a", "line 1\nline 2\n");
    let r = h.get(&format!("{pods}/a/log?tailLines=1")).await;
    assert_eq!(r.text, "line 2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_and_owner_garbage_collection() {
    let h = Http::start().await;
    let owner = h
        .post(
            CMS,
            &json!({"metadata": {"name": "owner", "finalizers": ["example.com/keep"]}}),
        )
        .await;
    let uid = owner.body["metadata"]["uid"].as_str().unwrap().to_string();
    for name in ["dep1", "dep2"] {
        let dep = json!({"metadata": {"name": name, "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "blockOwnerDeletion": true}
        ]}});
        assert_eq!(h.post(CMS, &dep).await.code, 201);
    }
    // Foreground: dependents go first; the owner waits for its own finalizer.
    let r = h
        .send(
            "DELETE",
            &format!("{CMS}/owner"),
            "application/json",
            br#"{"propagationPolicy":"Foreground"}"#,
        )
        .await;
    assert_eq!(r.code, 200);
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(h.get(&format!("{CMS}/dep1")).await.code, 404);
    assert_eq!(h.get(&format!("{CMS}/dep2")).await.code, 404);
    let o = h.get(&format!("{CMS}/owner")).await;
    assert_eq!(
        o.body["metadata"]["finalizers"],
        json!(["example.com/keep"]),
        "{}",
        o.text
    );
    let r = h
        .send(
            "PATCH",
            &format!("{CMS}/owner"),
            "application/merge-patch+json",
            br#"{"metadata":{"finalizers":null}}"#,
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(h.get(&format!("{CMS}/owner")).await.code, 404);

    // Background: the owner goes at once, dependents right after.
    let owner = h.post(CMS, &json!({"metadata": {"name": "o2"}})).await;
    let uid = owner.body["metadata"]["uid"].as_str().unwrap().to_string();
    let dep = json!({"metadata": {"name": "d2", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o2", "uid": uid}]}});
    h.post(CMS, &dep).await;
    h.send("DELETE", &format!("{CMS}/o2"), "application/json", b"")
        .await;
    assert_eq!(h.get(&format!("{CMS}/d2")).await.code, 404);

    // Orphan: the dependent stays, without the owner reference.
    let owner = h.post(CMS, &json!({"metadata": {"name": "o3"}})).await;
    let uid = owner.body["metadata"]["uid"].as_str().unwrap().to_string();
    let dep = json!({"metadata": {"name": "d3", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o3", "uid": uid}]}});
    h.post(CMS, &dep).await;
    h.send(
        "DELETE",
        &format!("{CMS}/o3?propagationPolicy=Orphan"),
        "application/json",
        b"",
    )
    .await;
    let d3 = h.get(&format!("{CMS}/d3")).await;
    assert_eq!(d3.code, 200);
    assert!(
        d3.body["metadata"].get("ownerReferences").is_none(),
        "{}",
        d3.text
    );

    // A stale resourceVersion in a merge patch conflicts.
    let r = h
        .send(
            "PATCH",
            &format!("{CMS}/d3"),
            "application/merge-patch+json",
            br#"{"metadata":{"resourceVersion":"1"},"data":{"x":"y"}}"#,
        )
        .await;
    assert_status(&r, 409, "Conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_follow_their_schema() {
    let h = Http::start().await;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "pipelines.rill.example"},
        "spec": {"group": "rill.example", "scope": "Namespaced",
                 "names": {"plural": "pipelines", "kind": "Pipeline"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                   "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                     "spec": {"type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string"},
                        "parallelism": {"type": "integer", "default": 2}}},
                     "status": {"type": "object", "properties": {"state": {"type": "string"}}}}}}}]}
    });
    assert_eq!(
        h.post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd
        )
        .await
        .code,
        201
    );
    let url = "/apis/rill.example/v1/namespaces/default/pipelines";
    let ok = json!({"apiVersion": "rill.example/v1", "kind": "Pipeline", "metadata": {"name": "p"}, "spec": {"image": "rill", "typo": 1}});
    let r = h.post(url, &ok).await;
    assert_eq!(r.code, 201, "{}", r.text);
    assert_eq!(r.body["spec"]["parallelism"], 2, "defaulted");
    assert!(r.body["spec"].get("typo").is_none(), "pruned");
    let bad = json!({"apiVersion": "rill.example/v1", "kind": "Pipeline", "metadata": {"name": "q"}, "spec": {"parallelism": "many"}});
    let r = h.post(url, &bad).await;
    assert_status(&r, 422, "Invalid");
    let msg = r.body["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.image: Required value") && msg.contains("spec.parallelism"),
        "{msg}"
    );
    let r = h
        .send(
            "PATCH",
            &format!("{url}/p/status"),
            "application/merge-patch+json",
            br#"{"status":{"state":5}}"#,
        )
        .await;
    assert_status(&r, 422, "Invalid");
}
