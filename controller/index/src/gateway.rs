//! What the lazy gateway needs so that a first call through it is routed exactly as the
//! caller's sidecar would have routed it: the Istio objects (rendered here, pure) and the
//! namespace table pushed to its filter ([`namespace_table`]).
//!
//! - A `Gateway` with one server on the gateway port, `tls.mode: ISTIO_MUTUAL` (the
//!   filter then knows each caller's verified identity), and a `DestinationRule`
//!   `ISTIO_MUTUAL` for the gateway host (gateway pods lack the auto-mTLS label).
//! - A placeholder `Service` in the gateway namespace with every HTTP port of the mesh
//!   (`http-<port>`): every lazy sidecar imports it, so it has an HTTP route table per port
//!   and a call on any of them reaches the gateway as HTTP, Host intact.
//! - One `VirtualService` per mesh host bound to the gateway: each HTTP port of the host is
//!   matched by authority (`fqdn:port`; a Host without port means 80). Where the user has a
//!   VirtualService for the host, its HTTP routes are reproduced (matches, subsets,
//!   weights, rewrites, timeouts, ...) per port, with short destination hosts resolved from
//!   the user's namespace. HTTP ServiceEntry hosts are routed the same way (they are lazy
//!   too). `*.svc.<domain>` hosts without a Service get a 404 that says so.
//! - An `EnvoyFilter` (gateway pods only) adding the catch-all route for hosts the mesh
//!   does not know: Envoy's dynamic forward proxy, route name [`EXTERNAL_ROUTE`]. The
//!   filter refuses requests bound for it from REGISTRY_ONLY callers and lets the others
//!   out, as their sidecar would have.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use lazyxds_proto::v1::{NamespaceTable, OutboundPolicy as WirePolicy};
use serde_json::{json, Map, Value};

pub use crate::desired::PLACEHOLDER_SERVICE;
use crate::desired::{mesh_policy, outbound_policy, RenderConfig};
use crate::error::Error;
use crate::host;
use crate::index::Index;
use crate::istio::{
    ConfigPatch, DestinationRule, DestinationRuleSpec, EnvoyFilter, EnvoyFilterSpec, Gateway,
    GatewaySpec, IstioObject, Metadata, OutboundPolicy, PatchMatch, PortSelector,
    PortTrafficPolicy, RouteConfigurationMatch, Server, ServerPort, ServerTls, TrafficPolicy,
    VirtualServiceSpec, WorkloadSelector, ENVOY_FILTER_API, NETWORKING_API,
};
use crate::objects::{Protocol, VirtualService, Visibility, ANNOTATION_EXPORT_TO};

/// Route (and virtual host, and cluster) name of the catch-all for unknown hosts; the
/// filter knows it by this name.
pub const EXTERNAL_ROUTE: &str = "lazyxds-external";
/// The catch-all EnvoyFilter's priority. Not 0: `istioctl analyze` flags (IST0151) an
/// EnvoyFilter with a relative patch (its forward proxy filter goes `INSERT_BEFORE` the
/// router) and priority 0, whose order among others is then creation time
/// (`pkg/config/analysis/analyzers/envoyfilter/envoyfilter.go`, `relativeOperationMsg`).
/// Positive: applied after the install's filter (`install::filter::ENVOY_FILTER_PRIORITY`,
/// lower first), which must end up ahead of the forward proxy.
pub const CATCH_ALL_PRIORITY: i32 = 10;
/// The VirtualService answering `*.svc.<domain>` hosts no Service has.
pub const UNKNOWN_MESH_HOSTS: &str = "lazyxds-unknown-mesh-hosts";
/// Its answer.
pub const UNKNOWN_MESH_HOST_BODY: &str =
    "lazyxds: no such service in the mesh (check the name and the namespace)\n";
/// Prefix of the per-host VirtualServices.
pub const ROUTE_PREFIX: &str = "lazyxds-route-";

