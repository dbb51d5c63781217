//! `nanokube dns`: the cluster DNS for people on the host. `lookup` asks the cluster's
//! DNS server one question (as `dig @127.96.0.10` would); `hosts` writes the Services'
//! names into a hosts file inside a marked block, which `--remove` takes out again, so
//! the host's resolver finds `web.default.svc.cluster.local` without any other setup.
//! The block is a snapshot: write it again after Services change.

use std::path::Path;

use serde_json::Value;

/// The first line of the block this command manages.
pub const BEGIN: &str = "# BEGIN nanokube Services (nanokube dns hosts; remove with --remove)";
/// Its last line.
pub const END: &str = "# END nanokube Services";

/// The block for these Services (`(namespace, name, clusterIP)`; headless ones skipped).
pub fn hosts_block(services: &[(String, String, String)], domain: &str) -> String {
    let mut out = format!("{BEGIN}\n");
    for (ns, name, ip) in services {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        out.push_str(&format!("{ip}\t{name}.{ns}.svc.{domain} {name}.{ns}.svc\n"));
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// `text` without this command's block.
pub fn without_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == BEGIN {
            inside = true;
            continue;
        }
        if inside {
            if line == END {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Replaces (or adds) the block in a hosts file. Written in place, not renamed over: in
/// containers `/etc/hosts` is a bind mount.
pub fn write_block(file: &Path, block: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut kept = without_block(&text);
    kept.push_str(block);
    std::fs::write(file, kept).map_err(|e| format!("{}: {e}", file.display()))
}

/// Takes the block out of a hosts file.
pub fn remove_block(file: &Path) -> Result<bool, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let kept = without_block(&text);
    if kept == text || (kept.trim_end() == text.trim_end()) {
        return Ok(false);
    }
    std::fs::write(file, kept).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(true)
}

/// `(namespace, name, clusterIP)` of every Service in a ServiceList.
pub fn services_of(list: &Value) -> Vec<(String, String, String)> {
    let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out: Vec<_> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|svc| (s(svc, "/metadata/namespace"), s(svc, "/metadata/name"), s(svc, "/spec/clusterIP"))).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trip() {
        let dir = std::env::temp_dir().join(format!("nanokube-hosts-{}", std::process::id()));
        std::fs::write(&dir, "127.0.0.1\tlocalhost\n").unwrap();
        let services = vec![("default".to_string(), "web".to_string(), "127.96.0.20".to_string()), ("default".into(), "headless".into(), "None".into())];
        let block = hosts_block(&services, "cluster.local");
        write_block(&dir, &block).unwrap();
        write_block(&dir, &block).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        assert_eq!(text.matches(BEGIN).count(), 1, "{text}");
        assert!(text.contains("127.96.0.20\tweb.default.svc.cluster.local web.default.svc\n") && !text.contains("headless"));
        assert!(remove_block(&dir).unwrap());
        assert_eq!(std::fs::read_to_string(&dir).unwrap(), "127.0.0.1\tlocalhost\n");
        assert!(!remove_block(&dir).unwrap());
        std::fs::remove_file(&dir).unwrap();
    }
}
