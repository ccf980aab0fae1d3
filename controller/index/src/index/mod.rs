//! The controller's in-memory state: watched objects (projected), pods by IP, which config
//! defines which host, and the learned dependencies of every workload.
//!
//! Watch events are plain sync calls (`apply_*`, `delete_*`, `reset_*` per kind, like
//! kubert's index); edges come in through [`Index::record_edges`]; time moves only through
//! the `now` the caller passes (`record_edges`, [`Index::tick`]).

mod edges;
pub(crate) mod hosts;
mod kinds;
mod workloads;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use serde::Serialize;

use crate::host::{self, DEFAULT_CLUSTER_DOMAIN};
use crate::istio::OutboundPolicy;
use crate::objects::{
    AuthorizationPolicy, DestinationRule, Job, Labels, Namespace, Pod, ReplicaSet, Service,
    ServiceEntry, SidecarObject, VirtualService, WorkloadId, WorkloadKind, WorkloadObject,
};

pub use edges::{ObservedEdge, RefusedEdge};
pub use kinds::Projection;
pub(crate) use workloads::WorkloadView;

use hosts::{DefKind, HostDef, HostTable};

pub const DEFAULT_HOLD: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HELD_EDGES: usize = 100_000;
pub const DEFAULT_MAX_DEPS_PER_WORKLOAD: usize = 1000;
pub const DEFAULT_IP_HISTORY: usize = 4;
/// How long a new dependency's routes are held back in its workload's sidecar after its
/// Sidecar lists it (see [`IndexConfig::route_delay`]): one istiod push and the sidecar's
/// EDS round trip, with room for istiod's debounce.
pub const DEFAULT_ROUTE_DELAY: Duration = Duration::from_secs(2);
/// Most virtual hosts one workload's catch-all filter holds back at once.
pub const MAX_HELD_ROUTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// The mesh's DNS suffix (`cluster.local`).
    pub cluster_domain: String,
    /// Forget a dependency not seen at the gateway for this long (off by default).
    pub ttl: Option<Duration>,
    /// How long an edge from an unknown IP waits for the pod watch to catch up.
    pub hold: Duration,
    /// Bound on edges waiting for their pod.
    pub max_held_edges: usize,
    /// Learned deps kept per workload; beyond it the workload is refused (host cap).
    pub max_deps_per_workload: usize,
    /// Past holders remembered per IP, for edges reported after the IP was reused.
    pub ip_history: usize,
    /// Refuse edges without a verified caller identity (a gateway that admits only
    /// mTLS callers, as the installed one does, always has one).
    pub require_principal: bool,
    /// Make before break: for this long after a dependency is learned, its workload's
    /// catch-all EnvoyFilter removes the dependency's virtual hosts, so the sidecar gets
    /// the host's clusters (CDS, then EDS on its own request) before the routes to them.
    /// istiod sends a push's routes without waiting for that EDS round trip; a route to a
    /// cluster still warming answers 503 (Envoy's `NC`, the router's `no_cluster`). Zero:
    /// routes and clusters together.
    pub route_delay: Duration,
    /// The delay counts from when one of our Sidecars, as the Sidecar watch shows it, lists
    /// the new dependency (its `lazyxds.io/deps`), not from learning it: a Sidecar written
    /// late (the writer's rate limit, a backlog, a retried write) still gets the whole
    /// delay. Until then the routes stay held back, which costs nothing: a sidecar whose
    /// Sidecar does not list the host has no routes to hold. Only where our Sidecars are
    /// watched (`--kube`); file mode writes at once and counts from learning.
    pub route_delay_from_listing: bool,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            ttl: None,
            hold: DEFAULT_HOLD,
            max_held_edges: DEFAULT_MAX_HELD_EDGES,
            max_deps_per_workload: DEFAULT_MAX_DEPS_PER_WORKLOAD,
            ip_history: DEFAULT_IP_HISTORY,
            require_principal: false,
            route_delay: Duration::ZERO,
            route_delay_from_listing: false,
        }
    }
}

