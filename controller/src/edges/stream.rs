//! The `lazyxds.v1.EdgeSink` gRPC service: one bidi stream per gateway worker.
//!
//! Each stream gets its own [`Decoder`]; applied batches go to an [`EdgeSink`] and are
//! acked. Right after `Hello`, and whenever it changes, the sink's namespace table is
//! pushed down the same stream (first-call routing). A protocol violation ends the stream
//! with a `Status` whose message says what was wrong. Knows nothing of Kubernetes or HTTP.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use lazyxds_proto::v1::edge_sink_server::{EdgeSink as EdgeSinkRpc, EdgeSinkServer};
use lazyxds_proto::v1::{
    controller_message, gateway_message, Ack, ControllerMessage, EdgeBatch, GatewayMessage, Hello,
    NamespaceTable,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::counters::Counters;
use crate::edges::{Decoder, Limits, MAX_NAME_BYTES};
use crate::sink::{EdgeSink, GatewayInfo};

pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Acks queued per stream before we stop reading it: a gateway that does not read its
/// acks gets backpressure, not an unbounded queue.
pub const ACK_CHANNEL_CAPACITY: usize = 64;
/// How long the final status of a failed stream may wait for queue room.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcConfig {
    pub limits: Limits,
    /// Largest gateway message accepted (tonic's `max_decoding_message_size`).
    pub max_message_bytes: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            limits: Limits::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Fires once, for all streams: they end with `UNAVAILABLE` so gateways reconnect (to
/// another replica, or to us after a restart). Open bidi streams never end on their own,
/// so without this a graceful server shutdown would wait forever.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Streams end when `true` is sent on the channel.
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Shutdown(rx)
    }

    /// Never fires.
    pub fn never() -> Self {
        Shutdown(watch::channel(false).1)
    }

    pub async fn wait(&mut self) {
        // A dropped sender means nobody can ask for shutdown any more.
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The tonic service, generic over where edges go.
#[derive(Debug)]
pub struct EdgeSinkService<S: ?Sized> {
    sink: Arc<S>,
    counters: Arc<Counters>,
    config: GrpcConfig,
    shutdown: Shutdown,
}

impl<S: EdgeSink + ?Sized> EdgeSinkService<S> {
    pub fn new(
        sink: Arc<S>,
        counters: Arc<Counters>,
        config: GrpcConfig,
        shutdown: Shutdown,
    ) -> Self {
        EdgeSinkService {
            sink,
            counters,
            config,
            shutdown,
        }
    }

    /// The service wrapped for `tonic::transport::Server::add_service`, with the message
    /// size limit set.
    pub fn into_server(self) -> EdgeSinkServer<Self> {
        let max = self.config.max_message_bytes;
        EdgeSinkServer::new(self).max_decoding_message_size(max)
    }
}

#[tonic::async_trait]
impl<S: EdgeSink + ?Sized> EdgeSinkRpc for EdgeSinkService<S> {
    type StreamStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_CHANNEL_CAPACITY);
        let task = StreamTask {
            sink: self.sink.clone(),
            counters: self.counters.clone(),
            shutdown: self.shutdown.clone(),
            decoder: Decoder::new(self.config.limits),
            peer,
            gateway: None,
            tx,
            table: self.sink.namespace_table(),
            batches: 0,
            edges: 0,
        };
        tokio::spawn(task.run(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Decrements the open-streams gauge however the stream task ends.
struct OpenStream(Arc<Counters>);

impl OpenStream {
    fn new(counters: Arc<Counters>) -> Self {
        counters.streams_opened.fetch_add(1, Relaxed);
        counters.streams_open.fetch_add(1, Relaxed);
        OpenStream(counters)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Relaxed);
    }
}

/// Why a stream stopped without a status to send: the gateway closed it or went away.
struct Closed;

struct StreamTask<S: ?Sized> {
    sink: Arc<S>,
    counters: Arc<Counters>,
    shutdown: Shutdown,
    decoder: Decoder,
    peer: Option<SocketAddr>,
    gateway: Option<GatewayInfo>,
    tx: mpsc::Sender<Result<ControllerMessage, Status>>,
    /// The namespace table to push (`None`: the sink has none, or it is gone).
    table: Option<watch::Receiver<Option<Arc<NamespaceTable>>>>,
    batches: u64,
    edges: u64,
}

/// Resolves when the table changed; never when there is none.
async fn table_changed(
    table: &mut Option<watch::Receiver<Option<Arc<NamespaceTable>>>>,
) -> Result<(), watch::error::RecvError> {
    match table {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

impl<S: EdgeSink + ?Sized> StreamTask<S> {
    async fn run(mut self, mut inbound: Streaming<GatewayMessage>) {
        let _open = OpenStream::new(self.counters.clone());
        let end = self.serve(&mut inbound).await;
        let (gateway, worker) = self.who();
        match end {
            Ok(Closed) => tracing::info!(
                gateway, worker, peer = ?self.peer, batches = self.batches, edges = self.edges,
                "gateway stream closed"
            ),
            Err(status) => {
                tracing::info!(
                    gateway, worker, peer = ?self.peer, batches = self.batches, edges = self.edges,
                    code = ?status.code(), "ending gateway stream: {}", status.message()
                );
                // Best effort: the gateway may have stopped reading.
                let _ = tokio::time::timeout(FINAL_STATUS_WAIT, self.tx.send(Err(status))).await;
            }
        }
    }

    fn who(&self) -> (&str, &str) {
        match &self.gateway {
            Some(g) => (&g.gateway_id, &g.worker),
            None => ("", ""),
        }
    }

    async fn serve(&mut self, inbound: &mut Streaming<GatewayMessage>) -> Result<Closed, Status> {
        let Some(first) = self.next(inbound).await? else {
            return Ok(Closed);
        };
        let hello = match first {
            gateway_message::Kind::Hello(hello) => hello,
            gateway_message::Kind::Batch(_) => {
                tracing::warn!(peer = ?self.peer, "gateway stream did not start with Hello");
                return Err(Status::failed_precondition("first message must be Hello"));
            }
        };
        self.hello(hello)?;
        self.push_table().await?;
        loop {
            let Some(message) = self.next(inbound).await? else {
                return Ok(Closed);
            };
            match message {
                gateway_message::Kind::Batch(batch) => self.batch(&batch).await?,
                gateway_message::Kind::Hello(_) => {
                    let (gateway, worker) = self.who();
                    tracing::warn!(gateway, worker, peer = ?self.peer, "second Hello on a stream");
                    return Err(Status::failed_precondition(
                        "Hello may only be the first message of a stream",
                    ));
                }
            }
        }
    }

    /// The next message, `None` when the gateway is gone; `Err` ends the stream.
    async fn next(
        &mut self,
        inbound: &mut Streaming<GatewayMessage>,
    ) -> Result<Option<gateway_message::Kind>, Status> {
        let received = loop {
            tokio::select! {
                biased;
                () = self.shutdown.wait() => {
                    return Err(Status::unavailable("lazyxds is shutting down"));
                }
                changed = table_changed(&mut self.table), if self.gateway.is_some() => {
                    match changed {
                        Ok(()) => self.push_table().await?,
                        // The sink is gone (shutting down): nothing more to push.
                        Err(_) => self.table = None,
                    }
                }
                received = inbound.message() => break received,
            }
        };
        let (gateway, worker) = self.who();
        match received {
            Ok(Some(GatewayMessage { kind: Some(kind) })) => Ok(Some(kind)),
            Ok(Some(GatewayMessage { kind: None })) => {
                self.counters.messages_undecodable.fetch_add(1, Relaxed);
                tracing::warn!(gateway, worker, peer = ?self.peer, "gateway message has no kind");
                Err(Status::invalid_argument(
                    "message has neither hello nor batch",
                ))
            }
            Ok(None) => Ok(None),
            Err(status) if is_undecodable(&status) => {
                self.counters.messages_undecodable.fetch_add(1, Relaxed);
                tracing::warn!(
                    gateway, worker, peer = ?self.peer,
                    "undecodable gateway message: {}", status.message()
                );
                Err(match status.code() {
                    Code::Internal => Status::invalid_argument(format!(
                        "undecodable message: {}",
                        status.message()
                    )),
                    _ => status,
                })
            }
            Err(status) => {
                // The connection broke; there is nobody to send a status to.
                tracing::debug!(gateway, worker, peer = ?self.peer, %status, "gateway stream broke");
                Ok(None)
            }
        }
    }

    fn hello(&mut self, hello: Hello) -> Result<(), Status> {
        for (field, value) in [("gateway_id", &hello.gateway_id), ("worker", &hello.worker)] {
            if value.len() > MAX_NAME_BYTES {
                tracing::warn!(peer = ?self.peer, field, len = value.len(), "Hello field too long");
                return Err(Status::invalid_argument(format!(
                    "hello: {field} has {} bytes, more than the limit of {MAX_NAME_BYTES}",
                    value.len()
                )));
            }
        }
        if hello.resync {
            self.counters.resync_hellos.fetch_add(1, Relaxed);
        }
        let gateway = GatewayInfo {
            gateway_id: hello.gateway_id,
            worker: hello.worker,
            resync: hello.resync,
            peer: self.peer,
        };
        tracing::info!(
            gateway = %gateway.gateway_id, worker = %gateway.worker, resync = gateway.resync,
            peer = ?self.peer, "gateway stream opened"
        );
        self.sink.hello(&gateway);
        self.gateway = Some(gateway);
        Ok(())
    }

    async fn batch(&mut self, batch: &EdgeBatch) -> Result<(), Status> {
        let Some(gateway) = &self.gateway else {
            return Err(Status::internal("batch before Hello"));
        };
        match self.decoder.apply_batch(batch) {
            Ok(edges) => {
                let count = edges.len() as u64;
                self.sink.record(gateway, edges);
                self.counters.batches_acked.fetch_add(1, Relaxed);
                self.counters.edges_received.fetch_add(count, Relaxed);
                self.batches += 1;
                self.edges += count;
            }
            Err(error) => {
                self.counters.rejected(&error);
                tracing::warn!(
                    gateway = %gateway.gateway_id, worker = %gateway.worker, peer = ?self.peer,
                    reason = error.reason(), "rejected edge batch: {error}"
                );
                return Err(Status::invalid_argument(error.to_string()));
            }
        }
        let ack = ControllerMessage {
            kind: Some(controller_message::Kind::Ack(Ack { seq: batch.seq })),
        };
        self.send(ack).await
    }

    /// Pushes the current namespace table, if there is one (and marks it seen).
    async fn push_table(&mut self) -> Result<(), Status> {
        let Some(rx) = &mut self.table else {
            return Ok(());
        };
        let Some(table) = rx.borrow_and_update().clone() else {
            return Ok(());
        };
        let push = ControllerMessage {
            kind: Some(controller_message::Kind::Namespaces((*table).clone())),
        };
        self.send(push).await?;
        self.counters.namespace_tables_sent.fetch_add(1, Relaxed);
        Ok(())
    }

    async fn send(&mut self, message: ControllerMessage) -> Result<(), Status> {
        // Waiting here is the backpressure: no reading while the gateway is not reading.
        tokio::select! {
            biased;
            () = self.shutdown.wait() => Err(Status::unavailable("lazyxds is shutting down")),
            sent = self.tx.send(Ok(message)) => match sent {
                Ok(()) => Ok(()),
                // The response side is gone: the gateway closed the stream.
                Err(_) => Err(Status::cancelled("gateway stopped reading")),
            },
        }
    }
}

/// Errors tonic's decoder makes itself (bad protobuf, bad framing, too large) carry no
/// source; transport failures carry the h2/hyper error.
fn is_undecodable(status: &Status) -> bool {
    status.source().is_none()
        && matches!(
            status.code(),
            Code::Internal | Code::OutOfRange | Code::ResourceExhausted
        )
}
