//! Which config objects define which hosts, and the per-edge dependency-host cache.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use lazyxds_proto::cluster::ClusterName;

use crate::host;

/// Bound on cached (source ns, requested host, cluster) resolutions; cleared when full.
const MAX_CACHE: usize = 200_000;
/// The cache serves bursts of edges (a gateway's first flush, a restart's resends);
/// after this long without one resolution its memory (up to ~19 MB at the bound) goes
/// back ([`HostTable::release_idle_cache`]).
const CACHE_IDLE_S: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum DefKind {
    Service,
    ServiceEntry,
    VirtualService,
}

/// A config object defining a host; its namespace is the `ns/` of a Sidecar egress host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HostDef {
    pub namespace: Arc<str>,
    pub kind: DefKind,
    pub name: Arc<str>,
}

#[derive(Debug, Default)]
pub(crate) struct HostTable {
    exact: HashMap<Arc<str>, BTreeSet<HostDef>>,
    /// `*.suffix` hosts (ServiceEntries, VirtualServices); few, matched by scan.
    wildcard: BTreeMap<Arc<str>, BTreeSet<HostDef>>,
    cache: HashMap<CacheKey, Resolved>,
    /// A resolution ran since the last [`HostTable::release_idle_cache`].
    cache_used: bool,
    /// When one last did (unix s, as of a release check).
    cache_used_at: u64,
}

/// What an edge's (requested host, cluster) pair is a dependency on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The host a Service, ServiceEntry or VirtualService defines, as a Sidecar lists it.
    Dep(Arc<str>),
    /// Not an outbound cluster (passthrough, inbound, black hole, malformed).
    NotOutbound,
    /// Nothing defines the requested host nor the cluster's host (yet: the watches may
    /// lag istiod). A Sidecar lists only real hosts, so this is never a dependency.
    Undefined,
    /// A defined host no Sidecar may be widened to: the bare wildcard `*` (it would undo
    /// scoping) or a name that is not a DNS name.
    Refused,
}

impl HostTable {
    pub fn add(&mut self, host: &str, def: HostDef) {
        self.cache.clear();
        let map_entry = if host.starts_with('*') {
            self.wildcard.entry(host.into()).or_default()
        } else {
            self.exact.entry_ref(host).or_default()
        };
        map_entry.insert(def);
    }

    pub fn remove(&mut self, host: &str, def: &HostDef) {
        self.cache.clear();
        if host.starts_with('*') {
            if let Some(defs) = self.wildcard.get_mut(host) {
                defs.remove(def);
                if defs.is_empty() {
                    self.wildcard.remove(host);
                }
            }
        } else if let Some(defs) = self.exact.get_mut(host) {
            defs.remove(def);
            if defs.is_empty() {
                self.exact.remove(host);
            }
        }
    }

    /// The defined host covering `host`: itself, or the longest wildcard matching it.
    pub fn lookup(&self, host: &str) -> Option<&Arc<str>> {
        if let Some((key, _)) = self.exact.get_key_value(host) {
            return Some(key);
        }
        if let Some((key, _)) = self.wildcard.get_key_value(host) {
            return Some(key);
        }
        self.wildcard
            .keys()
            .filter(|pattern| host::matches(pattern, host))
            .max_by_key(|pattern| pattern.len())
    }

    /// The objects defining exactly this host (as returned by [`HostTable::lookup`]).
    pub fn defs(&self, host: &str) -> Option<&BTreeSet<HostDef>> {
        self.exact.get(host).or_else(|| self.wildcard.get(host))
    }

    /// The dependency host of an edge from a pod in `src_ns`: the requested host when a
    /// VirtualService, Service or ServiceEntry defines it (short names expanded), else
    /// the outbound cluster's host when one defines that; never a host nothing defines
    /// (the wire may name anything). The cache keeps the caller's `Arc`s (the pod's
    /// namespace, the stream's names): no copies.
    pub fn resolve(
        &mut self,
        src_ns: &Arc<str>,
        requested: Option<&Arc<str>>,
        cluster: &Arc<str>,
        cluster_domain: &str,
    ) -> Resolved {
        self.cache_used = true;
        let query = CacheQuery {
            ns: src_ns,
            host: requested.map(|h| &**h),
            cluster,
        };
        if let Some(hit) = self.cache.get(&query) {
            return hit.clone();
        }
        let resolved =
            self.resolve_uncached(src_ns, requested.map(|h| &**h), cluster, cluster_domain);
        if self.cache.len() >= MAX_CACHE {
            self.cache.clear();
        }
        self.cache.insert(
            CacheKey {
                ns: src_ns.clone(),
                host: requested.cloned(),
                cluster: cluster.clone(),
            },
            resolved.clone(),
        );
        resolved
    }

    fn resolve_uncached(
        &self,
        src_ns: &str,
        requested: Option<&str>,
        cluster: &str,
        cluster_domain: &str,
    ) -> Resolved {
        let Some(outbound) = ClusterName::parse(cluster).outbound() else {
            return Resolved::NotOutbound;
        };
        let by_request = requested.and_then(|requested| {
            // An absolute name skips the search path; an absolute FQDN is still the FQDN.
            let expanded = host::expand_requested(requested, src_ns, cluster_domain);
            let requested = requested.strip_suffix('.').unwrap_or(requested);
            expanded
                .as_deref()
                .and_then(|fqdn| self.lookup(fqdn))
                .or_else(|| self.lookup(requested))
        });
        match by_request.or_else(|| self.lookup(outbound.host)) {
            Some(defined) if host::may_be_sidecar_host(defined) => Resolved::Dep(defined.clone()),
            Some(_) => Resolved::Refused,
            None => Resolved::Undefined,
        }
    }

    /// Drops the cache, allocation and all, once no edge was resolved for
    /// [`CACHE_IDLE_S`]; called on the index's tick.
    pub fn release_idle_cache(&mut self, now: u64) {
        if std::mem::take(&mut self.cache_used) {
            self.cache_used_at = now;
        } else if now.saturating_sub(self.cache_used_at) >= CACHE_IDLE_S
            && self.cache.capacity() > 0
        {
            self.cache = HashMap::new();
        }
    }

    #[cfg(test)]
    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    #[cfg(test)]
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}

/// Owned cache key; looked up through [`CacheQuery`] so a hit allocates nothing.
#[derive(Debug, PartialEq, Eq)]
struct CacheKey {
    ns: Arc<str>,
    host: Option<Arc<str>>,
    cluster: Arc<str>,
}

#[derive(Debug, PartialEq, Eq)]
struct CacheQuery<'a> {
    ns: &'a str,
    host: Option<&'a str>,
    cluster: &'a str,
}

// Both hash the same `&str` parts, so a query finds its key.
impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        CacheQuery {
            ns: &self.ns,
            host: self.host.as_deref(),
            cluster: &self.cluster,
        }
        .hash(state)
    }
}

impl Hash for CacheQuery<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.ns.hash(state);
        self.host.hash(state);
        self.cluster.hash(state);
    }
}

impl Equivalent<CacheKey> for CacheQuery<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.ns == &*key.ns && self.host == key.host.as_deref() && self.cluster == &*key.cluster
    }
}
