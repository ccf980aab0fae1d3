//! Test builders (`mk_*`) and fixtures (`Type::test()`).

use std::net::IpAddr;
use std::sync::Arc;

use crate::desired::RenderConfig;
use crate::index::{Index, IndexConfig, ObservedEdge};
use crate::istio::OutboundPolicy;
use crate::objects::{
    Annotations, AuthorizationAction, AuthorizationPolicy, Job, Labels, Namespace, OwnerRef, Pod,
    ReplicaSet, Service, ServiceEntry, ServiceEntryPort, ServicePort, SidecarObject,
    VirtualService, WorkloadId, WorkloadKind, WorkloadObject,
};

pub const GATEWAY: &str = "lazyxds-gateway.lazyxds-system.svc.cluster.local";

pub fn mk_labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn mk_ip(ip: &str) -> IpAddr {
    ip.parse().expect("test IP")
}

pub fn mk_id(kind: WorkloadKind, ns: &str, name: &str) -> WorkloadId {
    WorkloadId::new(kind, ns, name)
}

pub fn mk_namespace(name: &str, enabled: Option<bool>) -> Namespace {
    Namespace {
        name: name.into(),
        labels: Labels::new(),
        annotations: Annotations {
            enabled,
            pins: Vec::new(),
        },
    }
}

/// A running pod with one IP, started at 0, service account `default`.
pub fn mk_pod(
    ns: &str,
    name: &str,
    ip: &str,
    owner: Option<(&str, &str)>,
    labels: &[(&str, &str)],
) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        ips: vec![mk_ip(ip)],
        host_network: false,
        service_account: "default".into(),
        labels: mk_labels(labels).into(),
        owner: owner.map(|(kind, name)| OwnerRef::new(kind, name)),
        annotations: Annotations::default(),
        start_time_unix_s: Some(0),
    }
}

pub fn mk_replica_set(ns: &str, name: &str, owner: Option<(&str, &str)>) -> ReplicaSet {
    ReplicaSet {
        namespace: ns.into(),
        name: name.into(),
        owner: owner.map(|(kind, name)| OwnerRef::new(kind, name)),
    }
}

pub fn mk_job(ns: &str, name: &str, owner: Option<(&str, &str)>) -> Job {
    Job {
        namespace: ns.into(),
        name: name.into(),
        owner: owner.map(|(kind, name)| OwnerRef::new(kind, name)),
    }
}

pub fn mk_workload(
    kind: WorkloadKind,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> WorkloadObject {
    WorkloadObject {
        kind,
        namespace: ns.into(),
        name: name.into(),
        template_labels: mk_labels(labels),
        annotations: Annotations::default(),
        template_annotations: Annotations::default(),
    }
}

/// Ports as `(port, name)`.
pub fn mk_service(
    ns: &str,
    name: &str,
    selector: &[(&str, &str)],
    ports: &[(u16, &str)],
) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        selector: Some(mk_labels(selector)),
        ports: ports
            .iter()
            .map(|(port, name)| ServicePort {
                port: *port,
                name: name.to_string(),
                protocol: "TCP".to_string(),
                app_protocol: None,
            })
            .collect(),
        export_to: Vec::new(),
        headless: false,
    }
}

/// Ports as `(number, protocol)`.
pub fn mk_service_entry(
    ns: &str,
    name: &str,
    hosts: &[&str],
    ports: &[(u16, &str)],
) -> ServiceEntry {
    ServiceEntry {
        namespace: ns.into(),
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ports: ports
            .iter()
            .map(|(number, protocol)| ServiceEntryPort {
                number: *number,
                name: protocol.to_ascii_lowercase(),
                protocol: protocol.to_string(),
            })
            .collect(),
        export_to: Vec::new(),
        workload_selector: None,
    }
}

pub fn mk_virtual_service(
    ns: &str,
    name: &str,
    hosts: &[&str],
    destinations: &[&str],
) -> VirtualService {
    VirtualService {
        namespace: ns.into(),
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        gateways: Vec::new(),
        destinations: destinations.iter().map(|h| h.to_string()).collect(),
        export_to: Vec::new(),
        http: Vec::new(),
        created_unix_s: None,
    }
}

/// An AuthorizationPolicy without targetRef; `selector: None`: namespace-wide.
pub fn mk_policy(
    ns: &str,
    name: &str,
    action: AuthorizationAction,
    selector: Option<&[(&str, &str)]>,
) -> AuthorizationPolicy {
    AuthorizationPolicy {
        namespace: ns.into(),
        name: name.into(),
        action,
        selector: selector.map(mk_labels),
        targeted: false,
    }
}

/// A user's Sidecar (not ours).
pub fn mk_user_sidecar(ns: &str, name: &str, spec: serde_json::Value) -> SidecarObject {
    SidecarObject::new(ns, name, Labels::new(), &Default::default(), spec).expect("user sidecar")
}

