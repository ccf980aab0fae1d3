//! Table tests of the reporter against a decoding stand-in for the controller.

use crate::config::Config;
use crate::edge::RequestProperties;
use crate::reporter::{CloseReason, Reporter};
use lazyxds_proto::v1::{
    controller_message, gateway_message, Ack, ControllerMessage, GatewayMessage, Hello,
};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const T0: u64 = 1_764_000_000_000;

/// (source ip, host, cluster, principal) as the controller would resolve them.
type Key = (String, Option<String>, String, Option<String>);

/// Decodes what the reporter sends, as the controller does (one dictionary per stream).
#[derive(Default)]
struct Receiver {
    hellos: Vec<Hello>,
    names: HashMap<u32, String>,
    /// Per edge: total requests and every report.
    edges: BTreeMap<Key, u64>,
    reports: u64,
    last_seq: u64,
    bytes: usize,
}

impl Receiver {
    fn receive(&mut self, bytes: &[u8]) -> Option<u64> {
        self.bytes += bytes.len() + 5; // + gRPC frame header, as on the wire
        let message = GatewayMessage::decode(bytes).expect("valid GatewayMessage");
        match message.kind.expect("kind set") {
            gateway_message::Kind::Hello(hello) => {
                self.hellos.push(hello);
                self.names.clear();
                self.last_seq = 0;
                None
            }
            gateway_message::Kind::Batch(batch) => {
                assert_eq!(batch.seq, self.last_seq + 1, "seq increases by one");
                self.last_seq = batch.seq;
                for name in batch.names {
                    assert!(
                        self.names.insert(name.id, name.value).is_none(),
                        "id reused"
                    );
                }
                for edge in batch.edges {
                    let ip = match edge.source_ip.len() {
                        4 => <[u8; 4]>::try_from(edge.source_ip.as_slice())
                            .map(|o| o.into())
                            .map(|ip: std::net::Ipv4Addr| ip.to_string())
                            .expect("v4"),
                        16 => <[u8; 16]>::try_from(edge.source_ip.as_slice())
                            .map(|o| std::net::Ipv6Addr::from(o).to_string())
                            .expect("v6"),
                        n => panic!("bad ip length {n}"),
                    };
                    let name = |id: u32| (id != 0).then(|| self.names[&id].clone());
                    let key = (
                        ip,
                        name(edge.host),
                        name(edge.cluster).expect("cluster"),
                        name(edge.principal),
                    );
                    *self.edges.entry(key).or_default() += edge.requests;
                    self.reports += 1;
                }
                Some(batch.seq)
            }
        }
    }

    fn ack(seq: u64) -> Vec<u8> {
        ControllerMessage {
            kind: Some(controller_message::Kind::Ack(Ack { seq })),
        }
        .encode_to_vec()
    }
}

/// Reporting only: without first-call routing an idle worker opens no stream.
fn mk_config() -> Config {
    Config {
        controller_cluster: "sink".into(),
        routing: false,
        ..Config::default()
    }
}

fn mk_reporter(config: Config) -> Reporter {
    Reporter::new(config, "gw-1".into(), "w-1".into())
}

fn cluster(i: usize) -> String {
    format!("outbound|9080||svc-{i}.default.svc.cluster.local")
}

fn request(r: &mut Reporter, ip: &str, host: &str, cluster: &str, now: u64) {
    let source = format!("{ip}:40000");
    r.observe(
        &RequestProperties {
            cluster: Some(cluster.as_bytes()),
            source: Some(source.as_bytes()),
            host: Some(host.as_bytes()),
            principal: None,
        },
        now,
    );
}

fn key(ip: &str, host: &str, cluster: &str) -> Key {
    (ip.into(), Some(host.into()), cluster.into(), None)
}

/// Opens a stream if wanted, sends every batch the window allows, acks them if `ack`.
fn pump(r: &mut Reporter, rx: &mut Receiver, now: u64, ack: bool) -> usize {
    r.tick(now);
    if r.wants_stream(now) {
        let hello = r.stream_opened();
        rx.receive(&hello);
    }
    let mut sent = 0;
    while let Some(bytes) = r.next_batch(now) {
        let seq = rx.receive(&bytes).expect("a batch");
        sent += 1;
        if ack {
            r.on_controller_message(&Receiver::ack(seq));
        }
    }
    sent
}

