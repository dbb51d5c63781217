//! What a container may do: its capabilities, its seccomp filter and, when privileged,
//! the host's devices — as containerd's CRI plugin derives them from a container's
//! `securityContext`.

use std::path::Path;
use std::str::FromStr;

use oci_spec::runtime::{Arch, Capabilities, Capability, LinuxDevice, LinuxDeviceType, LinuxSeccomp, LinuxSeccompAction, LinuxSyscall};

/// containerd's default set for every container (`oci.defaultUnixCaps`), so a container
/// sees the same `CapEff` (`00000000a80425fb`) as under containerd or Docker.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability the OCI spec names (CAP_CHOWN … CAP_CHECKPOINT_RESTORE).
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn parse(name: &str) -> Option<Capability> {
    Capability::from_str(&name.to_ascii_uppercase()).ok()
}

/// The capabilities this process may hand on (its bounding set, `CapBnd`): "all
/// capabilities" for a privileged container, as containerd's `WithAllCurrentCapabilities`
/// (a sandbox or container running nanokube may itself lack some).
pub fn current_capabilities() -> Capabilities {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok()).unwrap_or(u64::MAX);
    ALL_CAPABILITIES.iter().enumerate().filter(|(bit, _)| bounding & (1u64 << bit) != 0).filter_map(|(_, c)| parse(c)).collect()
}

/// The capability set of a container: all of them ([`current_capabilities`]) when
/// privileged; otherwise the default set, then `add: [ALL]`, `drop: [ALL]`, then the
/// single adds and drops, in containerd's order (so `add: [ALL], drop: [CHOWN]` is
/// everything but CHOWN). Names are Kubernetes' (`NET_ADMIN`, no `CAP_` prefix); unknown
/// ones are ignored, as runc ignores them.
pub fn capabilities(privileged: bool, add: &[String], drop: &[String]) -> Capabilities {
    let all = current_capabilities;
    if privileged {
        return all();
    }
    let mut set: Capabilities = DEFAULT_CAPABILITIES.iter().filter_map(|c| parse(c)).collect();
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    if add.iter().any(is_all) {
        set = all();
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    set.extend(add.iter().filter(|c| !is_all(c)).filter_map(|c| parse(c)));
    for c in drop.iter().filter(|c| !is_all(c)).filter_map(|c| parse(c)) {
        set.remove(&c);
    }
    set
}

/// Syscalls the runtime's default profile refuses (EPERM) unless the container holds the
/// capability that makes them legitimate — the same calls containerd's and Docker's
/// default profiles leave out of their allow lists. `None`: refused whatever the
/// capabilities.
const GATED_SYSCALLS: &[(Option<&str>, &[&str])] = &[
    (
        Some("SYS_ADMIN"),
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Some("SYS_BOOT"), &["reboot", "kexec_file_load", "kexec_load"]),
    (Some("SYS_MODULE"), &["create_module", "delete_module", "finit_module", "init_module", "query_module", "get_kernel_syms"]),
    (Some("SYS_PACCT"), &["acct"]),
    (Some("SYS_RAWIO"), &["ioperm", "iopl"]),
    (Some("SYS_TIME"), &["clock_adjtime", "clock_settime", "settimeofday", "stime"]),
    (Some("SYS_NICE"), &["get_mempolicy", "mbind", "set_mempolicy", "move_pages"]),
    (Some("SYSLOG"), &["syslog"]),
    (Some("SYS_TTY_CONFIG"), &["vhangup"]),
    (Some("DAC_READ_SEARCH"), &["open_by_handle_at"]),
    (None, &["add_key", "keyctl", "request_key", "nfsservctl", "swapon", "swapoff", "sysfs", "_sysctl", "uselib", "userfaultfd", "ustat", "vm86", "vm86old"]),
];

/// The `RuntimeDefault` seccomp filter for a container holding `caps`: everything is
/// allowed except [`GATED_SYSCALLS`] the capabilities do not cover, which fail with
/// EPERM. (containerd writes the same refusals as an allow list of ~350 calls; calls
/// newer than that list are refused there and allowed here.)
pub fn runtime_default_seccomp(caps: &Capabilities) -> LinuxSeccomp {
    let mut names: Vec<String> = Vec::new();
    for (cap, calls) in GATED_SYSCALLS {
        let allowed = cap.and_then(parse).is_some_and(|c| caps.contains(&c));
        if !allowed {
            names.extend(calls.iter().map(|s| s.to_string()));
        }
    }
    let rule = |names: Vec<String>, errno: i32| {
        let mut r = LinuxSyscall::default();
        r.set_names(names);
        r.set_action(LinuxSeccompAction::ScmpActErrno);
        r.set_errno_ret(Some(errno as u32));
        r
    };
    let mut rules = vec![rule(names, libc::EPERM)];
    if !parse("SYS_ADMIN").is_some_and(|c| caps.contains(&c)) {
        // clone3 can carry namespace flags the filter cannot see; ENOSYS (not EPERM) makes
        // glibc fall back to clone, as the default profiles do.
        rules.push(rule(vec!["clone3".into()], libc::ENOSYS));
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActAllow);
    seccomp.set_architectures(Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]));
    seccomp.set_syscalls(Some(rules));
    seccomp
}