/// What our rendered objects have in common, as compact JSON: a Sidecar, its catch-all
/// EnvoyFilter and a gateway VirtualService of a made-up workload and host, with the
/// default gateway. The LZ4 dictionary of every [`JsonText`]: its keys, Istio's enums,
/// our labels and annotations and the gateway's cluster are matched here, so a block holds
/// little more than the object's own names and hosts (a test checks the ratio on rendered
/// objects: a renderer that drifts from this only packs less tightly, never wrongly).
const DICTIONARY: &str = concat!(
    r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"labels":{"app.kubernetes.io/managed-by":"lazyxds"},"name":"lazyxds-route-example.default.svc.cluster.local","namespace":"lazyxds-system"},"spec":{"exportTo":["."],"gateways":["lazyxds-system/lazyxds-gateway"],"hosts":["example.default.svc.cluster.local"],"http":[{"match":[{"authority":{"exact":"example.default.svc.cluster.local"}},{"authority":{"exact":"example.default.svc.cluster.local:80"}}],"name":"example.default.svc.cluster.local:80","route":[{"destination":{"host":"example.default.svc.cluster.local","port":{"number":80}}}]}]}}"#,
    r#"{"apiVersion":"networking.istio.io/v1alpha3","kind":"EnvoyFilter","metadata":{"annotations":{"galley.istio.io/analyze-suppress":"IST0133,IST0151","lazyxds.io/workload":"Deployment/example"},"labels":{"app.kubernetes.io/component":"catch-all","app.kubernetes.io/managed-by":"lazyxds"},"name":"lazyxds-deployment-example","namespace":"default"},"spec":{"configPatches":[{"applyTo":"HTTP_ROUTE","match":{"context":"SIDECAR_OUTBOUND","routeConfiguration":{"vhost":{"name":"allow_any","route":{"name":"allow_any"}}}},"patch":{"operation":"MERGE","value":{"route":{"cluster":"outbound|8080||lazyxds-gateway.lazyxds-system.svc.cluster.local","max_grpc_timeout":"0s","timeout":"0s"}}}},{"applyTo":"HTTP_ROUTE","match":{"context":"SIDECAR_OUTBOUND","routeConfiguration":{"vhost":{"name":"block_all","route":{"name":"block_all"}}}},"patch":{"operation":"MERGE","value":{"route":{"cluster":"outbound|8080||lazyxds-gateway.lazyxds-system.svc.cluster.local","max_grpc_timeout":"0s","timeout":"0s"}}}},{"applyTo":"VIRTUAL_HOST","match":{"context":"SIDECAR_OUTBOUND","routeConfiguration":{"vhost":{"name":"example.default.svc.cluster.local:80"}}},"patch":{"operation":"REMOVE"}}],"workloadSelector":{"labels":{"app":"example","version":"v1"}}}}"#,
    r#"{"apiVersion":"networking.istio.io/v1","kind":"Sidecar","metadata":{"annotations":{"lazyxds.io/deps":"{\"example.default.svc.cluster.local\":1800000000}","lazyxds.io/outbound-policy":"ALLOW_ANY","lazyxds.io/workload":"Deployment/example"},"labels":{"app.kubernetes.io/managed-by":"lazyxds"},"name":"lazyxds-deployment-example","namespace":"default"},"spec":{"egress":[{"hosts":["istio-system/*","lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local","lazyxds-system/lazyxds-http-ports.lazyxds-system.svc.cluster.local","default/example.default.svc.cluster.local"]}],"outboundTrafficPolicy":{"mode":"ALLOW_ANY"},"workloadSelector":{"labels":{"app":"example","version":"v1"}}}}"#,
);

