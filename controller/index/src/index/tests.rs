use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::fixtures::*;
use crate::objects::{Annotations, Labels, Pin, RestoredDeps, WorkloadKind::*};

const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const RATINGS: &str = "ratings.shop.svc.cluster.local";

fn mk_deps(pairs: &[(&str, u64)]) -> BTreeMap<Arc<str>, u64> {
    pairs.iter().map(|(h, t)| (Arc::from(*h), *t)).collect()
}

/// productpage's pod (10.0.0.10) calling reviews by its short name, last seen at `at`.
fn productpage_to_reviews(at: u64) -> ObservedEdge {
    mk_edge(
        "10.0.0.10",
        Some("reviews"),
        &mk_outbound(9080, REVIEWS),
        at,
    )
}

fn set(ids: &[&WorkloadId]) -> BTreeSet<WorkloadId> {
    ids.iter().map(|id| (*id).clone()).collect()
}

/// (event, last seen, now, changed, stored last seen)
type Step = (&'static str, u64, u64, BTreeSet<WorkloadId>, Option<u64>);

#[test]
fn owner_references_resolve_to_workloads() {
    let ns = "shop";
    let mut index = Index::default();
    index.apply(mk_replica_set(ns, "web-abc", Some(("Deployment", "web"))));
    index.apply(mk_replica_set(ns, "bare-rs", None));
    index.apply(mk_replica_set(
        ns,
        "canary-xyz",
        Some(("Rollout", "canary")),
    ));
    index.apply(mk_job(ns, "backup-28000", Some(("CronJob", "backup"))));
    index.apply(mk_job(ns, "migrate", None));
    let cases = [
        (
            Some(("ReplicaSet", "web-abc")),
            Some(mk_id(Deployment, ns, "web")),
        ),
        (
            Some(("ReplicaSet", "bare-rs")),
            Some(mk_id(ReplicaSet, ns, "bare-rs")),
        ),
        (
            Some(("ReplicaSet", "canary-xyz")),
            Some(mk_id(ReplicaSet, ns, "canary-xyz")),
        ),
        (Some(("ReplicaSet", "not-seen-yet")), None),
        (
            Some(("StatefulSet", "db")),
            Some(mk_id(StatefulSet, ns, "db")),
        ),
        (
            Some(("DaemonSet", "agent")),
            Some(mk_id(DaemonSet, ns, "agent")),
        ),
        (
            Some(("Job", "backup-28000")),
            Some(mk_id(CronJob, ns, "backup")),
        ),
        (Some(("Job", "migrate")), Some(mk_id(Job, ns, "migrate"))),
        (Some(("Job", "not-seen-yet")), None),
        (None, Some(mk_id(Pod, ns, "p"))),
        (
            Some(("Node", "kind-control-plane")),
            Some(mk_id(Pod, ns, "p")),
        ),
    ];
    for (owner, want) in cases {
        let pod = mk_pod(ns, "p", "10.0.0.1", owner, &[]);
        assert_eq!(index.workload_of(&pod), want, "owner {owner:?}");
    }
}

#[test]
fn edges_are_attributed_to_the_ip_holder_at_last_seen() {
    let mut index = Index::test();
    let a = mk_id(Pod, "shop", "a");
    let b = mk_id(Pod, "shop", "b");
    let mut pod_a = mk_pod("shop", "a", "10.0.1.1", None, &[("app", "a")]);
    pod_a.start_time_unix_s = Some(100);
    let mut pod_b = mk_pod("shop", "b", "10.0.1.1", None, &[("app", "b")]);
    pod_b.start_time_unix_s = Some(200);
    index.apply(pod_a);
    index.apply(pod_b);
    let ratings = mk_outbound(9080, RATINGS);
    let cases = [
        // (last seen, attributed to)
        (150, Some(&a)),
        (199, Some(&a)),
        (200, Some(&b)),
        (250, Some(&b)),
        (97, Some(&a)), // within the start-time skew of the first holder
        (50, None),     // before any known holder: held
    ];
    for (t, want) in cases {
        let mut index = Index::test();
        let mut pod_a = mk_pod("shop", "a", "10.0.1.1", None, &[("app", "a")]);
        pod_a.start_time_unix_s = Some(100);
        let mut pod_b = mk_pod("shop", "b", "10.0.1.1", None, &[("app", "b")]);
        pod_b.start_time_unix_s = Some(200);
        index.apply(pod_a);
        index.apply(pod_b);
        let changed = index.record_edges([mk_edge("10.0.1.1", None, &ratings, t)], 300);
        assert_eq!(changed, want.into_iter().cloned().collect(), "t={t}");
        assert_eq!(index.held_len(), usize::from(want.is_none()), "t={t}");
    }

    // A deleted pod stops holding its IP at the index's clock.
    index.tick(300);
    index.delete::<crate::Pod>((), "shop", "b");
    assert_eq!(index.namespace_of_ip(mk_ip("10.0.1.1")), None);
    let changed = index.record_edges(
        [
            mk_edge("10.0.1.1", None, &ratings, 299),
            mk_edge(
                "10.0.1.1",
                Some("reviews"),
                &mk_outbound(9080, REVIEWS),
                301,
            ),
        ],
        301,
    );
    assert_eq!(changed, set(&[&b]));
    assert_eq!(index.deps(&b), mk_deps(&[(RATINGS, 299)]));
    assert_eq!(index.held_len(), 1, "after the deletion the IP is unknown");
}

#[test]
fn ip_history_is_bounded() {
    let mut index = Index::new(IndexConfig {
        ip_history: 2,
        ..IndexConfig::default()
    });
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let mut pod = mk_pod("shop", name, "10.0.1.1", None, &[("app", name)]);
        pod.start_time_unix_s = Some(100 * (i as u64 + 1));
        index.apply(pod);
    }
    let holders: Vec<(&str, u64, Option<u64>)> = index.ips[&mk_ip("10.0.1.1")]
        .iter()
        .map(|h| (&*h.pod.name, h.from, h.until))
        .collect();
    assert_eq!(holders, vec![("b", 200, Some(300)), ("c", 300, None)]);
    assert_eq!(
        index.ip_table(),
        vec![(mk_ip("10.0.1.1"), Arc::from("shop"))]
    );
}

