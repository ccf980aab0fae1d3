//! `lazyxds run`: [`RunArgs::run`] picks the mode from the flags and wires its named
//! parts ([`Runtime`]: the edge sink, the debug views, the target loop), then serves gRPC
//! and HTTP until stopped.
//!
//! | mode | sink | target |
//! | --- | --- | --- |
//! | bare (`run`) | the debug edge store | none |
//! | `--file/--out` | the index ([`Learner`]) | [`FileTarget`] |
//! | `--kube` | the index ([`Learner`]) | [`KubeTarget`](crate::kube::writer::KubeTarget) |
// Handles input from gateways, files and flags: no panics by construction (as in
// `filter/core`; a stream task that panics anyway is supervised, see `edges::stream`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::counters::Counters;
use crate::edges::auth::{EdgeAuth, EdgeAuthMode};
use crate::edges::listen::{self, ConnLimits};
use crate::edges::stream::{EdgeSinkService, GrpcConfig, Shutdown};
use crate::edges::tls::TlsFiles;
use crate::edges::{Limits, DEFAULT_MAX_BATCH_EDGES, DEFAULT_MAX_STREAM_NAMES};
use crate::filemode::{self, FileTarget};
use crate::http::{DebugAccess, DepsView, EdgeView, HttpLimits, PlanView, Sources};
use crate::kube::leader;
use crate::kube::writer::{self, WriterConfig};
use crate::learn::Learner;
use crate::metrics::MetricsSource;
use crate::ready::ReadyView;
use crate::sink::{EdgeSink, MemoryEdgeSink};
use lazyxds_index::{Index, IndexConfig, RenderConfig};
use lazyxds_proto::limits::MIN_CONTROLLER_MESSAGE_BYTES as MIN_MESSAGE_BYTES;

/// The longest `--write-debounce-ms`: the kill switch must act within seconds.
const MAX_WRITE_DEBOUNCE_MS: u64 = 10_000;

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
    #[arg(long, env = "LAZYXDS_GATEWAY_HOST", value_parser = parse_fqdn)]
    pub gateway_host: Option<String>,
    /// Namespace of the gateway Service.
    #[arg(
        long,
        env = "LAZYXDS_GATEWAY_NAMESPACE",
        default_value = "lazyxds-system",
        value_parser = parse_namespace
    )]
    pub gateway_namespace: String,
    /// The gateway Service's port scoped workloads send unknown HTTP to.
    #[arg(long, env = "LAZYXDS_EGRESS_PROXY_PORT", default_value_t = 8080,
          value_parser = clap::value_parser!(u16).range(1..))]
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
    /// Refuse edges that carry no verified caller identity (the gateway saw no client
    /// certificate). The installed gateway admits only mTLS callers, so every real edge
    /// has one and the install sets this; without it, whoever can call the gateway in
    /// plain text from a pod's IP could speak for that pod.
    #[arg(long, env = "LAZYXDS_REQUIRE_PRINCIPAL")]
    pub require_principal: bool,
    /// Make before break: for this many seconds after the workload's Sidecar lists a new
    /// dependency (with --kube: once the Sidecar watch shows it written; file mode: from
    /// learning it), the workload's catch-all EnvoyFilter keeps the dependency's routes
    /// out of its sidecar (its calls still take the gateway), so the
    /// sidecar's new clusters are active before any route uses them. istiod pushes routes
    /// without waiting for the sidecar to fetch the new clusters' endpoints; a call routed
    /// in between fails with 503 (`NC`). 0 = routes and clusters together.
    #[arg(long, env = "LAZYXDS_ROUTE_DELAY_SECS",
          default_value_t = lazyxds_index::index::DEFAULT_ROUTE_DELAY.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=60))]
    pub route_delay_secs: u64,
}

/// A Service FQDN (`lazyxds-gateway.lazyxds-system.svc.cluster.local`): lower-case DNS
/// labels, at least two; no wildcard (a Sidecar's egressProxy is one host).
fn parse_fqdn(value: &str) -> Result<String, String> {
    if value.contains('.') && lazyxds_index::host::is_dns_domain(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a host's FQDN (lower-case DNS labels separated by dots, no wildcard, \
             e.g. lazyxds-gateway.lazyxds-system.svc.cluster.local)"
        ))
    }
}