/// A rendered object kept as its compact JSON text in an LZ4 block (with [`DICTIONARY`]),
/// with the key it is applied under. There is one VirtualService per mesh host, and a
/// Sidecar and a catch-all EnvoyFilter per scoped workload ([`crate::Desired`]), held for
/// the whole of a pass (its writes are rate-limited): as `Value`s or typed objects (a map
/// allocation per key) they cost ~5 to 10 times their text, and the text is several times
/// its block. Bench P7: the pass's objects are most of what a pass adds to the
/// controller's peak.
#[derive(Clone, PartialEq)]
pub struct JsonText {
    namespace: Box<str>,
    name: Box<str>,
    /// `Value::to_string` (keys sorted: equal objects give equal text): its length (u32,
    /// little-endian), then its LZ4 block (deterministic: equal text gives equal bytes).
    packed: Box<[u8]>,
}

impl JsonText {
    pub fn new(object: &Value) -> Self {
        let field = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into()
        };
        let text = object.to_string();
        // An object over 4 GiB (never: the API server takes 1.5 MiB) would keep `null`,
        // which the writer skips.
        let (len, text) = match u32::try_from(text.len()) {
            Ok(len) => (len, text),
            Err(_) => (4, "null".to_string()),
        };
        let block = lz4_flex::block::compress_with_dict(text.as_bytes(), DICTIONARY.as_bytes());
        let mut packed = Vec::with_capacity(block.len().saturating_add(4));
        packed.extend_from_slice(&len.to_le_bytes());
        packed.extend_from_slice(&block);
        JsonText {
            namespace: field("/metadata/namespace"),
            name: field("/metadata/name"),
            packed: packed.into_boxed_slice(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The compact JSON text. `null` if the block would not unpack, which it always does
    /// (we packed it): a `null` body is one the writer skips.
    pub fn text(&self) -> String {
        let unpacked = self
            .packed
            .split_first_chunk::<4>()
            .and_then(|(len, block)| {
                let len = u32::from_le_bytes(*len) as usize;
                lz4_flex::block::decompress_with_dict(block, len, DICTIONARY.as_bytes()).ok()
            });
        unpacked
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_else(|| "null".to_string())
    }

    /// The object, parsed again (`Null` if the text were not JSON, which it always is).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.text()).unwrap_or(Value::Null)
    }

    /// The object parsed again as `T` (a typed Istio object, for its YAML).
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.text())
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonText")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("text", &self.text())
            .finish()
    }
}

impl PartialEq<Value> for JsonText {
    fn eq(&self, other: &Value) -> bool {
        self.value() == *other
    }
}

/// Every object the gateway needs, as Kubernetes manifests.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayObjects {
    pub gateway: Value,
    pub destination_rule: Value,
    pub placeholder_service: Value,
    /// Sorted by name; [`UNKNOWN_MESH_HOSTS`] first.
    pub virtual_services: Vec<JsonText>,
    pub envoy_filter: Value,
}

