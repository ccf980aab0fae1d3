//! Istio's objects, typed, in one place: the `Sidecar` the controller writes
//! ([`desired()`](crate::desired())), the gateway's routing objects (Gateway, DestinationRule,
//! VirtualService, EnvoyFilter: [`gateway`](crate::gateway)), and the filter objects
//! `lazyxds install` renders (EnvoyFilter, WasmPlugin, the gateway's AuthorizationPolicy).
//!
//! Only the fields lazyxds uses are typed. The object and the specs of the install's kinds
//! refuse unknown fields, so a manifest that round-trips through these types (YAML →
//! struct → value, compared, `controller/tests/install.rs`) has lost nothing and has no
//! field this code does not know (a field [`Metadata`] lacks is dropped, and the
//! comparison fails); the Sidecar's spec keeps what it copies from a namespace default as
//! values.
//! Envoy configuration inside patches and the routes of a VirtualService stay JSON values
//! (Envoy and Istio check them, see `tests/tests/validate.rs`).
//!
//! The Sidecar is serialized as typed (fields in declaration order); the gateway's and the
//! install's objects go through `serde_json::Value` (keys sorted), so the order of fields
//! here does not change their text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::objects::{Labels, LABEL_MANAGED_BY, MANAGED_BY_US};

pub const NETWORKING_API: &str = "networking.istio.io/v1";
pub const ENVOY_FILTER_API: &str = "networking.istio.io/v1alpha3";
pub const WASM_PLUGIN_API: &str = "extensions.istio.io/v1alpha1";
pub const SECURITY_API: &str = "security.istio.io/v1";
pub const SIDECAR: &str = "Sidecar";
pub const ENVOY_FILTER: &str = "EnvoyFilter";
/// `istioctl analyze` warns about every EnvoyFilter (IST0133, "exposes internal
/// implementation details"); ours patch what no stable API offers and are checked by the
/// real istiod and Envoy in the tests, so each carries this annotation.
pub const ENVOY_FILTER_ANALYZE_SUPPRESS: (&str, &str) = (ANALYZE_SUPPRESS, "IST0133");
/// The annotation naming the `istioctl analyze` messages an object suppresses
/// (comma-separated codes).
pub const ANALYZE_SUPPRESS: &str = "galley.istio.io/analyze-suppress";
/// `istioctl analyze`'s IST0101 on a Sidecar whose workloadSelector selects no pod: what
/// the Sidecar of a workload at zero replicas is, kept for the deps it remembers.
pub const ANALYZE_SELECTS_NOTHING: &str = "IST0101";
/// `istioctl analyze`'s IST0151: an EnvoyFilter with no priority and a relative patch
/// operation (REMOVE counts), which a catch-all filter has while it holds routes back.
pub const ANALYZE_RELATIVE_PATCH: &str = "IST0151";

/// An Istio custom resource: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioObject<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

pub type Sidecar = IstioObject<SidecarSpec>;
pub type EnvoyFilter = IstioObject<EnvoyFilterSpec>;
pub type WasmPlugin = IstioObject<WasmPluginSpec>;
pub type Gateway = IstioObject<GatewaySpec>;
pub type DestinationRule = IstioObject<DestinationRuleSpec>;
pub type VirtualService = IstioObject<VirtualServiceSpec>;
pub type AuthorizationPolicy = IstioObject<AuthorizationPolicySpec>;

impl<S: Serialize> IstioObject<S> {
    /// The YAML `kubectl apply` and `istioctl analyze` take (fields in declaration order).
    pub fn to_yaml(&self) -> Result<String, Error> {
        serde_norway::to_string(self).map_err(|e| self.serialize_error(e))
    }

    /// The JSON body of a server-side apply.
    pub fn to_json(&self) -> Result<Value, Error> {
        serde_json::to_value(self).map_err(|e| self.serialize_error(e))
    }

    fn serialize_error(&self, e: impl std::fmt::Display) -> Error {
        Error::Serialize {
            what: format!(
                "{} {}/{}",
                self.kind, self.metadata.namespace, self.metadata.name
            ),
            message: e.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// `name` in `namespace`, labelled as ours (`app.kubernetes.io/managed-by: lazyxds`).
    pub fn ours(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Metadata {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGED_BY_US.to_string())]),
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Fields we copy from a namespace default without interpreting them (`ingress`,
    /// `inboundConnectionPool`, ...), keyed by their Istio (camelCase) name.
    #[serde(flatten)]
    pub copied: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressListener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// `workloadSelector` of a Sidecar or an EnvoyFilter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressListener {
    pub hosts: Vec<String>,
}

/// A Sidecar's `outboundTrafficPolicy`. lazyxds never sets `egressProxy`: istiod sends
/// every unknown destination there, TCP and TLS included (`listener_builder.go`,
/// `buildOutboundCatchAllNetworkFiltersOnly`), which an HTTP gateway cannot carry; only
/// unknown HTTP goes to the gateway ([`crate::desired::catch_all_filter`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundPolicy,
}

/// `outboundTrafficPolicy.mode` (a Sidecar never has `ALLOW_ANY_DYNAMIC_DNS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundPolicy {
    #[default]
    AllowAny,
    RegistryOnly,
}