/// What happened to edges, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Every edge passed to `record_edges`.
    pub edges: u64,
    /// Sum of their request counts.
    pub requests: u64,
    /// Cluster not `outbound|...` (passthrough, inbound, black hole, malformed).
    pub non_outbound: u64,
    /// From a host-network pod's IP (the node's): never attributed.
    pub host_network: u64,
    /// The peer principal names another namespace/service account than the IP's pod.
    pub principal_mismatch: u64,
    /// No principal, with `require_principal`.
    pub principal_missing: u64,
    /// The host that defines the edge's destination may not be a Sidecar host (`*`, not
    /// a DNS name).
    pub refused_host: u64,
    /// Held edges dropped because nothing defined their host (requested or cluster)
    /// within the hold: a dependency is always a real host.
    pub undefined_host: u64,
    /// Edges put on hold because their IP (or its owner chain), or their host, was
    /// unknown.
    pub held: u64,
    /// Held edges attributed later.
    pub held_attributed: u64,
    /// Held edges whose source stayed unknown: dropped.
    pub unknown_dropped: u64,
    /// Edges from unknown IPs dropped because the hold buffer was full.
    pub hold_overflow: u64,
    /// Edges older than the TTL when they arrived.
    pub stale: u64,
    /// New deps not stored because the workload had `max_deps_per_workload`.
    pub deps_over_cap: u64,
    pub deps_added: u64,
    /// Stored last-seen moved forward (more than ttl/10).
    pub deps_refreshed: u64,
    pub deps_expired: u64,
    /// Deps merged in from our Sidecars' annotations.
    pub deps_restored: u64,
    /// Requests on edges attributed to a workload.
    pub attributed_requests: u64,
    /// Of those, requests for a dep the workload already had: once its Sidecar is in
    /// effect, such traffic goes direct, so a high share means Sidecars are not applied.
    pub known_dep_requests: u64,
}