#[test]
fn host_network_pods_are_never_attributed() {
    let mut index = Index::test();
    let mut node_agent = mk_pod(
        "shop",
        "agent-x",
        "192.168.1.5",
        Some(("DaemonSet", "agent")),
        &[("app", "agent")],
    );
    node_agent.host_network = true;
    index.apply(node_agent);
    let changed = index.record_edges(
        [mk_edge(
            "192.168.1.5",
            None,
            &mk_outbound(9080, RATINGS),
            10,
        )],
        10,
    );
    assert_eq!(changed, BTreeSet::new());
    assert_eq!(index.held_len(), 0, "a node IP is known: not held");
    assert_eq!(
        index.counters().clone(),
        Counters {
            edges: 1,
            requests: 1,
            host_network: 1,
            ..Counters::default()
        }
    );
    assert_eq!(index.workloads_with_deps(), BTreeSet::new());

    // When it goes away the IP is unknown again.
    index.delete::<crate::Pod>((), "shop", "agent-x");
    index.record_edges(
        [mk_edge(
            "192.168.1.5",
            None,
            &mk_outbound(9080, RATINGS),
            11,
        )],
        11,
    );
    assert_eq!(index.held_len(), 1);
}

#[test]
fn a_pod_in_several_services_counts_once() {
    let mut index = Index::test();
    // reviews-v2's pod is selected by Services reviews and reviews-v2.
    let edges = [
        mk_edge(
            "10.0.0.12",
            Some("ratings"),
            &mk_outbound(9080, RATINGS),
            10,
        ),
        mk_edge(
            "10.0.0.12",
            Some("ratings"),
            &mk_outbound(9080, RATINGS),
            10,
        ),
    ];
    let v2 = mk_id(Deployment, "shop", "reviews-v2");
    assert_eq!(index.record_edges(edges, 10), set(&[&v2]));
    assert_eq!(index.workloads_with_deps(), set(&[&v2]));
    assert_eq!(index.deps(&v2), mk_deps(&[(RATINGS, 10)]));
}

#[test]
fn dependency_host_of_an_edge() {
    let reviews_v2 = mk_outbound(9080, "reviews-v2.shop.svc.cluster.local");
    let ledger = mk_outbound(9080, "ledger.payments.svc.cluster.local");
    let cases: [(Option<&str>, &str, &str); 13] = [
        // The VS host, not its destination.
        (Some("reviews"), &reviews_v2, REVIEWS),
        (Some("reviews.shop"), &reviews_v2, REVIEWS),
        (Some("reviews.shop.svc"), &reviews_v2, REVIEWS),
        (Some(REVIEWS), &reviews_v2, REVIEWS),
        (
            Some("reviews.shop.svc.cluster.local."),
            &reviews_v2,
            REVIEWS,
        ),
        // Short names relative to the source's namespace, or the one they name.
        (
            Some("ledger.payments"),
            &ledger,
            "ledger.payments.svc.cluster.local",
        ),
        (
            Some("ledger.payments.svc"),
            &ledger,
            "ledger.payments.svc.cluster.local",
        ),
        // A name nothing defines, an IP, no host: the cluster's host.
        (Some("ledger"), &ledger, "ledger.payments.svc.cluster.local"),
        (
            Some("10.96.0.7"),
            &ledger,
            "ledger.payments.svc.cluster.local",
        ),
        (None, &reviews_v2, "reviews-v2.shop.svc.cluster.local"),
        (
            Some("api.stripe.com"),
            "outbound|443||api.stripe.com",
            "api.stripe.com",
        ),
        // Wildcard ServiceEntry hosts are the dep, as Istio names their clusters.
        (
            Some("img.cdn.example.com"),
            "outbound|80||*.cdn.example.com",
            "*.cdn.example.com",
        ),
        // Unknown to every config: no dependency (see
        // `a_host_nothing_defines_is_never_a_dependency`).
        (Some("x"), "outbound|80||gone.shop.svc.cluster.local", ""),
    ];
    for (host, cluster, want) in cases {
        let mut index = Index::test();
        index.apply(mk_service(
            "payments",
            "ledger",
            &[("app", "ledger")],
            &[(9080, "http")],
        ));
        index.apply(mk_service_entry(
            "payments",
            "stripe",
            &["api.stripe.com"],
            &[(443, "HTTPS")],
        ));
        index.apply(mk_service_entry(
            "shop",
            "cdn",
            &["*.cdn.example.com"],
            &[(80, "HTTP")],
        ));
        index.record_edges([mk_edge("10.0.0.10", host, cluster, 10)], 10);
        let want = if want.is_empty() {
            mk_deps(&[])
        } else {
            mk_deps(&[(want, 10)])
        };
        assert_eq!(index.deps(&productpage()), want, "{host:?} {cluster}");
    }
}

