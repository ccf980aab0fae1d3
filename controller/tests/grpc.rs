//! Round trips through the real tonic service on a loopback port.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use lazyxds::counters::{Counters, CountersSnapshot};
use lazyxds::edges::stream::GrpcConfig;
use lazyxds::edges::{EdgeStats, Limits, StoredEdge};
use lazyxds::sink::MemoryEdgeSink;
use lazyxds_proto::v1::edge_sink_client::EdgeSinkClient;
use lazyxds_proto::v1::{
    controller_message, gateway_message, Ack, ControllerMessage, Edge, EdgeBatch, GatewayMessage,
    Hello, Name,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
const REVIEWS_HOST: &str = "reviews.default.svc.cluster.local";
const TIMEOUT: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    sink: Arc<MemoryEdgeSink>,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
}

async fn mk_server(config: GrpcConfig) -> Server {
    let counters = Arc::new(Counters::default());
    let sink = Arc::new(MemoryEdgeSink::new(1_000, counters.clone()));
    let (addr, stop) = support::serve_in_process(sink.clone(), counters.clone(), config).await;
    Server {
        addr,
        sink,
        counters,
        stop,
    }
}

fn mk_config(max_batch_edges: usize, max_message_bytes: usize) -> GrpcConfig {
    GrpcConfig {
        limits: Limits {
            max_batch_edges,
            ..Limits::default()
        },
        max_message_bytes,
        ..GrpcConfig::default()
    }
}

/// An open stream: messages go in through `tx`, replies come out of `rx`.
struct Stream {
    tx: mpsc::Sender<GatewayMessage>,
    rx: Streaming<ControllerMessage>,
}

async fn mk_stream(addr: SocketAddr) -> Stream {
    let mut client = EdgeSinkClient::new(support::channel(addr).await);
    let (tx, rx) = mpsc::channel(16);
    let rx = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Stream { tx, rx }
}

impl Stream {
    async fn send(&self, message: GatewayMessage) {
        self.tx.send(message).await.unwrap();
    }

    /// The next reply: `Ok(Some(ack seq))`, `Ok(None)` at a clean end, or the status.
    async fn next(&mut self) -> Result<Option<u64>, (Code, String)> {
        let reply = tokio::time::timeout(TIMEOUT, self.rx.message())
            .await
            .expect("no reply in time")
            .map_err(|s| (s.code(), s.message().to_string()))?;
        Ok(reply.map(|m| match m.kind {
            Some(controller_message::Kind::Ack(Ack { seq })) => seq,
            Some(other) => panic!("a memory sink pushes nothing, got {other:?}"),
            None => panic!("reply without kind"),
        }))
    }

    async fn status(&mut self) -> (Code, String) {
        match self.next().await {
            Err(status) => status,
            Ok(other) => panic!("want a status, got {other:?}"),
        }
    }
}

fn mk_hello(resync: bool) -> GatewayMessage {
    GatewayMessage {
        kind: Some(gateway_message::Kind::Hello(Hello {
            gateway_id: "istio-ingressgateway-abc".to_string(),
            worker: "w1".to_string(),
            resync,
        })),
    }
}

fn mk_batch(seq: u64, names: &[(u32, &str)], edges: Vec<Edge>) -> GatewayMessage {
    GatewayMessage {
        kind: Some(gateway_message::Kind::Batch(EdgeBatch {
            seq,
            sent_at_unix_s: 1_764_150_000,
            names: names
                .iter()
                .map(|&(id, value)| Name {
                    id,
                    value: value.to_string(),
                })
                .collect(),
            edges,
        })),
    }
}

fn mk_edge(ip: &[u8], host: u32, cluster: u32, requests: u64) -> Edge {
    Edge {
        source_ip: ip.to_vec(),
        host,
        cluster,
        requests,
        idle_s: 0,
        principal: 0,
    }
}

fn mk_stored(ip: &str, host: Option<&str>, requests: u64) -> StoredEdge {
    StoredEdge {
        source_ip: ip.parse().unwrap(),
        host: host.map(Arc::from),
        cluster: Arc::from(REVIEWS),
        principal: None,
        stats: EdgeStats {
            requests,
            first_seen_unix_s: 1_764_150_000,
            last_seen_unix_s: 1_764_150_000,
        },
    }
}

