//! P4: edges per second through real gRPC on loopback into the controller's edge sink.
//!
//! The server is the controller's own `lazyxds::edges::stream::EdgeSinkService` (decode, validate,
//! record, ack), generic over the sink, so the index can replace the memory sink here
//! the day it lands. Clients are several bidi streams of pre-encoded `EdgeBatch`es of
//! 1,000 edges (only `seq` is spliced in per send), so the client side costs a memcpy and
//! the two cores go to the server; each stream keeps a window of unacked batches like a
//! gateway worker does.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes};
use lazyxds::counters::Counters;
use lazyxds::edges::stream::{EdgeSinkService, GrpcConfig, Shutdown};
use lazyxds::sink::EdgeSink;
use lazyxds_proto::v1::{
    controller_message, gateway_message, ControllerMessage, Edge, EdgeBatch, GatewayMessage, Hello,
    Name,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

/// The gRPC method, as `lazyxds_proto::v1::edge_sink_client::EdgeSinkClient` calls it.
pub const PATH: &str = "/lazyxds.v1.EdgeSink/Stream";

#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    pub streams: usize,
    pub edges_per_batch: usize,
    /// Distinct batches per stream (edges per stream = this × edges_per_batch).
    pub batches_per_stream: usize,
    /// Unacked batches per stream.
    pub window: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct IngestResult {
    pub edges_per_s: f64,
    pub edges: u64,
    pub batches: u64,
    pub elapsed: Duration,
    /// Bytes of one pre-encoded 1,000-edge batch (no names), protobuf only.
    pub batch_bytes: usize,
    /// What the server counted (acked edges, all phases).
    pub server_edges_received: u64,
    pub server_batches_rejected: u64,
}

/// Reads a stream's replies until it ends: each cumulative ack reports the batches it newly
/// acks to `acked` and opens the send window by as many.
pub(crate) async fn read_acks(
    mut inbound: tonic::Streaming<ControllerMessage>,
    window: Arc<Semaphore>,
    acked: impl Fn(u64),
) -> Result<(), Status> {
    let mut last = 0u64;
    while let Some(msg) = inbound.message().await? {
        if let Some(controller_message::Kind::Ack(ack)) = msg.kind {
            let n = ack.seq.saturating_sub(last);
            last = last.max(ack.seq);
            acked(n);
            window.add_permits(n as usize);
        }
    }
    Ok(())
}

/// Passes pre-encoded `GatewayMessage` bytes through; decodes the controller's replies.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ControllerMessage;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ControllerMessage;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ControllerMessage>, Status> {
        ControllerMessage::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The bytes of `GatewayMessage{batch: EdgeBatch{seq, ..rest}}`, given `rest` = an
/// encoded `EdgeBatch` without `seq` (field 1 is written first, as prost would).
pub fn splice_seq(rest: &[u8], seq: u64) -> Bytes {
    let mut seq_field = Vec::with_capacity(11);
    seq_field.push(0x08); // field 1, varint
    prost::encoding::encode_varint(seq, &mut seq_field);
    let inner = seq_field.len() + rest.len();
    let mut out = Vec::with_capacity(inner + 11);
    out.push(0x12); // GatewayMessage field 2 (batch), length-delimited
    prost::encoding::encode_varint(inner as u64, &mut out);
    out.extend_from_slice(&seq_field);
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// Names of stream dictionaries: ids 1..=100 hosts, 101..=200 clusters.
const NAMES: u32 = 100;

fn names() -> Vec<Name> {
    (1..=NAMES)
        .map(|i| Name {
            id: i,
            value: format!("svc-{i}.ns-{}.svc.cluster.local", i / 10),
        })
        .chain((1..=NAMES).map(|i| Name {
            id: NAMES + i,
            value: format!("outbound|9080||svc-{i}.ns-{}.svc.cluster.local", i / 10),
        }))
        .collect()
}

/// Batch `b` of stream `s`, without seq; the first one also defines the names.
fn batch_rest(s: usize, b: usize, edges: usize) -> Vec<u8> {
    let edges = (0..edges)
        .map(|j| {
            let x = b * edges + j;
            Edge {
                // Pod IPs as data (never contacted): 10.<stream>.<x/256>.<x%256>.
                source_ip: vec![10, s as u8, (x >> 8) as u8, x as u8],
                host: 1 + (j as u32 % NAMES),
                cluster: NAMES + 1 + (j as u32 % NAMES),
                requests: 1 + (x as u64 % 7),
                idle_s: 0,
                principal: 0,
            }
        })
        .collect();
    EdgeBatch {
        seq: 0,
        sent_at_unix_s: 1_800_000_000,
        names: if b == 0 { names() } else { Vec::new() },
        edges,
    }
    .encode_to_vec()
}

struct StreamStats {
    acked_batches: AtomicU64,
}

async fn run_stream(
    port: u16,
    s: usize,
    opts: IngestOptions,
    stats: Arc<StreamStats>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    let batches: Vec<Vec<u8>> = (0..opts.batches_per_stream)
        .map(|b| batch_rest(s, b, opts.edges_per_batch))
        .collect();
    let hello = GatewayMessage {
        kind: Some(gateway_message::Kind::Hello(Hello {
            gateway_id: "bench-ingest".into(),
            worker: format!("w{s}"),
            resync: false,
        })),
    }
    .encode_to_vec();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the edge sink")?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("edge sink not ready")?;
    let (tx, rx) = mpsc::channel::<Bytes>(opts.window + 1);
    tx.send(Bytes::from(hello)).await?;
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(PATH),
            RawCodec,
        )
        .await
        .context("opening the edge stream")?;
    let window = Arc::new(Semaphore::new(opts.window));
    let reader_stats = stats.clone();
    let reader = tokio::spawn(read_acks(response.into_inner(), window.clone(), move |n| {
        reader_stats.acked_batches.fetch_add(n, Relaxed);
    }));
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        let permit = window.acquire().await?;
        permit.forget();
        seq += 1;
        let rest = &batches[(seq as usize - 1) % batches.len()];
        if tx.send(splice_seq(rest, seq)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let ended = tokio::time::timeout(Duration::from_secs(10), reader).await;
    match ended {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(status))) => bail!("stream {s} ended: {status}"),
        Ok(Err(e)) => bail!("stream {s} reader: {e}"),
        Err(_) => bail!("stream {s}: no end of stream 10 s after the last batch"),
    }
}