#[test]
fn a_host_nothing_defines_is_never_a_dependency() {
    // What a client that is not the gateway might send: any cluster, any host. Only a
    // host a Service, ServiceEntry or mesh VirtualService defines becomes a dep, and
    // never one that would widen a Sidecar beyond real hosts.
    let cases: [(&str, Option<&str>, &str, &str); 8] = [
        (
            "bare wildcard cluster",
            Some("x"),
            "outbound|80||*",
            "undefined_host",
        ),
        (
            "wildcard request",
            Some("*"),
            "outbound|80||*",
            "undefined_host",
        ),
        (
            "undefined FQDN",
            Some("evil.example.com"),
            "outbound|443||evil.example.com",
            "undefined_host",
        ),
        (
            "undefined Service",
            None,
            "outbound|9080||nope.shop.svc.cluster.local",
            "undefined_host",
        ),
        (
            "a mesh VirtualService for `*` (istiod refuses it; the API server may not)",
            Some("anything.example.org"),
            "outbound|80||anything.example.org",
            "refused_host",
        ),
        (
            "the `*` VirtualService's own cluster",
            None,
            "outbound|80||*",
            "refused_host",
        ),
        (
            "a ServiceEntry host that is not a DNS name",
            Some("bad_name.example.com"),
            "outbound|80||bad_name.example.com",
            "refused_host",
        ),
        (
            "a wildcard over a bad name",
            Some("a.bad_name.example.com"),
            "outbound|80||*.bad_name.example.com",
            "refused_host",
        ),
    ];
    for (what, host, cluster, counter) in cases {
        let mut index = Index::test();
        if what.contains('`') {
            index.apply(mk_virtual_service("shop", "star", &["*"], &["reviews-v1"]));
        }
        index.apply(mk_service_entry(
            "shop",
            "bad",
            &["bad_name.example.com", "*.bad_name.example.com"],
            &[(80, "HTTP")],
        ));
        index.record_edges([mk_edge("10.0.0.10", host, cluster, 10)], 10);
        // Held first (the watches may not show the host yet), dropped after the hold.
        index.tick(10 + index.config.hold.as_secs());
        assert_eq!(index.deps(&productpage()), mk_deps(&[]), "{what}");
        let counters = serde_json::to_value(index.counters()).unwrap();
        assert_eq!(counters[counter], 1, "{what}: {counters}");
        let refused = index.take_refused();
        assert_eq!(refused.len(), 1, "{what}");
        assert_eq!(refused[0].edge.cluster.as_ref(), cluster, "{what}");
    }
}

#[test]
fn an_edge_held_for_its_host_is_learned_when_the_host_appears() {
    // istiod may show the gateway a new Service before our watch shows it to us.
    let mut index = Index::test();
    let cluster = "outbound|9080||late.shop.svc.cluster.local";
    index.record_edges([mk_edge("10.0.0.10", Some("late"), cluster, 10)], 10);
    assert_eq!(index.deps(&productpage()), mk_deps(&[]));
    index.apply(mk_service(
        "shop",
        "late",
        &[("app", "late")],
        &[(9080, "http")],
    ));
    index.tick(12);
    assert_eq!(
        index.deps(&productpage()),
        mk_deps(&[("late.shop.svc.cluster.local", 10)])
    );
    assert_eq!(index.counters().held_attributed, 1);
    assert_eq!(index.counters().undefined_host, 0);
}

#[test]
fn with_require_principal_an_edge_without_one_is_refused() {
    let config = IndexConfig {
        require_principal: true,
        ..IndexConfig::default()
    };
    for (principal, learned) in [
        (None, false),
        (Some("spiffe://cluster.local/ns/shop/sa/default"), true),
    ] {
        let mut index = Index::test_with(config.clone());
        let mut edge = productpage_to_reviews(10);
        edge.principal = principal.map(Arc::from);
        index.record_edges([edge], 10);
        assert_eq!(
            !index.deps(&productpage()).is_empty(),
            learned,
            "{principal:?}"
        );
        assert_eq!(index.counters().principal_missing, u64::from(!learned));
    }
}

#[test]
fn resolutions_are_cached_until_config_changes() {
    let mut index = Index::test();
    let edge = productpage_to_reviews(10);
    index.record_edges([edge.clone(), edge.clone()], 10);
    assert_eq!(index.hosts.cache_len(), 1);
    index.apply(mk_service(
        "shop",
        "details",
        &[("app", "details")],
        &[(9080, "http")],
    ));
    assert_eq!(index.hosts.cache_len(), 0, "config changes invalidate");
    index.record_edges([edge], 11);
    assert_eq!(index.hosts.cache_len(), 1);
}

/// The cache serves bursts: it stays while edges keep coming, its memory goes back once
/// none came for `CACHE_IDLE_S` (10 s) of ticks, and it fills again with the next edge.
#[test]
fn an_idle_host_cache_is_freed() {
    let mut index = Index::test();
    let edge = productpage_to_reviews(10);
    index.record_edges([edge.clone()], 10);
    index.tick(10);
    // An edge every 9 s: never idle for 10.
    for now in [19, 28] {
        index.record_edges([edge.clone()], now);
        index.tick(now);
        assert_eq!(index.hosts.cache_len(), 1, "at {now}");
    }
    index.tick(37);
    assert_eq!(index.hosts.cache_len(), 1, "9 s idle: kept");
    index.tick(38);
    assert_eq!(
        (index.hosts.cache_len(), index.hosts.cache_capacity()),
        (0, 0),
        "10 s idle: freed"
    );
    assert!(!index.deps(&productpage()).is_empty(), "deps stay");
    index.record_edges([edge], 40);
    assert_eq!(index.hosts.cache_len(), 1);
}

#[test]
fn non_outbound_clusters_are_counted_not_recorded() {
    let mut index = Index::test();
    let clusters = [
        "PassthroughCluster",
        "BlackHoleCluster",
        "inbound|9080||",
        "InboundPassthroughClusterIpv4",
        "outbound|http||reviews",
        "outbound|9080||",
    ];
    let edges = clusters.map(|c| mk_edge("10.0.0.10", Some("reviews"), c, 10));
    assert_eq!(index.record_edges(edges, 10), BTreeSet::new());
    assert_eq!(index.counters().non_outbound, 6);
    assert_eq!(index.held_len(), 0);
    assert_eq!(index.workloads_with_deps(), BTreeSet::new());
}

