//! Shared informers (client-go's `SharedInformerFactory`): one follower per store prefix,
//! whatever the number of controllers that follow it, each change decoded once and handed
//! to every one of them.
//!
//! Seven controllers follow pods. With a follower each, every pod event was decoded seven
//! times (twice, with the previous value); now it is decoded at most once, by the first
//! controller that looks into it, and the tree is let go as soon as every controller has
//! seen it (nothing is retained per revision).
//!
//! A controller subscribes with its own shutdown signal (the controller manager stops and
//! starts its controllers as it loses and wins the leader lease). A follower starts with
//! its first subscriber, at the store's revision then, and ends when its last subscriber
//! has stopped; a later subscriber starts a new one. Subscribe before listing: a change
//! the list did not see is handed to the subscriber.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nanokube_store::follow::Change;
use nanokube_store::Backend;
use tokio::sync::watch;

use crate::workqueue::Observed;

/// What a subscriber is handed.
pub(crate) enum Shared<'a> {
    /// One change, decoded at most once for every subscriber.
    Event(&'a Observed),
    /// Changes were missed: look at everything again.
    Resync,
}

/// A subscriber's callback.
pub(crate) type Observer = Arc<dyn Fn(&Shared<'_>) + Send + Sync>;

/// One prefix's follower and who it hands changes to.
struct Follower {
    subscribers: Vec<(u64, Observer)>,
    stop: watch::Sender<bool>,
}

/// The followers of one store, by prefix.
#[derive(Default)]
struct Informers {
    followers: HashMap<String, Follower>,
    next_id: u64,
}

/// The informers of each store in the process (several servers may share a process in
/// tests), by the store's address.
static INFORMERS: Mutex<Vec<(usize, Arc<Mutex<Informers>>)>> = Mutex::new(Vec::new());

fn informers_of(store: &Arc<dyn Backend>) -> Arc<Mutex<Informers>> {
    let key = Arc::as_ptr(store) as *const () as usize;
    let Ok(mut all) = INFORMERS.lock() else { return Arc::new(Mutex::new(Informers::default())) };
    // A store that is gone leaves only its entry; entries are few (one per server).
    if let Some((_, i)) = all.iter().find(|(k, _)| *k == key) {
        return i.clone();
    }
    let i = Arc::new(Mutex::new(Informers::default()));
    all.push((key, i.clone()));
    i
}

/// Hand every change under each of `prefixes` to `observer` until `shutdown` turns true.
pub(crate) fn subscribe(store: &Arc<dyn Backend>, prefixes: &[String], shutdown: &watch::Receiver<bool>, observer: Observer) {
    let informers = informers_of(store);
    for prefix in prefixes {
        let Ok(mut inf) = informers.lock() else { return };
        let id = inf.next_id;
        inf.next_id += 1;
        match inf.followers.get_mut(prefix) {
            Some(f) => f.subscribers.push((id, observer.clone())),
            None => {
                let (stop, stopped) = watch::channel(false);
                inf.followers.insert(prefix.clone(), Follower { subscribers: vec![(id, observer.clone())], stop });
                spawn_follower(store.clone(), informers.clone(), prefix.clone(), stopped);
            }
        }
        drop(inf);
        // The subscription ends with its controller; the follower with its last one.
        let (mut sd, informers, prefix) = (shutdown.clone(), informers.clone(), prefix.clone());
        tokio::spawn(async move {
            while !*sd.borrow_and_update() {
                if sd.changed().await.is_err() {
                    break;
                }
            }
            let Ok(mut inf) = informers.lock() else { return };
            if let Some(f) = inf.followers.get_mut(&prefix) {
                f.subscribers.retain(|(i, _)| *i != id);
                if f.subscribers.is_empty() {
                    let _ = f.stop.send(true);
                    inf.followers.remove(&prefix);
                }
            }
        });
    }
}

fn spawn_follower(store: Arc<dyn Backend>, informers: Arc<Mutex<Informers>>, prefix: String, stopped: watch::Receiver<bool>) {
    let start = store.current_revision();
    tokio::spawn(async move {
        let p = prefix.clone();
        nanokube_store::follow::follow(store, &p, start, stopped, |change| {
            // The subscribers as they are now, called outside the lock (one may subscribe
            // another prefix from its callback).
            let subscribers: Vec<Observer> = match informers.lock() {
                Ok(inf) => match inf.followers.get(&prefix) {
                    Some(f) => f.subscribers.iter().map(|(_, o)| o.clone()).collect(),
                    None => return false,
                },
                Err(_) => return false,
            };
            match change {
                Change::Resync => subscribers.iter().for_each(|o| o(&Shared::Resync)),
                Change::Event(ev) => {
                    let decode = nanokube_apiserver::registry::decode;
                    if let Ok(obj) = decode(&ev.kv) {
                        // Keys are `<prefix><namespace>/<name>` for namespaced kinds.
                        let namespace = ev.kv.key.strip_prefix(prefix.as_str()).and_then(|r| r.split_once('/')).map_or("", |(ns, _)| ns).to_string();
                        let observed = Observed { namespace, obj, prev: ev.prev.as_ref().and_then(|p| decode(p).ok()), kind: ev.kind };
                        subscribers.iter().for_each(|o| o(&Shared::Event(&observed)));
                    }
                }
            }
            true
        })
        .await
    });
}