/// A Kubernetes namespace name: one lower-case DNS label.
fn parse_namespace(value: &str) -> Result<String, String> {
    if lazyxds_index::host::is_dns_label(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a namespace name (1-63 of a-z, 0-9, '-'; no wildcard)"
        ))
    }
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
            require_principal: self.require_principal,
            route_delay: Duration::from_secs(self.route_delay_secs),
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
    /// Loopback by default: any other address needs --edge-auth (the install sets
    /// 0.0.0.0:18000 with xfcc).
    #[arg(long, env = "LAZYXDS_GRPC_ADDR", default_value = "127.0.0.1:18000")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server: /healthz, /readyz, /metrics, /debug/*.
    #[arg(long, env = "LAZYXDS_HTTP_ADDR", default_value = "0.0.0.0:18080")]
    pub http_addr: SocketAddr,

    /// Who may open edge streams (only the gateway): `xfcc` behind the controller's own
    /// Istio sidecar (what the install runs: the x-forwarded-client-cert element the
    /// sidecar appends must say By=--own-identity and URI=--gateway-identity); `mtls`
    /// (TLS, a client certificate from --edge-client-ca with the URI SAN
    /// --gateway-identity) or `token` (authorization: Bearer, --edge-token-file) outside a
    /// mesh; `none` only with a loopback --grpc-addr.
    #[arg(long, env = "LAZYXDS_EDGE_AUTH", value_enum, default_value = "none")]
    pub edge_auth: EdgeAuthMode,

    /// The gateway's SPIFFE id (`spiffe://<trust domain>/ns/<ns>/sa/<service account>`),
    /// the only caller accepted with --edge-auth xfcc or mtls.
    #[arg(long, env = "LAZYXDS_GATEWAY_IDENTITY", value_parser = parse_spiffe_id)]
    pub gateway_identity: Option<String>,

    /// --edge-auth xfcc: this controller's own SPIFFE id, which its sidecar writes as
    /// By= (an element with any other By= did not come from our sidecar).
    #[arg(long, env = "LAZYXDS_OWN_IDENTITY", value_parser = parse_spiffe_id)]
    pub own_identity: Option<String>,

    /// --edge-auth mtls: the server certificate chain (PEM).
    #[arg(long, env = "LAZYXDS_EDGE_TLS_CERT")]
    pub edge_tls_cert: Option<PathBuf>,

    /// --edge-auth mtls: the server's private key (PEM).
    #[arg(long, env = "LAZYXDS_EDGE_TLS_KEY")]
    pub edge_tls_key: Option<PathBuf>,

    /// --edge-auth mtls: the CA(s) client certificates must chain to (PEM).
    #[arg(long, env = "LAZYXDS_EDGE_CLIENT_CA")]
    pub edge_client_ca: Option<PathBuf>,

    /// --edge-auth token: a file holding the token (at least 16 printable bytes; trailing
    /// whitespace ignored). The gateway sends it as `authorization: Bearer <token>`.
    #[arg(long, env = "LAZYXDS_EDGE_TOKEN_FILE")]
    pub edge_token_file: Option<PathBuf>,

    /// Who may read /debug/* (every pod IP, learned deps, the plan): `localhost` (peers
    /// 127.0.0.1 and ::1 only, e.g. kubectl port-forward; not a sidecar's 127.0.0.6),
    /// `open`, or `off`. /healthz, /readyz and /metrics always answer.
    #[arg(
        long,
        env = "LAZYXDS_DEBUG_ENDPOINTS",
        value_enum,
        default_value = "localhost"
    )]
    pub debug_endpoints: DebugAccess,

    /// Most HTTP connections open at once; more are closed as they arrive (counted in
    /// lazyxds_http_connections_refused_at_cap, logged).
    #[arg(long, env = "LAZYXDS_MAX_HTTP_CONNECTIONS",
          default_value_t = crate::http::DEFAULT_MAX_HTTP_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_http_connections: u32,

    /// Most edges in one batch; a bigger batch is refused and its stream ended. Never
    /// below what the filter may send (10,000), so no valid gateway is refused.
    #[arg(long, env = "LAZYXDS_MAX_BATCH_EDGES", default_value_t = DEFAULT_MAX_BATCH_EDGES as u32,
          value_parser = clap::value_parser!(u32).range(DEFAULT_MAX_BATCH_EDGES as i64..=1_000_000))]
    pub max_batch_edges: u32,

    /// Largest gateway message accepted, in bytes; a bigger one ends its stream. Never
    /// below 4 MiB: the filter's largest batch (max_batch_bytes) fits.
    #[arg(long, env = "LAZYXDS_MAX_MESSAGE_BYTES", default_value_t = MIN_MESSAGE_BYTES as u32,
          value_parser = clap::value_parser!(u32).range(MIN_MESSAGE_BYTES as i64..=64 * 1024 * 1024))]
    pub max_message_bytes: u32,

    /// Most dictionary names (hosts, clusters, principals) one stream may define. Never
    /// below what the filter may define (100,000, its max_names_per_stream's bound).
    #[arg(long, env = "LAZYXDS_MAX_STREAM_NAMES", default_value_t = DEFAULT_MAX_STREAM_NAMES as u32,
          value_parser = clap::value_parser!(u32).range(DEFAULT_MAX_STREAM_NAMES as i64..=10_000_000))]
    pub max_stream_names: u32,

    /// Most gRPC connections open at once; more are closed as they arrive (counted in
    /// lazyxds_grpc_connections_refused_at_cap, logged). Lowered to what the open-files
    /// limit allows, so /healthz and the API keep their file descriptors.
    #[arg(long, env = "LAZYXDS_MAX_CONNECTIONS", default_value_t = listen::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Most gateway streams open at once (one per gateway worker; the install sizes it
    /// from the gateway's replicas and workers); more are refused with
    /// RESOURCE_EXHAUSTED. Memory at worst: this many half-sent messages of
    /// --max-message-bytes.
    #[arg(long, env = "LAZYXDS_MAX_STREAMS", default_value_t = listen::DEFAULT_MAX_STREAMS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_streams: u32,

    /// Most streams on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: Envoy
    /// opens another connection rather than exceed it, e.g. the controller's sidecar).
    #[arg(long, env = "LAZYXDS_MAX_STREAMS_PER_CONNECTION",
          default_value_t = listen::DEFAULT_MAX_STREAMS_PER_CONNECTION,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_streams_per_connection: u32,

    /// A gRPC connection (and each stream) must say Hello this many seconds after it
    /// opens, or it is closed.
    #[arg(long, env = "LAZYXDS_GRPC_HANDSHAKE_TIMEOUT_SECS",
          default_value_t = listen::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub grpc_handshake_timeout_secs: u64,

    /// A gRPC connection with no stream open for this many seconds is closed (a
    /// gateway's stream stays open for as long as the gateway runs).
    #[arg(long, env = "LAZYXDS_GRPC_IDLE_TIMEOUT_SECS",
          default_value_t = listen::DEFAULT_IDLE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub grpc_idle_timeout_secs: u64,

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

    /// File mode: the largest topology file read (a larger one is refused at start and
    /// on reload, naming the file and this limit). Parsing holds about 50 times the
    /// file's size in memory at its peak; the default is some 60,000 workloads.
    #[arg(long, env = "LAZYXDS_MAX_TOPOLOGY_BYTES",
          default_value_t = filemode::DEFAULT_MAX_TOPOLOGY_BYTES,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub max_topology_bytes: u64,

    /// File mode: directory for the generated Sidecars (one YAML file each). Sidecars
    /// already there are read back first: a restart never forgets learned deps.
    #[arg(long, env = "LAZYXDS_OUT", requires = "file")]
    pub out: Option<PathBuf>,

    /// File mode: a topology (at start, against the Sidecar files there; on reload,
    /// against the last good one) that would remove more than this share of the
    /// workloads at once is refused — an empty or truncated file would take their
    /// Sidecars with them. Kubernetes mode: a pass that would delete more than this share
    /// of our Sidecars (and more than 5) is held for --removal-confirm-secs first (a
    /// truncated list looks like that; the kill switch is never held). 100 turns the
    /// check off.
    #[arg(long, env = "LAZYXDS_MAX_REMOVAL_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_removal_percent: u8,

    /// Kubernetes mode: how long a mass removal (see --max-removal-percent) must stand
    /// before its Sidecars are deleted.
    #[arg(long, env = "LAZYXDS_REMOVAL_CONFIRM_SECS",
          default_value_t = crate::kube::writer::DEFAULT_REMOVAL_CONFIRM.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub removal_confirm_secs: u64,

    /// Kubernetes mode: watch the cluster (in-cluster credentials, else KUBECONFIG /
    /// ~/.kube/config) and keep opted-in workloads' Sidecars with server-side apply.
    #[arg(long, env = "LAZYXDS_KUBE", conflicts_with = "file")]
    pub kube: bool,

    /// Kubernetes mode: compute everything, write nothing; the plan (with diffs) is
    /// logged and served at /debug/plan. Start here.
    #[arg(long, env = "LAZYXDS_DRY_RUN")]
    pub dry_run: bool,

    /// Kubernetes mode: the controller's namespace (its Lease, its pods, the kill-switch
    /// ConfigMap `lazyxds`). Set from the downward API.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lazyxds-system",
          value_parser = parse_namespace)]
    pub namespace: String,

    /// Kubernetes mode: this replica's pod name (Lease identity, leader label, Events).
    #[arg(long, env = "POD_NAME", default_value = "lazyxds")]
    pub pod_name: String,

    /// Kubernetes mode: elect a leader on the Lease `lazyxds-leader`; only the leader
    /// writes and accepts gateway streams, and labels its pod `lazyxds.io/leader=true`
    /// (the gRPC Service selects it). Needed with more than one replica.
    #[arg(long, env = "LAZYXDS_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Kubernetes mode: a leader that has not renewed its Lease for this long is replaced
    /// (2 to 300: longer leaves gateways without a controller for minutes on a crash).
    #[arg(long, env = "LAZYXDS_LEASE_DURATION_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_secs: u64,

    /// Kubernetes mode: Sidecar writes per second at most.
    #[arg(long, env = "LAZYXDS_MAX_WRITES_PER_SEC", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_writes_per_sec: u32,

    /// Changes within this many milliseconds are written together (file and Kubernetes
    /// mode). At most 10,000: every write, the kill switch's included, waits this long.
    #[arg(long, env = "LAZYXDS_WRITE_DEBOUNCE_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WRITE_DEBOUNCE_MS))]
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
    /// When this replica must not hold gateway streams (stopping, or following), and why.
    pub streams_stop: Shutdown,
}

