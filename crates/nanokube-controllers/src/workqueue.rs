//! The machinery kube-controller-manager's controllers share (client-go's workqueue and
//! the controllers' "expectations"): keys to reconcile, each at most once in the queue
//! and never reconciled twice at once; failures retried with per-key exponential
//! back-off; and what a controller expects to see of its own creates and deletes, so it
//! never acts twice on a state its writes have not reached yet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// client-go's `DefaultControllerRateLimiter` per-item part: 5 ms doubling to 1000 s.
const BACKOFF_BASE: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1000);

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Added while being processed: queued again when done.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

/// A rate-limited work queue of keys (`namespace/name`).
#[derive(Default)]
pub struct WorkQueue {
    inner: Mutex<Inner>,
    ready: Notify,
}

impl WorkQueue {
    /// A new, empty queue.
    pub fn new() -> Arc<WorkQueue> {
        Arc::new(WorkQueue::default())
    }

    /// Queue `key` (once, however often it is added before it is taken).
    pub fn add(&self, key: &str) {
        let Ok(mut q) = self.inner.lock() else { return };
        if q.processing.contains(key) {
            q.dirty.insert(key.to_string());
            return;
        }
        if q.queued.insert(key.to_string()) {
            q.queue.push_back(key.to_string());
            drop(q);
            self.ready.notify_one();
        }
    }

    /// Queue `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: &str, delay: Duration) {
        let (me, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.add(&key);
        });
    }

    /// Queue `key` again after its back-off, which doubles with each failure.
    pub fn add_rate_limited(self: &Arc<Self>, key: &str) {
        let failures = {
            let Ok(mut q) = self.inner.lock() else { return };
            let n = q.failures.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(30)).min(BACKOFF_MAX);
        self.add_after(key, delay);
    }

    /// Forget `key`'s failures (it reconciled).
    pub fn forget(&self, key: &str) {
        if let Ok(mut q) = self.inner.lock() {
            q.failures.remove(key);
        }
    }

    /// The next key to reconcile; it is the caller's until [`WorkQueue::done`].
    pub async fn get(&self) -> String {
        loop {
            let notified = self.ready.notified();
            if let Ok(mut q) = self.inner.lock() {
                if let Some(key) = q.queue.pop_front() {
                    q.queued.remove(&key);
                    q.processing.insert(key.clone());
                    return key;
                }
            }
            notified.await;
        }
    }

    /// The caller is done with `key`; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let again = {
            let Ok(mut q) = self.inner.lock() else { return };
            q.processing.remove(key);
            q.dirty.remove(key)
        };
        if again {
            self.add(key);
        }
    }
}

/// Take keys from `queue` and reconcile each with `sync` until `shutdown`: a failure is
/// retried after the key's back-off, a success forgets its failures.
pub(crate) async fn work<F, Fut>(queue: &Arc<WorkQueue>, controller: &str, mut shutdown: tokio::sync::watch::Receiver<bool>, sync: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), nanokube_api::ApiError>>,
{
    loop {
        let key = tokio::select! {
            _ = shutdown.changed() => return,
            k = queue.get() => k,
        };
        match sync(key.clone()).await {
            Ok(()) => queue.forget(&key),
            Err(e) => {
                tracing::debug!(%controller, %key, "sync failed: {}", e.message);
                queue.add_rate_limited(&key);
            }
        }
        queue.done(&key);
    }
}

/// Queue the key (`namespace/name`) of every object of `def` (in `namespace`, or all).
pub(crate) fn enqueue_each(
    registry: &nanokube_apiserver::registry::Registry,
    queue: &WorkQueue,
    def: &nanokube_api::resources::ResourceDef,
    namespace: Option<&str>,
) {
    if let Ok(list) = registry.list(def, namespace, &nanokube_apiserver::registry::ListOptions::default()) {
        for o in &list.items {
            queue.add(&format!("{}/{}", nanokube_api::meta::namespace(o.value()), nanokube_api::meta::name(o.value())));
        }
    }
}

/// One change a controller is told of: the object as it is now (as it last was, for a
/// delete), as it was before, and what happened.
pub(crate) struct Observed {
    /// The object's namespace (from its key: known without decoding it).
    pub namespace: String,
    /// The object after the change.
    pub obj: nanokube_apiserver::registry::Obj,
    /// The object before it, if there was one.
    pub prev: Option<nanokube_apiserver::registry::Obj>,
    /// Created, updated or deleted.
    pub kind: nanokube_store::EventKind,
}

impl Observed {
    /// The object's value.
    pub fn value(&self) -> &serde_json::Value {
        self.obj.value()
    }

    /// Whether the object is of `kind`: read from the start of its encoding, which names
    /// the kind first (decoded only if it does not).
    pub fn is(&self, kind: &str) -> bool {
        let head = self.obj.json_head();
        match head.strip_prefix(br#"{"kind":""#) {
            Some(rest) => rest.strip_prefix(kind.as_bytes()).is_some_and(|r| r.first() == Some(&b'"')),
            None => self.value().get("kind").and_then(serde_json::Value::as_str) == Some(kind),
        }
    }