#[test]
fn unknown_ips_are_held_then_attributed_or_dropped() {
    let mut index = Index::new(IndexConfig {
        max_held_edges: 2,
        ..IndexConfig::default()
    });
    index.apply(mk_namespace("shop", Some(true)));
    index.apply(mk_service(
        "shop",
        "ratings",
        &[("app", "ratings")],
        &[(9080, "http")],
    ));
    let ratings = mk_outbound(9080, RATINGS);
    let edges = [
        mk_edge("10.0.2.1", Some("ratings"), &ratings, 100),
        mk_edge("10.0.2.2", Some("ratings"), &ratings, 100),
        mk_edge("10.0.2.3", Some("ratings"), &ratings, 100),
    ];
    assert_eq!(index.record_edges(edges, 100), BTreeSet::new());
    assert_eq!(index.held_len(), 2);

    // The pod watch catches up within the hold.
    mk_deployment(&mut index, "shop", "late", "10.0.2.1");
    let late = mk_id(Deployment, "shop", "late");
    assert_eq!(index.tick(105), set(&[&late]));
    assert_eq!(index.deps(&late), mk_deps(&[(RATINGS, 100)]));
    assert_eq!(index.held_len(), 1);
    assert_eq!(index.tick(109), BTreeSet::new());
    assert_eq!(index.held_len(), 1, "still within the 10 s hold");
    assert_eq!(index.tick(110), BTreeSet::new());
    assert_eq!(index.held_len(), 0);
    assert_eq!(
        index.counters().clone(),
        Counters {
            edges: 3,
            requests: 3,
            held: 2,
            held_attributed: 1,
            unknown_dropped: 1,
            hold_overflow: 1,
            deps_added: 1,
            attributed_requests: 1,
            ..Counters::default()
        }
    );
}

#[test]
fn edges_wait_for_their_replica_set() {
    let mut index = Index::test();
    index.apply(mk_pod(
        "shop",
        "new-abc-0",
        "10.0.3.1",
        Some(("ReplicaSet", "new-abc")),
        &[("app", "new")],
    ));
    let edge = mk_edge("10.0.3.1", Some("ratings"), &mk_outbound(9080, RATINGS), 10);
    assert_eq!(index.record_edges([edge], 10), BTreeSet::new());
    assert_eq!(index.held_len(), 1);
    index.apply(mk_replica_set(
        "shop",
        "new-abc",
        Some(("Deployment", "new")),
    ));
    assert_eq!(index.tick(11), set(&[&mk_id(Deployment, "shop", "new")]));
}

#[test]
fn principal_must_match_the_pod() {
    let ratings = mk_outbound(9080, RATINGS);
    let cases = [
        (Some("spiffe://cluster.local/ns/shop/sa/default"), true),
        (Some("spiffe://other-domain/ns/shop/sa/default"), true),
        (None, true),
        (Some("spiffe://cluster.local/ns/payments/sa/default"), false),
        (Some("spiffe://cluster.local/ns/shop/sa/admin"), false),
        (Some("not-a-spiffe-id"), false),
    ];
    for (principal, accepted) in cases {
        let mut index = Index::test();
        let mut edge = mk_edge("10.0.0.10", Some("ratings"), &ratings, 10);
        edge.principal = principal.map(Arc::from);
        let changed = index.record_edges([edge], 10);
        let want = if accepted {
            set(&[&productpage()])
        } else {
            BTreeSet::new()
        };
        assert_eq!(changed, want, "{principal:?}");
        assert_eq!(
            index.counters().principal_mismatch,
            u64::from(!accepted),
            "{principal:?}"
        );
    }
}

#[test]
fn without_ttl_only_the_first_sighting_writes() {
    let mut index = Index::test();
    let edge = |t| mk_edge("10.0.0.10", Some("ratings"), &mk_outbound(9080, RATINGS), t);
    assert_eq!(index.record_edges([edge(10)], 10), set(&[&productpage()]));
    for t in [11, 1_000, 1_000_000] {
        assert_eq!(index.record_edges([edge(t)], t), BTreeSet::new(), "t={t}");
        assert_eq!(index.tick(t), BTreeSet::new(), "t={t}");
    }
    assert_eq!(index.deps(&productpage()), mk_deps(&[(RATINGS, 10)]));
}

/// An opted-in `shop` with Service `ratings` (HTTP 9080) and Deployment `productpage` at
/// 10.0.0.10.
fn shop_with_ratings(config: IndexConfig) -> Index {
    let mut index = Index::new(config);
    index.apply(mk_namespace("shop", Some(true)));
    index.apply(mk_service(
        "shop",
        "ratings",
        &[("app", "ratings")],
        &[(9080, "http")],
    ));
    mk_deployment(&mut index, "shop", "productpage", "10.0.0.10");
    index
}

/// (event, last seen, now, changed, stored last seen, held virtual hosts)
type HoldStep = (
    &'static str,
    u64,
    u64,
    BTreeSet<WorkloadId>,
    Option<u64>,
    usize,
);

