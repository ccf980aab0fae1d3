//! Which hosts can never be lazy, and why: they stay in every scoped Sidecar they are
//! exported to, learned or not. A hidden host is reached only through the lazy gateway,
//! so a host is kept visible whenever a first call through the gateway would not do what
//! the caller's own sidecar does:
//!
//! - the gateway cannot carry it: a port Istio does not call HTTP;
//! - the gateway cannot route it: istiod does not show it to the gateway's namespace
//!   (exportTo, or the mesh's default exportTo), or its VirtualService delegates routes
//!   (the gateway does not reproduce delegated routes), or its VirtualService routes to
//!   such a host — a 503 for ever, so no edge is ever learned;
//! - the call would reach it as the gateway: an AuthorizationPolicy decides who may call
//!   its workloads, and would judge the gateway's identity and IP, not the caller's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use super::{RenderConfig, ROOT_NAMESPACE};
use crate::host;
use crate::index::Index;
use crate::objects::{AuthorizationAction, AuthorizationPolicy, Labels, NotLazyPort, Visibility};

/// A Service, ServiceEntry or VirtualService host that can never be lazy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlwaysVisible<'a> {
    /// The host (an FQDN, or a ServiceEntry/VirtualService wildcard).
    pub host: String,
    /// `ns/host`, as a Sidecar lists it.
    pub egress_host: String,
    pub owner: &'a str,
    /// Its exportTo as istiod applies it (the mesh default when it sets none; empty:
    /// everywhere).
    pub export_to: &'a [String],
    /// Every reason, at least one.
    pub why: Vec<WhyVisible>,
}

impl AlwaysVisible<'_> {
    /// Whether a workload in `namespace` sees it (and so keeps it).
    pub fn visible_from(&self, namespace: &str) -> bool {
        host::exported_to(self.export_to, self.owner, namespace)
    }
}

/// Why a host can never be lazy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhyVisible {
    /// One of its ports may not be HTTP ([`Protocol::may_be_lazy`]): through the gateway
    /// its traffic would hit an HTTP connection manager.
    ///
    /// [`Protocol::may_be_lazy`]: crate::objects::Protocol::may_be_lazy
    NotLazyPort(NotLazyPort),
    /// Its exportTo leaves out the gateway's namespace: istiod gives the gateway no
    /// cluster or route for it.
    HiddenFromGateway {
        /// `Service shop/vault`, `VirtualService shop/reviews`, ...
        object: String,
        export_to: Vec<String>,
        /// The mesh setting it came from when the object sets none
        /// (`defaultServiceExportTo`, `defaultVirtualServiceExportTo`).
        mesh_default: Option<&'static str>,
        gateway_namespace: String,
    },
    /// Its VirtualService delegates routes to another VirtualService: the gateway does not
    /// reproduce delegated routes.
    Delegates {
        virtual_service: String,
        /// `ns/name` of the delegate.
        delegate: String,
    },
    /// An AuthorizationPolicy that decides access applies to its workloads: a first call
    /// through the gateway reaches them with the gateway's identity and IP.
    Authorized {
        /// `ns/name`.
        policy: String,
        action: AuthorizationAction,
        scope: PolicyScope,
    },
    /// Its VirtualService routes to a host the gateway cannot route or may not call as
    /// the caller.
    RoutesTo {
        virtual_service: String,
        destination: String,
        why: Box<WhyVisible>,
    },
    /// A headless Service: its pods are called by name (`pod-0.db.ns.svc.<domain>`), which
    /// only the caller's sidecar routes (to the pod asked for: `*.<host>` domains and an
    /// `ORIGINAL_DST` cluster, `httproute.go` `generateVirtualHostDomains`,
    /// `cluster.go` `convertResolution`); the gateway has neither.
    Headless,
    /// A VirtualService only some namespaces see routes it for their sidecars ahead of any
    /// public one (`push_context.go` `VirtualServicesForGateway`, `virtualservice.go`
    /// `SelectVirtualServices`: the namespace's private ones, then those exported to it,
    /// then public ones, each oldest first); the gateway routes every caller alike.
    NamespaceVirtualService {
        /// `ns/name`.
        virtual_service: String,
        export_to: Vec<String>,
    },
}

