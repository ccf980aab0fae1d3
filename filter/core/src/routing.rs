//! First-call routing: what the gateway does with a request's authority before routing.
//!
//! - A short authority (`reviews:9080`) is rewritten to the FQDN of the caller's namespace.
//!   The namespace comes from the verified peer identity (SPIFFE), else from the
//!   IP → namespace table the controller pushes. Qualified short forms (`reviews.shop`,
//!   `reviews.shop.svc`) need no caller namespace.
//! - A request the gateway would send to its catch-all route (a host the mesh does not
//!   know) is refused for callers whose outbound policy is REGISTRY_ONLY.
//! - A request that needs the table before the first push waits for it (bounded); the
//!   shell pauses it and applies the decision [`Router::resolved`] or [`Router::due`] hand
//!   back later. Everything else goes on unchanged: the controller never fails a request.

use core::net::IpAddr;

use lazyxds_proto::v1::{NamespaceTable, OutboundPolicy};

use crate::authority::{
    is_label, service_authority, spiffe_namespace, Authority, MAX_AUTHORITY_LEN,
};
use crate::config::Config;
use crate::edge::parse_source_ip;

/// Requests one worker keeps paused at most; more go on unchanged.
pub const MAX_PAUSED: usize = 1024;

/// Name of the gateway's catch-all route for hosts the mesh does not know (the
/// forward-proxy route lazyxds renders): a request Envoy would send there is refused (502)
/// when its caller's outbound policy is REGISTRY_ONLY.
pub const EXTERNAL_ROUTE: &str = "lazyxds-external";

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave it as it is.
    Continue,
    /// Replace `:authority` with this value (the route is then selected again).
    Rewrite(String),
    /// Answer 502 with this body.
    Refuse(String),
    /// Paused until the namespace table arrives or the wait times out.
    Wait,
}

/// What the filter knows of a request when it decides.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestView<'a> {
    /// `:authority` as received.
    pub authority: &'a [u8],
    /// The route Envoy selected for that authority is the catch-all for unknown hosts.
    pub external: bool,
    /// `connection.uri_san_peer_certificate`.
    pub principal: Option<&'a [u8]>,
    /// `source.address`.
    pub source: Option<&'a [u8]>,
}

/// Counters of one worker; exported as Envoy stats `lazyxds.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingCounters {
    /// Authorities rewritten to a Service FQDN.
    pub rewrites: u64,
    /// Of those, the caller's namespace came from its verified identity.
    pub rewrites_by_identity: u64,
    /// Short names left unchanged: caller namespace unknown, or no table yet.
    pub unresolved: u64,
    /// Requests paused for the table.
    pub waits: u64,
    /// Paused requests that went on without the table.
    pub wait_timeouts: u64,
    /// Unknown hosts forwarded (caller ALLOW_ANY). An FQDN or external name is seen as
    /// unknown only while some namespace is REGISTRY_ONLY: otherwise its route is not read.
    pub external_forwarded: u64,
    /// Unknown hosts refused (caller REGISTRY_ONLY).
    pub external_refused: u64,
    /// Namespace tables received.
    pub tables: u64,
    /// Tables with malformed addresses (their namespaces and policies are used).
    pub bad_tables: u64,
}

impl RoutingCounters {
    /// Every counter with its stat name, in a fixed order.
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("routing_rewrites", self.rewrites),
            ("routing_rewrites_by_identity", self.rewrites_by_identity),
            ("routing_unresolved", self.unresolved),
            ("routing_waits", self.waits),
            ("routing_wait_timeouts", self.wait_timeouts),
            ("routing_external_forwarded", self.external_forwarded),
            ("routing_external_refused", self.external_refused),
            ("routing_tables", self.tables),
            ("routing_bad_tables", self.bad_tables),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    AllowAny,
    RegistryOnly,
}

impl Policy {
    /// Unknown or unspecified values mean ALLOW_ANY (Istio's default).
    fn from_wire(value: Option<&i32>) -> Policy {
        if value == Some(&(OutboundPolicy::RegistryOnly as i32)) {
            Policy::RegistryOnly
        } else {
            Policy::AllowAny
        }
    }
}

/// The pushed namespace table, used as decoded: addresses are binary-searched in place,
/// namespaces (hundreds at most) scanned.
#[derive(Debug, Default)]
struct Table(NamespaceTable);

