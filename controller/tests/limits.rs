//! The gRPC server's limits, in process on loopback (issue 15 items 6, 7, 9): the
//! supervisor around stream tasks, the caps on streams and connections, the handshake
//! and idle timeouts, and what a standby replica says. Each test is bounded in time (a
//! few seconds) and count; the real binary under floods is `tests/tests/hostile.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazyxds::counters::Counters;
use lazyxds::edges::listen::ConnLimits;
use lazyxds::edges::stream::{EdgeSinkService, GrpcConfig, Shutdown};
use lazyxds::sink::{EdgeSink, GatewayInfo, MemoryEdgeSink};
use lazyxds_index::ObservedEdge;
use lazyxds_proto::v1::edge_sink_client::EdgeSinkClient;
use lazyxds_proto::v1::{
    controller_message, gateway_message, ControllerMessage, Edge, EdgeBatch, GatewayMessage, Hello,
    Name,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER: &str = "outbound|80||api.shop.svc.cluster.local";

struct Server {
    addr: SocketAddr,
    counters: Arc<Counters>,
    _stop: watch::Sender<bool>,
}

/// The service with its listener (`EdgeSinkService::serve`, as `lazyxds run` serves it)
/// on 127.0.0.1; streams also end while `leader` says false.
async fn serve<S: EdgeSink>(
    sink: Arc<S>,
    conn: ConnLimits,
    leader: Option<watch::Receiver<bool>>,
) -> Server {
    let counters = Arc::new(Counters::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let mut streams_stop = Shutdown::new(stop_rx.clone());
    if let Some(leader) = leader {
        streams_stop = streams_stop.or_not_leader(leader);
    }
    let config = GrpcConfig {
        conn,
        ..GrpcConfig::default()
    };
    let service = EdgeSinkService::new(sink, counters.clone(), config, streams_stop);
    let mut server_stop = Shutdown::new(stop_rx);
    tokio::spawn(service.serve(listener, async move { server_stop.wait().await }));
    Server {
        addr,
        counters,
        _stop: stop,
    }
}

fn memory_sink() -> Arc<MemoryEdgeSink> {
    Arc::new(MemoryEdgeSink::new(100, Arc::new(Counters::default())))
}

struct Stream {
    tx: mpsc::Sender<GatewayMessage>,
    rx: Streaming<ControllerMessage>,
}

/// Opens a stream on `channel` (one HTTP/2 connection per channel).
async fn open(channel: &Channel) -> Result<Stream, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let rx = EdgeSinkClient::new(channel.clone())
        .stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Stream { tx, rx })
}

impl Stream {
    /// Hello, then one batch with one edge of `requests`; `Ok` once it is acked.
    async fn hello_and_batch(&mut self, requests: u64) -> Result<(), (Code, String)> {
        let hello = gateway_message::Kind::Hello(Hello {
            gateway_id: "gw".into(),
            worker: "w".into(),
            resync: false,
        });
        let batch = gateway_message::Kind::Batch(EdgeBatch {
            seq: 1,
            sent_at_unix_s: 1_764_150_000,
            names: vec![Name {
                id: 1,
                value: CLUSTER.into(),
            }],
            edges: vec![Edge {
                source_ip: vec![10, 0, 0, 1],
                cluster: 1,
                requests,
                ..Edge::default()
            }],
        });
        for kind in [hello, batch] {
            let _ = self.tx.send(GatewayMessage { kind: Some(kind) }).await;
        }
        match self.next().await {
            Ok(Some(ControllerMessage {
                kind: Some(controller_message::Kind::Ack(ack)),
            })) if ack.seq == 1 => Ok(()),
            Ok(other) => Err((Code::Unknown, format!("want the ack, got {other:?}"))),
            Err(status) => Err(status),
        }
    }

    async fn next(&mut self) -> Result<Option<ControllerMessage>, (Code, String)> {
        tokio::time::timeout(TIMEOUT, self.rx.message())
            .await
            .expect("no reply in time")
            .map_err(|s| (s.code(), s.message().to_string()))
    }
}

