//! The Sidecars lazyxds wants, computed from the index alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::destination_rule::{self, Shadow};
use crate::error::Error;
use crate::gateway::JsonText;
use crate::host;
use crate::index::{Index, WorkloadView};
use crate::istio::{
    ConfigPatch, EgressListener, EnvoyFilter, EnvoyFilterSpec, IstioObject, Metadata,
    OutboundPolicy, OutboundTrafficPolicy, PatchMatch, Sidecar, SidecarSpec, WorkloadSelector,
    ENVOY_FILTER, ENVOY_FILTER_API, NETWORKING_API, SIDECAR,
};
use crate::objects::{
    Labels, Pin, SidecarObject, WorkloadId, ANNOTATION_DEPS, ANNOTATION_OUTBOUND_POLICY,
    ANNOTATION_WORKLOAD, COMPONENT_CATCH_ALL, LABEL_COMPONENT,
};

mod visible;

pub use visible::{always_visible, AlwaysVisible, PolicyScope, WhyVisible};

/// Istio's root namespace: its selector-less Sidecar is the mesh default, its services are
/// always visible (`istio-system/*`).
pub const ROOT_NAMESPACE: &str = "istio-system";
/// Labels a controller adds per pod or revision: never part of a workload's selector.
pub const STRIPPED_LABELS: [&str; 4] = [
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];
pub const DEFAULT_MAX_HOSTS_PER_SIDECAR: usize = 1000;
/// The placeholder Service carrying every HTTP port of the mesh (rendered with the
/// gateway's objects; every lazy Sidecar lists it).
pub const PLACEHOLDER_SERVICE: &str = "lazyxds-http-ports";

/// `ns/host` of the placeholder Service, as lazy Sidecars list it.
pub fn placeholder_egress_host(config: &RenderConfig, cluster_domain: &str) -> String {
    let ns = &config.gateway_namespace;
    format!(
        "{ns}/{}",
        host::service_fqdn(PLACEHOLDER_SERVICE, ns, cluster_domain)
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// FQDN of the lazy gateway Service (where scoped workloads send unknown HTTP).
    pub gateway_host: String,
    pub gateway_namespace: String,
    pub egress_proxy_port: u16,
    /// Labels of the gateway pods (the Gateway's selector, the EnvoyFilter's).
    pub gateway_selector: Labels,
    /// The mesh's `outboundTrafficPolicy.mode`, for workloads without a default Sidecar.
    pub mesh_outbound_policy: OutboundPolicy,
    pub max_hosts_per_sidecar: usize,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            gateway_host: "lazyxds-gateway.lazyxds-system.svc.cluster.local".to_string(),
            gateway_namespace: "lazyxds-system".to_string(),
            egress_proxy_port: 8080,
            gateway_selector: Labels::from([("istio".to_string(), "lazyxds-gateway".to_string())]),
            mesh_outbound_policy: OutboundPolicy::AllowAny,
            max_hosts_per_sidecar: DEFAULT_MAX_HOSTS_PER_SIDECAR,
        }
    }
}

/// Everything lazyxds should have written, and why some workloads are left alone.
///
/// The objects are kept as compact JSON text ([`JsonText`]), parsed again one at a time
/// where they are used: a pass holds every scoped workload's two objects, and as typed
/// objects (`BTreeMap` labels, annotations and selectors, `serde_json` route patches)
/// they cost ~16 KB a workload, ~5 times their text (bench P7).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Each workload's [`Sidecar`], keyed by (namespace, name).
    pub sidecars: BTreeMap<(String, String), JsonText>,
    /// The catch-all [`EnvoyFilter`] of each Sidecar ([`catch_all_filter`]), under the
    /// same key: a Sidecar is never written without it.
    pub catch_alls: BTreeMap<(String, String), JsonText>,
    /// Opted-in workloads that get no Sidecar, sorted by workload.
    pub refusals: Vec<Refusal>,
    /// Scoped workloads whose learned hosts reached the cap: their Sidecar keeps every
    /// host it has, new ones stay lazy (through the gateway). Sorted by workload.
    pub capped: Vec<Capped>,
}

/// A scoped workload that learned as many hosts as `--max-hosts` allows: nothing it has
/// is removed, hosts it calls beyond them keep going through the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capped {
    pub workload: WorkloadId,
    pub cap: usize,
}

impl fmt::Display for Capped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host cap {} reached: its Sidecar keeps every host it has; calls to further hosts keep going through the lazy gateway",
            self.cap
        )
    }
}

