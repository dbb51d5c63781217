//! `nanokube image`: the node's image store from the command line (`load`, `ls`, `rm`,
//! `pull`, `build-self`), usable while the server runs (the store is shared through its
//! lock file).

use std::path::Path;

use nanokube_runtime::pull::Credentials;
use nanokube_runtime::{ImageStore, Reference};

fn open(data_dir: &Path) -> Result<ImageStore, String> {
    ImageStore::open(data_dir).map_err(|e| format!("image store in {}: {e}", data_dir.display()))
}

/// `nanokube image load FILE`: import a `docker save` or OCI-layout archive. Prints
/// `Loaded image: NAME` per name, as `docker load` does.
pub fn load(data_dir: &Path, file: &Path) -> Result<String, String> {
    let store = open(data_dir)?;
    let names = nanokube_runtime::archive::load(&store, file)?;
    Ok(names.iter().map(|n| format!("Loaded image: {n}\n")).collect())
}

/// The tag `build-self` gives by default: the binary's version (not `latest`, which
/// kubelet would always try to pull).
pub fn self_tag() -> String {
    format!("nanokube:v{}", env!("CARGO_PKG_VERSION"))
}

/// The shared libraries a binary loads, from `ldd` (the dynamic loader's own answer).
fn shared_libraries(binary: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let out = std::process::Command::new("ldd").arg(binary).output().map_err(|e| format!("ldd: {e}"))?;
    if !out.status.success() {
        // A static binary needs nothing besides itself.
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| std::path::PathBuf::from(path))
        })
        .collect())
}

/// `nanokube image build-self [--tag T]`: an image of this very binary and the shared
/// libraries it loads, entrypoint `nanokube`, so it runs as a container (the proxy
/// sidecar: `nanokube proxy --port=8001`).
pub fn build_self(data_dir: &Path, tag: Option<&str>) -> Result<String, String> {
    let store = open(data_dir)?;
    let binary = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
    let mut files = vec![(binary.clone(), "/usr/local/bin/nanokube".to_string())];
    for lib in shared_libraries(&binary)? {
        let inside = lib.to_string_lossy().into_owned();
        files.push((lib, inside));
    }
    let tag = tag.map(String::from).unwrap_or_else(self_tag);
    let image = nanokube_runtime::archive::build(&store, &tag, &files, &["/usr/local/bin/nanokube".to_string()])?;
    Ok(image.names.iter().map(|n| format!("Loaded image: {n}\n")).collect())
}

/// Human size as crictl prints it (`1.23MB`).
fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}{}", units[i]).replace(".000", "")
    }
}

/// `nanokube image ls`: a table like `crictl images`.
pub fn list(data_dir: &Path) -> Result<String, String> {
    let store = open(data_dir)?;
    let mut rows = vec![["IMAGE".to_string(), "TAG".into(), "IMAGE ID".into(), "SIZE".into()]];
    for image in store.list() {
        for name in &image.names {
            let (repo, tag) = match Reference::parse(name) {
                Ok(r) => (r.name(), r.tag.unwrap_or_else(|| "<none>".into())),
                Err(_) => (name.clone(), "<none>".into()),
            };
            let id: String = image.id.trim_start_matches("sha256:").chars().take(13).collect();
            rows.push([repo, tag, id, human(image.size)]);
        }
    }
    let widths: Vec<usize> = (0..4).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    Ok(rows
        .iter()
        .map(|r| {
            let line: Vec<String> = r.iter().enumerate().map(|(i, cell)| if i == 3 { cell.clone() } else { format!("{cell:<w$}", w = widths[i]) }).collect();
            line.join("   ").trim_end().to_string() + "\n"
        })
        .collect())
}

/// `nanokube image rm REF`: `Deleted: NAME` per name removed.
pub fn remove(data_dir: &Path, reference: &str) -> Result<String, String> {
    let names = open(data_dir)?.remove(reference)?;
    Ok(names.iter().map(|n| format!("Deleted: {n}\n")).collect())
}

/// `nanokube image pull REF`: `Image is up to date for NAME@DIGEST`.
pub async fn pull(data_dir: &Path, reference: &str, credentials: Option<Credentials>, insecure: &[String]) -> Result<String, String> {
    let store = open(data_dir)?;
    let image = nanokube_runtime::pull::pull(&store, reference, credentials.as_ref(), insecure).await?;
    Ok(format!("Image is up to date for {}\n", image.id))
}