/// One past or present holder of an IP.
#[derive(Debug, Clone)]
struct Holder {
    pod: Arc<Pod>,
    from: u64,
    /// `None` while the pod holds the IP.
    until: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct WorkloadDeps {
    pub deps: HashMap<Arc<str>, u64>,
    /// A new dep was dropped at the cap: the workload is refused until deps expire.
    pub over_cap: bool,
}

/// A dep whose routes stay out of its workload's sidecar until `until` (unix s), while
/// its Sidecar lists it: a new dep until its clusters are active (make before break); an
/// expired one (`leaving`) until its calls take the gateway again, then it leaves the
/// Sidecar, unless the gateway saw it meanwhile (break only what is unused).
#[derive(Debug)]
pub(crate) struct RouteHold {
    pub dep: Arc<str>,
    /// [`UNTIL_LISTED`] while it waits for a live Sidecar to list the dep.
    pub until: u64,
    pub leaving: bool,
}

/// A new dep's route hold that starts counting when a live Sidecar of ours lists the dep
/// ([`IndexConfig::route_delay_from_listing`]).
const UNTIL_LISTED: u64 = u64::MAX;

#[derive(Debug, Default)]
pub(crate) struct NsState {
    pub object: Option<Namespace>,
    pub pods: BTreeMap<Arc<str>, Arc<Pod>>,
    pub replica_sets: HashMap<Arc<str>, ReplicaSet>,
    pub jobs: HashMap<Arc<str>, Job>,
    pub workloads: BTreeMap<(WorkloadKind, Arc<str>), WorkloadObject>,
    pub services: BTreeMap<Arc<str>, Service>,
    pub service_entries: BTreeMap<Arc<str>, ServiceEntry>,
    pub virtual_services: BTreeMap<Arc<str>, VirtualService>,
    pub sidecars: BTreeMap<Arc<str>, SidecarObject>,
    pub destination_rules: BTreeMap<Arc<str>, DestinationRule>,
    pub authorization_policies: BTreeMap<Arc<str>, AuthorizationPolicy>,
}

#[derive(Debug)]
pub struct Index {
    config: IndexConfig,
    /// The latest `now` seen; closes an IP's holder when its pod is deleted.
    clock: u64,
    namespaces: HashMap<Arc<str>, NsState>,
    ips: HashMap<IpAddr, Vec<Holder>>,
    /// Node IPs of host-network pods (refcounted): edges from them are counted, not held.
    host_network_ips: HashMap<IpAddr, u32>,
    hosts: HostTable,
    deps: HashMap<WorkloadId, WorkloadDeps>,
    held: VecDeque<edges::Held>,
    refused_sample: Vec<edges::RefusedEdge>,
    counters: Counters,
    /// Earliest moment a dep can expire (`u64::MAX`: none).
    next_expiry: u64,
    /// Deps whose routes are held back, by workload: new ones learned in the last
    /// [`IndexConfig::route_delay`], expired ones on their way out.
    route_holds: HashMap<WorkloadId, Vec<RouteHold>>,
    /// Earliest end of a route hold (`u64::MAX`: none).
    next_route_release: u64,
    next_prune: u64,
    /// Istio's `discoverySelectors`: workloads in namespaces istiod ignores are not scoped.
    discovery: Vec<crate::discovery::LabelSelector>,
    /// The mesh config's `outboundTrafficPolicy.mode`, when it sets one.
    mesh_policy: Option<OutboundPolicy>,
    /// The mesh config's `defaultServiceExportTo` and `defaultVirtualServiceExportTo`
    /// (empty: not set) and `rootNamespace`.
    default_service_export_to: Vec<String>,
    default_virtual_service_export_to: Vec<String>,
    root_namespace: Option<String>,
    /// The kill switch: no Sidecar is desired while it is on.
    kill_switch: bool,
    /// One copy of each pod label set in use; unused ones are dropped with the IP history.
    pod_labels: hashbrown::HashSet<Arc<Labels>>,
    /// One copy of each namespace, service account and owner string pods use (a
    /// workload's pods share them all; at 100k pods, four allocations a pod). Dropped
    /// with the label sets.
    pod_strings: hashbrown::HashSet<Arc<str>>,
}

impl Default for Index {
    fn default() -> Self {
        Index::new(IndexConfig::default())
    }
}

impl Index {
    pub fn new(config: IndexConfig) -> Self {
        Index {
            config,
            clock: 0,
            namespaces: HashMap::new(),
            ips: HashMap::new(),
            host_network_ips: HashMap::new(),
            hosts: HostTable::default(),
            deps: HashMap::new(),
            held: VecDeque::new(),
            refused_sample: Vec::new(),
            counters: Counters::default(),
            next_expiry: u64::MAX,
            route_holds: HashMap::new(),
            next_route_release: u64::MAX,
            next_prune: 0,
            discovery: Vec::new(),
            mesh_policy: None,
            default_service_export_to: Vec::new(),
            default_virtual_service_export_to: Vec::new(),
            root_namespace: None,
            kill_switch: false,
            pod_labels: hashbrown::HashSet::new(),
            pod_strings: hashbrown::HashSet::new(),
        }
    }

    /// Istio's `discoverySelectors` (empty: every namespace).
    pub fn set_discovery_selectors(&mut self, selectors: Vec<crate::discovery::LabelSelector>) {
        self.discovery = selectors;
    }

    /// What lazyxds takes from Istio's mesh config: `discoverySelectors`, the mesh's
    /// outbound policy (which, when set, wins over `RenderConfig::mesh_outbound_policy`),
    /// the default exportTo of services and VirtualServices, the root namespace.
    pub fn set_mesh_config(&mut self, mesh: crate::discovery::MeshConfig) {
        self.discovery = mesh.discovery_selectors;
        self.mesh_policy = mesh.outbound_policy;
        self.default_service_export_to = mesh.default_service_export_to;
        self.default_virtual_service_export_to = mesh.default_virtual_service_export_to;
        self.root_namespace = mesh.root_namespace;
    }

    /// The mesh config's outbound policy, if it sets one.
    pub fn mesh_policy(&self) -> Option<OutboundPolicy> {
        self.mesh_policy
    }

    /// The mesh config's `rootNamespace`, if it sets one.
    pub fn mesh_root_namespace(&self) -> Option<&str> {
        self.root_namespace.as_deref()
    }