fn mk_counters(
    streams_opened: u64,
    batches_acked: u64,
    edges_received: u64,
    batches_rejected: u64,
    messages_undecodable: u64,
) -> CountersSnapshot {
    CountersSnapshot {
        streams_opened,
        streams_open: 0,
        resync_hellos: 0,
        batches_acked,
        edges_received,
        batches_rejected,
        messages_undecodable,
        ..CountersSnapshot::default()
    }
}

/// The gauge drops when the server task notices the end; wait for it.
async fn settled(counters: &Counters) -> CountersSnapshot {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while counters.streams_open.load(Relaxed) != 0 {
        assert!(tokio::time::Instant::now() < deadline, "streams still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    counters.snapshot()
}

const IP7: [u8; 4] = [10, 0, 0, 7];
const IP8: [u8; 4] = [10, 0, 0, 8];

#[tokio::test]
async fn acks_valid_batches_and_stores_edges() {
    let server = mk_server(GrpcConfig::default()).await;
    let mut stream = mk_stream(server.addr).await;
    stream.send(mk_hello(true)).await;
    stream
        .send(mk_batch(
            1,
            &[(1, REVIEWS), (2, REVIEWS_HOST)],
            vec![mk_edge(&IP7, 2, 1, 5), mk_edge(&IP8, 0, 1, 1)],
        ))
        .await;
    assert_eq!(stream.next().await, Ok(Some(1)));
    // Ids from batch 1 stay valid; a resent edge carries 0 requests.
    stream
        .send(mk_batch(2, &[], vec![mk_edge(&IP7, 2, 1, 0)]))
        .await;
    stream
        .send(mk_batch(3, &[], vec![mk_edge(&IP7, 2, 1, 2)]))
        .await;
    assert_eq!(stream.next().await, Ok(Some(2)));
    assert_eq!(stream.next().await, Ok(Some(3)));
    assert_eq!(server.counters.streams_open.load(Relaxed), 1);

    // Closing our side ends the stream cleanly.
    drop(stream.tx);
    assert_eq!(
        tokio::time::timeout(TIMEOUT, stream.rx.message())
            .await
            .unwrap()
            .map_err(|s| s.code()),
        Ok(None)
    );
    assert_eq!(
        server.sink.snapshot(),
        vec![
            mk_stored("10.0.0.7", Some(REVIEWS_HOST), 7),
            mk_stored("10.0.0.8", None, 1),
        ]
    );
    assert_eq!(
        settled(&server.counters).await,
        CountersSnapshot {
            resync_hellos: 1,
            ..mk_counters(1, 3, 4, 0, 0)
        }
    );
}

#[tokio::test]
async fn refuses_bad_streams_with_a_clear_status() {
    let server = mk_server(mk_config(3, 1024)).await;
    let big = mk_batch(1, &[(1, &"x".repeat(1_100))], vec![]);
    let too_large = format!(
        "Error, decoded message length too large: found {} bytes, the limit is: 1024 bytes",
        prost::Message::encoded_len(&big)
    );
    // (name, messages sent, acks expected, then the ending status)
    type Case<'a> = (&'a str, Vec<GatewayMessage>, Vec<u64>, Code, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown dictionary id",
            vec![
                mk_hello(false),
                mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&IP7, 0, 1, 1)]),
                mk_batch(2, &[], vec![mk_edge(&IP7, 9, 1, 1)]),
            ],
            vec![1],
            Code::InvalidArgument,
            "batch 2: edge 0: host id 9 is not in the stream's dictionary",
        ),
        (
            "bad source ip",
            vec![
                mk_hello(false),
                mk_batch(
                    1,
                    &[(1, REVIEWS)],
                    vec![mk_edge(&IP7, 0, 1, 1), mk_edge(&[1, 2, 3, 4, 5], 0, 1, 1)],
                ),
            ],
            vec![],
            Code::InvalidArgument,
            "batch 1: edge 1: source_ip has 5 bytes, want 4 (IPv4) or 16 (IPv6)",
        ),
        (
            "hello missing",
            vec![mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&IP7, 0, 1, 1)])],
            vec![],
            Code::FailedPrecondition,
            "first message must be Hello",
        ),
        (
            "second hello",
            vec![mk_hello(false), mk_hello(true)],
            vec![],
            Code::FailedPrecondition,
            "Hello may only be the first message of a stream",
        ),
        (
            "too many edges",
            vec![
                mk_hello(false),
                mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&IP7, 0, 1, 1); 4]),
            ],
            vec![],
            Code::InvalidArgument,
            "batch 1: 4 edges, more than the limit of 3",
        ),
        (
            "seq going back",
            vec![
                mk_hello(false),
                mk_batch(2, &[(1, REVIEWS)], vec![mk_edge(&IP7, 0, 1, 1)]),
                mk_batch(2, &[], vec![]),
            ],
            vec![2],
            Code::InvalidArgument,
            "batch 2: seq must be greater than the previous batch's 2",
        ),
        (
            "message over max_message_bytes",
            vec![mk_hello(false), big],
            vec![],
            Code::OutOfRange,
            &too_large,
        ),
        (
            "empty message",
            vec![mk_hello(false), GatewayMessage { kind: None }],
            vec![],
            Code::InvalidArgument,
            "message has neither hello nor batch",
        ),
    ];
    let mut acked = 0;
    for (name, messages, acks, code, message) in cases {
        let mut stream = mk_stream(server.addr).await;
        for m in messages {
            // The server may already have ended the stream; the status tells.
            let _ = stream.tx.send(m).await;
        }
        for seq in &acks {
            assert_eq!(stream.next().await, Ok(Some(*seq)), "{name}");
        }
        acked += acks.len() as u64;
        assert_eq!(stream.status().await, (code, message.to_string()), "{name}");
    }
    assert_eq!(
        settled(&server.counters).await,
        mk_counters(8, acked, acked, 4, 2)
    );
    assert_eq!(
        server
            .counters
            .rejected_by_reason()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>(),
        vec![
            ("seq_not_increasing", 1),
            ("too_many_edges", 1),
            ("bad_source_ip", 1),
            ("unknown_name", 1),
        ]
    );
    // Nothing of a refused batch was stored.
    assert_eq!(
        server.sink.snapshot(),
        vec![StoredEdge {
            stats: EdgeStats {
                requests: 2,
                ..mk_stored("10.0.0.7", None, 0).stats
            },
            ..mk_stored("10.0.0.7", None, 0)
        }]
    );
}

