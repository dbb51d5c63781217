//! The content-addressed image store in the data directory:
//!
//! ```text
//! content/blobs/sha256/<hex>      manifests, configs and layers as fetched (verified)
//! content/layers/sha256/<diffid>/ each layer unpacked once, whiteouts as overlayfs wants
//! content/images.json             the images: names, config digest (the image ID),
//!                                 manifest digest, layers with their diff IDs, size
//! content/lock                    flock'd by every writer (the server and the CLI)
//! ```
//!
//! Everything is written to a temporary name and renamed into place, so a crash leaves
//! either the old state or the new one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The blob's digest (as the manifest names it).
    pub digest: String,
    /// The digest of the uncompressed tar (`rootfs.diff_ids`): the unpacked directory's name.
    pub diff_id: String,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
}

/// One image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Normalized references naming it (`docker.io/library/busybox:latest`).
    pub names: Vec<String>,
    /// The config's digest: the image ID.
    pub id: String,
    /// The manifest's digest (`repo@digest` resolves to it).
    pub manifest_digest: String,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    /// Bytes of its blobs (layers as stored, and the config).
    pub size: u64,
}

/// The image store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// A held writer lock (released on drop).
pub(crate) struct Locked(#[allow(dead_code)] File);

/// Hex SHA-256 of `bytes`, as `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R> {
    pub inner: R,
    pub ctx: ring::digest::Context,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

fn digest_hex(digest: &str) -> Result<&str, String> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| format!("unsupported digest {digest:?}"))?;
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!("invalid digest {digest:?}"))
    }
}

impl ImageStore {
    /// The store under `data_dir` (created if missing).
    pub fn open(data_dir: &Path) -> std::io::Result<ImageStore> {
        let root = data_dir.join("content");
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        Ok(ImageStore { root })
    }

    /// Take the writers' lock.
    pub(crate) fn lock(&self) -> Result<Locked, String> {
        use std::os::unix::io::AsRawFd;
        let f = File::options().create(true).truncate(false).write(true).open(self.root.join("lock")).map_err(|e| e.to_string())?;
        // flock(2) on a descriptor we own; it is released when the file is closed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Locked(f))
    }

    /// A fresh temporary path in the store (same filesystem, for renames).
    pub(crate) fn tmp(&self, what: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{what}-{}-{}", std::process::id(), fastrand::u32(..)))
    }

    /// Where a blob lives.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, String> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// Where an unpacked layer lives.
    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf, String> {
        Ok(self.root.join("layers/sha256").join(digest_hex(diff_id)?))
    }

    /// Whether a blob is stored.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// Store `bytes` as a blob, checking it has `digest` when given. Its digest.
    pub fn put_blob(&self, bytes: &[u8], digest: Option<&str>) -> Result<String, String> {
        let actual = sha256(bytes);
        if let Some(d) = digest {
            if d != actual {
                return Err(format!("digest mismatch: expected {d}, got {actual}"));
            }
        }
        let path = self.blob_path(&actual)?;
        if !path.exists() {
            let tmp = self.tmp("blob");
            std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        }
        Ok(actual)
    }

