//! `nanokube config`: kubeconfig inspection as `kubectl config` does it: files from
//! `--kubeconfig`, else the `KUBECONFIG` list, else `~/.kube/config`, merged with the
//! first occurrence of a name winning; secrets shown as `REDACTED` / `DATA+OMITTED`
//! unless `--raw`.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The kubeconfig files in effect, in precedence order.
pub fn files(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    match std::env::var("KUBECONFIG") {
        Ok(v) if !v.is_empty() => v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
        _ => vec![std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".kube").join("config")],
    }
}

fn load(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Ok(None),
        Ok(t) => serde_norway::from_str::<Value>(&t).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Merge the files as kubectl does.
pub fn merged(files: &[PathBuf]) -> Result<Value, String> {
    let mut out = Map::new();
    let mut lists: [(&str, Vec<Value>); 3] = [("clusters", vec![]), ("contexts", vec![]), ("users", vec![])];
    let mut current = String::new();
    let mut preferences = json!({});
    let mut have_prefs = false;
    for f in files {
        let Some(cfg) = load(f)? else { continue };
        for (section, list) in lists.iter_mut() {
            for entry in cfg.get(*section).and_then(Value::as_array).cloned().unwrap_or_default() {
                let name = entry.get("name").cloned();
                if !list.iter().any(|e| e.get("name") == name.as_ref()) {
                    list.push(entry);
                }
            }
        }
        if current.is_empty() {
            current = cfg.get("current-context").and_then(Value::as_str).unwrap_or("").to_string();
        }
        if !have_prefs {
            if let Some(p) = cfg.get("preferences").filter(|p| p.as_object().is_some_and(|m| !m.is_empty())) {
                preferences = p.clone();
                have_prefs = true;
            }
        }
    }
    out.insert("apiVersion".into(), json!("v1"));
    for (section, list) in lists {
        out.insert(section.into(), if list.is_empty() { Value::Null } else { Value::Array(list) });
    }
    out.insert("current-context".into(), json!(current));
    out.insert("kind".into(), json!("Config"));
    out.insert("preferences".into(), preferences);
    Ok(Value::Object(out))
}

fn redact(cfg: &mut Value) {
    for (section, inner) in [("clusters", "cluster"), ("users", "user")] {
        if let Some(list) = cfg.get_mut(section).and_then(Value::as_array_mut) {
            for e in list {
                if let Some(m) = e.get_mut(inner).and_then(Value::as_object_mut) {
                    for (k, v) in m.iter_mut() {
                        if k.ends_with("-data") {
                            *v = json!("DATA+OMITTED");
                        } else if k == "token" || k == "password" {
                            *v = json!("REDACTED");
                        }
                    }
                }
            }
        }
    }
}

/// `config view`.
pub fn view(files: &[PathBuf], minify: bool, raw: bool, output: &str) -> Result<String, String> {
    let mut cfg = merged(files)?;
    if minify {
        let current = cfg["current-context"].as_str().unwrap_or("").to_string();
        if current.is_empty() {
            return Err("current-context must exist in order to minify".into());
        }
        let pick = |section: &str, name: &str| -> Value {
            cfg.get(section)
                .and_then(Value::as_array)
                .and_then(|l| l.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(name)).cloned())
                .map(|e| json!([e]))
                .unwrap_or(Value::Null)
        };
        let ctx = pick("contexts", &current);
        let cluster = ctx.pointer("/0/context/cluster").and_then(Value::as_str).unwrap_or("").to_string();
        let user = ctx.pointer("/0/context/user").and_then(Value::as_str).unwrap_or("").to_string();
        if ctx.is_null() {
            return Err(format!("cannot locate context {current}"));
        }
        let (clusters, users) = (pick("clusters", &cluster), pick("users", &user));
        cfg["contexts"] = ctx;
        cfg["clusters"] = clusters;
        cfg["users"] = users;
    }
    if !raw {
        redact(&mut cfg);
    }
    match output {
        "json" => {
            let mut buf = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            serde::Serialize::serialize(&Ordered(&cfg, "config"), &mut ser).map_err(|e| e.to_string())?;
            Ok(String::from_utf8(buf).expect("utf8") + "\n")
        }
        "yaml" | "" => serde_norway::to_string(&cfg).map_err(|e| e.to_string()),
        other => Err(format!("unable to match a printer suitable for the output format {other:?}, allowed formats are: json,yaml")),
    }
}

