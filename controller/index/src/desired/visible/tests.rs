use serde_json::json;

use super::*;
use crate::desired::{desired, RefusalReason};
use crate::fixtures::*;
use crate::objects::AuthorizationAction::{Allow, Audit, Custom, Deny};
use crate::objects::{Service, WorkloadKind};
use crate::MeshConfig;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// What productpage's Sidecar lists beyond what every Sidecar has and its learned deps.
fn kept(index: &Index) -> Vec<String> {
    let desired = desired(index, &RenderConfig::test());
    let sidecar = desired
        .sidecar_of(&productpage())
        .expect("productpage is scoped");
    sidecar.spec.egress[0]
        .hosts
        .iter()
        .filter(|h| !h.starts_with("istio-system/") && !h.starts_with("lazyxds-system/"))
        .cloned()
        .collect()
}

/// `ns/host` → its reasons, as the report shows them.
fn reasons(index: &Index) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in always_visible(index, &RenderConfig::test()) {
        out.entry(a.egress_host)
            .or_default()
            .extend(a.why.iter().map(ToString::to_string));
    }
    out
}

fn http_service(ns: &str, name: &str, export_to: &[&str]) -> Service {
    let mut svc = mk_service(ns, name, &[("app", name)], &[(8080, "http")]);
    svc.export_to = strings(export_to);
    svc
}

const POSTGRES: &str = "shop/postgres.shop.svc.cluster.local";

#[test]
fn hosts_the_gateway_cannot_see_stay_visible_where_they_are_seen() {
    let mut index = Index::test();
    // exportTo (Istio's `.`, `*`, `~`, names) against the gateway's namespace.
    index.apply(http_service("shop", "private", &["."]));
    index.apply(http_service(
        "shop",
        "with-gateway",
        &[".", "lazyxds-system"],
    ));
    index.apply(http_service("shop", "public", &["*"]));
    index.apply(http_service("shop", "nowhere", &["~"]));
    index.apply(http_service("payments", "partners", &["shop"]));
    index.apply(http_service("payments", "internal", &["."]));
    let mut legacy = mk_service_entry("shop", "legacy", &["legacy.corp"], &[(80, "HTTP")]);
    legacy.export_to = strings(&["."]);
    index.apply(legacy);
    // A VirtualService the gateway does not see, one routing to a host it does not see,
    // one delegating routes (not reproduced at the gateway), and plain ones.
    let mut alias = mk_virtual_service("shop", "alias", &["alias"], &["ratings"]);
    alias.export_to = strings(&["."]);
    index.apply(alias);
    index.apply(mk_virtual_service(
        "payments",
        "front",
        &["front.payments.svc.cluster.local"],
        &["partners"],
    ));
    let mut checkout = mk_virtual_service("shop", "checkout", &["checkout"], &[]);
    checkout.http = vec![
        json!({"match": [{"uri": {"prefix": "/cart"}}], "delegate": {"name": "cart-routes"}}),
        json!({"route": [{"destination": {"host": "ratings"}}]}),
    ];
    index.apply(checkout);
    index.apply(mk_virtual_service(
        "shop",
        "to-public",
        &["to-public"],
        &["public"],
    ));

    assert_eq!(
        kept(&index),
        strings(&[
            "payments/front.payments.svc.cluster.local",
            "payments/partners.payments.svc.cluster.local",
            "shop/alias.shop.svc.cluster.local",
            "shop/checkout.shop.svc.cluster.local",
            "shop/legacy.corp",
            POSTGRES,
            "shop/private.shop.svc.cluster.local",
        ]),
        "with-gateway, public and to-public are routed by the gateway; nowhere and \
         payments/internal are not exported to shop"
    );
    let why = reasons(&index);
    let gateway = "leaves out the gateway's namespace lazyxds-system";
    for (host, want) in [
        (
            "shop/private.shop.svc.cluster.local",
            format!("Service shop/private's exportTo [\".\"] {gateway}"),
        ),
        (
            "shop/nowhere.shop.svc.cluster.local",
            format!("Service shop/nowhere's exportTo [\"~\"] {gateway}"),
        ),
        (
            "payments/internal.payments.svc.cluster.local",
            format!("Service payments/internal's exportTo [\".\"] {gateway}"),
        ),
        (
            "shop/legacy.corp",
            format!("ServiceEntry shop/legacy's exportTo [\".\"] {gateway}"),
        ),
        (
            "shop/alias.shop.svc.cluster.local",
            format!("VirtualService shop/alias's exportTo [\".\"] {gateway}"),
        ),
        (
            "payments/front.payments.svc.cluster.local",
            format!(
                "VirtualService payments/front routes to partners.payments.svc.cluster.local: \
                 Service payments/partners's exportTo [\"shop\"] {gateway}"
            ),
        ),
        (
            "shop/checkout.shop.svc.cluster.local",
            "VirtualService shop/checkout delegates routes to shop/cart-routes, which the \
             gateway does not reproduce"
                .to_string(),
        ),
    ] {
        // The first reason; a VirtualService only some namespaces see also routes for
        // those alone (a second reason, tested in desired's tests).
        assert_eq!(why.get(host).and_then(|w| w.first()), Some(&want), "{host}");
    }
    for lazy in [
        "shop/with-gateway.shop.svc.cluster.local",
        "shop/public.shop.svc.cluster.local",
        "shop/to-public.shop.svc.cluster.local",
    ] {
        assert_eq!(why.get(lazy), None, "{lazy}");
    }
}