impl Table {
    /// Checks what address lookups rely on; a table that fails keeps its namespaces and
    /// policies only.
    fn new(mut table: NamespaceTable) -> (Table, bool) {
        let names = table.namespaces.len() as u64;
        let (v6, rest) = table.ipv6.as_chunks::<3>();
        let valid = table.ipv4.windows(2).all(|w| w[0] < w[1])
            && table.ipv4.iter().all(|v| (v & 0xffff_ffff) < names)
            && rest.is_empty()
            && v6.windows(2).all(|w| w[0] < w[1])
            && v6.iter().all(|v| v[2] < names);
        if !valid {
            table.ipv4.clear();
            table.ipv6.clear();
        }
        (Table(table), valid)
    }

    fn index_of(&self, namespace: &str) -> Option<usize> {
        self.0
            .namespaces
            .iter()
            .position(|n| n.eq_ignore_ascii_case(namespace))
    }

    /// The namespace index of the pod holding `ip`.
    fn index_of_ip(&self, ip: IpAddr) -> Option<usize> {
        let t = &self.0;
        let index = match ip {
            IpAddr::V4(ip) => {
                let ip = u64::from(u32::from(ip));
                let i = t.ipv4.binary_search_by(|v| (v >> 32).cmp(&ip)).ok()?;
                t.ipv4.get(i)? & 0xffff_ffff
            }
            IpAddr::V6(ip) => {
                let ip = u128::from(ip);
                let key = [(ip >> 64) as u64, ip as u64];
                let v6 = t.ipv6.as_chunks::<3>().0;
                let i = v6.binary_search_by(|v| v[..2].cmp(&key)).ok()?;
                v6.get(i)?[2]
            }
        };
        Some(index as usize)
    }

    /// The namespace at `index`, when it is a DNS label: it goes into an authority, and a
    /// table is input like any other.
    fn name(&self, index: usize) -> Option<&str> {
        self.0
            .namespaces
            .get(index)
            .map(String::as_str)
            .filter(|ns| is_label(ns))
    }

    /// Whether some caller (a namespace, or an unknown one under the mesh policy) is
    /// REGISTRY_ONLY: only then does a host the mesh does not know get refused.
    fn refuses_unknown_hosts(&self) -> bool {
        Policy::from_wire(Some(&self.0.mesh_policy)) == Policy::RegistryOnly
            || self
                .0
                .policies
                .iter()
                .any(|p| Policy::from_wire(Some(p)) == Policy::RegistryOnly)
    }

    fn policy(&self, index: Option<usize>) -> Policy {
        match index {
            Some(i) => Policy::from_wire(self.0.policies.get(i)),
            None => Policy::from_wire(Some(&self.0.mesh_policy)),
        }
    }
}

/// A paused request, owned until it is decided.
#[derive(Debug)]
struct Paused {
    context_id: u32,
    until_ms: u64,
    authority: Vec<u8>,
    external: bool,
    principal: Option<Vec<u8>>,
    source: Option<Vec<u8>>,
}

impl Paused {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            authority: &self.authority,
            external: self.external,
            principal: self.principal.as_deref(),
            source: self.source.as_deref(),
        }
    }
}

