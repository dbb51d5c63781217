//! OCI runtime bundles: `config.json` (oci-spec's runc-like defaults: namespaces, mounts,
//! masked and read-only paths, default capabilities) with what the container runs, as
//! whom, where, and its cgroup, beside its root filesystem.

use std::path::Path;

use oci_spec::runtime::{Process, Root, Spec, User};

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
}

/// Write `<bundle>/config.json` for a container whose root filesystem is `rootfs`.
pub fn write(bundle: &Path, rootfs: &Path, c: &ContainerConfig) -> Result<(), String> {
    let mut spec = Spec::default();
    let mut process = Process::default();
    process.set_args(Some(c.argv.clone()));
    process.set_env(Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()));
    process.set_cwd(if c.cwd.is_empty() { "/".into() } else { c.cwd.clone().into() });
    process.set_no_new_privileges(Some(!c.allow_privilege_escalation));
    let mut user = User::default();
    user.set_uid(c.uid);
    user.set_gid(c.gid);
    process.set_user(user);
    spec.set_process(Some(process));
    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(c.readonly_rootfs));
    spec.set_root(Some(root));
    spec.set_hostname(Some(c.hostname.clone()));
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(c.cgroups_path.clone().into()));
    }
    std::fs::create_dir_all(bundle).map_err(|e| e.to_string())?;
    spec.save(bundle.join("config.json")).map_err(|e| format!("writing the container's config.json: {e}"))
}
