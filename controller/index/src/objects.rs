//! Compact projections of the Kubernetes and Istio objects the index watches.
//!
//! They are what the kube watchers produce and what a topology file describes: only the
//! fields lazyxds reads, with `lazyxds.io/*` annotations already parsed (an invalid value
//! is an error at projection time, naming the object, never a surprise later).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::host;

pub use crate::labels::Labels;

/// `"true" | "false"` on a Namespace or a workload (object or pod template).
pub const ANNOTATION_ENABLED: &str = "lazyxds.io/enabled";
/// `ns/host,ns/host`: hosts always in the workload's Sidecar.
pub const ANNOTATION_PIN: &str = "lazyxds.io/pin";
/// On our Sidecars: learned deps as a JSON object host → last seen (unix seconds).
pub const ANNOTATION_DEPS: &str = "lazyxds.io/deps";
/// On our Sidecars: `Kind/name` of the workload it scopes.
pub const ANNOTATION_WORKLOAD: &str = "lazyxds.io/workload";
/// On our Sidecars: the workload's effective outbound policy before scoping.
pub const ANNOTATION_OUTBOUND_POLICY: &str = "lazyxds.io/outbound-policy";
/// Istio's Service annotation restricting visibility.
pub const ANNOTATION_EXPORT_TO: &str = "networking.istio.io/exportTo";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_US: &str = "lazyxds";
/// What part of lazyxds an object is; on the per-workload catch-all EnvoyFilters it tells
/// them from the install's own (both are ours).
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const COMPONENT_CATCH_ALL: &str = "catch-all";

/// Whether `labels` mark one of our per-workload catch-all EnvoyFilters.
pub fn is_our_catch_all(labels: &(impl LabelLookup + ?Sized)) -> bool {
    is_ours(labels) && labels.label(LABEL_COMPONENT) == Some(COMPONENT_CATCH_ALL)
}

/// The kill switch: ConfigMap `lazyxds` in the controller's namespace; `enabled:
/// "false"` makes the writer delete every Sidecar we own.
pub const KILL_SWITCH_CONFIGMAP: &str = "lazyxds";
/// Istio's mesh config: ConfigMap `istio` in `istio-system`, key `mesh`.
pub const MESH_CONFIG_NAMESPACE: &str = "istio-system";
pub const MESH_CONFIGMAP: &str = "istio";
/// The Lease replicas elect a leader on, in the controller's namespace.
pub const LEADER_LEASE: &str = "lazyxds-leader";
/// The label the leader puts on its pod; the gRPC Service selects it.
pub const LEADER_LABEL: &str = "lazyxds.io/leader";

/// The string entries of a JSON object such as `metadata.labels`; others are skipped.
pub fn string_map(value: &serde_json::Value) -> BTreeMap<String, String> {
    value.as_object().map_or_else(BTreeMap::new, |m| {
        m.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    })
}

/// Whether an object with these labels is ours to change or delete: it carries
/// `app.kubernetes.io/managed-by: lazyxds`. The one ownership test (Sidecar files,
/// watched Sidecars, the index).
pub fn is_ours(labels: &(impl LabelLookup + ?Sized)) -> bool {
    labels.label(LABEL_MANAGED_BY) == Some(MANAGED_BY_US)
}

/// A label's value by key: an object's labels as read ([`BTreeMap`]) or as kept
/// ([`Labels`]).
pub trait LabelLookup {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

/// The kinds a dependency is attributed to: the top of a pod's owner chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    /// A Job without a CronJob owner.
    Job,
    /// A ReplicaSet without a Deployment owner.
    ReplicaSet,
    /// A pod without a controller we understand.
    Pod,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 7] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::CronJob,
        WorkloadKind::Job,
        WorkloadKind::ReplicaSet,
        WorkloadKind::Pod,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::Job => "Job",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Pod => "Pod",
        }
    }

    /// Kinds that carry their own pod template (a [`WorkloadObject`]).
    pub fn has_template(self) -> bool {
        matches!(
            self,
            WorkloadKind::Deployment
                | WorkloadKind::StatefulSet
                | WorkloadKind::DaemonSet
                | WorkloadKind::CronJob
        )
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkloadKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a workload kind"))
    }
}

/// A workload: what a Sidecar is rendered for and deps are learned for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkloadId {
    pub namespace: Arc<str>,
    pub kind: WorkloadKind,
    pub name: Arc<str>,
}