#[test]
fn the_mesh_default_export_to_applies_to_objects_that_set_none() {
    let mut index = Index::test();
    index.apply(http_service("shop", "public", &["*"]));
    index.apply(http_service("payments", "partners", &["shop"]));
    index.set_mesh_config(
        MeshConfig::parse(
            "defaultServiceExportTo: [\".\"]\ndefaultVirtualServiceExportTo: [\".\"]\n",
        )
        .unwrap(),
    );
    assert_eq!(
        kept(&index),
        strings(&[
            "payments/partners.payments.svc.cluster.local",
            POSTGRES,
            "shop/productpage.shop.svc.cluster.local",
            "shop/ratings.shop.svc.cluster.local",
            "shop/reviews-v2.shop.svc.cluster.local",
            "shop/reviews.shop.svc.cluster.local",
        ]),
        "every shop Service but the public one; payments/payments is not exported to shop"
    );
    let why = reasons(&index);
    assert_eq!(
        why["shop/ratings.shop.svc.cluster.local"],
        vec![
            "Service shop/ratings sets no exportTo and the mesh's defaultServiceExportTo \
             [\".\"] leaves out the gateway's namespace lazyxds-system"
        ]
    );
    assert_eq!(
        why["shop/reviews.shop.svc.cluster.local"],
        vec![
            "Service shop/reviews sets no exportTo and the mesh's defaultServiceExportTo \
             [\".\"] leaves out the gateway's namespace lazyxds-system",
            "VirtualService shop/reviews sets no exportTo and the mesh's \
             defaultVirtualServiceExportTo [\".\"] leaves out the gateway's namespace \
             lazyxds-system",
            "VirtualService shop/reviews routes to reviews-v2.shop.svc.cluster.local: Service \
             shop/reviews-v2 sets no exportTo and the mesh's defaultServiceExportTo [\".\"] \
             leaves out the gateway's namespace lazyxds-system",
        ]
    );
    // Istio's own default (`*`) again.
    index.set_mesh_config(MeshConfig::default());
    assert_eq!(
        kept(&index),
        strings(&["payments/partners.payments.svc.cluster.local", POSTGRES])
    );
}