/// The debug views beyond edges and counters: learned deps (index modes), the writer's
/// plan (`--kube`), and their metrics.
#[derive(Default)]
pub struct Views {
    pub deps: Option<Arc<dyn DepsView>>,
    pub plan: Option<Arc<dyn PlanView>>,
    pub metrics: Vec<Arc<dyn MetricsSource>>,
    /// What `/readyz` asks (none: always ready).
    pub ready: Option<Arc<dyn ReadyView>>,
}

/// A SPIFFE id as Istio issues them: `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
fn parse_spiffe_id(value: &str) -> Result<String, String> {
    if lazyxds_proto::identity::parse_spiffe(value).is_some() {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not an Istio SPIFFE id (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)"
        ))
    }
}

/// The edge check and, for `mtls`, the listener's TLS configuration.
pub type EdgeAuthSetup = (EdgeAuth, Option<Arc<tokio_rustls::rustls::ServerConfig>>);

impl RunArgs {
    /// `--edge-auth` and the flags it needs: each mode's own present, the others' absent,
    /// `none` only on loopback. Reads the token and TLS files (so a bad file fails the
    /// start, naming the flag).
    pub fn edge_auth(&self) -> Result<EdgeAuthSetup> {
        let mode = self.edge_auth;
        let given: [(&str, bool, &[EdgeAuthMode]); 6] = [
            (
                "--gateway-identity",
                self.gateway_identity.is_some(),
                &[EdgeAuthMode::Xfcc, EdgeAuthMode::Mtls],
            ),
            (
                "--own-identity",
                self.own_identity.is_some(),
                &[EdgeAuthMode::Xfcc],
            ),
            (
                "--edge-tls-cert",
                self.edge_tls_cert.is_some(),
                &[EdgeAuthMode::Mtls],
            ),
            (
                "--edge-tls-key",
                self.edge_tls_key.is_some(),
                &[EdgeAuthMode::Mtls],
            ),
            (
                "--edge-client-ca",
                self.edge_client_ca.is_some(),
                &[EdgeAuthMode::Mtls],
            ),
            (
                "--edge-token-file",
                self.edge_token_file.is_some(),
                &[EdgeAuthMode::Token],
            ),
        ];
        for (flag, set, modes) in given {
            if set && !modes.contains(&mode) {
                anyhow::bail!(
                    "{flag} does not apply to --edge-auth {} (only to {})",
                    mode.name(),
                    modes
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if !set && modes.contains(&mode) {
                anyhow::bail!("--edge-auth {} needs {flag}", mode.name());
            }
        }
        let gateway = self.gateway_identity.clone().unwrap_or_default();
        Ok(match mode {
            EdgeAuthMode::None => {
                if !self.grpc_addr.ip().is_loopback() {
                    anyhow::bail!(
                        "--edge-auth none (the default) lets anyone who reaches --grpc-addr {} \
                         rewrite every Sidecar: listen on a loopback address, or authenticate \
                         the gateway with --edge-auth xfcc (behind the controller's Istio \
                         sidecar), mtls or token",
                        self.grpc_addr
                    );
                }
                (EdgeAuth::None, None)
            }
            EdgeAuthMode::Xfcc => (
                EdgeAuth::Xfcc {
                    own: self.own_identity.clone().unwrap_or_default(),
                    gateway,
                },
                None,
            ),
            EdgeAuthMode::Token => {
                let path = self
                    .edge_token_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""));
                (
                    EdgeAuth::token_from_file(path).map_err(anyhow::Error::msg)?,
                    None,
                )
            }
            EdgeAuthMode::Mtls => {
                let empty = std::path::Path::new("");
                let files = TlsFiles {
                    cert: self.edge_tls_cert.as_deref().unwrap_or(empty),
                    key: self.edge_tls_key.as_deref().unwrap_or(empty),
                    client_ca: self.edge_client_ca.as_deref().unwrap_or(empty),
                };
                let tls = crate::edges::tls::server_config(files).map_err(anyhow::Error::msg)?;
                (EdgeAuth::Mtls { gateway }, Some(tls))
            }
        })
    }

