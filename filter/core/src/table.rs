//! The per-worker dedup table: a bounded LRU of edges with their unreported request
//! counts, plus the queues of edges due to be sent.
//!
//! Every request touches it, so the hit path is one hash lookup and a few field writes:
//! no allocation, no scan. Entries live in a slab linked into an LRU list; the hash
//! index stores slab positions only.

use crate::edge::EdgeRef;
use core::hash::BuildHasher;
use core::net::IpAddr;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::collections::VecDeque;
use std::rc::Rc;

/// An edge owned by the table (strings shared with batches by reference count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeKey {
    pub source_ip: IpAddr,
    pub host: Option<Rc<str>>,
    pub cluster: Rc<str>,
    pub principal: Option<Rc<str>>,
}

impl EdgeKey {
    pub fn from_ref(edge: &EdgeRef<'_>) -> Self {
        EdgeKey {
            source_ip: edge.source_ip,
            host: edge.host.map(Rc::from),
            cluster: Rc::from(edge.cluster),
            principal: edge.principal.map(Rc::from),
        }
    }

    fn as_ref(&self) -> EdgeRef<'_> {
        EdgeRef {
            source_ip: self.source_ip,
            host: self.host.as_deref(),
            cluster: &self.cluster,
            principal: self.principal.as_deref(),
        }
    }
}

/// An edge taken out of the table to be sent: the requests it carries are no longer
/// counted in the table until [`EdgeTable::restore`] gives them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub key: EdgeKey,
    pub requests: u64,
    pub last_seen_ms: u64,
}

/// What [`EdgeTable::observe`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A new edge, queued to be sent.
    New,
    /// A known edge; its count grew.
    Known,
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot {
    key: EdgeKey,
    hash: u64,
    /// LRU neighbours: `prev` is more recently used.
    prev: u32,
    next: u32,
    /// Bumped when the slot is freed, so stale queue entries can be recognised.
    generation: u32,
    live: bool,
    unreported: u64,
    last_seen_ms: u64,
    pending: bool,
    refresh_queued: bool,
}

/// The bounded LRU dedup table.
#[derive(Debug)]
pub struct EdgeTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    head: u32,
    tail: u32,
    len: usize,
    capacity: usize,
    refresh_ms: u64,
    /// Edges to send in the next batch, oldest first.
    pending: VecDeque<(u32, u32)>,
    pending_len: usize,
    /// Known edges with new requests, and when they may be reported again. `due` grows
    /// along the queue because it is `now + refresh` at push time.
    refresh: VecDeque<(u32, u32, u64)>,
    /// Edges evicted while they still had requests to report (lost news).
    pub evicted_unreported: u64,
}

