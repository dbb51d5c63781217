//! kubelet's eviction manager: hard eviction thresholds on the node's signals
//! (`--eviction-hard`, kubelet's flag and default), the pressure conditions they raise
//! (held for `--eviction-pressure-transition-period` after the last time a threshold was
//! met), the pod chosen to go when one is met (kubelet's ranking), pods refused while the
//! node is under pressure, and pods over their ephemeral-storage limits.
//!
//! Signals are read as kubelet's summary provider reads them: `memory.available` is the
//! machine's memory less the root memory cgroup's working set (usage less inactive
//! file pages); `nodefs.*` is the filesystem of the data directory, `imagefs.*` the
//! image store's; `pid.available` is `pid_max` less the processes running. Soft
//! thresholds (`--eviction-soft`) are not built.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::machine::{meminfo, statvfs};

/// kubelet's default `--eviction-hard` on Linux.
pub const KUBELET_DEFAULT_HARD: &str = "imagefs.available<15%,imagefs.inodesFree<5%,memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%";

/// nanokube's default: kubelet's memory threshold, and the disk thresholds at 0% as kind
/// sets them: a cluster on a developer's or CI machine, whose disk is often past 85%
/// full with nothing wrong, should not refuse and evict every pod for it.
/// `--eviction-hard` with [`KUBELET_DEFAULT_HARD`] gives kubelet's.
pub const DEFAULT_HARD: &str = "memory.available<100Mi,nodefs.available<0%,nodefs.inodesFree<0%,imagefs.available<0%";

/// How often signals are read (kubelet's `evictionMonitoringPeriod`).
pub const MONITORING_PERIOD: Duration = Duration::from_secs(10);

/// The grace period of a pod evicted for a hard threshold or a storage limit (kubelet's
/// `immediateEvictionGracePeriodSeconds`).
pub const IMMEDIATE_GRACE: Duration = Duration::from_secs(1);

/// An eviction signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// `memory.available`.
    MemoryAvailable,
    /// `nodefs.available`.
    NodeFsAvailable,
    /// `nodefs.inodesFree`.
    NodeFsInodesFree,
    /// `imagefs.available`.
    ImageFsAvailable,
    /// `imagefs.inodesFree`.
    ImageFsInodesFree,
    /// `pid.available`.
    PidAvailable,
}

impl Signal {
    const ALL: [Signal; 6] =
        [Signal::MemoryAvailable, Signal::NodeFsAvailable, Signal::NodeFsInodesFree, Signal::ImageFsAvailable, Signal::ImageFsInodesFree, Signal::PidAvailable];

    /// kubelet's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The node condition it raises.
    pub fn condition(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "MemoryPressure",
            Signal::PidAvailable => "PIDPressure",
            _ => "DiskPressure",
        }
    }

    /// The resource named in eviction messages (`The node was low on resource: …`).
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }
}

/// A threshold's value: a quantity, or a percentage of the signal's capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Bytes (or inodes, or PIDs).
    Quantity(u64),
    /// Percent of capacity.
    Percent(f64),
}

/// One hard threshold: `signal < amount`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The signal.
    pub signal: Signal,
    /// Below what.
    pub amount: Amount,
}

impl Threshold {
    /// The threshold as a quantity of a signal whose capacity is `capacity`.
    pub fn quantity(&self, capacity: u64) -> u64 {
        match self.amount {
            Amount::Quantity(q) => q,
            Amount::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }
}

/// Parse `--eviction-hard` (`signal<quantity|percent%`, comma-separated) as kubelet's
/// `ParseThresholdConfig`: unknown signals, operators other than `<`, negative or
/// over-100% amounts are errors; an empty string is no thresholds.
pub fn parse_thresholds(spec: &str) -> Result<Vec<Threshold>, String> {
    let mut out: Vec<Threshold> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = item.split_once('<').ok_or_else(|| format!("invalid eviction threshold {item:?}: the only operator is <"))?;
        let signal = Signal::ALL.into_iter().find(|s| s.name() == name.trim()).ok_or_else(|| format!("unsupported eviction signal {name}"))?;
        let value = value.trim();
        let amount = if let Some(p) = value.strip_suffix('%') {
            let p: f64 = p.parse().map_err(|_| format!("invalid percentage {value:?} for {name}"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("eviction percentage threshold {name} must be >= 0% and <= 100%: {value}"));
            }
            Amount::Percent(p)
        } else {
            let q = nanokube_api::expressions::parse_quantity(value).ok_or_else(|| format!("invalid quantity {value:?} for {name}"))?;
            if q < 0.0 {
                return Err(format!("eviction threshold {name} must be positive: {value}"));
            }
            Amount::Quantity(q as u64)
        };
        if out.iter().any(|t| t.signal == signal) {
            return Err(format!("found duplicate eviction threshold for signal {name}"));
        }
        out.push(Threshold { signal, amount });
    }
    Ok(out)
}

