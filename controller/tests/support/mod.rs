//! Shared by the binary-level tests: the `lazyxds` process and a gateway stand-in that
//! streams edges to it over real gRPC.
#![allow(dead_code)] // each test file uses a part

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazyxds_proto::v1::edge_sink_client::EdgeSinkClient;
use lazyxds_proto::v1::{
    controller_message, gateway_message, ControllerMessage, Edge, EdgeBatch, GatewayMessage, Hello,
    Name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

/// The controller process; killed on drop. Its stderr goes to a file the test can read.
pub struct Controller {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    log: PathBuf,
}

impl Controller {
    /// `lazyxds run --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 <args>`, with `env`;
    /// returns once it logged its listening addresses.
    // The child is killed and waited for in Drop, which the lint cannot see.
    #[allow(clippy::zombie_processes)]
    pub fn start<I, S>(dir: &Path, args: I, env: &[(&str, &OsStr)]) -> Controller
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("lazyxds-{}-{n}.log", std::process::id()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazyxds"));
        cmd.args([
            "run",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("LAZYXDS_LOG_LEVEL", "info")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        // Owned (killed on drop) before anything can fail.
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut controller = Controller {
            child,
            grpc: unbound,
            http: unbound,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = controller.log();
            let field = |name: &str| -> Option<SocketAddr> {
                text.lines().find_map(|l| {
                    l.split(&format!("{name}="))
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
            };
            if let (Some(grpc), Some(http)) = (field("grpc"), field("http")) {
                controller.grpc = grpc;
                controller.http = http;
                return controller;
            }
            if let Ok(Some(status)) = controller.child.try_wait() {
                panic!("controller exited ({status}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "controller did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One stream: hello, then one batch with these (source IP, cluster) edges; waits for
    /// the ack.
    pub async fn send(&self, edges: &[([u8; 4], &str)]) {
        self.try_send(edges).await.unwrap();
    }

    /// [`Controller::send`] with the callers' verified identity on every edge (what the
    /// installed controller requires).
    pub async fn send_from(&self, principal: &str, edges: &[([u8; 4], &str)]) {
        self.try_send_from(edges, Some(principal)).await.unwrap();
    }

    /// [`Controller::send`], returning how the stream ended when it was not acked.
    pub async fn try_send(&self, edges: &[([u8; 4], &str)]) -> Result<(), tonic::Status> {
        self.try_send_from(edges, None).await
    }

    async fn try_send_from(
        &self,
        edges: &[([u8; 4], &str)],
        principal: Option<&str>,
    ) -> Result<(), tonic::Status> {
        let mut client = EdgeSinkClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut replies = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        let mut names: Vec<Name> = edges
            .iter()
            .enumerate()
            .map(|(i, (_, c))| Name {
                id: i as u32 + 1,
                value: c.to_string(),
            })
            .collect();
        let principal_id = principal.map(|p| {
            let id = names.len() as u32 + 1;
            names.push(Name {
                id,
                value: p.to_string(),
            });
            id
        });
        let edges = edges
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| Edge {
                source_ip: ip.to_vec(),
                cluster: i as u32 + 1,
                principal: principal_id.unwrap_or(0),
                requests: 1,
                ..Edge::default()
            })
            .collect();
        let hello = Hello {
            gateway_id: "gw".into(),
            worker: "w".into(),
            resync: false,
        };
        let batch = EdgeBatch {
            seq: 1,
            sent_at_unix_s: unix_now(),
            names,
            edges,
        };
        for kind in [
            gateway_message::Kind::Hello(hello),
            gateway_message::Kind::Batch(batch),
        ] {
            // A refused stream may be closed already: the reply says why.
            let _ = tx.send(GatewayMessage { kind: Some(kind) }).await;
        }
        // The namespace table may come first (it follows Hello): wait for the ack itself,
        // else the stream could close before the batch was taken in.
        loop {
            match replies.message().await? {
                Some(ControllerMessage {
                    kind: Some(controller_message::Kind::Ack(ack)),
                }) if ack.seq >= 1 => return Ok(()),
                Some(_) => continue,
                None => return Err(tonic::Status::unknown("stream ended without an ack")),
            }
        }
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET on the controller's HTTP server; the body.
    pub async fn http_get(&self, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(self.http).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: lazyxds\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `outbound|80||<host>`.
pub fn outbound(host: &str) -> String {
    format!("outbound|80||{host}")
}

/// Polls `check` every 20 ms until it returns Some, or fails with `what` after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gRPC edge service on 127.0.0.1:0 in this process, over `sink`; sending `true`
/// on the returned sender stops it (streams end UNAVAILABLE).
pub async fn serve_in_process<S: lazyxds::sink::EdgeSink>(
    sink: std::sync::Arc<S>,
    counters: std::sync::Arc<lazyxds::counters::Counters>,
    config: lazyxds::edges::stream::GrpcConfig,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    use lazyxds::edges::stream::{EdgeSinkService, Shutdown};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let service = EdgeSinkService::new(sink, counters, config, Shutdown::new(stop_rx.clone()));
    let mut server_stop = Shutdown::new(stop_rx);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move { server_stop.wait().await },
            ),
    );
    (addr, stop)
}

/// A plaintext gRPC channel to the controller at `addr`.
pub async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}
