//! A container's root filesystem: an overlay of its image's unpacked layers (read-only,
//! shared by every container of the image) under a writable layer of its own.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::store::{Image, ImageStore};

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// The image's unpacked layers as overlayfs lists them (top first); an image without
/// layers gets an empty directory under `dir`.
fn lower_dirs(store: &ImageStore, image: &Image, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut lower = Vec::new();
    for l in image.layers.iter().rev() {
        let p = store.layer_path(&l.diff_id)?;
        if !p.is_dir() {
            return Err(format!("layer {} of {} is not unpacked", l.diff_id, image.id));
        }
        lower.push(p);
    }
    if lower.is_empty() {
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| e.to_string())?;
        lower.push(empty);
    }
    Ok(lower)
}

fn mount_overlay(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), String> {
    let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
    let (src, ctarget, fstype, data) = (
        CString::new("overlay").map_err(|e| e.to_string())?,
        cstring(target)?,
        CString::new("overlay").map_err(|e| e.to_string())?,
        CString::new(options).map_err(|e| e.to_string())?,
    );
    // mount(2) of an overlay with NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), ctarget.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(format!("mounting the root filesystem at {}: {}", target.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Mount `image` as an overlay at `<dir>/rootfs` (writable layer `<dir>/upper`, overlayfs's
/// `<dir>/work`); the mounted path.
pub fn mount(store: &ImageStore, image: &Image, dir: &Path) -> Result<PathBuf, String> {
    let (rootfs, upper, work) = (dir.join("rootfs"), dir.join("upper"), dir.join("work"));
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    mount_overlay(&lower_dirs(store, image, dir)?, &upper, &work, &rootfs)?;
    Ok(rootfs)
}

/// [`mount`] for a container in a user namespace (`hostUsers: false`): the layers are
/// seen through idmapped views ([`crate::userns`]) so the image's root is the
/// container's root, and the writable layer is that ID's. The overlay and the views are
/// mounted under `run_dir` (every directory on its path searchable by others: runc
/// enters the root filesystem as the container's root, which the data directory, often
/// under `/root`, keeps out), and `<dir>/rootfs` links to it. The mounted path.
pub fn mount_in_user_namespace(store: &ImageStore, image: &Image, dir: &Path, run_dir: &Path, map: crate::userns::IdMapping) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        std::os::unix::fs::chown(d, Some(map.host_base), Some(map.host_base)).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut searchable = run_dir.to_path_buf();
    let mut chain = Vec::new();
    while !searchable.exists() {
        chain.push(searchable.clone());
        if !searchable.pop() {
            break;
        }
    }
    std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    for d in chain {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let layers = lower_dirs(store, image, dir)?;
    let views: Vec<PathBuf> = (0..layers.len()).map(|i| run_dir.join("lower").join(i.to_string())).collect();
    for v in &views {
        std::fs::create_dir_all(v).map_err(|e| format!("{}: {e}", v.display()))?;
    }
    let rootfs = run_dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    let link = dir.join("rootfs");
    let _ = std::fs::remove_dir(&link);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&rootfs, &link).map_err(|e| format!("{}: {e}", link.display()))?;
    let sources: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
    let targets: Vec<&Path> = views.iter().map(PathBuf::as_path).collect();
    let mounted = crate::userns::idmapped_views(&sources, &targets, map).and_then(|()| mount_overlay(&views, &upper, &work, &rootfs));
    if let Err(e) = mounted {
        let _ = unmount(&link);
        return Err(e);
    }
    Ok(rootfs)
}

/// Unmount a root filesystem mounted by [`mount`] or [`mount_in_user_namespace`]
/// (lazily, so a busy one goes when free); for the latter, also its layers' views and
/// the directories under its run directory (never recursively: nothing mounted is
/// walked into).
pub fn unmount(rootfs: &Path) -> Result<(), String> {
    let linked = std::fs::read_link(rootfs).ok();
    detach(rootfs)?;
    if let Some(real) = linked {
        if let Some(run_dir) = real.parent() {
            let lower = run_dir.join("lower");
            for view in std::fs::read_dir(&lower).into_iter().flatten().flatten() {
                detach(&view.path())?;
                let _ = std::fs::remove_dir(view.path());
            }
            let _ = std::fs::remove_dir(&lower);
            let _ = std::fs::remove_dir(&real);
            let _ = std::fs::remove_dir(run_dir);
        }
    }
    Ok(())
}

fn detach(target: &Path) -> Result<(), String> {
    let ctarget = cstring(target)?;
    // umount2(2) with MNT_DETACH on a path we mounted.
    let rc = unsafe { libc::umount2(ctarget.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(format!("unmounting {}: {e}", target.display()));
        }
    }
    Ok(())
}
