use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::fixtures::*;
use crate::objects::{Pin, WorkloadKind::*};
use crate::IndexConfig;

const REVIEWS: &str = "reviews.shop.svc.cluster.local";

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn egress_of(desired: &Desired, id: &WorkloadId) -> Vec<String> {
    desired
        .sidecar_of(id)
        .map(|s| s.spec.egress.iter().flat_map(|l| l.hosts.clone()).collect())
        .unwrap_or_default()
}

fn refusal(id: WorkloadId, reason: RefusalReason) -> Refusal {
    Refusal {
        workload: id,
        reason,
    }
}

#[test]
fn renders_the_whole_sidecar() {
    let mut index = Index::test();
    let v2 = mk_outbound(9080, "reviews-v2.shop.svc.cluster.local");
    index.record_edges(
        [mk_edge("10.0.0.10", Some("reviews"), &v2, 1_700_000_000)],
        1_700_000_000,
    );
    let desired = desired(&index, &RenderConfig::test());

    let want = Sidecar {
        api_version: "networking.istio.io/v1".to_string(),
        kind: "Sidecar".to_string(),
        metadata: Metadata {
            name: "lazyxds-deployment-productpage".to_string(),
            namespace: "shop".to_string(),
            labels: BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "lazyxds".to_string(),
            )]),
            annotations: BTreeMap::from([
                (
                    "lazyxds.io/deps".to_string(),
                    r#"{"reviews.shop.svc.cluster.local":1700000000}"#.to_string(),
                ),
                (
                    "lazyxds.io/outbound-policy".to_string(),
                    "ALLOW_ANY".to_string(),
                ),
                (
                    "lazyxds.io/workload".to_string(),
                    "Deployment/productpage".to_string(),
                ),
            ]),
        },
        spec: SidecarSpec {
            workload_selector: Some(WorkloadSelector {
                labels: mk_labels(&[("app", "productpage")]),
            }),
            copied: BTreeMap::new(),
            egress: vec![EgressListener {
                hosts: strings(&[
                    "istio-system/*",
                    "lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local",
                    "lazyxds-system/lazyxds-http-ports.lazyxds-system.svc.cluster.local",
                    "shop/postgres.shop.svc.cluster.local",
                    // The VirtualService's host, not reviews-v2.
                    "shop/reviews.shop.svc.cluster.local",
                ]),
            }],
            outbound_traffic_policy: Some(OutboundTrafficPolicy {
                mode: OutboundPolicy::AllowAny,
            }),
        },
    };
    assert_eq!(desired.sidecar_of(&productpage()), Some(want.clone()));
    assert_eq!(
        desired.sidecars.keys().cloned().collect::<Vec<_>>(),
        vec![
            (
                "shop".to_string(),
                "lazyxds-deployment-productpage".to_string()
            ),
            (
                "shop".to_string(),
                "lazyxds-deployment-reviews-v1".to_string()
            ),
            (
                "shop".to_string(),
                "lazyxds-deployment-reviews-v2".to_string()
            ),
        ],
        "payments is not opted in"
    );
    assert_eq!(desired.refusals, vec![]);

    let yaml = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: lazyxds-deployment-productpage
  namespace: shop
  labels:
    app.kubernetes.io/managed-by: lazyxds
  annotations:
    lazyxds.io/deps: '{"reviews.shop.svc.cluster.local":1700000000}'
    lazyxds.io/outbound-policy: ALLOW_ANY
    lazyxds.io/workload: Deployment/productpage