    /// A Service's or ServiceEntry's exportTo as istiod applies it: its own, else the
    /// mesh's `defaultServiceExportTo` (`pilot/pkg/model/push_context.go`,
    /// `serviceExportTo`, `initDefaultExportMaps`). Empty: everywhere.
    pub fn service_export_to<'a>(&'a self, declared: &'a [String]) -> &'a [String] {
        if declared.is_empty() {
            &self.default_service_export_to
        } else {
            declared
        }
    }

    /// A VirtualService's exportTo as istiod applies it: its own, else the mesh's
    /// `defaultVirtualServiceExportTo` (`push_context.go`, `initVirtualServices`).
    pub fn virtual_service_export_to<'a>(&'a self, declared: &'a [String]) -> &'a [String] {
        if declared.is_empty() {
            &self.default_virtual_service_export_to
        } else {
            declared
        }
    }

    /// Turns the kill switch on or off; returns whether it changed.
    pub fn set_kill_switch(&mut self, on: bool) -> bool {
        std::mem::replace(&mut self.kill_switch, on) != on
    }

    /// The kill switch is on: every Sidecar we own goes.
    pub fn kill_switch(&self) -> bool {
        self.kill_switch
    }

    /// Whether istiod watches this namespace (by its labels and `discoverySelectors`).
    pub fn is_discovered(&self, namespace: &str) -> bool {
        if self.discovery.is_empty() {
            return true;
        }
        self.ns(namespace)
            .and_then(|s| s.object.as_ref())
            .is_some_and(|n| crate::discovery::discovered(&self.discovery, &n.labels))
    }

    /// Every workload the index knows (with pods, or as an object).
    pub fn workload_ids(&self) -> BTreeSet<WorkloadId> {
        self.workload_views().into_keys().collect()
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Edges currently waiting for their pod.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    fn ns_mut(&mut self, ns: &str) -> &mut NsState {
        self.namespaces.entry_ref(ns).or_default()
    }

    pub(crate) fn ns(&self, ns: &str) -> Option<&NsState> {
        self.namespaces.get(ns)
    }

    /// Namespaces with any object, sorted.
    pub(crate) fn namespace_names(&self) -> Vec<&Arc<str>> {
        let mut names: Vec<_> = self.namespaces.keys().collect();
        names.sort();
        names
    }

    pub(crate) fn hosts(&self) -> &HostTable {
        &self.hosts
    }

    fn advance_clock(&mut self, now: u64) {
        self.clock = self.clock.max(now);
    }

    // ---- Namespaces ----------------------------------------------------------------

    // ---- Pods ----------------------------------------------------------------------

    /// Closes `old`'s hold of every IP it no longer has (`still` with `host_network`).
    fn release_ips(&mut self, old: &Pod, still: &[IpAddr], still_host_network: bool) {
        for ip in &old.ips {
            let kept = still.contains(ip) && still_host_network == old.host_network;
            if kept {
                continue;
            }
            if old.host_network {
                if let Some(n) = self.host_network_ips.get_mut(ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.host_network_ips.remove(ip);
                    }
                }
                continue;
            }
            if let Some(h) = self
                .ips
                .get_mut(ip)
                .and_then(|hs| hs.last_mut())
                .filter(|h| h.until.is_none() && same_pod(&h.pod, old))
            {
                h.until = Some(self.clock.max(h.from));
            }
        }
    }

    /// The namespace of the pod holding `ip` now (for the gateway's IP table).
    pub fn namespace_of_ip(&self, ip: IpAddr) -> Option<&Arc<str>> {
        let h = self.ips.get(&ip)?.last()?;
        h.until.is_none().then_some(&h.pod.namespace)
    }

    /// Every IP held now and its pod's namespace, sorted.
    pub fn ip_table(&self) -> Vec<(IpAddr, Arc<str>)> {
        let mut table: Vec<_> = self
            .ips
            .iter()
            .filter_map(|(ip, hs)| {
                let h = hs.last()?;
                h.until.is_none().then(|| (*ip, h.pod.namespace.clone()))
            })
            .collect();
        table.sort();
        table
    }

    // ---- ReplicaSets, Jobs, workload objects --------------------------------------

    // ---- Services, ServiceEntries, VirtualServices ---------------------------------

    // ---- Sidecars ------------------------------------------------------------------