/// Polls `check` until true (fails after [`TIMEOUT`] with `what`).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A sink that panics on every batch: the test-only seam standing in for a bug.
struct PanickingSink;

impl EdgeSink for PanickingSink {
    fn hello(&self, _gateway: &GatewayInfo) {}
    fn record(&self, _gateway: &GatewayInfo, _edges: Vec<ObservedEdge>) {
        panic!("a bug in the sink");
    }
}

/// Issue 15 item 6: a stream task that panicked ended its stream with status OK and no
/// ack, as if the batch had been taken. Now the gateway gets INTERNAL, the panic is
/// counted, and the task's stream slot is given back.
#[tokio::test]
async fn a_stream_task_that_panics_ends_its_stream_with_internal() {
    let conn = ConnLimits {
        max_streams: 1,
        ..ConnLimits::default()
    };
    let server = serve(Arc::new(PanickingSink), conn, None).await;
    let channel = support::channel(server.addr).await;
    for _ in 0..2 {
        // The second stream is accepted: the first one's slot (max_streams 1) is free.
        let mut stream = open(&channel).await.unwrap();
        let (code, message) = stream.hello_and_batch(1).await.unwrap_err();
        assert_eq!(code, Code::Internal, "{message}");
        assert!(message.contains("logged as a bug"), "{message}");
    }
    assert_eq!(server.counters.stream_panics.load(Relaxed), 2);
    until("the streams to close", || {
        server.counters.streams_open.load(Relaxed) == 0
    })
    .await;
}

/// Issue 15 item 7: no cap on streams. Beyond `max_streams` a stream is refused with
/// RESOURCE_EXHAUSTED (counted); closing one makes room again.
#[tokio::test]
async fn streams_beyond_the_cap_are_refused() {
    let conn = ConnLimits {
        max_streams: 3,
        ..ConnLimits::default()
    };
    let server = serve(memory_sink(), conn, None).await;
    let channel = support::channel(server.addr).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = open(&channel).await.unwrap();
        stream.hello_and_batch(1).await.unwrap();
        held.push(stream);
    }
    let Err(refused) = open(&channel).await else {
        panic!("a fourth stream was opened");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("maximum of 3 gateway streams"),
        "{refused:?}"
    );
    assert_eq!(server.counters.streams_refused_at_cap.load(Relaxed), 1);
    drop(held.pop());
    until("a stream to close", || {
        server.counters.streams_open.load(Relaxed) == 2
    })
    .await;
    open(&channel)
        .await
        .unwrap()
        .hello_and_batch(1)
        .await
        .unwrap();
}

/// A stream that never says Hello ends DEADLINE_EXCEEDED after the handshake timeout.
#[tokio::test]
async fn a_stream_without_hello_ends_after_the_handshake_timeout() {
    let conn = ConnLimits {
        handshake_timeout: Duration::from_millis(500),
        ..ConnLimits::default()
    };
    let server = serve(memory_sink(), conn, None).await;
    let mut stream = open(&support::channel(server.addr).await).await.unwrap();
    let started = Instant::now();
    let (code, message) = stream.next().await.unwrap_err();
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert!(message.contains("no Hello within 500ms"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(server.counters.hellos_timed_out.load(Relaxed), 1);
}

/// Issue 15 item 7: idle TCP connections were never closed. A connection that sends
/// nothing is closed after the handshake timeout; one whose streams have all ended,
/// after the idle timeout. Both are counted.
#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let conn = ConnLimits {
        handshake_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(700),
        ..ConnLimits::default()
    };
    let server = serve(memory_sink(), conn, None).await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    // The server's HTTP/2 preface may arrive first; then the close (EOF or reset).
    loop {
        match tokio::time::timeout(TIMEOUT, silent.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a silent connection is still open after {TIMEOUT:?}"),
        }
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(450) && closed_after < Duration::from_secs(3),
        "{closed_after:?}"
    );
    assert_eq!(
        server
            .counters
            .connections_closed_handshake_timeout
            .load(Relaxed),
        1
    );

    let channel = support::channel(server.addr).await;
    let mut stream = open(&channel).await.unwrap();
    stream.hello_and_batch(1).await.unwrap();
    // Past the handshake timeout with a stream open: kept.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(server.counters.connections_open.load(Relaxed), 1);
    drop(stream);
    until("the idle connection to close", || {
        server.counters.connections_closed_idle.load(Relaxed) == 1
    })
    .await;
    until("the gauge to drop", || {
        server.counters.connections_open.load(Relaxed) == 0
    })
    .await;
}

