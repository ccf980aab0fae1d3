//! Kubernetes objects → the index's compact entries, as each watch event arrives. The
//! objects are dropped right after: no reflector stores (100k pods must stay cheap). The
//! numerous kinds come already slim ([`super::slim`]: only the fields used here).
//!
//! Pure: no I/O. An invalid lazyxds annotation does not drop the object; it is treated as
//! absent and reported through the returned warning, so the caller can count and log it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use lazyxds_index as index;
use lazyxds_index::{Annotations, WorkloadKind};
use serde_json::Value;

use super::slim::{MetaOnly, Pod, Templated};

/// A projected object plus what was wrong with it (an invalid annotation, ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct Projected<T> {
    pub value: T,
    pub warning: Option<String>,
}

fn name(meta: &ObjectMeta) -> Arc<str> {
    Arc::from(meta.name.as_deref().unwrap_or_default())
}

fn namespace(meta: &ObjectMeta) -> Arc<str> {
    Arc::from(meta.namespace.as_deref().unwrap_or_default())
}

fn labels(map: &Option<BTreeMap<String, String>>) -> index::Labels {
    map.as_ref().map(index::Labels::from).unwrap_or_default()
}

/// `ns/name` (or `name`) of an object, for messages.
pub fn describe(kind: &str, meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{kind} {ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => format!("{kind} {}", meta.name.as_deref().unwrap_or_default()),
    }
}

fn annotations(
    what: &str,
    map: &Option<BTreeMap<String, String>>,
    warning: &mut Option<String>,
) -> Annotations {
    let Some(map) = map else {
        return Annotations::default();
    };
    match Annotations::parse(what, map) {
        Ok(a) => a,
        Err(e) => {
            *warning = Some(e.to_string());
            Annotations::default()
        }
    }
}

/// The controlling owner reference (`controller: true`), else the first one.
fn owner(meta: &ObjectMeta) -> Option<index::OwnerRef> {
    let refs = meta.owner_references.as_ref()?;
    let r = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    Some(index::OwnerRef::new(&r.kind, &r.name))
}

pub fn namespace_entry(ns: &Namespace) -> Projected<index::Namespace> {
    let mut warning = None;
    let what = describe("Namespace", &ns.metadata);
    let value = index::Namespace {
        name: name(&ns.metadata),
        labels: labels(&ns.metadata.labels),
        annotations: annotations(&what, &ns.metadata.annotations, &mut warning),
    };
    Projected { value, warning }
}

pub fn pod_entry(pod: &Pod) -> Projected<index::Pod> {
    let mut warning = None;
    let what = describe("Pod", &pod.metadata);
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        if let Some(ip) = status
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
    }
    let spec = pod.spec.as_ref();
    let value = index::Pod {
        namespace: namespace(&pod.metadata),
        name: name(&pod.metadata),
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        service_account: Arc::from(
            spec.and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default"),
        ),
        labels: Arc::new(labels(&pod.metadata.labels)),
        owner: owner(&pod.metadata),
        annotations: annotations(&what, &pod.metadata.annotations, &mut warning),
        start_time_unix_s: status
            .and_then(|s| s.start_time.as_ref())
            .and_then(|t| u64::try_from(t.0.as_second()).ok()),
    };
    Projected { value, warning }
}

pub fn replica_set_entry(rs: &MetaOnly<ReplicaSet>) -> index::ReplicaSet {
    index::ReplicaSet {
        namespace: namespace(&rs.metadata),
        name: name(&rs.metadata),
        owner: owner(&rs.metadata),
    }
}

pub fn job_entry(job: &MetaOnly<Job>) -> index::Job {
    index::Job {
        namespace: namespace(&job.metadata),
        name: name(&job.metadata),
        owner: owner(&job.metadata),
    }
}

fn workload_entry<K>(kind: WorkloadKind, w: &Templated<K>) -> Projected<index::WorkloadObject> {
    let mut warning = None;
    let meta = &w.metadata;
    let what = describe(kind.as_str(), meta);
    let template_meta = w.template_meta();
    let value = index::WorkloadObject {
        kind,
        namespace: namespace(meta),
        name: name(meta),
        template_labels: labels(&template_meta.and_then(|m| m.labels.clone())),
        annotations: annotations(&what, &meta.annotations, &mut warning),
        template_annotations: annotations(
            &format!("{what} (pod template)"),
            &template_meta.and_then(|m| m.annotations.clone()),
            &mut warning,
        ),
    };
    Projected { value, warning }
}

