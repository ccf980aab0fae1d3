//! Edges in: attribution to a workload, dependency host, last-seen; holding edges from
//! IPs the pod watch has not shown yet; TTL expiry.

use std::collections::BTreeSet;
use std::mem;
use std::net::IpAddr;
use std::sync::Arc;

use super::hosts::Resolved;
use super::Index;
use crate::host;
use crate::objects::WorkloadId;

/// How long a closed holder of an IP is remembered (edges can be reported late, after a
/// gateway outage).
const IP_HISTORY_RETENTION_S: u64 = 600;
/// Refused edges kept for the log between two reads.
const MAX_REFUSED_SAMPLE: usize = 8;
/// Clock skew tolerated between the gateway's last-seen and a pod's start time, for the
/// first known holder of an IP.
const START_SKEW_S: u64 = 5;

/// One edge as the gateway reported it (the gRPC edge sink produces exactly this).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedEdge {
    pub source_ip: IpAddr,
    /// The requested `:authority` without port, lower-case: `reviews`, `reviews.ns`, an
    /// FQDN or an IP.
    pub host: Option<Arc<str>>,
    /// The cluster Envoy routed to.
    pub cluster: Arc<str>,
    /// The verified peer identity (`spiffe://<td>/ns/<ns>/sa/<sa>`), when mTLS.
    pub principal: Option<Arc<str>>,
    pub requests: u64,
    pub last_seen_unix_s: u64,
}

#[derive(Debug)]
pub(super) struct Held {
    edge: ObservedEdge,
    deadline: u64,
}

/// Why an edge waits: what the watches have not shown yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// No pod (or owner chain) holds its source IP.
    Source,
    /// Nothing defines its host.
    Host,
}

enum Source {
    Workload(WorkloadId),
    Unknown,
    HostNetwork,
    Mismatch,
    NoPrincipal,
}

/// An edge the index would not take, and why: the learner logs a sample of these
/// (rate-limited), the counters count them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedEdge {
    pub edge: ObservedEdge,
    pub reason: &'static str,
}

impl Index {
    /// Records edges seen at the gateway at `now` (unix seconds). Returns the opted-in
    /// workloads whose Sidecar changes (a new dep, or a last-seen that moved more than
    /// ttl/10): steady traffic returns nothing.
    pub fn record_edges(
        &mut self,
        edges: impl IntoIterator<Item = ObservedEdge>,
        now: u64,
    ) -> BTreeSet<WorkloadId> {
        self.advance_clock(now);
        let mut changed = BTreeSet::new();
        for mut edge in edges {
            // Counts come from the wire: saturate, never overflow.
            self.counters.edges = self.counters.edges.saturating_add(1);
            self.counters.requests = self.counters.requests.saturating_add(edge.requests);
            // The sender's clock is not ours: a last-seen in the future would keep a dep
            // past its TTL for ever.
            edge.last_seen_unix_s = edge.last_seen_unix_s.min(now);
            if let Some((edge, _)) = self.ingest(edge, now, &mut changed) {
                self.hold(edge, now);
            }
        }
        changed
    }

    /// Moves time to `now`: retries held edges (dropping those past their hold), expires
    /// deps older than the TTL, forgets old IP holders, frees an idle host cache. Returns
    /// workloads whose Sidecar changes.
    pub fn tick(&mut self, now: u64) -> BTreeSet<WorkloadId> {
        self.advance_clock(now);
        let mut changed = BTreeSet::new();
        for held in mem::take(&mut self.held) {
            match self.ingest(held.edge, now, &mut changed) {
                None => {
                    self.counters.held_attributed = self.counters.held_attributed.saturating_add(1)
                }
                Some((edge, why)) if now >= held.deadline => {
                    let (counter, reason) = match why {
                        Pending::Source => (&mut self.counters.unknown_dropped, "unknown source"),
                        Pending::Host => (&mut self.counters.undefined_host, "undefined host"),
                    };
                    *counter = counter.saturating_add(1);
                    self.refused(edge, reason);
                }
                Some((edge, _)) => self.held.push_back(Held {
                    edge,
                    deadline: held.deadline,
                }),
            }
        }
        if now >= self.next_expiry {
            self.expire(now, &mut changed);
        }
        self.release_routes(now, &mut changed);
        self.hosts.release_idle_cache(now);
        if now >= self.next_prune {
            self.prune_ip_history(now);
            self.next_prune = now.saturating_add(IP_HISTORY_RETENTION_S / 10);
        }
        changed
    }

