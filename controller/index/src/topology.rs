//! A mesh described by hand in one YAML file, for runs without a cluster.
//!
//! The file feeds the index the same projections the kube watchers do. Parsing is strict
//! (`deny_unknown_fields` everywhere) and every error names the file, the object
//! (`workloads[3] (shop/reviews-v1)`) and the field.
//!
//! ```yaml
//! mesh: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}      # optional
//! gateway: {host: lazyxds-gateway.lazyxds-system.svc.cluster.local, namespace: lazyxds-system, port: 8080}
//! # (optional `selector`: the gateway pods' labels, default {istio: lazyxds-gateway})
//! namespaces: [{name: shop, annotations: {lazyxds.io/enabled: "true"}}]
//! workloads:
//!   - {kind: Deployment, namespace: shop, name: cart, labels: {app: cart},
//!      annotations: {}, podAnnotations: {}, serviceAccount: cart,
//!      pods: [{ip: 127.0.0.10}, {name: cart-x, ip: 127.0.0.11, labels: {extra: "1"}}]}
//! services: [{namespace: shop, name: cart, selector: {app: cart}, ports: [{port: 9080, name: http}]}]
//! # (optional `headless: true`: `clusterIP: None`)
//! serviceEntries: [{namespace: shop, name: stripe, hosts: [api.stripe.com], ports: [{number: 443, name: https, protocol: HTTPS}]}]
//! virtualServices: [{namespace: shop, name: reviews, hosts: [reviews], destinations: [reviews-v2]}]
//! # or with Istio's own `http` routes (reproduced by the gateway for first calls):
//! #   http: [{route: [{destination: {host: reviews, subset: v1}, weight: 90}, ...], timeout: 2s}]
//! # (optional `exportTo`, and `created`: its creation time in unix seconds, which orders
//! # several VirtualServices for one host as Istio does)
//! destinationRules: [{namespace: shop, name: mtls, spec: {host: "*.local", trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}}]
//! sidecars: [{namespace: shop, name: default, spec: {egress: [{hosts: ["./*"]}]}}]
//! # AuthorizationPolicies: `action` (default ALLOW), `selector` (matchLabels; none: the
//! # whole namespace), `targeted: true` for one with a targetRef (never on a sidecar)
//! authorizationPolicies: [{namespace: payments, name: vault-callers, action: ALLOW, selector: {app: vault}}]
//! ```
//!
//! Workload kinds: Deployment, StatefulSet, DaemonSet, CronJob (with a pod template),
//! Job, ReplicaSet, Pod (their `annotations` go on the pods; a Pod has exactly one pod).
//! Pod names default to `<workload>-<i>`; pods get the labels their controller would add.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Display};
use std::net::IpAddr;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_norway::Value;

use crate::desired::RenderConfig;
use crate::error::Error;
use crate::host;
use crate::index::Index;
use crate::istio::OutboundPolicy;
use crate::objects::{
    Annotations, AuthorizationPolicy, DestinationRule, Job, Labels, Namespace, OwnerRef, Pod,
    ReplicaSet, Service, ServiceEntry, ServiceEntryPort, ServicePort, SidecarObject,
    VirtualService, WorkloadId, WorkloadKind, WorkloadObject,
};

/// The parsed file.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// `mesh.outboundTrafficPolicy.mode`, when given.
    pub mesh_outbound_policy: Option<OutboundPolicy>,
    pub gateway: Option<Gateway>,
    pub objects: IndexObjects,
}

/// Where the lazy gateway is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub host: String,
    pub namespace: String,
    pub port: u16,
    /// Labels of the gateway pods; default `istio: lazyxds-gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Labels>,
}

/// Projections, as the kube watchers would produce them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexObjects {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub replica_sets: Vec<ReplicaSet>,
    pub jobs: Vec<Job>,
    pub workloads: Vec<WorkloadObject>,
    pub services: Vec<Service>,
    pub service_entries: Vec<ServiceEntry>,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub sidecars: Vec<SidecarObject>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
}