    /// Store the file at `path` as a blob (moved in); its digest and size.
    pub fn put_blob_file(&self, path: &Path, digest: Option<&str>) -> Result<(String, u64), String> {
        let mut f = File::open(path).map_err(|e| e.to_string())?;
        let mut r = HashingReader { inner: &mut f, ctx: ring::digest::Context::new(&ring::digest::SHA256) };
        let size = std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| e.to_string())?;
        let actual = format!("sha256:{}", hex(r.ctx.finish().as_ref()));
        if let Some(d) = digest {
            if d != actual {
                return Err(format!("digest mismatch: expected {d}, got {actual}"));
            }
        }
        let dest = self.blob_path(&actual)?;
        if dest.exists() {
            let _ = std::fs::remove_file(path);
        } else if std::fs::rename(path, &dest).is_err() {
            std::fs::copy(path, &dest).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(path);
        }
        Ok((actual, size))
    }

    /// Whether a stored blob is gzip-compressed.
    pub(crate) fn blob_is_gzip(&self, digest: &str) -> Result<bool, String> {
        let f = File::open(self.blob_path(digest)?).map_err(|e| e.to_string())?;
        is_gzip(&f)
    }

    /// A stored blob's bytes.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.blob_path(digest)?).map_err(|e| format!("blob {digest}: {e}"))
    }

    fn images_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// Every image.
    pub fn list(&self) -> Vec<Image> {
        std::fs::read(self.images_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn save(&self, images: &[Image]) -> Result<(), String> {
        let tmp = self.tmp("images");
        std::fs::write(&tmp, serde_json::to_vec_pretty(images).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, self.images_path()).map_err(|e| e.to_string())
    }

    /// The image `reference` names: a normalized name, `name@digest`, or an ID (or its
    /// first 12+ hex digits).
    pub fn resolve(&self, reference: &str) -> Option<Image> {
        let images = self.list();
        let id = reference.strip_prefix("sha256:").unwrap_or(reference);
        if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Some(i) = images.iter().find(|i| i.id.trim_start_matches("sha256:").starts_with(id)) {
                return Some(i.clone());
            }
        }
        let r = crate::Reference::parse(reference).ok()?;
        match &r.digest {
            Some(d) => images.into_iter().find(|i| {
                &i.manifest_digest == d && i.names.iter().any(|n| n.starts_with(&format!("{}:", r.name())) || n.starts_with(&format!("{}@", r.name())))
            }),
            None => images.into_iter().find(|i| i.names.contains(&r.to_string())),
        }
    }

    /// Record an image (its blobs and layers already stored): its names move to it from
    /// any other image, an image left without names is dropped.
    pub(crate) fn record(&self, mut image: Image) -> Result<Image, String> {
        let _lock = self.lock()?;
        let mut images = self.list();
        for other in images.iter_mut() {
            other.names.retain(|n| !image.names.contains(n));
        }
        if let Some(same) = images.iter_mut().find(|i| i.id == image.id && i.manifest_digest == image.manifest_digest) {
            for n in &same.names {
                if !image.names.contains(n) {
                    image.names.push(n.clone());
                }
            }
            *same = image.clone();
        } else {
            images.push(image.clone());
        }
        images.retain(|i| !i.names.is_empty());
        image.names.sort();
        self.save(&images)?;
        Ok(image)
    }

    /// Remove the image `reference` names (all its names); its blobs and unpacked layers go
    /// when no other image uses them. The names removed.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>, String> {
        let image = self.resolve(reference).ok_or_else(|| format!("image \"{reference}\": not found"))?;
        let _lock = self.lock()?;
        let mut images = self.list();
        images.retain(|i| !(i.id == image.id && i.manifest_digest == image.manifest_digest));
        self.save(&images)?;
        let used = |f: &dyn Fn(&Image) -> Vec<String>| -> Vec<String> { images.iter().flat_map(f).collect() };
        let blobs = used(&|i: &Image| i.layers.iter().map(|l| l.digest.clone()).chain([i.id.clone(), i.manifest_digest.clone()]).collect());
        let layers = used(&|i: &Image| i.layers.iter().map(|l| l.diff_id.clone()).collect());
        for d in image.layers.iter().map(|l| &l.digest).chain([&image.id, &image.manifest_digest]) {
            if !blobs.contains(d) {
                if let Ok(p) = self.blob_path(d) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        for l in &image.layers {
            if !layers.contains(&l.diff_id) {
                if let Ok(p) = self.layer_path(&l.diff_id) {
                    let _ = std::fs::remove_dir_all(p);
                }
            }
        }
        Ok(image.names)
    }

    /// Unpack a stored layer blob (gzip or plain tar) once, into its diff ID's directory,
    /// with whiteouts as overlayfs reads them; returns the diff ID (checked against
    /// `expected` when given).
    pub fn unpack(&self, layer_digest: &str, expected: Option<&str>) -> Result<String, String> {
        if let Some(d) = expected {
            if self.layer_path(d)?.join(".nanokube-unpacked").exists() {
                return Ok(d.to_string());
            }
        }
        let blob = File::open(self.blob_path(layer_digest)?).map_err(|e| e.to_string())?;
        let reader = decompressed(blob)?;
        let mut hashing = HashingReader { inner: reader, ctx: ring::digest::Context::new(&ring::digest::SHA256) };
        let dir = self.tmp("layer");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let result = crate::unpack::unpack_layer(&mut hashing, &dir);
        // Whatever the tar did not read still counts for the diff ID.
        let _ = std::io::copy(&mut hashing, &mut std::io::sink());
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("unpacking layer {layer_digest}: {e}"));
        }
        let diff_id = format!("sha256:{}", hex(hashing.ctx.finish().as_ref()));
        if let Some(d) = expected {
            if d != diff_id {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("layer {layer_digest}: diff ID mismatch: expected {d}, got {diff_id}"));
            }
        }
        File::create(dir.join(".nanokube-unpacked")).map_err(|e| e.to_string())?;
        let dest = self.layer_path(&diff_id)?;
        if dest.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            std::fs::rename(&dir, &dest).map_err(|e| e.to_string())?;
        }
        Ok(diff_id)
    }

    /// Record an image from its stored manifest and config blobs: unpack the layers, and
    /// name it `names`.
    pub(crate) fn commit(&self, names: Vec<String>, manifest_digest: &str, manifest: &Value) -> Result<Image, String> {
        let config_digest = manifest.pointer("/config/digest").and_then(Value::as_str).ok_or("manifest has no config")?.to_string();
        let config: Value = serde_json::from_slice(&self.read_blob(&config_digest)?).map_err(|e| format!("image config: {e}"))?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|d| d.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let descriptors = manifest.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
        if diff_ids.len() != descriptors.len() {
            return Err(format!("image config lists {} layers, the manifest {}", diff_ids.len(), descriptors.len()));
        }
        let mut layers = Vec::new();
        let mut size = manifest.pointer("/config/size").and_then(Value::as_u64).unwrap_or(0);
        for (d, diff_id) in descriptors.iter().zip(&diff_ids) {
            let digest = d.get("digest").and_then(Value::as_str).ok_or("layer without digest")?.to_string();
            let media_type = d.get("mediaType").and_then(Value::as_str).unwrap_or("").to_string();
            self.unpack(&digest, Some(diff_id))?;
            let layer_size = d.get("size").and_then(Value::as_u64).unwrap_or(0);
            size += layer_size;
            layers.push(Layer { digest, diff_id: diff_id.clone(), media_type, size: layer_size });
        }
        self.record(Image { names, id: config_digest, manifest_digest: manifest_digest.to_string(), layers, size })
    }

    /// Import every archive in `dir` (k3s's air-gap images directory), oldest first.
    pub fn import_dir(&self, dir: &Path) -> Vec<(PathBuf, Result<Vec<String>, String>)> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        files.into_iter().map(|p| (p.clone(), crate::archive::load(self, &p))).collect()
    }

    /// Names and sizes for the Node's `status.images`.
    pub fn node_images(&self) -> Vec<(Vec<String>, u64)> {
        let mut out: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
        for i in self.list() {
            let mut names = i.names.clone();
            for n in &i.names {
                if let Ok(r) = crate::Reference::parse(n) {
                    names.push(format!("{}@{}", r.name(), i.manifest_digest));
                }
            }
            // One entry per image ID, with every name it goes by (as kubelet reports them).
            let entry = out.entry(i.id.clone()).or_insert_with(|| (Vec::new(), i.size));
            entry.0.extend(names);
            entry.0.sort();
            entry.0.dedup();
        }
        out.into_values().collect()
    }
}

