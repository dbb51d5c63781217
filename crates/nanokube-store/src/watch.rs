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
    /// Bytes the events hold (see [`event_bytes`]), and the most they may.
    bytes: usize,
    max_bytes: usize,
    /// Live channels, one per prefix being watched.
    channels: Vec<(String, broadcast::Sender<Arc<Event>>)>,
    /// How many channels there were after the last sweep of abandoned ones.
    swept_at: usize,
    /// Bumped by [`History::reset`]: a watch whose channel closes under a newer
    /// generation was cut off by a gap, not by the store closing.
    generation: u64,
}

/// What an event keeps alive, roughly: its value, the value before it and its key (the
/// layer above serves the value as it is, keeping only where its revision goes beside
/// it). A value that is one event's and the next one's previous is counted with each:
/// the limit errs toward holding less. Without the previous values, a ring of status
/// writes (each holding the revision before it, its own event long gone) held half as
/// much again as it counted.
fn event_bytes(ev: &Event) -> usize {
    ev.kv.value.len() + ev.kv.key.len() + ev.prev.as_ref().map_or(0, |p| p.value.len())
}

impl Ring {
    /// Drop the oldest events while over the count or the byte limit (keeping the newest).
    fn trim(&mut self) {
        while self.events.len() > self.capacity || (self.bytes > self.max_bytes && self.events.len() > 1) {
            let Some(old) = self.events.pop_front() else { break };
            self.bytes = self.bytes.saturating_sub(event_bytes(&old));
            self.floor = old.revision();
        }
    }

    /// Drop channels nobody receives from any more. Publishing drops them too, but only
    /// under prefixes something is written to: watches of empty namespaces would pile up.
    /// Amortized: a sweep runs when the number of channels has doubled since the last.
    fn sweep_channels(&mut self) {
        if self.channels.len() >= 2 * self.swept_at.max(32) {
            self.channels.retain(|(_, tx)| tx.receiver_count() > 0);
            self.swept_at = self.channels.len();
        }
    }
}

/// Events a live channel holds for a slow receiver before it lags. A receiver that lags
/// refills from the ring (which is longer), so this bounds memory per watched prefix,
/// not what a watcher can catch up on.
const CHANNEL_CAPACITY: usize = 4096;

/// A backlog of events and the live receiver that continues it.
type Subscription = (VecDeque<Arc<Event>>, broadcast::Receiver<Arc<Event>>, u64);

/// Recent events and live subscribers.
pub struct History {
    ring: Mutex<Ring>,
}

impl History {
    /// A history keeping `capacity` events, starting at revision `floor`.
    pub fn new(capacity: usize, floor: Revision) -> Self {
        Self::with_byte_limit(capacity, usize::MAX, floor)
    }

    /// A history keeping at most `capacity` events holding at most `max_bytes`.
    pub fn with_byte_limit(capacity: usize, max_bytes: usize, floor: Revision) -> Self {
        History {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                floor,
                capacity: capacity.max(1),
                bytes: 0,
                max_bytes,
                channels: Vec::new(),
                swept_at: 0,
                generation: 0,
            }),
        }
    }

    /// Record an event and deliver it to live watchers. Must be called in revision order.
    pub fn publish(&self, ev: Arc<Event>) {
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.bytes += event_bytes(&ev);
        ring.events.push_back(ev.clone());
        ring.trim();
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
        ring.bytes += events.iter().map(|e| event_bytes(e)).sum::<usize>();
        ring.events.extend(events);
        ring.trim();
    }

    /// Start over at `floor` after a gap in the events (a backend that had to relist):
    /// retained events are dropped and every live watch ends with `Compacted`, so its
    /// client lists again, as upstream's watch cache does when it relists.
    pub fn reset(&self, floor: Revision) {
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.events.clear();
        ring.bytes = 0;
        ring.floor = floor;
        ring.generation += 1;
        // Dropping the senders closes every receiver.
        ring.channels.clear();
    }

    /// The oldest revision a watch may start after.
    pub fn floor(&self) -> Revision {
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner).floor
    }

    /// Forget events at or before `revision`.
    pub fn compact(&self, revision: Revision) {
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while ring.events.front().is_some_and(|e| e.revision() <= revision) {
            let Some(e) = ring.events.pop_front() else { break };
            ring.bytes = ring.bytes.saturating_sub(event_bytes(&e));
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
        let generation = ring.generation;
        if after < ring.floor {
            return Err(StoreError::Compacted { requested: after, oldest: ring.floor });
        }
        ring.sweep_channels();
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
        Ok((backlog, rx, generation))
    }

    /// Start a watch of `prefix` after revision `after`.
    pub fn watch(self: &Arc<Self>, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let (backlog, rx, generation) = self.subscribe(prefix, after)?;
        Ok(WatchStream { history: self.clone(), prefix: prefix.to_string(), last: after, backlog, rx, generation })
    }
}

/// A stream of events under a prefix, in revision order, without gaps or duplicates.
pub struct WatchStream {
    history: Arc<History>,
    prefix: String,
    last: Revision,
    backlog: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    generation: u64,
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
                        Ok((backlog, rx, generation)) => {
                            self.backlog = backlog;
                            self.rx = rx;
                            self.generation = generation;
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let ring = self.history.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if ring.generation != self.generation {
                        return Some(Err(StoreError::Compacted { requested: self.last, oldest: ring.floor }));
                    }
                    return None;
                }
            }
        }
    }

    /// The revision of the last event delivered (or the start revision).
    pub fn last_revision(&self) -> Revision {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, KeyValue};

    fn event(key: &str, rev: Revision, size: usize) -> Arc<Event> {
        let kv = Arc::new(KeyValue::new(key.to_string(), bytes::Bytes::from(vec![b'x'; size]), rev, rev));
        Arc::new(Event { kind: EventKind::Updated, kv, prev: None })
    }

    #[test]
    fn history_is_bounded_in_bytes() {
        let h = History::with_byte_limit(100_000, 10 * 1024 * 1024, 0);
        for rev in 1..=200 {
            h.publish(event("/registry/configmaps/default/big", rev, 500 * 1024));
        }
        // 200 updates of 500 KB: only the newest ~10 MiB (20 events) are kept.
        let kept = h.since("/", h.floor()).unwrap();
        assert_eq!(kept.len(), 20);
        assert_eq!(kept.last().unwrap().revision(), 200);
        assert!(matches!(h.since("/", 100), Err(StoreError::Compacted { .. })));
        // The previous values events pin count too: half as many updates fit.
        let h = History::with_byte_limit(100_000, 10 * 1024 * 1024, 0);
        let mut prev = None;
        for rev in 1..=200 {
            let ev = event("/registry/configmaps/default/big", rev, 500 * 1024);
            let ev = Arc::new(Event { kind: ev.kind, kv: ev.kv.clone(), prev: prev.replace(ev.kv.clone()) });
            h.publish(ev);
        }
        assert_eq!(h.since("/", h.floor()).unwrap().len(), 10);
    }

    #[test]
    fn abandoned_channels_are_freed_without_writes() {
        let h = Arc::new(History::new(1000, 0));
        for i in 0..2000 {
            drop(h.watch(&format!("/registry/configmaps/empty-{i}/"), 0).unwrap());
        }
        let live = h.watch("/registry/configmaps/kept/", 0).unwrap();
        let channels = h.ring.lock().unwrap().channels.len();
        assert!(channels < 200, "{channels} channels kept for 2,000 finished watches");
        drop(live);
    }
}
