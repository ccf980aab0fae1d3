//! The kinds the server knows (kind ↔ plural, scope, served versions). Any other
//! group/resource is served too; its kind is learned from the objects written to it (or
//! guessed from the plural until then) and its scope from the URLs used.

use std::collections::BTreeMap;

/// What the server knows about one resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group, `""` for core.
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    /// `Pod`, `Sidecar`, …
    pub kind: String,
    /// `pods`, `sidecars`, … (the URL segment).
    pub plural: String,
    /// `Some(true)` namespaced, `Some(false)` cluster-scoped, `None` not known yet (an
    /// unregistered resource: the scope of each request is taken from its URL).
    pub namespaced: Option<bool>,
    /// The kind was guessed from the plural (no object of this resource seen yet).
    pub(crate) guessed: bool,
}

impl ResourceInfo {
    pub(crate) fn gr(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    /// `pods` or `sidecars.networking.istio.io`, as used in messages.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

pub(crate) fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// `networking.istio.io/v1` → (`networking.istio.io`, `v1`); `v1` → (``, `v1`).
pub(crate) fn split_api_version(av: &str) -> (String, String) {
    match av.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), av.to_string()),
    }
}

fn guess_plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if k.ends_with('s') || k.ends_with("ch") || k.ends_with("sh") || k.ends_with('x') {
        format!("{k}es")
    } else if let Some(stem) = k
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'o', 'u']))
    {
        format!("{stem}ies")
    } else {
        format!("{k}s")
    }
}