/// A signal's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// What is left.
    pub available: u64,
    /// The whole.
    pub capacity: u64,
}

/// Read every signal: the data directory's filesystem for `nodefs`, `images` for
/// `imagefs`.
// statvfs's field types differ between targets.
#[allow(clippy::unnecessary_cast)]
pub fn observe(data_dir: &Path, images: &Path) -> BTreeMap<Signal, Observation> {
    let mut out = BTreeMap::new();
    if let Some(total) = meminfo("MemTotal:") {
        // The root cgroup's working set on v1; on a machine without one, MemAvailable.
        let available = match crate::pods::stats::working_set("") {
            Some(ws) if ws <= total => total - ws,
            _ => meminfo("MemAvailable:").unwrap_or(0),
        };
        out.insert(Signal::MemoryAvailable, Observation { available, capacity: total });
    }
    for (path, bytes, inodes) in [(data_dir, Signal::NodeFsAvailable, Signal::NodeFsInodesFree), (images, Signal::ImageFsAvailable, Signal::ImageFsInodesFree)]
    {
        if let Some(st) = statvfs(path) {
            let frsize = st.f_frsize as u64;
            out.insert(bytes, Observation { available: st.f_bavail as u64 * frsize, capacity: st.f_blocks as u64 * frsize });
            if st.f_files > 0 {
                out.insert(inodes, Observation { available: st.f_favail as u64, capacity: st.f_files as u64 });
            }
        }
    }
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
    let running =
        std::fs::read_dir("/proc").map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count()).unwrap_or(0);
    out.insert(Signal::PidAvailable, Observation { available: pid_max.saturating_sub(running as u64), capacity: pid_max });
    out
}

/// The thresholds met by `observed`, with their readings.
pub fn met<'a>(thresholds: &'a [Threshold], observed: &BTreeMap<Signal, Observation>) -> Vec<(&'a Threshold, Observation)> {
    thresholds.iter().filter_map(|t| observed.get(&t.signal).filter(|o| o.available < t.quantity(o.capacity)).map(|o| (t, *o))).collect()
}

/// A quantity as `resource.Quantity`'s `String()` writes a binary-SI one: the largest
/// power-of-1024 suffix that divides it exactly.
pub fn binary_si(n: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if n == 0 {
        return "0".into();
    }
    let (mut v, mut suffix) = (n, "");
    for s in SUFFIXES {
        if v % 1024 != 0 {
            break;
        }
        v /= 1024;
        suffix = s;
    }
    format!("{v}{suffix}")
}

/// The node's pressure conditions, each held for the transition period after the last
/// time one of its thresholds was met; worked out at each observation and kept until
/// the next, as kubelet's eviction manager keeps them between synchronizations.
#[derive(Debug, Default)]
pub struct Pressure {
    last_met: BTreeMap<&'static str, Instant>,
    transition: Duration,
    current: Vec<&'static str>,
}

impl Pressure {
    /// Conditions held `transition` after their thresholds stop being met.
    pub fn new(transition: Duration) -> Self {
        Pressure { last_met: BTreeMap::new(), transition, current: Vec::new() }
    }

    /// Record what is met now, and work out the conditions in force.
    pub fn observe(&mut self, met: &[(&Threshold, Observation)], now: Instant) {
        for (t, _) in met {
            self.last_met.insert(t.signal.condition(), now);
        }
        self.current = ["MemoryPressure", "DiskPressure", "PIDPressure"]
            .into_iter()
            .filter(|c| self.last_met.get(c).is_some_and(|t| now.saturating_duration_since(*t) <= self.transition))
            .collect();
    }

    /// The conditions in force since the last observation, in kubelet's order
    /// (MemoryPressure, DiskPressure, PIDPressure).
    pub fn conditions(&self) -> Vec<&'static str> {
        self.current.clone()
    }
}

/// The node's thresholds and the pressure they raised.
#[derive(Debug)]
pub struct Manager {
    /// `--eviction-hard`.
    pub thresholds: Vec<Threshold>,
    pressure: std::sync::Mutex<Pressure>,
}

impl Manager {
    /// A manager with `thresholds`, conditions held `transition` after they clear.
    pub fn new(thresholds: Vec<Threshold>, transition: Duration) -> Self {
        Manager { thresholds, pressure: std::sync::Mutex::new(Pressure::new(transition)) }
    }

