//! The seed inputs of each fuzz target, made from real inputs: the filter's own encoding
//! of edges (Envoy's cluster names, SPIFFE ids, pod addresses), Istio's cluster names,
//! the shipped plugin configurations and topology files. Committed as
//! `fuzz/corpus/<target>/seed-*`; `LAZYXDS_BLESS=1` rewrites them, otherwise this test
//! checks they are what this file makes.

use std::path::Path;

use lazyxds_filter_core::{Config, Reporter, RequestProperties};
use lazyxds_fuzz_check::edge_stream::frame;

const DEMO_TOPOLOGY: &str = include_str!("../../../controller/index/testdata/demo-topology.yaml");
const COMPOSE_TOPOLOGY: &str = include_str!("../../../envoyfilter/compose/topology.yaml");

/// Requests as the gateway's Envoy reports them: (cluster, source, authority, principal).
const REQUESTS: &[(&str, &str, &str, &str)] = &[
    (
        "outbound|9080||reviews.shop.svc.cluster.local",
        "127.0.0.10:41234",
        "reviews:9080",
        "spiffe://cluster.local/ns/shop/sa/productpage",
    ),
    (
        "outbound|9080|v2|reviews.shop.svc.cluster.local",
        "127.0.0.11:41235",
        "reviews.shop.svc.cluster.local:9080",
        "spiffe://cluster.local/ns/shop/sa/productpage",
    ),
    (
        "outbound|9080||ratings.shop.svc.cluster.local",
        "[fd00::12]:5000",
        "ratings.shop",
        "",
    ),
    (
        "outbound|443||api.stripe.com",
        "[::ffff:127.0.0.16]:6000",
        "api.stripe.com",
        "spiffe://cluster.local/ns/payments/sa/checkout",
    ),
    (
        "outbound|9080||details.shop.svc.cluster.local",
        "127.0.0.12",
        "",
        "",
    ),
];