impl GatewayObjects {
    /// One multi-document YAML stream, every object in apply order (the VirtualServices
    /// parsed one at a time).
    pub fn to_yaml(&self) -> Result<String, Error> {
        let mut out = String::new();
        let fixed = [
            &self.placeholder_service,
            &self.destination_rule,
            &self.gateway,
            &self.envoy_filter,
        ];
        let routes = self.virtual_services.iter().map(JsonText::value);
        for object in fixed.into_iter().cloned().chain(routes) {
            let doc = serde_norway::to_string(&object).map_err(|e| Error::Serialize {
                what: format!(
                    "{} {}",
                    object
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    object
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                message: e.to_string(),
            })?;
            out.push_str("---\n");
            out.push_str(&doc);
        }
        Ok(out)
    }

    /// The VirtualService routing `host`, if any (parsed).
    pub fn virtual_service_for(&self, host: &str) -> Option<Value> {
        self.virtual_services
            .iter()
            .map(JsonText::value)
            .find(|vs| {
                vs.pointer("/spec/hosts")
                    .and_then(Value::as_array)
                    .is_some_and(|h| h.iter().any(|h| h == host))
            })
    }
}

/// The Gateway object's name: the gateway Service's (first label of its host).
pub fn gateway_name(config: &RenderConfig) -> &str {
    config
        .gateway_host
        .split('.')
        .next()
        .unwrap_or(&config.gateway_host)
}

/// A host the gateway routes, with the HTTP ports it has.
#[derive(Debug, Default)]
struct Routable {
    ports: BTreeSet<u16>,
}

/// Renders every gateway object for the mesh in `index`.
pub fn gateway_objects(index: &Index, config: &RenderConfig) -> GatewayObjects {
    let domain = index.config().cluster_domain.clone();
    let (routable, http_ports) = routable_hosts(index, &domain, &config.gateway_namespace);
    let mut virtual_services = vec![JsonText::new(&unknown_mesh_hosts(config, &domain))];
    for_each_host_route(index, config, &domain, &routable, |vs| {
        virtual_services.push(JsonText::new(&vs))
    });
    GatewayObjects {
        gateway: value(&gateway(config)),
        destination_rule: value(&destination_rule(config)),
        placeholder_service: placeholder_service(config, &http_ports),
        virtual_services,
        envoy_filter: value(&envoy_filter(config)),
    }
}

/// The per-host VirtualServices, sorted by name.
fn for_each_host_route(
    index: &Index,
    config: &RenderConfig,
    domain: &str,
    routable: &BTreeMap<String, Routable>,
    mut visit: impl FnMut(Value),
) {
    let user_vs = user_virtual_services(index, domain);
    let hosts: BTreeSet<&String> = routable.keys().chain(user_vs.keys()).collect();
    let mut named: Vec<(String, &String)> = hosts
        .into_iter()
        .map(|h| {
            let name = host::object_name(ROUTE_PREFIX, &h.replace('*', "wildcard"));
            (name, h)
        })
        .collect();
    named.sort();
    for (name, host) in named {
        let ports: Vec<Option<u16>> = match routable.get(host) {
            Some(r) if !host.starts_with('*') && !r.ports.is_empty() => {
                r.ports.iter().copied().map(Some).collect()
            }
            _ => vec![None],
        };
        let http = match user_vs.get(host) {
            Some(vs) => reproduce(vs, host, &ports, routable, domain),
            None => ports
                .iter()
                .flatten()
                .map(|&port| default_route(host, port))
                .collect(),
        };
        if http.is_empty() {
            continue;
        }
        visit(virtual_service(config, &name, host, http));
    }
}

fn metadata(config: &RenderConfig, name: &str) -> Metadata {
    Metadata::ours(name, config.gateway_namespace.as_str())
}

/// `object` as the value [`GatewayObjects`] keeps. The derived serializers of the Istio
/// types fail only on maps with non-string keys, which they have none of (a `Null` here
/// would fail every test of this module).
fn value<S: serde::Serialize>(object: &IstioObject<S>) -> Value {
    object.to_json().unwrap_or_default()
}

fn istio_object<S>(
    config: &RenderConfig,
    api: &str,
    kind: &str,
    name: &str,
    spec: S,
) -> IstioObject<S> {
    IstioObject {
        api_version: api.to_string(),
        kind: kind.to_string(),
        metadata: metadata(config, name),
        spec,
    }
}

fn istio_mutual() -> Option<ServerTls> {
    Some(ServerTls {
        mode: "ISTIO_MUTUAL".into(),
    })
}

fn gateway(config: &RenderConfig) -> Gateway {
    let spec = GatewaySpec {
        selector: config.gateway_selector.to_map(),
        servers: vec![Server {
            port: ServerPort {
                number: u32::from(config.egress_proxy_port),
                name: "https-lazyxds".into(),
                protocol: "HTTPS".into(),
            },
            // Our VirtualServices only (they live in the gateway namespace); no SNI
            // match, so every sidecar's `outbound_.<port>_._.<gateway>` SNI is fine.
            hosts: vec!["./*".into()],
            tls: istio_mutual(),
        }],
    };
    istio_object(
        config,
        NETWORKING_API,
        "Gateway",
        gateway_name(config),
        spec,
    )
}

fn destination_rule(config: &RenderConfig) -> DestinationRule {
    let spec = DestinationRuleSpec {
        host: config.gateway_host.clone(),
        export_to: vec!["*".into()],
        traffic_policy: Some(TrafficPolicy {
            tls: None,
            port_level_settings: vec![PortTrafficPolicy {
                port: PortSelector {
                    number: u32::from(config.egress_proxy_port),
                },
                tls: istio_mutual(),
            }],
        }),
    };
    let name = gateway_name(config);
    istio_object(config, NETWORKING_API, "DestinationRule", name, spec)
}

fn placeholder_service(config: &RenderConfig, ports: &BTreeSet<u16>) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(
            |p| json!({"name": format!("http-{p}"), "port": p, "protocol": "TCP", "targetPort": p}),
        )
        .collect();
    // Every lazy Sidecar imports it: exported everywhere, whatever the mesh's
    // `defaultServiceExportTo` says.
    let metadata = Metadata {
        annotations: BTreeMap::from([(ANNOTATION_EXPORT_TO.to_string(), "*".to_string())]),
        ..metadata(config, PLACEHOLDER_SERVICE)
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        // No selector, so no endpoints: it only gives sidecars an HTTP route table per
        // port, whose catch-all sends unknown hosts to the gateway.
        "spec": {"ports": ports},
    })
}