#[test]
fn a_new_edge_goes_out_on_the_next_flush_with_its_names() {
    let mut r = mk_reporter(mk_config());
    let mut rx = Receiver::default();
    assert!(!r.wants_stream(T0), "idle workers open no stream");
    request(&mut r, "10.0.0.1", "reviews:9080", &cluster(1), T0);
    request(&mut r, "10.0.0.1", "reviews:9080", &cluster(1), T0 + 1);
    assert!(r.wants_stream(T0 + 1));
    assert_eq!(pump(&mut r, &mut rx, T0 + 1, true), 1);
    assert_eq!(
        rx.hellos,
        vec![Hello {
            gateway_id: "gw-1".into(),
            worker: "w-1".into(),
            resync: false
        }]
    );
    assert_eq!(
        rx.edges,
        BTreeMap::from([(key("10.0.0.1", "reviews", &cluster(1)), 2)])
    );
    assert_eq!(r.inflight_len(), 0);
    let c = r.counters();
    assert_eq!(
        (
            c.requests_seen,
            c.edges_new,
            c.batches_sent,
            c.batches_acked
        ),
        (2, 1, 1, 1)
    );
}

#[test]
fn known_edges_wait_for_the_refresh_interval_and_names_are_sent_once() {
    let config = Config {
        refresh_interval_s: 10,
        ..mk_config()
    };
    let mut r = mk_reporter(config);
    let mut rx = Receiver::default();
    request(&mut r, "10.0.0.1", "a", &cluster(1), T0);
    pump(&mut r, &mut rx, T0, true);
    let names_after_first = rx.names.len();
    for i in 0..5 {
        request(&mut r, "10.0.0.1", "a", &cluster(1), T0 + 100 + i);
    }
    assert_eq!(
        pump(&mut r, &mut rx, T0 + 9_000, true),
        0,
        "before the refresh interval"
    );
    assert_eq!(pump(&mut r, &mut rx, T0 + 10_200, true), 1);
    assert_eq!(rx.edges[&key("10.0.0.1", "a", &cluster(1))], 6);
    assert_eq!(rx.names.len(), names_after_first, "no name defined twice");
    assert_eq!(rx.reports, 2);
}

#[test]
fn batches_respect_edge_byte_and_inflight_caps() {
    let config = Config {
        max_batch_edges: 10,
        max_inflight_batches: 2,
        ..mk_config()
    };
    let mut r = mk_reporter(config);
    let mut rx = Receiver::default();
    for i in 0..25 {
        request(&mut r, &format!("10.0.1.{i}"), "a", &cluster(i), T0);
    }
    assert_eq!(pump(&mut r, &mut rx, T0, false), 2, "window of two batches");
    assert_eq!(r.next_batch(T0), None);
    r.on_controller_message(&Receiver::ack(1));
    assert_eq!(r.inflight_len(), 1);
    let third = r.next_batch(T0).expect("window has room again");
    assert_eq!(rx.receive(&third), Some(3));
    r.on_controller_message(&Receiver::ack(3)); // cumulative
    assert_eq!(r.inflight_len(), 0);
    assert_eq!(rx.edges.len(), 25);
    assert_eq!(pump(&mut r, &mut rx, T0, true), 0);
    assert_eq!(rx.edges.len(), 25);

    // Byte cap: every batch stays under it, nothing is lost.
    let config = Config {
        max_batch_bytes: 1_024,
        ..mk_config()
    };
    let mut r = mk_reporter(config);
    let mut rx = Receiver::default();
    for i in 0..100 {
        request(&mut r, "10.0.2.1", "a", &cluster(i), T0);
    }
    let mut sizes = Vec::new();
    r.tick(T0);
    rx.receive(&r.stream_opened());
    while let Some(bytes) = r.next_batch(T0) {
        sizes.push(bytes.len());
        let seq = rx.receive(&bytes).expect("batch");
        r.on_controller_message(&Receiver::ack(seq));
    }
    assert!(
        sizes.len() > 1 && sizes.iter().all(|&s| s <= 1_024),
        "{sizes:?}"
    );
    assert_eq!(rx.edges.len(), 100);
}

#[test]
fn a_closed_stream_resends_unacked_batches_and_the_whole_table() {
    let mut r = mk_reporter(mk_config());
    let mut first = Receiver::default();
    for i in 0..30 {
        request(&mut r, &format!("10.0.3.{i}"), "a", &cluster(1), T0);
    }
    pump(&mut r, &mut first, T0, true); // acked: controller knew these
    for i in 30..40 {
        request(&mut r, &format!("10.0.3.{i}"), "a", &cluster(1), T0 + 5);
    }
    request(&mut r, "10.0.3.0", "a", &cluster(1), T0 + 6);
    pump(&mut r, &mut first, T0 + 10, false); // sent, never acked: lost with the stream
    r.stream_closed(T0 + 20, None);
    // A restarted controller with empty memory gets everything, with every request counted
    // exactly once.
    let mut second = Receiver::default();
    pump(&mut r, &mut second, T0 + 20, true);
    assert!(second.hellos[0].resync);
    assert_eq!(second.edges.len(), 40);
    let total: u64 = second.edges.values().sum();
    assert_eq!(total, 11, "only the unacked requests count again");
    assert_eq!(r.counters().resyncs, 1);
}

