//! `nanokube store migrate`: copy a cluster from one store to another (the embedded
//! SQLite file and etcd, either way). Every key under `/registry/` is copied with its
//! value as it is, so names, uids, creation timestamps, generations and everything else
//! in the objects stay the same; resourceVersions are the target's revisions, as after
//! an etcd backup restored into another cluster. The target must hold no objects unless
//! told to overwrite; at the end the keys of both are counted, resource by resource.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use nanokube_store::etcd::{EtcdBackend, EtcdOptions};
use nanokube_store::sqlite::{SqliteBackend, SqliteOptions};
use nanokube_store::{Backend, StoreError};

/// Where a store is: a SQLite file (a data directory's `state.db`) or etcd.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded store: a `state.db` file, or a data directory holding one.
    Sqlite(PathBuf),
    /// etcd: its client URLs, TLS files and key prefix.
    Etcd(EtcdOptions),
}

impl Location {
    /// Parse `sqlite:PATH` or `etcd:URL[,URL…]` (TLS files and prefix given apart).
    pub fn parse(s: &str, etcd_tls: &EtcdOptions) -> Result<Location, String> {
        if let Some(p) = s.strip_prefix("sqlite:") {
            let p = PathBuf::from(p);
            return Ok(Location::Sqlite(if p.is_dir() { p.join("state.db") } else { p }));
        }
        if let Some(urls) = s.strip_prefix("etcd:") {
            let endpoints: Vec<String> = urls.split(',').filter(|u| !u.is_empty()).map(String::from).collect();
            if endpoints.is_empty() || endpoints.iter().any(|u| !u.starts_with("http://") && !u.starts_with("https://")) {
                return Err(format!("{s:?}: etcd endpoints are http:// or https:// URLs, comma-separated"));
            }
            return Ok(Location::Etcd(EtcdOptions { endpoints, compaction_interval: std::time::Duration::ZERO, ..etcd_tls.clone() }));
        }
        Err(format!("{s:?} is neither sqlite:PATH nor etcd:URL[,URL…]"))
    }

    async fn open(&self, must_exist: bool) -> Result<Arc<dyn Backend>, String> {
        match self {
            Location::Sqlite(path) => {
                if must_exist && !path.is_file() {
                    return Err(format!("{} does not exist", path.display()));
                }
                let store = SqliteBackend::open(SqliteOptions { path: Some(path.clone()), history: 1, ..Default::default() })
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Arc::new(store))
            }
            Location::Etcd(opts) => Ok(Arc::new(EtcdBackend::open(opts.clone()).await.map_err(|e| e.to_string())?)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => format!("sqlite:{}", p.display()),
            Location::Etcd(o) => format!("etcd:{} (prefix {})", o.endpoints.join(","), o.prefix),
        }
    }
}

/// The resource part of a key (`/registry/services/specs/ns/x` → `/registry/services/`),
/// for the per-resource counts.
fn resource_of(key: &str) -> String {
    let rest = key.trim_start_matches("/registry/");
    let mut parts = rest.split('/');
    let first = parts.next().unwrap_or("");
    // Custom resources and upstream's `services/specs` take two segments.
    if first.contains('.') || first == "services" {
        if let Some(second) = parts.next() {
            return format!("/registry/{first}/{second}/");
        }
    }
    format!("/registry/{first}/")
}

fn counts(store: &dyn Backend) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for kv in store.list("/registry/", None, 0).items {
        *out.entry(resource_of(&kv.key)).or_insert(0) += 1;
    }
    out
}

/// Copy every object from `from` to `to`, printing progress to stderr. Returns a summary.
pub async fn migrate(from: &Location, to: &Location, overwrite: bool) -> Result<String, String> {
    let source = from.open(true).await?;
    let target = to.open(false).await?;
    let result = copy(&*source, &*target, overwrite).await;
    let _ = source.close().await;
    let _ = target.close().await;
    let copied = result?;
    Ok(format!("copied {copied} objects from {} to {}; the counts of every resource agree\n", from.describe(), to.describe()))
}

async fn copy(source: &dyn Backend, target: &dyn Backend, overwrite: bool) -> Result<usize, String> {
    target.sync().await.map_err(|e| format!("target: {e}"))?;
    let existing = target.count("/registry/");
    if existing > 0 && !overwrite {
        return Err(format!("the target already holds {existing} objects; pass --overwrite to copy over them"));
    }
    source.sync().await.map_err(|e| format!("source: {e}"))?;
    let items = source.list("/registry/", None, 0).items;
    let total = items.len();
    let mut err = std::io::stderr();
    let mut done = 0usize;
    let mut last_shown = std::time::Instant::now();
    // Several writes in flight: the embedded store commits them in groups, etcd
    // pipelines them.
    for chunk in items.chunks(64) {
        let writes = chunk.iter().map(|kv| async move {
            match target.create(kv.key.clone(), kv.value.clone()).await {
                Ok(_) => Ok(()),
                Err(StoreError::AlreadyExists) if overwrite => target.update(kv.key.clone(), kv.value.clone(), None).await.map(|_| ()),
                Err(e) => Err(e),
            }
            .map_err(|e| format!("{}: {e}", kv.key))
        });
        for r in futures_util::future::join_all(writes).await {
            r?;
        }
        done += chunk.len();
        if last_shown.elapsed() > std::time::Duration::from_millis(200) || done == total {
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width);
            let _ = write!(err, "\r[{}{}] {done}/{total} objects", "#".repeat(filled), " ".repeat(width - filled));
            let _ = err.flush();
            last_shown = std::time::Instant::now();
        }
    }
    if total > 0 {
        let _ = writeln!(err);
    }
    target.sync().await.map_err(|e| format!("target: {e}"))?;
    let (want, got) = (counts(source), counts(target));
    if !overwrite || existing == 0 {
        if want != got {
            let diff: Vec<String> = want
                .keys()
                .chain(got.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| want.get(*k) != got.get(*k))
                .map(|k| format!("{k}: {} in the source, {} in the target", want.get(k).unwrap_or(&0), got.get(k).unwrap_or(&0)))
                .collect();
            return Err(format!("the counts differ after copying: {}", diff.join("; ")));
        }
    } else {
        for (k, n) in &want {
            if got.get(k).copied().unwrap_or(0) < *n {
                return Err(format!("{k}: {n} in the source, only {} in the target", got.get(k).unwrap_or(&0)));
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_resources() {
        let tls = EtcdOptions::default();
        assert!(matches!(Location::parse("etcd:http://127.0.0.1:2379,http://127.0.0.1:2381", &tls), Ok(Location::Etcd(o)) if o.endpoints.len() == 2));
        assert!(Location::parse("etcd:127.0.0.1:2379", &tls).is_err());
        assert!(Location::parse("/tmp/x", &tls).is_err());
        assert_eq!(resource_of("/registry/services/specs/default/x"), "/registry/services/specs/");
        assert_eq!(resource_of("/registry/pods/default/x"), "/registry/pods/");
        assert_eq!(resource_of("/registry/example.com/widgets/ns/x"), "/registry/example.com/widgets/");
    }
}
