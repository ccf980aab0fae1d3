use serde_json::json;

use super::*;
use crate::fixtures::*;

const GW_LABELS: &str = "lazyxds";

fn meta(name: &str) -> Value {
    json!({
        "name": name,
        "namespace": "lazyxds-system",
        "labels": {"app.kubernetes.io/managed-by": GW_LABELS},
    })
}

fn mk_vs(name: &str, host: &str, http: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta(name),
        "spec": {
            "hosts": [host],
            "gateways": ["lazyxds-system/lazyxds-gateway"],
            "exportTo": ["."],
            "http": http,
        },
    })
}

fn by_port(host: &str, port: u16) -> Value {
    json!({
        "name": format!("{host}:{port}"),
        "match": [{"authority": {"exact": format!("{host}:{port}")}}],
        "route": [{"destination": {"host": host, "port": {"number": port}}}],
    })
}

/// shop: reviews (9080), ratings (9080 + 9081 admin), web (80), postgres (TCP 5432),
/// legacy (TCP 9081: a port both HTTP and opaque); VirtualService `reviews` (user http
/// routes); ServiceEntries api.partner.test (HTTP 80), api.stripe.com (HTTPS 443),
/// *.wild.test (HTTP 80). payments: payments (9080).
fn mk_index() -> Index {
    let mut index = Index::default();
    index.apply(mk_namespace("shop", Some(true)));
    index.apply(mk_namespace("payments", None));
    let http = [(9080, "http")];
    index.apply(mk_service("shop", "reviews", &[("app", "reviews")], &http));
    index.apply(mk_service(
        "shop",
        "ratings",
        &[("app", "ratings")],
        &[(9080, "http"), (9081, "http-admin")],
    ));
    index.apply(mk_service(
        "shop",
        "web",
        &[("app", "web")],
        &[(80, "http-web")],
    ));
    index.apply(mk_service(
        "shop",
        "postgres",
        &[("app", "postgres")],
        &[(5432, "tcp-postgres")],
    ));
    index.apply(mk_service(
        "shop",
        "legacy",
        &[("app", "legacy")],
        &[(9090, "grpc"), (7000, "tcp-legacy")],
    ));
    index.apply(mk_service(
        "payments",
        "payments",
        &[("app", "payments")],
        &http,
    ));
    index.apply(mk_service_entry(
        "shop",
        "partner",
        &["api.partner.test"],
        &[(80, "HTTP")],
    ));
    index.apply(mk_service_entry(
        "shop",
        "stripe",
        &["api.stripe.com"],
        &[(443, "HTTPS")],
    ));
    index.apply(mk_service_entry(
        "shop",
        "wild",
        &["*.wild.test"],
        &[(80, "HTTP")],
    ));
    let mut vs = mk_virtual_service("shop", "reviews", &["reviews"], &[]);
    vs.http = vec![
        json!({
            "name": "canary",
            "match": [
                {"headers": {"x-canary": {"exact": "1"}}},
                // Cannot hold at the gateway: dropped.
                {"sourceLabels": {"app": "productpage"}},
            ],
            "route": [{"destination": {"host": "reviews", "subset": "v3"}}],
        }),
        json!({
            "route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "reviews.shop.svc.cluster.local", "subset": "v2"}, "weight": 10},
            ],
            "timeout": "2s",
            "rewrite": {"uri": "/v1"},
            "mirror": {"host": "ratings"},
        }),
    ];
    index.apply(vs);
    // Bound to some other gateway only: sidecars ignore it, so does the lazy gateway.
    let mut ingress = mk_virtual_service("shop", "ingress", &["web.example.com"], &["web"]);
    ingress.gateways = vec!["istio-system/ingress".into()];
    index.apply(ingress);
    index
}