fn envoy_filter(config: &RenderConfig) -> EnvoyFilter {
    let dns_cache = json!({"name": "lazyxds_external", "dns_lookup_family": "V4_PREFERRED"});
    let port = u32::from(config.egress_proxy_port);
    let cluster = json!({
        "name": EXTERNAL_ROUTE,
        "connect_timeout": "5s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                "dns_cache_config": dns_cache,
            },
        },
    });
    let http_filter = json!({
        "name": "envoy.filters.http.dynamic_forward_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
            "dns_cache_config": dns_cache,
        },
    });
    let route_table = PatchMatch {
        route_configuration: Some(RouteConfigurationMatch {
            port_number: Some(port),
            vhost: None,
        }),
        ..PatchMatch::gateway()
    };
    let spec = EnvoyFilterSpec {
        workload_selector: Some(WorkloadSelector {
            labels: config.gateway_selector.clone(),
        }),
        priority: Some(CATCH_ALL_PRIORITY),
        config_patches: vec![
            ConfigPatch::new("CLUSTER", PatchMatch::gateway(), "ADD", cluster),
            ConfigPatch::new(
                "HTTP_FILTER",
                PatchMatch::gateway_router(port),
                "INSERT_BEFORE",
                http_filter,
            ),
            ConfigPatch::new("VIRTUAL_HOST", route_table, "ADD", external_virtual_host()),
        ],
    };
    istio_object(
        config,
        ENVOY_FILTER_API,
        "EnvoyFilter",
        EXTERNAL_ROUTE,
        spec,
    )
}

/// The catch-all virtual host (Envoy config): every host no VirtualService has goes out
/// through the dynamic forward proxy, unless the filter refuses it first.
pub fn external_virtual_host() -> Value {
    json!({
        "name": EXTERNAL_ROUTE,
        "domains": ["*"],
        "routes": [{
            "name": EXTERNAL_ROUTE,
            "match": {"prefix": "/"},
            "route": {"cluster": EXTERNAL_ROUTE},
        }],
    })
}

fn virtual_service(config: &RenderConfig, name: &str, host: &str, http: Vec<Value>) -> Value {
    let spec = VirtualServiceSpec {
        hosts: vec![host.to_string()],
        gateways: vec![format!(
            "{}/{}",
            config.gateway_namespace,
            gateway_name(config)
        )],
        // Gateway routes only: no sidecar needs to import them.
        export_to: vec![".".into()],
        http,
    };
    value(&istio_object(
        config,
        NETWORKING_API,
        "VirtualService",
        name,
        spec,
    ))
}

