//! The filter's per-request work natively, in the order the wasm shell does it for a known
//! edge (`filter/src/lib.rs`: request headers, then log), so our own code can be profiled
//! by function, which V8's generated code cannot:
//!
//! ```text
//! cargo build --release -p lazyxds-filter-core --example hot_path
//! valgrind --tool=callgrind --callgrind-out-file=hot.out target/release/examples/hot_path 100000
//! callgrind_annotate --inclusive=yes hot.out | head -60
//! ```
//!
//! The traffic is the P1 bench's: 100 sources (one keep-alive connection each) × 10
//! services, every edge known after the first 1,000 requests, the namespace table pushed
//! (ALLOW_ANY). Values the shell gets from Envoy are copied into fresh `Vec`s, as the
//! host's allocation callback does. Prints the requests counted and the table's size.

use lazyxds_filter_core::authority::Authority;
use lazyxds_filter_core::{
    CheckedProperties, Config, Connections, EdgeCluster, Flows, Peer, Reporter, RequestView, Router,
};
use lazyxds_proto::v1::{NamespaceTable, OutboundPolicy};
use std::hint::black_box;

const SOURCES: usize = 100;
const SERVICES: usize = 10;

fn main() {
    let requests: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let config = Config::default();
    let mut router = Router::new(&config);
    router.apply_table(NamespaceTable {
        namespaces: vec!["bench".into()],
        policies: vec![OutboundPolicy::AllowAny as i32],
        mesh_policy: OutboundPolicy::AllowAny as i32,
        ..NamespaceTable::default()
    });
    let mut reporter = Reporter::new(config, "gw".into(), "w".into());
    let mut flows = Flows::default();
    let mut connections = Connections::default();
    let authorities: Vec<Vec<u8>> = (0..SERVICES)
        .map(|i| format!("svc-{i}.bench.svc.cluster.local").into_bytes())
        .collect();
    let clusters: Vec<Vec<u8>> = (0..SERVICES)
        .map(|i| format!("outbound|9080||svc-{i}.bench.svc.cluster.local").into_bytes())
        .collect();
    let sources: Vec<Vec<u8>> = (0..SOURCES)
        .map(|i| format!("127.0.{}.{}:4{i:04}", 1 + i / 50, 1 + i % 50).into_bytes())
        .collect();
    for n in 0..requests {
        let context_id = n as u32 + 2;
        let (source, service) = (n as usize % SOURCES, (n as usize / SOURCES) % SERVICES);
        // proxy_on_request_headers
        let authority = black_box(authorities[service].clone());
        reporter.traffic_seen();
        let form = Authority::parse(&authority);
        let needs_route = router.needs_route_for(form);
        assert!(!needs_route, "the bench's hosts have routes of their own");
        let caller = router.needs_caller_for(form, false);
        assert!(!caller);
        let request = RequestView {
            authority: &authority,
            external: false,
            principal: None,
            source: None,
        };
        let _ = black_box(router.on_parsed_request(context_id, &request, form, n));
        if let Some(flow) = flows.entry(context_id, n) {
            flow.authority = Some(authority);
            flow.paused = false;
        }
        // proxy_on_log
        let flow = flows.take(context_id);
        let authority = flow.and_then(|f| f.authority);
        let cluster = black_box(clusters[service].clone());
        let edge_cluster = EdgeCluster::new(&cluster).expect("an edge cluster");
        let connection_id = black_box((source as u64 + 1).to_le_bytes().to_vec());
        let id = Connections::id_of(&connection_id).unwrap_or_default();
        let peer = connections.get_or_read(id, || Peer::new(Some(sources[source].clone()), None));
        let props = CheckedProperties {
            cluster: edge_cluster,
            source_ip: peer.source_ip,
            host: authority.as_deref(),
            principal: peer.principal.as_deref(),
        };
        reporter.observe_checked(&props, n);
    }
    println!(
        "requests {} edges {} new {}",
        reporter.counters().requests_seen,
        reporter.table_len(),
        reporter.counters().edges_new
    );
}