#[test]
fn reconnect_backs_off_while_the_controller_is_down_and_is_capped() {
    let config = Config {
        reconnect_max_backoff_ms: 1_000,
        ..mk_config()
    };
    let mut r = mk_reporter(config);
    request(&mut r, "10.0.0.1", "a", &cluster(1), T0);
    let mut now = T0;
    let mut delays = Vec::new();
    for _ in 0..7 {
        assert!(r.wants_stream(now));
        r.stream_opened();
        assert!(r.next_batch(now).is_some());
        r.stream_closed(now, None); // fails before any ack
        let mut wait = 0;
        while !r.wants_stream(now + wait) {
            wait += 10;
        }
        delays.push(wait);
        now += wait;
    }
    assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000, 1_000]);
    // One ack resets the backoff.
    r.stream_opened();
    let mut rx = Receiver::default();
    rx.names.clear();
    let bytes = r.next_batch(now).expect("batch");
    let seq = GatewayMessage::decode(bytes.as_slice())
        .ok()
        .and_then(|m| match m.kind {
            Some(gateway_message::Kind::Batch(b)) => Some(b.seq),
            _ => None,
        });
    r.on_controller_message(&Receiver::ack(seq.expect("seq")));
    r.stream_closed(now, None);
    assert!(
        r.wants_stream(now),
        "a stream that worked reconnects at once"
    );
}

#[test]
fn unacked_batches_time_out_and_full_dictionaries_recycle_the_stream() {
    let config = Config {
        ack_timeout_ms: 500,
        ..mk_config()
    };
    let mut r = mk_reporter(config);
    let mut rx = Receiver::default();
    request(&mut r, "10.0.0.1", "a", &cluster(1), T0);
    pump(&mut r, &mut rx, T0, false);
    assert_eq!(r.close_reason(T0 + 499), None);
    assert_eq!(r.close_reason(T0 + 500), Some(CloseReason::AckTimeout));
    r.stream_closed(T0 + 500, Some(CloseReason::AckTimeout));
    assert_eq!(r.counters().stream_ack_timeouts, 1);

    let config = Config {
        max_names_per_stream: 16,
        ..mk_config()
    };
    let mut r = mk_reporter(config);
    let mut rx = Receiver::default();
    for i in 0..40 {
        request(&mut r, "10.0.0.1", "a", &cluster(i), T0);
    }
    pump(&mut r, &mut rx, T0, true);
    assert_eq!(rx.edges.len(), 15, "16 names: host + 15 clusters");
    assert_eq!(r.close_reason(T0), Some(CloseReason::DictionaryFull));
    r.stream_closed(T0, Some(CloseReason::DictionaryFull));
    let mut guard = 0;
    while rx.edges.len() < 40 && guard < 10 {
        pump(&mut r, &mut rx, T0, true);
        if let Some(reason) = r.close_reason(T0) {
            r.stream_closed(T0, Some(reason));
        }
        guard += 1;
    }
    assert_eq!(rx.edges.len(), 40);
    assert!(r.counters().streams_recycled >= 2);
}

