//! Writing kubeconfig files: the data directory's own, and the `nanokube` entries merged
//! into the user's kubeconfig (`$KUBECONFIG`'s first file or `~/.kube/config`), made
//! current, the way minikube does.

use std::path::Path;

use base64::Engine;
use serde_json::{json, Value};

/// The contents of a kubeconfig with one cluster, user and context, all named `name`.
pub fn single(name: &str, server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": name, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {}
    })
}

/// Write a kubeconfig file (mode 0600; it holds a private key).
pub fn write(path: &Path, config: &Value) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_norway::to_string(config).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("nanokube-tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn upsert(list: &mut Vec<Value>, entry: Value) {
    let name = entry.get("name").cloned();
    if let Some(existing) = list.iter_mut().find(|e| e.get("name") == name.as_ref()) {
        *existing = entry;
    } else {
        list.push(entry);
    }
}

/// Merge the single-entry config `ours` into the kubeconfig at `path` (created if
/// missing), replacing entries of the same names and making ours current. Other
/// clusters, users and contexts are kept.
pub fn merge_into(path: &Path, ours: &Value) -> std::io::Result<()> {
    let mut existing: Value = match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => serde_norway::from_str(&text).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
        _ => json!({"apiVersion": "v1", "kind": "Config", "preferences": {}}),
    };
    if !existing.is_object() {
        existing = json!({"apiVersion": "v1", "kind": "Config"});
    }
    for section in ["clusters", "users", "contexts"] {
        let mut list = existing.get(section).and_then(Value::as_array).cloned().unwrap_or_default();
        for entry in ours.get(section).and_then(Value::as_array).cloned().unwrap_or_default() {
            upsert(&mut list, entry);
        }
        existing[section] = Value::Array(list);
    }
    existing["current-context"] = ours["current-context"].clone();
    write(path, &existing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_other_entries_and_switches_context() {
        let dir = std::env::temp_dir().join(format!("nk-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        let other = single("other", "https://127.0.0.2:6443", "ca", "c", "k");
        write(&path, &other).unwrap();
        merge_into(&path, &single("nanokube", "https://127.0.0.1:6443", "ca", "c", "k")).unwrap();
        merge_into(&path, &single("nanokube", "https://127.0.0.1:7443", "ca", "c", "k")).unwrap();
        let v: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["current-context"], "nanokube");
        assert_eq!(v["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(v["clusters"][1]["cluster"]["server"], "https://127.0.0.1:7443");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