impl WorkloadId {
    pub fn new(kind: WorkloadKind, namespace: &str, name: &str) -> Self {
        WorkloadId {
            namespace: namespace.into(),
            kind,
            name: name.into(),
        }
    }

    /// The workload an [`ANNOTATION_WORKLOAD`] value (`Kind/name`) names in `namespace`.
    pub fn from_annotation(namespace: &str, value: &str) -> Result<WorkloadId, String> {
        match value.split_once('/') {
            Some((kind, name)) if !name.is_empty() && !name.contains('/') => kind
                .parse::<WorkloadKind>()
                .map(|kind| WorkloadId::new(kind, namespace, name)),
            _ => Err("is not Kind/name".to_string()),
        }
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One `lazyxds.io/pin` entry: `ns/host`, exactly one `/`, both sides non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pin {
    pub namespace: String,
    pub host: String,
}

impl FromStr for Pin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // istiod silently drops a host without exactly one `/`: refuse it loudly instead.
        match s.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
                Ok(Pin {
                    namespace: ns.to_string(),
                    host: host.to_string(),
                })
            }
            _ => Err(format!("{s:?} is not ns/host")),
        }
    }
}

impl TryFrom<String> for Pin {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Pin> for String {
    fn from(pin: Pin) -> String {
        pin.to_string()
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.host)
    }
}

/// The parsed `lazyxds.io/*` annotations of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Annotations {
    /// `lazyxds.io/enabled`; `None` when absent.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `lazyxds.io/pin`.
    #[serde(default)]
    pub pins: Vec<Pin>,
}

impl Annotations {
    /// Parses the lazyxds annotations out of an object's annotation map; `object` names the
    /// object in errors (`Deployment shop/cart`).
    pub fn parse(object: &str, annotations: &BTreeMap<String, String>) -> Result<Self, Error> {
        let invalid = |annotation, value: &str, reason: &str| Error::Annotation {
            object: object.to_string(),
            annotation,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let enabled = match annotations.get(ANNOTATION_ENABLED).map(|v| v.trim()) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(invalid(
                    ANNOTATION_ENABLED,
                    other,
                    "is not \"true\" or \"false\"",
                ))
            }
        };
        let mut pins = Vec::new();
        if let Some(value) = annotations.get(ANNOTATION_PIN) {
            for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let pin = entry
                    .parse::<Pin>()
                    .map_err(|_| invalid(ANNOTATION_PIN, entry, "is not ns/host"))?;
                pins.push(pin);
            }
        }
        Ok(Annotations { enabled, pins })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub name: Arc<str>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Annotations,
}

/// The controller owner reference of a Pod, ReplicaSet or Job (kind as Kubernetes spells it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRef {
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

impl OwnerRef {
    pub fn new(kind: &str, name: &str) -> Self {
        OwnerRef {
            kind: kind.into(),
            name: name.into(),
        }
    }
}

/// A Pod. A finished pod (Succeeded/Failed) should be projected without IPs: its IP is free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub host_network: bool,
    pub service_account: Arc<str>,
    /// Shared: the index keeps one copy of each distinct label set (the pods of a
    /// workload mostly have the same labels).
    #[serde(default)]
    pub labels: Arc<Labels>,
    #[serde(default)]
    pub owner: Option<OwnerRef>,
    /// The pod's annotations (copied from its template).
    #[serde(default)]
    pub annotations: Annotations,
    /// `status.startTime`: from when the pod holds its IP.
    #[serde(default)]
    pub start_time_unix_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSet {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    #[serde(default)]
    pub owner: Option<OwnerRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    #[serde(default)]
    pub owner: Option<OwnerRef>,
}

/// A Deployment, StatefulSet, DaemonSet or CronJob: an object with a pod template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadObject {
    pub kind: WorkloadKind,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The pod template's labels.
    #[serde(default)]
    pub template_labels: Labels,
    /// Annotations on the object itself.
    #[serde(default)]
    pub annotations: Annotations,
    /// Annotations on its pod template.
    #[serde(default)]
    pub template_annotations: Annotations,
}

impl WorkloadObject {
    pub fn id(&self) -> WorkloadId {
        WorkloadId {
            namespace: self.namespace.clone(),
            kind: self.kind,
            name: self.name.clone(),
        }
    }
}

/// Istio's protocol of a port, from `appProtocol`, the port name prefix or a
/// ServiceEntry's `protocol` (Istio's `protocol.Parse`, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    HttpProxy,
    Https,
    Tls,
    Tcp,
    Udp,
    Mongo,
    Redis,
    Mysql,
    /// Unnamed or unknown: istiod sniffs it (it may or may not be HTTP).
    Unsupported,
}

