//! Unpacking one layer tar into a directory an overlay can stack: files, links, modes,
//! owners and extended attributes as the tar has them (paths kept inside the
//! directory), and the OCI whiteouts turned into overlayfs's: `.wh.<name>` becomes a
//! 0/0 character device `<name>`, `.wh..wh..opq` the `trusted.overlay.opaque=y`
//! attribute on its directory.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A path inside the layer, relative and without `..`.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// Unpack the layer tar read from `reader` into `dir`.
pub fn unpack_layer(reader: &mut dyn Read, dir: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(rel) = inside(&path) else { continue };
        let Some(file_name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let parent = rel.parent().map(|p| dir.join(p)).unwrap_or_else(|| dir.to_path_buf());
        if file_name == ".wh..wh..opq" {
            std::fs::create_dir_all(&parent)?;
            let p = cstring(&parent)?;
            // setxattr(2) on a path we created, with static name and value buffers.
            let rc = unsafe { libc::setxattr(p.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            std::fs::create_dir_all(&parent)?;
            let target = parent.join(hidden);
            let _ = std::fs::remove_file(&target);
            let _ = std::fs::remove_dir_all(&target);
            let p = cstring(&target)?;
            // mknod(2) of a 0/0 character device (overlayfs's whiteout) at a path inside
            // the layer directory; needs CAP_MKNOD, which the node agent runs with.
            let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            continue;
        }
        entry.unpack_in(dir).map_err(|e| {
            // tar's error names the path; its cause says why.
            let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
            std::io::Error::new(e.kind(), format!("{e}{cause}"))
        })?;
    }
    Ok(())
}
