//! The debug edge store: learned edges merged from every stream, behind `--max-edges`
//! (the index keeps what was learned; this only backs `/debug/edges`). Pure.

use std::net::IpAddr;
use std::sync::Arc;

use super::ObservedEdge;

/// Default of `--max-edges`' bound where none is given.
pub const DEFAULT_MAX_EDGES: usize = 1_000_000;

/// What is known about one learned edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeStats {
    /// Sum of reported requests (saturating).
    pub requests: u64,
    /// Earliest last-seen reported.
    pub first_seen_unix_s: u64,
    /// Latest last-seen reported.
    pub last_seen_unix_s: u64,
}

/// A learned edge, as [`EdgeStore::snapshot`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEdge {
    pub source_ip: IpAddr,
    pub host: Option<Arc<str>>,
    pub cluster: Arc<str>,
    pub principal: Option<Arc<str>>,
    pub stats: EdgeStats,
}

/// What [`EdgeStore::record`] did with a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordOutcome {
    pub inserted: usize,
    pub updated: usize,
    /// New edges not stored because the store was full.
    pub dropped: usize,
}

type EdgeKey = (IpAddr, Option<Arc<str>>, Arc<str>, Option<Arc<str>>);

/// Learned edges keyed by (source IP, host, cluster, principal), at most `max_edges`.
#[derive(Debug)]
pub struct EdgeStore {
    max_edges: usize,
    edges: hashbrown::HashMap<EdgeKey, EdgeStats>,
    /// One copy of each name: every stream has its own `Arc`s for the same strings, and
    /// keys outlive the stream that first reported them.
    interned: hashbrown::HashSet<Arc<str>>,
}