/// How an AuthorizationPolicy reaches a service's workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyScope {
    /// Its selector selects pods (or the pod template of a workload) the Service selects.
    Selector,
    /// No selector: every workload of its namespace.
    Namespace,
    /// No selector, in the root namespace: every workload of the mesh.
    Mesh,
    /// It has a selector, and the host's endpoints are not known (a Service without a
    /// selector, a ServiceEntry without a workloadSelector in the mesh's namespaces):
    /// they may be pods it selects.
    UnknownEndpoints,
}

impl WhyVisible {
    /// Whether a VirtualService routing to this host must stay visible too: yes when the
    /// gateway could not route it or would call it as itself; a port that is not HTTP
    /// does not matter to the VirtualService's HTTP routes.
    fn reaches_routes(&self) -> bool {
        !matches!(
            self,
            WhyVisible::NotLazyPort(_)
                | WhyVisible::Headless
                | WhyVisible::NamespaceVirtualService { .. }
        )
    }
}

impl fmt::Display for WhyVisible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhyVisible::NotLazyPort(port) => port.fmt(f),
            WhyVisible::HiddenFromGateway {
                object,
                export_to,
                mesh_default,
                gateway_namespace,
            } => {
                let list = export_to
                    .iter()
                    .map(|e| format!("{e:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                match mesh_default {
                    Some(setting) => write!(
                        f,
                        "{object} sets no exportTo and the mesh's {setting} [{list}] leaves \
                         out the gateway's namespace {gateway_namespace}"
                    ),
                    None => write!(
                        f,
                        "{object}'s exportTo [{list}] leaves out the gateway's namespace \
                         {gateway_namespace}"
                    ),
                }
            }
            WhyVisible::Delegates {
                virtual_service,
                delegate,
            } => write!(
                f,
                "{virtual_service} delegates routes to {delegate}, which the gateway does \
                 not reproduce"
            ),
            WhyVisible::Authorized {
                policy,
                action,
                scope,
            } => {
                let how = match scope {
                    PolicyScope::Selector => "selects its pods",
                    PolicyScope::Namespace => "applies to every workload of its namespace",
                    PolicyScope::Mesh => "applies to every workload of the mesh",
                    PolicyScope::UnknownEndpoints => "may select its endpoints (not known)",
                };
                write!(
                    f,
                    "AuthorizationPolicy {policy} ({}) {how}: a first call through the \
                     gateway would carry the gateway's identity",
                    action.as_str()
                )
            }
            WhyVisible::RoutesTo {
                virtual_service,
                destination,
                why,
            } => write!(f, "{virtual_service} routes to {destination}: {why}"),
            WhyVisible::Headless => {
                f.write_str("headless: its pods' own names route only through the caller's sidecar")
            }
            WhyVisible::NamespaceVirtualService {
                virtual_service,
                export_to,
            } => write!(
                f,
                "VirtualService {virtual_service} routes it only for the namespaces of its \
                 exportTo {export_to:?}, ahead of public ones: the gateway routes every \
                 caller alike"
            ),
        }
    }
}

