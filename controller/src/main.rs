//! The `lazyxds` binary: wires the concrete parts together.
#![forbid(unsafe_code)]

use std::future::IntoFuture;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use lazyxds::counters::Counters;
use lazyxds::edges::stream::{EdgeSinkService, GrpcConfig, Shutdown};
use lazyxds::edges::{Limits, DEFAULT_MAX_STREAM_NAMES};
use lazyxds::filemode::{self, FileMode};
use lazyxds::http::{DepsView, EdgeView, PlanView, Sources};
use lazyxds::kube::writer::WriterConfig;
use lazyxds::learn::Learner;
use lazyxds::metrics::MetricsSource;
use lazyxds::sink::{EdgeSink, MemoryEdgeSink};
use lazyxds_index::{desired, report, Index, IndexConfig, RenderConfig};

/// mimalloc gives freed memory back to the system: with glibc's malloc the pages that
/// watch lists and writer passes use for a moment stay resident (bench P7: about three
/// times the live heap at 100k pods).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long open connections get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// lazyxds: learns workload dependencies from gateway edges and keeps Istio Sidecars
/// scoped to them.
#[derive(Debug, Parser)]
#[command(name = "lazyxds", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller: accept gateway edge streams (gRPC) and serve debug/health
    /// endpoints (HTTP). With --file/--out: learn dependencies for the workloads of a
    /// topology file and keep their Sidecars, as YAML files, in a directory.
    Run(RunArgs),
    /// Per workload: hosts visible without scoping vs with, and the clusters and
    /// endpoints scoping removes from its sidecar.
    Report(ReportArgs),
    /// Print the manifests installing lazyxds into an Istio mesh (controller, RBAC, lazy
    /// egress gateway, filter module, gateway routing):
    /// `lazyxds install | kubectl apply --server-side -f -`.
    Install(lazyxds::install::cli::InstallArgs),
    /// Print what to delete, in a safe order, including every Sidecar the controller
    /// wrote (read from the cluster): `lazyxds uninstall | kubectl delete --ignore-not-found -f -`.
    Uninstall(lazyxds::install::cli::UninstallArgs),
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Topology YAML describing the mesh (the file given to `run --file`).
    #[arg(long, env = "LAZYXDS_FILE")]
    file: PathBuf,
    /// Directory of the Sidecars `run --out` wrote (their learned deps are the state).
    #[arg(long, env = "LAZYXDS_OUT")]
    sidecars: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    scoping: ScopingArgs,
}