    fn hold(&mut self, edge: ObservedEdge, now: u64) {
        if self.held.len() >= self.config.max_held_edges {
            self.counters.hold_overflow = self.counters.hold_overflow.saturating_add(1);
            return;
        }
        self.counters.held = self.counters.held.saturating_add(1);
        self.held.push_back(Held {
            edge,
            deadline: now.saturating_add(self.config.hold.as_secs()),
        });
    }

    /// Keeps a sample of refused edges for the log (the counters count every one).
    fn refused(&mut self, edge: ObservedEdge, reason: &'static str) {
        if self.refused_sample.len() < MAX_REFUSED_SAMPLE {
            self.refused_sample.push(RefusedEdge { edge, reason });
        }
    }

    /// The refused edges kept since the last call (at most a few), for the log.
    pub fn take_refused(&mut self) -> Vec<RefusedEdge> {
        mem::take(&mut self.refused_sample)
    }

    /// Takes in one edge; gives it back, with why, when its source or host is not known
    /// yet.
    fn ingest(
        &mut self,
        edge: ObservedEdge,
        now: u64,
        changed: &mut BTreeSet<WorkloadId>,
    ) -> Option<(ObservedEdge, Pending)> {
        // Cheap pre-check so non-edges are never held; malformed ones fail in resolve.
        if !edge.cluster.starts_with("outbound|") {
            self.counters.non_outbound = self.counters.non_outbound.saturating_add(1);
            return None;
        }
        let ttl = self.config.ttl.map(|t| t.as_secs());
        if ttl.is_some_and(|ttl| edge.last_seen_unix_s.saturating_add(ttl) < now) {
            self.counters.stale = self.counters.stale.saturating_add(1);
            return None;
        }
        let id = match self.attribute(&edge) {
            Source::Workload(id) => id,
            Source::Unknown => return Some((edge, Pending::Source)),
            Source::HostNetwork => {
                self.counters.host_network = self.counters.host_network.saturating_add(1);
                return None;
            }
            Source::Mismatch => {
                self.counters.principal_mismatch =
                    self.counters.principal_mismatch.saturating_add(1);
                self.refused(edge, "principal is not the source pod's identity");
                return None;
            }
            Source::NoPrincipal => {
                self.counters.principal_missing = self.counters.principal_missing.saturating_add(1);
                self.refused(edge, "no principal (the caller's identity is required)");
                return None;
            }
        };
        let dep = match self.hosts.resolve(
            &id.namespace,
            edge.host.as_ref(),
            &edge.cluster,
            &self.config.cluster_domain,
        ) {
            Resolved::Dep(dep) => dep,
            Resolved::NotOutbound => {
                self.counters.non_outbound = self.counters.non_outbound.saturating_add(1);
                return None;
            }
            Resolved::Undefined => return Some((edge, Pending::Host)),
            Resolved::Refused => {
                self.counters.refused_host = self.counters.refused_host.saturating_add(1);
                self.refused(
                    edge,
                    "host may not be a Sidecar host (a bare wildcard or not a DNS name)",
                );
                return None;
            }
        };
        self.counters.attributed_requests = self
            .counters
            .attributed_requests
            .saturating_add(edge.requests);
        // Traffic still reaching the gateway for a dep the workload already has:
        // its Sidecar should have sent it direct ("stuck on the gateway").
        if edge.requests > 0
            && self
                .deps
                .get(&id)
                .is_some_and(|d| d.deps.contains_key(&*dep))
        {
            self.counters.known_dep_requests = self
                .counters
                .known_dep_requests
                .saturating_add(edge.requests);
        }
        if self.record_dep(&id, dep, edge.last_seen_unix_s) && self.is_enabled(&id) {
            changed.insert(id);
        }
        None
    }

    /// Stores a dep; true when the Sidecar changes.
    fn record_dep(&mut self, id: &WorkloadId, dep: Arc<str>, seen: u64) -> bool {
        let ttl = self.config.ttl.map(|t| t.as_secs());
        let cap = self.config.max_deps_per_workload;
        let deps = match self.deps.get_mut(id) {
            Some(d) => d,
            None => self.deps.entry(id.clone()).or_default(),
        };
        let full = deps.deps.len() >= cap;
        match deps.deps.get_mut(&*dep) {
            Some(stored) => {
                // Only first sighting matters without TTL; with it, move coarsely so
                // last-seen alone rarely causes a write.
                let Some(ttl) = ttl else { return false };
                if seen <= stored.saturating_add(ttl / 10) {
                    return false;
                }
                *stored = seen;
                self.counters.deps_refreshed = self.counters.deps_refreshed.saturating_add(1);
                self.next_expiry = self.next_expiry.min(expiry_at(seen, ttl));
                true
            }
            None if full => {
                self.counters.deps_over_cap = self.counters.deps_over_cap.saturating_add(1);
                !mem::replace(&mut deps.over_cap, true)
            }
            None => {
                deps.deps.insert(dep.clone(), seen);
                self.hold_routes(id, &dep, false);
                self.counters.deps_added = self.counters.deps_added.saturating_add(1);
                if let Some(ttl) = ttl {
                    self.next_expiry = self.next_expiry.min(expiry_at(seen, ttl));
                }
                true
            }
        }
    }