impl EdgeStore {
    pub fn new(max_edges: usize) -> Self {
        EdgeStore {
            max_edges,
            edges: hashbrown::HashMap::new(),
            interned: hashbrown::HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Merges observed edges. Once the store holds `max_edges`, edges it does not know
    /// yet are dropped (and counted); known edges are still updated.
    pub fn record(&mut self, edges: impl IntoIterator<Item = ObservedEdge>) -> RecordOutcome {
        let mut outcome = RecordOutcome::default();
        for edge in edges {
            let key = (edge.source_ip, edge.host, edge.cluster, edge.principal);
            if let Some(stats) = self.edges.get_mut(&key) {
                stats.requests = stats.requests.saturating_add(edge.requests);
                stats.first_seen_unix_s = stats.first_seen_unix_s.min(edge.last_seen_unix_s);
                stats.last_seen_unix_s = stats.last_seen_unix_s.max(edge.last_seen_unix_s);
                outcome.updated = outcome.updated.saturating_add(1);
                continue;
            }
            if self.edges.len() >= self.max_edges {
                outcome.dropped = outcome.dropped.saturating_add(1);
                continue;
            }
            let (ip, host, cluster, principal) = key;
            let key = (
                ip,
                host.map(|h| self.intern(h)),
                self.intern(cluster),
                principal.map(|p| self.intern(p)),
            );
            self.edges.insert(
                key,
                EdgeStats {
                    requests: edge.requests,
                    first_seen_unix_s: edge.last_seen_unix_s,
                    last_seen_unix_s: edge.last_seen_unix_s,
                },
            );
            outcome.inserted = outcome.inserted.saturating_add(1);
        }
        outcome
    }

    fn intern(&mut self, name: Arc<str>) -> Arc<str> {
        if let Some(existing) = self.interned.get(&*name) {
            return existing.clone();
        }
        self.interned.insert(name.clone());
        name
    }

    /// All edges, sorted by source IP, host, cluster, principal.
    pub fn snapshot(&self) -> Vec<StoredEdge> {
        let mut out: Vec<StoredEdge> = self
            .edges
            .iter()
            .map(|((ip, host, cluster, principal), stats)| StoredEdge {
                source_ip: *ip,
                host: host.clone(),
                cluster: cluster.clone(),
                principal: principal.clone(),
                stats: *stats,
            })
            .collect();
        out.sort_unstable_by(|a, b| {
            (&a.source_ip, &a.host, &a.cluster, &a.principal).cmp(&(
                &b.source_ip,
                &b.host,
                &b.cluster,
                &b.principal,
            ))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::edges::ObservedEdge;

    const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
    const REVIEWS_HOST: &str = "reviews.default.svc.cluster.local";
    const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";
    const SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/productpage";

    fn mk_observed(
        ip: &str,
        host: Option<&str>,
        cluster: &str,
        requests: u64,
        last_seen: u64,
    ) -> ObservedEdge {
        ObservedEdge {
            source_ip: ip.parse().unwrap(),
            host: host.map(Arc::from),
            cluster: Arc::from(cluster),
            principal: None,
            requests,
            last_seen_unix_s: last_seen,
        }
    }

    fn mk_stored(
        ip: &str,
        host: Option<&str>,
        cluster: &str,
        requests: u64,
        first_seen: u64,
        last_seen: u64,
    ) -> StoredEdge {
        StoredEdge {
            source_ip: ip.parse().unwrap(),
            host: host.map(Arc::from),
            cluster: Arc::from(cluster),
            principal: None,
            stats: EdgeStats {
                requests,
                first_seen_unix_s: first_seen,
                last_seen_unix_s: last_seen,
            },
        }
    }

    #[test]
    fn store_merges_resent_and_saturates() {
        let mut store = EdgeStore::new(10);
        let outcome = store.record(vec![
            mk_observed("10.0.0.7", Some(REVIEWS_HOST), REVIEWS, 5, 100),
            mk_observed("10.0.0.7", None, REVIEWS, u64::MAX - 1, 100),
        ]);
        assert_eq!(
            outcome,
            RecordOutcome {
                inserted: 2,
                updated: 0,
                dropped: 0
            }
        );
        // A resent edge (requests 0) only moves last-seen; an older report keeps it.
        let outcome = store.record(vec![
            mk_observed("10.0.0.7", Some(REVIEWS_HOST), REVIEWS, 0, 200),
            mk_observed("10.0.0.7", Some(REVIEWS_HOST), REVIEWS, 1, 50),
            mk_observed("10.0.0.7", None, REVIEWS, 7, 150),
        ]);
        assert_eq!(
            outcome,
            RecordOutcome {
                inserted: 0,
                updated: 3,
                dropped: 0
            }
        );
        assert_eq!(
            store.snapshot(),
            vec![
                mk_stored("10.0.0.7", None, REVIEWS, u64::MAX, 100, 150),
                mk_stored("10.0.0.7", Some(REVIEWS_HOST), REVIEWS, 6, 50, 200),
            ]
        );
    }

    #[test]
    fn store_is_bounded_and_sorted() {
        let mut store = EdgeStore::new(2);
        let outcome = store.record(vec![
            mk_observed("10.0.0.9", None, REVIEWS, 1, 10),
            mk_observed("10.0.0.10", None, RATINGS, 1, 10),
            mk_observed("10.0.0.8", None, REVIEWS, 1, 10),
            // Known edges are still updated when full.
            mk_observed("10.0.0.9", None, REVIEWS, 2, 20),
        ]);
        assert_eq!(
            outcome,
            RecordOutcome {
                inserted: 2,
                updated: 1,
                dropped: 1
            }
        );
        assert_eq!(
            store.snapshot(),
            vec![
                mk_stored("10.0.0.9", None, REVIEWS, 3, 10, 20),
                mk_stored("10.0.0.10", None, RATINGS, 1, 10, 10),
            ]
        );
        let mut store = EdgeStore::new(0);
        assert_eq!(
            store.record(vec![mk_observed("::1", None, REVIEWS, 1, 1)]),
            RecordOutcome {
                inserted: 0,
                updated: 0,
                dropped: 1
            }
        );
        assert!(store.is_empty());
    }

    #[test]
    fn store_sorts_by_ip_then_host_cluster_principal() {
        let mut store = EdgeStore::new(100);
        let mut with_principal = mk_observed("10.0.0.1", None, REVIEWS, 1, 1);
        with_principal.principal = Some(Arc::from(SPIFFE));
        store.record(vec![
            mk_observed("::1", None, REVIEWS, 1, 1),
            with_principal,
            mk_observed("10.0.0.1", Some(REVIEWS_HOST), REVIEWS, 1, 1),
            mk_observed("10.0.0.1", None, REVIEWS, 1, 1),
            mk_observed("10.0.0.1", None, RATINGS, 1, 1),
        ]);
        let mut stored_principal = mk_stored("10.0.0.1", None, REVIEWS, 1, 1, 1);
        stored_principal.principal = Some(Arc::from(SPIFFE));
        assert_eq!(
            store.snapshot(),
            vec![
                mk_stored("10.0.0.1", None, RATINGS, 1, 1, 1),
                mk_stored("10.0.0.1", None, REVIEWS, 1, 1, 1),
                stored_principal,
                mk_stored("10.0.0.1", Some(REVIEWS_HOST), REVIEWS, 1, 1, 1),
                mk_stored("::1", None, REVIEWS, 1, 1, 1),
            ]
        );
    }

    #[test]
    fn store_interns_names_across_streams() {
        let mut store = EdgeStore::new(10);
        // Two streams, two distinct Arcs for the same cluster name.
        store.record(vec![mk_observed("10.0.0.1", None, REVIEWS, 1, 1)]);
        store.record(vec![mk_observed("10.0.0.2", None, REVIEWS, 1, 1)]);
        let snapshot = store.snapshot();
        assert!(Arc::ptr_eq(&snapshot[0].cluster, &snapshot[1].cluster));
    }
}
