//! A minimal Envoy access-log service (`envoy.service.accesslog.v3.AccessLogService`):
//! what the original lazyxds ran to learn dependencies. It decodes every message (as a
//! real collector must) and counts messages, entries and bytes (protobuf + 5-byte frame).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

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
use tokio::task::JoinHandle;
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

#[derive(Debug, Clone)]
struct Sink(Arc<AlsCounts>);

#[tonic::async_trait]
impl AccessLogService for Sink {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        self.0.streams.fetch_add(1, Relaxed);
        let mut stream = request.into_inner();
        while let Some(msg) = stream.message().await? {
            let entries = match &msg.log_entries {
                Some(LogEntries::HttpLogs(h)) => h.log_entry.len(),
                Some(LogEntries::TcpLogs(t)) => t.log_entry.len(),
                None => 0,
            };
            self.0.messages.fetch_add(1, Relaxed);
            self.0.entries.fetch_add(entries as u64, Relaxed);
            self.0
                .bytes
                .fetch_add(msg.encoded_len() as u64 + 5, Relaxed);
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// A running ALS sink on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct AlsServer {
    port: u16,
    counts: Arc<AlsCounts>,
    task: JoinHandle<()>,
}

impl AlsServer {
    pub async fn start() -> Result<AlsServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the ALS sink")?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(AlsCounts::default());
        let service = AccessLogServiceServer::new(Sink(counts.clone()));
        let task = tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("ALS sink stopped: {e}");
            }
        });
        Ok(AlsServer { port, counts, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn counts(&self) -> AlsSnapshot {
        self.counts.snapshot()
    }
}

impl Drop for AlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
