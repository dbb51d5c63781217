//! What the node's containers and the node itself cost, from their cgroups, as cAdvisor
//! reads them for kubelet's resource metrics: CPU as a rate between two samples of the
//! cumulative usage (in nanocores), memory as the working set (usage less inactive file
//! pages). Samples are taken every [`INTERVAL`]; a container needs two before it has a
//! figure, as with metrics-server.
//!
//! cgroup v1 (`cpuacct.usage`, `memory.usage_in_bytes`, `total_inactive_file`) and v2
//! (`cpu.stat` `usage_usec`, `memory.current`, `inactive_file`) are both read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nanokube_apiserver::resource_metrics::{NodeResourceMetrics, Usage};
use serde_json::Value;

use super::PodRuntime;

/// How often cgroups are sampled (metrics-server's default resolution is 15 s; kubelet's
/// cAdvisor housekeeping 10 s; shorter here so a new pod has figures soon).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The cgroup mount point.
const ROOT: &str = "/sys/fs/cgroup";

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    wall: SystemTime,
    cpu_ns: u64,
}

/// A cgroup's latest figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Cumulative CPU time, in nanoseconds.
    pub cpu_ns: u64,
    /// The CPU rate over the last two samples (nanocores), once there are two.
    pub nanocores: Option<u64>,
    /// The working set now, in bytes.
    pub working_set: u64,
    /// When the CPU was last sampled.
    pub at: SystemTime,
}

/// The node's sampler and the figures it keeps.
pub struct Stats {
    runtime: Arc<PodRuntime>,
    /// The last two samples of each cgroup (relative path; "" is the root).
    samples: Mutex<HashMap<String, (Option<Sample>, Sample)>>,
}

/// The cumulative CPU time of the cgroup at `rel`, in nanoseconds.
fn cpu_ns(rel: &str) -> Option<u64> {
    let v1 = Path::new(ROOT).join("cpuacct").join(rel).join("cpuacct.usage");
    if let Ok(s) = std::fs::read_to_string(&v1) {
        return s.trim().parse().ok();
    }
    let stat = std::fs::read_to_string(Path::new(ROOT).join(rel).join("cpu.stat")).ok()?;
    stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse::<u64>().ok()).map(|us| us * 1000)
}

/// The working set of the cgroup at `rel`, in bytes.
pub(crate) fn working_set(rel: &str) -> Option<u64> {
    let stat_value = |path: PathBuf, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' '))).and_then(|v| v.trim().parse().ok())
    };
    let v1 = Path::new(ROOT).join("memory").join(rel);
    let (usage, inactive) = if let Ok(s) = std::fs::read_to_string(v1.join("memory.usage_in_bytes")) {
        (s.trim().parse::<u64>().ok()?, stat_value(v1.join("memory.stat"), "total_inactive_file").unwrap_or(0))
    } else {
        let v2 = Path::new(ROOT).join(rel);
        let s = std::fs::read_to_string(v2.join("memory.current")).ok()?;
        (s.trim().parse::<u64>().ok()?, stat_value(v2.join("memory.stat"), "inactive_file").unwrap_or(0))
    };
    Some(usage.saturating_sub(inactive))
}

/// The pods' container cgroups under the node's own (`nanokube/pod<uid>/<id>`).
fn container_cgroups() -> Vec<String> {
    let base = ["cpuacct/nanokube", "nanokube"].iter().map(|b| Path::new(ROOT).join(b)).find(|p| p.is_dir());
    let Some(base) = base else { return Vec::new() };
    let mut out = Vec::new();
    for pod in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let pod_name = pod.file_name().to_string_lossy().into_owned();
        if !pod_name.starts_with("pod") {
            continue;
        }
        for c in std::fs::read_dir(pod.path()).into_iter().flatten().flatten() {
            if c.path().is_dir() {
                out.push(format!("nanokube/{pod_name}/{}", c.file_name().to_string_lossy()));
            }
        }
    }
    out
}

impl Stats {
    /// A sampler for the node run by `runtime`.
    pub fn new(runtime: Arc<PodRuntime>) -> Arc<Stats> {
        Arc::new(Stats { runtime, samples: Mutex::new(HashMap::new()) })
    }

