//! gRPC over h2c through the gateway: backends serving the standard health service
//! (`grpc.health.v1.Health`), each knowing only its own name as a service, and a client
//! whose connections come from a chosen 127.0.0.x source with a chosen `:authority`.
//!
//! `Check{service: <backend name>}` answers SERVING only on that backend (NOT_FOUND on any
//! other), so a successful check proves which backend the gateway routed to.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tonic::transport::{Endpoint, Server, Uri};
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;

use crate::client::REQUEST_TIMEOUT;

/// A gRPC backend (h2c) on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct GrpcBackend {
    name: String,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GrpcBackend {
    pub async fn start(name: &str) -> Result<GrpcBackend> {
        Self::start_on(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Binds `addr` (a mini-mesh app listens on 0.0.0.0 in its pod's network namespace).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Result<GrpcBackend> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding gRPC backend {name} on {addr}"))?;
        let addr = listener.local_addr()?;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _reporter = reporter;
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(GrpcBackend {
            name: name.to_string(),
            addr,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One `grpc.health.v1.Health/Check` for `service`, over a fresh h2c connection from
/// `source` to the gateway on 127.0.0.1:`port`, with `:authority` = `authority`. `Ok(true)`:
/// SERVING; `Err`: the gRPC status (e.g. NOT_FOUND from a backend that is not `service`).
pub async fn check(
    source: Ipv4Addr,
    port: u16,
    authority: &str,
    service: &str,
) -> Result<bool, tonic::Status> {
    check_at(
        Some(source),
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        authority,
        service,
    )
    .await
}

/// [`check`] to `dest`, from `source` or (none) whatever address the kernel picks: what a
/// workload in a mini-mesh pod sends (its sidecar captures it).
pub async fn check_at(
    source: Option<Ipv4Addr>,
    dest: SocketAddr,
    authority: &str,
    service: &str,
) -> Result<bool, tonic::Status> {
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .timeout(REQUEST_TIMEOUT);
    let connector = tower::service_fn(move |_: Uri| async move {
        let socket = TcpSocket::new_v4()?;
        if let Some(source) = source {
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::from((source, 0)))?;
        }
        Ok::<_, std::io::Error>(TokioIo::new(socket.connect(dest).await?))
    });
    let channel = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.connect_with_connector(connector),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("connect timed out"))?
    .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(reply.into_inner().status == Wire::Serving as i32)
}

/// [`check`] with an error that says where it went.
pub async fn check_or_explain(
    source: Ipv4Addr,
    port: u16,
    authority: &str,
    service: &str,
) -> Result<()> {
    match check(source, port, authority, service).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(anyhow!("{service} is not SERVING")),
        Err(status) => Err(anyhow!(
            "gRPC Check({service}) with :authority {authority} from {source}: {:?} {}",
            status.code(),
            status.message()
        )),
    }
}