#[test]
fn with_a_route_delay_routes_come_after_clusters_and_go_before_them() {
    let mut index = shop_with_ratings(IndexConfig {
        ttl: Some(Duration::from_secs(100)),
        route_delay: Duration::from_secs(2),
        ..IndexConfig::default()
    });
    let edge = |t| mk_edge("10.0.0.10", Some("ratings"), &mk_outbound(9080, RATINGS), t);
    let pp = || set(&[&productpage()]);
    let none = BTreeSet::new;
    let steps: [HoldStep; 10] = [
        // Learned: in the Sidecar at once, its routes held 2 s.
        ("edge", 1000, 1000, pp(), Some(1000), 1),
        ("tick", 0, 1001, none(), Some(1000), 1),
        ("tick", 0, 1002, pp(), Some(1000), 0),
        // Expired: its routes go first (calls back to the gateway), the dep stays 2 s.
        ("tick", 0, 1101, pp(), Some(1000), 1),
        ("tick", 0, 1102, none(), Some(1000), 1),
        // Not seen again: it leaves.
        ("tick", 0, 1103, pp(), None, 0),
        // Re-learned, then expired again; this time the gateway sees it while its routes
        // are held: it stays, and its routes come back when the hold ends.
        ("edge", 1103, 1103, pp(), Some(1103), 1),
        ("tick", 0, 1205, pp(), Some(1103), 1),
        ("edge", 1206, 1206, pp(), Some(1206), 1),
        ("tick", 0, 1207, pp(), Some(1206), 0),
    ];
    for (event, t, now, want_changed, want_seen, want_held) in steps {
        let changed = match event {
            "edge" => index.record_edges([edge(t)], now),
            _ => index.tick(now),
        };
        assert_eq!(changed, want_changed, "{event} {t} at {now}");
        let seen = index.deps(&productpage()).get(RATINGS).copied();
        assert_eq!(seen, want_seen, "{event} {t} at {now}");
        let held = index.held_route_names(&productpage(), |_| true);
        assert_eq!(held.len(), want_held, "{event} {t} at {now}: {held:?}");
        if want_held > 0 {
            assert_eq!(held, [format!("{RATINGS}:9080")]);
        }
    }
    assert_eq!(index.counters().deps_expired, 1);
}

/// Where our Sidecars are watched, a new dep's routes are held for the whole delay after
/// the live Sidecar lists it, however late the writer got to it.
#[test]
fn with_delay_from_listing_routes_wait_for_the_sidecar_that_lists_the_dep() {
    let mut index = shop_with_ratings(IndexConfig {
        route_delay: Duration::from_secs(2),
        route_delay_from_listing: true,
        ..IndexConfig::default()
    });
    let held = |index: &Index| index.held_route_names(&productpage(), |_| true).len();
    let edge = mk_edge(
        "10.0.0.10",
        Some("ratings"),
        &mk_outbound(9080, RATINGS),
        1000,
    );
    assert_eq!(index.record_edges([edge], 1000), set(&[&productpage()]));
    // The writer is slow: long past the delay, the routes are still held.
    assert!(index.tick(1010).is_empty());
    assert_eq!(held(&index), 1);
    // A live Sidecar listing another dep starts nothing.
    index.apply(mk_our_sidecar(
        &productpage(),
        &[("other.shop.svc.cluster.local", 1)],
    ));
    assert!(index.tick(1020).is_empty());
    assert_eq!(held(&index), 1);
    // Listed (the watch echoes the write): the delay counts from here, plus a second for
    // a clock that last moved up to a tick ago.
    index.apply(mk_our_sidecar(&productpage(), &[(RATINGS, 1000)]));
    assert!(index.tick(1022).is_empty());
    assert_eq!(held(&index), 1);
    assert_eq!(index.tick(1023), set(&[&productpage()]));
    assert_eq!(held(&index), 0);
    // Listing it again later starts nothing new.
    index.apply(mk_our_sidecar(&productpage(), &[(RATINGS, 1000)]));
    assert_eq!(held(&index), 0);
}

/// A hold waiting for a Sidecar that will never come (the workload is gone) goes with it.
#[test]
fn a_hold_waiting_for_its_listing_goes_with_the_workload() {
    let mut index = shop_with_ratings(IndexConfig {
        route_delay: Duration::from_secs(2),
        route_delay_from_listing: true,
        ..IndexConfig::default()
    });
    let edge = mk_edge(
        "10.0.0.10",
        Some("ratings"),
        &mk_outbound(9080, RATINGS),
        1000,
    );
    index.record_edges([edge], 1000);
    assert_eq!(index.held_route_names(&productpage(), |_| true).len(), 1);
    index.delete::<crate::objects::Pod>((), "shop", "productpage-5d4f8-0");
    index.delete::<crate::objects::WorkloadObject>(Deployment, "shop", "productpage");
    index.forget_absent_workloads();
    assert!(index.route_holds.is_empty(), "{:?}", index.route_holds);
}

#[test]
fn ttl_expires_deps_and_last_seen_moves_coarsely() {
    let mut index = shop_with_ratings(IndexConfig {
        ttl: Some(Duration::from_secs(100)),
        ..IndexConfig::default()
    });
    let edge = |t| mk_edge("10.0.0.10", Some("ratings"), &mk_outbound(9080, RATINGS), t);
    let pp = || set(&[&productpage()]);
    let steps: [Step; 8] = [
        ("edge", 1000, 1000, pp(), Some(1000)),
        ("edge", 1005, 1005, BTreeSet::new(), Some(1000)),
        ("edge", 1010, 1010, BTreeSet::new(), Some(1000)), // exactly ttl/10: no write
        ("edge", 1011, 1011, pp(), Some(1011)),
        ("tick", 0, 1111, BTreeSet::new(), Some(1011)), // exactly ttl old: kept
        ("tick", 0, 1112, pp(), None),
        ("edge", 900, 1112, BTreeSet::new(), None), // older than the ttl on arrival
        ("edge", 1112, 1112, pp(), Some(1112)),     // re-learned through the gateway
    ];
    for (event, t, now, want_changed, want_seen) in steps {
        let changed = match event {
            "edge" => index.record_edges([edge(t)], now),
            _ => index.tick(now),
        };
        assert_eq!(changed, want_changed, "{event} {t} at {now}");
        let seen = index.deps(&productpage()).get(RATINGS).copied();
        assert_eq!(seen, want_seen, "{event} {t} at {now}");
    }
    assert_eq!(index.counters().deps_expired, 1);
    assert_eq!(index.counters().stale, 1);
}