/// Every host that can never be lazy, by owner namespace and name; Services and
/// ServiceEntries first, then VirtualServices. Namespaces istiod does not watch
/// (`discoverySelectors`) are left out: no proxy sees anything there.
pub fn always_visible<'a>(index: &'a Index, config: &RenderConfig) -> Vec<AlwaysVisible<'a>> {
    let domain = &index.config().cluster_domain;
    let root = index.mesh_root_namespace().unwrap_or(ROOT_NAMESPACE);
    let gateway_ns = config.gateway_namespace.as_str();
    let namespaces: Vec<&Arc<str>> = index
        .namespace_names()
        .into_iter()
        // Already whole in every Sidecar (`istio-system/*`).
        .filter(|ns| &***ns != ROOT_NAMESPACE && index.is_discovered(ns))
        .collect();
    let mut hosts = Vec::new();
    for ns in &namespaces {
        let Some(state) = index.ns(ns) else { continue };
        let guards = Guards::new(index, root, ns);
        for svc in state.services.values() {
            let export_to = index.service_export_to(&svc.export_to);
            let mut why: Vec<WhyVisible> = svc
                .not_lazy_port()
                .into_iter()
                .map(WhyVisible::NotLazyPort)
                .collect();
            why.extend(hidden_from_gateway(
                || format!("Service {ns}/{}", svc.name),
                &svc.export_to,
                export_to,
                "defaultServiceExportTo",
                ns,
                gateway_ns,
            ));
            why.extend(guards.protecting(svc.selector.as_ref()));
            if svc.headless {
                why.push(WhyVisible::Headless);
            }
            if !why.is_empty() {
                let host = svc.host(domain);
                hosts.push(AlwaysVisible {
                    egress_host: format!("{ns}/{host}"),
                    host,
                    owner: ns,
                    export_to,
                    why,
                });
            }
        }
        for se in state.service_entries.values() {
            let export_to = index.service_export_to(&se.export_to);
            let mut why: Vec<WhyVisible> = se
                .not_lazy_port()
                .into_iter()
                .map(WhyVisible::NotLazyPort)
                .collect();
            why.extend(hidden_from_gateway(
                || format!("ServiceEntry {ns}/{}", se.name),
                &se.export_to,
                export_to,
                "defaultServiceExportTo",
                ns,
                gateway_ns,
            ));
            // Only a workloadSelector puts its endpoints in the mesh; listed or DNS
            // endpoints are outside it (or, as IPs, unknown here: see the README).
            if let Some(selector) = &se.workload_selector {
                why.extend(guards.protecting(Some(selector)));
            }
            if why.is_empty() {
                continue;
            }
            for h in &se.hosts {
                let host = host::resolve_config_host(h, ns, domain);
                hosts.push(AlwaysVisible {
                    egress_host: format!("{ns}/{host}"),
                    host,
                    owner: ns,
                    export_to,
                    why: why.clone(),
                });
            }
        }
    }
    // A VirtualService routing to any of those keeps its own hosts visible: the caller
    // asks for the VirtualService's host, and the gateway would route it there.
    let mut reasons_by_host: BTreeMap<&str, &WhyVisible> = BTreeMap::new();
    for a in &hosts {
        if let Some(why) = a.why.iter().find(|w| w.reaches_routes()) {
            reasons_by_host.entry(a.host.as_str()).or_insert(why);
        }
    }
    let mut routed = Vec::new();
    for ns in &namespaces {
        let Some(state) = index.ns(ns) else { continue };
        for vs in state
            .virtual_services
            .values()
            .filter(|v| v.applies_to_mesh())
        {
            let object = || format!("VirtualService {ns}/{}", vs.name);
            let export_to = index.virtual_service_export_to(&vs.export_to);
            let mut why: Vec<WhyVisible> = hidden_from_gateway(
                object,
                &vs.export_to,
                export_to,
                "defaultVirtualServiceExportTo",
                ns,
                gateway_ns,
            )
            .into_iter()
            .collect();
            why.extend(vs.http.iter().find_map(|route| {
                let delegate = route.get("delegate")?;
                let name = delegate.get("name")?.as_str()?;
                let namespace = delegate
                    .get("namespace")
                    .and_then(|n| n.as_str())
                    .unwrap_or(ns);
                Some(WhyVisible::Delegates {
                    virtual_service: object(),
                    delegate: format!("{namespace}/{name}"),
                })
            }));
            why.extend(vs.destinations.iter().find_map(|d| {
                let destination = host::resolve_config_host(d, ns, domain);
                let inner = reasons_by_host.get(destination.as_str())?;
                Some(WhyVisible::RoutesTo {
                    virtual_service: object(),
                    destination,
                    why: Box::new((*inner).clone()),
                })
            }));
            if why.is_empty() {
                continue;
            }
            for h in &vs.hosts {
                let host = host::resolve_config_host(h, ns, domain);
                routed.push(AlwaysVisible {
                    egress_host: format!("{ns}/{host}"),
                    host,
                    owner: ns,
                    export_to,
                    why: why.clone(),
                });
            }
        }
    }
    hosts.extend(routed);
    hosts.extend(namespace_virtual_service_hosts(index, &namespaces));
    hosts
}

