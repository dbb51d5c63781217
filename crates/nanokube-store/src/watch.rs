//! Watch fan-out: a ring of recent events and one broadcast channel per watched prefix,
//! kept consistent under one lock so a new watcher gets every event after its start
//! revision exactly once. An event wakes only the watchers whose prefix it falls under:
//! with a dozen controllers each watching their own kinds, a ConfigMap write wakes the
//! two that care instead of all of them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::{Event, Revision, StoreError};

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Revision before the oldest event in the ring: watches may start at or after it.
    floor: Revision,
    capacity: usize,
    /// Live channels, one per prefix being watched.
    channels: Vec<(String, broadcast::Sender<Arc<Event>>)>,
}

/// Events a live channel holds for a slow receiver before it lags. A receiver that lags
/// refills from the ring (which is longer), so this bounds memory per watched prefix,
/// not what a watcher can catch up on.
const CHANNEL_CAPACITY: usize = 4096;

/// A backlog of events and the live receiver that continues it.
type Subscription = (VecDeque<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// Recent events and live subscribers.
pub struct History {
    ring: Mutex<Ring>,
}

impl History {
    /// A history keeping `capacity` events, starting at revision `floor`.
    pub fn new(capacity: usize, floor: Revision) -> Self {
        History { ring: Mutex::new(Ring { events: VecDeque::new(), floor, capacity: capacity.max(1), channels: Vec::new() }) }
    }

    /// Record an event and deliver it to live watchers. Must be called in revision order.
    pub fn publish(&self, ev: Arc<Event>) {
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ring.events.len() == ring.capacity {
            if let Some(old) = ring.events.pop_front() {
                ring.floor = old.revision();
            }
        }
        ring.events.push_back(ev.clone());
        // Channels whose watchers have all gone are dropped here.
        ring.channels.retain(|(prefix, tx)| {
            if !ev.kv.key.starts_with(prefix.as_str()) {
                return true;
            }
            tx.send(ev.clone()).is_ok()
        });
    }

    /// Seed the ring with already-committed events (at startup).
    pub fn preload(&self, events: Vec<Arc<Event>>, floor: Revision) {
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.floor = floor;
        let cap = ring.capacity;
        let skip = events.len().saturating_sub(cap);
        if skip > 0 {
            ring.floor = events[skip - 1].revision();
        }
        ring.events.extend(events.into_iter().skip(skip));
    }

    /// The oldest revision a watch may start after.
    pub fn floor(&self) -> Revision {
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner).floor
    }

    /// Forget events at or before `revision`.
    pub fn compact(&self, revision: Revision) {
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while ring.events.front().is_some_and(|e| e.revision() <= revision) {
            let e = ring.events.pop_front().expect("front");
            ring.floor = e.revision();
        }
        if ring.floor < revision && ring.events.is_empty() {
            ring.floor = revision;
        }
    }

    /// Every retained event after `after` under `prefix`, oldest first; `Compacted` if
    /// some of them are no longer retained.
    pub fn since(&self, prefix: &str, after: Revision) -> Result<Vec<Arc<Event>>, StoreError> {
        let ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if after < ring.floor {
            return Err(StoreError::Compacted { requested: after, oldest: ring.floor });
        }
        let start = ring.events.partition_point(|e| e.revision() <= after);
        Ok(ring.events.range(start..).filter(|e| e.kv.key.starts_with(prefix)).cloned().collect())
    }

    /// Subscribe: the backlog of events after `after` under `prefix`, plus a live receiver.
    fn subscribe(&self, prefix: &str, after: Revision) -> Result<Subscription, StoreError> {
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if after < ring.floor {
            return Err(StoreError::Compacted { requested: after, oldest: ring.floor });
        }
        let rx = match ring.channels.iter().find(|(p, _)| p == prefix) {
            Some((_, tx)) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
                ring.channels.push((prefix.to_string(), tx));
                rx
            }
        };
        let start = ring.events.partition_point(|e| e.revision() <= after);
        let backlog = ring.events.range(start..).filter(|e| e.kv.key.starts_with(prefix)).cloned().collect();
        Ok((backlog, rx))
    }

    /// Start a watch of `prefix` after revision `after`.
    pub fn watch(self: &Arc<Self>, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let (backlog, rx) = self.subscribe(prefix, after)?;
        Ok(WatchStream { history: self.clone(), prefix: prefix.to_string(), last: after, backlog, rx })
    }
}

/// A stream of events under a prefix, in revision order, without gaps or duplicates.
pub struct WatchStream {
    history: Arc<History>,
    prefix: String,
    last: Revision,
    backlog: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
}

impl WatchStream {
    /// The next event; `Err(Compacted)` if this watcher fell behind the retained history.
    /// `None` only if the store shut down.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                if ev.revision() > self.last {
                    self.last = ev.revision();
                    return Some(Ok(ev));
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(ev) => {
                    if ev.revision() <= self.last {
                        continue;
                    }
                    self.last = ev.revision();
                    return Some(Ok(ev));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the live channel: refill from the ring, which is longer.
                    match self.history.subscribe(&self.prefix, self.last) {
                        Ok((backlog, rx)) => {
                            self.backlog = backlog;
                            self.rx = rx;
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The revision of the last event delivered (or the start revision).
    pub fn last_revision(&self) -> Revision {
        self.last
    }
}