fn unknown_mesh_hosts(config: &RenderConfig, domain: &str) -> Value {
    virtual_service(
        config,
        UNKNOWN_MESH_HOSTS,
        &format!("*.svc.{domain}"),
        vec![json!({
            "name": "unknown-mesh-host",
            "directResponse": {"status": 404, "body": {"string": UNKNOWN_MESH_HOST_BODY}},
        })],
    )
}

/// Every Service and ServiceEntry host with HTTP ports, and every HTTP port of the mesh,
/// HTTP by the one rule ([`Protocol::may_be_lazy`]: unnamed and unknown ports are not).
/// Ports some other service uses for anything else are left out: a placeholder
/// `http-<port>` would turn that port's listener into HTTP in every lazy Sidecar, and a
/// server-first or TLS client on it would hang or fail. A host whose exportTo leaves out
/// the gateway's namespace gets no route: istiod gives the gateway no cluster for it (and
/// `istioctl analyze` reports a route to it, IST0101); it stays visible where it is seen
/// instead (`desired::always_visible`).
fn routable_hosts(
    index: &Index,
    domain: &str,
    gateway_namespace: &str,
) -> (BTreeMap<String, Routable>, BTreeSet<u16>) {
    let mut routable: BTreeMap<String, Routable> = BTreeMap::new();
    let mut http_ports = BTreeSet::new();
    let mut opaque_ports = BTreeSet::new();
    let mut note = |port: u16, protocol: Protocol| {
        if protocol.may_be_lazy() {
            http_ports.insert(port);
            true
        } else {
            opaque_ports.insert(port);
            false
        }
    };
    for ns in index.namespace_names() {
        let Some(state) = index.ns(ns) else { continue };
        // Our own placeholder Service (once applied, the watch shows it): neither a route
        // target nor a source of ports, or its ports would never go away.
        for svc in state
            .services
            .values()
            .filter(|s| &*s.name != PLACEHOLDER_SERVICE)
        {
            let host = svc.host(domain);
            let seen = host::exported_to(
                index.service_export_to(&svc.export_to),
                ns,
                gateway_namespace,
            );
            for port in &svc.ports {
                if note(port.port, Protocol::of_service_port(port)) && seen {
                    routable
                        .entry(host.clone())
                        .or_default()
                        .ports
                        .insert(port.port);
                }
            }
        }
        for se in state.service_entries.values() {
            let seen = host::exported_to(
                index.service_export_to(&se.export_to),
                ns,
                gateway_namespace,
            );
            for port in &se.ports {
                if !note(port.number, port.istio_protocol()) || !seen {
                    continue;
                }
                for h in &se.hosts {
                    // A wildcard ServiceEntry has no single destination to route to.
                    let h = host::resolve_config_host(h, ns, domain);
                    if !h.contains('*') {
                        routable.entry(h).or_default().ports.insert(port.number);
                    }
                }
            }
        }
    }
    let ports = http_ports.difference(&opaque_ports).copied().collect();
    (routable, ports)
}

