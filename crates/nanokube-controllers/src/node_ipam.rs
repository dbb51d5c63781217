//! kube-controller-manager's node IPAM controller with its range allocator
//! (`--allocate-node-cidrs`, `--cluster-cidr`, `--node-cidr-mask-size`): every Node
//! without `spec.podCIDR` gets the next free block of the cluster CIDR as `spec.podCIDR`
//! and `spec.podCIDRs`, and a deleted Node's block is free again. Kubelets (the server's
//! own node and every joined agent) take their pods' addresses from the block they were
//! given, so no two nodes hand out the same pod IP.
//!
//! As upstream's allocator: blocks already on Nodes are marked used before any is given
//! out (so a new leader never hands out a block in use), the search for a free block
//! starts after the last one given (a block just freed is not reused at once), a
//! Node's block is never changed once set (the API server refuses that too), a range set
//! by hand takes every block it overlaps, and a full
//! range is reported with a `CIDRNotAvailable` Event on the Node (which gets a block as soon
//! as one is freed). A Node whose range lies outside the cluster CIDR is left alone.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{Registry, WriteOptions};
use nanokube_store::EventKind;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::def;
use crate::workqueue::{Observed, WorkQueue};

/// The component named in Events (upstream's range allocator's recorder).
const COMPONENT: &str = "cidrAllocator";

fn nodes() -> &'static nanokube_api::resources::ResourceDef {
    def("", "nodes")
}

/// The blocks of a cluster CIDR (upstream's `cidrset.CidrSet`).
#[derive(Debug)]
pub struct CidrSet {
    /// First address of the cluster CIDR.
    base: u32,
    /// The blocks' prefix length.
    mask: u8,
    /// How many blocks the cluster CIDR holds.
    blocks: u32,
    /// Blocks in use, by index.
    used: BTreeSet<u32>,
    /// Where the next search starts.
    next: u32,
}

impl CidrSet {
    /// The `/mask` blocks of `cluster_cidr` (`a.b.c.d/n`, n ≤ mask ≤ 30, at most 2^16
    /// blocks as upstream allows).
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<CidrSet, String> {
        let (base, prefix) = parse(cluster_cidr).ok_or_else(|| format!("cluster CIDR {cluster_cidr:?}: want an IPv4 range such as 127.244.0.0/16"))?;
        if mask < prefix || mask > 30 || mask - prefix > 16 {
            return Err(format!("node CIDR mask size {mask} does not fit cluster CIDR {cluster_cidr} (want {prefix}..=30, at most 16 more bits)"));
        }
        Ok(CidrSet { base, mask, blocks: 1 << (mask - prefix), used: BTreeSet::new(), next: 0 })
    }

    /// The indices of the blocks `cidr` overlaps (upstream's `getBeginningAndEndIndices`):
    /// all of them for a range wider than a block, the one holding it for a narrower one.
    fn indices_of(&self, cidr: &str) -> Option<std::ops::RangeInclusive<u32>> {
        let (addr, prefix) = parse(cidr)?;
        let size = |bits: u8| if bits == 0 { u64::from(u32::MAX) + 1 } else { 1u64 << (32 - u32::from(bits)) };
        let (first, last) = (u64::from(addr), u64::from(addr) + size(prefix) - 1);
        let (lo, hi) = (u64::from(self.base), u64::from(self.base) + u64::from(self.blocks) * size(self.mask) - 1);
        if last < lo || first > hi {
            return None;
        }
        let block = |a: u64| ((a.clamp(lo, hi) - lo) / size(self.mask)) as u32;
        Some(block(first)..=block(last))
    }

    fn cidr(&self, index: u32) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base + (index << (32 - u32::from(self.mask)))), self.mask)
    }

    /// Mark the blocks `cidr` overlaps used; false when it overlaps none.
    pub fn occupy(&mut self, cidr: &str) -> bool {
        let Some(range) = self.indices_of(cidr) else { return false };
        self.used.extend(range);
        true
    }

    /// Free the blocks `cidr` overlaps.
    pub fn release(&mut self, cidr: &str) {
        for i in self.indices_of(cidr).into_iter().flatten() {
            self.used.remove(&i);
        }
    }

    /// The next free block after the last one given, or None when all are used.
    pub fn allocate_next(&mut self) -> Option<String> {
        let found = (0..self.blocks).map(|i| (self.next + i) % self.blocks).find(|i| !self.used.contains(i))?;
        self.used.insert(found);
        self.next = (found + 1) % self.blocks;
        Some(self.cidr(found))
    }
}