#[test]
fn renders_every_object() {
    let objects = gateway_objects(&mk_index(), &RenderConfig::test());
    assert_eq!(
        objects.gateway,
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": meta("lazyxds-gateway"),
            "spec": {
                "selector": {"istio": "lazyxds-gateway"},
                "servers": [{
                    "port": {"number": 8080, "name": "https-lazyxds", "protocol": "HTTPS"},
                    "hosts": ["./*"],
                    "tls": {"mode": "ISTIO_MUTUAL"},
                }],
            },
        })
    );
    assert_eq!(
        objects.destination_rule,
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": meta("lazyxds-gateway"),
            "spec": {
                "host": GATEWAY,
                "exportTo": ["*"],
                "trafficPolicy": {"portLevelSettings": [
                    {"port": {"number": 8080}, "tls": {"mode": "ISTIO_MUTUAL"}},
                ]},
            },
        })
    );
    // 7000 and 5432 are opaque; 443 is TLS; every other port can carry HTTP.
    // Exported everywhere: every lazy Sidecar imports it, whatever the mesh's default.
    let mut placeholder_meta = meta("lazyxds-http-ports");
    placeholder_meta["annotations"] = json!({"networking.istio.io/exportTo": "*"});
    assert_eq!(
        objects.placeholder_service,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": placeholder_meta,
            "spec": {"ports": [
                {"name": "http-80", "port": 80, "protocol": "TCP", "targetPort": 80},
                {"name": "http-9080", "port": 9080, "protocol": "TCP", "targetPort": 9080},
                {"name": "http-9081", "port": 9081, "protocol": "TCP", "targetPort": 9081},
                {"name": "http-9090", "port": 9090, "protocol": "TCP", "targetPort": 9090},
            ]},
        })
    );
    let names: Vec<&str> = objects.virtual_services.iter().map(|v| v.name()).collect();
    assert_eq!(
        names,
        [
            "lazyxds-unknown-mesh-hosts",
            "lazyxds-route-api.partner.test",
            "lazyxds-route-legacy.shop.svc.cluster.local",
            "lazyxds-route-payments.payments.svc.cluster.local",
            "lazyxds-route-ratings.shop.svc.cluster.local",
            "lazyxds-route-reviews.shop.svc.cluster.local",
            "lazyxds-route-web.shop.svc.cluster.local",
        ]
    );
    assert_eq!(
        objects.virtual_services[0],
        mk_vs(
            "lazyxds-unknown-mesh-hosts",
            "*.svc.cluster.local",
            json!([{
                "name": "unknown-mesh-host",
                "directResponse": {"status": 404, "body": {"string": UNKNOWN_MESH_HOST_BODY}},
            }])
        )
    );
    let ratings = "ratings.shop.svc.cluster.local";
    // Two ports: each by its own authority.
    assert_eq!(
        objects.virtual_service_for(ratings),
        Some(mk_vs(
            "lazyxds-route-ratings.shop.svc.cluster.local",
            ratings,
            json!([by_port(ratings, 9080), by_port(ratings, 9081)])
        ))
    );
    // Port 80: a Host without port is port 80.
    let web = "web.shop.svc.cluster.local";
    assert_eq!(
        objects.virtual_service_for(web),
        Some(mk_vs(
            "lazyxds-route-web.shop.svc.cluster.local",
            web,
            json!([{
                "name": "web.shop.svc.cluster.local:80",
                "match": [
                    {"authority": {"exact": web}},
                    {"authority": {"exact": "web.shop.svc.cluster.local:80"}},
                ],
                "route": [{"destination": {"host": web, "port": {"number": 80}}}],
            }])
        ))
    );
    // An HTTP ServiceEntry host is lazy too.
    assert_eq!(
        objects.virtual_service_for("api.partner.test"),
        Some(mk_vs(
            "lazyxds-route-api.partner.test",
            "api.partner.test",
            json!([{
                "name": "api.partner.test:80",
                "match": [
                    {"authority": {"exact": "api.partner.test"}},
                    {"authority": {"exact": "api.partner.test:80"}},
                ],
                "route": [{"destination": {"host": "api.partner.test", "port": {"number": 80}}}],
            }])
        ))
    );
    // Only HTTP-capable ports of a mixed service.
    let legacy = "legacy.shop.svc.cluster.local";
    assert_eq!(
        objects.virtual_service_for(legacy),
        Some(mk_vs(
            "lazyxds-route-legacy.shop.svc.cluster.local",
            legacy,
            json!([by_port(legacy, 9090)])
        ))
    );
    for unrouted in [
        "api.stripe.com",
        "*.wild.test",
        "web.example.com",
        "postgres.shop.svc.cluster.local",
    ] {
        assert_eq!(objects.virtual_service_for(unrouted), None, "{unrouted}");
    }
}

