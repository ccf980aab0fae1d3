//! A minimal Envoy access-log service (`envoy.service.accesslog.v3.AccessLogService`):
//! what the original lazyxds ran to learn dependencies. It does the least any ALS consumer
//! of dependencies must: decodes every message, and from each HTTP entry takes the source
//! address, the authority and the upstream cluster into a map (edge → requests). It also
//! counts messages, entries and bytes (protobuf + 5-byte frame).
//!
//! It runs on a thread of its own (its own single-threaded runtime), so P2 can charge the
//! sink's CPU to the ALS variants: [`AlsServer::cpu_ns`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug, Default)]
pub struct AlsCounts {
    pub streams: AtomicU64,
    pub messages: AtomicU64,
    /// HTTP access-log entries.
    pub entries: AtomicU64,
    /// Σ(encoded message + 5-byte gRPC prefix).
    pub bytes: AtomicU64,
}

/// A point-in-time copy of [`AlsCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlsSnapshot {
    pub streams: u64,
    pub messages: u64,
    pub entries: u64,
    pub bytes: u64,
}

impl AlsCounts {
    pub fn snapshot(&self) -> AlsSnapshot {
        AlsSnapshot {
            streams: self.streams.load(Relaxed),
            messages: self.messages.load(Relaxed),
            entries: self.entries.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }
}

/// (source address, authority, upstream cluster) → requests.
type EdgeMap = HashMap<(String, String, String), u64>;

#[derive(Debug, Clone)]
struct Sink {
    counts: Arc<AlsCounts>,
    edges: Arc<Mutex<EdgeMap>>,
}

/// The dependency facts of one HTTP entry: source address, authority, upstream cluster.
fn edge_of(
    entry: &envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry,
) -> (String, String, String) {
    use envoy_types::pb::envoy::config::core::v3::address::Address as A;
    let common = entry.common_properties.as_ref();
    let source = common
        .and_then(|c| c.downstream_remote_address.as_ref())
        .and_then(|a| match &a.address {
            Some(A::SocketAddress(s)) => Some(s.address.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let authority = entry
        .request
        .as_ref()
        .map(|r| r.authority.clone())
        .unwrap_or_default();
    let cluster = common
        .map(|c| c.upstream_cluster.clone())
        .unwrap_or_default();
    (source, authority, cluster)
}

#[tonic::async_trait]
impl AccessLogService for Sink {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        self.counts.streams.fetch_add(1, Relaxed);
        let mut stream = request.into_inner();
        while let Some(msg) = stream.message().await? {
            let entries = match &msg.log_entries {
                Some(LogEntries::HttpLogs(h)) => {
                    if let Ok(mut edges) = self.edges.lock() {
                        for entry in &h.log_entry {
                            *edges.entry(edge_of(entry)).or_default() += 1;
                        }
                    }
                    h.log_entry.len()
                }
                Some(LogEntries::TcpLogs(t)) => t.log_entry.len(),
                None => 0,
            };
            self.counts.messages.fetch_add(1, Relaxed);
            self.counts.entries.fetch_add(entries as u64, Relaxed);
            self.counts
                .bytes
                .fetch_add(msg.encoded_len() as u64 + 5, Relaxed);
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// A running ALS sink on 127.0.0.1, on a thread of its own; stops when dropped.
#[derive(Debug)]
pub struct AlsServer {
    port: u16,
    counts: Arc<AlsCounts>,
    edges: Arc<Mutex<EdgeMap>>,
    /// The sink thread's id (`/proc/self/task/<tid>`).
    tid: u32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AlsServer {
    pub async fn start() -> Result<AlsServer> {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the ALS sink")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let counts = Arc::new(AlsCounts::default());
        let edges = Arc::new(Mutex::new(EdgeMap::new()));
        let service = AccessLogServiceServer::new(Sink {
            counts: counts.clone(),
            edges: edges.clone(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tid_tx, tid_rx) = tokio::sync::oneshot::channel::<Result<u32>>();
        let thread = std::thread::Builder::new()
            .name("als-sink".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tid_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = tid_tx.send(current_tid());
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => return eprintln!("ALS sink: {e}"),
                    };
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    let serve = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        });
                    if let Err(e) = serve.await {
                        eprintln!("ALS sink stopped: {e}");
                    }
                });
            })
            .context("spawning the ALS sink thread")?;
        let tid = tid_rx.await.context("the ALS sink thread died")??;
        Ok(AlsServer {
            port,
            counts,
            edges,
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn counts(&self) -> AlsSnapshot {
        self.counts.snapshot()
    }

    /// Distinct (source, authority, cluster) edges the sink learned.
    pub fn edges(&self) -> usize {
        self.edges.lock().map_or(0, |e| e.len())
    }

    /// utime + stime of the sink's thread, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        crate::procfs::thread_cpu_ticks(std::process::id(), self.tid)
    }

    /// CPU time of the sink's thread in nanoseconds (schedstat).
    pub fn cpu_ns(&self) -> Result<u64> {
        crate::procfs::thread_cpu_ns(std::process::id(), self.tid)
    }
}

/// This thread's id, from `/proc/thread-self` (`<pid>/task/<tid>`).
fn current_tid() -> Result<u32> {
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str()?.parse().ok())
        .with_context(|| format!("no thread id in {}", link.display()))
}

impl Drop for AlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not joined: an open stream may keep the server busy; the thread ends with the
        // process.
        drop(self.thread.take());
    }
}