    /// Whether the object, or what it was before, may have owners. A `false` is certain
    /// and costs no decoding.
    pub fn may_have_owners(&self) -> bool {
        let owned = |o: &nanokube_apiserver::registry::Obj| o.json_contains(br#""ownerReferences""#);
        owned(&self.obj) || self.prev.as_ref().is_some_and(owned)
    }
}

/// Whether any object of `def` lives in `namespace`: a controller whose objects are
/// absent from a namespace need not look into the changes of others there.
pub(crate) fn any_in(registry: &nanokube_apiserver::registry::Registry, def: &nanokube_api::resources::ResourceDef, namespace: &str) -> bool {
    let first = nanokube_apiserver::registry::ListOptions { limit: 1, ..Default::default() };
    registry.list(def, Some(namespace), &first).is_ok_and(|l| !l.items.is_empty())
}

/// Queue the owners of `def` in `obj`'s namespace whose (non-empty) selector matches
/// `obj`'s labels: those that may adopt it, an orphan.
pub(crate) fn enqueue_adopters(
    registry: &nanokube_apiserver::registry::Registry,
    queue: &WorkQueue,
    def: &nanokube_api::resources::ResourceDef,
    obj: &serde_json::Value,
) {
    use nanokube_api::meta;
    let ns = meta::namespace(obj);
    let Ok(list) = registry.list(def, Some(ns), &nanokube_apiserver::registry::ListOptions::default()) else { return };
    for owner in &list.items {
        let sel = owner.value().pointer("/spec/selector").and_then(|s| nanokube_api::selector::LabelSelector::from_object(s).ok());
        if sel.is_some_and(|s| !s.requirements.is_empty() && s.matches(meta::labels(obj))) {
            queue.add(&crate::objects::key_of(owner.value()));
        }
    }
}

/// Run a workload controller until `shutdown`: subscribe to the shared informers of
/// `prefixes` (each change handed to `observe`, decoded once for every controller),
/// queue every object it owns (`enqueue_all`, also after the informers had to start
/// over), and reconcile queued keys with `sync` (client-go's informers feeding a worker).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<C, F, Fut>(
    controller: Arc<C>,
    store: &Arc<dyn nanokube_store::Backend>,
    queue: &Arc<WorkQueue>,
    component: &str,
    prefixes: &[String],
    shutdown: tokio::sync::watch::Receiver<bool>,
    enqueue_all: fn(&C),
    observe: fn(&C, &Observed),
    sync: F,
) where
    C: Send + Sync + 'static,
    F: Fn(Arc<C>, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), nanokube_api::ApiError>>,
{
    let me = controller.clone();
    let on_change = move |change: &crate::informers::Shared<'_>| match change {
        crate::informers::Shared::Resync => enqueue_all(&me),
        crate::informers::Shared::Event(observed) => observe(&me, observed),
    };
    // Subscribed before listing: what the list misses, the informers hand over.
    crate::informers::subscribe(store, prefixes, &shutdown, Arc::new(on_change));
    enqueue_all(&controller);
    work(queue, component, shutdown, move |key| sync(controller.clone(), key)).await
}

/// How long an expectation is trusted before the controller acts anyway (upstream's
/// `ExpectationsTimeout`).
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

/// What each controller key still expects to observe of its own writes.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, (i64, i64, Instant)>>);

impl Expectations {
    /// `key` will see `adds` creations and `dels` deletions of its own.
    pub fn expect(&self, key: &str, adds: i64, dels: i64) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key.to_string(), (adds, dels, Instant::now()));
        }
    }

    /// One creation was seen (or will never be: it failed).
    pub fn creation_observed(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(e) = m.get_mut(key) {
                e.0 -= 1;
            }
        }
    }

    /// One deletion was seen (or will never be).
    pub fn deletion_observed(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(e) = m.get_mut(key) {
                e.1 -= 1;
            }
        }
    }

    /// Whether `key` may act: everything it expected was seen, or it waited too long.
    pub fn satisfied(&self, key: &str) -> bool {
        let Ok(m) = self.0.lock() else { return true };
        match m.get(key) {
            None => true,
            Some((adds, dels, since)) => (*adds <= 0 && *dels <= 0) || since.elapsed() > EXPECTATIONS_TIMEOUT,
        }
    }

    /// Forget `key` (its object is gone).
    pub fn forget(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_queued_once_and_never_processed_twice_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        let k = q.get().await;
        assert_eq!(k, "a");
        // Added while processed: back once done, not before.
        q.add("a");
        assert_eq!(q.get().await, "b");
        q.done("a");
        assert_eq!(q.get().await, "a");
    }

    #[test]
    fn expectations_wait_for_the_controllers_own_writes() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 2, 0);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }
}