impl Desired {
    /// The Sidecar rendered for `workload`, if any, parsed from its text.
    pub fn sidecar_of(&self, workload: &WorkloadId) -> Option<Sidecar> {
        self.sidecars
            .get(&(workload.namespace.to_string(), sidecar_name(workload)))?
            .typed()
            .ok()
    }

    /// Every workload's catch-all EnvoyFilter and Sidecar as one multi-document YAML
    /// stream, sorted by namespace and name ([`Desired::workload_yaml`] for each).
    pub fn to_yaml(&self) -> Result<String, Error> {
        let mut out = String::new();
        for key in self.sidecars.keys() {
            out.push_str(&self.workload_yaml(key)?);
        }
        Ok(out)
    }

    /// One workload's objects, EnvoyFilter first: applied in this order, unknown HTTP
    /// already goes to the gateway when the Sidecar hides the workload's other hosts.
    pub fn workload_yaml(&self, key: &(String, String)) -> Result<String, Error> {
        let mut out = String::new();
        if let Some(filter) = self.catch_alls.get(key) {
            let filter: EnvoyFilter = typed(filter, ENVOY_FILTER)?;
            out.push_str(&format!("---\n{}", filter.to_yaml()?));
        }
        if let Some(sidecar) = self.sidecars.get(key) {
            let sidecar: Sidecar = typed(sidecar, SIDECAR)?;
            out.push_str(&format!("---\n{}", sidecar.to_yaml()?));
        }
        Ok(out)
    }
}

/// The typed object of `text` (a `kind`): its YAML keeps the fields in declaration order.
fn typed<T: serde::de::DeserializeOwned>(text: &JsonText, kind: &str) -> Result<T, Error> {
    text.typed().map_err(|e| Error::Serialize {
        what: format!("{kind} {}/{}", text.namespace(), text.name()),
        message: e.to_string(),
    })
}

/// `object` as compact text. Serializing our Istio types cannot fail (string-keyed maps
/// only); if it ever did, the key stays with a `null` body that the writer skips, as it
/// skipped an object it could not serialize: the workload's live objects stay as they are.
fn compact<T: serde::Serialize>(object: &IstioObject<T>) -> JsonText {
    JsonText::new(&object.to_json().unwrap_or(serde_json::Value::Null))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub workload: WorkloadId,
    pub reason: RefusalReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefusalReason {
    /// The root namespace or the gateway's: scoping there could cut the mesh's own parts
    /// off (the gateway would send its traffic to itself).
    ExcludedNamespace { namespace: String },
    /// Istio's `discoverySelectors` leave out the gateway's namespace: istiod ignores
    /// every object there (`pkg/kube/namespace/filter.go`), so the gateway routes nothing
    /// and lazy Sidecars could not reach it.
    GatewayNotDiscovered { namespace: String },
    /// No labels left once per-pod labels are stripped: a selector-less Sidecar would
    /// become the namespace default.
    EmptySelector,
    /// The selector also matches pods of another workload.
    SelectsOtherWorkload { other: WorkloadId },
    /// A user's Sidecar with a selector already selects its pods (two would be undefined).
    UserSidecar { name: String },
    /// A DestinationRule of its namespace takes precedence over the gateway's and would
    /// not let first calls reach the gateway over Istio mTLS ([`destination_rule`]).
    GatewayDestinationRule(Shadow),
    /// More hosts than the cap before any learned one: the ones every scoped Sidecar of
    /// its namespace must list (always visible, the namespace default's, pins).
    HostCap { cap: usize, hosts: usize },
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::ExcludedNamespace { namespace } => {
                write!(f, "namespace {namespace} is never scoped")
            }
            RefusalReason::GatewayNotDiscovered { namespace } => write!(
                f,
                "the gateway's namespace {namespace} is outside Istio's discoverySelectors: \
                 istiod ignores its routes"
            ),
            RefusalReason::EmptySelector => {
                f.write_str("no pod-template labels left for a workloadSelector")
            }
            RefusalReason::SelectsOtherWorkload { other } => {
                write!(f, "its selector also selects pods of {other}")
            }
            RefusalReason::UserSidecar { name } => {
                write!(f, "user Sidecar {name} already selects its pods")
            }
            RefusalReason::GatewayDestinationRule(shadow) => shadow.fmt(f),
            RefusalReason::HostCap { cap, hosts } => write!(
                f,
                "host cap {cap} reached by {hosts} hosts it must see before any learned one"
            ),
        }
    }
}