impl EdgeTable {
    pub fn new(capacity: usize, refresh_ms: u64) -> Self {
        let capacity = capacity.max(1);
        EdgeTable {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            head: NIL,
            tail: NIL,
            len: 0,
            capacity,
            refresh_ms,
            pending: VecDeque::new(),
            pending_len: 0,
            refresh: VecDeque::new(),
            evicted_unreported: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Edges waiting to be sent.
    pub fn pending_len(&self) -> usize {
        self.pending_len
    }

    fn hash(&self, edge: &EdgeRef<'_>) -> u64 {
        self.hasher.hash_one(edge)
    }

    fn find(&self, hash: u64, edge: &EdgeRef<'_>) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| slots[i as usize].key.as_ref() == *edge)
            .copied()
    }

    /// Counts one request on `edge` at `now_ms`.
    pub fn observe(&mut self, edge: &EdgeRef<'_>, now_ms: u64) -> Observed {
        let hash = self.hash(edge);
        if let Some(i) = self.find(hash, edge) {
            let refresh_ms = self.refresh_ms;
            let slot = &mut self.slots[i as usize];
            slot.unreported = slot.unreported.saturating_add(1);
            slot.last_seen_ms = now_ms;
            if !slot.pending && !slot.refresh_queued {
                slot.refresh_queued = true;
                let generation = slot.generation;
                self.refresh
                    .push_back((i, generation, now_ms.saturating_add(refresh_ms)));
            }
            self.touch(i);
            return Observed::Known;
        }
        self.insert(EdgeKey::from_ref(edge), hash, 1, now_ms);
        Observed::New
    }

    /// Moves edges whose refresh interval has passed into the pending queue.
    pub fn promote_due(&mut self, now_ms: u64) {
        while let Some(&(i, generation, due)) = self.refresh.front() {
            if due > now_ms {
                break;
            }
            self.refresh.pop_front();
            let Some(slot) = self.slot_mut(i, generation) else {
                continue;
            };
            slot.refresh_queued = false;
            if slot.unreported > 0 && !slot.pending {
                self.push_pending(i);
            }
        }
    }

    /// Takes the next pending edge with its unreported requests.
    pub fn pop_pending(&mut self) -> Option<BatchRecord> {
        while let Some((i, generation)) = self.pending.pop_front() {
            let Some(slot) = self.slot_mut(i, generation) else {
                continue;
            };
            if !slot.pending {
                continue;
            }
            slot.pending = false;
            let record = BatchRecord {
                key: slot.key.clone(),
                requests: core::mem::take(&mut slot.unreported),
                last_seen_ms: slot.last_seen_ms,
            };
            self.pending_len -= 1;
            return Some(record);
        }
        None
    }

    /// Gives back a record whose batch was never acked: its requests count again and it
    /// is queued to be sent. An edge evicted meanwhile is re-inserted.
    pub fn restore(&mut self, record: BatchRecord) {
        let edge = record.key.as_ref();
        let hash = self.hash(&edge);
        match self.find(hash, &edge) {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                slot.unreported = slot.unreported.saturating_add(record.requests);
                slot.last_seen_ms = slot.last_seen_ms.max(record.last_seen_ms);
                if !slot.pending {
                    self.push_pending(i);
                }
            }
            None => self.insert(record.key, hash, record.requests, record.last_seen_ms),
        }
    }

    /// Queues every edge to be sent again (after a reconnect: the controller on the other
    /// end may know nothing). Returns how many were queued.
    pub fn mark_all_pending(&mut self) -> usize {
        let mut queued = 0;
        let mut i = self.tail;
        while i != NIL {
            let slot = &self.slots[i as usize];
            let prev = slot.prev;
            if !slot.pending {
                self.push_pending(i);
                queued += 1;
            }
            i = prev;
        }
        queued
    }

    fn slot_mut(&mut self, i: u32, generation: u32) -> Option<&mut Slot> {
        self.slots
            .get_mut(i as usize)
            .filter(|s| s.live && s.generation == generation)
    }

    fn push_pending(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        slot.pending = true;
        self.pending.push_back((i, slot.generation));
        self.pending_len += 1;
        // Stale entries (evicted slots) accumulate only between flushes; keep the queue
        // bounded anyway.
        if self.pending.len() > 2 * self.capacity + 64 {
            let slots = &self.slots;
            self.pending
                .retain(|&(i, g)| slots[i as usize].live && slots[i as usize].generation == g);
        }
    }

    fn insert(&mut self, key: EdgeKey, hash: u64, unreported: u64, last_seen_ms: u64) {
        if self.len >= self.capacity {
            self.evict_lru();
        }
        let slot = Slot {
            key,
            hash,
            prev: NIL,
            next: NIL,
            generation: 0,
            live: true,
            unreported,
            last_seen_ms,
            pending: false,
            refresh_queued: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                let generation = self.slots[i as usize].generation;
                self.slots[i as usize] = Slot { generation, ..slot };
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.index
            .insert_unique(hash, i, |&j| slots[j as usize].hash);
        self.len += 1;
        self.link_front(i);
        self.push_pending(i);
    }

    fn evict_lru(&mut self) {
        let i = self.tail;
        if i == NIL {
            return;
        }
        self.unlink(i);
        let slot = &mut self.slots[i as usize];
        if slot.unreported > 0 || slot.pending {
            self.evicted_unreported += 1;
        }
        if slot.pending {
            self.pending_len -= 1;
        }
        slot.live = false;
        slot.pending = false;
        slot.generation = slot.generation.wrapping_add(1);
        let hash = slot.hash;
        if let Ok(entry) = self.index.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        self.free.push(i);
        self.len -= 1;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    fn link_front(&mut self, i: u32) {
        let old_head = self.head;
        {
            let slot = &mut self.slots[i as usize];
            slot.prev = NIL;
            slot.next = old_head;
        }
        if old_head != NIL {
            self.slots[old_head as usize].prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let slot = &self.slots[i as usize];
            (slot.prev, slot.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const HOUR_MS: u64 = 3_600_000;

    fn mk_edge(ip_last: u8, cluster: &str) -> EdgeRef<'_> {
        EdgeRef {
            source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip_last)),
            host: Some("reviews"),
            cluster,
            principal: None,
        }
    }

    fn drain(t: &mut EdgeTable) -> Vec<(u8, String, u64, u64)> {
        let mut out = Vec::new();
        while let Some(r) = t.pop_pending() {
            let IpAddr::V4(ip) = r.key.source_ip else {
                unreachable!()
            };
            out.push((
                ip.octets()[3],
                r.key.cluster.to_string(),
                r.requests,
                r.last_seen_ms,
            ));
        }
        out
    }

    #[test]
    fn new_edges_are_pending_once_and_counts_accumulate() {
        let mut t = EdgeTable::new(10, HOUR_MS);
        assert_eq!(t.observe(&mk_edge(1, "a"), 100), Observed::New);
        assert_eq!(t.observe(&mk_edge(1, "a"), 110), Observed::Known);
        assert_eq!(t.observe(&mk_edge(2, "a"), 120), Observed::New);
        assert_eq!(t.observe(&mk_edge(1, "b"), 130), Observed::New);
        assert_eq!(t.pending_len(), 3);
        assert_eq!(
            drain(&mut t),
            vec![
                (1, "a".into(), 2, 110),
                (2, "a".into(), 1, 120),
                (1, "b".into(), 1, 130)
            ]
        );
        assert_eq!(t.pending_len(), 0);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn known_edges_are_re_reported_only_after_the_refresh_interval() {
        let refresh = 1_000;
        let mut t = EdgeTable::new(10, refresh);
        t.observe(&mk_edge(1, "a"), 0);
        assert_eq!(drain(&mut t).len(), 1);
        // Reported at 0; new requests at 10 and 500.
        t.observe(&mk_edge(1, "a"), 10);
        t.observe(&mk_edge(1, "a"), 500);
        t.promote_due(999);
        assert_eq!(drain(&mut t), vec![], "not before the interval");
        t.promote_due(1_010);
        assert_eq!(drain(&mut t), vec![(1, "a".into(), 2, 500)]);
        // Nothing new: nothing to refresh.
        t.promote_due(10 * refresh);
        assert_eq!(drain(&mut t), vec![]);
    }

    #[test]
    fn lru_evicts_least_recently_used_and_counts_lost_news() {
        let mut t = EdgeTable::new(2, HOUR_MS);
        t.observe(&mk_edge(1, "a"), 0);
        t.observe(&mk_edge(2, "a"), 1);
        drain(&mut t);
        t.observe(&mk_edge(1, "a"), 2); // 1 is now most recent, with news
        t.observe(&mk_edge(3, "a"), 3); // evicts 2 (reported, no news)
        assert_eq!(t.evicted_unreported, 0);
        assert_eq!(t.len(), 2);
        t.observe(&mk_edge(4, "a"), 4); // evicts 1 (has an unreported request)
        assert_eq!(t.evicted_unreported, 1);
        t.observe(&mk_edge(5, "a"), 5); // evicts 3 (pending, never sent)
        assert_eq!(t.evicted_unreported, 2);
        assert_eq!(
            drain(&mut t),
            vec![(4, "a".into(), 1, 4), (5, "a".into(), 1, 5)]
        );
        assert_eq!(t.pending_len(), 0);
    }

    #[test]
    fn restore_gives_counts_back_and_reinserts_evicted_edges() {
        let mut t = EdgeTable::new(2, HOUR_MS);
        t.observe(&mk_edge(1, "a"), 0);
        t.observe(&mk_edge(1, "a"), 1);
        let sent = t.pop_pending().expect("pending");
        assert_eq!(sent.requests, 2);
        t.observe(&mk_edge(1, "a"), 5); // one more while in flight
        t.restore(sent.clone());
        t.promote_due(0);
        assert_eq!(drain(&mut t), vec![(1, "a".into(), 3, 5)]);
        // Evicted while in flight: comes back.
        t.observe(&mk_edge(2, "a"), 6);
        t.observe(&mk_edge(3, "a"), 7);
        drain(&mut t);
        t.restore(sent);
        assert_eq!(drain(&mut t), vec![(1, "a".into(), 2, 1)]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn mark_all_pending_resends_the_whole_table_once() {
        let mut t = EdgeTable::new(100, HOUR_MS);
        for i in 0..50 {
            t.observe(&mk_edge(i, "a"), u64::from(i));
        }
        drain(&mut t);
        t.observe(&mk_edge(7, "a"), 100);
        assert_eq!(t.mark_all_pending(), 50);
        assert_eq!(t.mark_all_pending(), 0);
        let resent = drain(&mut t);
        assert_eq!(resent.len(), 50);
        assert_eq!(
            resent.iter().map(|r| r.2).sum::<u64>(),
            1,
            "only the new request counts"
        );
    }

    #[test]
    fn the_pending_queue_stays_bounded_under_churn() {
        let mut t = EdgeTable::new(8, HOUR_MS);
        for i in 0..10_000u32 {
            let cluster = format!("c{i}");
            t.observe(&mk_edge(1, &cluster), u64::from(i));
        }
        assert_eq!(t.len(), 8);
        assert!(
            t.pending.len() <= 2 * 8 + 64 + 1,
            "queue {}",
            t.pending.len()
        );
        assert_eq!(drain(&mut t).len(), 8);
        assert_eq!(t.evicted_unreported, 10_000 - 8);
    }

    #[test]
    fn same_ip_different_principal_or_host_are_different_edges() {
        let mut t = EdgeTable::new(10, HOUR_MS);
        let base = mk_edge(1, "a");
        assert_eq!(t.observe(&base, 0), Observed::New);
        assert_eq!(t.observe(&EdgeRef { host: None, ..base }, 0), Observed::New);
        assert_eq!(
            t.observe(
                &EdgeRef {
                    principal: Some("spiffe://x"),
                    ..base
                },
                0
            ),
            Observed::New
        );
        assert_eq!(t.observe(&base, 0), Observed::Known);
        assert_eq!(t.len(), 3);
    }
}
