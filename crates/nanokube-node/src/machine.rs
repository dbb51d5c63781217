//! What the machine is, as kubelet's cAdvisor reads it: CPUs, memory, the data
//! directory's filesystem, kernel, OS image, machine and boot IDs.

use std::path::Path;

/// The machine's facts.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: u64,
    /// `MemTotal`, in bytes.
    pub memory_bytes: u64,
    /// Size of the filesystem holding the data directory, in bytes.
    pub disk_bytes: u64,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os_image: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// The DMI product UUID when readable, else the machine ID.
    pub system_uuid: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The host name, lowercased as kubelet does.
    pub hostname: String,
    /// `amd64`, `arm64`, ...
    pub architecture: &'static str,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The host name (lowercased), as kubelet's default node name.
pub fn hostname() -> String {
    let h = read_trimmed("/proc/sys/kernel/hostname");
    if h.is_empty() {
        "localhost".into()
    } else {
        h.to_lowercase()
    }
}

/// A `/proc/meminfo` figure (`key` with its colon, e.g. `MemTotal:`), in bytes.
pub(crate) fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()).and_then(|kib| kib.parse::<u64>().ok()).map(|kib| kib * 1024)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn mem_total() -> u64 {
    meminfo("MemTotal:").unwrap_or(0)
}

/// statvfs(3) of the filesystem holding `path`.
pub(crate) fn statvfs(path: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct we own; the
    // struct is only used when the call succeeds.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then_some(st)
}

/// Total bytes of the filesystem holding `path`.
fn fs_size(path: &Path) -> u64 {
    statvfs(path).map_or(0, |st| st.f_blocks.saturating_mul(st.f_frsize))
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string()).unwrap_or_else(|| "Linux".into())
}

impl Machine {
    /// Read the machine, measuring the filesystem of `data_dir`.
    pub fn read(data_dir: &Path) -> Machine {
        let machine_id = read_trimmed("/etc/machine-id");
        let product_uuid = read_trimmed("/sys/class/dmi/id/product_uuid");
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory_bytes: mem_total(),
            disk_bytes: fs_size(data_dir),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            os_image: os_image(),
            system_uuid: if product_uuid.is_empty() { machine_id.clone() } else { product_uuid },
            machine_id,
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            hostname: hostname(),
            architecture: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            },
        }
    }
}
