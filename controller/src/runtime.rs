//! `lazyxds run`: [`RunArgs::run`] picks the mode from the flags and wires its named
//! parts ([`Runtime`]: the edge sink, the debug views, the target loop), then serves gRPC
//! and HTTP until stopped.
//!
//! | mode | sink | target |
//! | --- | --- | --- |
//! | bare (`run`) | the debug edge store | none |
//! | `--file/--out` | the index ([`Learner`]) | [`FileTarget`] |
//! | `--kube` | the index ([`Learner`]) | [`KubeTarget`](crate::kube::writer::KubeTarget) |

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::counters::Counters;
use crate::edges::stream::{EdgeSinkService, GrpcConfig, Shutdown};
use crate::edges::{Limits, DEFAULT_MAX_STREAM_NAMES};
use crate::filemode::{self, FileTarget};
use crate::http::{DepsView, EdgeView, PlanView, Sources};
use crate::kube::leader;
use crate::kube::writer::{self, WriterConfig};
use crate::learn::Learner;
use crate::metrics::MetricsSource;
use crate::sink::{EdgeSink, MemoryEdgeSink};
use lazyxds_index::{Index, IndexConfig, RenderConfig};

/// How long open connections get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings shared by `run` and `report`: how Sidecars are scoped.
#[derive(Debug, Clone, clap::Args)]
pub struct ScopingArgs {
    /// Most egress hosts in one Sidecar; a workload needing more is not scoped (its
    /// Sidecar is removed, the reason reported).
    #[arg(long, env = "LAZYXDS_MAX_HOSTS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_hosts: u32,
    /// FQDN of the lazy egress gateway Service (where scoped workloads send unknown HTTP); default
    /// `lazyxds-gateway.<gateway namespace>.svc.<cluster domain>`. In file mode the
    /// topology's `gateway` section wins.
    #[arg(long, env = "LAZYXDS_GATEWAY_HOST")]
    pub gateway_host: Option<String>,
    /// Namespace of the gateway Service.
    #[arg(
        long,
        env = "LAZYXDS_GATEWAY_NAMESPACE",
        default_value = "lazyxds-system"
    )]
    pub gateway_namespace: String,
    /// The gateway Service's port scoped workloads send unknown HTTP to.
    #[arg(long, env = "LAZYXDS_EGRESS_PROXY_PORT", default_value_t = 8080)]
    pub egress_proxy_port: u16,
    /// Forget a learned dependency not seen at the gateway for this many seconds; 0 = never.
    /// Once a dependency is in a Sidecar its traffic goes direct, so the gateway stops
    /// seeing it: expiry means the next call goes through the gateway and re-learns it.
    #[arg(long, env = "LAZYXDS_TTL_SECS", default_value_t = 0)]
    pub ttl_secs: u64,
    /// The cluster's DNS domain: Service FQDNs are `name.namespace.svc.<domain>`. Must
    /// match the gateway filter's `cluster_domain` (install sets both).
    #[arg(long, env = "LAZYXDS_CLUSTER_DOMAIN", default_value = lazyxds_index::host::DEFAULT_CLUSTER_DOMAIN,
          value_parser = parse_cluster_domain)]
    pub cluster_domain: String,
}

/// A DNS domain: dot-separated lower-case labels (`cluster.local`, `corp.example`).
fn parse_cluster_domain(value: &str) -> Result<String, String> {
    if lazyxds_index::host::is_dns_domain(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a DNS domain (lower-case labels separated by dots, e.g. cluster.local)"
        ))
    }
}

impl ScopingArgs {
    pub fn index_config(&self) -> IndexConfig {
        IndexConfig {
            ttl: (self.ttl_secs > 0).then(|| Duration::from_secs(self.ttl_secs)),
            max_deps_per_workload: self.max_hosts as usize,
            cluster_domain: self.cluster_domain.clone(),
            ..IndexConfig::default()
        }
    }

