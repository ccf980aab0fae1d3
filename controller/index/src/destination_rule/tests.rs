use serde_json::{json, Value};

use super::*;
use crate::fixtures::*;

const PORT: u16 = 8080;

fn rule(ns: &str, name: &str, spec: Value) -> DestinationRule {
    DestinationRule::from_spec(ns, name, &spec)
}

fn tls(mode: &str) -> Value {
    json!({"tls": {"mode": mode}})
}

fn local(policy: Value) -> Value {
    json!({"host": "*.local", "trafficPolicy": policy})
}

/// (what, rules, the workload's labels, the shadowing rule and its effect).
type Case = (
    &'static str,
    Vec<DestinationRule>,
    &'static [(&'static str, &'static str)],
    Option<(&'static str, Effect)>,
);

fn mode(mode: &str) -> Effect {
    Effect::Mode {
        mode: mode.to_string(),
        port_level: false,
    }
}

#[test]
fn which_caller_namespace_rules_take_the_gateways_place_and_what_they_break() {
    let web: &[(&str, &str)] = &[("app", "web"), ("version", "v1")];
    let api: &[(&str, &str)] = &[("app", "api")];
    let selector = |labels: Value, policy: Value| json!({"host": "*.local", "workloadSelector": {"matchLabels": labels}, "trafficPolicy": policy});
    let cases: Vec<Case> = vec![
        ("no rule: ours", vec![], web, None),
        (
            "*.local DISABLE: plaintext",
            vec![rule("shop", "plain", local(tls("DISABLE")))],
            web,
            Some(("shop/plain", mode("DISABLE"))),
        ),
        (
            "*.local ISTIO_MUTUAL: what ours does",
            vec![rule("shop", "mtls", local(tls("ISTIO_MUTUAL")))],
            web,
            None,
        ),
        (
            "no trafficPolicy: no TLS (the gateway's pods have no auto-mTLS label)",
            vec![rule("shop", "pool", json!({"host": "*.local"}))],
            web,
            Some(("shop/pool", Effect::NoTls { port_level: false })),
        ),
        (
            "tls without mode: DISABLE",
            vec![rule("shop", "sni", local(json!({"tls": {"sni": "x"}})))],
            web,
            Some(("shop/sni", mode("DISABLE"))),
        ),
        (
            "SIMPLE: not the mesh's certificates",
            vec![rule("shop", "simple", local(tls("SIMPLE")))],
            web,
            Some(("shop/simple", mode("SIMPLE"))),
        ),
        (
            "ISTIO_MUTUAL with subjectAltNames",
            vec![rule(
                "shop",
                "san",
                local(json!({"tls": {"mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://x"]}})),
            )],
            web,
            Some(("shop/san", Effect::SubjectAltNames)),
        ),
        (
            "a port-level entry for the gateway port without tls replaces the rule's",
            vec![rule(
                "shop",
                "port",
                local(json!({"tls": {"mode": "ISTIO_MUTUAL"},
                    "portLevelSettings": [{"port": {"number": PORT}, "connectionPool": {}}]})),
            )],
            web,
            Some(("shop/port", Effect::NoTls { port_level: true })),
        ),
        (
            "a port-level ISTIO_MUTUAL for the gateway port wins over a top-level DISABLE",
            vec![rule(
                "shop",
                "port",
                local(json!({"tls": {"mode": "DISABLE"},
                    "portLevelSettings": [
                        {"port": {"number": PORT}, "tls": {"mode": "ISTIO_MUTUAL"}},
                        {"port": {"number": PORT}, "tls": {"mode": "DISABLE"}}]})),
            )],
            web,
            None,
        ),
        (
            "another port's entry changes nothing",
            vec![rule(
                "shop",
                "port",
                local(json!({"tls": {"mode": "DISABLE"},
                    "portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "ISTIO_MUTUAL"}}]})),
            )],
            web,
            Some(("shop/port", mode("DISABLE"))),
        ),
        (
            "a PROXY protocol header",
            vec![rule(
                "shop",
                "pp",
                local(json!({"tls": {"mode": "ISTIO_MUTUAL"}, "proxyProtocol": {"version": "V1"}})),
            )],
            web,
            Some(("shop/pp", Effect::ProxyProtocol)),
        ),
        (
            "another namespace's rule is never looked at before ours",
            vec![rule("payments", "plain", local(tls("DISABLE")))],
            web,
            None,
        ),
        (
            "exported elsewhere only: not seen in its own namespace",
            vec![rule(
                "shop",
                "plain",
                json!({"host": "*.local", "exportTo": ["payments"], "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            None,
        ),
        (
            "exported nowhere",
            vec![rule(
                "shop",
                "plain",
                json!({"host": "*.local", "exportTo": ["~"], "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            None,
        ),
        (
            "exported to its own namespace by name",
            vec![rule(
                "shop",
                "plain",
                json!({"host": "*.local", "exportTo": ["shop"], "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            Some(("shop/plain", mode("DISABLE"))),
        ),
        (
            "exported `.`",
            vec![rule(
                "shop",
                "plain",
                json!({"host": "*.local", "exportTo": ["."], "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            Some(("shop/plain", mode("DISABLE"))),
        ),
        (
            "the gateway's exact host beats a wildcard",
            vec![
                rule("shop", "plain", local(tls("DISABLE"))),
                rule(
                    "shop",
                    "exact",
                    json!({"host": GATEWAY, "trafficPolicy": tls("ISTIO_MUTUAL")}),
                ),
            ],
            web,
            None,
        ),
        (
            "the exact host, shadowing",
            vec![rule(
                "shop",
                "exact",
                json!({"host": GATEWAY, "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            Some(("shop/exact", mode("DISABLE"))),
        ),
        (
            "a short host is the caller namespace's service",
            vec![rule(
                "shop",
                "short",
                json!({"host": "lazyxds-gateway", "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            None,
        ),
        (
            "name.namespace is taken as written: no FQDN",
            vec![rule(
                "shop",
                "pair",
                json!({"host": "lazyxds-gateway.lazyxds-system", "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            None,
        ),
        (
            "the longest wildcard wins: safe",
            vec![
                rule("shop", "plain", local(tls("DISABLE"))),
                rule(
                    "shop",
                    "svc",
                    json!({"host": "*.svc.cluster.local", "trafficPolicy": tls("ISTIO_MUTUAL")}),
                ),
            ],
            web,
            None,
        ),
        (
            "the longest wildcard wins: unsafe",
            vec![
                rule("shop", "mtls", local(tls("ISTIO_MUTUAL"))),
                rule(
                    "shop",
                    "svc",
                    json!({"host": "*.lazyxds-system.svc.cluster.local", "trafficPolicy": tls("DISABLE")}),
                ),
            ],
            web,
            Some(("shop/svc", mode("DISABLE"))),
        ),
        (
            "`*` covers every host",
            vec![rule(
                "shop",
                "all",
                json!({"host": "*", "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            Some(("shop/all", mode("DISABLE"))),
        ),
        (
            "a wildcard that does not cover the gateway",
            vec![rule(
                "shop",
                "ext",
                json!({"host": "*.example.com", "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            None,
        ),
        (
            "a selector rule for this workload",
            vec![rule(
                "shop",
                "web",
                selector(json!({"app": "web"}), tls("DISABLE")),
            )],
            web,
            Some(("shop/web", mode("DISABLE"))),
        ),
        (
            "only selector rules for others: istiod applies none",
            vec![rule(
                "shop",
                "web",
                selector(json!({"app": "web"}), tls("ISTIO_MUTUAL")),
            )],
            api,
            Some(("shop/web", Effect::SelectsOthers)),
        ),
        (
            "a selector rule for others and a safe catch-all",
            vec![
                rule(
                    "shop",
                    "web",
                    selector(json!({"app": "web"}), tls("DISABLE")),
                ),
                rule("shop", "mtls", local(tls("ISTIO_MUTUAL"))),
            ],
            api,
            None,
        ),
        (
            "a safe selector rule wins over an unsafe catch-all",
            vec![
                rule(
                    "shop",
                    "web",
                    selector(json!({"app": "web"}), tls("ISTIO_MUTUAL")),
                ),
                rule("shop", "plain", local(tls("DISABLE"))),
            ],
            web,
            None,
        ),
        (
            "a selector rule is private even when exported elsewhere",
            vec![rule(
                "shop",
                "web",
                json!({"host": "*.local", "exportTo": ["payments"],
                    "workloadSelector": {"matchLabels": {"app": "web"}}, "trafficPolicy": tls("DISABLE")}),
            )],
            web,
            Some(("shop/web", mode("DISABLE"))),
        ),
        (
            "an empty selector selects every workload",
            vec![rule("shop", "all", selector(json!({}), tls("DISABLE")))],
            api,
            Some(("shop/all", mode("DISABLE"))),
        ),
        (
            "two catch-alls for one host: merged by istiod, both must be safe",
            vec![
                rule("shop", "a-mtls", local(tls("ISTIO_MUTUAL"))),
                rule("shop", "b-plain", local(tls("DISABLE"))),
            ],
            web,
            Some(("shop/b-plain", mode("DISABLE"))),
        ),
    ];
    for (what, rules, labels, want) in cases {
        let mut index = Index::default();
        for r in rules {
            index.apply(r);
        }
        let labels = mk_labels(labels);
        let got = shadowing_gateway(&index, "shop", &[&labels], GATEWAY, PORT);
        let got = got.map(|s| (s.rule, s.effect));
        let want = want.map(|(r, e)| (r.to_string(), e));
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn a_shadow_says_which_rule_and_what_it_does() {
    let mut index = Index::default();
    index.apply(rule("shop", "plain", local(tls("DISABLE"))));
    let labels = mk_labels(&[("app", "web")]);
    let shadow = shadowing_gateway(&index, "shop", &[&labels], GATEWAY, PORT).unwrap();
    assert_eq!(
        shadow.to_string(),
        "DestinationRule shop/plain (host *.local) takes precedence over lazyxds's for the \
         gateway and sets tls mode DISABLE: first calls would not reach the gateway over \
         Istio mTLS"
    );
}
