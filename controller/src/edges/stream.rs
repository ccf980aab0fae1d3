//! The `lazyxds.v1.EdgeSink` gRPC service: one bidi stream per gateway worker.
//!
//! Each stream gets its own [`Decoder`]; applied batches go to an [`EdgeSink`] and are
//! acked. Right after `Hello`, and whenever it changes, the sink's namespace table is
//! pushed down the same stream (first-call routing). A protocol violation ends the stream
//! with a `Status` whose message says what was wrong. Knows nothing of Kubernetes or HTTP.
//!
//! Bounded: at most `max_streams` at once (more are refused with `RESOURCE_EXHAUSTED`),
//! and a stream must say Hello within the handshake timeout. Each stream task runs under
//! a supervisor: should it ever panic (a bug), the gateway gets `INTERNAL` and the panic
//! is logged and counted, instead of a silent end that looks like success.

use std::error::Error as _;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use lazyxds_proto::v1::edge_sink_server::{EdgeSink as EdgeSinkRpc, EdgeSinkServer};
use lazyxds_proto::v1::{
    controller_message, gateway_message, Ack, ControllerMessage, EdgeBatch, GatewayMessage, Hello,
    NamespaceTable,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::counters::Counters;
use crate::edges::auth::EdgeAuth;
use crate::edges::decode::oversized_hello_field;
use crate::edges::listen::{self, ConnInfo, ConnLimits, ConnStream, LimitLogs};
use crate::edges::{Decoder, Limits, MAX_NAME_BYTES};
use crate::sink::{EdgeSink, GatewayInfo};

/// The floor of `--max-message-bytes`: the filter's largest batch fits.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = lazyxds_proto::limits::MIN_CONTROLLER_MESSAGE_BYTES;
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
    /// Connections and streams (the stream cap and the Hello deadline are the service's).
    pub conn: ConnLimits,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            limits: Limits::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            conn: ConnLimits::default(),
        }
    }
}

/// Why streams end (or are refused): both are `UNAVAILABLE`, so gateways reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamsStop {
    /// The controller is stopping (SIGTERM).
    Stopping,
    /// This replica is a standby: the leader takes gateway streams.
    NotLeader,
}

impl StreamsStop {
    pub fn status(self) -> Status {
        match self {
            StreamsStop::Stopping => Status::unavailable("lazyxds is shutting down"),
            StreamsStop::NotLeader => Status::unavailable(
                "not the leader: this lazyxds replica is a standby and takes no gateway \
                 streams; reconnect (the Service sends gateways to the leader)",
            ),
        }
    }
}

/// Fires once, for all streams: they end with `UNAVAILABLE` so gateways reconnect (to
/// another replica, or to us after a restart). Open bidi streams never end on their own,
/// so without this a graceful server shutdown would wait forever. With
/// [`Shutdown::or_not_leader`], also while this replica does not lead.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stop: watch::Receiver<bool>,
    leader: Option<watch::Receiver<bool>>,
}

