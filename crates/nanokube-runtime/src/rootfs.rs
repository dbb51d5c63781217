//! A container's root filesystem: an overlay of its image's unpacked layers (read-only,
//! shared by every container of the image) under a writable layer of its own.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::store::{Image, ImageStore};

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// Mount `image` as an overlay at `<dir>/rootfs` (writable layer `<dir>/upper`, overlayfs's
/// `<dir>/work`); the mounted path.
pub fn mount(store: &ImageStore, image: &Image, dir: &Path) -> Result<PathBuf, String> {
    let (rootfs, upper, work) = (dir.join("rootfs"), dir.join("upper"), dir.join("work"));
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    // overlayfs lists lower directories top first.
    let mut lower = Vec::new();
    for l in image.layers.iter().rev() {
        let p = store.layer_path(&l.diff_id)?;
        if !p.is_dir() {
            return Err(format!("layer {} of {} is not unpacked", l.diff_id, image.id));
        }
        lower.push(p.display().to_string());
    }
    if lower.is_empty() {
        // An image without layers: an empty read-only lower directory.
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| e.to_string())?;
        lower.push(empty.display().to_string());
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
    let (src, target, fstype, data) = (
        CString::new("overlay").map_err(|e| e.to_string())?,
        cstring(&rootfs)?,
        CString::new("overlay").map_err(|e| e.to_string())?,
        CString::new(options).map_err(|e| e.to_string())?,
    );
    // mount(2) of an overlay with NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(format!("mounting the root filesystem at {}: {}", rootfs.display(), std::io::Error::last_os_error()));
    }
    Ok(rootfs)
}

/// Unmount a root filesystem mounted by [`mount`] (lazily, so a busy one goes when free).
pub fn unmount(rootfs: &Path) -> Result<(), String> {
    let target = cstring(rootfs)?;
    // umount2(2) with MNT_DETACH on a path we mounted.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(format!("unmounting {}: {e}", rootfs.display()));
        }
    }
    Ok(())
}
