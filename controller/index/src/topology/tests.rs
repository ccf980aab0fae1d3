use super::*;
use crate::fixtures::*;
use crate::objects::AuthorizationAction::{Allow, Custom, Deny};
use crate::{report, Counters, Desired, ObservedEdge};

const DEMO: &str = include_str!("../../testdata/demo-topology.yaml");
const DEMO_SIDECARS: &str = include_str!("../../testdata/demo-sidecars.yaml");
const DEMO_REPORT: &str = include_str!("../../testdata/demo-report.txt");

fn demo_edges() -> Vec<ObservedEdge> {
    let t = 1_700_000_000;
    let svc = |name: &str, ns: &str| mk_outbound(9080, &format!("{name}.{ns}.svc.cluster.local"));
    vec![
        mk_edge("127.0.0.10", Some("reviews"), &svc("reviews-v2", "shop"), t),
        mk_edge(
            "127.0.0.11",
            Some("details"),
            &svc("details", "shop"),
            t + 5,
        ),
        mk_edge("127.0.0.10", None, "PassthroughCluster", t),
        mk_edge("127.0.0.13", Some("ratings"), &svc("ratings", "shop"), t),
        mk_edge(
            "127.0.0.16",
            Some("catalog.shop"),
            &svc("catalog", "shop"),
            t,
        ),
        mk_edge("127.0.0.20", Some("fraud"), &svc("fraud", "payments"), t),
        mk_edge(
            "127.0.0.20",
            Some("ledger.payments.svc.cluster.local"),
            &svc("ledger", "payments"),
            t,
        ),
        mk_edge(
            "127.0.0.21",
            Some("api.stripe.com"),
            "outbound|443||api.stripe.com",
            t,
        ),
        // Opted out: learned, no Sidecar.
        mk_edge("127.0.0.15", Some("ratings"), &svc("ratings", "shop"), t),
        // Nobody has this IP: held.
        mk_edge("127.0.0.99", Some("ratings"), &svc("ratings", "shop"), t),
    ]
}

fn demo_topology() -> Topology {
    Topology::from_yaml(DEMO, "demo-topology.yaml").expect("demo parses")
}

fn demo() -> (Index, Desired) {
    let topo = demo_topology();
    let config = topo.render_config(RenderConfig::default());
    let mut index = Index::default();
    topo.apply_to(&mut index);
    index.record_edges(demo_edges(), 1_700_000_010);
    let desired = crate::desired(&index, &config);
    (index, desired)
}

#[test]
fn golden_demo_sidecars() {
    let (index, desired) = demo();
    let yaml = desired.to_yaml().expect("renders");
    if std::env::var_os("LAZYXDS_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/demo-sidecars.yaml");
        std::fs::write(path, &yaml).expect("bless");
    }
    assert_eq!(
        yaml, DEMO_SIDECARS,
        "LAZYXDS_BLESS=1 rewrites the golden file"
    );
    assert_eq!(desired.refusals, vec![]);
    assert_eq!(
        index.counters().clone(),
        Counters {
            edges: 10,
            requests: 10,
            non_outbound: 1,
            held: 1,
            deps_added: 8,
            attributed_requests: 8,
            ..Counters::default()
        }
    );
    // Every rendered document parses back to the same value: each workload's catch-all
    // EnvoyFilter, then its Sidecar.
    let docs: Vec<&str> = DEMO_SIDECARS
        .split("---\n")
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(docs.len(), 2 * desired.sidecars.len());
    for (pair, (key, sidecar)) in docs.chunks(2).zip(&desired.sidecars) {
        let filter: crate::istio::EnvoyFilter = serde_norway::from_str(pair[0]).expect("parses");
        assert_eq!(
            filter,
            desired.catch_alls[key].typed().expect("an EnvoyFilter")
        );
        let back: crate::Sidecar = serde_norway::from_str(pair[1]).expect("parses");
        assert_eq!(back, sidecar.typed().expect("a Sidecar"));
    }
}