/// The VirtualService a caller's sidecar uses for each (resolved) host, where that does not
/// depend on the caller's namespace: the oldest public one (by creation time, then name,
/// then namespace: `configCompareByCreationTime`). A sidecar takes its namespace's private
/// VirtualServices and those exported to it first, then public ones, each oldest first
/// (`push_context.go` `VirtualServicesForGateway`, `virtualservice.go`
/// `SelectVirtualServices`; later ones for a host it already has are dropped,
/// `httproute.go` "duplicate domain"). A host some namespaces route by a VirtualService only
/// they see stays visible to them instead (`desired::always_visible`); `~` hides one from
/// everybody.
fn user_virtual_services<'a>(index: &'a Index, domain: &str) -> BTreeMap<String, UserVs<'a>> {
    let mut out: BTreeMap<String, UserVs<'a>> = BTreeMap::new();
    for ns in index.namespace_names() {
        let Some(state) = index.ns(ns) else { continue };
        for vs in state
            .virtual_services
            .values()
            .filter(|v| v.applies_to_mesh() && v.visibility() == Visibility::Public)
        {
            for h in &vs.hosts {
                let h = host::resolve_config_host(h, ns, domain);
                if h == "*" {
                    continue;
                }
                let entry = out.entry(h).or_insert(UserVs { vs, ns });
                if vs.precedence_key() < entry.vs.precedence_key() {
                    *entry = UserVs { vs, ns };
                }
            }
        }
    }
    out
}

struct UserVs<'a> {
    vs: &'a VirtualService,
    ns: &'a str,
}

/// The route of a host's port when no user VirtualService covers it.
fn default_route(host: &str, port: u16) -> Value {
    json!({
        "name": format!("{host}:{port}"),
        "match": authority_matches(host, Some(port), &Map::new()),
        "route": [{"destination": {"host": host, "port": {"number": port}}}],
    })
}

/// `base` plus an authority match for `host:port` (and the bare host for port 80); `base`
/// alone when the port is unknown.
fn authority_matches(host: &str, port: Option<u16>, base: &Map<String, Value>) -> Vec<Value> {
    let Some(port) = port else {
        return if base.is_empty() {
            Vec::new()
        } else {
            vec![Value::Object(base.clone())]
        };
    };
    let mut authorities = vec![format!("{host}:{port}")];
    if port == 80 {
        authorities.insert(0, host.to_string());
    }
    authorities
        .into_iter()
        .map(|a| {
            let mut m = base.clone();
            m.insert("authority".into(), json!({"exact": a}));
            Value::Object(m)
        })
        .collect()
}

/// The user's HTTP routes for `host`, once per port, as the gateway must have them.
fn reproduce(
    user: &UserVs<'_>,
    host: &str,
    ports: &[Option<u16>],
    routable: &BTreeMap<String, Routable>,
    domain: &str,
) -> Vec<Value> {
    // The `destinations` shorthand of a topology file: everything to the first one.
    let shorthand;
    let routes: &[Value] = if user.vs.http.is_empty() {
        let Some(dest) = user.vs.destinations.first() else {
            return Vec::new();
        };
        shorthand = [json!({"route": [{"destination": {"host": dest}}]})];
        &shorthand
    } else {
        &user.vs.http
    };
    let mut out = Vec::new();
    for &port in ports {
        for (i, route) in routes.iter().enumerate() {
            let Some(route) = route.as_object() else {
                continue;
            };
            // A delegate's routes live in another VirtualService: not reproduced.
            if route.contains_key("delegate") {
                continue;
            }
            let mut route = route.clone();
            let matches = match route.remove("match") {
                Some(Value::Array(ms)) if !ms.is_empty() => {
                    let kept: Vec<Value> = ms
                        .iter()
                        .filter_map(|m| gateway_match(m, host, port))
                        .flatten()
                        .collect();
                    // None of its conditions can hold at the gateway.
                    if kept.is_empty() {
                        continue;
                    }
                    kept
                }
                _ => authority_matches(host, port, &Map::new()),
            };
            if !matches.is_empty() {
                route.insert("match".into(), Value::Array(matches));
            }
            let name = route
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("route-{i}"), str::to_string);
            let name = match port {
                Some(p) => format!("{name}:{p}"),
                None => name,
            };
            route.insert("name".into(), Value::String(name));
            let resolve = |d: &mut Value| resolve_destination(d, user.ns, port, routable, domain);
            if let Some(Value::Array(dests)) = route.get_mut("route") {
                for d in dests.iter_mut() {
                    if let Some(d) = d.get_mut("destination") {
                        resolve(d);
                    }
                }
            }
            if let Some(m) = route.get_mut("mirror") {
                resolve(m);
            }
            if let Some(Value::Array(mirrors)) = route.get_mut("mirrors") {
                for m in mirrors.iter_mut() {
                    if let Some(d) = m.get_mut("destination") {
                        resolve(d);
                    }
                }
            }
            out.push(Value::Object(route));
        }
    }
    out
}