/// Our Sidecar's name for a workload: `lazyxds-<kind>-<name>`, a valid object name.
pub fn sidecar_name(workload: &WorkloadId) -> String {
    let prefix = format!("lazyxds-{}-", workload.kind.as_str().to_ascii_lowercase());
    host::object_name(&prefix, &workload.name)
}

/// The names istiod gives the catch-all virtual host of a sidecar's outbound HTTP route
/// tables, and its one route: `allow_any` (ALLOW_ANY: to PassthroughCluster) or
/// `block_all` (REGISTRY_ONLY: a 502), from `pilot/pkg/networking/util/util.go`
/// (`Passthrough`, `BlackHole`) and `core/httproute.go` (`BuildCatchAllVirtualHost`).
pub const CATCH_ALL_VIRTUAL_HOSTS: [&str; 2] = ["allow_any", "block_all"];

/// The EnvoyFilter that sends a scoped workload's unknown HTTP to the lazy gateway, and
/// nothing else: it merges a route to the gateway's cluster into the one route of the
/// catch-all virtual host (`allow_any` or `block_all`, whichever the workload's policy
/// gives it) of every outbound HTTP route table. Unknown TCP and TLS keep the workload's
/// own policy. Same name, namespace and selector as `sidecar`; its size does not depend
/// on the mesh.
///
/// A MERGE replaces `block_all`'s direct response (a route action is a oneof); the
/// timeouts are those istiod gives `allow_any` (none: the gateway's route has its own).
pub fn catch_all_filter(
    sidecar: &Sidecar,
    config: &RenderConfig,
    held_routes: &[String],
) -> EnvoyFilter {
    let gateway_cluster = lazyxds_proto::cluster::Outbound {
        port: config.egress_proxy_port,
        subset: "",
        host: &config.gateway_host,
    }
    .to_string();
    let route = serde_json::json!({"route": {
        "cluster": gateway_cluster,
        "timeout": "0s",
        "max_grpc_timeout": "0s",
    }});
    let mut metadata = Metadata::ours(&sidecar.metadata.name, &sidecar.metadata.namespace);
    metadata
        .labels
        .insert(LABEL_COMPONENT.to_string(), COMPONENT_CATCH_ALL.to_string());
    let (key, value) = crate::istio::ENVOY_FILTER_ANALYZE_SUPPRESS;
    // IST0151 flags a REMOVE in an EnvoyFilter without a priority: order would matter if
    // another filter patched relative to what it removes; nobody anchors on Istio's
    // per-host virtual hosts, and the removal lasts only the route delay.
    let value = if held_routes.is_empty() {
        value.to_string()
    } else {
        format!("{value},{}", crate::istio::ANALYZE_RELATIVE_PATCH)
    };
    metadata.annotations.insert(key.to_string(), value);
    if let Some(workload) = sidecar.metadata.annotations.get(ANNOTATION_WORKLOAD) {
        metadata
            .annotations
            .insert(ANNOTATION_WORKLOAD.to_string(), workload.clone());
    }
    EnvoyFilter {
        api_version: ENVOY_FILTER_API.to_string(),
        kind: ENVOY_FILTER.to_string(),
        metadata,
        spec: EnvoyFilterSpec {
            workload_selector: sidecar.spec.workload_selector.clone(),
            priority: None,
            config_patches: CATCH_ALL_VIRTUAL_HOSTS
                .iter()
                .map(|vhost| {
                    ConfigPatch::new(
                        "HTTP_ROUTE",
                        PatchMatch::sidecar_catch_all_route(vhost),
                        "MERGE",
                        route.clone(),
                    )
                })
                // Make before break: a new dep's virtual hosts stay out of the sidecar's
                // routes (its requests take the catch-all to the gateway) until its
                // clusters are active (`IndexConfig::route_delay`).
                .chain(held_routes.iter().map(|vhost| {
                    ConfigPatch::remove("VIRTUAL_HOST", PatchMatch::sidecar_virtual_host(vhost))
                }))
                .collect(),
        },
    }
}

/// `labels` minus the per-pod/per-revision ones.
pub fn selector_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| !STRIPPED_LABELS.contains(k))
        .collect()
}

fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.is_subset_of(labels)
}

