//! Importing image archives: `docker save` archives (`manifest.json` with `RepoTags`) and
//! OCI image-layout archives (`index.json`, names from `io.containerd.image.name` or
//! `org.opencontainers.image.ref.name`), keeping the names they carry, as `ctr images
//! import` and k3s's air-gap loader do.

use std::path::Path;

use serde_json::{json, Value};

use crate::store::{Image, ImageStore};
use crate::Reference;

/// The platform picked from multi-platform indexes.
fn this_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

/// Import the archive at `path`; the names of the images it held.
pub fn load(store: &ImageStore, path: &Path) -> Result<Vec<String>, String> {
    let dir = store.tmp("archive");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = (|| {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let reader = crate::store::decompressed(file)?;
        tar::Archive::new(reader).unpack(&dir).map_err(|e| format!("{}: not an image archive: {e}", path.display()))?;
        if dir.join("manifest.json").exists() && !dir.join("index.json").exists() {
            load_docker(store, &dir)
        } else if dir.join("index.json").exists() {
            load_oci(store, &dir)
        } else {
            Err(format!("{}: neither a docker-save archive (manifest.json) nor an OCI image layout (index.json)", path.display()))
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|images| images.into_iter().flat_map(|i| i.names).collect())
}

/// An image made here of host files (`nanokube image build-self`): one uncompressed layer
/// holding each `(host file, path in the image)` (symbolic links followed), with
/// `entrypoint`, committed to the store under `name`.
pub fn build(store: &ImageStore, name: &str, files: &[(std::path::PathBuf, String)], entrypoint: &[String]) -> Result<Image, String> {
    let name = Reference::parse(name).map_err(|e| format!("{name}: {e}"))?.to_string();
    let tmp = store.tmp("build");
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let result = (|| {
        let layer_path = tmp.join("layer.tar");
        {
            let file = std::fs::File::create(&layer_path).map_err(|e| e.to_string())?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
            tar.follow_symlinks(true);
            let mut dirs = std::collections::BTreeSet::new();
            for (_, inside) in files {
                let mut p = Path::new(inside.trim_start_matches('/')).parent();
                while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                    dirs.insert(d.to_path_buf());
                    p = d.parent();
                }
            }
            dirs.insert("tmp".into());
            for d in &dirs {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(if d == Path::new("tmp") { 0o1777 } else { 0o755 });
                h.set_size(0);
                h.set_mtime(0);
                h.set_uid(0);
                h.set_gid(0);
                tar.append_data(&mut h, d, std::io::empty()).map_err(|e| e.to_string())?;
            }
            for (host, inside) in files {
                tar.append_path_with_name(host, inside.trim_start_matches('/')).map_err(|e| format!("{}: {e}", host.display()))?;
            }
            tar.into_inner().map_err(|e| e.to_string())?.into_inner().map_err(|e| e.to_string())?;
        }
        let (layer_digest, layer_size) = store.put_blob_file(&layer_path, None)?;
        let config = json!({
            "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", other => other },
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
        let config_digest = store.put_blob(&config_bytes, None)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let manifest_digest = store.put_blob(&bytes, None)?;
        store.commit(vec![name.clone()], &manifest_digest, &manifest)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn read_json(path: &Path) -> Result<Value, String> {
    serde_json::from_slice(&std::fs::read(regular(path)?).map_err(|e| format!("{}: {e}", path.display()))?).map_err(|e| format!("{}: {e}", path.display()))
}

fn normalize(names: impl IntoIterator<Item = String>) -> Result<Vec<String>, String> {
    names.into_iter().map(|n| Reference::parse(&n).map(|r| r.to_string())).collect()
}

/// A regular file named inside the archive: refused if the name would leave it or the
/// entry is a link (an archive could point `config.json` at any file of the host).
fn within(dir: &Path, name: &str) -> Result<std::path::PathBuf, String> {
    let p = Path::new(name);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("the archive names a path outside itself: {name:?}"));
    }
    regular(&dir.join(p))
}

fn regular(path: &Path) -> Result<std::path::PathBuf, String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(path.to_path_buf()),
        Ok(_) => Err(format!("{}: not a regular file in the archive", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn load_docker(store: &ImageStore, dir: &Path) -> Result<Vec<Image>, String> {
    let manifest = read_json(&dir.join("manifest.json"))?;
    let mut out = Vec::new();
    for entry in manifest.as_array().ok_or("manifest.json is not a list")? {
        let config_path = entry.get("Config").and_then(Value::as_str).ok_or("manifest.json entry without Config")?;
        let config_bytes = std::fs::read(within(dir, config_path)?).map_err(|e| format!("{config_path}: {e}"))?;
        let config_digest = store.put_blob(&config_bytes, None)?;
        let mut layers = Vec::new();
        for l in entry.get("Layers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let p = l.as_str().ok_or("layer path is not a string")?;
            let (digest, size) = store.put_blob_file(&within(dir, p)?, None)?;
            let gz = store.blob_is_gzip(&digest)?;
            let media_type = if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" };
            layers.push(json!({"mediaType": media_type, "digest": digest, "size": size}));
        }
        let names = normalize(
            entry
                .get("RepoTags")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect::<Vec<_>>())
                .unwrap_or_default(),
        )?;
        if names.is_empty() {
            return Err("the archive's image carries no name (RepoTags): tag it before saving".into());
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let manifest_digest = store.put_blob(&bytes, None)?;
        out.push(store.commit(names, &manifest_digest, &manifest)?);
    }
    Ok(out)
}

fn load_oci(store: &ImageStore, dir: &Path) -> Result<Vec<Image>, String> {
    // Every blob in the layout, verified as it moves in.
    if let Ok(entries) = std::fs::read_dir(dir.join("blobs/sha256")) {
        for e in entries.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_file())) {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            store.put_blob_file(&e.path(), Some(&digest))?;
        }
    }
    let index = read_json(&dir.join("index.json"))?;
    let mut out = Vec::new();
    for desc in index.get("manifests").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let annotations = desc.get("annotations").cloned().unwrap_or(Value::Null);
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or("an image in index.json carries no name (io.containerd.image.name or org.opencontainers.image.ref.name)")?;
        let names = normalize([name])?;
        let (digest, manifest) = pick_manifest(store, desc)?;
        out.push(store.commit(names, &digest, &manifest)?);
    }
    Ok(out)
}

/// The image manifest a descriptor leads to: itself, or this platform's in an index.
pub(crate) fn pick_manifest(store: &ImageStore, desc: &Value) -> Result<(String, Value), String> {
    let digest = desc.get("digest").and_then(Value::as_str).ok_or("descriptor without digest")?.to_string();
    let doc: Value = serde_json::from_slice(&store.read_blob(&digest)?).map_err(|e| e.to_string())?;
    let media = doc.get("mediaType").and_then(Value::as_str).or_else(|| desc.get("mediaType").and_then(Value::as_str)).unwrap_or("");
    if !(media.contains("index") || media.contains("manifest.list")) {
        return Ok((digest, doc));
    }
    let (os, arch) = this_platform();
    let manifests = doc.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
    let chosen = manifests
        .iter()
        .find(|m| m.pointer("/platform/os").and_then(Value::as_str) == Some(os) && m.pointer("/platform/architecture").and_then(Value::as_str) == Some(arch))
        .ok_or_else(|| format!("no image for {os}/{arch} in {digest}"))?;
    pick_manifest(store, chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of (name, contents) files and (name, target) symlinks.
    fn tar_of(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let header = |ty| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(ty);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        for (name, data) in files {
            let mut h = header(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).unwrap();
        }
        for (name, target) in links {
            let mut h = header(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn an_archive_cannot_make_the_loader_read_host_files() {
        let dir = std::env::temp_dir().join(format!("nanokube-archive-test-{}", std::process::id()));
        let store = ImageStore::open(&dir).unwrap();
        let archive = dir.join("a.tar");
        let manifest = br#"[{"Config":"config.json","RepoTags":["x:1"],"Layers":[]}]"#;
        std::fs::write(&archive, tar_of(&[("manifest.json", manifest)], &[("config.json", "/etc/hostname")])).unwrap();
        let err = load(&store, &archive).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        let escaping = br#"[{"Config":"../../etc/hostname","RepoTags":["x:1"],"Layers":[]}]"#;
        std::fs::write(&archive, tar_of(&[("manifest.json", escaping)], &[])).unwrap();
        assert!(load(&store, &archive).unwrap_err().contains("outside"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