impl Shutdown {
    /// Streams end when `true` is sent on the channel.
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Shutdown {
            stop: rx,
            leader: None,
        }
    }

    /// Also ends (and refuses) streams while `leader` says false.
    pub fn or_not_leader(mut self, leader: watch::Receiver<bool>) -> Self {
        self.leader = Some(leader);
        self
    }

    /// Never fires.
    pub fn never() -> Self {
        Shutdown::new(watch::channel(false).1)
    }

    pub async fn wait(&mut self) {
        self.reason().await;
    }

    /// Resolves when streams must end, with why.
    pub async fn reason(&mut self) -> StreamsStop {
        let (stop, leader) = (&mut self.stop, &mut self.leader);
        // A dropped sender means nobody can ask any more (no election: always leading).
        let stopping = async {
            if stop.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
            StreamsStop::Stopping
        };
        let following = async {
            let lost = match leader {
                Some(leader) => leader.wait_for(|leads| !*leads).await.is_ok(),
                None => false,
            };
            if !lost {
                std::future::pending::<()>().await;
            }
            StreamsStop::NotLeader
        };
        tokio::select! {
            biased;
            why = stopping => why,
            why = following => why,
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
    /// One permit per open stream (`max_streams`).
    streams: Arc<Semaphore>,
    logs: Arc<LimitLogs>,
    /// Who may open a stream (`--edge-auth`).
    auth: EdgeAuth,
    /// `--edge-auth mtls`: the listener's TLS configuration.
    tls: Option<Arc<ServerConfig>>,
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
            streams: Arc::new(Semaphore::new(config.conn.max_streams)),
            config,
            shutdown,
            logs: Arc::new(LimitLogs::default()),
            auth: EdgeAuth::None,
            tls: None,
        }
    }

    /// Streams must pass `auth` ([`crate::edges::auth`]); with `tls`, connections are TLS
    /// first (`--edge-auth mtls`).
    pub fn with_auth(mut self, auth: EdgeAuth, tls: Option<Arc<ServerConfig>>) -> Self {
        self.auth = auth;
        self.tls = tls;
        self
    }

    /// Refuses the stream unless its caller is the gateway: counted, logged
    /// (rate-limited), and a status saying what was wrong.
    fn authenticate(
        &self,
        request: &Request<Streaming<GatewayMessage>>,
        conn: Option<&ConnInfo>,
        peer: Option<SocketAddr>,
    ) -> Result<String, Status> {
        let uris = conn.and_then(|c| c.client_cert_uris.as_deref());
        match self.auth.check(request.metadata(), uris) {
            Ok(caller) => Ok(caller),
            Err(refusal) => {
                self.counters.auth_refused(refusal.reason_index());
                if let Some(unlogged) = self.logs.auth.hit() {
                    tracing::warn!(
                        ?peer,
                        reason = refusal.reason(),
                        unlogged,
                        "edge stream refused: {}",
                        refusal.message()
                    );
                }
                Err(refusal.status())
            }
        }
    }

    /// The log rate limits, shared with the listener ([`crate::edges::listen`]).
    pub fn limit_logs(&self) -> Arc<LimitLogs> {
        self.logs.clone()
    }

    /// The service wrapped for `tonic::transport::Server::add_service`, with the message
    /// size limit set.
    pub fn into_server(self) -> EdgeSinkServer<Self> {
        let max = self.config.max_message_bytes;
        EdgeSinkServer::new(self).max_decoding_message_size(max)
    }

    /// Serves on `listener` within the connection limits ([`crate::edges::listen`]) until
    /// `stop` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        stop: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let conn = self.config.conn;
        let (counters, logs) = (self.counters.clone(), self.limit_logs());
        let mut builder = tonic::transport::Server::builder()
            // Streams live for hours; find dead gateways so their streams are released.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Advertised: Envoy opens another connection rather than exceed it.
            .max_concurrent_streams(Some(conn.max_streams_per_connection));
        match self.tls.clone() {
            Some(tls) => {
                let incoming = crate::edges::tls::incoming(listener, conn, counters, logs, tls);
                builder
                    .add_service(self.into_server())
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await
            }
            None => {
                let incoming = listen::incoming(listener, conn, counters, logs);
                builder
                    .add_service(self.into_server())
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await
            }
        }
    }
}