/// The hosts of VirtualServices only some namespaces see (and, for a wildcard host, every
/// concrete mesh host it covers): kept visible to those namespaces.
fn namespace_virtual_service_hosts<'a>(
    index: &'a Index,
    namespaces: &[&'a Arc<str>],
) -> Vec<AlwaysVisible<'a>> {
    let domain = &index.config().cluster_domain;
    let namespace_only = |ns: &&Arc<str>| {
        index.ns(ns).into_iter().flat_map(|state| {
            state
                .virtual_services
                .values()
                .filter(|vs| vs.applies_to_mesh() && vs.visibility() == Visibility::Namespaces)
        })
    };
    // Every concrete mesh host, only when a wildcard needs them (rare).
    let mut concrete = BTreeSet::new();
    if namespaces
        .iter()
        .flat_map(namespace_only)
        .any(|vs| vs.hosts.iter().any(|h| h.starts_with('*')))
    {
        for ns in namespaces {
            let Some(state) = index.ns(ns) else { continue };
            concrete.extend(state.services.values().map(|s| s.host(domain)));
            for se in state.service_entries.values() {
                concrete.extend(
                    se.hosts
                        .iter()
                        .map(|h| host::resolve_config_host(h, ns, domain))
                        .filter(|h| !h.contains('*')),
                );
            }
        }
    }
    let mut out = Vec::new();
    for ns in namespaces {
        for vs in namespace_only(ns) {
            let why = WhyVisible::NamespaceVirtualService {
                virtual_service: format!("{ns}/{}", vs.name),
                export_to: vs.export_to.clone(),
            };
            for h in &vs.hosts {
                let pattern = host::resolve_config_host(h, ns, domain);
                // A wildcard keeps itself (its own namespace's definers) and every host
                // it covers (their Services' namespaces).
                let covered = concrete
                    .iter()
                    .filter(|c| pattern.starts_with('*') && host::matches(&pattern, c))
                    .cloned();
                for host in std::iter::once(pattern.clone()).chain(covered) {
                    out.push(AlwaysVisible {
                        egress_host: format!("{ns}/{host}"),
                        host,
                        owner: ns,
                        export_to: &vs.export_to,
                        why: vec![why.clone()],
                    });
                }
            }
        }
    }
    out
}

/// Why an object is hidden from the gateway, if it is: its exportTo as istiod applies it
/// (`effective`: its own, else the mesh's `setting`) leaves out the gateway's namespace
/// (`push_context.go` `IsServiceVisible` for services, `initVirtualServices` for
/// VirtualServices: `*`, `.` for its own namespace, `~` for none, or names).
fn hidden_from_gateway(
    object: impl FnOnce() -> String,
    declared: &[String],
    effective: &[String],
    setting: &'static str,
    owner: &str,
    gateway_namespace: &str,
) -> Option<WhyVisible> {
    if host::exported_to(effective, owner, gateway_namespace) {
        return None;
    }
    Some(WhyVisible::HiddenFromGateway {
        object: object(),
        export_to: effective.to_vec(),
        mesh_default: declared.is_empty().then_some(setting),
        gateway_namespace: gateway_namespace.to_string(),
    })
}

/// The AuthorizationPolicies that may apply to the workloads of one namespace: those
/// deciding access (not AUDIT), without a targetRef, in it or in the root namespace
/// (`pilot/pkg/model/authorization.go` `ListAuthorizationPolicies`), the root's first.
struct Guards<'a> {
    /// The namespace's and the root's, root first, each by name.
    policies: Vec<&'a AuthorizationPolicy>,
    root: &'a str,
    namespace: &'a str,
    /// The label sets of the namespace's pods (only when a policy has a selector), each
    /// with the policies that select it.
    selected: Vec<(&'a Labels, Vec<&'a AuthorizationPolicy>)>,
    /// The namespace's pod templates (only when a policy has a selector): see
    /// [`may_be_selected`].
    templates: Vec<&'a Labels>,
}

