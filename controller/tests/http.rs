//! The debug/health HTTP server over a real socket; `/debug/edges` is a contract with
//! the end-to-end tests, so its JSON is asserted whole.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use lazyxds::counters::Counters;
use lazyxds::edges::ObservedEdge;
use lazyxds::sink::{EdgeSink, GatewayInfo, MemoryEdgeSink};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn mk_http(sink: Arc<MemoryEdgeSink>, counters: Arc<Counters>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = lazyxds::http::router(lazyxds::http::Sources::edges(sink, counters));
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// `(status code, body)` of a plain HTTP/1.1 GET.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: lazyxds\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn mk_gateway() -> GatewayInfo {
    GatewayInfo {
        gateway_id: "gw".to_string(),
        worker: "w1".to_string(),
        resync: false,
        peer: None,
    }
}

fn mk_observed(ip: &str, host: Option<&str>, principal: Option<&str>) -> ObservedEdge {
    ObservedEdge {
        source_ip: ip.parse().unwrap(),
        host: host.map(Arc::from),
        cluster: Arc::from("outbound|9080||reviews.default.svc.cluster.local"),
        principal: principal.map(Arc::from),
        requests: 12,
        last_seen_unix_s: 1_764_150_000,
    }
}

#[tokio::test]
async fn debug_edges_json_shape() {
    let counters = Arc::new(Counters::default());
    let sink = Arc::new(MemoryEdgeSink::new(2, counters.clone()));
    sink.record(
        &mk_gateway(),
        vec![
            mk_observed("fd00::1", None, Some("spiffe://cluster.local/ns/a/sa/b")),
            mk_observed(
                "127.0.0.10",
                Some("reviews.default.svc.cluster.local"),
                None,
            ),
            // The store holds 2: this one is dropped and counted.
            mk_observed("127.0.0.9", None, None),
        ],
    );
    counters.streams_opened.fetch_add(1, Relaxed);
    counters.batches_acked.fetch_add(3, Relaxed);
    let addr = mk_http(sink, counters).await;

    let (code, body) = get(addr, "/debug/edges").await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        body,
        json!({
            "edges": [
                {
                    "source_ip": "127.0.0.10",
                    "host": "reviews.default.svc.cluster.local",
                    "cluster": "outbound|9080||reviews.default.svc.cluster.local",
                    "principal": null,
                    "requests": 12,
                    "last_seen_unix_s": 1_764_150_000u64,
                },
                {
                    "source_ip": "fd00::1",
                    "host": null,
                    "cluster": "outbound|9080||reviews.default.svc.cluster.local",
                    "principal": "spiffe://cluster.local/ns/a/sa/b",
                    "requests": 12,
                    "last_seen_unix_s": 1_764_150_000u64,
                },
            ],
            "counters": {
                "streams_opened": 1,
                "streams_open": 0,
                "resync_hellos": 0,
                "batches_acked": 3,
                "edges_received": 0,
                "batches_rejected": 0,
                "messages_undecodable": 0,
                "edges_dropped_store_full": 1,
                "namespace_tables_sent": 0,
                "connections_open": 0,
                "connections_accepted": 0,
                "connections_refused_at_cap": 0,
                "connections_closed_handshake_timeout": 0,
                "connections_closed_idle": 0,
                "connections_at_stream_cap": 0,
                "accept_errors": 0,
                "streams_refused_at_cap": 0,
                "hellos_timed_out": 0,
                "stream_panics": 0,
                "auth_refused": 0,
            },
        })
    );
}

#[tokio::test]
async fn health_and_rejections() {
    let counters = Arc::new(Counters::default());
    let sink = Arc::new(MemoryEdgeSink::new(10, counters.clone()));
    let addr = mk_http(sink, counters).await;
    assert_eq!(get(addr, "/healthz").await, (200, "ok".to_string()));
    assert_eq!(get(addr, "/readyz").await, (200, "ok".to_string()));
    assert_eq!(get(addr, "/nope").await.0, 404);
    let (code, body) = get(addr, "/debug/rejections").await;
    assert_eq!(
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        ),
        (
            200,
            json!({
                "bad_source_ip": 0,
                "missing_cluster": 0,
                "name_id_zero": 0,
                "name_redefined": 0,
                "name_too_long": 0,
                "seq_not_increasing": 0,
                "too_many_edges": 0,
                "too_many_names": 0,
                "unknown_name": 0,
            })
        )
    );
}