/// One Sidecar per opted-in workload, or a refusal saying why not.
pub fn desired(index: &Index, config: &RenderConfig) -> Desired {
    let mut out = Desired::default();
    let root_default = namespace_default(index, ROOT_NAMESPACE);
    let always = always_visible(index, config);
    for ns in index.namespace_names() {
        let views = index.views_in(ns);
        let ns_enabled = index.namespace_annotations(ns).and_then(|a| a.enabled);
        let ns_pins = index
            .namespace_annotations(ns)
            .map(|a| a.pins.clone())
            .unwrap_or_default();
        let default = namespace_default(index, ns).or(root_default);
        let user_sidecars: Vec<&SidecarObject> = index
            .ns(ns)
            .map(|s| {
                s.sidecars
                    .values()
                    .filter(|s| !s.is_ours() && s.selector.is_some())
                    .collect()
            })
            .unwrap_or_default();
        let label_sets = LabelSets::new(&views);
        for view in views.values() {
            if !view.enabled.or(ns_enabled).unwrap_or(false) {
                continue;
            }
            let ctx = Context {
                index,
                config,
                default,
                user_sidecars: &user_sidecars,
                label_sets: &label_sets,
                always: &always,
                ns_pins: &ns_pins,
            };
            match ctx.render(view) {
                // No pods (scaled to zero, a CronJob between runs) and nothing learned: a
                // Sidecar would only select nothing. One with learned deps is kept: it is
                // where they survive a restart of the controller.
                Ok(_)
                    if view.pods.is_empty()
                        && index
                            .workload_deps(&view.id)
                            .is_none_or(|d| d.deps.is_empty()) => {}
                Ok((sidecar, held_routes)) => {
                    if index.workload_deps(&view.id).is_some_and(|d| d.over_cap) {
                        out.capped.push(Capped {
                            workload: view.id.clone(),
                            cap: index.config().max_deps_per_workload,
                        });
                    }
                    let key = (
                        sidecar.metadata.namespace.clone(),
                        sidecar.metadata.name.clone(),
                    );
                    out.catch_alls.insert(
                        key.clone(),
                        compact(&catch_all_filter(&sidecar, config, &held_routes)),
                    );
                    out.sidecars.insert(key, compact(&sidecar));
                }
                Err(reason) => out.refusals.push(Refusal {
                    workload: view.id.clone(),
                    reason,
                }),
            }
        }
    }
    out
}

/// The outbound traffic policy a namespace's workloads have without lazyxds: their
/// namespace default Sidecar's, else the root namespace's, else the mesh's. What the lazy
/// gateway enforces for them on hosts the mesh does not know.
pub fn outbound_policy(index: &Index, namespace: &str, config: &RenderConfig) -> OutboundPolicy {
    let default =
        namespace_default(index, namespace).or_else(|| namespace_default(index, ROOT_NAMESPACE));
    policy_of(default, index, config)
}

/// The mesh's outbound policy: Istio's mesh config when it sets one, else the configured.
pub fn mesh_policy(index: &Index, config: &RenderConfig) -> OutboundPolicy {
    index.mesh_policy().unwrap_or(config.mesh_outbound_policy)
}

fn policy_of(
    default: Option<&SidecarObject>,
    index: &Index,
    config: &RenderConfig,
) -> OutboundPolicy {
    default
        .and_then(|d| d.spec.pointer("/outboundTrafficPolicy/mode"))
        .and_then(|m| m.as_str())
        .and_then(OutboundPolicy::parse)
        .unwrap_or_else(|| mesh_policy(index, config))
}

/// A namespace's selector-less user Sidecar (the first by name: Istio leaves several
/// undefined).
fn namespace_default<'a>(index: &'a Index, ns: &str) -> Option<&'a SidecarObject> {
    index
        .ns(ns)?
        .sidecars
        .values()
        .find(|s| !s.is_ours() && s.selector.is_none())
}