fn guess_kind(plural: &str) -> String {
    let singular = if let Some(stem) = plural.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = plural
        .strip_suffix("es")
        .filter(|s| s.ends_with('s') || s.ends_with("ch") || s.ends_with("sh") || s.ends_with('x'))
    {
        stem.to_string()
    } else {
        plural.strip_suffix('s').unwrap_or(plural).to_string()
    };
    let mut c = singular.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// (group, versions, kind, plural, namespaced)
const BUILTIN: &[(&str, &[&str], &str, &str, bool)] = &[
    ("", &["v1"], "Pod", "pods", true),
    ("", &["v1"], "Service", "services", true),
    ("", &["v1"], "Namespace", "namespaces", false),
    ("", &["v1"], "Node", "nodes", false),
    ("", &["v1"], "Endpoints", "endpoints", true),
    ("", &["v1"], "ConfigMap", "configmaps", true),
    ("", &["v1"], "Secret", "secrets", true),
    ("", &["v1"], "ServiceAccount", "serviceaccounts", true),
    ("", &["v1"], "Event", "events", true),
    ("apps", &["v1"], "Deployment", "deployments", true),
    ("apps", &["v1"], "ReplicaSet", "replicasets", true),
    ("apps", &["v1"], "StatefulSet", "statefulsets", true),
    ("apps", &["v1"], "DaemonSet", "daemonsets", true),
    (
        "apps",
        &["v1"],
        "ControllerRevision",
        "controllerrevisions",
        true,
    ),
    ("batch", &["v1"], "Job", "jobs", true),
    ("batch", &["v1"], "CronJob", "cronjobs", true),
    ("coordination.k8s.io", &["v1"], "Lease", "leases", true),
    ("events.k8s.io", &["v1"], "Event", "events", true),
    (
        "discovery.k8s.io",
        &["v1"],
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    (
        "policy",
        &["v1"],
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    ),
    ("rbac.authorization.k8s.io", &["v1"], "Role", "roles", true),
    (
        "rbac.authorization.k8s.io",
        &["v1"],
        "RoleBinding",
        "rolebindings",
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        &["v1"],
        "ClusterRole",
        "clusterroles",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        &["v1"],
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    (
        "apiextensions.k8s.io",
        &["v1"],
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    (
        "networking.istio.io",
        ISTIO_VERSIONS,
        "Sidecar",
        "sidecars",
        true,
    ),
    (
        "networking.istio.io",
        ISTIO_VERSIONS,
        "ServiceEntry",
        "serviceentries",
        true,
    ),
    (
        "networking.istio.io",
        ISTIO_VERSIONS,
        "VirtualService",
        "virtualservices",
        true,
    ),
    (
        "networking.istio.io",
        ISTIO_VERSIONS,
        "DestinationRule",
        "destinationrules",
        true,
    ),
    (
        "networking.istio.io",
        ISTIO_VERSIONS,
        "Gateway",
        "gateways",
        true,
    ),
    (
        "networking.istio.io",
        ISTIO_VERSIONS,
        "WorkloadEntry",
        "workloadentries",
        true,
    ),
    (
        "networking.istio.io",
        &["v1alpha3"],
        "EnvoyFilter",
        "envoyfilters",
        true,
    ),
    (
        "security.istio.io",
        &["v1", "v1beta1"],
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
    ),
];

#[derive(Clone, Debug)]
pub(crate) struct Registry {
    by_gr: BTreeMap<(String, String), ResourceInfo>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut r = Registry {
            by_gr: BTreeMap::new(),
        };
        for (group, versions, kind, plural, namespaced) in BUILTIN {
            r.register(ResourceInfo {
                group: group.to_string(),
                versions: versions.iter().map(|v| v.to_string()).collect(),
                kind: kind.to_string(),
                plural: plural.to_string(),
                namespaced: Some(*namespaced),
                guessed: false,
            });
        }
        r
    }
}

impl Registry {
    pub(crate) fn register(&mut self, info: ResourceInfo) {
        self.by_gr.insert(info.gr(), info);
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &ResourceInfo> {
        self.by_gr.values()
    }

    /// The resource served at `group/version/plural`, registering an unknown one.
    pub(crate) fn by_plural(&mut self, group: &str, version: &str, plural: &str) -> ResourceInfo {
        let info = self
            .by_gr
            .entry((group.to_string(), plural.to_string()))
            .or_insert_with(|| ResourceInfo {
                group: group.to_string(),
                versions: vec![version.to_string()],
                kind: guess_kind(plural),
                plural: plural.to_string(),
                namespaced: None,
                guessed: true,
            });
        if !info.versions.iter().any(|v| v == version) {
            info.versions.push(version.to_string());
        }
        info.clone()
    }

    /// The resource of objects with this apiVersion and kind, registering an unknown one.
    pub(crate) fn by_kind(&mut self, api_version: &str, kind: &str) -> ResourceInfo {
        let (group, version) = split_api_version(api_version);
        if let Some(info) = self
            .by_gr
            .values()
            .find(|i| i.group == group && i.kind == kind)
        {
            return info.clone();
        }
        let mut info = self.by_plural(&group, &version, &guess_plural(kind));
        self.learn_kind(&info.gr(), kind);
        info.kind = kind.to_string();
        info.guessed = false;
        info
    }

    /// An object of an unregistered resource told us its kind.
    pub(crate) fn learn_kind(&mut self, gr: &(String, String), kind: &str) {
        if let Some(info) = self.by_gr.get_mut(gr) {
            if info.guessed && !kind.is_empty() {
                info.kind = kind.to_string();
                info.guessed = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_plurals() {
        let mut r = Registry::default();
        assert_eq!(
            r.by_kind("networking.istio.io/v1", "ServiceEntry").plural,
            "serviceentries"
        );
        assert_eq!(r.by_plural("", "v1", "endpoints").kind, "Endpoints");
        assert_eq!(r.by_kind("example.com/v1", "Policy").plural, "policies");
        assert_eq!(r.by_kind("example.com/v1", "Gateway").plural, "gateways");
        assert_eq!(r.by_kind("example.com/v1", "Mesh").plural, "meshes");
        assert_eq!(r.by_plural("example.com", "v1", "policies").kind, "Policy");
        assert_eq!(r.by_plural("example.com", "v1", "widgets").kind, "Widget");
        assert_eq!(r.by_plural("example.com", "v1", "boxes").kind, "Box");
        assert_eq!(split_api_version("apps/v1"), ("apps".into(), "v1".into()));
    }
}