/// Whether a file starts with gzip's magic bytes.
fn is_gzip(f: &File) -> Result<bool, String> {
    Ok(head(f)?[..2] == [0x1f, 0x8b])
}

/// A zstd frame's magic number, as it appears in a file.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A file's first four bytes (zeros where it is shorter).
fn head(f: &File) -> Result<[u8; 4], String> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 4];
    f.read_at(&mut head, 0).map_err(|e| e.to_string())?;
    Ok(head)
}

/// A file's bytes, decompressed when it is gzip or zstd (layers come any of the three
/// ways: `tar`, `tar+gzip`, `tar+zstd`; archives plain or gzip).
pub(crate) fn decompressed(f: File) -> Result<Box<dyn Read>, String> {
    let magic = head(&f)?;
    Ok(if magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else if magic == ZSTD_MAGIC {
        Box::new(ZstdFrames { current: None, source: Some(Peeked::new(std::io::BufReader::new(f))) })
    } else {
        Box::new(f)
    })
}

/// A reader that can look at the next four bytes before handing them on.
struct Peeked<R> {
    head: [u8; 4],
    len: usize,
    pos: usize,
    inner: R,
}

impl<R: Read> Peeked<R> {
    fn new(inner: R) -> Self {
        Peeked { head: [0; 4], len: 0, pos: 0, inner }
    }