impl OutboundPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundPolicy::AllowAny => "ALLOW_ANY",
            OutboundPolicy::RegistryOnly => "REGISTRY_ONLY",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ALLOW_ANY" => Some(OutboundPolicy::AllowAny),
            "REGISTRY_ONLY" => Some(OutboundPolicy::RegistryOnly),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

/// `EnvoyFilter.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilterSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Lower first; patches of one priority in creation order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    pub config_patches: Vec<ConfigPatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigPatch {
    /// `HTTP_FILTER`, `CLUSTER`, `VIRTUAL_HOST`, …
    pub apply_to: String,
    #[serde(rename = "match")]
    pub match_: PatchMatch,
    pub patch: Patch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchMatch {
    /// `GATEWAY`, `SIDECAR_INBOUND`, `SIDECAR_OUTBOUND`, `ANY`.
    pub context: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_configuration: Option<RouteConfigurationMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Value>,
}

impl ConfigPatch {
    /// `operation` (`ADD`, `INSERT_BEFORE`, …) of Envoy configuration `value` on what
    /// `match_` selects of kind `apply_to` (`CLUSTER`, `HTTP_FILTER`, …).
    pub fn new(apply_to: &str, match_: PatchMatch, operation: &str, value: Value) -> Self {
        ConfigPatch {
            apply_to: apply_to.into(),
            match_,
            patch: Patch {
                operation: operation.into(),
                value: Some(value),
            },
        }
    }
}

impl ConfigPatch {
    /// Removes what `match_` selects of kind `apply_to`.
    pub fn remove(apply_to: &str, match_: PatchMatch) -> Self {
        ConfigPatch {
            apply_to: apply_to.into(),
            match_,
            patch: Patch {
                operation: "REMOVE".into(),
                value: None,
            },
        }
    }
}

impl PatchMatch {
    /// The sidecar's outbound virtual host named `vhost` (`host:port`), in any route
    /// configuration. By name: `vhost.domainName` is unknown to Istio 1.24's CRD.
    pub fn sidecar_virtual_host(vhost: &str) -> Self {
        PatchMatch {
            context: "SIDECAR_OUTBOUND".into(),
            listener: None,
            route_configuration: Some(RouteConfigurationMatch {
                port_number: None,
                vhost: Some(serde_json::json!({"name": vhost})),
            }),
            cluster: None,
        }
    }

    /// Anything of the gateway's (`context: GATEWAY`).
    pub fn gateway() -> Self {
        PatchMatch {
            context: "GATEWAY".into(),
            listener: None,
            route_configuration: None,
            cluster: None,
        }
    }

    /// The one route of a sidecar's outbound catch-all virtual host `vhost` (`allow_any`
    /// or `block_all`, route named as its virtual host), in every outbound HTTP route table.
    pub fn sidecar_catch_all_route(vhost: &str) -> Self {
        PatchMatch {
            context: "SIDECAR_OUTBOUND".into(),
            listener: None,
            route_configuration: Some(RouteConfigurationMatch {
                port_number: None,
                vhost: Some(serde_json::json!({"name": vhost, "route": {"name": vhost}})),
            }),
            cluster: None,
        }
    }

    /// The router of the gateway's HTTP connection manager on `port` (what an HTTP filter
    /// inserted before it runs in front of).
    pub fn gateway_router(port: u32) -> Self {
        PatchMatch {
            listener: Some(ListenerMatch {
                port_number: Some(port),
                filter_chain: Some(FilterChainMatch {
                    filter: Some(FilterMatch {
                        name: "envoy.filters.network.http_connection_manager".into(),
                        sub_filter: Some(SubFilterMatch {
                            name: "envoy.filters.http.router".into(),
                        }),
                    }),
                }),
            }),
            ..PatchMatch::gateway()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_chain: Option<FilterChainMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_filter: Option<SubFilterMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubFilterMatch {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// `INSERT_BEFORE`, `ADD`, `MERGE`, …
    pub operation: String,
    /// Envoy configuration (checked by Envoy, not here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// `WasmPlugin.spec` (extensions.istio.io/v1alpha1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPluginSpec {
    pub selector: MatchLabels,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    pub plugin_name: String,
    pub plugin_config: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    pub fail_strategy: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(rename = "match")]
    pub match_: Vec<TrafficSelector>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabels {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSelector {
    /// `CLIENT` for gateways.
    pub mode: String,
    pub ports: Vec<PortSelector>,
}

/// `Gateway.spec` (networking.istio.io).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub port: ServerPort,
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPort {
    pub number: u32,
    pub name: String,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub mode: String,
}

/// `DestinationRule.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortTrafficPolicy {
    pub port: PortSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
}

/// `VirtualService.spec` (routes stay values: they are Istio's, reproduced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<Value>,
}

/// `AuthorizationPolicy.spec` (security.istio.io/v1): the fields the install's gateway
/// policy uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub selector: MatchLabels,
    /// `ALLOW`, `DENY`, …
    pub action: String,
    pub rules: Vec<AuthorizationRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    pub source: RuleSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSource {
    /// Peer identities (`<trust domain>/ns/<ns>/sa/<sa>`); `*`: any authenticated one.
    pub principals: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    pub operation: RuleOperation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleOperation {
    /// Destination ports, as strings.
    pub ports: Vec<String>,
}