#[test]
fn a_user_virtual_service_is_reproduced_per_port() {
    let objects = gateway_objects(&mk_index(), &RenderConfig::test());
    let reviews = "reviews.shop.svc.cluster.local";
    let authority = json!({"exact": "reviews.shop.svc.cluster.local:9080"});
    assert_eq!(
        objects.virtual_service_for(reviews),
        Some(mk_vs(
            "lazyxds-route-reviews.shop.svc.cluster.local",
            reviews,
            json!([
                {
                    "name": "canary:9080",
                    "match": [{"headers": {"x-canary": {"exact": "1"}}, "authority": authority}],
                    "route": [{"destination": {"host": reviews, "subset": "v3", "port": {"number": 9080}}}],
                },
                {
                    "name": "route-1:9080",
                    "match": [{"authority": authority}],
                    "route": [
                        {"destination": {"host": reviews, "subset": "v1", "port": {"number": 9080}}, "weight": 90},
                        {"destination": {"host": reviews, "subset": "v2", "port": {"number": 9080}}, "weight": 10},
                    ],
                    "timeout": "2s",
                    "rewrite": {"uri": "/v1"},
                    // ratings has two ports: the one the caller used.
                    "mirror": {"host": "ratings.shop.svc.cluster.local", "port": {"number": 9080}},
                },
            ])
        ))
    );
}

#[test]
fn user_match_conditions_at_the_gateway() {
    let host = "h.ns.svc.cluster.local";
    let cases = [
        (
            json!({}),
            Some(vec![
                json!({"authority": {"exact": "h.ns.svc.cluster.local:9080"}}),
            ]),
        ),
        (
            json!({"uri": {"prefix": "/a"}, "port": 9080}),
            Some(vec![
                json!({"uri": {"prefix": "/a"}, "authority": {"exact": "h.ns.svc.cluster.local:9080"}}),
            ]),
        ),
        (json!({"port": 9081}), None),
        (json!({"sourceLabels": {"app": "x"}}), None),
        (json!({"sourceNamespace": "ns"}), None),
        (json!({"gateways": ["istio-system/ingress"]}), None),
        (
            json!({"gateways": ["mesh"]}),
            Some(vec![
                json!({"authority": {"exact": "h.ns.svc.cluster.local:9080"}}),
            ]),
        ),
        // The user's own authority condition is kept as written.
        (
            json!({"authority": {"prefix": "h"}}),
            Some(vec![json!({"authority": {"prefix": "h"}})]),
        ),
        (json!("not an object"), None),
    ];
    for (m, want) in cases {
        assert_eq!(gateway_match(&m, host, Some(9080)), want, "{m}");
    }
    // Unknown ports (a VirtualService-only host): the condition as it is, minus `port`.
    assert_eq!(
        gateway_match(
            &json!({"port": 80, "headers": {"a": {"exact": "b"}}}),
            host,
            None
        ),
        Some(vec![json!({"headers": {"a": {"exact": "b"}}})])
    );
    assert_eq!(
        gateway_match(&json!({"port": 80}), host, None),
        Some(vec![json!({})])
    );
}

