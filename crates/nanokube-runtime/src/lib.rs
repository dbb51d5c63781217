//! nanokube's container runtime side: the image store, and the pieces a container is
//! made of.
//!
//! - [`reference`]: image references normalized as containerd does.
//! - [`store`]: the content-addressed store in the data directory (`content/`): blobs,
//!   layers unpacked once for overlays (whiteouts as overlayfs's), the image records.
//! - [`archive`]: `docker save` and OCI image-layout archives imported with their names
//!   (`nanokube image load`, and k3s's air-gap directory `<data-dir>/images/` at start).
//! - [`pull`]: pulling from registries with `oci-client`.
//! - [`command`]: what a container runs: Kubernetes' `$(VAR)` expansion, `command`/`args`
//!   combined with the image's entrypoint and cmd, the environment.
//! - [`rootfs`]: a container's root filesystem, an overlay over the image's layers.
//! - [`bundle`]: its OCI runtime bundle (`config.json` from oci-spec's defaults).
//! - [`security`]: capabilities, the default seccomp filter and host devices, from a
//!   container's security context as containerd derives them.
//! - [`runc`]: running it with runc (Debian's), state under the data directory.
//! - [`shim`]: the process per container (`nanokube shim`) that starts it, keeps its
//!   output in a CRI log ([`cri_log`]) and records how it ended.
//! - [`pause`]: the PID 1 of a pod that shares one process namespace (`nanokube pause`).
//! - [`exec`]: a process run in a running container (`runc exec`), with pipes or a
//!   terminal, for `kubectl exec`.
//! - [`netns`]: a pod's network and IPC namespaces, kept by bind mounts.
//!
//! Invariants: every blob is verified against its digest before it is stored; every
//! write lands by rename; the store is shared by the server and `nanokube image` commands
//! through a lock file; nothing here forks the server's threads (runc and the shim are
//! separate processes; the one fork, `userns`' namespace holder, calls only `unshare(2)`
//! before its exec). The pods themselves are the node agent's (`nanokube-node`).

pub mod archive;
pub mod attach;
pub mod bundle;
pub mod command;
pub mod cri_log;
pub mod exec;
pub mod netns;
pub mod pause;
pub mod pull;
pub mod reference;
pub mod rootfs;
pub mod runc;
pub mod security;
pub mod shim;
pub mod store;
mod unpack;
pub mod userns;

pub use reference::Reference;

/// A program on PATH, or in the sbin and bin directories (where Debian puts runc and
/// iptables, often not on a user's PATH).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>()).unwrap_or_default();
    on_path.into_iter().chain(["/usr/sbin", "/usr/bin", "/sbin"].iter().map(|d| std::path::Path::new(d).join(name))).find(|p| p.is_file())
}
pub use store::{Image, ImageStore};