#[test]
fn a_last_seen_in_the_future_is_the_controllers_now_so_the_ttl_still_expires_it() {
    let mut index = shop_with_ratings(IndexConfig {
        ttl: Some(Duration::from_secs(100)),
        ..IndexConfig::default()
    });
    let edge = mk_edge(
        "10.0.0.10",
        Some("ratings"),
        &mk_outbound(9080, RATINGS),
        u64::MAX,
    );
    index.record_edges([edge], 1000);
    let seen = |index: &Index| index.deps(&productpage()).get(RATINGS).copied();
    assert_eq!(
        seen(&index),
        Some(1000),
        "clamped to the controller's clock"
    );
    index.tick(1100);
    assert_eq!(seen(&index), Some(1000), "exactly ttl old: kept");
    index.tick(1101);
    assert_eq!(seen(&index), None, "expired like any other dep");
}

#[test]
fn request_counts_from_the_wire_saturate() {
    let mut index = shop_with_ratings(IndexConfig::default());
    let edge = || ObservedEdge {
        requests: u64::MAX,
        ..mk_edge(
            "10.0.0.10",
            Some("ratings"),
            &mk_outbound(9080, RATINGS),
            1000,
        )
    };
    index.record_edges([edge(), edge(), edge()], 1000);
    let c = index.counters();
    assert_eq!(c.requests, u64::MAX);
    assert_eq!(c.attributed_requests, u64::MAX);
    assert_eq!(c.known_dep_requests, u64::MAX);
    assert_eq!(c.edges, 3);
}

#[test]
fn not_opted_in_workloads_learn_silently() {
    let mut index = Index::test();
    mk_deployment(&mut index, "payments", "fraud", "10.0.4.1");
    let fraud = mk_id(Deployment, "payments", "fraud");
    let changed = index.record_edges(
        [mk_edge(
            "10.0.4.1",
            Some("ratings.shop"),
            &mk_outbound(9080, RATINGS),
            10,
        )],
        10,
    );
    assert_eq!(changed, BTreeSet::new());
    assert_eq!(index.deps(&fraud), mk_deps(&[(RATINGS, 10)]));
}

#[test]
fn enabled_annotation_precedence() {
    // (namespace, object, template, enabled)
    let cases = [
        (None, None, None, false),
        (Some(true), None, None, true),
        (Some(false), None, None, false),
        (Some(true), Some(false), None, false),
        (Some(false), Some(true), None, true),
        (None, None, Some(true), true),
        (Some(true), None, Some(false), false),
        (None, Some(true), Some(false), true), // the object's own annotation first
    ];
    for (ns, object, template, want) in cases {
        let mut index = Index::default();
        index.apply(mk_namespace("shop", ns));
        let mut w = mk_workload(Deployment, "shop", "web", &[("app", "web")]);
        w.annotations.enabled = object;
        w.template_annotations.enabled = template;
        index.apply(w);
        assert_eq!(
            index.is_enabled(&mk_id(Deployment, "shop", "web")),
            want,
            "{ns:?} {object:?} {template:?}"
        );
    }

    // A bare pod takes its own annotations.
    let mut index = Index::default();
    index.apply(mk_namespace("shop", Some(true)));
    let mut pod = mk_pod("shop", "debug", "10.0.5.1", None, &[("app", "debug")]);
    pod.annotations.enabled = Some(false);
    index.apply(pod);
    assert!(!index.is_enabled(&mk_id(Pod, "shop", "debug")));
}