#[test]
fn golden_demo_report() {
    let (index, desired) = demo();
    let config = demo_topology().render_config(RenderConfig::default());
    let report = report(&index, &desired, &config);
    assert_eq!(report.to_table(), DEMO_REPORT);
    assert_eq!(
        report.totals,
        crate::Totals {
            workloads: 12,
            scoped: 11,
            refused: 0,
            not_opted_in: 1,
            hosts_without: 156,
            hosts_with: 43,
            clusters_removed: 144,
            endpoints_removed: 187,
        }
    );
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(
        json["workloads"][6],
        serde_json::json!({
            "always_visible": [
                {"host": "payments/api.stripe.com",
                 "reason": "port 443 (protocol \"HTTPS\") is HTTPS, not HTTP"},
                {"host": "shop/postgres.shop.svc.cluster.local",
                 "reason": "port 5432 (name \"tcp-postgres\") is TCP, not HTTP"},
            ],
            "workload": {"namespace": "shop", "kind": "Deployment", "name": "productpage"},
            "status": "scoped",
            "hosts_without": 13,
            "hosts_with": 5,
            "clusters_removed": 11,
            "endpoints_removed": 14,
        })
    );
}

#[test]
fn demo_render_config_comes_from_the_file() {
    let topo = Topology::from_yaml(DEMO, "demo-topology.yaml").expect("demo parses");
    assert_eq!(
        topo.render_config(RenderConfig {
            egress_proxy_port: 1,
            ..RenderConfig::default()
        }),
        RenderConfig::test()
    );
}

#[test]
fn workloads_become_the_objects_watchers_produce() {
    let text = r#"
namespaces:
  - {name: shop, labels: {team: a}, annotations: {lazyxds.io/enabled: "true", lazyxds.io/pin: "payments/x.payments.svc.cluster.local"}}
workloads:
  - {kind: Deployment, namespace: shop, name: web, labels: {app: web}, annotations: {lazyxds.io/enabled: "false"}, serviceAccount: web, pods: [{ip: 10.0.0.1, labels: {extra: "1"}}]}
  - {kind: StatefulSet, namespace: shop, name: db, labels: {app: db}, pods: [{name: db-0, ip: "fd00::1"}]}
  - {kind: DaemonSet, namespace: shop, name: agent, labels: {app: agent}, hostNetwork: true, pods: [{ip: 192.168.0.1}]}
  - {kind: CronJob, namespace: shop, name: nightly, labels: {app: nightly}, pods: [{ip: 10.0.0.2}]}
  - {kind: Job, namespace: shop, name: migrate, labels: {app: migrate}, annotations: {lazyxds.io/enabled: "true"}, pods: [{ip: 10.0.0.3}]}
  - {kind: Pod, namespace: shop, name: debug, labels: {app: debug}, pods: [{ip: 10.0.0.4}]}
services:
  - {namespace: shop, name: web, selector: {app: web}, ports: [{port: 80, name: http, appProtocol: http}], exportTo: ["."], headless: true}
serviceEntries:
  - {namespace: shop, name: ext, hosts: [a.example.com], ports: [{number: 443, name: tls, protocol: TLS}]}
  - {namespace: shop, name: vm, hosts: [vm.shop.internal], ports: [{number: 80, name: http, protocol: HTTP}], workloadSelector: {app: vm}}
virtualServices:
  - {namespace: shop, name: web, hosts: [web], gateways: [mesh], destinations: [web], created: 1700000000}
destinationRules:
  - {namespace: shop, name: mtls, spec: {host: "*.local", exportTo: ["."], trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, portLevelSettings: [{port: {number: 8080}}]}}}
sidecars:
  - {namespace: shop, name: default, spec: {egress: [{hosts: ["./*"]}]}}
authorizationPolicies:
  - {namespace: shop, name: deny-all}
  - {namespace: shop, name: db-callers, action: DENY, selector: {app: db}}
  - {namespace: shop, name: everyone, selector: {}}
  - {namespace: shop, name: at-gateway, action: CUSTOM, targeted: true}