    pub fn render_config(&self) -> RenderConfig {
        RenderConfig {
            max_hosts_per_sidecar: self.max_hosts as usize,
            gateway_host: self.gateway_host.clone().unwrap_or_else(|| {
                lazyxds_index::host::service_fqdn(
                    "lazyxds-gateway",
                    &self.gateway_namespace,
                    &self.cluster_domain,
                )
            }),
            gateway_namespace: self.gateway_namespace.clone(),
            egress_proxy_port: self.egress_proxy_port,
            ..RenderConfig::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address of the gRPC edge service (lazyxds.v1.EdgeSink) gateways stream edges to.
    #[arg(long, env = "LAZYXDS_GRPC_ADDR", default_value = "0.0.0.0:18000")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server: /healthz, /readyz, /debug/edges, /debug/rejections.
    #[arg(long, env = "LAZYXDS_HTTP_ADDR", default_value = "0.0.0.0:18080")]
    pub http_addr: SocketAddr,

    /// Most edges in one batch; a bigger batch is refused and its stream ended.
    #[arg(long, env = "LAZYXDS_MAX_BATCH_EDGES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_edges: u32,

    /// Largest gateway message accepted, in bytes; a bigger one ends its stream.
    #[arg(long, env = "LAZYXDS_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_message_bytes: u32,

    /// Most dictionary names (hosts, clusters, principals) one stream may define.
    #[arg(long, env = "LAZYXDS_MAX_STREAM_NAMES", default_value_t = DEFAULT_MAX_STREAM_NAMES as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stream_names: u32,

    /// Most distinct edges kept for /debug/edges; beyond it new edges are dropped and
    /// counted (edges_dropped_store_full), known ones still updated. 0 keeps none. With
    /// --kube or --file the index keeps what was learned (per workload, /debug/deps), so
    /// this store is only a debugging view: it costs some 200 bytes per edge
    /// (bench P7: ~200 MB more RSS at 1M edges).
    #[arg(long, env = "LAZYXDS_MAX_EDGES", default_value_t = 100_000)]
    pub max_edges: usize,

    /// File mode: a topology YAML (namespaces, workloads with pod IPs, services, ...)
    /// standing in for a cluster. Reloaded when it changes; a bad edit is logged and the
    /// last good state kept.
    #[arg(long, env = "LAZYXDS_FILE", requires = "out")]
    pub file: Option<PathBuf>,

    /// File mode: directory for the generated Sidecars (one YAML file each). Sidecars
    /// already there are read back first: a restart never forgets learned deps.
    #[arg(long, env = "LAZYXDS_OUT", requires = "file")]
    pub out: Option<PathBuf>,

    /// File mode: a topology (at start, against the Sidecar files there; on reload,
    /// against the last good one) that would remove more than this share of the
    /// workloads at once is refused — an empty or truncated file would take their
    /// Sidecars with them. 100 turns the check off.
    #[arg(long, env = "LAZYXDS_MAX_REMOVAL_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_removal_percent: u8,

    /// Kubernetes mode: watch the cluster (in-cluster credentials, else KUBECONFIG /
    /// ~/.kube/config) and keep opted-in workloads' Sidecars with server-side apply.
    #[arg(long, env = "LAZYXDS_KUBE", conflicts_with = "file")]
    pub kube: bool,

    /// Kubernetes mode: compute everything, write nothing; the plan (with diffs) is
    /// logged and served at /debug/plan. Start here.
    #[arg(long, env = "LAZYXDS_DRY_RUN", requires = "kube")]
    pub dry_run: bool,

    /// Kubernetes mode: the controller's namespace (its Lease, its pods, the kill-switch
    /// ConfigMap `lazyxds`). Set from the downward API.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lazyxds-system")]
    pub namespace: String,

    /// Kubernetes mode: this replica's pod name (Lease identity, leader label, Events).
    #[arg(long, env = "POD_NAME", default_value = "lazyxds")]
    pub pod_name: String,

    /// Kubernetes mode: elect a leader on the Lease `lazyxds-leader`; only the leader
    /// writes and accepts gateway streams, and labels its pod `lazyxds.io/leader=true`
    /// (the gRPC Service selects it). Needed with more than one replica.
    #[arg(long, env = "LAZYXDS_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Kubernetes mode: a leader that has not renewed its Lease for this long is replaced.
    #[arg(long, env = "LAZYXDS_LEASE_DURATION_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub lease_duration_secs: u64,

    /// Kubernetes mode: Sidecar writes per second at most.
    #[arg(long, env = "LAZYXDS_MAX_WRITES_PER_SEC", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_writes_per_sec: u32,

    /// Changes within this many milliseconds are written together (file and Kubernetes
    /// mode).
    #[arg(long, env = "LAZYXDS_WRITE_DEBOUNCE_MS", default_value_t = 50)]
    pub write_debounce_ms: u64,

    #[command(flatten)]
    pub scoping: ScopingArgs,

    /// Log filter (tracing EnvFilter syntax: `info`, `lazyxds=debug,info`, ...).
    /// Default: RUST_LOG when set, else `info`.
    #[arg(long, env = "LAZYXDS_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// Where edges go: the index (file and Kubernetes mode) or the debug store alone.
pub trait Sink: EdgeSink + EdgeView {}
impl<T: EdgeSink + EdgeView> Sink for T {}

/// A mode, wired: where edges go, what the HTTP server shows, and the loop that keeps
/// the mode's target (nothing in bare mode).
pub struct Runtime {
    pub sink: Arc<dyn Sink>,
    pub views: Views,
    pub target: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// True while this replica must not hold gateway streams (stopping, or following).
    pub streams_stop: watch::Receiver<bool>,
}

/// The debug views beyond edges and counters: learned deps (index modes), the writer's
/// plan (`--kube`), and their metrics.
#[derive(Default)]
pub struct Views {
    pub deps: Option<Arc<dyn DepsView>>,
    pub plan: Option<Arc<dyn PlanView>>,
    pub metrics: Vec<Arc<dyn MetricsSource>>,
}

impl RunArgs {
    /// Binds, wires the mode the flags ask for, and serves until a stop signal or a
    /// failure.
    pub async fn run(self) -> Result<()> {
        // Bind both before serving either, so a bad address fails the start.
        let grpc_listener = TcpListener::bind(self.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on --grpc-addr {}", self.grpc_addr))?;
        let http_listener = TcpListener::bind(self.http_addr)
            .await
            .with_context(|| format!("cannot listen on --http-addr {}", self.http_addr))?;
        let counters = Arc::new(Counters::default());
        let edges = MemoryEdgeSink::new(self.max_edges, counters.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let runtime = match (&self.file, &self.out) {
            _ if self.kube => self.kube(edges, stop_rx.clone()).await?,
            (Some(file), Some(out)) => self.file(file, out, edges, stop_rx.clone())?,
            _ => Runtime {
                sink: Arc::new(edges),
                views: Views::default(),
                target: Box::pin(std::future::ready(())),
                streams_stop: stop_rx.clone(),
            },
        };
        let listeners = (grpc_listener, http_listener);
        self.serve(listeners, runtime, counters, (stop_tx, stop_rx))
            .await
    }

    /// `--kube`: watches into the index, the cluster as the target.
    async fn kube(&self, edges: MemoryEdgeSink, stop: watch::Receiver<bool>) -> Result<Runtime> {
        let client = kube::Client::try_default().await.context(
            "--kube: no Kubernetes credentials (in-cluster service account, KUBECONFIG or ~/.kube/config)",
        )?;
        let learner = Arc::new(Learner::new(Index::new(self.scoping.index_config()), edges));
        let leader = if self.leader_election {
            let (ns, pod) = (&self.namespace, &self.pod_name);
            leader::elect(client.clone(), ns, pod, self.lease_duration_secs)
                .await
                .context("starting leader election")?
        } else {
            leader::always()
        };
        let config = WriterConfig {
            render: self.scoping.render_config(),
            max_writes_per_sec: self.max_writes_per_sec,
            timeout: Duration::from_secs(10),
            dry_run: self.dry_run,
        };
        let me = (self.namespace.as_str(), self.pod_name.as_str());
        let (status, target) = writer::start(client, me, learner.clone(), leader.clone(), config);
        let status = Arc::new(status);
        Ok(Runtime {
            views: Views {
                deps: Some(learner.clone()),
                plan: Some(status.clone()),
                metrics: vec![learner.clone(), status],
            },
            // Gateways stream to the leader: a follower ends streams (UNAVAILABLE) so
            // they reconnect, through the Service, to whoever leads.
            streams_stop: leader::follower_or_stopping(leader.clone(), stop.clone()),
            target: self.target_loop(learner.clone(), target, leader, stop),
            sink: learner,
        })
    }

    /// `--file/--out`: the topology file into the index, Sidecar files as the target.
    fn file(
        &self,
        file: &std::path::Path,
        out: &std::path::Path,
        edges: MemoryEdgeSink,
        stop: watch::Receiver<bool>,
    ) -> Result<Runtime> {
        let topology = filemode::load_topology(file)?;
        let mut index = Index::new(self.scoping.index_config());
        let restored =
            filemode::load_state((file, &topology), out, &mut index, self.max_removal_percent)?;
        tracing::info!(file = %file.display(), out = %out.display(), restored_deps = restored, "file mode");
        let learner = Arc::new(Learner::new(index, edges));
        let target = FileTarget::new(
            file.to_path_buf(),
            out.to_path_buf(),
            self.scoping.render_config(),
            &topology,
            learner.clone(),
        )
        .with_max_removal_percent(self.max_removal_percent);
        Ok(Runtime {
            views: Views {
                deps: Some(learner.clone()),
                plan: None,
                metrics: vec![learner.clone()],
            },
            streams_stop: stop.clone(),
            target: self.target_loop(learner.clone(), target, leader::always(), stop),
            sink: learner,
        })
    }

    /// The one loop over `target`, with the clock the index needs (held edges, TTL).
    fn target_loop(
        &self,
        learner: Arc<Learner>,
        target: impl crate::target::Target + 'static,
        leader: watch::Receiver<bool>,
        stop: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let debounce = Duration::from_millis(self.write_debounce_ms);
        let mut stop = Shutdown::new(stop);
        Box::pin(async move {
            let ticker = learner.clone().tick_every(Duration::from_secs(1));
            crate::target::run(learner, target, leader, debounce, async move {
                stop.wait().await
            })
            .await;
            ticker.abort();
        })
    }

    /// Serves gRPC and HTTP, and runs the target loop, until a stop signal or a failure.
    async fn serve(
        &self,
        (grpc_listener, http_listener): (TcpListener, TcpListener),
        runtime: Runtime,
        counters: Arc<Counters>,
        (stop_tx, stop_rx): (watch::Sender<bool>, watch::Receiver<bool>),
    ) -> Result<()> {
        let Runtime {
            sink,
            views,
            target,
            streams_stop,
        } = runtime;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let config = GrpcConfig {
            limits: Limits {
                max_batch_edges: self.max_batch_edges as usize,
                max_names: self.max_stream_names as usize,
            },
            max_message_bytes: self.max_message_bytes as usize,
        };
        let service = EdgeSinkService::new(
            sink.clone(),
            counters.clone(),
            config,
            Shutdown::new(streams_stop),
        );
        let mut grpc_stop = Shutdown::new(stop_rx.clone());
        let grpc = tonic::transport::Server::builder()
            // Streams live for hours; find dead gateways so their streams are released.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move { grpc_stop.wait().await },
            );
        let mut http_stop = Shutdown::new(stop_rx);
        let mut metrics: Vec<Arc<dyn MetricsSource>> = vec![counters.clone()];
        metrics.extend(views.metrics);
        let sources = Sources {
            edges: sink.clone(),
            counters: counters.clone(),
            deps: views.deps,
            plan: views.plan,
            metrics,
        };
        let http = axum::serve(http_listener, crate::http::router(sources))
            .with_graceful_shutdown(async move { http_stop.wait().await });

        let mut grpc = tokio::spawn(grpc);
        let mut http = tokio::spawn(http.into_future());
        let target = tokio::spawn(target);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "lazyxds listening");

        tokio::select! {
            () = stop_signal() => tracing::info!("stopping"),
            result = &mut grpc => return server_ended("gRPC", result.map(|r| r.map_err(anyhow::Error::from))),
            result = &mut http => return server_ended("HTTP", result.map(|r| r.map_err(anyhow::Error::from))),
        }
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            let (g, h, _) = tokio::join!(grpc, http, target);
            (g, h)
        })
        .await;
        match drained {
            Ok((g, h)) => {
                g.context("gRPC server task")?.context("gRPC server")?;
                h.context("HTTP server task")?.context("HTTP server")?;
            }
            Err(_) => tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}, exiting"),
        }
        Ok(())
    }
}

/// A server stopped on its own: that is always an error.
fn server_ended(
    which: &str,
    result: std::result::Result<Result<()>, tokio::task::JoinError>,
) -> Result<()> {
    match result {
        Ok(Ok(())) => anyhow::bail!("the {which} server stopped unexpectedly"),
        Ok(Err(e)) => Err(e.context(format!("the {which} server failed"))),
        Err(e) => Err(anyhow::Error::from(e).context(format!("the {which} server task failed"))),
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM, only SIGINT stops lazyxds");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