/// Ports Istio treats as TCP when nothing declares their protocol: SMTP, DNS, MySQL,
/// MongoDB (`pkg/config/kube/conversion.go`, `wellKnownPorts`).
const WELL_KNOWN_TCP_PORTS: [u16; 4] = [25, 53, 3306, 27017];

impl Protocol {
    /// Istio's `protocol.Parse` (`pkg/config/protocol/instance.go`).
    pub fn parse(name: &str) -> Protocol {
        match name.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "http_proxy" => Protocol::HttpProxy,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => Protocol::Unsupported,
        }
    }

    /// Istio's `kube.ConvertProtocol` for a Service port: UDP wins, then `appProtocol`
    /// when set (with Kubernetes' standard names), else the port name; its prefix before
    /// the first `-` (`grpc-web` whole); unknown on a well-known port is TCP.
    pub fn of_service_port(port: &ServicePort) -> Protocol {
        if port.protocol.eq_ignore_ascii_case("UDP") {
            return Protocol::Udp;
        }
        let name = match port.app_protocol.as_deref() {
            Some("kubernetes.io/h2c") => return Protocol::Http2,
            Some("kubernetes.io/ws") => return Protocol::Http,
            Some("kubernetes.io/wss") => return Protocol::Https,
            Some(app) => app,
            None => port.name.as_str(),
        };
        if name
            .as_bytes()
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"grpc-web"))
        {
            return Protocol::GrpcWeb;
        }
        let prefix = name.split('-').next().unwrap_or_default();
        match Protocol::parse(prefix) {
            Protocol::Unsupported if WELL_KNOWN_TCP_PORTS.contains(&port.port) => Protocol::Tcp,
            p => p,
        }
    }

    /// **The rule for what may be lazy**: only a port Istio calls HTTP (its
    /// `Instance.IsHTTP`: HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC-Web). Sidecars give such a
    /// port an HTTP route table whose catch-all reaches the gateway, which routes by
    /// Host. Anything else — TCP, TLS, HTTPS, Mongo, Redis, MySQL, UDP, and unnamed or
    /// unknown ports, which Istio sniffs — hidden behind the gateway would hit its HTTP
    /// connection manager and fail, and never be learned.
    pub fn may_be_lazy(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::HttpProxy
        )
    }

    /// Istio's name for it (`protocol.Instance`).
    pub fn istio_name(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Unsupported => "UnsupportedProtocol",
        }
    }
}

/// A port that may not be lazy: its whole host stays in every scoped Sidecar (Sidecar
/// egress hosts are per host, not per port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLazyPort {
    pub port: u16,
    /// How its protocol is declared: `name "tcp-db"`, `appProtocol "mysql"`,
    /// `protocol "TLS"`, `unnamed`.
    pub declared: String,
    pub protocol: Protocol,
}

impl fmt::Display for NotLazyPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let NotLazyPort { port, declared, .. } = self;
        match self.protocol {
            Protocol::Unsupported => {
                write!(
                    f,
                    "port {port} ({declared}) may not be HTTP: Istio sniffs it"
                )
            }
            p => write!(
                f,
                "port {port} ({declared}) is {}, not HTTP",
                p.istio_name()
            ),
        }
    }
}

/// A Service port as Kubernetes spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    #[serde(default)]
    pub name: String,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

fn tcp() -> String {
    "TCP".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `None`: a selector-less Service (endpoints managed by hand, ExternalName, ...).
    #[serde(default)]
    pub selector: Option<Labels>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `networking.istio.io/exportTo`, split on commas; empty means everywhere.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// `spec.clusterIP: None`: Istio resolves it as `Passthrough` (`kube/conversion.go`),
    /// and its pods are also reached by name (`pod-0.db.ns.svc.<domain>`).
    #[serde(default)]
    pub headless: bool,
}

impl Service {
    pub fn host(&self, cluster_domain: &str) -> String {
        host::service_fqdn(&self.name, &self.namespace, cluster_domain)
    }