/// Settings shared by `run` and `report`: how Sidecars are scoped.
#[derive(Debug, Clone, clap::Args)]
struct ScopingArgs {
    /// Most egress hosts in one Sidecar; a workload needing more is not scoped (its
    /// Sidecar is removed, the reason reported).
    #[arg(long, env = "LAZYXDS_MAX_HOSTS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_hosts: u32,
    /// FQDN of the lazy egress gateway Service (the Sidecars' egressProxy host); default
    /// `lazyxds-gateway.<gateway namespace>.svc.<cluster domain>`. In file mode the
    /// topology's `gateway` section wins.
    #[arg(long, env = "LAZYXDS_GATEWAY_HOST")]
    gateway_host: Option<String>,
    /// Namespace of the gateway Service.
    #[arg(
        long,
        env = "LAZYXDS_GATEWAY_NAMESPACE",
        default_value = "lazyxds-system"
    )]
    gateway_namespace: String,
    /// The gateway's egressProxy port.
    #[arg(long, env = "LAZYXDS_EGRESS_PROXY_PORT", default_value_t = 8080)]
    egress_proxy_port: u16,
    /// Forget a learned dependency not seen at the gateway for this many seconds; 0 = never.
    /// Once a dependency is in a Sidecar its traffic goes direct, so the gateway stops
    /// seeing it: expiry means the next call goes through the gateway and re-learns it.
    #[arg(long, env = "LAZYXDS_TTL_SECS", default_value_t = 0)]
    ttl_secs: u64,
    /// The cluster's DNS domain: Service FQDNs are `name.namespace.svc.<domain>`. Must
    /// match the gateway filter's `cluster_domain` (install sets both).
    #[arg(long, env = "LAZYXDS_CLUSTER_DOMAIN", default_value = lazyxds_index::host::DEFAULT_CLUSTER_DOMAIN,
          value_parser = parse_cluster_domain)]
    cluster_domain: String,
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
    fn index_config(&self) -> IndexConfig {
        IndexConfig {
            ttl: (self.ttl_secs > 0).then(|| Duration::from_secs(self.ttl_secs)),
            max_deps_per_workload: self.max_hosts as usize,
            cluster_domain: self.cluster_domain.clone(),
            ..IndexConfig::default()
        }
    }

    fn render_config(&self) -> RenderConfig {
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
struct RunArgs {
    /// Address of the gRPC edge service (lazyxds.v1.EdgeSink) gateways stream edges to.
    #[arg(long, env = "LAZYXDS_GRPC_ADDR", default_value = "0.0.0.0:18000")]
    grpc_addr: SocketAddr,

    /// Address of the HTTP server: /healthz, /readyz, /debug/edges, /debug/rejections.
    #[arg(long, env = "LAZYXDS_HTTP_ADDR", default_value = "0.0.0.0:18080")]
    http_addr: SocketAddr,

    /// Most edges in one batch; a bigger batch is refused and its stream ended.
    #[arg(long, env = "LAZYXDS_MAX_BATCH_EDGES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_batch_edges: u32,

    /// Largest gateway message accepted, in bytes; a bigger one ends its stream.
    #[arg(long, env = "LAZYXDS_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..))]
    max_message_bytes: u32,

    /// Most dictionary names (hosts, clusters, principals) one stream may define.
    #[arg(long, env = "LAZYXDS_MAX_STREAM_NAMES", default_value_t = DEFAULT_MAX_STREAM_NAMES as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_stream_names: u32,

    /// Most distinct edges kept for /debug/edges; beyond it new edges are dropped and
    /// counted (edges_dropped_store_full), known ones still updated. 0 keeps none. With
    /// --kube or --file the index keeps what was learned (per workload, /debug/deps), so
    /// this store is only a debugging view: it costs some 200 bytes per edge
    /// (bench P7: ~200 MB more RSS at 1M edges).
    #[arg(long, env = "LAZYXDS_MAX_EDGES", default_value_t = 100_000)]
    max_edges: usize,

    /// File mode: a topology YAML (namespaces, workloads with pod IPs, services, ...)
    /// standing in for a cluster. Reloaded when it changes; a bad edit is logged and the
    /// last good state kept.
    #[arg(long, env = "LAZYXDS_FILE", requires = "out")]
    file: Option<PathBuf>,

    /// File mode: directory for the generated Sidecars (one YAML file each). Sidecars
    /// already there are read back first: a restart never forgets learned deps.
    #[arg(long, env = "LAZYXDS_OUT", requires = "file")]
    out: Option<PathBuf>,

    /// Kubernetes mode: watch the cluster (in-cluster credentials, else KUBECONFIG /
    /// ~/.kube/config) and keep opted-in workloads' Sidecars with server-side apply.
    #[arg(long, env = "LAZYXDS_KUBE", conflicts_with = "file")]
    kube: bool,

    /// Kubernetes mode: compute everything, write nothing; the plan (with diffs) is
    /// logged and served at /debug/plan. Start here.
    #[arg(long, env = "LAZYXDS_DRY_RUN", requires = "kube")]
    dry_run: bool,

    /// Kubernetes mode: the controller's namespace (its Lease, its pods, the kill-switch
    /// ConfigMap `lazyxds`). Set from the downward API.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lazyxds-system")]
    namespace: String,

    /// Kubernetes mode: this replica's pod name (Lease identity, leader label, Events).
    #[arg(long, env = "POD_NAME", default_value = "lazyxds")]
    pod_name: String,

    /// Kubernetes mode: elect a leader on the Lease `lazyxds-leader`; only the leader
    /// writes and accepts gateway streams, and labels its pod `lazyxds.io/leader=true`
    /// (the gRPC Service selects it). Needed with more than one replica.
    #[arg(long, env = "LAZYXDS_LEADER_ELECTION")]
    leader_election: bool,

    /// Kubernetes mode: a leader that has not renewed its Lease for this long is replaced.
    #[arg(long, env = "LAZYXDS_LEASE_DURATION_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..))]
    lease_duration_secs: u64,

    /// Kubernetes mode: Sidecar writes per second at most.
    #[arg(long, env = "LAZYXDS_MAX_WRITES_PER_SEC", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_writes_per_sec: u32,

    /// Changes within this many milliseconds are written together (file and Kubernetes
    /// mode).
    #[arg(long, env = "LAZYXDS_WRITE_DEBOUNCE_MS", default_value_t = 50)]
    write_debounce_ms: u64,

    #[command(flatten)]
    scoping: ScopingArgs,

    /// Log filter (tracing EnvFilter syntax: `info`, `lazyxds=debug,info`, ...).
    /// Default: RUST_LOG when set, else `info`.
    #[arg(long, env = "LAZYXDS_LOG_LEVEL")]
    log_level: Option<String>,
}

fn main() {
    // One line, no backtrace: these are operator errors (bad flag, busy port).
    if let Err(error) = try_main() {
        eprintln!("lazyxds: {error:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging(args.log_level.as_deref())?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?
                .block_on(run(args))
        }
        Command::Report(args) => print_report(&args),
        Command::Install(args) => print_install(&args),
        Command::Uninstall(args) => print_uninstall(&args),
    }
}

fn print_install(args: &lazyxds::install::cli::InstallArgs) -> Result<()> {
    let install = lazyxds::install::render(&args.to_config()?)?;
    match &args.out_dir {
        Some(dir) => {
            for name in install.write_dir(dir)? {
                eprintln!("wrote {}", dir.join(name).display());
            }
        }
        None => print!("{}", install.to_yaml()?),
    }
    Ok(())
}

fn print_uninstall(args: &lazyxds::install::cli::UninstallArgs) -> Result<()> {
    let config = args.to_config()?;
    let owned = if args.offline {
        Vec::new()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?
            .block_on(async {
                let client = kube::Client::try_default().await.context(
                    "no Kubernetes credentials (KUBECONFIG or ~/.kube/config) to list the \
                     Sidecars to delete; --offline renders without them",
                )?;
                lazyxds::install::cluster::list_owned(&client)
                    .await
                    .context("listing the objects lazyxds owns")
            })?
    };
    let refs = lazyxds::install::uninstall(&config, &owned)?;
    print!(
        "{}",
        lazyxds::install::uninstall_yaml(&refs, !args.offline)?
    );
    Ok(())
}

fn print_report(args: &ReportArgs) -> Result<()> {
    let topology = filemode::load_topology(&args.file)?;
    let mut index = Index::new(args.scoping.index_config());
    filemode::load_state(&topology, &args.sidecars, &mut index)?;
    let render = topology.render_config(args.scoping.render_config());
    let desired = desired(&index, &render);
    let report = report(&index, &desired);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

fn init_logging(level: Option<&str>) -> Result<()> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escape codes only for people; tests and log collectors read plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    // Bind both before serving either, so a bad address fails the start.
    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on --grpc-addr {}", args.grpc_addr))?;
    let http_listener = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;
    let listeners = (grpc_listener, http_listener);

    let counters = Arc::new(Counters::default());
    let edges = MemoryEdgeSink::new(args.max_edges, counters.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    if args.kube {
        let client = kube::Client::try_default().await.context(
            "--kube: no Kubernetes credentials (in-cluster service account, KUBECONFIG or ~/.kube/config)",
        )?;
        let learner = Arc::new(Learner::new(Index::new(args.scoping.index_config()), edges));
        let config = WriterConfig {
            render: args.scoping.render_config(),
            debounce: Duration::from_millis(args.write_debounce_ms),
            max_writes_per_sec: args.max_writes_per_sec,
            timeout: Duration::from_secs(10),
            dry_run: args.dry_run,
        };
        let mut writer_stop = Shutdown::new(stop_rx.clone());
        let identity = lazyxds::kube::Identity {
            namespace: args.namespace.clone(),
            pod_name: args.pod_name.clone(),
        };
        let leader = if args.leader_election {
            let config = lazyxds::kube::leader::LeaderConfig {
                namespace: args.namespace.clone(),
                pod_name: args.pod_name.clone(),
                lease_name: "lazyxds-leader".into(),
                duration_secs: args.lease_duration_secs,
                grace_secs: (args.lease_duration_secs / 3).max(1),
            };
            lazyxds::kube::leader::elect(client.clone(), config)
                .await
                .context("starting leader election")?
        } else {
            lazyxds::kube::leader::always()
        };
        // Gateways stream to the leader: a follower ends streams (UNAVAILABLE) so they
        // reconnect, through the Service, to whoever leads.
        let streams_stop = follower_or_stopping(leader.clone(), stop_rx.clone());
        let (status, writer) = lazyxds::kube::start(
            client,
            &identity,
            learner.clone(),
            leader,
            config,
            async move { writer_stop.wait().await },
        );
        let deps: Arc<dyn DepsView> = learner.clone();
        let status = Arc::new(status);
        let plan: Arc<dyn PlanView> = status.clone();
        let metrics: Vec<Arc<dyn MetricsSource>> = vec![learner.clone(), status];
        let views = (Some(deps), Some(plan), metrics);
        let channels = (stop_tx, stop_rx, streams_stop);
        return serve(&args, listeners, learner, views, counters, writer, channels).await;
    }
    let (Some(file), Some(out)) = (&args.file, &args.out) else {
        let sink = Arc::new(edges);
        let idle = std::future::ready(());
        let views = (None, None, Vec::new());
        let channels = (stop_tx, stop_rx.clone(), stop_rx);
        return serve(&args, listeners, sink, views, counters, idle, channels).await;
    };
    let topology = filemode::load_topology(file)?;
    let mut index = Index::new(args.scoping.index_config());
    let restored = filemode::load_state(&topology, out, &mut index)?;
    tracing::info!(file = %file.display(), out = %out.display(), restored_deps = restored, "file mode");
    let learner = Arc::new(Learner::new(index, edges));
    let mode = FileMode {
        topology: file.clone(),
        out_dir: out.clone(),
        base_render: args.scoping.render_config(),
        debounce: Duration::from_millis(args.write_debounce_ms),
        poll: Duration::from_secs(1),
    };
    let mut writer_stop = Shutdown::new(stop_rx.clone());
    let writer = filemode::run_writer(mode, learner.clone(), topology, async move {
        writer_stop.wait().await
    });
    let deps: Arc<dyn DepsView> = learner.clone();
    let channels = (stop_tx, stop_rx.clone(), stop_rx);
    let metrics: Vec<Arc<dyn MetricsSource>> = vec![learner.clone()];
    let views = (Some(deps), None, metrics);
    serve(&args, listeners, learner, views, counters, writer, channels).await
}

/// True while this replica must not hold gateway streams: stopping, or not leading.
fn follower_or_stopping(
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(!*leader.borrow() || *stop.borrow());
    tokio::spawn(async move {
        // A closed leadership channel never changes again (no election: always leading).
        let mut leader_open = true;
        loop {
            tx.send_replace(!*leader.borrow_and_update() || *stop.borrow_and_update());
            tokio::select! {
                changed = leader.changed(), if leader_open => leader_open = changed.is_ok(),
                changed = stop.changed() => if changed.is_err() { return },
            }
        }
    });
    rx
}

/// The process stop signal (sender and receiver) and the signal that ends gateway streams.
type Channels = (
    watch::Sender<bool>,
    watch::Receiver<bool>,
    watch::Receiver<bool>,
);

/// The optional debug views: learned deps (index modes), the writer's plan (--kube).
type Views = (
    Option<Arc<dyn DepsView>>,
    Option<Arc<dyn PlanView>>,
    Vec<Arc<dyn MetricsSource>>,
);

/// Serves gRPC and HTTP, and runs `background` (the writer), until a stop signal or a
/// failure.
#[allow(clippy::too_many_arguments)]
async fn serve<S: EdgeSink + EdgeView>(
    args: &RunArgs,
    (grpc_listener, http_listener): (TcpListener, TcpListener),
    sink: Arc<S>,
    (deps, plan, extra_metrics): Views,
    counters: Arc<Counters>,
    background: impl std::future::Future<Output = ()> + Send + 'static,
    (stop_tx, stop_rx, streams_stop): Channels,
) -> Result<()> {
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let config = GrpcConfig {
        limits: Limits {
            max_batch_edges: args.max_batch_edges as usize,
            max_names: args.max_stream_names as usize,
        },
        max_message_bytes: args.max_message_bytes as usize,
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
    metrics.extend(extra_metrics);
    let sources = Sources {
        edges: sink.clone(),
        counters: counters.clone(),
        deps,
        plan,
        metrics,
    };
    let http = axum::serve(http_listener, lazyxds::http::router(sources))
        .with_graceful_shutdown(async move { http_stop.wait().await });

    let mut grpc = tokio::spawn(grpc);
    let mut http = tokio::spawn(http.into_future());
    let background = tokio::spawn(background);
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "lazyxds listening");

    tokio::select! {
        () = stop_signal() => tracing::info!("stopping"),
        result = &mut grpc => return server_ended("gRPC", result.map(|r| r.map_err(anyhow::Error::from))),
        result = &mut http => return server_ended("HTTP", result.map(|r| r.map_err(anyhow::Error::from))),
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let (g, h, _) = tokio::join!(grpc, http, background);
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