    /// Applies our Sidecars (as listed at start-up); returns how many deps were merged.
    pub fn restore_from_sidecars(
        &mut self,
        sidecars: impl IntoIterator<Item = SidecarObject>,
    ) -> u64 {
        let before = self.counters.deps_restored;
        for s in sidecars {
            self.apply(s);
        }
        self.counters.deps_restored.saturating_sub(before)
    }

    // ---- Deps ----------------------------------------------------------------------

    /// A workload's learned deps (host → last seen at the gateway), sorted.
    pub fn deps(&self, workload: &WorkloadId) -> BTreeMap<Arc<str>, u64> {
        self.deps
            .get(workload)
            .map(|d| d.deps.iter().map(|(h, t)| (h.clone(), *t)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn workload_deps(&self, workload: &WorkloadId) -> Option<&WorkloadDeps> {
        self.deps.get(workload)
    }

    /// The virtual host names (`host:port`, as istiod names them) of the workload's deps
    /// whose routes are still held back (see [`IndexConfig::route_delay`]): one per port
    /// of each Service or ServiceEntry defining the host. Sorted, no duplicates.
    /// Only deps `hold` accepts.
    pub fn held_route_names(
        &self,
        workload: &WorkloadId,
        hold: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let Some(holds) = self.route_holds.get(workload) else {
            return Vec::new();
        };
        let mut names = BTreeSet::new();
        for dep in holds.iter().map(|h| &h.dep).filter(|dep| hold(dep)) {
            for def in self.hosts.defs(dep).into_iter().flatten() {
                let ports: Vec<u16> = match def.kind {
                    DefKind::Service => self
                        .ns(&def.namespace)
                        .and_then(|ns| ns.services.get(&def.name))
                        .map(|svc| svc.ports.iter().map(|p| p.port).collect())
                        .unwrap_or_default(),
                    DefKind::ServiceEntry => self
                        .ns(&def.namespace)
                        .and_then(|ns| ns.service_entries.get(&def.name))
                        .map(|se| se.ports.iter().map(|p| p.number).collect())
                        .unwrap_or_default(),
                    // A VirtualService defines no cluster: nothing to wait for.
                    DefKind::VirtualService => Vec::new(),
                };
                names.extend(ports.into_iter().map(|port| format!("{dep}:{port}")));
            }
        }
        // Bounds the catch-all filter during a burst of new deps; past it, routes and
        // clusters come together (as without the delay).
        names.into_iter().take(MAX_HELD_ROUTES).collect()
    }

    /// Starts holding back the routes of `dep` of `workload`: just learned, or
    /// `leaving` (expired).
    pub(super) fn hold_routes(&mut self, workload: &WorkloadId, dep: &Arc<str>, leaving: bool) {
        let delay = self.config.route_delay.as_secs();
        if delay == 0 {
            return;
        }
        let until = if self.config.route_delay_from_listing && !leaving {
            UNTIL_LISTED
        } else {
            self.clock.saturating_add(delay)
        };
        self.route_holds
            .entry(workload.clone())
            .or_default()
            .push(RouteHold {
                dep: dep.clone(),
                until,
                leaving,
            });
        self.next_route_release = self.next_route_release.min(until);
    }

    /// Starts the delay of `workload`'s holds waiting for a live Sidecar to list their dep,
    /// for every dep its live Sidecar now lists.
    pub(super) fn deps_listed<'a>(
        &mut self,
        workload: &WorkloadId,
        listed: impl Iterator<Item = &'a String>,
    ) {
        let Some(holds) = self.route_holds.get_mut(workload) else {
            return;
        };
        // The index's clock moves on edges and ticks (each second): one more second, so a
        // clock that lags never shortens the delay.
        let until = self
            .clock
            .saturating_add(self.config.route_delay.as_secs())
            .saturating_add(1);
        let listed: BTreeSet<&str> = listed.map(String::as_str).collect();
        for hold in holds
            .iter_mut()
            .filter(|h| h.until == UNTIL_LISTED && listed.contains(&*h.dep))
        {
            hold.until = until;
            self.next_route_release = self.next_route_release.min(until);
        }
    }

    /// Ends the route holds due by `now`; their workloads' catch-all filters change. A
    /// leaving dep the gateway has not seen again since it expired leaves the Sidecar.
    fn release_routes(&mut self, now: u64, changed: &mut BTreeSet<WorkloadId>) {
        if now < self.next_route_release {
            return;
        }
        let mut next = u64::MAX;
        let mut ended = Vec::new();
        self.route_holds.retain(|id, holds| {
            let (done, kept): (Vec<RouteHold>, Vec<RouteHold>) = std::mem::take(holds)
                .into_iter()
                .partition(|h| h.until <= now);
            *holds = kept;
            ended.extend(done.into_iter().map(|h| (id.clone(), h)));
            if let Some(until) = holds.iter().map(|h| h.until).min() {
                next = next.min(until);
            }
            !holds.is_empty()
        });
        self.next_route_release = next;
        let ttl = self.config.ttl.map(|t| t.as_secs());
        let mut gone = Vec::new();
        for (id, hold) in ended {
            if hold.leaving {
                if let (Some(wd), Some(ttl)) = (self.deps.get_mut(&id), ttl) {
                    let still_expired = wd
                        .deps
                        .get(&hold.dep)
                        .is_some_and(|seen| edges::expiry_at(*seen, ttl) <= now);
                    if still_expired {
                        wd.deps.remove(&hold.dep);
                        gone.push((id.clone(), hold.dep.clone()));
                        self.counters.deps_expired = self.counters.deps_expired.saturating_add(1);
                        // Re-learned through the gateway; the cap frees up again.
                        wd.over_cap = false;
                    }
                }
            }
            if self.is_enabled(&id) {
                changed.insert(id);
            }
        }
        // A dep that left takes its other holds along (one still waiting to be listed).
        for (id, dep) in gone {
            if let Some(holds) = self.route_holds.get_mut(&id) {
                holds.retain(|h| h.dep != dep);
                if holds.is_empty() {
                    self.route_holds.remove(&id);
                }
            }
        }
        self.deps.retain(|_, wd| !wd.deps.is_empty() || wd.over_cap);
    }

    /// Every workload with learned deps.
    pub fn workloads_with_deps(&self) -> BTreeSet<WorkloadId> {
        self.deps.keys().cloned().collect()
    }

    /// Drops the deps of workloads with neither an object nor pods. Call it only once
    /// every watch has synced (deps restored at start-up precede their workloads).
    pub fn forget_absent_workloads(&mut self) -> usize {
        let present: BTreeSet<WorkloadId> = self.workload_views().into_keys().collect();
        let before = self.deps.len();
        self.deps.retain(|id, _| present.contains(id));
        self.route_holds.retain(|id, _| present.contains(id));
        before.saturating_sub(self.deps.len())
    }

    /// Merges deps (max last-seen), skipping already expired ones, within the cap.
    fn merge_deps(&mut self, workload: &WorkloadId, deps: Vec<(Arc<str>, u64)>) {
        let ttl = self.config.ttl.map(|t| t.as_secs());
        let cap = self.config.max_deps_per_workload;
        let clock = self.clock;
        let entry = self.deps.entry(workload.clone()).or_default();
        for (host, seen) in deps {
            if ttl.is_some_and(|ttl| seen.saturating_add(ttl) < clock) {
                continue;
            }
            let full = entry.deps.len() >= cap;
            match entry.deps.get_mut(&host) {
                Some(t) => *t = (*t).max(seen),
                None if full => {
                    entry.over_cap = true;
                    continue;
                }
                None => {
                    entry.deps.insert(host, seen);
                }
            }
            self.counters.deps_restored = self.counters.deps_restored.saturating_add(1);
            if let Some(ttl) = ttl {
                self.next_expiry = self.next_expiry.min(edges::expiry_at(seen, ttl));
            }
        }
    }
}

fn same_pod(a: &Pod, b: &Pod) -> bool {
    a.namespace == b.namespace && a.name == b.name
}

fn host_def(kind: DefKind, namespace: &Arc<str>, name: &Arc<str>) -> HostDef {
    HostDef {
        namespace: namespace.clone(),
        kind,
        name: name.clone(),
    }
}

#[cfg(test)]
mod tests;
