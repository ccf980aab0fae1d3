//! The `lazyxds` binary: wires the concrete parts together.
#![forbid(unsafe_code)]

use std::future::IntoFuture;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use lazyxds::counters::Counters;
use lazyxds::edges::{Limits, DEFAULT_MAX_STREAM_NAMES};
use lazyxds::grpc::{EdgeSinkService, GrpcConfig, Shutdown};
use lazyxds::sink::MemoryEdgeSink;

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
    /// endpoints (HTTP).
    Run(RunArgs),
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

    /// Most edges kept in memory; beyond it new edges are dropped and counted
    /// (edges_dropped_store_full), known ones still updated.
    #[arg(long, env = "LAZYXDS_MAX_EDGES", default_value_t = 1_000_000)]
    max_edges: usize,

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
    }
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
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let counters = Arc::new(Counters::default());
    let sink = Arc::new(MemoryEdgeSink::new(args.max_edges, counters.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);

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
        Shutdown::new(stop_rx.clone()),
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
    let http = axum::serve(http_listener, lazyxds::http::router(sink, counters))
        .with_graceful_shutdown(async move { http_stop.wait().await });

    let mut grpc = tokio::spawn(grpc);
    let mut http = tokio::spawn(http.into_future());
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "lazyxds listening");

    tokio::select! {
        () = stop_signal() => tracing::info!("stopping"),
        result = &mut grpc => return server_ended("gRPC", result.map(|r| r.map_err(anyhow::Error::from))),
        result = &mut http => return server_ended("HTTP", result.map(|r| r.map_err(anyhow::Error::from))),
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let (g, h) = tokio::join!(grpc, http);
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