    /// Its first port that may not be lazy, if any: then the whole host is always
    /// visible.
    pub fn not_lazy_port(&self) -> Option<NotLazyPort> {
        self.ports.iter().find_map(|p| {
            let protocol = Protocol::of_service_port(p);
            (!protocol.may_be_lazy()).then(|| NotLazyPort {
                port: p.port,
                declared: match &p.app_protocol {
                    Some(app) => format!("appProtocol {app:?}"),
                    None if p.name.is_empty() => "unnamed".to_string(),
                    None => format!("name {:?}", p.name),
                },
                protocol,
            })
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntryPort {
    pub number: u16,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub protocol: String,
}

impl ServiceEntryPort {
    pub fn istio_protocol(&self) -> Protocol {
        Protocol::parse(&self.protocol)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServiceEntryPort>,
    #[serde(default)]
    pub export_to: Vec<String>,
    /// `spec.workloadSelector.labels`: its endpoints are the pods of its namespace with
    /// these labels (mesh workloads); `None`: endpoints listed or resolved by DNS.
    #[serde(default)]
    pub workload_selector: Option<Labels>,
}

impl ServiceEntry {
    /// Its first port that may not be lazy, if any (TCP, TLS, HTTPS, no or an unknown
    /// protocol, ...): then every host of it is always visible.
    pub fn not_lazy_port(&self) -> Option<NotLazyPort> {
        self.ports.iter().find_map(|p| {
            let protocol = p.istio_protocol();
            (!protocol.may_be_lazy()).then(|| NotLazyPort {
                port: p.number,
                declared: if p.protocol.is_empty() {
                    "no protocol".to_string()
                } else {
                    format!("protocol {:?}", p.protocol)
                },
                protocol,
            })
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualService {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// As written: short names are expanded relative to the VS namespace by the index.
    pub hosts: Vec<String>,
    /// Empty means `mesh` only.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Every `route[].destination.host`, as written.
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub export_to: Vec<String>,
    /// `spec.http`, as written: the gateway reproduces these routes for first calls.
    #[serde(default)]
    pub http: Vec<serde_json::Value>,
    /// `metadata.creationTimestamp` (unix seconds): of several VirtualServices for one
    /// host a sidecar takes the oldest it sees; `None` sorts first, as Istio's zero time.
    #[serde(default)]
    pub created_unix_s: Option<u64>,
}

impl VirtualService {
    /// Whether sidecars use it (its hosts are then mesh hosts).
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }

    /// Istio's order of VirtualServices (`configCompareByCreationTime`,
    /// `pilot/pkg/model/config.go`): creation time, then name, then namespace.
    pub fn precedence_key(&self) -> (u64, &str, &str) {
        (
            self.created_unix_s.unwrap_or(0),
            &self.name,
            &self.namespace,
        )
    }

    /// How istiod indexes it for sidecars (`push_context.go`, `initVirtualServices`):
    /// `*` (or no exportTo: the mesh default, `*` unless the mesh config says otherwise)
    /// makes it public, seen alike by every namespace; else, unless `~` hides it, only the
    /// namespaces it names (`.`: its own) see it, and they see it before any public one.
    pub fn visibility(&self) -> Visibility {
        if self.export_to.is_empty() || self.export_to.iter().any(|e| e == "*") {
            Visibility::Public
        } else if self.export_to.iter().any(|e| e == "~") {
            Visibility::Hidden
        } else {
            Visibility::Namespaces
        }
    }
}

/// Which sidecars see a VirtualService, in istiod's index ([`VirtualService::visibility`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Every namespace, after its own private and exported-to-it ones.
    Public,
    /// Only the namespaces its exportTo names, before any public one.
    Namespaces,
    /// None (`~`).
    Hidden,
}

/// A `networking.istio.io` DestinationRule: what decides whether a caller's sidecar uses
/// it for a host ([`crate::destination_rule`]) and how it connects to a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationRule {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `spec.host` as written (a short name is relative to its namespace).
    pub host: String,
    #[serde(default)]
    pub export_to: Vec<String>,
    /// `spec.workloadSelector.matchLabels`; `None`: no selector.
    #[serde(default)]
    pub workload_selector: Option<Labels>,
    /// What of `spec.trafficPolicy` decides how a connection is made.
    #[serde(default)]
    pub traffic_policy: ConnectionPolicy,
}

/// The parts of a DestinationRule's `trafficPolicy` that change what goes on the wire of a
/// cluster's connections (TLS origination, a PROXY protocol header: `cluster_traffic_policy.go`
/// `applyTrafficPolicy`); the rest (pools, load balancing, outlier detection) only changes
/// how connections are managed, and `tunnel` applies to TCP routes, not HTTP ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPolicy {
    /// `trafficPolicy.tls`; `None`: not set.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// `trafficPolicy.proxyProtocol` is set.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// `portLevelSettings[]` by port number: each entry's `tls` (`None`: it sets none).
    #[serde(default)]
    pub port_tls: BTreeMap<u16, Option<UpstreamTls>>,
}

/// A DestinationRule's `tls` (`ClientTLSSettings`), as far as lazyxds judges it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// `mode` as written; empty when unset (Istio's default, `DISABLE`).
    #[serde(default)]
    pub mode: String,
    /// `subjectAltNames`.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

impl DestinationRule {
    /// Projects a DestinationRule from its `spec` as Istio has it (what the API server
    /// stores and a topology file gives). Fields of other types than Istio's are read as
    /// unset; the API server's schema refuses them anyway.
    pub fn from_spec(namespace: &str, name: &str, spec: &serde_json::Value) -> DestinationRule {
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let tls = |v: Option<&serde_json::Value>| {
            v.filter(|t| t.is_object()).map(|t| UpstreamTls {
                mode: t
                    .get("mode")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_string(),
                subject_alt_names: strings(t.get("subjectAltNames")),
            })
        };
        let policy = spec.get("trafficPolicy");
        let set = |field: &str| {
            policy
                .and_then(|p| p.get(field))
                .is_some_and(|v| !v.is_null())
        };
        // The first entry for a port is the one istiod uses (`GetPortLevelTrafficPolicy`).
        let mut port_tls = BTreeMap::new();
        let entries = policy
            .and_then(|p| p.get("portLevelSettings"))
            .and_then(|p| p.as_array());
        for entry in entries.into_iter().flatten() {
            let number = entry.pointer("/port/number").and_then(|n| n.as_u64());
            if let Some(port) = number.and_then(|n| u16::try_from(n).ok()) {
                port_tls
                    .entry(port)
                    .or_insert_with(|| tls(entry.get("tls")));
            }
        }
        DestinationRule {
            namespace: namespace.into(),
            name: name.into(),
            host: spec
                .get("host")
                .and_then(|h| h.as_str())
                .unwrap_or_default()
                .to_string(),
            export_to: strings(spec.get("exportTo")),
            workload_selector: spec
                .pointer("/workloadSelector/matchLabels")
                .map(|v| Labels::from(string_map(v))),
            traffic_policy: ConnectionPolicy {
                tls: tls(policy.and_then(|p| p.get("tls"))),
                proxy_protocol: set("proxyProtocol"),
                port_tls,
            },
        }
    }
}

/// What an AuthorizationPolicy does with the requests it matches (`spec.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl AuthorizationAction {
    /// Istio's spelling (`security.istio.io` `Action`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ALLOW" => Some(AuthorizationAction::Allow),
            "DENY" => Some(AuthorizationAction::Deny),
            "AUDIT" => Some(AuthorizationAction::Audit),
            "CUSTOM" => Some(AuthorizationAction::Custom),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationAction::Allow => "ALLOW",
            AuthorizationAction::Deny => "DENY",
            AuthorizationAction::Audit => "AUDIT",
            AuthorizationAction::Custom => "CUSTOM",
        }
    }

    /// Whether it decides who may call: ALLOW, DENY and CUSTOM do; AUDIT only logs
    /// (istiod renders it as Envoy's RBAC `LOG` action, which never denies:
    /// `pilot/pkg/security/authz/builder/builder.go`).
    pub fn decides_access(self) -> bool {
        self != AuthorizationAction::Audit
    }
}

/// A `security.istio.io` AuthorizationPolicy: what decides the workloads it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    #[serde(default)]
    pub action: AuthorizationAction,
    /// `spec.selector.matchLabels`; `None` (or empty): every workload of its namespace.
    #[serde(default)]
    pub selector: Option<Labels>,
    /// `spec.targetRef`/`targetRefs` is set: it attaches to Gateway API gateways and
    /// waypoints only, never to a sidecar.
    #[serde(default)]
    pub targeted: bool,
}

impl AuthorizationPolicy {
    /// Whether istiod applies it to a sidecar workload in `namespace` with `labels`
    /// (`pilot/pkg/model/authorization.go` `ListAuthorizationPolicies`: policies of the
    /// root namespace and of the workload's; `policyattachment.go` `ShouldAttachPolicy`:
    /// a policy with a targetRef never attaches to a sidecar, else its selector's
    /// `matchLabels` must be a subset of the workload's labels, no selector selecting all).
    pub fn applies_to(&self, root_namespace: &str, namespace: &str, labels: &Labels) -> bool {
        self.applies_to_labelled(root_namespace, namespace, |k| labels.get(k))
    }