/// The label sets present in a namespace (pods' labels, templates' labels) with their
/// workload, indexed by label so overlap checks do not scan every pod per workload.
struct LabelSets<'a> {
    sets: Vec<(&'a WorkloadId, &'a Labels)>,
    by_label: BTreeMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> LabelSets<'a> {
    fn new(views: &'a BTreeMap<WorkloadId, WorkloadView<'a>>) -> Self {
        let mut sets = Vec::new();
        for view in views.values() {
            if let Some(object) = view.object {
                sets.push((&view.id, &object.template_labels));
            }
            sets.extend(view.pods.iter().map(|p| (&view.id, &*p.labels)));
        }
        let mut by_label: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        for (i, (_, labels)) in sets.iter().enumerate() {
            for (k, v) in labels.iter() {
                by_label.entry((k, v)).or_default().push(i);
            }
        }
        LabelSets { sets, by_label }
    }

    /// The first other workload with a label set the selector matches.
    fn other_selected(&self, selector: &Labels, own: &WorkloadId) -> Option<&'a WorkloadId> {
        let candidates = selector
            .iter()
            .map(|(k, v)| self.by_label.get(&(k, v)).map_or(&[][..], Vec::as_slice))
            .min_by_key(|c| c.len())?;
        candidates
            .iter()
            .filter_map(|&i| self.sets.get(i).copied())
            .find(|(id, labels)| *id != own && selects(selector, labels))
            .map(|(id, _)| id)
    }
}

struct Context<'a> {
    index: &'a Index,
    config: &'a RenderConfig,
    default: Option<&'a SidecarObject>,
    user_sidecars: &'a [&'a SidecarObject],
    label_sets: &'a LabelSets<'a>,
    always: &'a [AlwaysVisible<'a>],
    ns_pins: &'a [Pin],
}