/// One worker's routing state.
#[derive(Debug)]
pub struct Router {
    enabled: bool,
    cluster_domain: String,
    wait_ms: u64,
    table: Option<Table>,
    /// A wait timed out: nothing waits again until a push arrives.
    gave_up: bool,
    paused: Vec<Paused>,
    counters: RoutingCounters,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        Router {
            enabled: config.routing,
            cluster_domain: config.cluster_domain.clone(),
            wait_ms: config.routing_wait_ms,
            table: None,
            gave_up: false,
            paused: Vec::new(),
            counters: RoutingCounters::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a namespace table arrived (until then a request may be paused).
    pub fn has_table(&self) -> bool {
        self.table.is_some()
    }

    pub fn counters(&self) -> &RoutingCounters {
        &self.counters
    }

    /// Whether a route name is the catch-all for unknown hosts.
    pub fn is_external_route(route_name: &[u8]) -> bool {
        route_name == EXTERNAL_ROUTE.as_bytes()
    }

    /// Whether deciding on this authority needs the name of the route Envoy selected for
    /// it (it may be an unknown host). When it does and the route is not the catch-all,
    /// the request is routed as sent: the shell reads nothing more. An FQDN or external
    /// name only needs it while some caller may be refused (REGISTRY_ONLY) or before the
    /// first table: with every namespace ALLOW_ANY (Istio's default) it goes on as sent
    /// whatever its route, and the gateway saves a property read per request.
    pub fn needs_route(&self, authority: &[u8]) -> bool {
        self.needs_route_for(Authority::parse(authority))
    }

    /// [`Router::needs_route`] for an authority the shell parsed once for the request.
    pub fn needs_route_for(&self, form: Authority<'_>) -> bool {
        if !self.enabled {
            return false;
        }
        match form {
            Authority::Pair { .. } => true,
            Authority::Other => self.table.as_ref().is_none_or(Table::refuses_unknown_hosts),
            Authority::Bare { .. } | Authority::Svc { .. } => false,
        }
    }

    /// Whether deciding on this request needs its caller (identity and source address):
    /// only a short name (rewritten into the caller's namespace) and a host that took the
    /// catch-all route (the caller's outbound policy) do. Every other request is decided
    /// without them, so the shell skips two property reads on the hot path (an FQDN, the
    /// common case from sidecars).
    pub fn needs_caller(&self, authority: &[u8], external: bool) -> bool {
        self.needs_caller_for(Authority::parse(authority), external)
    }

    /// [`Router::needs_caller`] for an authority parsed once.
    pub fn needs_caller_for(&self, form: Authority<'_>, external: bool) -> bool {
        self.enabled && (external || matches!(form, Authority::Bare { .. }))
    }

    /// Requests paused now.
    pub fn paused_len(&self) -> usize {
        self.paused.len()
    }

    /// Decides a request; a `Wait` means it is now paused under `context_id` until
    /// `now_ms + routing_wait_ms` (the shell pauses it and waits for [`Router::resolved`]
    /// or [`Router::due`]).
    pub fn on_request(
        &mut self,
        context_id: u32,
        request: &RequestView<'_>,
        now_ms: u64,
    ) -> Decision {
        self.on_parsed_request(
            context_id,
            request,
            Authority::parse(request.authority),
            now_ms,
        )
    }

    /// [`Router::on_request`] with `form`, the request's authority as
    /// [`Authority::parse`] reads it: the shell parses it once for the three questions
    /// (route, caller, decision) it asks per request.
    pub fn on_parsed_request(
        &mut self,
        context_id: u32,
        request: &RequestView<'_>,
        form: Authority<'_>,
        now_ms: u64,
    ) -> Decision {
        if !self.enabled {
            return Decision::Continue;
        }
        let decision = self.decide_parsed(request, form);
        if decision != Decision::Wait {
            return decision;
        }
        if self.paused.len() >= MAX_PAUSED {
            self.counters.unresolved += 1;
            return Decision::Continue;
        }
        self.counters.waits += 1;
        self.paused.push(Paused {
            context_id,
            until_ms: now_ms.saturating_add(self.wait_ms),
            authority: request.authority.to_vec(),
            external: request.external,
            principal: request.principal.map(<[u8]>::to_vec),
            source: request.source.map(<[u8]>::to_vec),
        });
        Decision::Wait
    }

    /// The request ended (or was reset) while paused: forget it.
    pub fn forget(&mut self, context_id: u32) {
        self.paused.retain(|p| p.context_id != context_id);
    }

    /// Paused requests whose wait is over, decided without the table.
    pub fn due(&mut self, now_ms: u64) -> Vec<(u32, Decision)> {
        let due = self.take_paused(|p| p.until_ms <= now_ms);
        if !due.is_empty() {
            self.gave_up = true;
            self.counters.wait_timeouts += due.len() as u64;
        }
        self.decide_all(due)
    }

    /// After a push: paused requests that can now be decided.
    pub fn resolved(&mut self) -> Vec<(u32, Decision)> {
        let paused = core::mem::take(&mut self.paused);
        let mut out = Vec::new();
        for p in paused {
            match self.decide(&p.view()) {
                Decision::Wait => self.paused.push(p),
                d => out.push((p.context_id, d)),
            }
        }
        out
    }

    fn take_paused(&mut self, mut take: impl FnMut(&Paused) -> bool) -> Vec<Paused> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.paused.len() {
            if take(&self.paused[i]) {
                out.push(self.paused.swap_remove(i));
            } else {
                i += 1;
            }
        }
        out
    }