pub fn deployment_entry(d: &Templated<Deployment>) -> Projected<index::WorkloadObject> {
    workload_entry(WorkloadKind::Deployment, d)
}

pub fn stateful_set_entry(s: &Templated<StatefulSet>) -> Projected<index::WorkloadObject> {
    workload_entry(WorkloadKind::StatefulSet, s)
}

pub fn daemon_set_entry(d: &Templated<DaemonSet>) -> Projected<index::WorkloadObject> {
    workload_entry(WorkloadKind::DaemonSet, d)
}

pub fn cron_job_entry(c: &Templated<CronJob>) -> Projected<index::WorkloadObject> {
    workload_entry(WorkloadKind::CronJob, c)
}

pub fn service_entry(svc: &Service) -> index::Service {
    let spec = svc.spec.as_ref();
    let export_to = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("networking.istio.io/exportTo"))
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    index::Service {
        namespace: namespace(&svc.metadata),
        name: name(&svc.metadata),
        selector: spec
            .and_then(|s| s.selector.clone())
            .map(|m| m.into_iter().collect()),
        ports: spec
            .and_then(|s| s.ports.as_ref())
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|p| {
                        Some(index::ServicePort {
                            port: u16::try_from(p.port).ok()?,
                            name: p.name.clone().unwrap_or_default(),
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            app_protocol: p.app_protocol.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        export_to,
        headless: spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `networking.istio.io` ServiceEntry.
pub fn istio_service_entry(obj: &DynamicObject) -> index::ServiceEntry {
    let spec = &obj.data["spec"];
    index::ServiceEntry {
        namespace: namespace(&obj.metadata),
        name: name(&obj.metadata),
        hosts: strings(&spec["hosts"]),
        ports: spec["ports"]
            .as_array()
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|p| {
                        Some(index::ServiceEntryPort {
                            number: u16::try_from(p["number"].as_u64()?).ok()?,
                            name: p["name"].as_str().unwrap_or_default().to_string(),
                            protocol: p["protocol"].as_str().unwrap_or_default().to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        export_to: strings(&spec["exportTo"]),
        workload_selector: labels_at(&spec["workloadSelector"]["labels"]),
    }
}

/// The string entries of a labels object; `None` when absent or empty.
fn labels_at(v: &Value) -> Option<index::Labels> {
    Some(index::objects::string_map(v))
        .filter(|l| !l.is_empty())
        .map(index::Labels::from)
}

/// `security.istio.io` AuthorizationPolicy: its action, selector and whether it has a
/// targetRef. An action Istio does not know is an error naming the policy (istiod ignores
/// such a policy; the CRD's schema refuses it before that).
pub fn istio_authorization_policy(
    obj: &DynamicObject,
) -> Result<index::AuthorizationPolicy, String> {
    let spec = &obj.data["spec"];
    let action = match spec["action"].as_str() {
        None => index::AuthorizationAction::Allow,
        Some(a) => index::AuthorizationAction::parse(a).ok_or_else(|| {
            format!(
                "{}: action {a:?} is not ALLOW, DENY, AUDIT or CUSTOM",
                describe("AuthorizationPolicy", &obj.metadata)
            )
        })?,
    };
    let has_refs = |v: &Value| match v {
        Value::Null => false,
        Value::Array(refs) => !refs.is_empty(),
        _ => true,
    };
    Ok(index::AuthorizationPolicy {
        namespace: namespace(&obj.metadata),
        name: name(&obj.metadata),
        action,
        selector: labels_at(&spec["selector"]["matchLabels"]),
        targeted: has_refs(&spec["targetRef"]) || has_refs(&spec["targetRefs"]),
    })
}

/// `networking.istio.io` VirtualService: hosts, gateways, every destination host, and the
/// HTTP routes when sidecars use it (the gateway reproduces those).
pub fn istio_virtual_service(obj: &DynamicObject) -> index::VirtualService {
    let spec = &obj.data["spec"];
    let mut destinations = Vec::new();
    for kind in ["http", "tcp", "tls"] {
        for route in spec[kind].as_array().into_iter().flatten() {
            for dest in route["route"].as_array().into_iter().flatten() {
                if let Some(host) = dest["destination"]["host"].as_str() {
                    if !destinations.iter().any(|d| d == host) {
                        destinations.push(host.to_string());
                    }
                }
            }
        }
    }
    let mut vs = index::VirtualService {
        namespace: namespace(&obj.metadata),
        name: name(&obj.metadata),
        hosts: strings(&spec["hosts"]),
        gateways: strings(&spec["gateways"]),
        destinations,
        export_to: strings(&spec["exportTo"]),
        http: Vec::new(),
        created_unix_s: obj
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| u64::try_from(t.0.as_second()).ok()),
    };
    // Only mesh VirtualServices have their routes reproduced on the gateway; ours (one per
    // mesh host, bound to the gateway) would otherwise keep every route twice.
    if vs.applies_to_mesh() {
        vs.http = spec["http"].as_array().cloned().unwrap_or_default();
    }
    vs
}

/// `networking.istio.io` DestinationRule: its host, exportTo, workloadSelector and what of
/// its traffic policy changes the connection (`DestinationRule::from_spec`).
pub fn istio_destination_rule(obj: &DynamicObject) -> index::DestinationRule {
    index::DestinationRule::from_spec(
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or_default(),
        &obj.data["spec"],
    )
}

/// `networking.istio.io` Sidecar (ours carry learned deps). An invalid annotation on one
/// of ours is an error: its learned deps could not be restored.
pub fn istio_sidecar(obj: &DynamicObject) -> Result<index::SidecarObject, String> {
    index::SidecarObject::new(
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or_default(),
        labels(&obj.metadata.labels),
        &obj.metadata.annotations.clone().unwrap_or_default(),
        obj.data["spec"].clone(),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pods_keep_what_the_index_needs() {
        let pod: Pod = from(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
                "annotations": {"lazyxds.io/enabled": "true"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "1"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9", "uid": "2", "controller": true}]},
            "spec": {"containers": [], "serviceAccountName": "web"},
            "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
                "startTime": "2026-11-26T10:00:00Z"}
        }));
        let got = pod_entry(&pod);
        assert_eq!(got.warning, None);
        assert_eq!(
            got.value,
            index::Pod {
                namespace: "shop".into(),
                name: "web-1".into(),
                ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                host_network: false,
                service_account: "web".into(),
                labels: Arc::new(
                    [("app".to_string(), "web".to_string())]
                        .into_iter()
                        .collect()
                ),
                owner: Some(index::OwnerRef::new("ReplicaSet", "web-5d9")),
                annotations: Annotations {
                    enabled: Some(true),
                    pins: vec![]
                },
                start_time_unix_s: Some(1_795_687_200),
            }
        );
    }

    #[test]
    fn an_invalid_annotation_is_ignored_with_a_warning() {
        let ns: Namespace = from(json!({"metadata": {"name": "shop",
            "annotations": {"lazyxds.io/enabled": "yes please"}}}));
        let got = namespace_entry(&ns);
        assert_eq!(got.value.annotations, Annotations::default());
        let warning = got.warning.unwrap();
        assert!(
            warning.contains("Namespace shop") && warning.contains("yes please"),
            "{warning}"
        );
    }

    #[test]
    fn pending_and_host_network_pods() {
        let pod: Pod = from(json!({"metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [], "hostNetwork": true}}));
        let got = pod_entry(&pod).value;
        assert!(got.ips.is_empty() && got.host_network);
        assert_eq!(&*got.service_account, "default");
    }

    #[test]
    fn workloads_take_their_pod_template() {
        let d: Templated<Deployment> =
            from(json!({"metadata": {"name": "web", "namespace": "shop",
                "annotations": {"lazyxds.io/pin": "shop/db.shop.svc.cluster.local"}},
            "spec": {"selector": {}, "template": {"metadata": {"labels": {"app": "web"},
                "annotations": {"lazyxds.io/enabled": "false"}}}}}));
        let got = deployment_entry(&d);
        assert_eq!(got.warning, None);
        assert_eq!(got.value.kind, WorkloadKind::Deployment);
        assert_eq!(got.value.template_labels.get("app"), Some("web"));
        assert_eq!(got.value.template_annotations.enabled, Some(false));
        assert_eq!(got.value.annotations.pins.len(), 1);
    }

    #[test]
    fn istio_objects() {
        let vs: DynamicObject = from(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews-v2"}, "weight": 80},
                {"destination": {"host": "reviews-v3"}, "weight": 20}]}]}}),
        );
        let got = istio_virtual_service(&vs);
        assert_eq!(got.hosts, vec!["reviews"]);
        assert_eq!(got.destinations, vec!["reviews-v2", "reviews-v3"]);
        assert_eq!(got.created_unix_s, None);
        let mut vs = vs;
        vs.metadata.creation_timestamp = Some(from(json!("2026-11-26T10:00:00Z")));
        assert_eq!(
            istio_virtual_service(&vs).created_unix_s,
            Some(1_795_687_200)
        );
        let dr: DynamicObject = from(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "mtls", "namespace": "shop"},
            "spec": {"host": "*.local", "workloadSelector": {"matchLabels": {"app": "web"}},
                "trafficPolicy": {"tls": {"mode": "DISABLE"}, "proxyProtocol": {},
                    "portLevelSettings": [{"port": {"number": 8080}, "tls": {"mode": "ISTIO_MUTUAL", "subjectAltNames": ["a"]}}]}}}),
        );
        let got = istio_destination_rule(&dr);
        assert_eq!(got.host, "*.local");
        assert_eq!(
            got.workload_selector,
            Some([("app".to_string(), "web".to_string())].into())
        );
        assert_eq!(
            got.traffic_policy,
            index::ConnectionPolicy {
                tls: Some(index::UpstreamTls {
                    mode: "DISABLE".into(),
                    subject_alt_names: vec![],
                }),
                proxy_protocol: true,
                port_tls: [(
                    8080,
                    Some(index::UpstreamTls {
                        mode: "ISTIO_MUTUAL".into(),
                        subject_alt_names: vec!["a".into()],
                    })
                )]
                .into(),
            }
        );
        let headless: Service = from(json!({"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"port": 9200, "name": "http"}]}}));
        assert!(service_entry(&headless).headless);
        let se: DynamicObject = from(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "stripe", "namespace": "pay"},
            "spec": {"hosts": ["api.stripe.com"], "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}]}}),
        );
        let got = istio_service_entry(&se);
        assert_eq!(got.hosts, vec!["api.stripe.com"]);
        assert_eq!(got.ports[0].number, 443);
        assert_eq!(got.workload_selector, None);
        let se: DynamicObject = from(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "vm", "namespace": "pay"},
            "spec": {"hosts": ["vm.pay.internal"], "workloadSelector": {"labels": {"app": "vm"}}}}),
        );
        assert_eq!(
            istio_service_entry(&se).workload_selector,
            Some([("app".to_string(), "vm".to_string())].into())
        );
    }

    #[test]
    fn authorization_policies_keep_what_selects_their_workloads() {
        let policy = |spec: Value| -> DynamicObject {
            from(
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "pay"}, "spec": spec}),
            )
        };
        let vault = Some([("app".to_string(), "vault".to_string())].into());
        let cases = [
            // An empty spec is an ALLOW that matches nothing: deny-all for the namespace.
            (json!({}), index::AuthorizationAction::Allow, None, false),
            (
                json!({"action": "DENY", "selector": {"matchLabels": {"app": "vault"}},
                    "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]}),
                index::AuthorizationAction::Deny,
                vault.clone(),
                false,
            ),
            (
                json!({"action": "CUSTOM", "provider": {"name": "ext"}, "selector": {}}),
                index::AuthorizationAction::Custom,
                None,
                false,
            ),
            (
                json!({"action": "AUDIT", "targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}}),
                index::AuthorizationAction::Audit,
                None,
                true,
            ),
            (
                json!({"targetRefs": [{"kind": "Service", "group": "", "name": "vault"}]}),
                index::AuthorizationAction::Allow,
                None,
                true,
            ),
            (
                json!({"targetRefs": []}),
                index::AuthorizationAction::Allow,
                None,
                false,
            ),
        ];
        for (spec, action, selector, targeted) in cases {
            let got = istio_authorization_policy(&policy(spec.clone())).unwrap();
            assert_eq!(
                (got.action, got.selector, got.targeted),
                (action, selector, targeted),
                "{spec}"
            );
            assert_eq!((&*got.namespace, &*got.name), ("pay", "p"));
        }
        let err = istio_authorization_policy(&policy(json!({"action": "MAYBE"}))).unwrap_err();
        assert!(
            err.contains("AuthorizationPolicy pay/p") && err.contains("MAYBE"),
            "{err}"
        );
    }
}