/// Feeds `sink` through a real `EdgeSinkService` on 127.0.0.1 for `opts.measure`
/// (after `opts.warmup`) and reports acked edges per second.
pub async fn run<S: EdgeSink>(
    sink: Arc<S>,
    counters: Arc<Counters>,
    opts: IngestOptions,
) -> Result<IngestResult> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let service = EdgeSinkService::new(
        sink,
        counters.clone(),
        GrpcConfig::default(),
        Shutdown::new(stop_rx.clone()),
    );
    let mut server_stop = Shutdown::new(stop_rx);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move { server_stop.wait().await },
            ),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut stats = Vec::new();
    let mut clients = Vec::new();
    for s in 0..opts.streams {
        let st = Arc::new(StreamStats {
            acked_batches: AtomicU64::new(0),
        });
        stats.push(st.clone());
        clients.push(tokio::spawn(run_stream(port, s, opts, st, stop.clone())));
    }
    let acked = |stats: &[Arc<StreamStats>]| -> u64 {
        stats.iter().map(|s| s.acked_batches.load(Relaxed)).sum()
    };
    tokio::time::sleep(opts.warmup).await;
    let (b0, t0) = (acked(&stats), Instant::now());
    tokio::time::sleep(opts.measure).await;
    let (b1, elapsed) = (acked(&stats), t0.elapsed());
    stop.store(true, Relaxed);
    for c in clients {
        c.await.context("ingest client panicked")??;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let batches = b1 - b0;
    let edges = batches * opts.edges_per_batch as u64;
    let snap = counters.snapshot();
    Ok(IngestResult {
        edges_per_s: edges as f64 / elapsed.as_secs_f64(),
        edges,
        batches,
        elapsed,
        batch_bytes: batch_rest(0, 1, opts.edges_per_batch).len(),
        server_edges_received: snap.edges_received,
        server_batches_rejected: snap.batches_rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spliced_batch_decodes_with_its_seq() {
        for seq in [1u64, 127, 128, 1 << 40] {
            let rest = batch_rest(3, 0, 50);
            let bytes = splice_seq(&rest, seq);
            let msg = GatewayMessage::decode(bytes).unwrap();
            let Some(gateway_message::Kind::Batch(b)) = msg.kind else {
                panic!("not a batch");
            };
            assert_eq!(b.seq, seq);
            assert_eq!(b.edges.len(), 50);
            assert_eq!(b.names.len(), 2 * NAMES as usize);
            assert_eq!(b.edges[7].source_ip, vec![10, 3, 0, 7]);
        }
    }

    #[test]
    fn a_batch_of_1000_edges_is_about_14_bytes_per_edge() {
        let per_edge = batch_rest(0, 1, 1000).len() as f64 / 1000.0;
        assert!((10.0..=16.0).contains(&per_edge), "{per_edge}");
    }
}
