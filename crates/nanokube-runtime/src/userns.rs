//! User namespaces for pods with `hostUsers: false`: the container's IDs 0–65535 are a
//! range of host IDs of its own, so root in the container is nobody on the host.
//!
//! runc makes the namespace from the bundle's `uidMappings`/`gidMappings`. What runc 1.1
//! cannot do is give the container a root filesystem its root owns: the image's layers
//! are the host's root's, shared by every container of the image. As containerd 2 does,
//! each layer is shown to the overlay through an *idmapped mount* (`mount_setattr(2)`
//! with `MOUNT_ATTR_IDMAP`, kernel 5.12+; overlayfs over idmapped layers, 5.19+): a
//! view of the layer whose host root appears as the range's first ID, leaving the
//! layer itself as it is. The writable layer belongs to that ID outright.
//!
//! The mount needs a user namespace with the mapping to exist while it is made; a
//! `sleep` child, made in a new user namespace by `unshare(2)` between fork and exec,
//! holds one just long enough.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// How many IDs a pod gets, as kubelet's default `userNamespaces.idsPerPod`.
pub const IDS_PER_POD: u32 = 65536;

/// A pod's IDs: container IDs `0..size` are host IDs `host_base..host_base + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    /// The host ID of the container's 0.
    pub host_base: u32,
    /// How many IDs.
    pub size: u32,
}

impl IdMapping {
    /// The line of `/proc/<pid>/uid_map` (and `gid_map`).
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.size)
    }

    /// The host ID of container ID `id`, if it is in the range.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        (id < self.size).then(|| self.host_base + id)
    }
}

/// A user namespace with a mapping, kept by a child process until dropped.
struct Holder {
    child: Child,
    ns: File,
}

impl Holder {
    /// A holder in a new user namespace, and in new namespaces of `also`'s kinds
    /// (`CLONE_NEWNET`…), which the user namespace then owns.
    fn new(map: IdMapping, also: libc::c_int) -> Result<Holder, String> {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: unshare(2) is async-signal-safe and touches only the child made by fork.
        unsafe {
            cmd.pre_exec(move || if libc::unshare(libc::CLONE_NEWUSER | also) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
        }
        // spawn returns once the child has exec'd, so the namespace exists.
        let mut child = cmd.spawn().map_err(|e| format!("making a user namespace: {e}"))?;
        let pid = child.id();
        let written = (|| -> std::io::Result<File> {
            std::fs::write(format!("/proc/{pid}/uid_map"), map.map_line())?;
            std::fs::write(format!("/proc/{pid}/gid_map"), map.map_line())?;
            File::open(format!("/proc/{pid}/ns/user"))
        })();
        match written {
            Ok(ns) => Ok(Holder { child, ns }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("mapping the user namespace: {e}"))
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// Make an idmapped view of each directory of `sources` at the matching path of
/// `targets` (existing empty directories): host `map.host_base + n` is shown for host ID
/// `n` (so the host's root appears as the container's). Unmount them with
/// [`crate::rootfs::unmount`] or `umount2`.
pub fn idmapped_views(sources: &[&Path], targets: &[&Path], map: IdMapping) -> Result<(), String> {
    let holder = Holder::new(map, 0)?;
    for (src, dst) in sources.iter().zip(targets) {
        let (csrc, cdst) = (cstring(src)?, cstring(dst)?);
        // SAFETY: open_tree(2) with a NUL-terminated path; the result is a new fd we own.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                csrc.as_ptr(),
                (OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE) as libc::c_long,
            )
        };
        if fd < 0 {
            return Err(format!("open_tree {}: {}", src.display(), std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by the kernel and is owned by nothing else.
        let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: holder.ns.as_raw_fd() as u64 };
        // SAFETY: mount_setattr(2) on the detached tree with a valid, sized mount_attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                (libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE) as libc::c_long,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(format!("idmapping {} (needs kernel 5.12+ and a filesystem that supports it): {}", src.display(), std::io::Error::last_os_error()));
        }
        // SAFETY: move_mount(2) of the detached tree onto a NUL-terminated target path.
        let rc = unsafe {
            libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, cdst.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH as libc::c_long)
        };
        if rc != 0 {
            return Err(format!("attaching the idmapped view of {} at {}: {}", src.display(), dst.display(), std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Make a pod's user namespace with `map`, kept at `user`, and the pod's network and IPC
/// namespaces inside it, kept at `net` and `ipc` (bind mounts of their `/proc` files, as
/// [`crate::netns`] keeps the others). They must be owned by the pod's user namespace:
/// a container joins that first, and may then join only namespaces it owns (kubelet gets
/// the same from making the sandbox inside the user namespace).
pub fn create_pod_namespaces(map: IdMapping, user: &Path, net: &Path, ipc: &Path) -> Result<(), String> {
    if crate::netns::is_namespace(user) && crate::netns::is_namespace(net) && crate::netns::is_namespace(ipc) {
        return Ok(());
    }
    let holder = Holder::new(map, libc::CLONE_NEWNET | libc::CLONE_NEWIPC)?;
    let pid = holder.child.id();
    for (kind, target) in [("user", user), ("net", net), ("ipc", ipc)] {
        let _ = crate::netns::remove(target);
        std::fs::File::create(target).map_err(|e| format!("{}: {e}", target.display()))?;
        let (source, dest) = (cstring(Path::new(&format!("/proc/{pid}/ns/{kind}")))?, cstring(target)?);
        // SAFETY: mount(2) with NUL-terminated paths that outlive the call.
        let rc = unsafe { libc::mount(source.as_ptr(), dest.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        if rc != 0 {
            return Err(format!("keeping the pod's {kind} namespace at {}: {}", target.display(), std::io::Error::last_os_error()));
        }
    }
    drop(holder);
    crate::netns::loopback_up_in(net)
}