    fn decide_all(&mut self, paused: Vec<Paused>) -> Vec<(u32, Decision)> {
        paused
            .iter()
            .map(|p| (p.context_id, self.decide(&p.view())))
            .collect()
    }

    /// A namespace table from the controller: replaces the previous one.
    pub fn apply_table(&mut self, message: NamespaceTable) {
        let (table, valid) = Table::new(message);
        if !valid {
            self.counters.bad_tables += 1;
        }
        self.counters.tables += 1;
        self.table = Some(table);
        self.gave_up = false;
    }

    fn can_wait(&self) -> bool {
        self.wait_ms > 0 && !self.gave_up
    }

    fn decide(&mut self, request: &RequestView<'_>) -> Decision {
        self.decide_parsed(request, Authority::parse(request.authority))
    }

    fn decide_parsed(&mut self, request: &RequestView<'_>, form: Authority<'_>) -> Decision {
        let identity = request.principal.and_then(spiffe_namespace);
        if let Authority::Svc {
            name,
            namespace,
            port,
        } = form
        {
            // Needs nothing: decided before the table arrives.
            return self.rewrite(name, namespace, port, false);
        }
        if let (Authority::Bare { name, port }, Some(ns)) = (form, identity) {
            return self.rewrite(name, ns, port, true);
        }
        let Some(table) = &self.table else {
            return if matches!(form, Authority::Bare { .. }) || request.external {
                self.wait_or_continue()
            } else {
                Decision::Continue
            };
        };
        // The caller's namespace: its verified identity, else its pod IP.
        let caller = match identity {
            Some(ns) => table.index_of(ns),
            None => request
                .source
                .and_then(parse_source_ip)
                .and_then(|ip| table.index_of_ip(ip)),
        };
        match form {
            Authority::Bare { name, port } => match caller.and_then(|i| table.name(i)) {
                Some(ns) => {
                    let authority = service_authority(name, ns, port, &self.cluster_domain);
                    self.counters.rewrites += 1;
                    return Decision::Rewrite(authority);
                }
                None => self.counters.unresolved += 1,
            },
            Authority::Pair {
                name,
                namespace,
                port,
            } if request.external && table.index_of(namespace).is_some() => {
                return self.rewrite(name, namespace, port, false);
            }
            _ => {}
        }
        if !request.external {
            return Decision::Continue;
        }
        // A host the mesh does not know: the caller's outbound policy decides.
        if table.policy(caller) == Policy::AllowAny {
            self.counters.external_forwarded += 1;
            return Decision::Continue;
        }
        let namespace = caller.and_then(|i| table.name(i)).or(identity);
        let body = refusal(request.authority, namespace);
        self.counters.external_refused += 1;
        Decision::Refuse(body)
    }

    fn rewrite(
        &mut self,
        name: &str,
        namespace: &str,
        port: Option<&str>,
        by_identity: bool,
    ) -> Decision {
        self.counters.rewrites += 1;
        if by_identity {
            self.counters.rewrites_by_identity += 1;
        }
        Decision::Rewrite(service_authority(
            name,
            namespace,
            port,
            &self.cluster_domain,
        ))
    }

    fn wait_or_continue(&mut self) -> Decision {
        if self.can_wait() {
            Decision::Wait
        } else {
            self.counters.unresolved += 1;
            Decision::Continue
        }
    }
}

/// The body of a 502 for a host the mesh does not know, asked for by a REGISTRY_ONLY
/// caller.
fn refusal(authority: &[u8], namespace: Option<&str>) -> String {
    let host = core::str::from_utf8(authority)
        .ok()
        .filter(|h| h.len() <= MAX_AUTHORITY_LEN && !h.is_empty())
        .unwrap_or("the requested host");
    let mut body = String::with_capacity(160);
    for part in [
        "lazyxds: ",
        host,
        " is not a service of the mesh, and the outbound traffic policy of ",
    ] {
        body.push_str(part);
    }
    match namespace {
        Some(ns) => {
            body.push_str("namespace ");
            body.push_str(ns);
        }
        None => body.push_str("the mesh"),
    }
    body.push_str(" is REGISTRY_ONLY\n");
    body
}

#[cfg(test)]
mod tests;