    /// Sample every [`INTERVAL`] until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.sample()).await;
        }
    }

    fn sample(&self) {
        let mut taken = HashMap::new();
        for rel in std::iter::once(String::new()).chain(container_cgroups()) {
            if let Some(cpu) = cpu_ns(&rel) {
                taken.insert(rel, Sample { at: Instant::now(), wall: SystemTime::now(), cpu_ns: cpu });
            }
        }
        if let Ok(mut samples) = self.samples.lock() {
            // Cgroups that are gone are forgotten.
            samples.retain(|k, _| taken.contains_key(k));
            for (rel, s) in taken {
                let prev = samples.get(&rel).map(|(_, last)| *last);
                samples.insert(rel, (prev, s));
            }
        }
    }

    /// The usage of the cgroup at `rel`, once it has two samples.
    fn usage(&self, rel: &str) -> Option<Usage> {
        let (prev, last) = *self.samples.lock().ok()?.get(rel)?;
        let prev = prev?;
        let window = last.at.duration_since(prev.at);
        if window.is_zero() {
            return None;
        }
        let nanocores = (last.cpu_ns.saturating_sub(prev.cpu_ns) as u128 * 1_000_000_000 / window.as_nanos()) as u64;
        Some(Usage { cpu_nanocores: nanocores, memory_bytes: working_set(rel).unwrap_or(0), timestamp: last.wall, window })
    }

    fn figures(&self, rel: &str) -> Option<Figures> {
        let (_, last) = *self.samples.lock().ok()?.get(rel)?;
        Some(Figures { cpu_ns: last.cpu_ns, nanocores: self.usage(rel).map(|u| u.cpu_nanocores), working_set: working_set(rel).unwrap_or(0), at: last.wall })
    }

    /// The node's figures, once sampled.
    pub fn node_figures(&self) -> Option<Figures> {
        self.figures("")
    }

    /// The figures of each running container of the pod with `uid` that was sampled.
    pub fn container_figures(&self, uid: &str) -> Vec<(String, Figures)> {
        self.running_containers(uid).into_iter().filter_map(|(name, id)| Some((name, self.figures(&format!("nanokube/pod{uid}/{id}"))?))).collect()
    }

    /// How many containers of the pod with `uid` run now.
    pub fn running_count(&self, uid: &str) -> usize {
        self.running_containers(uid).len()
    }

    /// The running instance's runc ID of each container of the pod with `uid`.
    fn running_containers(&self, uid: &str) -> Vec<(String, String)> {
        running_attempts(&self.runtime.pods_dir().join(uid)).into_iter().map(|(name, id, _)| (name, id)).collect()
    }
}

/// Each running container of the pod whose directory is `pod_dir`: its name, the runc ID
/// of its newest instance (one that has not exited) and that instance's bundle, by name.
pub(crate) fn running_attempts(pod_dir: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for c in std::fs::read_dir(pod_dir.join("containers")).into_iter().flatten().flatten() {
        let name = c.file_name().to_string_lossy().into_owned();
        let newest = std::fs::read_dir(c.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|a| a.file_name().to_string_lossy().parse::<u64>().ok().map(|n| (n, a.path())))
            .max_by_key(|(n, _)| *n);
        if let Some((_, attempt)) = newest {
            if attempt.join("exit.json").exists() {
                continue;
            }
            if let Ok(id) = std::fs::read_to_string(attempt.join("id")) {
                out.push((name, id.trim().to_string(), attempt));
            }
        }
    }
    out.sort();
    out
}

impl nanokube_apiserver::node_link::NamedNode for Stats {
    fn node_name(&self) -> &str {
        &self.runtime.node
    }
}

impl NodeResourceMetrics for Stats {
    fn node_usage(&self) -> Option<Usage> {
        self.usage("")
    }

    fn pod_usage(&self, pod: &Value) -> Option<Vec<(String, Usage)>> {
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?;
        let containers = self.running_containers(uid);
        if containers.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for (name, id) in containers {
            // Every container needs figures, or the pod has none yet (metrics-server).
            out.push((name, self.usage(&format!("nanokube/pod{uid}/{id}"))?));
        }
        Some(out)
    }
}