/// `a.b.c.d/n` as (first address, n), the address masked.
fn parse(cidr: &str) -> Option<(u32, u8)> {
    let (addr, bits) = cidr.split_once('/')?;
    let bits: u8 = bits.parse().ok().filter(|b| *b <= 32)?;
    let addr = u32::from(addr.parse::<Ipv4Addr>().ok()?);
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
    Some((addr & mask, bits))
}

fn pod_cidr(node: &Value) -> Option<&str> {
    node.pointer("/spec/podCIDRs/0").or_else(|| node.pointer("/spec/podCIDR")).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// What the controller knows of the blocks.
struct State {
    set: CidrSet,
    /// Which Node holds which block.
    held: HashMap<String, String>,
    /// Nodes that found the range full: looked at again as soon as a block is freed,
    /// rather than when their back-off ends.
    waiting: BTreeSet<String>,
}

impl State {
    /// Free `node`'s block (it is gone) and queue the Nodes waiting for one.
    fn release(&mut self, node: &str, queue: &WorkQueue) {
        if let Some(cidr) = self.held.remove(node) {
            self.set.release(&cidr);
            for waiting in std::mem::take(&mut self.waiting) {
                queue.add(&waiting);
            }
        }
    }
}

/// The controller.
pub struct NodeIpamController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
    state: Mutex<State>,
}

impl NodeIpamController {
    /// A controller giving Nodes `/mask` blocks of `cluster_cidr`.
    pub fn new(registry: Arc<Registry>, cluster_cidr: &str, mask: u8) -> Result<Arc<NodeIpamController>, String> {
        let set = CidrSet::new(cluster_cidr, mask)?;
        let state = State { set, held: HashMap::new(), waiting: BTreeSet::new() };
        Ok(Arc::new(NodeIpamController { registry, queue: WorkQueue::new(), state: Mutex::new(state) }))
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[nodes().key_prefix()];
        crate::workqueue::run(self.clone(), &store, &queue, COMPONENT, prefixes, shutdown, Self::enqueue_all, Self::observe, |me, key| async move {
            me.sync(&key).await
        })
        .await
    }

    /// Mark every Node's block used (and forget Nodes that are gone), then queue the
    /// Nodes that have none: nothing is given out before every block in use is known.
    fn enqueue_all(&self) {
        let Ok(list) = self.registry.list(nodes(), None, &Default::default()) else { return };
        let Ok(mut state) = self.state.lock() else { return };
        let present: std::collections::HashSet<&str> = list.items.iter().map(|n| meta::name(n.value())).collect();
        let gone: Vec<String> = state.held.keys().filter(|name| !present.contains(name.as_str())).cloned().collect();
        for name in gone {
            state.release(&name, &self.queue);
        }
        for n in &list.items {
            let node = n.value();
            match pod_cidr(node) {
                Some(cidr) => {
                    if state.set.occupy(cidr) {
                        state.held.insert(meta::name(node).to_string(), cidr.to_string());
                    }
                }
                None => self.queue.add(meta::name(node)),
            }
        }
    }

    fn observe(&self, change: &Observed) {
        let node = change.value();
        let name = meta::name(node);
        if matches!(change.kind, EventKind::Deleted) {
            if let Ok(mut state) = self.state.lock() {
                state.waiting.remove(name);
                state.release(name, &self.queue);
            }
            return;
        }
        // Heartbeats change status only: a Node is looked at when it comes or its block
        // changes.
        let before = change.prev.as_ref().map(|p| pod_cidr(p.value()).map(str::to_string));
        if before.as_ref().map(Option::as_deref) != Some(pod_cidr(node)) {
            self.queue.add(name);
        }
    }

