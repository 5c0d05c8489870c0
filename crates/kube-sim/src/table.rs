//! Server-side printing: `meta.k8s.io/v1` `Table` responses.
//!
//! `kubectl get` without `-o` asks the server for a Table and prints its
//! columns as they come, so the columns users see (`READY`, `STATUS`, a
//! CRD's `additionalPrinterColumns`, …) are decided here. Pure functions of
//! the objects, the type and the current time.

use serde_json::{json, Value};

use crate::meta;
use crate::resources::ResourceType;

/// One column: header, type and how to compute the cell.
struct Column {
    name: String,
    kind: &'static str,
    priority: i64,
    cell: Cell,
}

enum Cell {
    Name,
    Age,
    Path(Vec<PathStep>, &'static str),
    Fixed(fn(&Value) -> Value),
}

#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Key(String),
    Index(usize),
    /// `[?(@.field=="value")]`
    Filter(String, String),
}

/// Parse the simple JSONPath subset printer columns use:
/// `.a.b`, `.a[0]`, `.a[?(@.type=="Ready")].status`.
fn parse_json_path(p: &str) -> Option<Vec<PathStep>> {
    let p = p.trim().trim_start_matches('{').trim_end_matches('}');
    let mut steps = Vec::new();
    let mut rest = p.strip_prefix('.').unwrap_or(p);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, value) = f.split_once("==")?;
                let value = value.trim().trim_matches('"').trim_matches('\'');
                steps.push(PathStep::Filter(
                    field.trim().to_string(),
                    value.to_string(),
                ));
            } else {
                steps.push(PathStep::Index(inner.parse().ok()?));
            }
            rest = &r[end + 1..];
            rest = rest.strip_prefix('.').unwrap_or(rest);
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            steps.push(PathStep::Key(rest[..end].to_string()));
            rest = &rest[end..];
            rest = rest.strip_prefix('.').unwrap_or(rest);
        }
    }
    Some(steps)
}

fn eval(obj: &Value, steps: &[PathStep]) -> Option<Value> {
    let mut cur = obj;
    for s in steps {
        cur = match s {
            PathStep::Key(k) => cur.get(k)?,
            PathStep::Index(i) => cur.get(*i)?,
            PathStep::Filter(f, v) => cur
                .as_array()?
                .iter()
                .find(|x| x.get(f).and_then(Value::as_str) == Some(v.as_str()))?,
        };
    }
    Some(cur.clone())
}

/// Parse `YYYY-MM-DDTHH:MM:SS(.frac)?Z` into seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Kubernetes' short human duration (`45s`, `3m20s`, `5h`, `2d3h`, …).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        format!("{}y{}d", d / 365, d % 365)
    } else {
        format!("{}y", d / 365)
    }
}

fn age_of(obj: &Value, now: i64) -> Value {
    match meta::str_at(obj, &["metadata", "creationTimestamp"]).and_then(parse_rfc3339) {
        Some(t) => json!(human_duration(now - t)),
        None => json!("<unknown>"),
    }
}

fn pod_ready(p: &Value) -> Value {
    let total = meta::get_path(p, &["spec", "containers"])
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = meta::get_path(p, &["status", "containerStatuses"])
        .and_then(Value::as_array)
        .map_or(0, |cs| {
            cs.iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count()
        });
    json!(format!("{ready}/{total}"))
}

fn pod_status(p: &Value) -> Value {
    if meta::is_deleting(p) {
        return json!("Terminating");
    }
    let waiting = meta::get_path(p, &["status", "containerStatuses"])
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter().find_map(|c| {
                c.get("state")
                    .and_then(|s| s.get("waiting").or_else(|| s.get("terminated")))
                    .and_then(|w| w.get("reason"))
                    .and_then(Value::as_str)
                    .map(String::from)
            })
        });
    json!(
        waiting.unwrap_or_else(|| meta::str_at(p, &["status", "phase"])
            .unwrap_or("Unknown")
            .to_string())
    )
}

fn pod_restarts(p: &Value) -> Value {
    json!(meta::get_path(p, &["status", "containerStatuses"])
        .and_then(Value::as_array)
        .map_or(0, |cs| cs
            .iter()
            .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
            .sum::<i64>()))
}

