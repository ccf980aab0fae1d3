//! The controller's permissions: exactly the API calls `lazyxds run --kube` makes.
//!
//! `controller/tests/install.rs` runs the real binary, with the rendered Deployment's
//! arguments and environment, against the fake API server and compares its request log
//! with these rules: a call they do not allow, or a rule no call needs, fails the test.

/// One RBAC rule: these verbs on these resources of one API group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Only these objects (empty: any). Kubernetes cannot restrict `create` by name, and
    /// restricts `list`/`watch` only for requests selecting `metadata.name`.
    pub names: &'static [&'static str],
    /// Why the controller needs it (rendered nowhere; for readers and reviews).
    pub why: &'static str,
}

/// Cluster-wide (ClusterRole): the watches that feed the index, and the Sidecars it keeps.
pub const CLUSTER_RULES: &[Rule] = &[
    Rule {
        group: "",
        resources: &["namespaces", "pods", "services"],
        verbs: &["list", "watch"],
        names: &[],
        why: "opt-in annotations, pod IPs and owners, service ports and protocols",
    },
    Rule {
        group: "apps",
        resources: &["daemonsets", "deployments", "replicasets", "statefulsets"],
        verbs: &["list", "watch"],
        names: &[],
        why: "the workloads pods belong to (selectors, opt-in annotations)",
    },
    Rule {
        group: "batch",
        resources: &["cronjobs", "jobs"],
        verbs: &["list", "watch"],
        names: &[],
        why: "the workloads pods belong to",
    },
    Rule {
        group: "networking.istio.io",
        resources: &["destinationrules", "serviceentries", "virtualservices"],
        verbs: &["list", "watch"],
        names: &[],
        why: "hosts outside Services, VirtualService hosts to list instead of their targets \
              (and their routes, for the gateway), DestinationRules that would take the \
              gateway's place for a caller",
    },
    Rule {
        group: "security.istio.io",
        resources: &["authorizationpolicies"],
        verbs: &["list", "watch"],
        names: &[],
        why: "services an AuthorizationPolicy guards stay visible: a first call through the \
              gateway would carry the gateway's identity",
    },
    Rule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create"],
        names: &[],
        why: "Events on workloads it scopes or refuses (each created once, never patched)",
    },
    Rule {
        group: "networking.istio.io",
        resources: &["sidecars"],
        verbs: &["create", "delete", "list", "patch", "watch"],
        names: &[],
        why: "user Sidecars (defaults to copy, collisions to avoid) and ours: server-side \
              apply (patch; `create` too when it creates, the API server checks both) and \
              delete",
    },
    Rule {
        group: "networking.istio.io",
        resources: &["envoyfilters"],
        verbs: &["create", "delete", "list", "patch", "watch"],
        names: &[],
        why: "each scoped workload's catch-all EnvoyFilter (its unknown HTTP to the \
              gateway), written and deleted with its Sidecar; all are watched so a name \
              taken by someone else's is never written",
    },
];

pub use lazyxds_index::objects::LEADER_LEASE;

/// In the controller's own namespace only (Role): leader election and the kill switch.
pub const NAMESPACE_RULES: &[Rule] = &[
    Rule {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["create"],
        names: &[],
        why: "leader election: the first replica creates the Lease",
    },
    Rule {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "patch"],
        names: &[LEADER_LEASE],
        why: "leader election: one replica writes",
    },
    Rule {
        group: "",
        resources: &["pods"],
        verbs: &["patch"],
        names: &[],
        why: "the leader labels its pod (the gRPC Service selects it) and clears stale labels",
    },
    Rule {
        group: "",
        resources: &["services"],
        verbs: &["patch"],
        names: &[lazyxds_index::gateway::PLACEHOLDER_SERVICE],
        why: "the gateway's placeholder Service carries every HTTP port of the mesh (server-side apply)",
    },
    Rule {
        group: "",
        resources: &["services"],
        verbs: &["create"],
        names: &[],
        why: "the first apply of the placeholder Service creates it (Kubernetes cannot \
              restrict `create` by name; this namespace holds only lazyxds)",
    },
    Rule {
        group: "networking.istio.io",
        resources: &["virtualservices"],
        verbs: &["create", "delete", "patch"],
        names: &[],
        why: "the gateway's per-host routes (server-side apply; stale ones deleted); \
              the gateway runs in the controller's namespace; an apply that creates is \
              also a `create`",
    },
    Rule {
        group: "",
        resources: &["configmaps"],
        verbs: &["list", "watch"],
        names: &[lazyxds_index::objects::KILL_SWITCH_CONFIGMAP],
        why: "the kill switch: `enabled: \"false\"` deletes every Sidecar we own",
    },
];

/// Istio's mesh config (discoverySelectors, outboundTrafficPolicy), read from Istio's root
/// namespace: a Role there.
pub use lazyxds_index::objects::MESH_CONFIG_NAMESPACE;

pub const MESH_CONFIG_RULES: &[Rule] = &[Rule {
    group: "",
    resources: &["configmaps"],
    verbs: &["list", "watch"],
    names: &[lazyxds_index::objects::MESH_CONFIGMAP],
    why: "Istio's mesh config: which namespaces Istio ignores, the mesh outbound policy",
}];

/// Every (group, resource, verb, names) the rules grant.
pub fn grants(rules: &[Rule]) -> Vec<(String, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for r in rules {
        for res in r.resources {
            for v in r.verbs {
                out.push((
                    r.group.to_string(),
                    res.to_string(),
                    v.to_string(),
                    r.names.iter().map(|n| n.to_string()).collect(),
                ));
            }
        }
    }
    out.sort();
    out
}