#[test]
fn what_istiod_does_not_watch_is_never_listed_and_without_the_gateway_nothing_is_scoped() {
    let mut index = Index::test();
    let mut shop = mk_namespace("shop", Some(true));
    shop.labels = mk_labels(&[("mesh", "on")]);
    index.apply(shop);
    let mut gateway_ns = mk_namespace("lazyxds-system", None);
    gateway_ns.labels = mk_labels(&[("mesh", "on")]);
    index.apply(gateway_ns);
    // payments is not labelled: istiod ignores its objects, shop's proxies never see them.
    index.apply(http_service("payments", "partners", &["shop"]));
    index.set_mesh_config(
        MeshConfig::parse("discoverySelectors: [{matchLabels: {mesh: 'on'}}]\n").unwrap(),
    );
    assert_eq!(kept(&index), strings(&[POSTGRES]));
    assert!(!reasons(&index).keys().any(|h| h.starts_with("payments/")));

    // The gateway's namespace left out: istiod ignores its routes, so no workload is
    // scoped (a lazy Sidecar would send first calls to a gateway that routes nothing).
    index.apply(mk_namespace("lazyxds-system", None));
    let desired = desired(&index, &RenderConfig::test());
    assert!(desired.sidecars.is_empty());
    let reason = RefusalReason::GatewayNotDiscovered {
        namespace: "lazyxds-system".to_string(),
    };
    assert!(desired.refusals.iter().all(|r| r.reason == reason));
    assert_eq!(desired.refusals.len(), 3);
    assert_eq!(
        reason.to_string(),
        "the gateway's namespace lazyxds-system is outside Istio's discoverySelectors: \
         istiod ignores its routes"
    );
}

#[test]
fn a_virtual_service_elsewhere_for_an_always_visible_host_is_imported_too() {
    let mut index = Index::test();
    // A VirtualService in another namespace for postgres (exported everywhere): the
    // caller's own sidecar would route by it, so its namespace is listed as for a dep.
    index.apply(mk_virtual_service(
        "frontend",
        "postgres",
        &["postgres.shop.svc.cluster.local"],
        &["postgres.shop.svc.cluster.local"],
    ));
    assert_eq!(
        kept(&index),
        strings(&["frontend/postgres.shop.svc.cluster.local", POSTGRES])
    );
    assert_eq!(
        reasons(&index).get("frontend/postgres.shop.svc.cluster.local"),
        None,
        "a port that is not HTTP does not keep the VirtualService's own routes visible"
    );
}

/// [`Index::test`] plus a Deployment ratings with one pod.
fn guarded_shop() -> Index {
    let mut index = Index::test();
    mk_deployment(&mut index, "shop", "ratings", "10.0.0.13");
    index
}

#[test]
fn services_an_authorization_policy_guards_stay_visible() {
    let with = |policies: Vec<AuthorizationPolicy>| {
        let mut index = guarded_shop();
        for p in policies {
            index.apply(p);
        }
        index
    };
    let ratings = "shop/ratings.shop.svc.cluster.local";
    let reviews = "shop/reviews.shop.svc.cluster.local";
    let reviews_v2 = "shop/reviews-v2.shop.svc.cluster.local";
    let payments = "payments/payments.payments.svc.cluster.local";
    let productpage_svc = "shop/productpage.shop.svc.cluster.local";
    let app = |name: &'static str| -> Vec<(&'static str, &'static str)> { vec![("app", name)] };
    let v2 = [("version", "v2")];
    let cases: Vec<(&str, Vec<AuthorizationPolicy>, Vec<&str>)> = vec![
        ("none", vec![], vec![POSTGRES]),
        (
            "ALLOW selecting ratings' pods",
            vec![mk_policy(
                "shop",
                "ratings-callers",
                Allow,
                Some(&app("ratings")),
            )],
            vec![POSTGRES, ratings],
        ),
        (
            "DENY selecting v2 pods: behind reviews and reviews-v2",
            vec![mk_policy("shop", "no-v2", Deny, Some(&v2))],
            vec![POSTGRES, reviews_v2, reviews],
        ),
        (
            "CUSTOM, namespace-wide in payments",
            vec![mk_policy("payments", "ext-authz", Custom, None)],
            vec![payments, POSTGRES],
        ),
        (
            "a default-deny in shop: every shop Service",
            vec![mk_policy("shop", "deny-all", Allow, None)],
            vec![POSTGRES, productpage_svc, ratings, reviews_v2, reviews],
        ),
        (
            "mesh-wide (root namespace, no selector): every Service",
            vec![mk_policy("istio-system", "mesh", Deny, None)],
            vec![
                payments,
                POSTGRES,
                productpage_svc,
                ratings,
                reviews_v2,
                reviews,
            ],
        ),
        (
            "a root-namespace selector selects pods in every namespace",
            vec![mk_policy(
                "istio-system",
                "pp",
                Allow,
                Some(&app("productpage")),
            )],
            vec![POSTGRES, productpage_svc],
        ),
        (
            "a selector matching no pod or template guards nothing",
            vec![mk_policy("shop", "nobody", Deny, Some(&app("details")))],
            vec![POSTGRES],
        ),
        (
            "a policy in another namespace never selects shop's pods",
            vec![mk_policy("payments", "pp", Deny, Some(&app("productpage")))],
            vec![POSTGRES],
        ),
        (
            "AUDIT only logs",
            vec![mk_policy("shop", "audit", Audit, None)],
            vec![POSTGRES],
        ),
        (
            "a targetRef never attaches to a sidecar",
            vec![AuthorizationPolicy {
                targeted: true,
                ..mk_policy("shop", "gw", Deny, None)
            }],
            vec![POSTGRES],
        ),
    ];
    for (name, policies, want) in cases {
        assert_eq!(kept(&with(policies)), strings(&want), "{name}");
    }
}