"#;
    let topo = Topology::from_yaml(text, "t.yaml").expect("valid");
    let hash = format!("{:08x}", crate::host::fnv1a64(b"web") as u32);
    let rs = format!("web-{hash}");
    let db_hash = format!("db-{:08x}", crate::host::fnv1a64(b"db") as u32);
    let agent_hash = format!("agent-{:08x}", crate::host::fnv1a64(b"agent") as u32);
    let mk = |name: &str, ip: &str, owner: Option<(&str, &str)>, labels: &[(&str, &str)]| {
        let mut pod = mk_pod("shop", name, ip, owner, labels);
        pod.service_account = "default".into();
        pod
    };
    let mut web = mk(
        "web-0",
        "10.0.0.1",
        Some(("ReplicaSet", &rs)),
        &[("app", "web"), ("extra", "1"), ("pod-template-hash", &hash)],
    );
    web.service_account = "web".into();
    let mut agent = mk(
        "agent-0",
        "192.168.0.1",
        Some(("DaemonSet", "agent")),
        &[("app", "agent"), ("controller-revision-hash", &agent_hash)],
    );
    agent.host_network = true;
    let mut migrate = mk(
        "migrate-0",
        "10.0.0.3",
        Some(("Job", "migrate")),
        &[("app", "migrate")],
    );
    migrate.annotations.enabled = Some(true);
    let mut web_object = mk_workload(WorkloadKind::Deployment, "shop", "web", &[("app", "web")]);
    web_object.annotations.enabled = Some(false);
    let want = IndexObjects {
        namespaces: vec![Namespace {
            name: "shop".into(),
            labels: mk_labels(&[("team", "a")]),
            annotations: Annotations {
                enabled: Some(true),
                pins: vec!["payments/x.payments.svc.cluster.local"
                    .parse()
                    .expect("pin")],
            },
        }],
        pods: vec![
            web,
            mk(
                "db-0",
                "fd00::1",
                Some(("StatefulSet", "db")),
                &[
                    ("app", "db"),
                    ("apps.kubernetes.io/pod-index", "0"),
                    ("controller-revision-hash", &db_hash),
                    ("statefulset.kubernetes.io/pod-name", "db-0"),
                ],
            ),
            agent,
            mk(
                "nightly-0",
                "10.0.0.2",
                Some(("Job", "nightly-1")),
                &[("app", "nightly")],
            ),
            migrate,
            mk("debug", "10.0.0.4", None, &[("app", "debug")]),
        ],
        replica_sets: vec![mk_replica_set("shop", &rs, Some(("Deployment", "web")))],
        jobs: vec![
            mk_job("shop", "nightly-1", Some(("CronJob", "nightly"))),
            mk_job("shop", "migrate", None),
        ],
        workloads: vec![
            web_object,
            mk_workload(WorkloadKind::StatefulSet, "shop", "db", &[("app", "db")]),
            mk_workload(
                WorkloadKind::DaemonSet,
                "shop",
                "agent",
                &[("app", "agent")],
            ),
            mk_workload(
                WorkloadKind::CronJob,
                "shop",
                "nightly",
                &[("app", "nightly")],
            ),
        ],
        services: vec![Service {
            export_to: vec![".".to_string()],
            ports: vec![crate::ServicePort {
                port: 80,
                name: "http".to_string(),
                protocol: "TCP".to_string(),
                app_protocol: Some("http".to_string()),
            }],
            headless: true,
            ..mk_service("shop", "web", &[("app", "web")], &[])
        }],
        service_entries: vec![
            mk_service_entry("shop", "ext", &["a.example.com"], &[(443, "TLS")]),
            crate::ServiceEntry {
                workload_selector: Some(mk_labels(&[("app", "vm")])),
                ..mk_service_entry("shop", "vm", &["vm.shop.internal"], &[(80, "HTTP")])
            },
        ],
        virtual_services: vec![VirtualService {
            gateways: vec!["mesh".to_string()],
            created_unix_s: Some(1_700_000_000),
            ..mk_virtual_service("shop", "web", &["web"], &["web"])
        }],
        destination_rules: vec![crate::objects::DestinationRule {
            namespace: "shop".into(),
            name: "mtls".into(),
            host: "*.local".to_string(),
            export_to: vec![".".to_string()],
            workload_selector: None,
            traffic_policy: crate::objects::ConnectionPolicy {
                tls: Some(crate::objects::UpstreamTls {
                    mode: "ISTIO_MUTUAL".to_string(),
                    subject_alt_names: Vec::new(),
                }),
                proxy_protocol: false,
                port_tls: [(8080, None)].into(),
            },
        }],
        sidecars: vec![mk_user_sidecar(
            "shop",
            "default",
            serde_json::json!({"egress": [{"hosts": ["./*"]}]}),
        )],
        authorization_policies: vec![
            mk_policy("shop", "deny-all", Allow, None),
            mk_policy("shop", "db-callers", Deny, Some(&[("app", "db")])),
            // `selector: {}` selects every workload: kept as no selector.
            mk_policy("shop", "everyone", Allow, None),
            crate::AuthorizationPolicy {
                targeted: true,
                ..mk_policy("shop", "at-gateway", Custom, None)
            },
        ],
    };
    assert_eq!(topo.mesh_outbound_policy, None);
    assert_eq!(topo.gateway, None);
    assert_eq!(topo.into_index_objects(), want);

    // And the index resolves them like the real objects.
    let mut index = Index::default();
    Topology::from_yaml(text, "t.yaml")
        .expect("valid")
        .apply_to(&mut index);
    let views: Vec<String> = index
        .workload_views()
        .into_keys()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(
        views,
        vec![
            "Deployment shop/web",
            "StatefulSet shop/db",
            "DaemonSet shop/agent",
            "CronJob shop/nightly",
            "Job shop/migrate",
            "Pod shop/debug",
        ]
    );
    assert!(index.is_enabled(&mk_id(WorkloadKind::Job, "shop", "migrate")));
    assert!(!index.is_enabled(&mk_id(WorkloadKind::Deployment, "shop", "web")));
}