#[test]
fn virtual_service_only_hosts_and_the_destinations_shorthand() {
    let mut index = mk_index();
    // A host no Service has: routes without authority conditions.
    let mut only = mk_virtual_service("shop", "all", &["all-reviews.example"], &[]);
    only.http = vec![json!({"route": [{"destination": {"host": "reviews"}}]})];
    index.apply(only);
    // The shorthand: everything to the first destination.
    index.apply(mk_virtual_service(
        "payments",
        "pay",
        &["payments"],
        &["payments-v2", "x"],
    ));
    let objects = gateway_objects(&index, &RenderConfig::test());
    assert_eq!(
        objects
            .virtual_service_for("all-reviews.example")
            .map(|v| v["spec"]["http"].clone()),
        Some(json!([{
            "name": "route-0",
            "route": [{"destination": {"host": "reviews.shop.svc.cluster.local", "port": {"number": 9080}}}],
        }]))
    );
    assert_eq!(
        objects
            .virtual_service_for("payments.payments.svc.cluster.local")
            .map(|v| v["spec"]["http"].clone()),
        Some(json!([{
            "name": "route-0:9080",
            "match": [{"authority": {"exact": "payments.payments.svc.cluster.local:9080"}}],
            "route": [{"destination": {"host": "payments-v2.payments.svc.cluster.local", "port": {"number": 9080}}}],
        }]))
    );
}

/// Of several VirtualServices for one host, a caller's sidecar takes its namespace's private
/// ones and those exported to it first, then public ones, each oldest first; the gateway
/// reproduces the choice every caller without such a VirtualService makes: the oldest
/// public one. Namespace-only ones are not the gateway's (their host stays visible to
/// their namespaces: `desired::always_visible`), nor are hidden ones.
#[test]
fn of_several_virtual_services_for_one_host_the_oldest_public_one_is_reproduced() {
    let payments = "payments.payments.svc.cluster.local";
    let to = |dest: &str, name: &str| {
        json!([{"name": name,
            "match": [{"authority": {"exact": format!("{payments}:9080")}}],
            "route": [{"destination": {"host": dest, "port": {"number": 9080}}}]}])
    };
    let vs = |ns: &str, name: &str, dest: &str, created: Option<u64>, export_to: &[&str]| {
        let mut vs = mk_virtual_service(ns, name, &[payments], &[dest]);
        vs.created_unix_s = created;
        vs.export_to = export_to.iter().map(|e| e.to_string()).collect();
        vs
    };
    let old_dest = "old.payments.svc.cluster.local";
    let new_dest = "new.payments.svc.cluster.local";
    let cases = [
        (
            "the older wins over a name that sorts first",
            vec![
                vs("payments", "a-new", new_dest, Some(200), &[]),
                vs("payments", "b-old", old_dest, Some(100), &[]),
            ],
            Some(old_dest),
        ),
        (
            "across namespaces, by creation time too",
            vec![
                vs("a-team", "new", new_dest, Some(200), &["*"]),
                vs("z-team", "old", old_dest, Some(100), &[]),
            ],
            Some(old_dest),
        ),
        (
            "same second: by name, then namespace",
            vec![
                vs("payments", "b", new_dest, Some(100), &[]),
                vs("payments", "a", old_dest, Some(100), &[]),
            ],
            Some(old_dest),
        ),
        (
            "an older namespace-only one is not the gateway's",
            vec![
                vs("shop", "private", new_dest, Some(1), &["."]),
                vs("payments", "public", old_dest, Some(100), &[]),
            ],
            Some(old_dest),
        ),
        (
            "exported to some namespaces only, or to none",
            vec![
                vs("shop", "exported", new_dest, Some(1), &["payments", "shop"]),
                vs("shop", "hidden", new_dest, Some(2), &["~"]),
            ],
            None,
        ),
        (
            "`*` among others makes it public",
            vec![vs("shop", "both", old_dest, Some(1), &[".", "*"])],
            Some(old_dest),
        ),
    ];
    for (what, virtual_services, want) in cases {
        let mut index = mk_index();
        for v in virtual_services {
            index.apply(v);
        }
        let objects = gateway_objects(&index, &RenderConfig::test());
        let got = objects
            .virtual_service_for(payments)
            .map(|v| v["spec"]["http"].clone());
        let want = match want {
            Some(dest) => to(dest, "route-0:9080"),
            // The Service's own route.
            None => to(payments, &format!("{payments}:9080")),
        };
        assert_eq!(got, Some(want), "{what}");
    }
}