/// The controller's Services as installed: one selects only the leader, a label the
/// leading pod sets on itself at run time.
#[test]
fn a_service_selecting_a_label_pods_get_at_run_time_stays_guarded_whoever_holds_it() {
    let ctl = "shop/ctl.shop.svc.cluster.local";
    let ctl_leader = "shop/ctl-leader.shop.svc.cluster.local";
    let with = |pod_labels: &[(&str, &str)], policy: Option<&[(&str, &str)]>| {
        let mut index = Index::test();
        index.apply(mk_workload(
            WorkloadKind::Deployment,
            "shop",
            "ctl",
            &[("app", "ctl")],
        ));
        index.apply(mk_replica_set(
            "shop",
            "ctl-5d4f8",
            Some(("Deployment", "ctl")),
        ));
        index.apply(mk_pod(
            "shop",
            "ctl-5d4f8-0",
            "10.0.0.40",
            Some(("ReplicaSet", "ctl-5d4f8")),
            pod_labels,
        ));
        index.apply(mk_service(
            "shop",
            "ctl",
            &[("app", "ctl")],
            &[(80, "http")],
        ));
        index.apply(mk_service(
            "shop",
            "ctl-leader",
            &[("app", "ctl"), ("leader", "true")],
            &[(80, "http")],
        ));
        if let Some(selector) = policy {
            index.apply(mk_policy("shop", "ctl", Allow, Some(selector)));
        }
        kept(&index)
    };
    let plain = [("app", "ctl"), ("pod-template-hash", "5d4f8")];
    let leading = [
        ("app", "ctl"),
        ("pod-template-hash", "5d4f8"),
        ("leader", "true"),
    ];
    type Pairs<'a> = &'a [(&'a str, &'a str)];
    let cases: Vec<(&str, Pairs, Option<Pairs>, Vec<&str>)> = vec![
        (
            "no pod leads: the leader Service's pods are the template's",
            &plain,
            Some(&[("app", "ctl")]),
            vec![ctl_leader, ctl, POSTGRES],
        ),
        (
            "the pod leads",
            &leading,
            Some(&[("app", "ctl")]),
            vec![ctl_leader, ctl, POSTGRES],
        ),
        (
            "a policy on the leader label alone",
            &plain,
            Some(&[("leader", "true")]),
            vec![ctl_leader, POSTGRES],
        ),
        (
            "a policy on a value the template contradicts",
            &plain,
            Some(&[("app", "other")]),
            vec![POSTGRES],
        ),
        ("no policy", &leading, None, vec![POSTGRES]),
    ];
    for (name, pod_labels, policy, want) in cases {
        assert_eq!(with(pod_labels, policy), strings(&want), "{name}");
    }
}

/// A template that has none of a Service's selector keys is not taken for its pods: the
/// Service selects on labels that identify its pods.
#[test]
fn a_template_sharing_no_key_with_a_selector_is_not_its_endpoints() {
    let mut index = guarded_shop();
    index.apply(mk_workload(
        WorkloadKind::Deployment,
        "shop",
        "batch",
        &[("tier", "batch")],
    ));
    index.apply(mk_policy("shop", "batch", Deny, Some(&[("tier", "batch")])));
    assert_eq!(kept(&index), strings(&[POSTGRES]));
}

