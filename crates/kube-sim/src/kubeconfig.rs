//! Writing a kubeconfig that points `kubectl` and kube-rs at kube-sim.
//!
//! The server speaks plain HTTP on loopback and needs no credentials, so the
//! kubeconfig has one cluster, one context (namespace `default`) and an
//! empty user.

use std::path::Path;

use crate::error::Result;

/// The cluster, context and user name used in written kubeconfigs.
pub const CONTEXT: &str = "kube-sim";

/// Render a kubeconfig for `server` (e.g. `http://127.0.0.1:6443`).
pub fn render(server: &str) -> String {
    render_for(server, "default")
}

/// Render a kubeconfig for `server` whose context uses `namespace`.
pub fn render_for(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT}
  cluster:
    server: {server}
contexts:
- name: {CONTEXT}
  context:
    cluster: {CONTEXT}
    user: {CONTEXT}
    namespace: {namespace}
current-context: {CONTEXT}
users:
- name: {CONTEXT}
  user: {{}}
preferences: {{}}
"
    )
}

/// Write a kubeconfig for `server` to `path`, creating parent directories.
pub fn write(path: &Path, server: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(path, render(server))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_valid_yaml() {
        let text = render("http://127.0.0.1:1234");
        let v: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1234"
        );
        assert_eq!(v["current-context"], CONTEXT);
        assert!(v["users"][0]["user"].is_object());
    }
}