/// The placeholder's ports are the mesh's HTTP ports by the one rule, minus any port some
/// other service uses for anything else; only HTTP ports get gateway routes.
#[test]
fn a_host_the_gateway_cannot_see_gets_no_route() {
    for (export_to, routed) in [
        (vec!["."], false),
        (vec!["shop"], false),
        (vec!["~"], false),
        (vec!["*"], true),
        (vec![".", "lazyxds-system"], true),
        (vec![], true),
    ] {
        let mut index = Index::default();
        index.apply(mk_namespace("shop", Some(true)));
        let mut svc = mk_service("shop", "private", &[("app", "p")], &[(80, "http")]);
        svc.export_to = svc_export(&export_to);
        index.apply(svc);
        let mut se = mk_service_entry("shop", "ext", &["ext.example.com"], &[(80, "HTTP")]);
        se.export_to = svc_export(&export_to);
        index.apply(se);
        let objects = gateway_objects(&index, &RenderConfig::test());
        for host in ["private.shop.svc.cluster.local", "ext.example.com"] {
            assert_eq!(
                objects.virtual_service_for(host).is_some(),
                routed,
                "{host} exportTo {export_to:?}"
            );
        }
    }
}

fn svc_export(export_to: &[&str]) -> Vec<String> {
    export_to.iter().map(|e| e.to_string()).collect()
}

#[test]
fn the_placeholder_carries_only_ports_istio_calls_http() {
    let mut index = Index::default();
    index.apply(mk_namespace("shop", Some(true)));
    let svc = |name: &str, ports: &[(u16, &str)]| mk_service("shop", name, &[("app", name)], ports);
    index.apply(svc("web", &[(8080, "http"), (9000, "HTTP-foo")]));
    index.apply(svc("ui", &[(9001, "grpc-web")]));
    let mut h2c = svc("h2c", &[(9002, "tcp")]);
    h2c.ports[0].app_protocol = Some("kubernetes.io/h2c".into());
    index.apply(h2c);
    let mut ws = svc("ws", &[(9003, "")]);
    ws.ports[0].app_protocol = Some("kubernetes.io/ws".into());
    index.apply(ws);
    // Unnamed, unknown or opaque: never in it.
    index.apply(svc("legacy", &[(7000, "")]));
    index.apply(svc("pg", &[(5432, "postgres")]));
    index.apply(svc("mq", &[(5672, "amqp")]));
    index.apply(svc("mongo", &[(27017, "mongo")]));
    let mut mysql = svc("mysql", &[(3306, "db")]);
    mysql.ports[0].app_protocol = Some("mysql".into());
    index.apply(mysql);
    // HTTP here, sniffed there: a listener cannot be both.
    index.apply(svc("api", &[(9080, "http")]));
    index.apply(svc("other", &[(9080, "client")]));
    index.apply(mk_service_entry(
        "shop",
        "ext",
        &["ext.example.com"],
        &[(443, "HTTPS"), (8443, ""), (80, "HTTP")],
    ));
    let objects = gateway_objects(&index, &RenderConfig::test());
    let ports: Vec<&Value> = objects.placeholder_service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| &p["port"])
        .collect();
    assert_eq!(
        ports,
        [80, 8080, 9000, 9001, 9002, 9003]
            .map(|p| json!(p))
            .iter()
            .collect::<Vec<_>>()
    );
    assert!(objects
        .virtual_service_for("legacy.shop.svc.cluster.local")
        .is_none());
}