#[test]
fn authorization_reasons_say_which_policy_and_how() {
    let mut index = guarded_shop();
    index.apply(mk_policy(
        "shop",
        "ratings-callers",
        Allow,
        Some(&[("app", "ratings")]),
    ));
    index.apply(mk_policy("payments", "deny-all", Allow, None));
    // Pods not created yet: the Deployment's template counts.
    index.apply(mk_workload(
        WorkloadKind::Deployment,
        "shop",
        "vault",
        &[("app", "vault")],
    ));
    index.apply(http_service("shop", "vault", &[]));
    index.apply(mk_policy("shop", "vault", Deny, Some(&[("app", "vault")])));
    // No selector: its endpoints may be anything.
    index.apply(Service {
        selector: None,
        ..http_service("shop", "external-db", &[])
    });
    // A ServiceEntry's endpoints are mesh pods only with a workloadSelector.
    let mut vm = mk_service_entry("shop", "vm", &["vm.shop.internal"], &[(80, "HTTP")]);
    vm.workload_selector = Some(mk_labels(&[("app", "ratings")]));
    index.apply(vm);
    index.apply(mk_service_entry(
        "shop",
        "ext",
        &["api.example.com"],
        &[(80, "HTTP")],
    ));
    // A VirtualService routing to a guarded host.
    index.apply(mk_virtual_service("shop", "rate", &["rate"], &["ratings"]));
    // The mesh's root namespace is another one: istio-system's policies are ordinary.
    index.apply(mk_policy("istio-system", "not-root", Deny, None));
    index.apply(mk_policy(
        "mesh-root",
        "root-pp",
        Deny,
        Some(&[("app", "productpage")]),
    ));
    index.set_mesh_config(MeshConfig::parse("rootNamespace: mesh-root\n").unwrap());

    let why = reasons(&index);
    let gateway = "a first call through the gateway would carry the gateway's identity";
    for (host, want) in [
        (
            "shop/ratings.shop.svc.cluster.local",
            format!("AuthorizationPolicy shop/ratings-callers (ALLOW) selects its pods: {gateway}"),
        ),
        (
            "shop/vault.shop.svc.cluster.local",
            format!("AuthorizationPolicy shop/vault (DENY) selects its pods: {gateway}"),
        ),
        (
            "shop/productpage.shop.svc.cluster.local",
            format!("AuthorizationPolicy mesh-root/root-pp (DENY) selects its pods: {gateway}"),
        ),
        (
            "payments/payments.payments.svc.cluster.local",
            format!(
                "AuthorizationPolicy payments/deny-all (ALLOW) applies to every workload of \
                 its namespace: {gateway}"
            ),
        ),
        (
            "shop/external-db.shop.svc.cluster.local",
            format!(
                "AuthorizationPolicy mesh-root/root-pp (DENY) may select its endpoints (not \
                 known): {gateway}"
            ),
        ),
        (
            "shop/vm.shop.internal",
            format!("AuthorizationPolicy shop/ratings-callers (ALLOW) selects its pods: {gateway}"),
        ),
        (
            "shop/rate.shop.svc.cluster.local",
            format!(
                "VirtualService shop/rate routes to ratings.shop.svc.cluster.local: \
                 AuthorizationPolicy shop/ratings-callers (ALLOW) selects its pods: {gateway}"
            ),
        ),
    ] {
        // The first reason; a VirtualService only some namespaces see also routes for
        // those alone (a second reason, tested in desired's tests).
        assert_eq!(why.get(host).and_then(|w| w.first()), Some(&want), "{host}");
    }
    assert_eq!(why.get("shop/api.example.com"), None);
    assert_eq!(why.get("shop/reviews-v2.shop.svc.cluster.local"), None);

    // Mesh-wide from the mesh's root namespace.
    index.apply(mk_policy("mesh-root", "mesh", Custom, None));
    assert_eq!(
        reasons(&index)["shop/reviews-v2.shop.svc.cluster.local"],
        vec![format!(
            "AuthorizationPolicy mesh-root/mesh (CUSTOM) applies to every workload of the \
             mesh: {gateway}"
        )]
    );
}