/// One of our Sidecars for `workload`, carrying `deps` in its annotation.
pub fn mk_our_sidecar(workload: &WorkloadId, deps: &[(&str, u64)]) -> SidecarObject {
    let deps: std::collections::BTreeMap<&str, u64> = deps.iter().copied().collect();
    let annotations = [
        (
            "lazyxds.io/workload".to_string(),
            format!("{}/{}", workload.kind, workload.name),
        ),
        (
            "lazyxds.io/deps".to_string(),
            serde_json::to_string(&deps).expect("json"),
        ),
    ]
    .into();
    SidecarObject::new(
        &workload.namespace,
        &crate::desired::sidecar_name(workload),
        mk_labels(&[("app.kubernetes.io/managed-by", "lazyxds")]),
        &annotations,
        serde_json::json!({}),
    )
    .expect("our sidecar")
}

pub fn mk_edge(ip: &str, host: Option<&str>, cluster: &str, last_seen: u64) -> ObservedEdge {
    ObservedEdge {
        source_ip: mk_ip(ip),
        host: host.map(Arc::from),
        cluster: cluster.into(),
        principal: None,
        requests: 1,
        last_seen_unix_s: last_seen,
    }
}

pub fn mk_outbound(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// A Deployment `name` (labels `app: name`) with a ReplicaSet and one pod at `ip`.
pub fn mk_deployment(index: &mut Index, ns: &str, name: &str, ip: &str) {
    let rs = format!("{name}-5d4f8");
    index.apply(mk_workload(
        WorkloadKind::Deployment,
        ns,
        name,
        &[("app", name)],
    ));
    index.apply(mk_replica_set(ns, &rs, Some(("Deployment", name))));
    index.apply(mk_pod(
        ns,
        &format!("{rs}-0"),
        ip,
        Some(("ReplicaSet", &rs)),
        &[("app", name), ("pod-template-hash", "5d4f8")],
    ));
}

impl RenderConfig {
    pub fn test() -> Self {
        RenderConfig {
            gateway_host: GATEWAY.to_string(),
            gateway_namespace: "lazyxds-system".to_string(),
            egress_proxy_port: 8080,
            gateway_selector: mk_labels(&[("istio", "lazyxds-gateway")]),
            mesh_outbound_policy: OutboundPolicy::AllowAny,
            max_hosts_per_sidecar: 1000,
        }
    }
}

impl Index {
    /// `shop` (opted in): Deployments productpage (10.0.0.10), reviews-v1 (10.0.0.11),
    /// reviews-v2 (10.0.0.12); Services productpage, reviews (both versions), reviews-v2,
    /// ratings (HTTP 9080), postgres (TCP only); VirtualService reviews → reviews-v2.
    /// `payments` (not opted in): Service payments (HTTP 9080).
    pub fn test() -> Self {
        Index::test_with(IndexConfig::default())
    }

    /// [`Index::test`]'s mesh with another config.
    pub fn test_with(config: IndexConfig) -> Self {
        let mut index = Index::new(config);
        index.apply(mk_namespace("shop", Some(true)));
        index.apply(mk_namespace("payments", None));
        mk_deployment(&mut index, "shop", "productpage", "10.0.0.10");
        for (name, version, ip) in [
            ("reviews-v1", "v1", "10.0.0.11"),
            ("reviews-v2", "v2", "10.0.0.12"),
        ] {
            let rs = format!("{name}-7c9b6");
            let labels = [("app", "reviews"), ("version", version)];
            index.apply(mk_workload(WorkloadKind::Deployment, "shop", name, &labels));
            index.apply(mk_replica_set("shop", &rs, Some(("Deployment", name))));
            index.apply(mk_pod(
                "shop",
                &format!("{rs}-0"),
                ip,
                Some(("ReplicaSet", &rs)),
                &[
                    ("app", "reviews"),
                    ("version", version),
                    ("pod-template-hash", "7c9b6"),
                ],
            ));
        }
        let http = [(9080, "http")];
        index.apply(mk_service(
            "shop",
            "productpage",
            &[("app", "productpage")],
            &http,
        ));
        index.apply(mk_service("shop", "reviews", &[("app", "reviews")], &http));
        index.apply(mk_service(
            "shop",
            "reviews-v2",
            &[("app", "reviews"), ("version", "v2")],
            &http,
        ));
        index.apply(mk_service("shop", "ratings", &[("app", "ratings")], &http));
        index.apply(mk_service(
            "shop",
            "postgres",
            &[("app", "postgres")],
            &[(5432, "tcp-postgres")],
        ));
        index.apply(mk_service(
            "payments",
            "payments",
            &[("app", "payments")],
            &http,
        ));
        index.apply(mk_virtual_service(
            "shop",
            "reviews",
            &["reviews"],
            &["reviews-v2"],
        ));
        index
    }
}

pub fn productpage() -> WorkloadId {
    mk_id(WorkloadKind::Deployment, "shop", "productpage")
}