    /// The next (up to) four bytes, left to be read again.
    fn peek4(&mut self) -> std::io::Result<&[u8]> {
        // Keep what is still unread, then fill up to four.
        self.head.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        while self.len < 4 {
            let n = self.inner.read(&mut self.head[self.len..])?;
            if n == 0 {
                break;
            }
            self.len += n;
        }
        Ok(&self.head[..self.len])
    }
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos < self.len {
            let n = (self.len - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

type ZstdSource = Peeked<std::io::BufReader<File>>;

/// Every frame of a zstd stream in turn (a stream may hold several; skippable frames,
/// such as zstd:chunked's table of contents, are passed over).
struct ZstdFrames {
    current: Option<ruzstd::decoding::StreamingDecoder<ZstdSource, ruzstd::decoding::FrameDecoder>>,
    source: Option<ZstdSource>,
}

impl Read for ZstdFrames {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        loop {
            if let Some(d) = self.current.as_mut() {
                let n = d.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if let Some(d) = self.current.take() {
                    self.source = Some(d.into_inner());
                }
            }
            let Some(mut src) = self.source.take() else { return Ok(0) };
            let magic = src.peek4()?.to_vec();
            if magic.is_empty() {
                return Ok(0);
            }
            if magic.len() == 4 && magic[1..] == [0x2a, 0x4d, 0x18] && magic[0] & 0xf0 == 0x50 {
                // A skippable frame: its magic, a 4-byte little-endian length, then that
                // many bytes.
                let mut header = [0u8; 8];
                src.read_exact(&mut header)?;
                let length = u64::from(u32::from_le_bytes([header[4], header[5], header[6], header[7]]));
                let skipped = std::io::copy(&mut (&mut src).take(length), &mut std::io::sink())?;
                if skipped != length {
                    return Err(invalid("zstd: truncated skippable frame".into()));
                }
                self.source = Some(src);
                continue;
            }
            self.current = Some(ruzstd::decoding::StreamingDecoder::new(src).map_err(|e| invalid(format!("zstd: {e}")))?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_streams_of_several_frames_and_skippable_ones() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let first: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let second = b"and a second frame".to_vec();
        let mut stream = compress_to_vec(&first[..], CompressionLevel::Fastest);
        // A skippable frame (zstd:chunked keeps its table of contents in one).
        stream.extend_from_slice(&[0x5e, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        stream.extend(compress_to_vec(&second[..], CompressionLevel::Fastest));
        let path = std::env::temp_dir().join(format!("nanokube-zstd-{}", std::process::id()));
        std::fs::write(&path, &stream).unwrap();
        let mut out = Vec::new();
        decompressed(File::open(&path).unwrap()).unwrap().read_to_end(&mut out).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut want = first;
        want.extend(second);
        assert_eq!(out.len(), want.len());
        assert!(out == want);
        // A truncated stream is an error, not a panic or a short success.
        let path = std::env::temp_dir().join(format!("nanokube-zstd-cut-{}", std::process::id()));
        std::fs::write(&path, &stream[..stream.len() / 3]).unwrap();
        let r = decompressed(File::open(&path).unwrap()).unwrap().read_to_end(&mut Vec::new());
        std::fs::remove_file(&path).unwrap();
        assert!(r.is_err());
    }
}