    /// The workload of the pod holding the edge's IP at its last-seen time.
    fn attribute(&self, edge: &ObservedEdge) -> Source {
        if self.host_network_ips.contains_key(&edge.source_ip) {
            return Source::HostNetwork;
        }
        let Some(holders) = self.ips.get(&edge.source_ip) else {
            return Source::Unknown;
        };
        let t = edge.last_seen_unix_s;
        let found = holders
            .iter()
            .rev()
            .find(|h| h.from <= t && h.until.is_none_or(|u| t < u))
            .or_else(|| {
                // Slightly before the first known holder started: clock skew.
                holders
                    .first()
                    .filter(|h| t < h.from && h.from.saturating_sub(t) <= START_SKEW_S)
            });
        let Some(holder) = found else {
            return Source::Unknown;
        };
        let pod = &holder.pod;
        match &edge.principal {
            Some(principal) => match host::parse_spiffe(principal) {
                Some((ns, sa)) if ns == &*pod.namespace && sa == &*pod.service_account => {}
                _ => return Source::Mismatch,
            },
            // Every pod has a service account, so in a mesh every caller has an
            // identity; without one, anyone could speak for the pod behind an IP.
            None if self.config.require_principal => return Source::NoPrincipal,
            None => {}
        }
        match self.workload_of(pod) {
            Some(id) => Source::Workload(id),
            None => Source::Unknown,
        }
    }

    fn expire(&mut self, now: u64, changed: &mut BTreeSet<WorkloadId>) {
        let Some(ttl) = self.config.ttl.map(|t| t.as_secs()) else {
            self.next_expiry = u64::MAX;
            return;
        };
        let mut next = u64::MAX;
        let mut expired_for = Vec::new();
        // Break after make: with a route delay, an expired dep first loses its routes
        // (its calls take the gateway, which re-learns it if it is still used) and leaves
        // the Sidecar when the hold ends (`release_routes`).
        let delay = !self.config.route_delay.is_zero();
        let mut leaving = Vec::new();
        for (id, wd) in self.deps.iter_mut() {
            let before = wd.deps.len();
            let holds = self.route_holds.get(id);
            wd.deps.retain(|dep, seen| {
                let at = expiry_at(*seen, ttl);
                if at > now {
                    next = next.min(at);
                    return true;
                }
                if !delay {
                    return false;
                }
                let already = holds.is_some_and(|h| h.iter().any(|h| h.leaving && h.dep == *dep));
                if !already {
                    leaving.push((id.clone(), dep.clone()));
                }
                true
            });
            let expired = before.saturating_sub(wd.deps.len());
            if expired > 0 {
                self.counters.deps_expired =
                    self.counters.deps_expired.saturating_add(expired as u64);
                // Re-learned through the gateway; the cap frees up again.
                wd.over_cap = false;
                expired_for.push(id.clone());
            }
        }
        self.deps.retain(|_, wd| !wd.deps.is_empty() || wd.over_cap);
        // A sweep visits every dep: at most one per 1% of the TTL.
        self.next_expiry = next.max(now.saturating_add((ttl / 100).max(1)));
        for (id, dep) in leaving {
            self.hold_routes(&id, &dep, true);
            expired_for.push(id);
        }
        for id in expired_for {
            if self.is_enabled(&id) {
                changed.insert(id);
            }
        }
    }

    fn prune_ip_history(&mut self, now: u64) {
        let horizon = now.saturating_sub(IP_HISTORY_RETENTION_S);
        self.ips.retain(|_, holders| {
            holders.retain(|h| h.until.is_none_or(|u| u >= horizon));
            !holders.is_empty()
        });
        // Label sets no pod (current or remembered) uses any more.
        self.pod_labels
            .retain(|labels| Arc::strong_count(labels) > 1);
        self.pod_strings.retain(|s| Arc::strong_count(s) > 1);
    }
}

/// The first moment a dep last seen at `seen` is expired (older than the TTL).
pub(super) fn expiry_at(seen: u64, ttl: u64) -> u64 {
    seen.saturating_add(ttl).saturating_add(1)
}