    /// [`Self::applies_to`], the workload's labels given by `label`.
    pub fn applies_to_labelled<'a>(
        &self,
        root_namespace: &str,
        namespace: &str,
        label: impl Fn(&str) -> Option<&'a str>,
    ) -> bool {
        self.applies_in(root_namespace, namespace)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.iter().all(|(k, v)| label(k) == Some(v)))
    }

    /// Whether it may apply to some workload of `namespace`: not targeted, and in that
    /// namespace or the root one.
    pub fn applies_in(&self, root_namespace: &str, namespace: &str) -> bool {
        !self.targeted && (&*self.namespace == namespace || &*self.namespace == root_namespace)
    }

    /// No selector: every workload of its namespace (of the mesh, in the root namespace).
    pub fn is_namespace_wide(&self) -> bool {
        self.selector.as_ref().is_none_or(Labels::is_empty)
    }
}

/// What one of our Sidecars remembers of its workload (restart safety).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoredDeps {
    pub workload: WorkloadId,
    /// Dependency host → last seen at the gateway (unix seconds).
    pub deps: BTreeMap<String, u64>,
}

/// A `networking.istio.io` Sidecar, ours or a user's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarObject {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    #[serde(default)]
    pub labels: Labels,
    /// `spec.workloadSelector.labels`; `None` for a namespace default.
    #[serde(default)]
    pub selector: Option<Labels>,
    /// The whole spec, as Istio has it; `Null` on ours (never read: the writer keeps what
    /// it compares, and our deps are in `restored`).
    #[serde(default)]
    pub spec: serde_json::Value,
    /// Parsed from our annotations; `None` on users' Sidecars.
    #[serde(default)]
    pub restored: Option<RestoredDeps>,
}