#[test]
fn empty_file_is_an_empty_mesh() {
    let topo = Topology::from_yaml("", "empty.yaml").expect("empty is fine");
    assert_eq!(topo.objects, IndexObjects::default());
}

fn topology_error(location: &str, message: &str) -> Error {
    Error::Topology {
        file: "topo.yaml".to_string(),
        location: location.to_string(),
        message: message.to_string(),
    }
}

#[test]
fn errors_name_file_object_and_field() {
    let pod = |ns: &str, name: &str, ip: &str| {
        format!("{{kind: Deployment, namespace: {ns}, name: {name}, labels: {{app: {name}}}, pods: [{{ip: \"{ip}\"}}]}}")
    };
    let cases: Vec<(String, Error)> = vec![
        (
            "workloads: [\n  {kind: Pod\n".to_string(),
            Error::Yaml {
                file: "topo.yaml".to_string(),
                message: "did not find expected ',' or '}' at line 3 column 1, while parsing a flow mapping at line 2 column 3".to_string(),
            },
        ),
        (
            "namespace: []".to_string(),
            topology_error("namespace", "unknown field `namespace`, expected one of `mesh`, `gateway`, `namespaces`, `workloads`, `services`, `serviceEntries`, `virtualServices`, `destinationRules`, `sidecars`, `authorizationPolicies`"),
        ),
        (
            "mesh: {outboundTrafficPolicy: {mode: DENY}}".to_string(),
            topology_error("mesh.outboundTrafficPolicy.mode", "unknown variant `DENY`, expected `ALLOW_ANY` or `REGISTRY_ONLY`"),
        ),
        (
            "gateway: {host: gw, namespace: x, port: 80}".to_string(),
            topology_error("gateway.host", "\"gw\" is not an FQDN"),
        ),
        (
            "workloads:\n- {kind: Deployment, namespace: shop, name: web, replicas: 2}".to_string(),
            topology_error("workloads[0] (shop/web): replicas", "unknown field `replicas`, expected one of `kind`, `namespace`, `name`, `labels`, `annotations`, `podAnnotations`, `serviceAccount`, `hostNetwork`, `pods`"),
        ),
        (
            "workloads:\n- {kind: Deploymnt, namespace: shop, name: web}".to_string(),
            topology_error("workloads[0] (shop/web): kind", "unknown variant `Deploymnt`, expected one of `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, `ReplicaSet`, `Pod`"),
        ),
        (
            "workloads:\n- {kind: Deployment, namespace: shop, name: web, pods: [{ip: 10.0.0.1, port: 80}]}".to_string(),
            topology_error("workloads[0] (shop/web): pods[0].port", "unknown field `port`, expected one of `name`, `ip`, `labels`"),
        ),
        (
            format!("workloads:\n- {}\n- {}\n- {}\n- {}", pod("default", "a", "10.0.0.1"), pod("default", "b", "10.0.0.2"), pod("default", "c", "10.0.0.3"), pod("default", "reviews-v1", "10.0.0.x")),
            topology_error("workloads[3] (default/reviews-v1): pods[0].ip", "\"10.0.0.x\" is not an IP address"),
        ),
        (
            format!("workloads:\n- {}\n- {}", pod("default", "a", "10.0.0.7"), pod("default", "b", "10.0.0.7")),
            topology_error("workloads[1] (default/b): pods[0].ip", "pod default/a-0 and pod default/b-0 both have IP 10.0.0.7"),
        ),
        (
            "workloads:\n- {kind: Pod, namespace: shop, name: a, pods: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]}".to_string(),
            topology_error("workloads[0] (shop/a): pods", "a Pod workload has exactly one pod, not 2"),
        ),
        (
            "workloads:\n- {kind: Job, namespace: shop, name: a, pods: [{name: x, ip: 10.0.0.1}, {name: x, ip: 10.0.0.2}]}".to_string(),
            topology_error("workloads[0] (shop/a): pods[1].name", "pod shop/x is also declared at workloads[0] (shop/a): pods[0]"),
        ),
        (
            "namespaces:\n- {name: shop, annotations: {lazyxds.io/enabled: \"yes\"}}".to_string(),
            topology_error("namespaces[0] (shop): annotations.\"lazyxds.io/enabled\"", "\"yes\" is not \"true\" or \"false\""),
        ),
        (
            "workloads:\n- {kind: StatefulSet, namespace: shop, name: cart, podAnnotations: {lazyxds.io/pin: \"payments\"}}".to_string(),
            topology_error("workloads[0] (shop/cart): podAnnotations.\"lazyxds.io/pin\"", "\"payments\" is not ns/host"),
        ),
        (
            "services:\n- {namespace: shop, name: a}\n- {namespace: shop, name: a}".to_string(),
            topology_error("services[1] (shop/a)", "same service as services[0] (shop/a)"),
        ),
        (
            "services:\n- {namespace: shop, ports: [{port: 80}]}".to_string(),
            topology_error("services[0]", "missing field `name`"),
        ),
        (
            "services:\n- {namespace: shop, name: a, ports: [{port: 99999}]}".to_string(),
            topology_error("services[0] (shop/a): ports[0].port", "invalid value: integer `99999`, expected u16"),
        ),
        (
            "serviceEntries:\n- {namespace: shop, name: a, hosts: []}".to_string(),
            topology_error("serviceEntries[0] (shop/a): hosts", "needs at least one host"),
        ),
        (
            "destinationRules:\n- {namespace: shop, name: a, spec: {trafficPolicy: {}}}".to_string(),
            topology_error("destinationRules[0] (shop/a): spec.host", "needs a host"),
        ),
        (
            "virtualServices:\n- {namespace: shop, name: a, hosts: [a], http: [[]]}".to_string(),
            topology_error("virtualServices[0] (shop/a): http[0]", "is not a route object"),
        ),
        (
            format!("virtualServices:\n- {{namespace: shop, name: a, hosts: [a], http: {}", "[".repeat(100)),
            topology_error("line 2, column 110", "nests deeper than 64 levels, the limit for a topology file"),
        ),
        // Aliases copy their anchor's value: text within the limit parsed to a value 124
        // levels deep (found by the topology fuzz target's depth property; the input was
        // written by hand, the fuzzer had not reached it).
        (
            format!(
                "destinationRules:\n- {{namespace: a, name: a, spec: {{host: a, x: &a {}x{}}}}}\n\
                 - {{namespace: a, name: b, spec: {{host: b, x: {}*a{}}}}}\n",
                "[".repeat(40),
                "]".repeat(40),
                "[".repeat(30),
                "]".repeat(30)
            ),
            topology_error("destinationRules[1]", "nests deeper than 64 levels (counting what aliases copy), the limit for a topology file"),
        ),
        (
            "sidecars:\n- {namespace: shop, name: lazyxds-x, labels: {app.kubernetes.io/managed-by: lazyxds}, annotations: {lazyxds.io/workload: Deployment/x, lazyxds.io/deps: \"[]\"}}".to_string(),
            topology_error("sidecars[0] (shop/lazyxds-x): annotations.\"lazyxds.io/deps\"", "\"[]\" is not a JSON object of host to unix seconds: invalid type: sequence, expected a map at line 1 column 0"),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(Topology::from_yaml(&text, "topo.yaml"), Err(want), "{text}");
    }
    assert_eq!(
        topology_error("workloads[3] (default/reviews-v1): pods[0].ip", "\"10.0.0.x\" is not an IP address").to_string(),
        "topo.yaml: workloads[3] (default/reviews-v1): pods[0].ip: \"10.0.0.x\" is not an IP address"
    );
}

#[test]
fn virtual_service_routes_and_the_gateway_selector() {
    let text = r#"
gateway: {host: egress.gw.svc.cluster.local, namespace: gw, port: 8443, selector: {app: egress}}
virtualServices:
  - namespace: shop
    name: reviews
    hosts: [reviews]
    destinations: [reviews-v9]
    http:
      - match: [{headers: {x-canary: {exact: "1"}}}]
        route: [{destination: {host: reviews-v3}}]
      - route:
          - {destination: {host: reviews, subset: v1}, weight: 90}
          - {destination: {host: reviews-v2}, weight: 10}
        timeout: 2s
"#;
    let topo = Topology::from_yaml(text, "topo.yaml").expect("parses");
    let vs = &topo.objects.virtual_services[0];
    // The shorthand first, then every route destination once: what Sidecars list.
    assert_eq!(
        vs.destinations,
        ["reviews-v9", "reviews-v3", "reviews", "reviews-v2"]
    );
    assert_eq!(vs.http.len(), 2);
    assert_eq!(vs.http[1]["timeout"], "2s");
    let config = topo.render_config(RenderConfig::default());
    assert_eq!(config.gateway_selector, mk_labels(&[("app", "egress")]));
    assert_eq!(config.egress_proxy_port, 8443);
    assert_eq!(config.gateway_namespace, "gw");
}

#[test]
fn duplicate_ips_across_kinds_and_namespaces() {
    let text = "workloads:\n- {kind: Pod, namespace: a, name: p, pods: [{ip: 10.0.0.7}]}\n- {kind: StatefulSet, namespace: b, name: s, pods: [{ip: 10.0.0.7}]}";
    let err = Topology::from_yaml(text, "topo.yaml").expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "topo.yaml: workloads[1] (b/s): pods[0].ip: pod a/p and pod b/s-0 both have IP 10.0.0.7"
    );
}

#[test]
fn a_topology_that_removes_too_many_workloads_at_once_is_told_apart() {
    let config = crate::IndexConfig::default();
    let full = Topology::from_yaml(DEMO, "demo-topology.yaml").expect("demo parses");
    let before = full.workloads(&config);
    assert_eq!(before.len(), 12);
    let empty = Topology::from_yaml("", "empty.yaml").expect("empty parses");
    let all = empty.removal(&before, &config);
    assert_eq!(
        all,
        Removal {
            before: 12,
            removed: 12
        }
    );
    assert_eq!(all.to_string(), "12 of 12 workloads");
    assert_eq!(full.removal(&before, &config).removed, 0);
    for (removed, max_percent, refused) in [
        (12, 50, true),
        (6, 50, false),
        (7, 50, true),
        (12, 100, false),
        (1, 0, true),
        (0, 0, false),
    ] {
        let r = Removal {
            before: 12,
            removed,
        };
        assert_eq!(r.exceeds(max_percent), refused, "{r} at {max_percent}%");
    }
}
