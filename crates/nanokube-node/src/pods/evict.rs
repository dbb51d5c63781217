//! What the eviction manager does to pods each monitoring period, in kubelet's order:
//! pods past their local storage limits first (an emptyDir's `sizeLimit`, the sum of the
//! containers' `ephemeral-storage` limits, one container's limit), every such pod; else,
//! with a threshold met, the one pod kubelet's ranking puts first. The messages are
//! kubelet's, word for word.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::stats::{running_attempts, working_set};
use super::worker::Msg;
use super::PodRuntime;
use crate::eviction::{binary_si, Observation, Signal, Threshold};

/// Bytes a directory tree takes on disk (`du`: allocated blocks), symlinks not followed,
/// other filesystems (a memory-backed volume) not entered.
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(path) else { return 0 };
    let dev = root.dev();
    let mut total = root.blocks() * 512;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

fn quantity(v: Option<&Value>) -> Option<(u64, String)> {
    let text = v?.as_str()?.to_string();
    let n = nanokube_api::expressions::parse_quantity(&text)?;
    Some((n.max(0.0) as u64, text))
}

/// A pod's local storage: per running container its writable layer and logs, and its
/// disk-backed emptyDir volumes.
struct StorageUsage {
    containers: Vec<(String, u64)>,
    empty_dirs: Vec<(String, u64)>,
}

fn storage_usage(rt: &PodRuntime, pod: &Value, uid: &str) -> StorageUsage {
    let dir = rt.pods_dir().join(uid);
    let (ns, name) =
        (pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(""), pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""));
    let logs = rt.logs_dir().join(format!("{ns}_{name}_{uid}"));
    let containers =
        running_attempts(&dir).into_iter().map(|(c, _, bundle)| (c.clone(), disk_usage(&bundle.join("upper")) + disk_usage(&logs.join(&c)))).collect();
    let empty_dirs = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("emptyDir").is_some() && v.pointer("/emptyDir/medium").and_then(Value::as_str) != Some("Memory"))
        .map(|v| (v["name"].as_str().unwrap_or("").to_string(), disk_usage(&super::files::volume_dir(&dir, v))))
        .collect();
    StorageUsage { containers, empty_dirs }
}

/// Why a pod is past its storage limits, in kubelet's order, if it is.
fn storage_violation(pod: &Value, usage: &StorageUsage) -> Option<String> {
    for v in pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
        let Some((limit, text)) = quantity(v.pointer("/emptyDir/sizeLimit")) else { continue };
        let name = v["name"].as_str().unwrap_or("");
        let used = usage.empty_dirs.iter().find(|(n, _)| n == name).map_or(0, |(_, u)| *u);
        if limit > 0 && used > limit {
            return Some(format!("Usage of EmptyDir volume {name:?} exceeds the limit {text:?}. "));
        }
    }
    let containers: Vec<&Value> = pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten().collect();
    let limits: Vec<(String, u64, String)> = containers
        .iter()
        .filter_map(|c| quantity(c.pointer("/resources/limits/ephemeral-storage")).map(|(n, t)| (c["name"].as_str().unwrap_or("").to_string(), n, t)))
        .collect();
    if !limits.is_empty() {
        let total_limit: u64 = limits.iter().map(|l| l.1).sum();
        let used: u64 = usage.containers.iter().map(|c| c.1).sum::<u64>() + usage.empty_dirs.iter().map(|e| e.1).sum::<u64>();
        if used > total_limit {
            let text = if limits.len() == 1 { limits[0].2.clone() } else { binary_si(total_limit) };
            return Some(format!("Pod ephemeral local storage usage exceeds the total limit of containers {text}. "));
        }
    }
    for (name, limit, text) in &limits {
        let used = usage.containers.iter().find(|(n, _)| n == name).map_or(0, |(_, u)| *u);
        if used > *limit {
            return Some(format!("Container {name} exceeded its local ephemeral storage limit {text:?}. "));
        }
    }
    None
}

/// A container's request of `resource`, in bytes (0 when it has none).
fn request(c: &Value, resource: &str) -> u64 {
    quantity(c.pointer(&format!("/resources/requests/{resource}"))).map_or(0, |q| q.0)
}

