//! OCI runtime bundles: `config.json` (oci-spec's runc-like defaults: namespaces, mounts,
//! masked and read-only paths, default capabilities) with what the container runs, as
//! whom, where, and its cgroup, beside its root filesystem.

use std::path::Path;

use std::path::PathBuf;

use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, LinuxCpu, LinuxDeviceCgroup, LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources,
    LinuxSeccomp, Mount, Process, Root, Spec, User,
};

/// A directory or file of the host bind-mounted into the container.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// On the host.
    pub source: PathBuf,
    /// In the container.
    pub destination: String,
    /// Read-only.
    pub readonly: bool,
}

/// Which namespace of a kind a container is in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Namespace {
    /// A new one of its own.
    #[default]
    New,
    /// The one kept at this path (the pod's).
    Join(PathBuf),
    /// The host's (`hostNetwork`, `hostIPC`): no namespace of that kind in the spec, as
    /// containerd does it.
    Host,
}

/// cgroup limits.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU shares (from the CPU request: 1024 per core, at least 2).
    pub cpu_shares: Option<u64>,
    /// CPU quota per 100 ms period, in microseconds (from the CPU limit).
    pub cpu_quota: Option<i64>,
}

/// What one container runs.
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// The argv ([`crate::command::argv`]).
    pub argv: Vec<String>,
    /// The environment ([`crate::command::environment`]).
    pub env: Vec<(String, String)>,
    /// The working directory ("/" when empty).
    pub cwd: String,
    /// User and group IDs.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// The hostname (the pod's).
    pub hostname: String,
    /// Whether the root filesystem is read-only (`readOnlyRootFilesystem`).
    pub readonly_rootfs: bool,
    /// Whether the process may gain privileges (`allowPrivilegeEscalation`, default true).
    pub allow_privilege_escalation: bool,
    /// The cgroup path (`/nanokube/<id>`).
    pub cgroups_path: String,
    /// Extra mounts (volumes, `/etc/hosts`, …), in order.
    pub mounts: Vec<BindMount>,
    /// The network namespace: the pod's to join, a new one, or the host's.
    pub network_namespace: Namespace,
    /// The IPC namespace: the pod's to join, a new one, or the host's.
    pub ipc_namespace: Namespace,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// cgroup limits.
    pub limits: Limits,
    /// Its capabilities ([`crate::security::capabilities`]): bounding, permitted and
    /// effective; none inheritable or ambient.
    pub capabilities: Capabilities,
    /// Privileged: no masked or read-only paths, `/sys` and cgroups writable, every host
    /// device and device access.
    pub privileged: bool,
    /// The seccomp filter (`None`: unconfined).
    pub seccomp: Option<LinuxSeccomp>,
    /// Join this PID namespace (the pod's, `shareProcessNamespace`; another container's,
    /// for a debug container) instead of a new one.
    pub pid_namespace: Namespace,
    /// The process runs on a terminal (`tty: true`; runc then needs a console socket).
    pub terminal: bool,
    /// The pod's user namespace to join, with its mapping (`hostUsers: false`;
    /// [`crate::userns::create_pod_namespaces`]); `None`: the host's.
    pub user_namespace: Option<(crate::userns::IdMapping, PathBuf)>,
}