#[test]
fn annotations_parse_or_name_the_object() {
    let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let pin = |ns: &str, host: &str| Pin {
        namespace: ns.to_string(),
        host: host.to_string(),
    };
    let invalid = |annotation, value: &str, reason: &str| crate::Error::Annotation {
        object: "Deployment shop/cart".to_string(),
        annotation,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let cases = [
        (ann(&[]), Ok(Annotations::default())),
        (
            ann(&[("lazyxds.io/enabled", "true"), ("other", "x")]),
            Ok(Annotations {
                enabled: Some(true),
                pins: vec![],
            }),
        ),
        (
            ann(&[("lazyxds.io/enabled", "false")]),
            Ok(Annotations {
                enabled: Some(false),
                pins: vec![],
            }),
        ),
        (
            ann(&[("lazyxds.io/enabled", "yes")]),
            Err(invalid(
                "lazyxds.io/enabled",
                "yes",
                "is not \"true\" or \"false\"",
            )),
        ),
        (
            ann(&[("lazyxds.io/enabled", "True")]),
            Err(invalid(
                "lazyxds.io/enabled",
                "True",
                "is not \"true\" or \"false\"",
            )),
        ),
        (
            ann(&[(
                "lazyxds.io/pin",
                "payments/api.payments.svc.cluster.local, */api.stripe.com,",
            )]),
            Ok(Annotations {
                enabled: None,
                pins: vec![
                    pin("payments", "api.payments.svc.cluster.local"),
                    pin("*", "api.stripe.com"),
                ],
            }),
        ),
        (
            ann(&[("lazyxds.io/pin", "api.stripe.com")]),
            Err(invalid(
                "lazyxds.io/pin",
                "api.stripe.com",
                "is not ns/host",
            )),
        ),
        (
            ann(&[("lazyxds.io/pin", "a/b/c")]),
            Err(invalid("lazyxds.io/pin", "a/b/c", "is not ns/host")),
        ),
        (
            ann(&[("lazyxds.io/pin", "/b")]),
            Err(invalid("lazyxds.io/pin", "/b", "is not ns/host")),
        ),
        (
            ann(&[("lazyxds.io/pin", "a/")]),
            Err(invalid("lazyxds.io/pin", "a/", "is not ns/host")),
        ),
    ];
    for (annotations, want) in cases {
        assert_eq!(
            Annotations::parse("Deployment shop/cart", &annotations),
            want,
            "{annotations:?}"
        );
    }
    assert_eq!(
        invalid("lazyxds.io/pin", "a/", "is not ns/host").to_string(),
        "Deployment shop/cart: annotation lazyxds.io/pin: \"a/\" is not ns/host"
    );
}

#[test]
fn deps_stop_at_the_cap() {
    let mut index = Index::new(IndexConfig {
        max_deps_per_workload: 2,
        ..IndexConfig::default()
    });
    index.apply(mk_namespace("shop", Some(true)));
    mk_deployment(&mut index, "shop", "productpage", "10.0.0.10");
    index.apply(mk_service_entry(
        "shop",
        "x",
        &["a.x", "b.x", "c.x", "d.x"],
        &[(80, "HTTP")],
    ));
    let edge = |host: &str| mk_edge("10.0.0.10", None, &mk_outbound(80, host), 10);
    let pp = || set(&[&productpage()]);
    let steps = [
        ("a.x", pp()),
        ("b.x", pp()),
        ("c.x", pp()),
        ("d.x", BTreeSet::new()),
        ("a.x", BTreeSet::new()),
    ];
    for (host, want) in steps {
        assert_eq!(index.record_edges([edge(host)], 10), want, "{host}");
    }
    assert_eq!(
        index.deps(&productpage()),
        mk_deps(&[("a.x", 10), ("b.x", 10)])
    );
    assert!(index
        .workload_deps(&productpage())
        .is_some_and(|d| d.over_cap));
    assert_eq!(index.counters().deps_over_cap, 2);
}

#[test]
fn our_sidecars_restore_deps() {
    let annotations = |deps: &str| -> BTreeMap<String, String> {
        [
            (
                "lazyxds.io/workload".to_string(),
                "Deployment/productpage".to_string(),
            ),
            ("lazyxds.io/deps".to_string(), deps.to_string()),
        ]
        .into()
    };
    let ours = Labels::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "lazyxds".to_string(),
    )]);
    let sidecar = SidecarObject::new(
        "shop",
        "lazyxds-deployment-productpage",
        ours.clone(),
        &annotations(
            r#"{"ratings.shop.svc.cluster.local":50,"reviews.shop.svc.cluster.local":70}"#,
        ),
        serde_json::json!({"workloadSelector": {"labels": {"app": "productpage"}}}),
    )
    .expect("valid");
    assert_eq!(
        sidecar.restored,
        Some(RestoredDeps {
            workload: productpage(),
            deps: [(RATINGS.to_string(), 50), (REVIEWS.to_string(), 70)].into(),
        })
    );
    assert_eq!(sidecar.selector, Some(mk_labels(&[("app", "productpage")])));
    assert_eq!(
        sidecar.spec,
        serde_json::Value::Null,
        "ours: the spec is not kept"
    );

    let mut index = Index::test();
    index.record_edges(
        [mk_edge(
            "10.0.0.10",
            Some("ratings"),
            &mk_outbound(9080, RATINGS),
            60,
        )],
        60,
    );
    assert_eq!(index.restore_from_sidecars([sidecar]), 2);
    assert_eq!(
        index.deps(&productpage()),
        mk_deps(&[(RATINGS, 60), (REVIEWS, 70)]),
        "max last seen"
    );
    assert!(
        index.ns("shop").unwrap().sidecars.is_empty(),
        "ours: merged into the index's deps, not kept"
    );
    // A user's Sidecar that becomes ours (our label added) is no longer a user's.
    let mut users = SidecarObject::new(
        "shop",
        "lazyxds-deployment-productpage",
        Labels::new(),
        &BTreeMap::new(),
        serde_json::json!({"workloadSelector": {"labels": {"app": "productpage"}}}),
    )
    .expect("user's");
    index.apply(users.clone());
    assert_eq!(index.ns("shop").unwrap().sidecars.len(), 1);
    users.labels = mk_labels(&[("app.kubernetes.io/managed-by", "lazyxds")]);
    index.apply(users);
    assert!(index.ns("shop").unwrap().sidecars.is_empty());

    // Users' Sidecars carry nothing to restore; ours must be readable.
    let user = SidecarObject::new(
        "shop",
        "x",
        Labels::new(),
        &annotations("garbage"),
        serde_json::json!({}),
    )
    .expect("user's");
    assert_eq!(user.restored, None);
    let cases = [
        (annotations("[1]"), "lazyxds.io/deps"),
        (annotations(r#"{"a": -1}"#), "lazyxds.io/deps"),
        (
            BTreeMap::from([("lazyxds.io/workload".to_string(), "Deployment".to_string())]),
            "lazyxds.io/workload",
        ),
        (
            BTreeMap::from([("lazyxds.io/workload".to_string(), "Widget/x".to_string())]),
            "lazyxds.io/workload",
        ),
    ];
    for (annotations, bad) in cases {
        let err = SidecarObject::new(
            "shop",
            "lazyxds-x",
            ours.clone(),
            &annotations,
            serde_json::json!({}),
        )
        .expect_err("invalid");
        match err {
            crate::Error::Annotation {
                object, annotation, ..
            } => {
                assert_eq!(
                    (object.as_str(), annotation),
                    ("Sidecar shop/lazyxds-x", bad)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn restore_skips_expired_deps() {
    let mut index = Index::new(IndexConfig {
        ttl: Some(Duration::from_secs(100)),
        ..IndexConfig::default()
    });
    index.tick(1000);
    index.apply(mk_our_sidecar(
        &productpage(),
        &[("old.x", 800), ("new.x", 950)],
    ));
    assert_eq!(index.deps(&productpage()), mk_deps(&[("new.x", 950)]));
    assert_eq!(index.tick(1050), set(&[]));
    assert_eq!(index.deps(&productpage()), mk_deps(&[("new.x", 950)]));
    assert_eq!(
        index.tick(1051),
        set(&[]),
        "productpage is not opted in here"
    );
    assert_eq!(index.deps(&productpage()), BTreeMap::new());
}

#[test]
fn resets_replace_a_kind() {
    let mut index = Index::test();
    index.reset(
        (),
        vec![mk_service(
            "shop",
            "ratings",
            &[("app", "ratings")],
            &[(9080, "http")],
        )],
    );
    let hosts: Vec<&str> = index
        .namespace_names()
        .into_iter()
        .flat_map(|ns| {
            index
                .ns(ns)
                .into_iter()
                .flat_map(|s| s.services.keys().map(|k| &**k))
        })
        .collect();
    assert_eq!(hosts, vec!["ratings"]);
    assert_eq!(
        index.hosts.lookup("reviews-v2.shop.svc.cluster.local"),
        None
    );
    assert!(
        index.hosts.lookup(REVIEWS).is_some(),
        "still the VirtualService's host"
    );

    index.reset(
        (),
        vec![mk_pod("shop", "only", "10.0.9.9", None, &[("app", "only")])],
    );
    assert_eq!(
        index.ip_table(),
        vec![(mk_ip("10.0.9.9"), Arc::from("shop"))]
    );
    index.reset::<VirtualService>((), vec![]);
    assert_eq!(index.hosts.lookup(REVIEWS), None);
}

#[test]
fn absent_workloads_are_forgotten_on_request() {
    let mut index = Index::test();
    let gone = mk_id(Deployment, "shop", "gone");
    index.apply(mk_our_sidecar(&gone, &[("a.x", 1)]));
    // A user's Sidecar claiming to be ours by annotation only restores nothing.
    let mut fake = mk_user_sidecar("shop", "fake", serde_json::json!({}));
    fake.restored = Some(RestoredDeps {
        workload: productpage(),
        deps: [("fake.x".to_string(), 1)].into(),
    });
    index.apply(fake);
    index.record_edges(
        [mk_edge(
            "10.0.0.10",
            Some("ratings"),
            &mk_outbound(9080, RATINGS),
            1,
        )],
        1,
    );
    assert_eq!(index.forget_absent_workloads(), 1);
    assert_eq!(index.workloads_with_deps(), set(&[&productpage()]));
}

#[test]
fn requests_for_deps_already_learned_count_as_stuck_on_the_gateway() {
    let mut index = Index::test();
    mk_deployment(&mut index, "shop", "web", "10.0.0.1");
    let reviews = mk_outbound(9080, "reviews.shop.svc.cluster.local");
    // First sighting learns the dep; the next requests should have gone direct.
    index.record_edges([mk_edge("10.0.0.1", None, &reviews, 100)], 100);
    let mut again = mk_edge("10.0.0.1", None, &reviews, 101);
    again.requests = 4;
    let mut resent = mk_edge("10.0.0.1", None, &reviews, 101);
    resent.requests = 0; // a resync: no new traffic, not stuck
    index.record_edges([again, resent], 101);
    let c = index.counters();
    assert_eq!((c.attributed_requests, c.known_dep_requests), (5, 4));
}

#[test]
fn namespaces_istio_does_not_discover_are_never_scoped() {
    let mut index = Index::new(IndexConfig::default());
    let mut shop = mk_namespace("shop", Some(true));
    mk_deployment(&mut index, "shop", "web", "10.0.0.1");
    index.apply(shop.clone());
    let web = mk_id(WorkloadKind::Deployment, "shop", "web");
    assert!(
        index.is_enabled(&web),
        "no discoverySelectors: every namespace"
    );
    let mesh =
        crate::MeshConfig::parse("discoverySelectors: [{matchLabels: {mesh: 'on'}}]").unwrap();
    index.set_discovery_selectors(mesh.discovery_selectors);
    assert!(
        !index.is_enabled(&web),
        "opted in, but istiod ignores the namespace"
    );
    shop.labels.insert("mesh".into(), "on".into());
    index.apply(shop);
    assert!(index.is_enabled(&web));
}

#[test]
fn pods_share_one_copy_of_equal_labels_and_strings_until_none_uses_them() {
    let mut index = Index::default();
    let rs = Some(("ReplicaSet", "web-5d9"));
    index.apply(mk_pod("shop", "web-1", "10.0.0.1", rs, &[("app", "web")]));
    index.apply(mk_pod("shop", "web-2", "10.0.0.2", rs, &[("app", "web")]));
    index.apply(mk_pod("shop", "db-1", "10.0.0.3", None, &[("app", "db")]));
    let pods = &index.ns("shop").unwrap().pods;
    let (web1, web2, db1) = (&pods["web-1"], &pods["web-2"], &pods["db-1"]);
    assert!(Arc::ptr_eq(&web1.labels, &web2.labels));
    assert_eq!(index.pod_labels.len(), 2);
    // Borrowed, not cloned: a clone would hold the strings past the pods' deletion.
    let (owner1, owner2) = (web1.owner.as_ref().unwrap(), web2.owner.as_ref().unwrap());
    let shared = [
        (&web1.namespace, &web2.namespace),
        (&web1.namespace, &db1.namespace),
        (&web1.service_account, &db1.service_account),
        (&owner1.kind, &owner2.kind),
        (&owner1.name, &owner2.name),
    ];
    for (a, b) in shared {
        assert!(Arc::ptr_eq(a, b), "{a} is not shared");
    }
    // shop, default, ReplicaSet, web-5d9.
    assert_eq!(index.pod_strings.len(), 4);
    for name in ["web-1", "web-2", "db-1"] {
        index.delete::<crate::Pod>((), "shop", name);
    }
    // Deleted pods are remembered as past IP holders for a while, then forgotten.
    index.tick(100_000);
    assert!(index.pod_labels.is_empty());
    assert!(index.pod_strings.is_empty(), "{:?}", index.pod_strings);
}
