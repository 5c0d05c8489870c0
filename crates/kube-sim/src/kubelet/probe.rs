//! Readiness and liveness probes.
//!
//! A probe is checked from the host against the pod's address (which is
//! reachable in both network modes): `tcpSocket` connects, `httpGet`
//! sends one HTTP/1.1 request and accepts 200–399, `exec` runs the command
//! in the container's namespaces and accepts exit status 0.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::process::{self, Launch};

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Check {
    Tcp {
        host: String,
        port: u16,
    },
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Exec {
        command: Vec<String>,
    },
    Unsupported(String),
}

/// A parsed probe with its timing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Probe {
    pub check: Check,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// Resolve a probe port: a number, or the name of a container port.
fn port(v: Option<&Value>, container: &Value) -> Option<u16> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) => s.parse::<u16>().ok().or_else(|| {
            container
                .get("ports")
                .and_then(Value::as_array)?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s))?
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
        }),
        _ => None,
    }
}

impl Probe {
    /// Parse `probe` for a container whose pod has address `pod_ip`.
    pub fn parse(probe: &Value, container: &Value, pod_ip: &str) -> Probe {
        let secs = |k: &str, default: u64| {
            Duration::from_secs(probe.get(k).and_then(Value::as_u64).unwrap_or(default))
        };
        let count = |k: &str, default: u32| {
            probe
                .get(k)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(default)
                .max(1)
        };
        let host = |p: &Value| {
            p.get("host")
                .and_then(Value::as_str)
                .filter(|h| !h.is_empty())
                .unwrap_or(pod_ip)
                .to_string()
        };
        let check = if let Some(t) = probe.get("tcpSocket") {
            match port(t.get("port"), container) {
                Some(port) => Check::Tcp {
                    host: host(t),
                    port,
                },
                None => Check::Unsupported("tcpSocket port does not resolve".into()),
            }
        } else if let Some(h) = probe.get("httpGet") {
            let scheme = h.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
            match port(h.get("port"), container) {
                Some(_) if !scheme.eq_ignore_ascii_case("http") => {
                    Check::Unsupported(format!("httpGet scheme {scheme} is not supported"))
                }
                Some(port) => Check::Http {
                    host: host(h),
                    port,
                    path: h
                        .get("path")
                        .and_then(Value::as_str)
                        .unwrap_or("/")
                        .to_string(),
                    headers: h
                        .get("httpHeaders")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|x| {
                            Some((
                                x.get("name")?.as_str()?.to_string(),
                                x.get("value")?.as_str()?.to_string(),
                            ))
                        })
                        .collect(),
                },
                None => Check::Unsupported("httpGet port does not resolve".into()),
            }
        } else if let Some(cmd) = probe.pointer("/exec/command").and_then(Value::as_array) {
            Check::Exec {
                command: cmd
                    .iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect(),
            }
        } else {
            Check::Unsupported("only tcpSocket, httpGet and exec probes are supported".into())
        };
        Probe {
            check,
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_millis(100)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_millis(100)),
            success_threshold: count("successThreshold", 1),
            failure_threshold: count("failureThreshold", 3),
        }
    }

    /// Run the check once. `exec` is the container's launch template.
    pub async fn run(&self, exec: &Launch) -> Result<(), String> {
        let fut = async {
            match &self.check {
                Check::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("dial tcp {host}:{port}: {e}")),
                Check::Http {
                    host,
                    port,
                    path,
                    headers,
                } => http_get(host, *port, path, headers).await,
                Check::Exec { command } => {
                    let mut l = exec.clone();
                    l.argv = command.clone();
                    l.log = None;
                    let mut child = process::spawn(&l).map_err(|e| e.to_string())?;
                    let status = child.wait().await.map_err(|e| e.to_string())?;
                    if status.success() {
                        Ok(())
                    } else {
                        Err(format!("command exited with {status}"))
                    }
                }
                Check::Unsupported(why) => Err(why.clone()),
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("probe timed out after {:?}", self.timeout)),
        }
    }
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut s = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if r == 0 || buf[..n + r].contains(&b'\n') {
            n += r;
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "malformed HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_named_ports_and_defaults() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}]});
        let p = Probe::parse(
            &json!({"httpGet": {"path": "/ok", "port": "http"}, "periodSeconds": 2}),
            &c,
            "127.1.0.2",
        );
        assert_eq!(
            p.check,
            Check::Http {
                host: "127.1.0.2".into(),
                port: 8080,
                path: "/ok".into(),
                headers: vec![]
            }
        );
        assert_eq!(p.period, Duration::from_secs(2));
        assert_eq!(p.failure_threshold, 3);
        let t = Probe::parse(&json!({"tcpSocket": {"port": "nope"}}), &c, "x");
        assert!(matches!(t.check, Check::Unsupported(_)));
    }
}