spec:
  workloadSelector:
    labels:
      app: productpage
  egress:
  - hosts:
    - istio-system/*
    - lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local
    - lazyxds-system/lazyxds-http-ports.lazyxds-system.svc.cluster.local
    - shop/postgres.shop.svc.cluster.local
    - shop/reviews.shop.svc.cluster.local
  outboundTrafficPolicy:
    mode: ALLOW_ANY
"#;
    assert_eq!(want.to_yaml().as_deref(), Ok(yaml));
    let back: Sidecar = serde_norway::from_str(yaml).expect("round trip");
    assert_eq!(back, want);
    // No egressProxy: istiod would send unknown TCP and TLS there too.
    assert_eq!(
        want.to_json().expect("json")["spec"]["outboundTrafficPolicy"],
        json!({"mode": "ALLOW_ANY"})
    );
}

#[test]
fn every_sidecar_comes_with_a_catch_all_filter_that_sends_only_unknown_http_to_the_gateway() {
    let index = Index::test();
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        desired.catch_alls.keys().collect::<Vec<_>>(),
        desired.sidecars.keys().collect::<Vec<_>>()
    );
    let key = (
        "shop".to_string(),
        "lazyxds-deployment-productpage".to_string(),
    );
    let filter = desired.catch_alls[&key].value();
    let patch = |vhost: &str| {
        json!({
            "applyTo": "HTTP_ROUTE",
            "match": {"context": "SIDECAR_OUTBOUND", "routeConfiguration": {
                "vhost": {"name": vhost, "route": {"name": vhost}}}},
            "patch": {"operation": "MERGE", "value": {"route": {
                "cluster": format!("outbound|8080||{GATEWAY}"),
                "timeout": "0s", "max_grpc_timeout": "0s"}}},
        })
    };
    assert_eq!(
        filter,
        json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": {
                "name": "lazyxds-deployment-productpage",
                "namespace": "shop",
                "labels": {
                    "app.kubernetes.io/managed-by": "lazyxds",
                    "app.kubernetes.io/component": "catch-all",
                },
                "annotations": {
                    "galley.istio.io/analyze-suppress": "IST0133",
                    "lazyxds.io/workload": "Deployment/productpage",
                },
            },
            "spec": {
                // The Sidecar's selector: the same pods, no others.
                "workloadSelector": {"labels": {"app": "productpage"}},
                "configPatches": [patch("allow_any"), patch("block_all")],
            },
        })
    );
    assert!(crate::objects::is_our_catch_all(
        &crate::objects::string_map(&filter["metadata"]["labels"])
    ));
    // Constant size: a workload with many deps gets the same filter.
    let mut busy = Index::test();
    let many: Vec<String> = (0..50).map(|i| format!("s{i}.example.com")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    busy.apply(mk_service_entry("shop", "many", &many, &[(80, "HTTP")]));
    let edges: Vec<_> = (0..50)
        .map(|i| {
            mk_edge(
                "10.0.0.10",
                None,
                &mk_outbound(80, &format!("s{i}.example.com")),
                1,
            )
        })
        .collect();
    busy.record_edges(edges, 1);
    let busy = super::desired(&busy, &RenderConfig::test());
    assert!(egress_of(&busy, &productpage()).len() > 50);
    assert_eq!(busy.catch_alls[&key], desired.catch_alls[&key]);
    // Written before its Sidecar.
    let yaml = desired.workload_yaml(&key).expect("yaml");
    let filter_at = yaml.find("kind: EnvoyFilter").expect("filter");
    let sidecar_at = yaml.find("kind: Sidecar").expect("sidecar");
    assert!(filter_at < sidecar_at, "{yaml}");
}

#[test]
fn the_sidecar_keeps_the_workloads_own_outbound_policy_for_unknown_tcp() {
    for (mesh, default, want) in [
        (OutboundPolicy::AllowAny, None, OutboundPolicy::AllowAny),
        (
            OutboundPolicy::RegistryOnly,
            None,
            OutboundPolicy::RegistryOnly,
        ),
        (
            OutboundPolicy::AllowAny,
            Some("REGISTRY_ONLY"),
            OutboundPolicy::RegistryOnly,
        ),
        (
            OutboundPolicy::RegistryOnly,
            Some("ALLOW_ANY"),
            OutboundPolicy::AllowAny,
        ),
    ] {
        let mut index = Index::test();
        if let Some(mode) = default {
            index.apply(mk_user_sidecar(
                "shop",
                "default",
                json!({"outboundTrafficPolicy": {"mode": mode}}),
            ));
        }
        let config = RenderConfig {
            mesh_outbound_policy: mesh,
            ..RenderConfig::test()
        };
        let desired = desired(&index, &config);
        let sidecar = desired.sidecar_of(&productpage()).expect("scoped");
        assert_eq!(
            sidecar.spec.outbound_traffic_policy,
            Some(OutboundTrafficPolicy { mode: want }),
            "mesh {mesh:?}, namespace default {default:?}"
        );
    }
}

#[test]
fn dep_hosts_take_the_namespace_of_every_defining_object() {
    let mut index = Index::test();
    index.apply(mk_virtual_service(
        "frontend",
        "reviews",
        &[REVIEWS],
        &["reviews-v2.shop.svc.cluster.local"],
    ));
    index.apply(mk_service_entry(
        "payments",
        "stripe",
        &["api.stripe.com"],
        &[(80, "HTTP")],
    ));
    index.apply(mk_service_entry(
        "shop",
        "stripe",
        &["api.stripe.com"],
        &[(80, "HTTP")],
    ));
    let edges = [
        mk_edge(
            "10.0.0.10",
            Some("reviews"),
            &mk_outbound(9080, "reviews-v2.shop.svc.cluster.local"),
            1,
        ),
        mk_edge(
            "10.0.0.10",
            Some("api.stripe.com"),
            "outbound|80||api.stripe.com",
            1,
        ),
        mk_edge("10.0.0.10", None, "outbound|80||unknown.example.com", 1),
    ];
    // A dep whose definition is gone since it was learned stays, under `*/`.
    index.apply(mk_service_entry(
        "shop",
        "gone",
        &["unknown.example.com"],
        &[(80, "HTTP")],
    ));
    index.record_edges(edges, 1);
    index.delete::<crate::objects::ServiceEntry>((), "shop", "gone");
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        egress_of(&desired, &productpage()),
        strings(&[
            // Only when nothing defines a host: any namespace.
            "*/unknown.example.com",
            "frontend/reviews.shop.svc.cluster.local",
            "istio-system/*",
            "lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local",
            "lazyxds-system/lazyxds-http-ports.lazyxds-system.svc.cluster.local",
            "payments/api.stripe.com",
            "shop/api.stripe.com",
            "shop/postgres.shop.svc.cluster.local",
            "shop/reviews.shop.svc.cluster.local",
        ])
    );
}

#[test]
fn selector_labels_drop_per_pod_labels() {
    let cases = [
        (
            mk_labels(&[
                ("app", "db"),
                ("controller-revision-hash", "db-7f"),
                ("statefulset.kubernetes.io/pod-name", "db-0"),
                ("apps.kubernetes.io/pod-index", "0"),
            ]),
            mk_labels(&[("app", "db")]),
        ),
        (
            mk_labels(&[
                ("app", "web"),
                ("pod-template-hash", "5d4f8"),
                ("tier", "front"),
            ]),
            mk_labels(&[("app", "web"), ("tier", "front")]),
        ),
        (mk_labels(&[("pod-template-hash", "5d4f8")]), mk_labels(&[])),
    ];
    for (labels, want) in cases {
        assert_eq!(selector_labels(&labels), want);
    }

    // A bare ReplicaSet's selector comes from the labels its pods share, stripped.
    let mut index = Index::test();
    index.apply(mk_replica_set("shop", "batch-rs", None));
    for (i, ip) in ["10.0.6.1", "10.0.6.2"].into_iter().enumerate() {
        let name = format!("batch-rs-{i}");
        let hash = format!("h{i}");
        let labels = [
            ("app", "batch"),
            ("pod-template-hash", hash.as_str()),
            ("slot", name.as_str()),
        ];
        index.apply(mk_pod(
            "shop",
            &name,
            ip,
            Some(("ReplicaSet", "batch-rs")),
            &labels,
        ));
    }
    let desired = desired(&index, &RenderConfig::test());
    let sidecar = desired
        .sidecar_of(&mk_id(ReplicaSet, "shop", "batch-rs"))
        .expect("rendered");
    assert_eq!(
        sidecar.spec.workload_selector,
        Some(WorkloadSelector {
            labels: mk_labels(&[("app", "batch")])
        })
    );
}

#[test]
fn a_selector_is_never_empty() {
    let mut index = Index::test();
    index.apply(mk_pod(
        "shop",
        "bare",
        "10.0.7.1",
        None,
        &[("pod-template-hash", "x")],
    ));
    index.apply(mk_workload(Deployment, "shop", "unlabelled", &[]));
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        desired.refusals,
        vec![
            refusal(
                mk_id(Deployment, "shop", "unlabelled"),
                RefusalReason::EmptySelector
            ),
            refusal(mk_id(Pod, "shop", "bare"), RefusalReason::EmptySelector),
        ]
    );
    assert!(desired.sidecars.values().all(|s| s
        .typed::<Sidecar>()
        .expect("a Sidecar")
        .spec
        .workload_selector
        .as_ref()
        .is_some_and(|w| !w.labels.is_empty())));
}

#[test]
fn overlapping_selectors_are_refused() {
    let mut index = Index::default();
    index.apply(mk_namespace("shop", Some(true)));
    // a's selector {app: x} also selects b's pods; b's {app: x, tier: y} only its own.
    index.apply(mk_workload(Deployment, "shop", "a", &[("app", "x")]));
    index.apply(mk_workload(
        Deployment,
        "shop",
        "b",
        &[("app", "x"), ("tier", "y")],
    ));
    index.apply(mk_replica_set("shop", "b-rs", Some(("Deployment", "b"))));
    index.apply(mk_pod(
        "shop",
        "b-rs-0",
        "10.0.8.2",
        Some(("ReplicaSet", "b-rs")),
        &[("app", "x"), ("tier", "y")],
    ));
    // c's selector selects a pod that is not c's, even though its template is distinct.
    index.apply(mk_workload(StatefulSet, "shop", "c", &[("app", "c")]));
    let mut stray = mk_pod(
        "shop",
        "stray",
        "10.0.8.1",
        None,
        &[("app", "c"), ("debug", "1")],
    );
    stray.annotations.enabled = Some(false);
    index.apply(stray);
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        desired.refusals,
        vec![
            refusal(
                mk_id(Deployment, "shop", "a"),
                RefusalReason::SelectsOtherWorkload {
                    other: mk_id(Deployment, "shop", "b")
                }
            ),
            refusal(
                mk_id(StatefulSet, "shop", "c"),
                RefusalReason::SelectsOtherWorkload {
                    other: mk_id(Pod, "shop", "stray")
                }
            ),
        ]
    );
    assert_eq!(
        desired
            .sidecars
            .keys()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>(),
        vec!["lazyxds-deployment-b"]
    );
    assert_eq!(
        desired.refusals[1].reason.to_string(),
        "its selector also selects pods of Pod shop/stray"
    );
}

#[test]
fn user_sidecars_with_selectors_win() {
    let mut index = Index::test();
    index.apply(mk_user_sidecar(
        "shop",
        "pin-v1",
        json!({"workloadSelector": {"labels": {"version": "v1"}}, "egress": [{"hosts": ["*/*"]}]}),
    ));
    index.apply(mk_user_sidecar(
        "shop",
        "nobody",
        json!({"workloadSelector": {"labels": {"app": "none"}}}),
    ));
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        desired.refusals,
        vec![refusal(
            mk_id(Deployment, "shop", "reviews-v1"),
            RefusalReason::UserSidecar {
                name: "pin-v1".to_string()
            }
        )]
    );
    assert_eq!(desired.sidecars.len(), 2);
}

#[test]
fn namespace_defaults_are_copied() {
    let root_default = json!({
        "egress": [{"hosts": ["istio-system/*", "monitoring/*"]}],
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
    });
    let shop_default = json!({
        "egress": [{"hosts": ["./*"]}, {"port": {"number": 5432, "protocol": "TCP"}, "hosts": ["payments/*"]}],
        "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "defaultEndpoint": "127.0.0.1:9080"}],
        "inboundConnectionPool": {"http": {"http1MaxPendingRequests": 1024}},
        "outboundTrafficPolicy": {"mode": "ALLOW_ANY"},
    });
    // (namespace default, root default, hosts copied, copied fields, effective policy)
    let cases = [
        (None, None, vec![], vec![], "ALLOW_ANY"),
        (
            None,
            Some(&root_default),
            vec!["monitoring/*"],
            vec![],
            "REGISTRY_ONLY",
        ),
        (
            Some(&shop_default),
            Some(&root_default),
            vec!["./*", "payments/*"],
            vec!["inboundConnectionPool", "ingress"],
            "ALLOW_ANY",
        ),
    ];
    for (ns_default, root, copied_hosts, copied_fields, policy) in cases {
        let mut index = Index::test();
        if let Some(spec) = root {
            index.apply(mk_user_sidecar("istio-system", "default", spec.clone()));
        }
        if let Some(spec) = ns_default {
            index.apply(mk_user_sidecar("shop", "default", spec.clone()));
        }
        let desired = desired(&index, &RenderConfig::test());
        let sidecar = desired.sidecar_of(&productpage()).expect("rendered");
        let mut want_hosts = strings(&[
            "istio-system/*",
            "lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local",
            "lazyxds-system/lazyxds-http-ports.lazyxds-system.svc.cluster.local",
            "shop/postgres.shop.svc.cluster.local",
        ]);
        want_hosts.extend(strings(&copied_hosts));
        want_hosts.sort();
        assert_eq!(
            egress_of(&desired, &productpage()),
            want_hosts,
            "{ns_default:?}"
        );
        assert_eq!(
            sidecar.spec.copied.keys().collect::<Vec<_>>(),
            copied_fields,
            "{ns_default:?}"
        );
        if let Some(spec) = ns_default {
            assert_eq!(sidecar.spec.copied["ingress"], spec["ingress"]);
        }
        assert_eq!(
            sidecar.metadata.annotations["lazyxds.io/outbound-policy"],
            policy
        );
        // The Sidecar keeps the policy the workload had: unknown TCP goes where it went.
        assert_eq!(
            sidecar
                .spec
                .outbound_traffic_policy
                .as_ref()
                .map(|p| p.mode.as_str()),
            Some(policy)
        );
    }

    // Without any default, the mesh's mode is the effective one.
    let config = RenderConfig {
        mesh_outbound_policy: OutboundPolicy::RegistryOnly,
        ..RenderConfig::test()
    };
    let desired = desired(&Index::test(), &config);
    let sidecar = desired.sidecar_of(&productpage()).expect("rendered");
    assert_eq!(
        sidecar.metadata.annotations["lazyxds.io/outbound-policy"],
        "REGISTRY_ONLY"
    );
}

#[test]
fn opaque_services_are_always_visible() {
    let mut index = Index::test();
    let mut mixed = mk_service(
        "shop",
        "mixed",
        &[("app", "mixed")],
        &[(9080, "http"), (6379, "redis")],
    );
    mixed.ports[1].app_protocol = Some("redis".to_string());
    index.apply(mixed);
    index.apply(mk_service(
        "shop",
        "sniffed",
        &[("app", "s")],
        &[(7000, "")],
    ));
    index.apply(mk_service("shop", "dns", &[("app", "dns")], &[(53, "")]));
    let mut private = mk_service("payments", "vault", &[("app", "vault")], &[(8200, "tls")]);
    private.export_to = strings(&["."]);
    index.apply(private);
    index.apply(mk_service(
        "payments",
        "mq",
        &[("app", "mq")],
        &[(5672, "amqp-tcp"), (5671, "tcp-amqps")],
    ));
    index.apply(mk_service_entry(
        "payments",
        "stripe",
        &["api.stripe.com"],
        &[(443, "HTTPS")],
    ));
    index.apply(mk_service_entry(
        "payments",
        "plain",
        &["plain.example.com"],
        &[(80, "HTTP"), (443, "TLS")],
    ));
    // In the root namespace: already whole in every Sidecar.
    index.apply(mk_service(
        "istio-system",
        "istiod",
        &[("app", "istiod")],
        &[(15010, "grpc-xds"), (15012, "https-dns")],
    ));
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        egress_of(&desired, &productpage()),
        strings(&[
            "istio-system/*",
            "lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local",
            "lazyxds-system/lazyxds-http-ports.lazyxds-system.svc.cluster.local",
            "payments/api.stripe.com",
            "payments/mq.payments.svc.cluster.local",
            "payments/plain.example.com",
            "shop/dns.shop.svc.cluster.local",
            "shop/mixed.shop.svc.cluster.local",
            "shop/postgres.shop.svc.cluster.local",
            "shop/sniffed.shop.svc.cluster.local",
        ]),
        "any port that may not be HTTP keeps the whole host (amqp-tcp and unnamed ports are \
         sniffed); vault is not exported to shop"
    );
}

/// The hosts every scoped Sidecar of shop lists whatever it learned.
const BASE: [&str; 4] = [
    "istio-system/*",
    "lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local",
    "lazyxds-system/lazyxds-http-ports.lazyxds-system.svc.cluster.local",
    "shop/postgres.shop.svc.cluster.local",
];

fn base_and(extra: &[&str]) -> Vec<String> {
    let mut hosts: Vec<String> = strings(&BASE);
    hosts.extend(strings(extra));
    hosts.sort();
    hosts
}

/// A headless Service's pods are called by their own names, which only the caller's
/// sidecar routes (the gateway would answer them with its `*.svc` 404): always visible.
#[test]
fn headless_services_are_always_visible() {
    let mut index = Index::test();
    let mut db = mk_service("payments", "db", &[("app", "db")], &[(9200, "http")]);
    db.headless = true;
    index.apply(db);
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        egress_of(&desired, &productpage()),
        base_and(&["payments/db.payments.svc.cluster.local"])
    );
    let why: Vec<String> = always_visible(&index, &RenderConfig::test())
        .iter()
        .filter(|a| a.host == "db.payments.svc.cluster.local")
        .flat_map(|a| a.why.iter().map(ToString::to_string))
        .collect();
    assert_eq!(
        why,
        ["headless: its pods' own names route only through the caller's sidecar"]
    );
}

/// A VirtualService some namespaces see ahead of the public ones (exportTo `.` or a list)
/// is what their sidecars route by; the gateway routes every caller alike, so its host
/// stays visible to those namespaces (with its Service's namespace: the clusters), and
/// to no other.
#[test]
fn a_virtual_service_only_some_namespaces_see_keeps_its_host_visible_to_them() {
    let payments = "payments.payments.svc.cluster.local";
    let vs = |ns: &str, name: &str, hosts: &[&str], export_to: &[&str]| {
        let mut vs = mk_virtual_service(ns, name, hosts, &["payments-v2.payments"]);
        vs.export_to = strings(export_to);
        vs
    };
    let kept = [
        "shop/payments.payments.svc.cluster.local",
        "payments/payments.payments.svc.cluster.local",
    ];
    let cases = [
        (
            "private to shop",
            vec![vs("shop", "p", &[payments], &["."])],
            &kept[..],
        ),
        (
            "exported to shop by name from elsewhere",
            vec![vs("ops", "p", &[payments], &["shop", "ops"])],
            &["ops/payments.payments.svc.cluster.local", kept[1]][..],
        ),
        (
            "exported to another namespace only",
            vec![vs("shop", "p", &[payments], &["ops"])],
            &[][..],
        ),
        ("public", vec![vs("shop", "p", &[payments], &[])], &[][..]),
        (
            "`*` and `.`",
            vec![vs("shop", "p", &[payments], &["*", "."])],
            &[][..],
        ),
        (
            "hidden",
            vec![vs("shop", "p", &[payments], &["~"])],
            &[][..],
        ),
        (
            "a wildcard host: itself and every host it covers",
            vec![vs("shop", "p", &["*.payments.svc.cluster.local"], &["."])],
            &["shop/*.payments.svc.cluster.local", kept[0], kept[1]][..],
        ),
    ];
    for (what, virtual_services, want) in cases {
        let mut index = Index::test();
        for v in virtual_services {
            index.apply(v);
        }
        let desired = desired(&index, &RenderConfig::test());
        assert_eq!(
            egress_of(&desired, &productpage()),
            base_and(want),
            "{what}"
        );
    }

    let mut index = Index::test();
    index.apply(vs("shop", "p", &[payments], &["."]));
    let why: Vec<String> = always_visible(&index, &RenderConfig::test())
        .iter()
        .filter(|a| a.host == payments)
        .flat_map(|a| a.why.iter().map(ToString::to_string))
        .collect();
    assert_eq!(
        why,
        [
            // Both hold: the gateway cannot see it, and it routes only for shop.
            "VirtualService shop/p's exportTo [\".\"] leaves out the gateway's namespace \
             lazyxds-system",
            "VirtualService shop/p routes it only for the namespaces of its exportTo [\".\"], \
          ahead of public ones: the gateway routes every caller alike"
        ]
    );
}

/// A DestinationRule of the caller's namespace for the gateway's host (a wildcard such as
/// `*.local` is enough) is used instead of ours; unless it keeps Istio mTLS on the gateway
/// port, first calls would fail, so the workloads it applies to are refused.
#[test]
fn a_caller_namespace_destination_rule_breaking_mtls_to_the_gateway_refuses() {
    use crate::destination_rule::{Effect, Shadow};
    let rule = |name: &str, spec: serde_json::Value| {
        crate::objects::DestinationRule::from_spec("shop", name, &spec)
    };
    let shop = [
        productpage(),
        mk_id(Deployment, "shop", "reviews-v1"),
        mk_id(Deployment, "shop", "reviews-v2"),
    ];
    let shadow = |name: &str, effect: Effect| {
        RefusalReason::GatewayDestinationRule(Shadow {
            rule: format!("shop/{name}"),
            host: "*.local".to_string(),
            effect,
        })
    };

    let mut index = Index::test();
    index.apply(rule(
        "plain",
        json!({"host": "*.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    ));
    let out = desired(&index, &RenderConfig::test());
    let disable = Effect::Mode {
        mode: "DISABLE".to_string(),
        port_level: false,
    };
    assert_eq!(
        out.refusals,
        shop.iter()
            .map(|id| refusal(id.clone(), shadow("plain", disable.clone())))
            .collect::<Vec<_>>()
    );
    assert!(out.sidecars.is_empty());

    // ISTIO_MUTUAL for it: what ours does.
    index.apply(rule(
        "plain",
        json!({"host": "*.local", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    ));
    let out = desired(&index, &RenderConfig::test());
    assert_eq!(out.refusals, vec![]);
    assert_eq!(out.sidecars.len(), 3);

    // A rule selecting productpage only: productpage gets it, the others none at all.
    index.delete::<crate::objects::DestinationRule>((), "shop", "plain");
    index.apply(rule(
        "pp",
        json!({"host": "*.local", "workloadSelector": {"matchLabels": {"app": "productpage"}},
            "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    ));
    let out = desired(&index, &RenderConfig::test());
    assert_eq!(
        out.refusals,
        shop[1..]
            .iter()
            .map(|id| refusal(id.clone(), shadow("pp", Effect::SelectsOthers)))
            .collect::<Vec<_>>()
    );
    assert!(out.sidecar_of(&productpage()).is_some());

    // In another namespace: never looked at before ours.
    let mut index = Index::test();
    index.apply(crate::objects::DestinationRule::from_spec(
        "payments",
        "plain",
        &json!({"host": "*.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    ));
    assert_eq!(desired(&index, &RenderConfig::test()).refusals, vec![]);
}

#[test]
fn pins_are_always_included() {
    let mut index = Index::test();
    let mut shop = mk_namespace("shop", Some(true));
    shop.annotations.pins = vec!["payments/payments.payments.svc.cluster.local"
        .parse::<Pin>()
        .expect("pin")];
    index.apply(shop);
    let mut w = mk_workload(Deployment, "shop", "productpage", &[("app", "productpage")]);
    w.template_annotations.pins = vec!["*/api.stripe.com".parse::<Pin>().expect("pin")];
    index.apply(w);
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        egress_of(&desired, &productpage()),
        strings(&[
            "*/api.stripe.com",
            "istio-system/*",
            "lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local",
            "lazyxds-system/lazyxds-http-ports.lazyxds-system.svc.cluster.local",
            "payments/payments.payments.svc.cluster.local",
            "shop/postgres.shop.svc.cluster.local",
        ])
    );
    assert_eq!(
        egress_of(&desired, &mk_id(Deployment, "shop", "reviews-v1")).len(),
        5,
        "namespace pins reach every workload"
    );
}

#[test]
fn over_the_host_cap_a_sidecar_keeps_every_host_it_has_and_new_ones_stay_lazy() {
    // The runtime caps both at `--max-hosts`; here the index stops at 2 learned hosts,
    // the Sidecar's required hosts (3) stay under 5.
    let mut index = Index::new(crate::IndexConfig {
        max_deps_per_workload: 2,
        ..Default::default()
    });
    index.apply(mk_namespace("shop", Some(true)));
    mk_deployment(&mut index, "shop", "productpage", "10.0.0.10");
    index.apply(mk_service_entry(
        "shop",
        "ext",
        &[
            "a.example.com",
            "b.example.com",
            "c.example.com",
            "d.example.com",
        ],
        &[(80, "HTTP")],
    ));
    let learn = |index: &mut Index, hosts: &[&str], at: u64| {
        let edges: Vec<_> = hosts
            .iter()
            .map(|h| mk_edge("10.0.0.10", None, &mk_outbound(80, h), at))
            .collect();
        index.record_edges(edges, at);
    };
    let config = RenderConfig {
        max_hosts_per_sidecar: 5,
        ..RenderConfig::test()
    };
    learn(&mut index, &["a.example.com", "b.example.com"], 1);
    let before = desired(&index, &config);
    assert_eq!(before.capped, vec![]);
    let listed = egress_of(&before, &productpage());
    assert!(
        listed.contains(&"shop/a.example.com".to_string()),
        "{listed:?}"
    );
    assert!(
        listed.contains(&"shop/b.example.com".to_string()),
        "{listed:?}"
    );
    // A third host: not added, nothing removed, no refusal; reported as capped.
    learn(&mut index, &["c.example.com"], 2);
    let after = desired(&index, &config);
    assert_eq!(egress_of(&after, &productpage()), listed);
    assert_eq!(
        after
            .sidecar_of(&productpage())
            .unwrap()
            .metadata
            .annotations["lazyxds.io/deps"],
        r#"{"a.example.com":1,"b.example.com":1}"#
    );
    assert_eq!(after.refusals, vec![]);
    let capped = Capped {
        workload: productpage(),
        cap: 2,
    };
    assert_eq!(after.capped, vec![capped.clone()]);
    assert_eq!(
        capped.to_string(),
        "host cap 2 reached: its Sidecar keeps every host it has; calls to further hosts keep going through the lazy gateway"
    );
}

#[test]
fn more_required_hosts_than_the_cap_refuse_before_anything_is_learned() {
    // istio-system/*, the gateway, the placeholder, postgres (a tcp port): 4 > 3.
    let config = RenderConfig {
        max_hosts_per_sidecar: 3,
        ..RenderConfig::test()
    };
    let index = Index::test();
    let out = desired(&index, &config);
    let want = refusal(productpage(), RefusalReason::HostCap { cap: 3, hosts: 4 });
    assert!(out.refusals.contains(&want), "{:?}", out.refusals);
    assert_eq!(
        want.reason.to_string(),
        "host cap 3 reached by 4 hosts it must see before any learned one"
    );
    assert_eq!(out.sidecar_of(&productpage()), None);
    assert!(out.catch_alls.is_empty());
}

#[test]
fn system_namespaces_are_never_scoped() {
    let mut index = Index::default();
    for ns in ["istio-system", "lazyxds-system"] {
        index.apply(mk_namespace(ns, Some(true)));
        index.apply(mk_workload(Deployment, ns, "x", &[("app", "x")]));
    }
    let desired = desired(&index, &RenderConfig::test());
    assert_eq!(
        desired.refusals,
        ["istio-system", "lazyxds-system"]
            .map(|ns| refusal(
                mk_id(Deployment, ns, "x"),
                RefusalReason::ExcludedNamespace {
                    namespace: ns.to_string()
                }
            ))
            .to_vec()
    );
}

#[test]
fn sidecar_names() {
    let long = "w".repeat(250);
    let cases = [
        (
            mk_id(Deployment, "shop", "cart"),
            "lazyxds-deployment-cart".to_string(),
        ),
        (
            mk_id(StatefulSet, "shop", "db"),
            "lazyxds-statefulset-db".to_string(),
        ),
        (
            mk_id(CronJob, "shop", "nightly"),
            "lazyxds-cronjob-nightly".to_string(),
        ),
        (
            mk_id(Pod, "shop", &long),
            format!(
                "lazyxds-pod-{}-{:08x}",
                "w".repeat(232),
                crate::host::fnv1a64(format!("lazyxds-pod-{long}").as_bytes()) as u32
            ),
        ),
    ];
    for (id, want) in cases {
        assert_eq!(sidecar_name(&id), want);
        assert!(want.len() <= 253);
    }
}

#[test]
fn a_workload_without_pods_gets_no_sidecar_until_one_starts() {
    // A Sidecar selecting no pod is what `istioctl analyze` reports (IST0101).
    let mut index = Index::default();
    index.apply(mk_namespace("shop", Some(true)));
    index.apply(mk_workload(Deployment, "shop", "idle", &[("app", "idle")]));
    let none = desired(&index, &RenderConfig::test());
    assert!(none.sidecars.is_empty(), "{:?}", none.sidecars.keys());
    assert!(
        none.refusals.is_empty(),
        "not a refusal: {:?}",
        none.refusals
    );
    index.apply(mk_replica_set(
        "shop",
        "idle-rs",
        Some(("Deployment", "idle")),
    ));
    index.apply(mk_pod(
        "shop",
        "idle-rs-0",
        "10.0.9.1",
        Some(("ReplicaSet", "idle-rs")),
        &[("app", "idle")],
    ));
    let one = desired(&index, &RenderConfig::test());
    assert_eq!(
        one.sidecars
            .keys()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>(),
        ["lazyxds-deployment-idle"]
    );
}

/// Scaled to zero, a workload that learned deps keeps its Sidecar (and its catch-all):
/// the Sidecar is where the deps survive a controller restart. `istioctl analyze`'s
/// selects-nothing warning is suppressed on it, and only while it has no pod.
#[test]
fn a_workload_scaled_to_zero_keeps_the_sidecar_that_remembers_its_deps() {
    let id = productpage();
    let key = ("shop".to_string(), sidecar_name(&id));
    let ratings = "ratings.shop.svc.cluster.local";
    let suppress = |d: &Desired| {
        d.sidecar_of(&id)
            .expect("a Sidecar")
            .metadata
            .annotations
            .get("galley.istio.io/analyze-suppress")
            .cloned()
    };
    // Running, with a dep learned before (as a restart restores it from the Sidecar).
    let mut index = Index::test();
    index.apply(mk_our_sidecar(&id, &[(ratings, 1)]));
    let running = desired(&index, &RenderConfig::test());
    assert_eq!(suppress(&running), None);
    assert!(running.sidecar_of(&id).expect("a Sidecar").spec.egress[0]
        .hosts
        .contains(&format!("shop/{ratings}")));

    // Every pod gone: the Sidecar stays, deps and all.
    let pods: Vec<String> = index
        .ns("shop")
        .map(|s| {
            s.pods
                .values()
                .filter(|p| p.labels.get("app") == Some("productpage"))
                .map(|p| p.name.to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(!pods.is_empty());
    for pod in &pods {
        index.delete::<crate::objects::Pod>((), "shop", pod);
    }
    let parked = desired(&index, &RenderConfig::test());
    assert!(parked.catch_alls.contains_key(&key));
    let sidecar = parked.sidecar_of(&id).expect("kept at zero");
    assert!(sidecar.spec.egress[0]
        .hosts
        .contains(&format!("shop/{ratings}")));
    assert_eq!(
        sidecar.metadata.annotations[ANNOTATION_DEPS],
        format!("{{\"{ratings}\":1}}")
    );
    assert_eq!(suppress(&parked).as_deref(), Some("IST0101"));

    // Nothing learned: no Sidecar at zero.
    let mut fresh = Index::test();
    for pod in &pods {
        fresh.delete::<crate::objects::Pod>((), "shop", pod);
    }
    assert!(!desired(&fresh, &RenderConfig::test())
        .sidecars
        .contains_key(&key));
}

/// The virtual hosts a catch-all filter removes from its workload's routes.
fn removed_vhosts(desired: &Desired, id: &WorkloadId) -> Vec<String> {
    let key = (id.namespace.to_string(), sidecar_name(id));
    let filter = desired.catch_alls[&key].value();
    filter["spec"]["configPatches"]
        .as_array()
        .expect("patches")
        .iter()
        .filter(|p| p["applyTo"] == "VIRTUAL_HOST" && p["patch"]["operation"] == "REMOVE")
        .map(|p| {
            assert_eq!(p["match"]["context"], "SIDECAR_OUTBOUND");
            assert!(p["patch"].get("value").is_none(), "{p}");
            p["match"]["routeConfiguration"]["vhost"]["name"]
                .as_str()
                .expect("name")
                .to_string()
        })
        .collect()
}

#[test]
fn a_new_deps_routes_wait_until_its_clusters_are_active() {
    let config = IndexConfig {
        route_delay: Duration::from_secs(2),
        ..IndexConfig::default()
    };
    let mut index = Index::test_with(config);
    index.apply(mk_service_entry(
        "shop",
        "api",
        &["api.example.com"],
        &[(80, "HTTP"), (8080, "HTTP")],
    ));
    let t = 1_700_000_000;
    let ratings = "ratings.shop.svc.cluster.local";
    index.record_edges(
        [
            mk_edge("10.0.0.10", Some("ratings"), &mk_outbound(9080, ratings), t),
            mk_edge(
                "10.0.0.10",
                Some("api.example.com"),
                &mk_outbound(80, "api.example.com"),
                t,
            ),
            // TCP-only: always listed, its routes are live already and stay.
            mk_edge(
                "10.0.0.10",
                None,
                &mk_outbound(5432, "postgres.shop.svc.cluster.local"),
                t,
            ),
        ],
        t,
    );
    let config = RenderConfig::test();
    let learning = desired(&index, &config);
    let egress = egress_of(&learning, &productpage());
    for host in [
        "shop/ratings.shop.svc.cluster.local",
        "shop/api.example.com",
        "shop/postgres.shop.svc.cluster.local",
    ] {
        assert!(egress.contains(&host.to_string()), "{host} in {egress:?}");
    }
    // The Sidecar lists the new hosts at once (their clusters come); their virtual hosts,
    // one per port, stay out of the routes, so calls take the catch-all to the gateway.
    assert_eq!(
        removed_vhosts(&learning, &productpage()),
        strings(&[
            "api.example.com:80",
            "api.example.com:8080",
            "ratings.shop.svc.cluster.local:9080",
        ])
    );
    // `istioctl analyze` flags a REMOVE without a priority (IST0151): suppressed while held.
    let key = ("shop".to_string(), sidecar_name(&productpage()));
    let filter: EnvoyFilter = learning.catch_alls[&key].typed().expect("an EnvoyFilter");
    let annotations = &filter.metadata.annotations;
    assert_eq!(
        annotations["galley.istio.io/analyze-suppress"],
        "IST0133,IST0151"
    );
    // Still held a second later; released at the delay, when the workload changes again.
    assert!(index.tick(t + 1).is_empty());
    assert_eq!(
        removed_vhosts(&desired(&index, &config), &productpage()).len(),
        3
    );
    assert_eq!(
        index.tick(t + 2),
        BTreeSet::from([productpage()]),
        "released"
    );
    let direct = desired(&index, &config);
    assert!(removed_vhosts(&direct, &productpage()).is_empty());
    assert_eq!(egress_of(&direct, &productpage()), egress);
    // Once released, the filter is the one a workload without new deps has.
    assert_eq!(
        direct.catch_alls[&key],
        desired(&Index::test(), &config).catch_alls[&key]
    );

    // Off (0): routes and clusters together.
    let mut index = Index::test();
    index.record_edges(
        [mk_edge(
            "10.0.0.10",
            Some("ratings"),
            &mk_outbound(9080, ratings),
            t,
        )],
        t,
    );
    assert!(removed_vhosts(&desired(&index, &config), &productpage()).is_empty());
}