impl<'a> Guards<'a> {
    fn new(index: &'a Index, root: &'a str, namespace: &'a str) -> Self {
        let mut in_scope: Vec<&str> = vec![root];
        if namespace != root {
            in_scope.push(namespace);
        }
        let policies: Vec<&AuthorizationPolicy> = in_scope
            .into_iter()
            .filter_map(|ns| index.ns(ns))
            .flat_map(|s| s.authorization_policies.values())
            .filter(|p| p.action.decides_access() && p.applies_in(root, namespace))
            .collect();
        let mut selected = Vec::new();
        let mut templates = Vec::new();
        if policies.iter().any(|p| !p.is_namespace_wide()) {
            if let Some(state) = index.ns(namespace) {
                templates = state
                    .workloads
                    .values()
                    .map(|w| &w.template_labels)
                    .collect();
                // Pods share one copy of each label set: one entry per copy.
                let mut seen = BTreeSet::new();
                let pods = state
                    .pods
                    .values()
                    .filter(|p| seen.insert(Arc::as_ptr(&p.labels)))
                    .map(|p| &*p.labels);
                for labels in pods {
                    let by: Vec<&AuthorizationPolicy> = policies
                        .iter()
                        .copied()
                        .filter(|p| !p.is_namespace_wide() && p.applies_to(root, namespace, labels))
                        .collect();
                    if !by.is_empty() {
                        selected.push((labels, by));
                    }
                }
            }
        }
        Guards {
            policies,
            root,
            namespace,
            selected,
            templates,
        }
    }

    /// The first policy deciding who may call the workloads a selector selects (`None`:
    /// endpoints not known), if any.
    fn protecting(&self, selector: Option<&Labels>) -> Option<WhyVisible> {
        let why = |p: &AuthorizationPolicy, scope| WhyVisible::Authorized {
            policy: format!("{}/{}", p.namespace, p.name),
            action: p.action,
            scope,
        };
        for p in &self.policies {
            if p.is_namespace_wide() {
                let scope = if &*p.namespace == self.root && self.namespace != self.root {
                    PolicyScope::Mesh
                } else {
                    PolicyScope::Namespace
                };
                return Some(why(p, scope));
            }
        }
        // A Service without a selector selects no pod (Kubernetes: no endpoints managed).
        let Some(selector) = selector.filter(|s| !s.is_empty()) else {
            return self
                .policies
                .first()
                .map(|p| why(p, PolicyScope::UnknownEndpoints));
        };
        let by_labels = self
            .selected
            .iter()
            .filter(|(labels, _)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .flat_map(|(_, by)| by.iter().copied());
        // A template whose pods become endpoints once they get the selector's other labels
        // at run time (the controller's leader label): judged as template plus selector,
        // so the answer does not flip with whichever pod holds the label right now (a flip
        // rewrites every Sidecar that sees the Service).
        let by_templates = self
            .templates
            .iter()
            .filter(|template| may_be_selected(template, selector))
            .flat_map(|template| {
                let label = |k: &str| template.get(k).or_else(|| selector.get(k));
                self.policies.iter().copied().filter(move |p| {
                    !p.is_namespace_wide()
                        && p.applies_to_labelled(self.root, self.namespace, label)
                })
            });
        by_labels
            .chain(by_templates)
            .min_by_key(|p| self.policies.iter().position(|q| std::ptr::eq(*q, *p)))
            .map(|p| why(p, PolicyScope::Selector))
    }
}

/// Whether pods of `template` can be endpoints of a Service `selector`: the template has
/// at least one of its keys and agrees on every one it has; the others a pod may get at
/// run time. Such a pod's labels are then the template's plus the selector's.
fn may_be_selected(template: &Labels, selector: &Labels) -> bool {
    let mut shares_one = false;
    for (k, v) in selector {
        match template.get(k) {
            Some(have) if have != v => return false,
            Some(_) => shares_one = true,
            None => {}
        }
    }
    shares_one
}

#[cfg(test)]
mod tests;