/// One user match condition at the gateway: `None` when it can never hold there (source
/// labels/namespace are the gateway's own there; another gateway; another port), else
/// the condition with the port's authority instead of `port`.
fn gateway_match(m: &Value, host: &str, port: Option<u16>) -> Option<Vec<Value>> {
    let mut m = m.as_object()?.clone();
    if m.contains_key("sourceLabels") || m.contains_key("sourceNamespace") {
        return None;
    }
    if let Some(gateways) = m.remove("gateways") {
        let mesh = gateways
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "mesh"));
        if !mesh {
            return None;
        }
    }
    if let Some(p) = m.remove("port") {
        if port.is_some_and(|port| p.as_u64() != Some(u64::from(port))) {
            return None;
        }
    }
    if m.contains_key("authority") {
        return Some(vec![Value::Object(m)]);
    }
    let matches = authority_matches(host, port, &m);
    Some(if matches.is_empty() {
        vec![Value::Object(m)]
    } else {
        matches
    })
}

/// A user destination as the gateway needs it: an FQDN (short names are relative to the
/// user's VirtualService namespace) and an explicit port (at the gateway the listener port
/// is the gateway's, so Istio could not infer the one the caller used).
fn resolve_destination(
    d: &mut Value,
    vs_ns: &str,
    port: Option<u16>,
    routable: &BTreeMap<String, Routable>,
    domain: &str,
) {
    let Some(d) = d.as_object_mut() else { return };
    let Some(h) = d.get("host").and_then(Value::as_str) else {
        return;
    };
    let fqdn = host::resolve_config_host(h, vs_ns, domain);
    if !d.contains_key("port") {
        let only = routable
            .get(&fqdn)
            .filter(|r| r.ports.len() == 1)
            .and_then(|r| r.ports.first().copied());
        if let Some(p) = only.or(port) {
            d.insert("port".into(), json!({"number": p}));
        }
    }
    d.insert("host".into(), Value::String(fqdn));
}

/// The table the controller pushes to every gateway worker: each namespace with its
/// outbound policy, and every running pod's IP with its namespace (sorted, as the filter
/// binary-searches it).
pub fn namespace_table(index: &Index, config: &RenderConfig) -> NamespaceTable {
    let wire = |p: OutboundPolicy| match p {
        OutboundPolicy::AllowAny => WirePolicy::AllowAny as i32,
        OutboundPolicy::RegistryOnly => WirePolicy::RegistryOnly as i32,
    };
    let names = index.namespace_names();
    let position: BTreeMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (&***n, i as u32))
        .collect();
    let mut table = NamespaceTable {
        namespaces: names.iter().map(|n| n.to_string()).collect(),
        policies: names
            .iter()
            .map(|n| wire(outbound_policy(index, n, config)))
            .collect(),
        mesh_policy: wire(mesh_policy(index, config)),
        ..NamespaceTable::default()
    };
    // `ip_table` is sorted: IPv4 first, each family in address order.
    for (ip, ns) in index.ip_table() {
        let Some(&i) = position.get(&*ns) else {
            continue;
        };
        match ip {
            IpAddr::V4(v4) => table
                .ipv4
                .push(u64::from(u32::from(v4)) << 32 | u64::from(i)),
            IpAddr::V6(v6) => {
                let v6 = u128::from(v6);
                table
                    .ipv6
                    .extend([(v6 >> 64) as u64, v6 as u64, u64::from(i)]);
            }
        }
    }
    table
}

#[cfg(test)]
mod tests;