/// `config current-context`.
pub fn current_context(files: &[PathBuf]) -> Result<String, String> {
    let cfg = merged(files)?;
    match cfg["current-context"].as_str() {
        Some(c) if !c.is_empty() => Ok(c.to_string()),
        _ => Err("current-context is not set".into()),
    }
}

/// `config get-contexts`, laid out as kubectl's tabwriter does (min width 10, padding 3).
pub fn get_contexts(files: &[PathBuf]) -> Result<String, String> {
    let cfg = merged(files)?;
    let current = cfg["current-context"].as_str().unwrap_or("");
    let mut rows = vec![vec!["CURRENT".to_string(), "NAME".into(), "CLUSTER".into(), "AUTHINFO".into(), "NAMESPACE".into()]];
    let mut contexts: Vec<&Value> = cfg["contexts"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    contexts.sort_by_key(|c| c["name"].as_str().unwrap_or("").to_string());
    for c in contexts {
        let name = c["name"].as_str().unwrap_or("");
        let s = |k: &str| c["context"][k].as_str().unwrap_or("").to_string();
        rows.push(vec![if name == current { "*".into() } else { String::new() }, name.into(), s("cluster"), s("user"), s("namespace")]);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols).map(|i| rows.iter().map(|r| r[i].len() + 3).max().unwrap_or(0).max(10)).collect();
    let mut out = String::new();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == cols {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}", w = widths[i]));
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// `config use-context NAME`: writes `current-context` into the first file.
pub fn use_context(files: &[PathBuf], name: &str) -> Result<String, String> {
    let cfg = merged(files)?;
    if !cfg["contexts"].as_array().is_some_and(|l| l.iter().any(|c| c["name"].as_str() == Some(name))) {
        return Err(format!("no context exists with the name: {name:?}"));
    }
    let target = files.first().ok_or("no kubeconfig file")?;
    let mut first = load(target)?.unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "Config"}));
    first["current-context"] = json!(name);
    nanokube_apiserver::kubeconfig::write(target, &first).map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(format!("Switched to context \"{name}\"."))
}

/// A kubeconfig value serialized with kubectl's JSON key order (Go struct field order);
/// keys it does not know follow, sorted.
struct Ordered<'a>(&'a Value, &'static str);

fn key_order(level: &str) -> &'static [&'static str] {
    match level {
        "config" => &["kind", "apiVersion", "preferences", "clusters", "users", "contexts", "current-context", "extensions"],
        "named" => &["name", "cluster", "user", "context", "extension"],
        "cluster" => &[
            "server",
            "tls-server-name",
            "insecure-skip-tls-verify",
            "certificate-authority",
            "certificate-authority-data",
            "proxy-url",
            "disable-compression",
            "extensions",
        ],
        "user" => &[
            "client-certificate",
            "client-certificate-data",
            "client-key",
            "client-key-data",
            "token",
            "tokenFile",
            "as",
            "as-uid",
            "as-groups",
            "as-user-extra",
            "username",
            "password",
            "auth-provider",
            "exec",
            "extensions",
        ],
        "context" => &["cluster", "user", "namespace", "extensions"],
        _ => &[],
    }
}

fn child_level(level: &str, key: &str) -> &'static str {
    match (level, key) {
        ("config", "clusters" | "users" | "contexts") => "named",
        ("named", "cluster") => "cluster",
        ("named", "user") => "user",
        ("named", "context") => "context",
        _ => "",
    }
}

impl serde::Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(m) => {
                let order = key_order(self.1);
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_by_key(|k| (order.iter().position(|o| o == k).unwrap_or(usize::MAX), (*k).clone()));
                let mut map = s.serialize_map(Some(keys.len()))?;
                for k in keys {
                    map.serialize_entry(k, &Ordered(&m[k], child_level(self.1, k)))?;
                }
                map.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&Ordered(v, self.1))?;
                }
                seq.end()
            }
            v => v.serialize(s),
        }
    }
}