/// The host's device nodes under `/dev`, for a privileged container (containerd's
/// `WithDevices(HostDevices())`): character and block devices, without the pseudo
/// terminals, shared memory, message queues and console the container gets its own of.
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk(dev, dev, &mut out, 0);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<LinuxDevice>, depth: usize) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().to_string();
        if ["pts", "shm", "mqueue", "console", "ptmx", ".udev", "fd", "stdin", "stdout", "stderr"].contains(&rel.as_str()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let ft = meta.file_type();
        if ft.is_dir() && depth < 4 {
            walk(root, &path, out, depth + 1);
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        let rdev = meta.rdev();
        let mut d = LinuxDevice::default();
        d.set_path(Path::new("/dev").join(&rel));
        d.set_typ(typ);
        d.set_major(libc::major(rdev) as i64);
        d.set_minor(libc::minor(rdev) as i64);
        d.set_file_mode(Some(meta.mode() & 0o7777));
        d.set_uid(Some(meta.uid()));
        d.set_gid(Some(meta.gid()));
        out.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(set: &Capabilities) -> u64 {
        ALL_CAPABILITIES.iter().enumerate().filter(|(_, c)| set.contains(&parse(c).unwrap())).map(|(bit, _)| 1u64 << bit).sum()
    }

    #[test]
    fn default_set_is_containerds() {
        // Docker's and containerd's well-known CapEff.
        assert_eq!(mask(&capabilities(false, &[], &[])), 0xa80425fb);
        assert_eq!(capabilities(true, &[], &[]), current_capabilities());
    }

    #[test]
    fn all_then_single_adds_and_drops() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let everything_but_chown = capabilities(false, &s(&["ALL"]), &s(&["CHOWN"]));
        assert_eq!(mask(&everything_but_chown), mask(&current_capabilities()) & !1);
        let only_net_admin = capabilities(false, &s(&["NET_ADMIN", "bogus"]), &s(&["all"]));
        assert_eq!(mask(&only_net_admin), 1 << 12);
        assert!(!capabilities(false, &[], &s(&["kill"])).contains(&Capability::Kill));
    }

    #[test]
    fn default_seccomp_follows_capabilities() {
        let names = |caps: &Capabilities| runtime_default_seccomp(caps).syscalls().clone().unwrap()[0].names().clone();
        let plain = names(&capabilities(false, &[], &[]));
        assert!(plain.contains(&"mount".to_string()) && plain.contains(&"keyctl".to_string()));
        let admin = names(&capabilities(false, &["SYS_ADMIN".into()], &[]));
        assert!(!admin.contains(&"mount".to_string()) && admin.contains(&"keyctl".to_string()));
    }
}