#[test]
fn skips_are_counted_and_bad_controller_messages_do_not_hurt() {
    let mut r = mk_reporter(mk_config());
    let props = |cluster: Option<&'static str>, source: Option<&'static str>| RequestProperties {
        cluster: cluster.map(str::as_bytes),
        source: source.map(str::as_bytes),
        host: None,
        principal: None,
    };
    r.observe(&props(None, Some("10.0.0.1:1")), T0);
    r.observe(&props(Some("PassthroughCluster"), Some("10.0.0.1:1")), T0);
    r.observe(&props(Some("outbound|80||a"), None), T0);
    r.on_controller_message(b"\xff\xff\xff");
    r.on_controller_message(&Receiver::ack(99)); // no stream: ignored
    let c = r.counters();
    assert_eq!(
        (
            c.requests_seen,
            c.skipped_no_route,
            c.skipped_not_outbound,
            c.skipped_bad_source
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(c.controller_messages_bad, 1);
    assert_eq!(r.table_len(), 0);
    assert!(!r.wants_stream(T0));
}

#[test]
fn with_routing_a_worker_opens_its_stream_on_its_first_request_and_hands_pushes_on() {
    let mut r = mk_reporter(Config {
        routing: true,
        ..mk_config()
    });
    assert!(
        !r.wants_stream(T0),
        "a VM that serves no traffic opens no stream"
    );
    r.traffic_seen();
    assert!(r.wants_stream(T0), "the stream brings the namespace table");
    let mut rx = Receiver::default();
    assert_eq!(pump(&mut r, &mut rx, T0, true), 0);
    assert_eq!(rx.hellos.len(), 1);
    let table = lazyxds_proto::v1::NamespaceTable {
        namespaces: vec!["shop".into()],
        policies: vec![1],
        ipv4: vec![0x0a00_0001 << 32],
        ..Default::default()
    };
    let push = ControllerMessage {
        kind: Some(controller_message::Kind::Namespaces(table.clone())),
    };
    assert_eq!(
        r.on_controller_message(&push.encode_to_vec()),
        Some(controller_message::Kind::Namespaces(table))
    );
    assert_eq!(r.on_controller_message(&Receiver::ack(1)), None);
    // Closed with nothing to send: it comes back after the backoff anyway.
    r.stream_closed(T0, None);
    assert!(!r.wants_stream(T0));
    assert!(r.wants_stream(T0 + 2_000));
}

#[test]
fn reporting_off_never_opens_a_stream() {
    let mut r = mk_reporter(Config {
        report: false,
        ..mk_config()
    });
    request(&mut r, "10.0.0.1", "a", &cluster(1), T0);
    assert!(!r.wants_stream(T0 + 1_000));
}

/// Bytes per edge on the wire (protobuf + 5-byte gRPC frame): 1,000 IPv4 edges over 10
/// clusters, first report (names included) and a resync (names again, new stream).
#[test]
fn bytes_per_edge_on_the_wire() {
    let mut r = mk_reporter(mk_config());
    let mut rx = Receiver::default();
    for ip in 0..100 {
        for c in 0..10 {
            let host = format!("svc-{c}.default.svc.cluster.local");
            request(
                &mut r,
                &format!("10.1.{}.{}", ip / 250, ip % 250),
                &host,
                &cluster(c),
                T0,
            );
        }
    }
    pump(&mut r, &mut rx, T0, true);
    assert_eq!(rx.edges.len(), 1_000);
    let per_edge = rx.bytes as f64 / 1_000.0;
    // Edge: ip 6 + host 2 + cluster 2 + requests 2 + framing 2 = 14 bytes; 20 names of
    // ~45 bytes spread over 1,000 edges add ~1.
    assert!(per_edge <= 16.0, "{per_edge} bytes per edge");
    println!("bytes per edge (first report, 1000 edges, names included): {per_edge:.2}");
}

#[test]
fn the_tick_is_needed_only_while_there_is_something_to_send_or_wait_for() {
    let mut r = mk_reporter(mk_config());
    let mut rx = Receiver::default();
    assert!(!r.needs_tick(), "an idle worker");
    request(&mut r, "10.0.0.1", "a", &cluster(1), T0);
    assert!(r.needs_tick(), "a new edge to send");
    // Sent, not yet acked: the ack timeout is checked on ticks.
    assert_eq!(pump(&mut r, &mut rx, T0, false), 1);
    assert!(r.needs_tick(), "a batch in flight");
    r.on_controller_message(&Receiver::ack(1));
    assert!(!r.needs_tick(), "everything acked");
    // Dedup hits of a known edge need no tick until its refresh is due.
    request(&mut r, "10.0.0.1", "a", &cluster(1), T0 + 1);
    assert!(!r.needs_tick(), "a known edge");
    // A closed stream: the table is re-sent on the next one.
    r.stream_closed(T0 + 2, None);
    assert!(r.needs_tick(), "a resync to send");

    // With first-call routing, a worker that served traffic wants its stream (the
    // namespace table) back: ticks retry it.
    let mut routing = mk_reporter(Config {
        routing: true,
        ..mk_config()
    });
    assert!(!routing.needs_tick());
    routing.traffic_seen();
    assert!(routing.needs_tick(), "a stream to open");
    let _hello = routing.stream_opened();
    assert!(!routing.needs_tick(), "stream open, nothing to send");

    let silent = mk_reporter(Config {
        report: false,
        ..mk_config()
    });
    assert!(!silent.needs_tick());
}