/// One candidate's figures for kubelet's ranking of a resource.
struct Candidate {
    uid: String,
    pod: Value,
    /// Per container: name, usage, request.
    containers: Vec<(String, u64, u64)>,
}

impl Candidate {
    fn usage(&self) -> u64 {
        self.containers.iter().map(|c| c.1).sum()
    }
    fn requested(&self) -> u64 {
        self.containers.iter().map(|c| c.2).sum()
    }
    fn exceeds(&self) -> bool {
        self.usage() > self.requested()
    }
    fn priority(&self) -> i64 {
        self.pod.pointer("/spec/priority").and_then(Value::as_i64).unwrap_or(0)
    }
}

/// Evict what this period calls for.
pub async fn act(rt: &Arc<PodRuntime>, met: &[(Threshold, Observation)]) {
    let Some(pods_def) = nanokube_api::resources::find("", "v1", "pods") else { return };
    let Ok(list) = rt.cluster.list(pods_def, None, &format!("spec.nodeName={}", rt.node)) else { return };
    let active: Vec<(String, Value)> = list
        .items
        .into_iter()
        .filter(|p| !matches!(p.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed")))
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .filter_map(|p| Some((p.pointer("/metadata/uid")?.as_str()?.to_string(), p)))
        .collect();
    // Measured once per period: the storage checks and the disk ranking both read it.
    let usages: Vec<StorageUsage> = active.iter().map(|(uid, pod)| storage_usage(rt, pod, uid)).collect();
    let mut evicted_any = false;
    for ((uid, pod), usage) in active.iter().zip(&usages) {
        if let Some(message) = storage_violation(pod, usage) {
            evicted_any |= rt.send(uid, Msg::Evict { message }).await;
        }
    }
    if evicted_any || met.is_empty() {
        return;
    }
    // The threshold to reclaim: memory first, then disk, then PIDs (kubelet's order).
    let Some((threshold, observed)) = met.iter().min_by_key(|(t, _)| t.signal) else { return };
    let resource = threshold.signal.resource();
    let mut candidates: Vec<Candidate> = active
        .iter()
        .zip(&usages)
        .filter(|((_, p), _)| !crate::eviction::is_critical(p))
        .map(|((uid, pod), storage)| {
            let dir = rt.pods_dir().join(uid);
            let specs: Vec<Value> = pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
            let containers = running_attempts(&dir)
                .into_iter()
                .map(|(name, id, _)| {
                    let spec = specs.iter().find(|c| c["name"] == name.as_str()).cloned().unwrap_or(Value::Null);
                    let used = match threshold.signal {
                        Signal::MemoryAvailable => working_set(&format!("nanokube/pod{uid}/{id}")).unwrap_or(0),
                        Signal::PidAvailable => 0,
                        _ => storage.containers.iter().find(|c| c.0 == name).map_or(0, |c| c.1),
                    };
                    let req = match threshold.signal {
                        Signal::MemoryAvailable => request(&spec, "memory"),
                        Signal::PidAvailable => 0,
                        _ => request(&spec, "ephemeral-storage"),
                    };
                    (name, used, req)
                })
                .collect();
            Candidate { uid: uid.clone(), pod: pod.clone(), containers }
        })
        .collect();
    // kubelet's ranking: over its requests first, then lower priority, then the most
    // usage above requests.
    candidates.sort_by(|a, b| {
        b.exceeds()
            .cmp(&a.exceeds())
            .then(a.priority().cmp(&b.priority()))
            .then((b.usage() as i128 - b.requested() as i128).cmp(&(a.usage() as i128 - a.requested() as i128)))
    });
    let Some(victim) = candidates.first() else { return };
    let mut message = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
        binary_si(threshold.quantity(observed.capacity)),
        binary_si(observed.available)
    );
    if threshold.signal != Signal::PidAvailable {
        for (name, used, req) in &victim.containers {
            if used > req {
                message.push_str(&format!(
                    "Container {name} was using {}, request is {}, has larger consumption of {resource}. ",
                    binary_si(*used),
                    binary_si(*req)
                ));
            }
        }
    }
    rt.send(&victim.uid, Msg::Evict { message }).await;
}