impl Context<'_> {
    /// The workload's Sidecar, and the virtual hosts its catch-all EnvoyFilter holds back
    /// (new deps the Sidecar did not list anyway).
    fn render(&self, view: &WorkloadView<'_>) -> Result<(Sidecar, Vec<String>), RefusalReason> {
        let ns = &*view.id.namespace;
        if ns == ROOT_NAMESPACE || ns == self.config.gateway_namespace {
            return Err(RefusalReason::ExcludedNamespace {
                namespace: ns.to_string(),
            });
        }
        if !self.index.is_discovered(&self.config.gateway_namespace) {
            return Err(RefusalReason::GatewayNotDiscovered {
                namespace: self.config.gateway_namespace.clone(),
            });
        }
        let selector = selector_labels(&view.labels);
        if selector.is_empty() {
            return Err(RefusalReason::EmptySelector);
        }
        if let Some(other) = self.label_sets.other_selected(&selector, &view.id) {
            return Err(RefusalReason::SelectsOtherWorkload {
                other: other.clone(),
            });
        }
        let own_labels = view
            .object
            .map(|o| &o.template_labels)
            .into_iter()
            .chain(view.pods.iter().map(|p| &*p.labels));
        let own_labels: Vec<&Labels> = own_labels.collect();
        for user in self.user_sidecars {
            let Some(user_selector) = &user.selector else {
                continue;
            };
            if own_labels.iter().any(|l| selects(user_selector, l)) {
                return Err(RefusalReason::UserSidecar {
                    name: user.name.to_string(),
                });
            }
        }
        if let Some(shadow) = destination_rule::shadowing_gateway(
            self.index,
            ns,
            &own_labels,
            &self.config.gateway_host,
            self.config.egress_proxy_port,
        ) {
            return Err(RefusalReason::GatewayDestinationRule(shadow));
        }

        // Learned deps are capped where they are stored (the index stops adding at
        // `max_hosts`, never drops one): over the cap a Sidecar keeps what it has. Only
        // the hosts it must list anyway are held to the cap here.
        let mut hosts = self.required_hosts(view);
        if hosts.len() > self.config.max_hosts_per_sidecar {
            return Err(RefusalReason::HostCap {
                cap: self.config.max_hosts_per_sidecar,
                hosts: hosts.len(),
            });
        }
        let deps = self.index.deps(&view.id);
        let held_routes = self
            .index
            .held_route_names(&view.id, |dep| !self.already_listed(&hosts, dep, ns));
        hosts.extend(self.dep_hosts(&deps));

        let default_spec = self.default.map(|d| &d.spec);
        let policy = policy_of(self.default, self.index, self.config);
        let copied = default_spec
            .and_then(|s| s.as_object())
            .map(|spec| {
                spec.iter()
                    .filter(|(k, _)| {
                        !matches!(
                            k.as_str(),
                            "workloadSelector" | "egress" | "outboundTrafficPolicy"
                        )
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let deps_json: BTreeMap<&str, u64> = deps.iter().map(|(h, t)| (&**h, *t)).collect();
        let mut annotations = BTreeMap::from([
            (
                ANNOTATION_DEPS.to_string(),
                // A map of strings to integers always serializes.
                serde_json::to_string(&deps_json).unwrap_or_default(),
            ),
            (
                ANNOTATION_OUTBOUND_POLICY.to_string(),
                policy.as_str().to_string(),
            ),
            (
                ANNOTATION_WORKLOAD.to_string(),
                format!("{}/{}", view.id.kind, view.id.name),
            ),
        ]);
        if view.pods.is_empty() {
            // Selecting no pod is what `istioctl analyze` reports (sidecar.SelectorAnalyzer).
            annotations.insert(
                crate::istio::ANALYZE_SUPPRESS.to_string(),
                crate::istio::ANALYZE_SELECTS_NOTHING.to_string(),
            );
        }
        let sidecar = Sidecar {
            api_version: NETWORKING_API.to_string(),
            kind: SIDECAR.to_string(),
            metadata: Metadata {
                annotations,
                ..Metadata::ours(sidecar_name(&view.id), ns)
            },
            spec: SidecarSpec {
                workload_selector: Some(WorkloadSelector { labels: selector }),
                copied,
                egress: vec![EgressListener {
                    hosts: hosts.into_iter().collect(),
                }],
                // The workload's own policy: unknown TCP and TLS go where they went
                // without lazyxds (PassthroughCluster or BlackHoleCluster).
                outbound_traffic_policy: Some(OutboundTrafficPolicy { mode: policy }),
            },
        };
        Ok((sidecar, held_routes))
    }

    /// Whether the egress hosts `listed` (`ns/host`, `ns/*`, `*/host`, `./…`) already import
    /// `dep` into a sidecar of namespace `own_ns`: then its routes are live already and
    /// must not be held back. An entry of another form counts as listing it (holding back
    /// a live route would send its calls to the gateway).
    fn already_listed(&self, listed: &BTreeSet<String>, dep: &str, own_ns: &str) -> bool {
        let definers = self.defined_in(dep);
        listed.iter().any(|entry| {
            let Some((ns, host)) = entry.split_once('/') else {
                return true;
            };
            let ns = if ns == "." { own_ns } else { ns };
            let ns_matches = ns == "*" || definers.contains(&format!("{ns}/{dep}"));
            ns_matches && host::matches(host, dep)
        })
    }

    /// What every scoped Sidecar of the workload lists before any learned host.
    fn required_hosts(&self, view: &WorkloadView<'_>) -> BTreeSet<String> {
        let ns = &*view.id.namespace;
        let mut hosts = BTreeSet::from([
            format!("{ROOT_NAMESPACE}/*"),
            format!(
                "{}/{}",
                self.config.gateway_namespace, self.config.gateway_host
            ),
            // An HTTP route table per mesh port, whose catch-all goes to the gateway.
            placeholder_egress_host(self.config, &self.index.config().cluster_domain),
        ]);
        // A selector Sidecar does not merge with the namespace default: re-include it.
        if let Some(listeners) = self
            .default
            .and_then(|d| d.spec.get("egress"))
            .and_then(|e| e.as_array())
        {
            hosts.extend(
                listeners
                    .iter()
                    .filter_map(|l| l.get("hosts")?.as_array())
                    .flatten()
                    .filter_map(|h| h.as_str().map(str::to_string)),
            );
        }
        for always in self.always.iter().filter(|a| a.visible_from(ns)) {
            hosts.insert(always.egress_host.clone());
            // Its other definers too (a VirtualService for it elsewhere), as for a dep.
            hosts.extend(self.defined_in(&always.host));
        }
        hosts.extend(self.ns_pins.iter().chain(&view.pins).map(|p| p.to_string()));
        hosts
    }

    /// The egress hosts of learned deps: each in every namespace that defines it.
    fn dep_hosts(&self, deps: &BTreeMap<Arc<str>, u64>) -> BTreeSet<String> {
        let mut hosts = BTreeSet::new();
        for dep in deps.keys() {
            let namespaces = self.defined_in(dep);
            if namespaces.is_empty() {
                hosts.insert(format!("*/{dep}"));
            }
            hosts.extend(namespaces);
        }
        hosts
    }

    /// `ns/host` for every namespace with a Service, ServiceEntry or VirtualService
    /// defining `host`: a Sidecar imports each by its namespace.
    fn defined_in(&self, host: &str) -> BTreeSet<String> {
        self.index
            .hosts()
            .defs(host)
            .map(|defs| {
                defs.iter()
                    .map(|d| format!("{}/{host}", d.namespace))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
