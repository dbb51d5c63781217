//! The files a pod's containers see: volumes (`emptyDir`, `configMap`, `secret`,
//! `downwardAPI`, `projected` with service-account tokens, `hostPath`) and the pod's
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`.
//!
//! Volumes made of API data are written as kubelet's atomic writer does: the files live
//! in a timestamped directory, `..data` is a symlink to it and every top-level name a
//! symlink through `..data`; an update writes a new directory and swaps `..data` with one
//! rename, so a reader sees the old set or the new one, never a mix.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use nanokube_api::resources;
use nanokube_apiserver::cluster::{Cluster, TokenFor};
use serde_json::{json, Value};

/// A file of a volume: its path inside the volume, bytes and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Relative path (checked: no `..`, not absolute).
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Mode bits.
    pub mode: u32,
}

/// Why a volume cannot be made yet (kubelet's `FailedMount`).
#[derive(Debug, Clone)]
pub struct MountError(pub String);

fn relative_ok(p: &str) -> bool {
    !p.is_empty() && Path::new(p).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Write `payload` into `dir` atomically (see the module docs). Unchanged payloads are
/// left alone; whether anything was written.
pub fn write_atomic(dir: &Path, payload: &[Payload], fs_group: Option<u32>) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok().map(|t| dir.join(t));
    if let Some(cur) = &current {
        if payload.iter().all(|p| std::fs::read(cur.join(&p.path)).is_ok_and(|d| d == p.data)) && count_files(cur) == payload.len() {
            return Ok(false);
        }
    }
    let stamp = format!("..{}", time::OffsetDateTime::now_utc().unix_timestamp_nanos());
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh)?;
    for p in payload {
        let f = fresh.join(&p.path);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&f, &p.data)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(p.mode))?;
    }
    if let Some(gid) = fs_group {
        // Before the swap, so the files are never seen without their group.
        set_volume_ownership(&fresh, gid, true)?;
        set_volume_ownership(dir, gid, true)?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    // Top-level names point through ..data; names no longer in the payload go.
    let tops: std::collections::BTreeSet<String> = payload.iter().filter_map(|p| p.path.split('/').next().map(String::from)).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = current {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(true)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => n += count_files(&e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

fn def(plural: &str) -> &'static resources::ResourceDef {
    resources::find("", "v1", plural).expect("built-in resource")
}

/// The data of a ConfigMap or Secret (`data`, base64 for Secrets and `binaryData`), or
/// `None` when it does not exist.
pub fn read_source(cluster: &dyn Cluster, plural: &str, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let v = cluster.get(def(plural), namespace, name).ok()?;
    let mut out = BTreeMap::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    for (k, val) in v.get("data").and_then(Value::as_object).into_iter().flatten() {
        let s = val.as_str().unwrap_or("");
        let bytes = if plural == "secrets" { b64.decode(s.replace(['\n', '\r'], "")).unwrap_or_default() } else { s.as_bytes().to_vec() };
        out.insert(k.clone(), bytes);
    }
    for (k, val) in v.get("binaryData").and_then(Value::as_object).into_iter().flatten() {
        out.insert(k.clone(), b64.decode(val.as_str().unwrap_or("")).unwrap_or_default());
    }
    Some(out)
}

/// The files of a `configMap`/`secret` source (`items`, `defaultMode`, `optional`).
fn keyed_payload(cluster: &dyn Cluster, plural: &str, namespace: &str, src: &Value, default_mode: u32) -> Result<Vec<Payload>, MountError> {
    let name = src.get(if plural == "secrets" { "secretName" } else { "name" }).and_then(Value::as_str).unwrap_or("");
    let optional = src.get("optional").and_then(Value::as_bool).unwrap_or(false);
    let kind = if plural == "secrets" { "secret" } else { "configmap" };
    let Some(data) = read_source(cluster, plural, namespace, name) else {
        if optional {
            return Ok(Vec::new());
        }
        return Err(MountError(format!("{kind} \"{name}\" not found")));
    };
    let mode = src.get("defaultMode").and_then(Value::as_u64).map(|m| m as u32).unwrap_or(default_mode);
    match src.get("items").and_then(Value::as_array) {
        Some(items) if !items.is_empty() => {
            let mut out = Vec::new();
            for item in items {
                let key = item.get("key").and_then(Value::as_str).unwrap_or("");
                let path = item.get("path").and_then(Value::as_str).unwrap_or(key);
                match data.get(key) {
                    Some(d) if relative_ok(path) => out.push(Payload {
                        path: path.into(),
                        data: d.clone(),
                        mode: item.get("mode").and_then(Value::as_u64).map(|m| m as u32).unwrap_or(mode),
                    }),
                    Some(_) => return Err(MountError(format!("invalid path {path:?}"))),
                    None if optional => {}
                    None => return Err(MountError(format!("configuration key \"{key}\" not found in {kind} \"{name}\""))),
                }
            }
            Ok(out)
        }
        _ => Ok(data.into_iter().filter(|(k, _)| relative_ok(k)).map(|(k, d)| Payload { path: k, data: d, mode }).collect()),
    }
}

/// A `fieldRef` path of the pod (downward API and env).
pub fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let s = |p: &str| pod.pointer(p).and_then(Value::as_str).map(String::from);
    let map_lines = |p: &str| -> String {
        let mut lines: Vec<String> =
            pod.pointer(p).and_then(Value::as_object).into_iter().flatten().map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or(""))).collect();
        lines.sort();
        lines.join("\n")
    };
    if let Some(key) = path.strip_prefix("metadata.labels['").and_then(|r| r.strip_suffix("']")) {
        return Some(pod.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(Value::as_str).unwrap_or("").to_string());
    }
    if let Some(key) = path.strip_prefix("metadata.annotations['").and_then(|r| r.strip_suffix("']")) {
        return Some(pod.pointer("/metadata/annotations").and_then(|l| l.get(key)).and_then(Value::as_str).unwrap_or("").to_string());
    }
    let ips = |p: &str| -> Option<String> {
        pod.pointer(p).and_then(Value::as_array).map(|a| a.iter().filter_map(|i| i.get("ip").and_then(Value::as_str)).collect::<Vec<_>>().join(","))
    };
    match path {
        "metadata.name" => s("/metadata/name"),
        "metadata.namespace" => s("/metadata/namespace"),
        "metadata.uid" => s("/metadata/uid"),
        "metadata.labels" => Some(map_lines("/metadata/labels")),
        "metadata.annotations" => Some(map_lines("/metadata/annotations")),
        "spec.nodeName" => s("/spec/nodeName"),
        "spec.serviceAccountName" => s("/spec/serviceAccountName"),
        "status.hostIP" => s("/status/hostIP"),
        "status.hostIPs" => ips("/status/hostIPs"),
        "status.podIP" => s("/status/podIP"),
        "status.podIPs" => ips("/status/podIPs"),
        _ => None,
    }
}

/// A `resourceFieldRef` (`limits.cpu`, `requests.memory`, … with `divisor`), as kubelet
/// rounds it: up, to whole divisors; a missing limit is the node's allocatable.
pub fn resource_field_ref(pod: &Value, default_container: &str, r: &Value, allocatable: &Value) -> Option<String> {
    let container = r.get("containerName").and_then(Value::as_str).filter(|c| !c.is_empty()).unwrap_or(default_container);
    let resource = r.get("resource").and_then(Value::as_str)?;
    let (kind, name) = resource.split_once('.')?;
    let c = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)?
        .iter()
        .chain(pod.pointer("/spec/initContainers").and_then(Value::as_array).into_iter().flatten())
        .find(|c| c["name"] == container)?;
    let quantity = c.pointer(&format!("/resources/{kind}/{name}")).and_then(Value::as_str).map(String::from).or_else(|| {
        // kubelet: an unset limit is the node's allocatable; an unset request is 0
        // (or the limit, which defaulting already copied).
        (kind == "limits").then(|| allocatable.get(name).and_then(Value::as_str).map(String::from)).flatten()
    });
    let value = nanokube_api::expressions::parse_quantity(quantity.as_deref().unwrap_or("0")).unwrap_or(0.0);
    let divisor = r.get("divisor").and_then(Value::as_str).and_then(nanokube_api::expressions::parse_quantity).filter(|d| *d > 0.0).unwrap_or(1.0);
    Some(format!("{}", (value / divisor).ceil() as i64))
}

/// Tokens already issued to a pod: (volume path, audience, expiry) → (token, when issued).
pub type TokenCache = std::sync::Mutex<std::collections::HashMap<(String, String, i64), (Vec<u8>, std::time::Instant)>>;

/// The pod's service-account token, as the kubelet's token manager asks TokenRequest.
pub struct TokenSource<'a> {
    /// Where TokenRequests go.
    pub cluster: &'a dyn Cluster,
    /// What was issued before: a token is renewed at 80% of its life or after 24 hours,
    /// as kubelet's token manager does.
    pub cache: &'a TokenCache,
}

/// The files of a volume's source for `pod` (one of `configMap`, `secret`,
/// `downwardAPI`, `projected`); `None` when the volume is not made of API data.
pub fn api_volume(
    pod: &Value,
    volume: &Value,
    cluster: &dyn Cluster,
    tokens: Option<&TokenSource<'_>>,
    allocatable: &Value,
) -> Option<Result<Vec<Payload>, MountError>> {
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
    if let Some(src) = volume.get("configMap") {
        return Some(keyed_payload(cluster, "configmaps", ns, src, 0o644));
    }
    if let Some(src) = volume.get("secret") {
        return Some(keyed_payload(cluster, "secrets", ns, src, 0o644));
    }
    if let Some(src) = volume.get("downwardAPI") {
        let mode = src.get("defaultMode").and_then(Value::as_u64).map(|m| m as u32).unwrap_or(0o644);
        return Some(downward_items(pod, src.get("items"), mode, allocatable));
    }
    let src = volume.get("projected")?;
    let mode = src.get("defaultMode").and_then(Value::as_u64).map(|m| m as u32).unwrap_or(0o644);
    let mut out = Vec::new();
    for s in src.get("sources").and_then(Value::as_array).into_iter().flatten() {
        let part = if let Some(cm) = s.get("configMap") {
            keyed_payload(cluster, "configmaps", ns, cm, mode)
        } else if let Some(sec) = s.get("secret") {
            let mut sec = sec.clone();
            if let Some(n) = sec.get("name").cloned() {
                sec["secretName"] = n;
            }
            keyed_payload(cluster, "secrets", ns, &sec, mode)
        } else if let Some(d) = s.get("downwardAPI") {
            downward_items(pod, d.get("items"), mode, allocatable)
        } else if let Some(t) = s.get("serviceAccountToken") {
            match tokens {
                Some(ts) => service_account_token(pod, t, ts, mode),
                None => Err(MountError("no token issuer on this node".into())),
            }
        } else {
            Ok(Vec::new())
        };
        match part {
            Ok(p) => out.extend(p),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(out))
}

fn downward_items(pod: &Value, items: Option<&Value>, mode: u32, allocatable: &Value) -> Result<Vec<Payload>, MountError> {
    let mut out = Vec::new();
    for item in items.and_then(Value::as_array).into_iter().flatten() {
        let path = item.get("path").and_then(Value::as_str).unwrap_or("");
        if !relative_ok(path) {
            return Err(MountError(format!("invalid path {path:?}")));
        }
        let value = if let Some(f) = item.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            field_ref(pod, f).ok_or_else(|| MountError(format!("unsupported fieldPath {f:?}")))?
        } else if let Some(r) = item.get("resourceFieldRef") {
            resource_field_ref(pod, "", r, allocatable).ok_or_else(|| MountError("invalid resourceFieldRef".into()))?
        } else {
            continue;
        };
        out.push(Payload { path: path.into(), data: value.into_bytes(), mode: item.get("mode").and_then(Value::as_u64).map(|m| m as u32).unwrap_or(mode) });
    }
    Ok(out)
}

fn service_account_token(pod: &Value, src: &Value, ts: &TokenSource<'_>, mode: u32) -> Result<Vec<Payload>, MountError> {
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
    let sa = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
    let audience: Vec<String> = src.get("audience").and_then(Value::as_str).filter(|a| !a.is_empty()).map(|a| vec![a.to_string()]).unwrap_or_default();
    let expiration = src.get("expirationSeconds").and_then(Value::as_i64).unwrap_or(3607).max(600);
    let path = src.get("path").and_then(Value::as_str).unwrap_or("token");
    let key = (path.to_string(), audience.join(","), expiration);
    let renew_after = std::time::Duration::from_secs((expiration as u64 * 8 / 10).min(24 * 3600));
    let cached = ts.cache.lock().ok().and_then(|c| c.get(&key).filter(|(_, at)| at.elapsed() < renew_after).map(|(t, _)| t.clone()));
    let token = match cached {
        Some(t) => t,
        None => {
            let request = TokenFor {
                namespace: ns,
                service_account: sa,
                audiences: &audience,
                expiration_seconds: expiration,
                pod_name: pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
                pod_uid: pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or(""),
            };
            let token = ts.cluster.service_account_token(&request).map_err(|e| MountError(format!("failed to fetch token: {}", e.message)))?;
            if let Ok(mut c) = ts.cache.lock() {
                c.insert(key, (token.clone().into_bytes(), std::time::Instant::now()));
            }
            token.into_bytes()
        }
    };
    Ok(vec![Payload { path: path.into(), data: token, mode }])
}

/// What `/etc/hosts` holds for a pod (kubelet's managed hosts file), in cluster domain
/// `domain`.
pub fn hosts_file(pod: &Value, ip: &str, domain: &str) -> String {
    let spec = pod.get("spec").cloned().unwrap_or(json!({}));
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
    let hostname = spec.get("hostname").and_then(Value::as_str).filter(|h| !h.is_empty()).unwrap_or(name);
    let mut out = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    match spec.get("subdomain").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        Some(sub) => out += &format!("{ip}\t{hostname}.{sub}.{ns}.svc.{domain}\t{hostname}\n"),
        None => out += &format!("{ip}\t{hostname}\n"),
    }
    let aliases = spec.get("hostAliases").and_then(Value::as_array).cloned().unwrap_or_default();
    if !aliases.is_empty() {
        out += "\n# Entries added by HostAliases.\n";
        for a in aliases {
            let names: Vec<&str> = a.get("hostnames").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            out += &format!("{}\t{}\n", a.get("ip").and_then(Value::as_str).unwrap_or(""), names.join("\t"));
        }
    }
    out
}

/// What `/etc/resolv.conf` holds for a pod, per `dnsPolicy` and `dnsConfig`, in cluster
/// domain `domain`.
pub fn resolv_conf(pod: &Value, dns_ip: &str, domain: &str) -> String {
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
    let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool).unwrap_or(false);
    let policy = pod.pointer("/spec/dnsPolicy").and_then(Value::as_str).unwrap_or("ClusterFirst");
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) = (Vec::new(), Vec::new(), Vec::new());
    let cluster = policy == "ClusterFirstWithHostNet" || (policy == "ClusterFirst" && !host_network);
    if cluster {
        servers.push(dns_ip.to_string());
        searches = vec![format!("{ns}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()];
        options.push("ndots:5".into());
    } else if policy != "None" {
        // Default (and ClusterFirst on the host network): the host's resolver.
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for l in host.lines() {
            let mut w = l.split_whitespace();
            match w.next() {
                Some("nameserver") => servers.extend(w.next().map(String::from)),
                Some("search") => searches.extend(w.map(String::from)),
                Some("options") => options.extend(w.map(String::from)),
                _ => {}
            }
        }
    }
    if let Some(cfg) = pod.pointer("/spec/dnsConfig") {
        let strs =
            |k: &str| -> Vec<String> { cfg.get(k).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect() };
        servers.extend(strs("nameservers"));
        searches.extend(strs("searches"));
        for o in cfg.get("options").and_then(Value::as_array).into_iter().flatten() {
            let name = o.get("name").and_then(Value::as_str).unwrap_or("");
            options.retain(|x| x.split(':').next() != Some(name));
            options.push(match o.get("value").and_then(Value::as_str) {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            });
        }
    }
    let mut out = String::new();
    if !searches.is_empty() {
        out += &format!("search {}\n", searches.join(" "));
    }
    for s in servers.iter().take(3) {
        out += &format!("nameserver {s}\n");
    }
    if !options.is_empty() {
        out += &format!("options {}\n", options.join(" "));
    }
    out
}

/// Where a volume lives on the host: a directory under `pod_dir`, or the `hostPath`.
pub fn volume_dir(pod_dir: &Path, volume: &Value) -> PathBuf {
    if let Some(p) = volume.pointer("/hostPath/path").and_then(Value::as_str) {
        return PathBuf::from(p);
    }
    let name = volume.get("name").and_then(Value::as_str).unwrap_or("");
    pod_dir.join("volumes").join(name)
}

/// Give a volume to the pod's `fsGroup`, as kubelet's `SetVolumeOwnership` does: every
/// file and directory gets the group, group read (and write, unless `readonly`) access,
/// and directories the set-group-ID bit so new files inherit the group. Symbolic links
/// are left alone.
pub fn set_volume_ownership(dir: &Path, gid: u32, readonly: bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, None, Some(gid))?;
    let mask = if readonly { 0o440 } else { 0o660 };
    let mut mode = meta.mode() & 0o7777 | mask;
    if meta.is_dir() {
        // Group search on directories, and setgid.
        mode |= 0o110 | libc::S_ISGID;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        for e in std::fs::read_dir(dir)? {
            set_volume_ownership(&e?.path(), gid, readonly)?;
        }
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_the_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("v");
        let p = |path: &str, data: &str| Payload { path: path.into(), data: data.as_bytes().to_vec(), mode: 0o644 };
        assert!(write_atomic(&v, &[p("a", "1"), p("d/b", "2")], None).unwrap());
        assert_eq!(std::fs::read_to_string(v.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(v.join("d/b")).unwrap(), "2");
        assert!(!write_atomic(&v, &[p("a", "1"), p("d/b", "2")], None).unwrap(), "unchanged payloads are not rewritten");
        assert!(write_atomic(&v, &[p("a", "3")], None).unwrap());
        assert_eq!(std::fs::read_to_string(v.join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(v.join("d")).is_err(), "names gone from the payload are removed");
        let dirs = std::fs::read_dir(&v).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("..1")).count();
        assert_eq!(dirs, 1, "the old data directory is removed");
    }

    #[test]
    fn hosts_and_resolv_conf_as_kubelet_writes_them() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"subdomain": "s", "hostAliases": [{"ip": "127.1.2.3", "hostnames": ["a", "b"]}]}});
        let hosts = hosts_file(&pod, "127.244.0.5", "cluster.local");
        assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("127.244.0.5\tp.s.ns.svc.cluster.local\tp\n"));
        assert!(hosts.ends_with("\n# Entries added by HostAliases.\n127.1.2.3\ta\tb\n"));
        assert!(resolv_conf(&pod, "127.96.0.10", "corp.test").starts_with("search ns.svc.corp.test svc.corp.test corp.test\n"));
        assert_eq!(
            resolv_conf(&pod, "127.96.0.10", "cluster.local"),
            "search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.96.0.10\noptions ndots:5\n"
        );
        let none = json!({"metadata": {"namespace": "ns"}, "spec": {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["127.0.0.53"], "options": [{"name": "ndots", "value": "2"}]}}});
        assert_eq!(resolv_conf(&none, "x", "cluster.local"), "nameserver 127.0.0.53\noptions ndots:2\n");
        let labels = json!({"metadata": {"labels": {"b": "2", "a": "1"}}});
        assert_eq!(field_ref(&labels, "metadata.labels").unwrap(), "a=\"1\"\nb=\"2\"");
        assert_eq!(field_ref(&labels, "metadata.labels['b']").unwrap(), "2");
    }
}