impl IndexObjects {
    /// Replaces every kind in the index with these objects (a full resync).
    pub fn apply_to(self, index: &mut Index) {
        index.reset((), self.namespaces);
        index.reset((), self.replica_sets);
        index.reset((), self.jobs);
        for kind in WorkloadKind::ALL.into_iter().filter(|k| k.has_template()) {
            let of_kind = self
                .workloads
                .iter()
                .filter(|w| w.kind == kind)
                .cloned()
                .collect();
            index.reset(kind, of_kind);
        }
        index.reset((), self.services);
        index.reset((), self.service_entries);
        index.reset((), self.virtual_services);
        index.reset((), self.destination_rules);
        index.reset((), self.authorization_policies);
        // Sidecars (ours restore deps) and pods last, like a controller start-up.
        index.reset((), self.sidecars);
        index.reset((), self.pods);
    }
}

/// How many of the workloads there are now (`before`) a new topology would remove at once.
/// An empty or truncated file would remove them all, and their Sidecars with them: a
/// change that removes more than a set share is refused (the last good state kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    pub before: usize,
    pub removed: usize,
}

impl Removal {
    /// More than `max_percent` of the workloads at once (100: never).
    pub fn exceeds(&self, max_percent: u8) -> bool {
        self.removed.saturating_mul(100) > self.before.saturating_mul(usize::from(max_percent))
    }
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} workloads", self.removed, self.before)
    }
}

impl Topology {
    /// Parses a topology file; `file_name` only names it in errors. Text nesting deeper
    /// than [`limits::MAX_DEPTH`] is refused before it is parsed (its parse would cost
    /// the square of its depth), and so is a document its aliases make deeper.
    pub fn from_yaml(text: &str, file_name: &str) -> Result<Topology, Error> {
        if let Some((line, column)) = limits::too_deep(text, limits::MAX_DEPTH) {
            return Err(Error::Topology {
                file: file_name.to_string(),
                location: format!("line {line}, column {column}"),
                message: format!(
                    "nests deeper than {} levels, the limit for a topology file",
                    limits::MAX_DEPTH
                ),
            });
        }
        let value: Value = serde_norway::from_str(text).map_err(|e| Error::Yaml {
            file: file_name.to_string(),
            message: e.to_string(),
        })?;
        // Aliases copy their anchor's whole value wherever they are used: text within the
        // limit can parse to a deeper value.
        if let Some(location) = limits::value_too_deep(&value, limits::MAX_DEPTH) {
            return Err(Error::Topology {
                file: file_name.to_string(),
                location,
                message: format!(
                    "nests deeper than {} levels (counting what aliases copy), the limit for a \
                     topology file",
                    limits::MAX_DEPTH
                ),
            });
        }
        let value = if value.is_null() {
            Value::Mapping(Default::default())
        } else {
            value
        };
        let p = Parser {
            file: file_name,
            objects: IndexObjects::default(),
            pod_ips: HashMap::new(),
            pod_names: HashMap::new(),
        };
        p.parse(value)
    }

    pub fn into_index_objects(self) -> IndexObjects {
        self.objects
    }

    /// Feeds a copy of the objects to `index` (full resync).
    pub fn apply_to(&self, index: &mut Index) {
        self.objects.clone().apply_to(index);
    }

    /// The workloads this topology has (as the index derives them from its objects).
    pub fn workloads(&self, config: &crate::IndexConfig) -> BTreeSet<WorkloadId> {
        let mut index = Index::new(config.clone());
        self.apply_to(&mut index);
        index.workload_views().into_keys().collect()
    }

    /// What replacing the index's workloads (`before`) by this topology's would take away.
    pub fn removal(&self, before: &BTreeSet<WorkloadId>, config: &crate::IndexConfig) -> Removal {
        let after = self.workloads(config);
        Removal {
            before: before.len(),
            removed: before.difference(&after).count(),
        }
    }