    /// Occupy a Node's block, or give it one.
    async fn sync(&self, name: &str) -> Result<(), ApiError> {
        let node = match self.registry.get(nodes(), "", name) {
            Ok(n) => n.to_value(),
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let lock = |f: &mut dyn FnMut(&mut State) -> Option<String>| {
            let mut state = self.state.lock().map_err(|_| ApiError::internal("node IPAM state poisoned"))?;
            Ok::<_, ApiError>(f(&mut state))
        };
        if let Some(cidr) = pod_cidr(&node) {
            lock(&mut |state| {
                state.waiting.remove(name);
                if state.set.occupy(cidr) {
                    state.held.insert(name.to_string(), cidr.to_string());
                } else {
                    tracing::debug!(node = %name, "node IPAM: the node's pod CIDR {cidr} lies outside the cluster CIDR; left alone");
                }
                None
            })?;
            return Ok(());
        }
        let Some(cidr) = lock(&mut |state| {
            let next = state.set.allocate_next();
            if next.is_none() {
                state.waiting.insert(name.to_string());
            }
            next
        })?
        else {
            let message = format!("Node {name} status is now: CIDRNotAvailable");
            crate::events::record(&self.registry, COMPONENT, &node, "Normal", "CIDRNotAvailable", &message).await;
            return Err(ApiError::internal(format!("no pod CIDR left for node {name}")));
        };
        let written = self
            .registry
            .update_with(nodes(), "", name, &WriteOptions::default(), |cur| {
                if pod_cidr(cur).is_some() {
                    return Err(ApiError::conflict_msg("nodes", "", name, "the node was given a pod CIDR meanwhile"));
                }
                let mut next = cur.clone();
                next["spec"]["podCIDR"] = json!(cidr);
                next["spec"]["podCIDRs"] = json!([cidr]);
                Ok(next)
            })
            .await;
        match written {
            Ok(_) => {
                lock(&mut |state| state.held.insert(name.to_string(), cidr.clone()))?;
                tracing::info!(node = %name, "node IPAM: gave the node pod CIDR {cidr}");
                Ok(())
            }
            Err(e) => {
                // Not given after all: free it; a Node that got one meanwhile is looked at again.
                lock(&mut |state| {
                    state.set.release(&cidr);
                    None
                })?;
                if e.code == 404 {
                    return Ok(());
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_given_round_robin_and_never_twice() {
        let mut set = CidrSet::new("127.244.0.0/16", 24).unwrap();
        assert!(set.occupy("127.244.0.0/24"));
        assert!(!set.occupy("127.128.4.0/24"), "outside");
        assert!(set.occupy("127.244.1.128/25"), "a narrower range takes the block holding it");
        assert_eq!(set.allocate_next().as_deref(), Some("127.244.2.0/24"));
        assert_eq!(set.allocate_next().as_deref(), Some("127.244.3.0/24"));
        set.release("127.244.2.0/24");
        assert_eq!(set.allocate_next().as_deref(), Some("127.244.4.0/24"), "a block just freed is not reused at once");
        assert!(set.occupy("127.244.8.0/22"), "a wider range takes every block it overlaps");
        assert_eq!(set.allocate_next().as_deref(), Some("127.244.5.0/24"));
        assert_eq!(set.allocate_next().as_deref(), Some("127.244.6.0/24"));
        assert_eq!(set.allocate_next().as_deref(), Some("127.244.7.0/24"));
        assert_eq!(set.allocate_next().as_deref(), Some("127.244.12.0/24"));
        let mut whole = CidrSet::new("127.244.0.0/16", 24).unwrap();
        assert!(whole.occupy("127.0.0.0/8"), "the whole range");
        assert_eq!(whole.allocate_next(), None);
        let mut small = CidrSet::new("127.244.0.0/23", 24).unwrap();
        assert_eq!(small.allocate_next().as_deref(), Some("127.244.0.0/24"));
        assert_eq!(small.allocate_next().as_deref(), Some("127.244.1.0/24"));
        assert_eq!(small.allocate_next(), None);
        small.release("127.244.0.0/24");
        assert_eq!(small.allocate_next().as_deref(), Some("127.244.0.0/24"));
        assert!(CidrSet::new("127.244.0.0/16", 8).is_err());
        assert!(CidrSet::new("nonsense", 24).is_err());
    }
}