/// Issue 15 item 7: no cap on connections. At `max_connections` a new one is closed as
/// it arrives (counted), the open ones are held, and a closed one makes room.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let conn = ConnLimits {
        max_connections: 4,
        ..ConnLimits::default()
    };
    let server = serve(memory_sink(), conn, None).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    until("4 connections", || {
        server.counters.connections_open.load(Relaxed) == 4
    })
    .await;
    let mut fifth = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf))
        .await
        .expect("the fifth connection is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(server.counters.connections_refused_at_cap.load(Relaxed), 1);
    assert_eq!(server.counters.connections_open.load(Relaxed), 4);
    drop(held.pop());
    until("a slot to free", || {
        server.counters.connections_open.load(Relaxed) == 3
    })
    .await;
    // And a real client gets in.
    let mut stream = open(&support::channel(server.addr).await).await.unwrap();
    stream.hello_and_batch(1).await.unwrap();
}

/// Streams per connection are advertised (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): a
/// client waits for room on that connection (Envoy opens another); reaching the cap is
/// counted.
#[tokio::test]
async fn streams_per_connection_are_capped() {
    let conn = ConnLimits {
        max_streams_per_connection: 2,
        ..ConnLimits::default()
    };
    let server = serve(memory_sink(), conn, None).await;
    let channel = support::channel(server.addr).await;
    let mut first = open(&channel).await.unwrap();
    first.hello_and_batch(1).await.unwrap();
    let mut second = open(&channel).await.unwrap();
    second.hello_and_batch(1).await.unwrap();
    assert_eq!(server.counters.connections_at_stream_cap.load(Relaxed), 1);
    let third = tokio::spawn({
        let channel = channel.clone();
        async move {
            let mut stream = open(&channel).await.unwrap();
            stream.hello_and_batch(1).await.unwrap();
            stream
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third stream on a full connection");
    assert_eq!(server.counters.streams_opened.load(Relaxed), 2);
    drop(first);
    let _third = tokio::time::timeout(TIMEOUT, third).await.unwrap().unwrap();
    assert_eq!(server.counters.connections_open.load(Relaxed), 1);
}

/// Issue 15 item 9: a standby refused streams with "lazyxds is shutting down". It says
/// it is not the leader (UNAVAILABLE, so gateways reconnect), both to a new stream and
/// to open ones when it loses the lease.
#[tokio::test]
async fn a_standby_says_it_is_not_the_leader() {
    let (leader, leading) = watch::channel(false);
    let server = serve(memory_sink(), ConnLimits::default(), Some(leading)).await;
    let channel = support::channel(server.addr).await;
    let want = |status: (Code, String)| {
        assert_eq!(status.0, Code::Unavailable, "{}", status.1);
        assert!(status.1.starts_with("not the leader"), "{}", status.1);
    };
    let mut stream = open(&channel).await.unwrap();
    want(stream.hello_and_batch(1).await.unwrap_err());

    leader.send_replace(true);
    let mut stream = open(&channel).await.unwrap();
    stream.hello_and_batch(1).await.unwrap();
    leader.send_replace(false);
    want(stream.next().await.unwrap_err());
}
