//! `nanokube user add`: a client certificate signed by the cluster CA and a kubeconfig
//! for it, so that RBAC can be tried as someone who is not an admin (seed S8's
//! `client.crt`/`client.key`, for any user).

use std::path::{Path, PathBuf};

use nanokube_apiserver::{kubeconfig, pki};
use serde_json::Value;

/// Issue a certificate for `name` in `groups` and write a kubeconfig; returns its path.
pub fn add(data_dir: &Path, name: &str, groups: &[String], output: Option<&Path>) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("a user name is required".into());
    }
    let paths = pki::Paths::new(data_dir);
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e} (has `nanokube server` run with this data dir?)", p.display()));
    let ca = read(paths.ca_crt())?;
    let ca_key = read(paths.ca_key())?;
    let admin: Value = serde_norway::from_str(&read(paths.kubeconfig())?).map_err(|e| format!("{}: {e}", paths.kubeconfig().display()))?;
    let server = admin.pointer("/clusters/0/cluster/server").and_then(Value::as_str).ok_or("the data dir's kubeconfig names no server")?;
    let (cert, key) = pki::issue_client_cert(&ca, &ca_key, name, groups).map_err(|e| e.to_string())?;
    let target = output.map(Path::to_path_buf).unwrap_or_else(|| data_dir.join("users").join(format!("{name}.kubeconfig")));
    let mut cfg = kubeconfig::single("nanokube", server, &ca, &cert, &key);
    // The user entry and context carry the user's name; the cluster stays `nanokube`.
    let ctx = format!("{name}@nanokube");
    cfg["users"][0]["name"] = Value::String(name.to_string());
    cfg["contexts"][0]["name"] = Value::String(ctx.clone());
    cfg["contexts"][0]["context"]["user"] = Value::String(name.to_string());
    cfg["current-context"] = Value::String(ctx);
    kubeconfig::write(&target, &cfg).map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(target)
}