    /// `base` with the file's `mesh` and `gateway` settings applied.
    pub fn render_config(&self, base: RenderConfig) -> RenderConfig {
        let mut config = base;
        if let Some(policy) = self.mesh_outbound_policy {
            config.mesh_outbound_policy = policy;
        }
        if let Some(gw) = &self.gateway {
            config.gateway_host = gw.host.clone();
            config.gateway_namespace = gw.namespace.clone();
            config.egress_proxy_port = gw.port;
            if let Some(selector) = &gw.selector {
                config.gateway_selector = selector.clone();
            }
        }
        config
    }
}

// ---- The file's shape ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    mesh: Option<MeshDoc>,
    #[serde(default)]
    gateway: Option<Gateway>,
    #[serde(default)]
    namespaces: Vec<Value>,
    #[serde(default)]
    workloads: Vec<Value>,
    #[serde(default)]
    services: Vec<Value>,
    #[serde(default)]
    service_entries: Vec<Value>,
    #[serde(default)]
    virtual_services: Vec<Value>,
    #[serde(default)]
    destination_rules: Vec<Value>,
    #[serde(default)]
    sidecars: Vec<Value>,
    #[serde(default)]
    authorization_policies: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MeshDoc {
    #[serde(default)]
    outbound_traffic_policy: Option<MeshPolicyDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshPolicyDoc {
    mode: OutboundPolicy,
}

type AnnotationMap = BTreeMap<String, String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceDoc {
    name: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    annotations: AnnotationMap,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadDoc {
    kind: WorkloadKind,
    namespace: String,
    name: String,
    /// The pod template's labels.
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    annotations: AnnotationMap,
    #[serde(default)]
    pod_annotations: AnnotationMap,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    host_network: bool,
    #[serde(default)]
    pods: Vec<PodDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodDoc {
    #[serde(default)]
    name: Option<String>,
    /// A string so a bad address gets our message, not a deserializer's.
    ip: String,
    #[serde(default)]
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceDoc {
    namespace: String,
    name: String,
    #[serde(default)]
    selector: Option<Labels>,
    #[serde(default)]
    ports: Vec<ServicePort>,
    #[serde(default)]
    export_to: Vec<String>,
    /// `clusterIP: None`.
    #[serde(default)]
    headless: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceEntryDoc {
    namespace: String,
    name: String,
    hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<ServiceEntryPort>,
    #[serde(default)]
    export_to: Vec<String>,
    /// `workloadSelector.labels`.
    #[serde(default)]
    workload_selector: Option<Labels>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VirtualServiceDoc {
    namespace: String,
    name: String,
    hosts: Vec<String>,
    #[serde(default)]
    gateways: Vec<String>,
    /// Every `route[].destination.host` (a shorthand for the `http`/`tcp` routes).
    #[serde(default)]
    destinations: Vec<String>,
    #[serde(default)]
    export_to: Vec<String>,
    /// `spec.http` as Istio has it (matches, weights, subsets, rewrites, timeouts, ...).
    #[serde(default)]
    http: Vec<serde_json::Value>,
    /// Creation time, unix seconds.
    #[serde(default)]
    created: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationRuleDoc {
    namespace: String,
    name: String,
    /// Istio's `spec`: `host`, `exportTo`, `workloadSelector`, `trafficPolicy`.
    spec: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarDoc {
    namespace: String,
    name: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    annotations: AnnotationMap,
    #[serde(default)]
    spec: serde_json::Value,
}

// ---- Parsing ---------------------------------------------------------------------------

struct Parser<'a> {
    file: &'a str,
    objects: IndexObjects,
    /// IP → the pod that has it (`pod ns/name`).
    pod_ips: HashMap<IpAddr, String>,
    /// `ns/name` of every pod → where it was declared.
    pod_names: HashMap<String, String>,
}

/// Where an object sits: `workloads[3] (shop/cart)`.
fn object_location(section: &str, i: usize, item: &Value) -> String {
    let field = |k: &str| item.get(k).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{section}[{i}] ({ns}/{name})"),
        (None, Some(name)) => format!("{section}[{i}] ({name})"),
        _ => format!("{section}[{i}]"),
    }
}

impl Parser<'_> {
    fn error(&self, location: impl Display, message: impl Display) -> Error {
        Error::Topology {
            file: self.file.to_string(),
            location: location.to_string(),
            message: message.to_string(),
        }
    }

    fn typed<T: DeserializeOwned>(&self, location: &str, value: Value) -> Result<T, Error> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            // The path names the field (an unknown one included).
            let location = match (location.is_empty(), path.as_str()) {
                (true, ".") => "top level".to_string(),
                (true, _) => path,
                (false, ".") => location.to_string(),
                (false, _) => format!("{location}: {path}"),
            };
            self.error(location, e.into_inner())
        })
    }

    fn annotations(
        &self,
        location: &str,
        object: &str,
        map: &AnnotationMap,
        field: &str,
    ) -> Result<Annotations, Error> {
        Annotations::parse(object, map).map_err(|e| match e {
            Error::Annotation {
                annotation,
                value,
                reason,
                ..
            } => self.error(
                format!("{location}: {field}.\"{annotation}\""),
                format!("{value:?} {reason}"),
            ),
            other => other,
        })
    }

    fn parse(mut self, value: Value) -> Result<Topology, Error> {
        let doc: Document = self.typed("", value)?;
        let mut seen: BTreeMap<(&'static str, String, String), String> = BTreeMap::new();
        let mut unique = |p: &Self, kind: &'static str, ns: &str, name: &str, loc: &str| match seen
            .insert((kind, ns.to_string(), name.to_string()), loc.to_string())
        {
            Some(first) => Err(p.error(loc, format!("same {kind} as {first}"))),
            None => Ok(()),
        };

        for (i, item) in doc.namespaces.into_iter().enumerate() {
            let loc = object_location("namespaces", i, &item);
            let d: NamespaceDoc = self.typed(&loc, item)?;
            unique(&self, "namespace", "", &d.name, &loc)?;
            let annotations = self.annotations(
                &loc,
                &format!("Namespace {}", d.name),
                &d.annotations,
                "annotations",
            )?;
            self.objects.namespaces.push(Namespace {
                name: d.name.into(),
                labels: d.labels,
                annotations,
            });
        }
        for (i, item) in doc.workloads.into_iter().enumerate() {
            let loc = object_location("workloads", i, &item);
            let d: WorkloadDoc = self.typed(&loc, item)?;
            unique(
                &self,
                "workload",
                &d.namespace,
                &format!("{}/{}", d.kind, d.name),
                &loc,
            )?;
            self.workload(&loc, d)?;
        }
        for (i, item) in doc.services.into_iter().enumerate() {
            let loc = object_location("services", i, &item);
            let d: ServiceDoc = self.typed(&loc, item)?;
            unique(&self, "service", &d.namespace, &d.name, &loc)?;
            self.objects.services.push(Service {
                namespace: d.namespace.into(),
                name: d.name.into(),
                selector: d.selector,
                ports: d.ports,
                export_to: d.export_to,
                headless: d.headless,
            });
        }
        for (i, item) in doc.service_entries.into_iter().enumerate() {
            let loc = object_location("serviceEntries", i, &item);
            let d: ServiceEntryDoc = self.typed(&loc, item)?;
            unique(&self, "serviceEntry", &d.namespace, &d.name, &loc)?;
            if d.hosts.is_empty() {
                return Err(self.error(format!("{loc}: hosts"), "needs at least one host"));
            }
            self.objects.service_entries.push(ServiceEntry {
                namespace: d.namespace.into(),
                name: d.name.into(),
                hosts: d.hosts,
                ports: d.ports,
                export_to: d.export_to,
                workload_selector: d.workload_selector,
            });
        }
        for (i, item) in doc.virtual_services.into_iter().enumerate() {
            let loc = object_location("virtualServices", i, &item);
            let d: VirtualServiceDoc = self.typed(&loc, item)?;
            unique(&self, "virtualService", &d.namespace, &d.name, &loc)?;
            let mut destinations = d.destinations;
            for (j, route) in d.http.iter().enumerate() {
                if !route.is_object() {
                    return Err(self.error(format!("{loc}: http[{j}]"), "is not a route object"));
                }
                let dests = route.get("route").and_then(|r| r.as_array());
                for dest in dests.into_iter().flatten() {
                    if let Some(h) = dest.pointer("/destination/host").and_then(|h| h.as_str()) {
                        if !destinations.iter().any(|d| d == h) {
                            destinations.push(h.to_string());
                        }
                    }
                }
            }
            self.objects.virtual_services.push(VirtualService {
                namespace: d.namespace.into(),
                name: d.name.into(),
                hosts: d.hosts,
                gateways: d.gateways,
                destinations,
                export_to: d.export_to,
                http: d.http,
                created_unix_s: d.created,
            });
        }
        for (i, item) in doc.destination_rules.into_iter().enumerate() {
            let loc = object_location("destinationRules", i, &item);
            let d: DestinationRuleDoc = self.typed(&loc, item)?;
            unique(&self, "destinationRule", &d.namespace, &d.name, &loc)?;
            if !d.spec.get("host").is_some_and(|h| h.is_string()) {
                return Err(self.error(format!("{loc}: spec.host"), "needs a host"));
            }
            self.objects
                .destination_rules
                .push(DestinationRule::from_spec(&d.namespace, &d.name, &d.spec));
        }
        for (i, item) in doc.sidecars.into_iter().enumerate() {
            let loc = object_location("sidecars", i, &item);
            let d: SidecarDoc = self.typed(&loc, item)?;
            unique(&self, "sidecar", &d.namespace, &d.name, &loc)?;
            let sidecar =
                SidecarObject::new(&d.namespace, &d.name, d.labels, &d.annotations, d.spec)
                    .map_err(|e| match e {
                        Error::Annotation {
                            annotation,
                            value,
                            reason,
                            ..
                        } => self.error(
                            format!("{loc}: annotations.\"{annotation}\""),
                            format!("{value:?} {reason}"),
                        ),
                        other => other,
                    })?;
            self.objects.sidecars.push(sidecar);
        }
        for (i, item) in doc.authorization_policies.into_iter().enumerate() {
            let loc = object_location("authorizationPolicies", i, &item);
            let mut policy: AuthorizationPolicy = self.typed(&loc, item)?;
            unique(
                &self,
                "authorizationPolicy",
                &policy.namespace,
                &policy.name,
                &loc,
            )?;
            // `selector: {}` selects every workload, as no selector does.
            policy.selector = policy.selector.filter(|s| !s.is_empty());
            self.objects.authorization_policies.push(policy);
        }

        let gateway = doc.gateway;
        if let Some(gw) = &gateway {
            if gw.port == 0 {
                return Err(self.error("gateway.port", "must not be 0"));
            }
            if !gw.host.contains('.') {
                return Err(self.error("gateway.host", format!("{:?} is not an FQDN", gw.host)));
            }
        }
        Ok(Topology {
            mesh_outbound_policy: doc
                .mesh
                .and_then(|m| m.outbound_traffic_policy)
                .map(|p| p.mode),
            gateway,
            objects: self.objects,
        })
    }

    fn workload(&mut self, loc: &str, d: WorkloadDoc) -> Result<(), Error> {
        let ns: Arc<str> = d.namespace.as_str().into();
        let name: Arc<str> = d.name.as_str().into();
        let object = format!("{} {}/{}", d.kind, d.namespace, d.name);
        let object_annotations = self.annotations(loc, &object, &d.annotations, "annotations")?;
        let mut pod_annotations =
            self.annotations(loc, &object, &d.pod_annotations, "podAnnotations")?;
        let hash = format!("{:08x}", host::fnv1a64(d.name.as_bytes()) as u32);

        // Who owns the pods, and the labels that owner adds to each.
        let owner = match d.kind {
            WorkloadKind::Deployment => {
                let rs = format!("{}-{hash}", d.name);
                self.objects.replica_sets.push(ReplicaSet {
                    namespace: ns.clone(),
                    name: rs.as_str().into(),
                    owner: Some(OwnerRef::new("Deployment", &d.name)),
                });
                Some(OwnerRef::new("ReplicaSet", &rs))
            }
            WorkloadKind::CronJob => {
                let job = format!("{}-1", d.name);
                self.objects.jobs.push(Job {
                    namespace: ns.clone(),
                    name: job.as_str().into(),
                    owner: Some(OwnerRef::new("CronJob", &d.name)),
                });
                Some(OwnerRef::new("Job", &job))
            }
            WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => {
                Some(OwnerRef::new(d.kind.as_str(), &d.name))
            }
            WorkloadKind::Job => {
                self.objects.jobs.push(Job {
                    namespace: ns.clone(),
                    name: name.clone(),
                    owner: None,
                });
                Some(OwnerRef::new("Job", &d.name))
            }
            WorkloadKind::ReplicaSet => {
                self.objects.replica_sets.push(ReplicaSet {
                    namespace: ns.clone(),
                    name: name.clone(),
                    owner: None,
                });
                Some(OwnerRef::new("ReplicaSet", &d.name))
            }
            WorkloadKind::Pod => None,
        };
        if d.kind.has_template() {
            self.objects.workloads.push(WorkloadObject {
                kind: d.kind,
                namespace: ns.clone(),
                name: name.clone(),
                template_labels: d.labels.clone(),
                annotations: object_annotations,
                template_annotations: pod_annotations.clone(),
            });
        } else {
            // No object to hold them: they go on the pods (the template's win).
            pod_annotations.enabled = pod_annotations.enabled.or(object_annotations.enabled);
            pod_annotations.pins.extend(object_annotations.pins);
        }
        if d.kind == WorkloadKind::Pod && d.pods.len() != 1 {
            return Err(self.error(
                format!("{loc}: pods"),
                format!("a Pod workload has exactly one pod, not {}", d.pods.len()),
            ));
        }

        for (i, pod) in d.pods.into_iter().enumerate() {
            let pod_name = match (&pod.name, d.kind) {
                (Some(n), _) => n.clone(),
                (None, WorkloadKind::Pod) => d.name.clone(),
                (None, _) => format!("{}-{i}", d.name),
            };
            let ip: IpAddr = pod.ip.parse().map_err(|_| {
                self.error(
                    format!("{loc}: pods[{i}].ip"),
                    format!("{:?} is not an IP address", pod.ip),
                )
            })?;
            let key = format!("{}/{pod_name}", d.namespace);
            if let Some(first) = self
                .pod_names
                .insert(key.clone(), format!("{loc}: pods[{i}]"))
            {
                return Err(self.error(
                    format!("{loc}: pods[{i}].name"),
                    format!("pod {key} is also declared at {first}"),
                ));
            }
            let this = format!("pod {key}");
            if let Some(first) = self.pod_ips.get(&ip) {
                return Err(self.error(
                    format!("{loc}: pods[{i}].ip"),
                    format!("{first} and {this} both have IP {ip}"),
                ));
            }
            self.pod_ips.insert(ip, this);

            let mut labels = d.labels.clone();
            match d.kind {
                WorkloadKind::Deployment => {
                    labels.insert("pod-template-hash".into(), hash.clone());
                }
                WorkloadKind::StatefulSet => {
                    labels.insert(
                        "controller-revision-hash".into(),
                        format!("{}-{hash}", d.name),
                    );
                    labels.insert(
                        "statefulset.kubernetes.io/pod-name".into(),
                        pod_name.clone(),
                    );
                    labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
                }
                WorkloadKind::DaemonSet => {
                    labels.insert(
                        "controller-revision-hash".into(),
                        format!("{}-{hash}", d.name),
                    );
                }
                _ => {}
            }
            labels.extend(
                pod.labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            self.objects.pods.push(Pod {
                namespace: ns.clone(),
                name: pod_name.into(),
                ips: vec![ip],
                host_network: d.host_network,
                service_account: d.service_account.as_deref().unwrap_or("default").into(),
                labels: labels.into(),
                owner: owner.clone(),
                annotations: pod_annotations.clone(),
                start_time_unix_s: Some(0),
            });
        }
        Ok(())
    }
}

pub mod limits;
#[cfg(test)]
mod tests;