/// A `GatewayMessage` look-alike whose field 2 has the wrong wire type.
#[derive(Clone, PartialEq, prost::Message)]
struct Bogus {
    #[prost(message, optional, tag = "1")]
    hello: Option<Hello>,
    #[prost(uint64, optional, tag = "2")]
    batch_as_varint: Option<u64>,
}

#[tokio::test]
async fn undecodable_message_ends_the_stream() {
    let server = mk_server(GrpcConfig::default()).await;
    let mut grpc = tonic::client::Grpc::new(support::channel(server.addr).await);
    grpc.ready().await.unwrap();
    let Some(gateway_message::Kind::Hello(hello)) = mk_hello(false).kind else {
        unreachable!()
    };
    let messages = vec![
        Bogus {
            hello: Some(hello),
            batch_as_varint: None,
        },
        Bogus {
            hello: None,
            batch_as_varint: Some(7),
        },
    ];
    let response = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            tonic::codegen::http::uri::PathAndQuery::from_static("/lazyxds.v1.EdgeSink/Stream"),
            tonic_prost::ProstCodec::<Bogus, ControllerMessage>::default(),
        )
        .await
        .unwrap();
    let status = tokio::time::timeout(TIMEOUT, response.into_inner().message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "undecodable message: failed to decode Protobuf message: \
             GatewayMessage.kind: invalid wire type: Varint (expected LengthDelimited)"
        )
    );
    assert_eq!(settled(&server.counters).await, mk_counters(1, 0, 0, 0, 1));
}

#[tokio::test]
async fn shutdown_ends_open_streams_unavailable() {
    let server = mk_server(GrpcConfig::default()).await;
    let mut stream = mk_stream(server.addr).await;
    stream.send(mk_hello(false)).await;
    stream
        .send(mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&IP7, 0, 1, 1)]))
        .await;
    assert_eq!(stream.next().await, Ok(Some(1)));
    server.stop.send(true).unwrap();
    assert_eq!(
        stream.status().await,
        (Code::Unavailable, "lazyxds is shutting down".to_string())
    );
    assert_eq!(settled(&server.counters).await, mk_counters(1, 1, 1, 0, 0));
}