#[test]
fn the_envoy_filter_adds_the_forward_proxy_catch_all() {
    let config = RenderConfig {
        egress_proxy_port: 8443,
        gateway_selector: mk_labels(&[("app", "egress")]),
        ..RenderConfig::test()
    };
    let objects = gateway_objects(&Index::default(), &config);
    let dns = json!({"name": "lazyxds_external", "dns_lookup_family": "V4_PREFERRED"});
    assert_eq!(
        objects.envoy_filter,
        json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": meta("lazyxds-external"),
            "spec": {
                "workloadSelector": {"labels": {"app": "egress"}},
                "priority": 10,
                "configPatches": [
                    {
                        "applyTo": "CLUSTER",
                        "match": {"context": "GATEWAY"},
                        "patch": {"operation": "ADD", "value": {
                            "name": "lazyxds-external",
                            "connect_timeout": "5s",
                            "lb_policy": "CLUSTER_PROVIDED",
                            "cluster_type": {
                                "name": "envoy.clusters.dynamic_forward_proxy",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                                    "dns_cache_config": dns,
                                },
                            },
                        }},
                    },
                    {
                        "applyTo": "HTTP_FILTER",
                        "match": {"context": "GATEWAY", "listener": {
                            "portNumber": 8443,
                            "filterChain": {"filter": {
                                "name": "envoy.filters.network.http_connection_manager",
                                "subFilter": {"name": "envoy.filters.http.router"},
                            }},
                        }},
                        "patch": {"operation": "INSERT_BEFORE", "value": {
                            "name": "envoy.filters.http.dynamic_forward_proxy",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                                "dns_cache_config": dns,
                            },
                        }},
                    },
                    {
                        "applyTo": "VIRTUAL_HOST",
                        "match": {"context": "GATEWAY", "routeConfiguration": {"portNumber": 8443}},
                        "patch": {"operation": "ADD", "value": {
                            "name": "lazyxds-external",
                            "domains": ["*"],
                            "routes": [{
                                "name": "lazyxds-external",
                                "match": {"prefix": "/"},
                                "route": {"cluster": "lazyxds-external"},
                            }],
                        }},
                    },
                ],
            },
        })
    );
    assert_eq!(
        objects.gateway["spec"]["selector"],
        json!({"app": "egress"})
    );
    assert_eq!(
        objects.gateway["spec"]["servers"][0]["port"]["number"],
        8443
    );
    // An empty mesh: only the unknown-host answer; the placeholder has no port.
    assert_eq!(objects.virtual_services.len(), 1);
    assert_eq!(objects.placeholder_service["spec"]["ports"], json!([]));
}