/// Write `<bundle>/config.json` for a container whose root filesystem is `rootfs`.
pub fn write(bundle: &Path, rootfs: &Path, c: &ContainerConfig) -> Result<(), String> {
    let mut spec = Spec::default();
    let mut process = Process::default();
    process.set_args(Some(c.argv.clone()));
    process.set_env(Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()));
    process.set_cwd(if c.cwd.is_empty() { "/".into() } else { c.cwd.clone().into() });
    process.set_no_new_privileges(Some(!c.allow_privilege_escalation));
    process.set_terminal(Some(c.terminal));
    let mut user = User::default();
    user.set_uid(c.uid);
    user.set_gid(c.gid);
    if !c.additional_gids.is_empty() {
        user.set_additional_gids(Some(c.additional_gids.clone()));
    }
    process.set_user(user);
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(c.capabilities.clone()));
    caps.set_permitted(Some(c.capabilities.clone()));
    caps.set_effective(Some(c.capabilities.clone()));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    process.set_capabilities(Some(caps));
    spec.set_process(Some(process));
    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(c.readonly_rootfs));
    spec.set_root(Some(root));
    // A pod on the host's network has the host's name too (containerd shares the UTS
    // namespace then).
    if c.network_namespace != Namespace::Host {
        spec.set_hostname(Some(c.hostname.clone()));
    } else {
        spec.set_hostname(None);
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if c.privileged {
        // containerd's WithWriteableSysfs and WithWriteableCgroupfs.
        for m in mounts.iter_mut().filter(|m| matches!(m.typ().as_deref(), Some("sysfs") | Some("cgroup"))) {
            let options = m.options().clone().unwrap_or_default().into_iter().map(|o| if o == "ro" { "rw".to_string() } else { o }).collect();
            m.set_options(Some(options));
        }
    }
    for m in &c.mounts {
        let mut mount = Mount::default();
        mount.set_destination(m.destination.clone().into());
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(m.source.clone()));
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if m.readonly { "ro" } else { "rw" }.to_string());
        mount.set_options(Some(options));
        mounts.push(mount);
    }
    spec.set_mounts(Some(mounts));
    if let Some(linux) = spec.linux_mut() {
        if let Some((map, path)) = &c.user_namespace {
            let map = *map;
            let mapping = LinuxIdMappingBuilder::default().container_id(0u32).host_id(map.host_base).size(map.size).build().map_err(|e| e.to_string())?;
            linux.set_uid_mappings(Some(vec![mapping]));
            linux.set_gid_mappings(Some(vec![mapping]));
            let user = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).path(path.clone()).build().map_err(|e| e.to_string())?;
            linux.namespaces_mut().get_or_insert_with(Vec::new).push(user);
        }
        linux.set_cgroups_path(Some(c.cgroups_path.clone().into()));
        if let Some(namespaces) = linux.namespaces_mut() {
            let uts = if c.network_namespace == Namespace::Host { Namespace::Host } else { Namespace::New };
            let choice = |t: LinuxNamespaceType| match t {
                LinuxNamespaceType::Uts => &uts,
                LinuxNamespaceType::Network => &c.network_namespace,
                LinuxNamespaceType::Ipc => &c.ipc_namespace,
                LinuxNamespaceType::Pid => &c.pid_namespace,
                _ => &Namespace::New,
            };
            namespaces.retain(|ns| choice(ns.typ()) != &Namespace::Host);
            for ns in namespaces.iter_mut() {
                if let Namespace::Join(path) = choice(ns.typ()) {
                    ns.set_path(Some(path.clone()));
                }
            }
        }
        let mut resources = linux.resources().clone().unwrap_or_else(LinuxResources::default);
        if let Some(limit) = c.limits.memory {
            let mut memory = oci_spec::runtime::LinuxMemory::default();
            memory.set_limit(Some(limit));
            resources.set_memory(Some(memory));
        }
        if c.limits.cpu_shares.is_some() || c.limits.cpu_quota.is_some() {
            let mut cpu = LinuxCpu::default();
            cpu.set_shares(c.limits.cpu_shares);
            if let Some(q) = c.limits.cpu_quota {
                cpu.set_quota(Some(q));
                cpu.set_period(Some(100_000));
            }
            resources.set_cpu(Some(cpu));
        }
        if c.privileged {
            linux.set_masked_paths(None);
            linux.set_readonly_paths(None);
            linux.set_devices(Some(crate::security::host_devices(Path::new("/dev"))));
            let mut all = LinuxDeviceCgroup::default();
            all.set_allow(true);
            all.set_access(Some("rwm".into()));
            resources.set_devices(Some(vec![all]));
        }
        linux.set_resources(Some(resources));
        linux.set_seccomp(c.seccomp.clone());
    }
    std::fs::create_dir_all(bundle).map_err(|e| e.to_string())?;
    spec.save(bundle.join("config.json")).map_err(|e| format!("writing the container's config.json: {e}"))
}
