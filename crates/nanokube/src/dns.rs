//! `nanokube dns`: the cluster DNS for people on the host. `lookup` asks the cluster's
//! DNS server one question (as `dig @127.96.0.10` would); `hosts` writes the Services'
//! names into a hosts file inside a marked block, which `--remove` takes out again, so
//! the host's resolver finds `web.default.svc.cluster.local` without any other setup.
//! With `--follow` the block follows the Services (a watch; rewritten when what it lists
//! changes) until the command is stopped, and is taken out then; without it the block is
//! a snapshot.

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

/// The Services of the cluster `api` reaches, and the list's resourceVersion.
pub async fn list_services(api: &crate::client::ApiClient) -> Result<(Vec<(String, String, String)>, String), String> {
    match api.request("GET", "/api/v1/services", None, None, bytes::Bytes::new()).await? {
        (200, body) => {
            let list = serde_json::from_slice::<Value>(&body).map_err(|e| format!("listing Services: {e}"))?;
            let rv = list.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
            Ok((services_of(&list), rv))
        }
        (code, _) => Err(format!("listing Services: {code}")),
    }
}

/// Say why the follower waits, then wait a second: whether `stop` resolved meanwhile.
async fn stopped_while_waiting(why: &str, stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>) -> bool {
    eprintln!("warning: {why}; trying again");
    tokio::select! {
        _ = stop => true,
        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
    }
}

/// Keep `file`'s block equal to the cluster's Services until `stop` resolves, then take
/// the block out. A watch on Services says when to look again; the block is rewritten
/// only when the lines it holds change. A watch that ends or fails is opened again
/// after a list (a second later on an error).
pub async fn follow(api: &crate::client::ApiClient, file: &Path, domain: &str, stop: impl std::future::Future<Output = ()>) -> Result<(), String> {
    use http_body_util::BodyExt;
    tokio::pin!(stop);
    let mut written = String::new();
    let result = loop {
        let (services, rv) = match list_services(api).await {
            Ok(x) => x,
            Err(e) => {
                if stopped_while_waiting(&e, stop.as_mut()).await {
                    break Ok(());
                }
                continue;
            }
        };
        let block = hosts_block(&services, domain);
        if block != written {
            if let Err(e) = write_block(file, &block) {
                break Err(e);
            }
            eprintln!("{}: {} Service name(s)", file.display(), block.lines().count().saturating_sub(2));
            written = block;
        }
        let mut watch = match api.stream(&format!("/api/v1/services?watch=true&resourceVersion={rv}&timeoutSeconds=300")).await {
            Ok(w) => w,
            Err(e) => {
                if stopped_while_waiting(&e, stop.as_mut()).await {
                    break Ok(());
                }
                continue;
            }
        };
        // Any event: list again (after a short pause, so a burst of changes is one write).
        tokio::select! {
            _ = &mut stop => break Ok(()),
            _ = watch.frame() => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    remove_block(file)?;
    result
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