#[test]
fn yaml_has_every_object_in_apply_order() {
    let objects = gateway_objects(&mk_index(), &RenderConfig::test());
    let yaml = objects.to_yaml().unwrap();
    let kinds: Vec<String> = yaml
        .split("---\n")
        .filter(|d| !d.is_empty())
        .map(|d| {
            let v: Value = serde_norway::from_str(d).unwrap();
            format!(
                "{} {}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(kinds.len(), 4 + objects.virtual_services.len());
    assert_eq!(
        kinds[..5],
        [
            "Service lazyxds-http-ports",
            "DestinationRule lazyxds-gateway",
            "Gateway lazyxds-gateway",
            "EnvoyFilter lazyxds-external",
            "VirtualService lazyxds-unknown-mesh-hosts",
        ]
    );
}

#[test]
fn the_namespace_table() {
    let mut index = mk_index();
    index.apply(mk_namespace("strict", None));
    index.apply(mk_user_sidecar(
        "strict",
        "default",
        json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
    ));
    mk_deployment(&mut index, "shop", "productpage", "10.0.0.10");
    mk_deployment(&mut index, "strict", "client", "10.0.0.2");
    mk_deployment(&mut index, "payments", "api", "fd00::7");
    mk_deployment(&mut index, "payments", "api2", "9.0.0.1");
    let table = namespace_table(&index, &RenderConfig::test());
    let allow = WirePolicy::AllowAny as i32;
    let registry = WirePolicy::RegistryOnly as i32;
    assert_eq!(
        table,
        NamespaceTable {
            namespaces: vec!["payments".into(), "shop".into(), "strict".into()],
            policies: vec![allow, allow, registry],
            mesh_policy: allow,
            // address << 32 | namespace index
            ipv4: vec![
                0x0900_0001_0000_0000,
                0x0a00_0002_0000_0002,
                0x0a00_000a_0000_0001
            ],
            // high, low, namespace index
            ipv6: vec![0xfd00_0000_0000_0000, 7, 0],
        }
    );
    // A REGISTRY_ONLY mesh: namespaces without a default Sidecar inherit it.
    let config = RenderConfig {
        mesh_outbound_policy: OutboundPolicy::RegistryOnly,
        ..RenderConfig::test()
    };
    let table = namespace_table(&index, &config);
    assert_eq!(table.policies, vec![registry, registry, registry]);
    assert_eq!(table.mesh_policy, registry);
    // A root-namespace default applies to namespaces without their own.
    index.apply(mk_user_sidecar(
        "istio-system",
        "default",
        json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
    ));
    let table = namespace_table(&index, &RenderConfig::test());
    assert_eq!(table.namespaces[0], "istio-system");
    assert_eq!(table.policies, vec![registry, registry, registry, registry]);
}

/// A packed object gives back exactly its compact text, its key and its value; equal
/// objects pack to equal `JsonText`s (the plan and the tests compare them).
#[test]
fn json_text_gives_back_what_it_packed() {
    let hosts: Vec<String> = (0..10)
        .map(|i| format!("ns-{i}/svc-{i}.ns-{i}.svc.cluster.local"))
        .collect();
    let cases = [
        json!({"metadata": {"namespace": "shop", "name": "lazyxds-deployment-cart"},
               "spec": {"egress": [{"hosts": hosts}]}}),
        json!({"metadata": {"name": "no-namespace"}, "spec": {}}),
        json!({"metadata": {"namespace": "ünïcode", "name": "n"}, "data": "é\u{1F600}"}),
        json!(null),
    ];
    for object in cases {
        let text = JsonText::new(&object);
        assert_eq!(text.text(), object.to_string(), "{object}");
        assert_eq!(text.value(), object);
        assert_eq!(
            text.namespace(),
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        assert_eq!(
            text.name(),
            object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        assert_eq!(text, JsonText::new(&object.clone()));
    }
    // Host names repeat: the block is smaller than the text it holds.
    let sidecar = JsonText::new(&json!({"spec": {"egress": [{"hosts": hosts}]}}));
    assert!(
        sidecar.packed.len() < sidecar.text().len() / 2,
        "{}",
        sidecar.packed.len()
    );
}

/// The dictionary matches what the renderers make: every rendered Sidecar, catch-all and
/// gateway VirtualService packs to less than a quarter of its text (4.5 to 13 times
/// smaller here; LZ4 without it: 1.4 to 2 times). Fails when a renderer drifts far from
/// `DICTIONARY`.
#[test]
fn rendered_objects_pack_to_a_fraction_of_their_text() {
    let index = crate::index::Index::test();
    let config = RenderConfig::test();
    let desired = crate::desired::desired(&index, &config);
    let gateway = gateway_objects(&index, &config);
    let objects: Vec<&JsonText> = desired
        .sidecars
        .values()
        .chain(desired.catch_alls.values())
        .chain(gateway.virtual_services.iter().skip(1))
        .collect();
    assert!(objects.len() >= 6, "{}", objects.len());
    for object in objects {
        let text = object.text();
        assert!(
            object.packed.len() * 4 < text.len(),
            "{} B packed of {} B: {text}",
            object.packed.len(),
            text.len()
        );
    }
}