    /// Read the signals and record the thresholds met; those met.
    pub fn observe(&self, data_dir: &Path, images: &Path) -> Vec<(Threshold, Observation)> {
        let observed = observe(data_dir, images);
        let met: Vec<(Threshold, Observation)> = met(&self.thresholds, &observed).into_iter().map(|(t, o)| (t.clone(), o)).collect();
        if let Ok(mut p) = self.pressure.lock() {
            let refs: Vec<(&Threshold, Observation)> = met.iter().map(|(t, o)| (t, *o)).collect();
            p.observe(&refs, Instant::now());
        }
        met
    }

    /// The pressure conditions in force now.
    pub fn conditions(&self) -> Vec<&'static str> {
        self.pressure.lock().map(|p| p.conditions()).unwrap_or_default()
    }
}

impl Default for Manager {
    /// No thresholds: never under pressure.
    fn default() -> Self {
        Manager::new(Vec::new(), Duration::ZERO)
    }
}

/// Whether a pod may start on a node under `conditions`, as the eviction manager's
/// admission: under memory pressure only pods that are not BestEffort (or that
/// tolerate the memory-pressure taint); under disk or PID pressure none; critical pods
/// always. The refusal's message when not.
pub fn admit(pod: &serde_json::Value, conditions: &[&str]) -> Result<(), String> {
    if conditions.is_empty() || is_critical(pod) {
        return Ok(());
    }
    let refused = || Err(format!("The node had condition: [{}]. ", conditions.join(" ")));
    if conditions != ["MemoryPressure"] {
        return refused();
    }
    let best_effort = pod.pointer("/status/qosClass").and_then(serde_json::Value::as_str) == Some("BestEffort") || qos_best_effort(pod);
    let tolerates = pod.pointer("/spec/tolerations").and_then(serde_json::Value::as_array).into_iter().flatten().any(|t| {
        let key_ok = t.get("key").and_then(serde_json::Value::as_str).is_none_or(|k| k.is_empty() || k == "node.kubernetes.io/memory-pressure");
        let effect_ok = t.get("effect").and_then(serde_json::Value::as_str).is_none_or(|e| e.is_empty() || e == "NoSchedule");
        key_ok && effect_ok && t.get("operator").and_then(serde_json::Value::as_str) == Some("Exists")
    });
    if best_effort && !tolerates {
        return refused();
    }
    Ok(())
}

/// Critical pods (`system-node-critical` / `system-cluster-critical` priority, or a
/// static pod) are never refused or evicted.
pub fn is_critical(pod: &serde_json::Value) -> bool {
    pod.pointer("/spec/priority").and_then(serde_json::Value::as_i64).is_some_and(|p| p >= 2_000_000_000)
}

fn qos_best_effort(pod: &serde_json::Value) -> bool {
    let containers = ["containers", "initContainers"]
        .into_iter()
        .flat_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(serde_json::Value::as_array).cloned().unwrap_or_default());
    containers.into_iter().all(|c| {
        ["requests", "limits"].iter().all(|k| {
            c.pointer(&format!("/resources/{k}")).and_then(serde_json::Value::as_object).is_none_or(|m| !m.contains_key("cpu") && !m.contains_key("memory"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_kubelet_reads_them() {
        let t = parse_thresholds(KUBELET_DEFAULT_HARD).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[2], Threshold { signal: Signal::MemoryAvailable, amount: Amount::Quantity(100 << 20) });
        assert_eq!(t[3].amount, Amount::Percent(10.0));
        assert!(parse_thresholds("memory.available>1Gi").is_err());
        assert!(parse_thresholds("memory.free<1Gi").is_err());
        assert!(parse_thresholds("nodefs.available<101%").is_err());
        assert!(parse_thresholds("memory.available<1Gi,memory.available<2Gi").is_err());
        assert_eq!(parse_thresholds("").unwrap(), vec![]);
    }

    #[test]
    fn pressure_holds_for_the_transition_period() {
        let t = parse_thresholds("memory.available<1Gi").unwrap();
        let now = Instant::now();
        let mut p = Pressure::new(Duration::from_secs(30));
        let low = BTreeMap::from([(Signal::MemoryAvailable, Observation { available: 1, capacity: 10 << 30 })]);
        p.observe(&met(&t, &low), now);
        assert_eq!(p.conditions(), ["MemoryPressure"]);
        p.observe(&[], now + Duration::from_secs(29));
        assert_eq!(p.conditions(), ["MemoryPressure"]);
        p.observe(&[], now + Duration::from_secs(31));
        assert!(p.conditions().is_empty());
    }

    #[test]
    fn quantities_print_as_go_does() {
        assert_eq!(binary_si(100 << 20), "100Mi");
        assert_eq!(binary_si(1 << 50), "1Pi");
        assert_eq!(binary_si(1536), "1536");
        assert_eq!(binary_si(3 << 10), "3Ki");
    }
}