impl SidecarObject {
    /// Projects a Sidecar; on ours, parses `lazyxds.io/workload` and `lazyxds.io/deps`.
    pub fn new(
        namespace: &str,
        name: &str,
        labels: Labels,
        annotations: &BTreeMap<String, String>,
        spec: serde_json::Value,
    ) -> Result<Self, Error> {
        let selector = spec
            .pointer("/workloadSelector/labels")
            .and_then(|v| v.as_object())
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect::<Labels>()
            });
        let ours = is_ours(&labels);
        let restored = if ours {
            Some(parse_restored(namespace, name, annotations)?)
        } else {
            None
        };
        Ok(SidecarObject {
            namespace: namespace.into(),
            name: name.into(),
            labels,
            selector,
            spec: if ours { serde_json::Value::Null } else { spec },
            restored,
        })
    }

    /// Carries our ownership label.
    pub fn is_ours(&self) -> bool {
        is_ours(&self.labels)
    }
}

fn parse_restored(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<RestoredDeps, Error> {
    let invalid = |annotation, value: &str, reason: String| Error::Annotation {
        object: format!("Sidecar {namespace}/{name}"),
        annotation,
        value: value.to_string(),
        reason,
    };
    let workload = annotations
        .get(ANNOTATION_WORKLOAD)
        .map(String::as_str)
        .unwrap_or_default();
    let id = WorkloadId::from_annotation(namespace, workload)
        .map_err(|e| invalid(ANNOTATION_WORKLOAD, workload, e))?;
    let deps = match annotations.get(ANNOTATION_DEPS) {
        None => BTreeMap::new(),
        Some(json) => serde_json::from_str::<BTreeMap<String, u64>>(json).map_err(|e| {
            invalid(
                ANNOTATION_DEPS,
                json,
                format!("is not a JSON object of host to unix seconds: {e}"),
            )
        })?,
    };
    Ok(RestoredDeps { workload: id, deps })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_port(port: u16, name: &str, protocol: &str, app: Option<&str>) -> ServicePort {
        ServicePort {
            port,
            name: name.to_string(),
            protocol: protocol.to_string(),
            app_protocol: app.map(str::to_string),
        }
    }

    #[test]
    fn service_port_protocols_follow_istio() {
        let cases = [
            (mk_port(80, "http", "TCP", None), Protocol::Http),
            (mk_port(80, "http-web", "TCP", None), Protocol::Http),
            (mk_port(80, "HTTP2-x", "TCP", None), Protocol::Http2),
            (mk_port(80, "grpc-api", "TCP", None), Protocol::Grpc),
            (mk_port(80, "grpc-web-ui", "TCP", None), Protocol::GrpcWeb),
            (mk_port(80, "tcp-db", "TCP", None), Protocol::Tcp),
            (mk_port(443, "https", "TCP", None), Protocol::Https),
            (mk_port(443, "tls-x", "TCP", None), Protocol::Tls),
            (mk_port(6379, "redis", "TCP", None), Protocol::Redis),
            (mk_port(80, "web", "TCP", None), Protocol::Unsupported),
            (mk_port(80, "", "TCP", None), Protocol::Unsupported),
            (mk_port(53, "", "TCP", None), Protocol::Tcp),
            (mk_port(3306, "", "TCP", None), Protocol::Tcp),
            (mk_port(27017, "db", "TCP", None), Protocol::Tcp),
            (mk_port(25, "", "TCP", None), Protocol::Tcp),
            (mk_port(3306, "http", "TCP", None), Protocol::Http),
            // Not ASCII where `grpc-web` would end: compared, never sliced.
            (mk_port(80, "grpc-wx\u{e9}", "TCP", None), Protocol::Grpc),
            (mk_port(53, "dns", "UDP", None), Protocol::Udp),
            (mk_port(80, "tcp-x", "UDP", Some("http")), Protocol::Udp),
            (mk_port(80, "tcp-x", "TCP", Some("http")), Protocol::Http),
            (
                mk_port(80, "http", "TCP", Some("kubernetes.io/h2c")),
                Protocol::Http2,
            ),
            (
                mk_port(80, "tcp", "TCP", Some("kubernetes.io/ws")),
                Protocol::Http,
            ),
            (
                mk_port(443, "http", "TCP", Some("kubernetes.io/wss")),
                Protocol::Https,
            ),
            (
                mk_port(80, "http", "TCP", Some("custom.io/thing")),
                Protocol::Unsupported,
            ),
        ];
        for (port, want) in cases {
            assert_eq!(Protocol::of_service_port(&port), want, "{port:?}");
        }
    }

    /// May a port be lazy? Only if Istio calls it HTTP.
    #[test]
    fn only_ports_istio_calls_http_may_be_lazy() {
        let lazy = |port: ServicePort| Protocol::of_service_port(&port).may_be_lazy();
        let cases = [
            (mk_port(80, "http", "TCP", None), true),
            (mk_port(80, "HTTP-foo", "TCP", None), true),
            (mk_port(80, "http2", "TCP", None), true),
            (mk_port(80, "http_proxy", "TCP", None), true),
            (mk_port(80, "grpc", "TCP", None), true),
            (mk_port(80, "Grpc-Web", "TCP", None), true),
            (mk_port(80, "grpc-web-ui", "TCP", None), true),
            (mk_port(80, "tcp", "TCP", Some("grpc-web")), true),
            (mk_port(80, "tcp", "TCP", Some("kubernetes.io/h2c")), true),
            (mk_port(80, "tcp", "TCP", Some("kubernetes.io/ws")), true),
            (mk_port(80, "", "TCP", Some("HTTP")), true),
            // Unnamed or unknown: sniffed, may be anything.
            (mk_port(80, "", "TCP", None), false),
            (mk_port(7000, "", "TCP", None), false),
            (mk_port(80, "web", "TCP", None), false),
            (mk_port(80, "httpx", "TCP", None), false),
            (mk_port(5432, "postgres", "TCP", None), false),
            (mk_port(5672, "amqp", "TCP", None), false),
            (mk_port(8080, "client", "TCP", None), false),
            (mk_port(80, "http", "TCP", Some("custom.io/thing")), false),
            // Declared opaque.
            (mk_port(5432, "tcp", "TCP", None), false),
            (mk_port(5432, "tcp-db", "TCP", None), false),
            (mk_port(443, "tls", "TCP", None), false),
            (mk_port(443, "https", "TCP", None), false),
            (mk_port(27017, "mongo", "TCP", None), false),
            (mk_port(6379, "redis", "TCP", None), false),
            (mk_port(3306, "http", "TCP", Some("mysql")), false),
            (
                mk_port(443, "http", "TCP", Some("kubernetes.io/wss")),
                false,
            ),
            (mk_port(80, "http", "UDP", None), false),
        ];
        for (port, want) in cases {
            assert_eq!(lazy(port.clone()), want, "{port:?}");
        }
        // A ServiceEntry port: its `protocol`, by `protocol.Parse`.
        for (protocol, want) in [
            ("HTTP", true),
            ("http2", true),
            ("GRPC", true),
            ("GRPC-Web", true),
            ("HTTPS", false),
            ("TLS", false),
            ("TCP", false),
            ("MONGO", false),
            ("", false),
            ("HTTP-foo", false),
        ] {
            assert_eq!(
                Protocol::parse(protocol).may_be_lazy(),
                want,
                "{protocol:?}"
            );
        }
    }

    #[test]
    fn a_host_with_any_port_that_may_not_be_lazy_says_which() {
        let mut svc = Service {
            namespace: "shop".into(),
            name: "store".into(),
            selector: None,
            ports: vec![
                mk_port(8080, "http", "TCP", None),
                mk_port(5432, "tcp-db", "TCP", None),
                mk_port(7000, "", "TCP", None),
            ],
            export_to: Vec::new(),
            headless: false,
        };
        assert_eq!(
            svc.not_lazy_port().map(|p| p.to_string()).as_deref(),
            Some("port 5432 (name \"tcp-db\") is TCP, not HTTP")
        );
        svc.ports.remove(1);
        assert_eq!(
            svc.not_lazy_port().map(|p| p.to_string()).as_deref(),
            Some("port 7000 (unnamed) may not be HTTP: Istio sniffs it")
        );
        svc.ports[1] = mk_port(3306, "db", "TCP", Some("mysql"));
        assert_eq!(
            svc.not_lazy_port().map(|p| p.to_string()).as_deref(),
            Some("port 3306 (appProtocol \"mysql\") is MySQL, not HTTP")
        );
        svc.ports.truncate(1);
        assert_eq!(svc.not_lazy_port(), None);
        let se = ServiceEntry {
            namespace: "shop".into(),
            name: "ext".into(),
            hosts: vec!["a.example.com".into()],
            ports: vec![
                ServiceEntryPort {
                    number: 80,
                    name: "http".into(),
                    protocol: "HTTP".into(),
                },
                ServiceEntryPort {
                    number: 443,
                    name: "tls".into(),
                    protocol: "TLS".into(),
                },
            ],
            export_to: Vec::new(),
            workload_selector: None,
        };
        assert_eq!(
            se.not_lazy_port().map(|p| p.to_string()).as_deref(),
            Some("port 443 (protocol \"TLS\") is TLS, not HTTP")
        );
    }

    #[test]
    fn authorization_policies_attach_as_istiod_attaches_them() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let policy = |ns: &str, selector: Option<&[(&str, &str)]>, targeted| AuthorizationPolicy {
            namespace: ns.into(),
            name: "p".into(),
            action: AuthorizationAction::Deny,
            selector: selector.map(labels),
            targeted,
        };
        let web = labels(&[("app", "web"), ("version", "v1")]);
        let cases = [
            (policy("shop", Some(&[("app", "web")]), false), "shop", true),
            (
                policy("shop", Some(&[("app", "web"), ("version", "v2")]), false),
                "shop",
                false,
            ),
            (policy("shop", None, false), "shop", true),
            (policy("shop", Some(&[]), false), "shop", true),
            (policy("shop", None, false), "payments", false),
            // The root namespace's apply in every namespace.
            (policy("istio-system", None, false), "shop", true),
            (
                policy("istio-system", Some(&[("app", "web")]), false),
                "shop",
                true,
            ),
            (
                policy("istio-system", Some(&[("app", "db")]), false),
                "shop",
                false,
            ),
            (
                policy("payments", Some(&[("app", "web")]), false),
                "shop",
                false,
            ),
            // A targetRef is for gateways and waypoints.
            (policy("shop", None, true), "shop", false),
            (policy("istio-system", None, true), "shop", false),
        ];
        for (p, ns, want) in cases {
            assert_eq!(
                p.applies_to("istio-system", ns, &web),
                want,
                "{p:?} on {ns}"
            );
        }
        for (action, decides) in [
            ("ALLOW", true),
            ("DENY", true),
            ("CUSTOM", true),
            ("AUDIT", false),
        ] {
            let parsed = AuthorizationAction::parse(action).expect(action);
            assert_eq!(parsed.as_str(), action);
            assert_eq!(parsed.decides_access(), decides, "{action}");
        }
        assert_eq!(AuthorizationAction::parse("allow"), None);
    }

    #[test]
    fn workload_kinds_round_trip() {
        for kind in WorkloadKind::ALL {
            assert_eq!(kind.as_str().parse::<WorkloadKind>(), Ok(kind));
        }
        assert_eq!(
            "Deploymnt".parse::<WorkloadKind>(),
            Err("\"Deploymnt\" is not a workload kind".to_string())
        );
    }
}