#[tonic::async_trait]
impl<S: EdgeSink + ?Sized> EdgeSinkRpc for EdgeSinkService<S> {
    type StreamStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let peer = conn
            .as_ref()
            .map(|c| c.peer)
            .or_else(|| request.remote_addr());
        // Before anything else: a stranger gets no stream slot and no namespace table.
        let caller = self.authenticate(&request, conn.as_ref(), peer)?;
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            self.counters.streams_refused_at_cap.fetch_add(1, Relaxed);
            let max = self.config.conn.max_streams;
            if let Some(unlogged) = self.logs.stream_cap.hit() {
                tracing::warn!(
                    ?peer,
                    max,
                    unlogged,
                    "gateway stream refused: --max-streams are open"
                );
            }
            return Err(Status::resource_exhausted(format!(
                "lazyxds holds its maximum of {max} gateway streams (--max-streams); retry later"
            )));
        };
        let on_conn = conn.as_ref().map(|conn| {
            let (guard, open) = conn.stream_opened();
            let max = self.config.conn.max_streams_per_connection as usize;
            if open >= max {
                self.counters.connections_at_stream_cap.fetch_add(1, Relaxed);
                if let Some(unlogged) = self.logs.connection_stream_cap.hit() {
                    tracing::warn!(
                        ?peer, max, unlogged,
                        "a gRPC connection reached --max-streams-per-connection; HTTP/2 refuses more on it"
                    );
                }
            }
            guard
        });
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_CHANNEL_CAPACITY);
        let task = StreamTask {
            sink: self.sink.clone(),
            counters: self.counters.clone(),
            shutdown: self.shutdown.clone(),
            decoder: Decoder::new(self.config.limits),
            peer,
            caller,
            conn,
            hello_timeout: self.config.conn.handshake_timeout,
            logs: self.logs.clone(),
            gateway: None,
            tx: tx.clone(),
            table: self.sink.namespace_table(),
            batches: 0,
            edges: 0,
            _slots: (permit, on_conn),
        };
        tokio::spawn(supervise(
            task.run(inbound),
            tx,
            self.counters.clone(),
            peer,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Runs a stream task; if it panics (a bug: nothing in it should), the gateway gets
/// `INTERNAL` rather than a clean end that reads as success, and the panic is logged and
/// counted. The task's slots (stream cap, connection) are released as it unwinds.
pub async fn supervise(
    task: impl Future<Output = ()>,
    tx: mpsc::Sender<Result<ControllerMessage, Status>>,
    counters: Arc<Counters>,
    peer: Option<SocketAddr>,
) {
    let Err(panic) = AssertUnwindSafe(task).catch_unwind().await else {
        return;
    };
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    counters.stream_panics.fetch_add(1, Relaxed);
    tracing::error!(?peer, panic = %message, "gateway stream task panicked (a bug); ending the stream with INTERNAL");
    let status = Status::internal(
        "lazyxds failed while handling this stream (logged as a bug); reconnect to resend",
    );
    let _ = tokio::time::timeout(FINAL_STATUS_WAIT, tx.send(Err(status))).await;
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
    /// Who `--edge-auth` found the caller to be.
    caller: String,
    /// The connection it came on (absent when served without [`crate::edges::listen`]).
    conn: Option<ConnInfo>,
    hello_timeout: Duration,
    logs: Arc<LimitLogs>,
    /// Held while the stream lives: its share of `max_streams` and of its connection.
    _slots: (OwnedSemaphorePermit, Option<ConnStream>),
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
        let first = match tokio::time::timeout(self.hello_timeout, self.next(inbound)).await {
            Ok(first) => first,
            Err(_) => {
                self.counters.hellos_timed_out.fetch_add(1, Relaxed);
                if let Some(unlogged) = self.logs.hello_timeout.hit() {
                    tracing::warn!(peer = ?self.peer, unlogged, "gateway stream sent no Hello in time");
                }
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {:?} (--grpc-handshake-timeout-secs)",
                    self.hello_timeout
                )));
            }
        };
        let Some(first) = first? else {
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
                why = self.shutdown.reason() => return Err(why.status()),
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
        if let Some((field, len)) = oversized_hello_field(&hello) {
            tracing::warn!(peer = ?self.peer, field, len, "Hello field too long");
            return Err(Status::invalid_argument(format!(
                "hello: {field} has {len} bytes, more than the limit of {MAX_NAME_BYTES}"
            )));
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
            peer = ?self.peer, caller = %self.caller, "gateway stream opened"
        );
        self.sink.hello(&gateway);
        self.gateway = Some(gateway);
        if let Some(conn) = &self.conn {
            conn.greeted();
        }
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
                self.batches = self.batches.saturating_add(1);
                self.edges = self.edges.saturating_add(count);
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
            why = self.shutdown.reason() => Err(why.status()),
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