    /// Flags that only make sense together. (clap's `requires` cannot say it: a boolean
    /// flag's default counts as present.)
    pub fn validate(&self) -> Result<()> {
        for (set, flag) in [
            (self.dry_run, "--dry-run"),
            (self.leader_election, "--leader-election"),
        ] {
            if set && !self.kube {
                anyhow::bail!(
                    "{flag} only applies with --kube (file mode always writes its files, and \
                     a bare edge sink writes nothing)"
                );
            }
        }
        Ok(())
    }

    /// Binds, wires the mode the flags ask for, and serves until a stop signal or a
    /// failure.
    pub async fn run(self) -> Result<()> {
        self.validate()?;
        let edge_auth = self.edge_auth()?;
        tracing::info!(edge_auth = self.edge_auth.name(), gateway = ?self.gateway_identity, debug = ?self.debug_endpoints, "who may report edges and read /debug");
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
            (Some(file), Some(out)) => {
                tokio::select! {
                    runtime = self.file(file, out, edges, stop_rx.clone()) => runtime?,
                    () = stop_signal() => {
                        tracing::info!("stopped while loading the topology");
                        return Ok(());
                    }
                }
            }
            _ => Runtime {
                sink: Arc::new(edges),
                views: Views::default(),
                target: Box::pin(std::future::ready(())),
                streams_stop: Shutdown::new(stop_rx.clone()),
            },
        };
        let listeners = (grpc_listener, http_listener);
        self.serve(listeners, runtime, edge_auth, counters, (stop_tx, stop_rx))
            .await
    }

    /// `--kube`: watches into the index, the cluster as the target.
    async fn kube(&self, edges: MemoryEdgeSink, stop: watch::Receiver<bool>) -> Result<Runtime> {
        let client = kube::Client::try_default().await.context(
            "--kube: no Kubernetes credentials (in-cluster service account, KUBECONFIG or ~/.kube/config)",
        )?;
        // Our Sidecars are watched: a route hold counts from the Sidecar that lists the dep.
        let index = Index::new(IndexConfig {
            route_delay_from_listing: true,
            ..self.scoping.index_config()
        });
        let learner = Arc::new(Learner::new(index, edges));
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
            max_removal_percent: self.max_removal_percent,
            removal_confirm: Duration::from_secs(self.removal_confirm_secs),
        };
        let me = (self.namespace.as_str(), self.pod_name.as_str());
        let (status, target) = writer::start(client, me, learner.clone(), leader.clone(), config);
        let status = Arc::new(status);
        Ok(Runtime {
            views: Views {
                deps: Some(learner.clone()),
                plan: Some(status.clone()),
                metrics: vec![learner.clone(), status.clone()],
                ready: Some(status),
            },
            // Gateways stream to the leader: a follower ends streams (UNAVAILABLE) so
            // they reconnect, through the Service, to whoever leads.
            streams_stop: Shutdown::new(stop.clone()).or_not_leader(leader.clone()),
            target: self.target_loop(learner.clone(), target, leader, stop),
            sink: learner,
        })
    }

    /// `--file/--out`: the topology file into the index, Sidecar files as the target. The
    /// files are read and parsed on a blocking thread (signals are still heard).
    async fn file(
        &self,
        file: &std::path::Path,
        out: &std::path::Path,
        edges: MemoryEdgeSink,
        stop: watch::Receiver<bool>,
    ) -> Result<Runtime> {
        let topology = filemode::load_topology_off_runtime(file, self.max_topology_bytes).await?;
        let index = Index::new(self.scoping.index_config());
        let (topology, index, restored) = {
            let (file, out) = (file.to_path_buf(), out.to_path_buf());
            let max_removal_percent = self.max_removal_percent;
            tokio::task::spawn_blocking(move || {
                let mut index = index;
                let restored =
                    filemode::load_state((&file, &topology), &out, &mut index, max_removal_percent);
                restored.map(|restored| (topology, index, restored))
            })
            .await
            .context("reading the Sidecars back")??
        };
        tracing::info!(file = %file.display(), out = %out.display(), restored_deps = restored, "file mode");
        let learner = Arc::new(Learner::new(index, edges));
        let target = FileTarget::new(
            file.to_path_buf(),
            out.to_path_buf(),
            self.scoping.render_config(),
            &topology,
            learner.clone(),
        )
        .with_max_bytes(self.max_topology_bytes)
        .with_max_removal_percent(self.max_removal_percent);
        let ready = target.write_path();
        Ok(Runtime {
            views: Views {
                deps: Some(learner.clone()),
                plan: None,
                metrics: vec![learner.clone()],
                ready: Some(ready),
            },
            streams_stop: Shutdown::new(stop.clone()),
            target: self.target_loop(learner.clone(), target, leader::always(), stop),
            sink: learner,
        })
    }

    /// The gRPC server's limits from the flags, `--max-connections` lowered to what the
    /// open-files limit leaves after [`FD_RESERVE`].
    fn conn_limits(&self) -> ConnLimits {
        let mut max_connections = self.max_connections as usize;
        if let Some(files) = open_files_limit() {
            let room = usize::try_from(files.saturating_sub(FD_RESERVE))
                .unwrap_or(usize::MAX)
                .max(1);
            if room < max_connections {
                tracing::warn!(
                    max_connections = room, open_files_limit = files, reserved = FD_RESERVE,
                    "--max-connections {max_connections} lowered to what the open-files limit leaves"
                );
                max_connections = room;
            }
        }
        ConnLimits {
            max_connections,
            max_streams: self.max_streams as usize,
            max_streams_per_connection: self.max_streams_per_connection,
            handshake_timeout: Duration::from_secs(self.grpc_handshake_timeout_secs),
            idle_timeout: Duration::from_secs(self.grpc_idle_timeout_secs),
        }
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
        (auth, tls): EdgeAuthSetup,
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
            conn: self.conn_limits(),
        };
        let service = EdgeSinkService::new(sink.clone(), counters.clone(), config, streams_stop)
            .with_auth(auth, tls);
        let mut grpc_stop = Shutdown::new(stop_rx.clone());
        let grpc = service.serve(grpc_listener, async move { grpc_stop.wait().await });
        let mut http_stop = Shutdown::new(stop_rx);
        let mut metrics: Vec<Arc<dyn MetricsSource>> = vec![counters.clone()];
        metrics.extend(views.metrics);
        let sources = Sources {
            edges: sink.clone(),
            counters: counters.clone(),
            deps: views.deps,
            plan: views.plan,
            metrics,
            ready: views.ready,
        };
        let http_limits = HttpLimits {
            max_connections: self.max_http_connections as usize,
            header_read_timeout: crate::http::HTTP_HEADER_READ_TIMEOUT,
            debug: self.debug_endpoints,
        };
        let http = crate::http::serve(
            http_listener,
            crate::http::router(sources),
            http_limits,
            counters.clone(),
            async move { http_stop.wait().await },
        );

        let mut grpc = tokio::spawn(grpc);
        let mut http = tokio::spawn(http);
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

/// File descriptors kept out of `--max-connections`: the HTTP server, the API client's
/// watches, files, the runtime's own.
const FD_RESERVE: u64 = 128;

/// The soft limit on open files (`/proc/self/limits`; `None` where there is none or it
/// cannot be read).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