/// One gateway stream as the filter writes it: Hello, then batches (the dictionary
/// spanning them), then a refresh of known edges.
fn filter_stream(max_batch_edges: usize) -> Vec<u8> {
    let config = Config {
        max_batch_edges,
        max_names_per_stream: 16,
        gateway_id: "lazyxds-gateway-7d9f-x2".into(),
        ..Config::default()
    };
    let mut reporter = Reporter::new(config, "lazyxds-gateway-7d9f-x2".into(), "1".into());
    let mut body = frame(&reporter.stream_opened());
    for (at, (cluster, source, host, principal)) in REQUESTS.iter().enumerate() {
        let props = RequestProperties {
            cluster: Some(cluster.as_bytes()),
            source: Some(source.as_bytes()),
            host: Some(host.as_bytes()).filter(|h| !h.is_empty()),
            principal: Some(principal.as_bytes()).filter(|p| !p.is_empty()),
        };
        reporter.observe(&props, 1_000 * at as u64);
    }
    let now = 1_764_800_000_000;
    while let Some(batch) = reporter.next_batch(now) {
        body.extend(frame(&batch));
    }
    body
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    // Byte 0: even = the default limits, odd = small ones.
    let mut stream = vec![0];
    stream.extend(filter_stream(1_000));
    out.push(("edge_stream", "filter-one-batch", stream));
    let mut stream = vec![1];
    stream.extend(filter_stream(2));
    out.push(("edge_stream", "filter-small-batches", stream));

    for (name, cluster) in [
        ("outbound", "outbound|9080||reviews.shop.svc.cluster.local"),
        ("subset", "outbound|9080|v2|reviews.shop.svc.cluster.local"),
        ("service-entry", "outbound|443||api.stripe.com"),
        ("wildcard", "outbound|443||*.example.com"),
        ("inbound", "inbound|9080||"),
        ("inbound-named", "inbound|15021|mgmt-15021|mgmtCluster"),
        ("passthrough", "PassthroughCluster"),
        ("blackhole", "BlackHoleCluster"),
        ("inbound-passthrough", "InboundPassthroughClusterIpv4"),
        ("xds", "xds-grpc"),
        ("sds", "sds-grpc"),
        ("stats", "prometheus_stats"),
        (
            "controller",
            "outbound|18000||lazyxds.lazyxds-system.svc.cluster.local",
        ),
        (
            "sni-dfp",
            "outbound_.9080_._.reviews.shop.svc.cluster.local",
        ),
    ] {
        out.push(("cluster_name", name, cluster.as_bytes().to_vec()));
    }

    // Lines: authority, principal, source, flags, cluster domain, namespaces, pods.
    for (name, input) in [
        (
            "bare-by-identity",
            "reviews:9080\nspiffe://cluster.local/ns/shop/sa/productpage\n127.0.0.10:4000\n\n\n",
        ),
        (
            "bare-by-table",
            "reviews:9080\n\n127.0.0.10:4000\nt\n\nshop,payments=R\n127.0.0.10=0 127.0.0.16=1",
        ),
        ("bare-waits", "reviews\n\n127.0.0.10:4000\nw\n"),
        (
            "pair-external",
            "ratings.shop\n\n127.0.0.16:4000\nxt\n\nshop,payments=R\n127.0.0.10=0 127.0.0.16=1",
        ),
        ("svc-case", "Reviews.Shop.SVC:80\n\n\n\nmesh.example\n"),
        (
            "fqdn-registry-only",
            "api.example.com:443\n\n127.0.0.16:4000\nxtr\n\nshop,payments=R\n127.0.0.16=1",
        ),
        (
            "partial-domain",
            "reviews.shop.svc.cluster\n\n\nt\n\nshop\n",
        ),
        ("ipv6-source", "details\n\n[fd00::12]:5000\nt\n\nshop\n"),
    ] {
        out.push(("authority", name, input.as_bytes().to_vec()));
    }

    for (name, config) in [
        (
            "install",
            r#"{"controller_cluster":"outbound|18000||lazyxds.lazyxds-system.svc.cluster.local","flush_interval_ms":20,"refresh_interval_s":300}"#,
        ),
        (
            "compose",
            r#"{"controller_cluster":"lazyxds_controller","flush_interval_ms":20,"gateway_id":"compose-gateway","refresh_interval_s":5}"#,
        ),
        (
            "tests",
            r#"{"controller_cluster":"lazyxds_controller","flush_interval_ms":20,"refresh_interval_s":1,"reconnect_max_backoff_ms":1000,"gateway_id":"gw-test"}"#,
        ),
        (
            "every-field",
            r#"{"controller_cluster":"sink","gateway_id":"gw-1","flush_interval_ms":5,"refresh_interval_s":30,"max_edges":100,"max_batch_edges":10,"max_batch_bytes":2048,"max_inflight_batches":2,"max_names_per_stream":64,"ack_timeout_ms":500,"reconnect_max_backoff_ms":100,"report":false,"routing":false,"cluster_domain":"mesh.example","routing_wait_ms":0}"#,
        ),
        ("empty", ""),
    ] {
        out.push(("plugin_config", name, config.as_bytes().to_vec()));
    }

    let bench = "mesh:\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n\
        gateway: {host: lazyxds-gateway.lazyxds-system.svc.cluster.local, namespace: lazyxds-system, port: 8080}\n\
        namespaces:\n  - {name: bench, annotations: {lazyxds.io/enabled: \"true\"}}\n\
        workloads:\n  - {kind: Deployment, namespace: bench, name: client-0, labels: {app: client-0}, serviceAccount: client, pods: [{ip: 127.0.2.1}]}\n\
        services:\n  - {namespace: bench, name: svc-0, selector: {app: svc-0}, ports: [{port: 9080, name: http}]}\n";
    out.push(("topology", "demo", DEMO_TOPOLOGY.as_bytes().to_vec()));
    out.push(("topology", "compose", COMPOSE_TOPOLOGY.as_bytes().to_vec()));
    out.push(("topology", "bench", bench.as_bytes().to_vec()));
    out
}

/// What the filter writes, the controller's decoder accepts, every edge of it.
#[test]
fn the_filters_stream_is_accepted_whole() {
    use lazyxds_fuzz_check::edge_stream::frames;
    use lazyxds_index::decode::{Decoder, Limits};
    use lazyxds_proto::v1::{gateway_message::Kind, GatewayMessage};
    use prost::Message;
    for (max_batch_edges, limits) in [
        (1_000, Limits::default()),
        (2, lazyxds_fuzz_check::edge_stream::SMALL_LIMITS),
    ] {
        let body = filter_stream(max_batch_edges);
        let mut decoder = Decoder::new(limits);
        let mut edges = 0;
        for (i, message) in frames(&body).into_iter().enumerate() {
            match GatewayMessage::decode(message).unwrap().kind.unwrap() {
                Kind::Hello(_) => assert_eq!(i, 0),
                Kind::Batch(batch) => edges += decoder.apply_batch(&batch).unwrap().len(),
            }
        }
        assert_eq!(edges, REQUESTS.len());
    }
}

#[test]
fn seeds_are_committed() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let bless = std::env::var_os("LAZYXDS_BLESS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus.join(target).join(format!("seed-{name}"));
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (LAZYXDS_BLESS=1 writes it)", path.display()));
            assert!(
                committed == bytes,
                "{} is stale (LAZYXDS_BLESS=1 rewrites it)",
                path.display()
            );
        }
    }
}