fn deploy_ready(d: &Value) -> Value {
    let ready = meta::get_path(d, &["status", "readyReplicas"])
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let want = meta::get_path(d, &["spec", "replicas"])
        .and_then(Value::as_i64)
        .unwrap_or(0);
    json!(format!("{ready}/{want}"))
}

fn int_at(path: &'static [&'static str]) -> impl Fn(&Value) -> Value {
    move |o| json!(meta::get_path(o, path).and_then(Value::as_i64).unwrap_or(0))
}

fn data_count(o: &Value) -> Value {
    let n = |k: &str| o.get(k).and_then(Value::as_object).map_or(0, |m| m.len());
    json!(n("data") + n("binaryData"))
}

fn service_ports(s: &Value) -> Value {
    let ports: Vec<String> = meta::get_path(s, &["spec", "ports"])
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p.get("port").and_then(Value::as_i64).unwrap_or(0),
                        p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    json!(if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    })
}

fn col(name: &str, kind: &'static str, cell: Cell) -> Column {
    Column {
        name: name.into(),
        kind,
        priority: 0,
        cell,
    }
}

fn columns(rt: &ResourceType, crd: Option<&Value>, version: &str) -> Vec<Column> {
    let name = col("Name", "string", Cell::Name);
    let age = col("Age", "string", Cell::Age);
    let fixed = |n: &str, kind: &'static str, f: fn(&Value) -> Value| col(n, kind, Cell::Fixed(f));
    let path = |n: &str, p: &str| {
        col(
            n,
            "string",
            Cell::Path(parse_json_path(p).unwrap_or_default(), "string"),
        )
    };
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => vec![
            name,
            fixed("Ready", "string", pod_ready),
            fixed("Status", "string", pod_status),
            fixed("Restarts", "string", pod_restarts),
            age,
            Column {
                priority: 1,
                ..path("IP", ".status.podIP")
            },
            Column {
                priority: 1,
                ..path("Node", ".spec.nodeName")
            },
        ],
        ("apps", "deployments") => vec![
            name,
            fixed("Ready", "string", deploy_ready),
            fixed("Up-to-date", "integer", |d| {
                int_at(&["status", "updatedReplicas"])(d)
            }),
            fixed("Available", "integer", |d| {
                int_at(&["status", "availableReplicas"])(d)
            }),
            age,
        ],
        ("apps", "replicasets") => vec![
            name,
            fixed("Desired", "integer", |d| int_at(&["spec", "replicas"])(d)),
            fixed("Current", "integer", |d| int_at(&["status", "replicas"])(d)),
            fixed("Ready", "integer", |d| {
                int_at(&["status", "readyReplicas"])(d)
            }),
            age,
        ],
        ("", "namespaces") => vec![name, path("Status", ".status.phase"), age],
        ("", "configmaps") => vec![name, fixed("Data", "integer", data_count), age],
        ("", "secrets") => vec![
            name,
            path("Type", ".type"),
            fixed("Data", "integer", data_count),
            age,
        ],
        ("", "services") => vec![
            name,
            path("Type", ".spec.type"),
            path("Cluster-IP", ".spec.clusterIP"),
            fixed("Port(s)", "string", service_ports),
            age,
        ],
        ("coordination.k8s.io", "leases") => {
            vec![name, path("Holder", ".spec.holderIdentity"), age]
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![name, path("Created At", ".metadata.creationTimestamp")]
        }
        _ => {
            let mut cols = vec![name];
            let printer = crd
                .and_then(|c| meta::get_path(c, &["spec", "versions"]))
                .and_then(Value::as_array)
                .and_then(|vs| {
                    vs.iter()
                        .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
                })
                .and_then(|v| v.get("additionalPrinterColumns"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut has_age = false;
            for c in &printer {
                let Some(n) = c.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let Some(steps) = c
                    .get("jsonPath")
                    .and_then(Value::as_str)
                    .and_then(parse_json_path)
                else {
                    continue;
                };
                let kind = match c.get("type").and_then(Value::as_str).unwrap_or("string") {
                    "integer" => "integer",
                    "number" => "number",
                    "boolean" => "boolean",
                    "date" => "date",
                    _ => "string",
                };
                has_age |= n.eq_ignore_ascii_case("age");
                cols.push(Column {
                    name: n.to_string(),
                    kind: if kind == "date" { "string" } else { kind },
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    cell: Cell::Path(steps, kind),
                });
            }
            // Without printer columns a CRD shows its age, like the API server.
            if printer.is_empty() && !has_age {
                cols.push(age);
            }
            cols
        }
    }
}

fn cell(c: &Column, obj: &Value, now: i64) -> Value {
    match &c.cell {
        Cell::Name => json!(meta::name(obj)),
        Cell::Age => age_of(obj, now),
        Cell::Fixed(f) => f(obj),
        Cell::Path(steps, kind) => match (eval(obj, steps), *kind) {
            (Some(Value::String(s)), "date") => match parse_rfc3339(&s) {
                Some(t) => json!(human_duration(now - t)),
                None => json!(s),
            },
            (Some(Value::String(s)), _) => json!(s),
            (Some(v @ (Value::Number(_) | Value::Bool(_))), _) => v,
            (Some(Value::Null) | None, _) => json!("<none>"),
            (Some(other), _) => json!(other.to_string()),
        },
    }
}

/// Whether an `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Render objects as a Table. `include_object` embeds each object in its row.
pub fn table(
    rt: &ResourceType,
    crd: Option<&Value>,
    version: &str,
    objects: &[Value],
    resource_version: Option<u64>,
    include_object: bool,
    now: i64,
) -> Value {
    let cols = columns(rt, crd, version);
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            let mut d = json!({"name": c.name, "type": c.kind, "format": "", "description": c.name, "priority": c.priority});
            if matches!(c.cell, Cell::Name) {
                d["format"] = json!("name");
            }
            d
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row =
                json!({"cells": cols.iter().map(|c| cell(c, o, now)).collect::<Vec<_>>()});
            if include_object {
                row["object"] = o.clone();
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{builtins, from_crd};

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(900), "15m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86_400 + 3600), "3d1h");
        assert_eq!(parse_rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn json_paths() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "x"}, {"type": "Ready", "status": "True"}]}, "l": [1, 2]});
        let p = parse_json_path(".status.conditions[?(@.type==\"Ready\")].status").unwrap();
        assert_eq!(eval(&o, &p), Some(json!("True")));
        assert_eq!(eval(&o, &parse_json_path(".l[1]").unwrap()), Some(json!(2)));
        assert!(parse_json_path(".a[x]").is_none());
    }

    #[test]
    fn pod_and_crd_tables() {
        let pods = builtins().into_iter().find(|t| t.plural == "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "1970-01-01T00:00:00Z"},
                         "spec": {"containers": [{"name": "c"}]},
                         "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let t = table(&pods, None, "v1", &[pod], Some(7), true, 30);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["p", "1/1", "Running", 2, "30s", "<none>", "<none>"])
        );
        assert_eq!(t["metadata"]["resourceVersion"], "7");

        let crd = json!({"metadata": {"name": "jobs.x.io"}, "spec": {"group": "x.io", "scope": "Namespaced",
            "names": {"plural": "jobs", "kind": "Job"},
            "versions": [{"name": "v1", "served": true, "storage": true, "additionalPrinterColumns": [
                {"name": "State", "type": "string", "jsonPath": ".status.state"},
                {"name": "Parallelism", "type": "integer", "jsonPath": ".spec.parallelism"}]}]}});
        let rt = from_crd(&crd).unwrap();
        let job = json!({"metadata": {"name": "j", "creationTimestamp": "1970-01-01T00:00:00Z"}, "spec": {"parallelism": 4}, "status": {"state": "RUNNING"}});
        let t = table(&rt, Some(&crd), "v1", &[job], None, false, 60);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Name", "State", "Parallelism"]);
        assert_eq!(t["rows"][0]["cells"], json!(["j", "RUNNING", 4]));
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
