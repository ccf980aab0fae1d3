//! P7: the memory of the real controller process holding a big mesh.
//!
//! The most faithful setup that fits in about a minute of bench time:
//!
//! 1. A synthetic mesh is written into the in-process fake API server
//!    (`tests/fake-apiserver`, the real REST + watch protocol): namespaces opted in with
//!    `lazyxds.io/enabled`, one Deployment per Service, each with its current and one old
//!    ReplicaSet, and pods with distinct IPv4 addresses, Istio-injected labels and
//!    annotations, owner references and a service account each. The objects are built one
//!    at a time as JSON and handed to the fake; only the fake (in the bench process) keeps
//!    them.
//! 2. The real `lazyxds run --kube` binary (the one `make bench` measures, in its own
//!    process, with the installed Deployment's defaults) lists and watches them with its
//!    kube-runtime watchers, which project every object into the index's compact entries
//!    and drop it (`controller/src/kube/watch.rs`).
//! 3. The writer server-side applies a Sidecar per workload and a gateway VirtualService
//!    per mesh host (the fake's watches echo them back, so the controller holds what it
//!    holds in a cluster), and publishes an Event per new Sidecar. `write: false` runs it
//!    with `--dry-run` instead (the whole plan kept, nothing written).
//! 4. Edges arrive over real gRPC on loopback, like gateway workers send them: a few bidi
//!    streams, names sent once per stream, 1,000-edge batches, a window of unacked batches,
//!    every edge with the source pod's SPIFFE principal. The controller's sink is the same
//!    [`lazyxds::learn::Learner`] as in production: the index, plus the `/debug/edges`
//!    store (`--max-edges`). The writer then rewrites every Sidecar with its deps.
//! 5. Once every Sidecar in the fake lists its deps and the writer is idle (the streams
//!    still open, as gateways keep them), `VmRSS` and `VmHWM` come from
//!    `/proc/<pid>/status`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use fake_apiserver::FakeApiServer;
use lazyxds_e2e::process::Proc;
use lazyxds_proto::v1::edge_sink_client::EdgeSinkClient;
use lazyxds_proto::v1::{gateway_message, Edge, EdgeBatch, GatewayMessage, Hello, Name};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use crate::progress;

/// The size and shape of the synthetic mesh, and how edges are sent.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    pub namespaces: usize,
    /// Services; each has one Deployment of the same name.
    pub services: usize,
    pub pods_per_workload: usize,
    /// Services each workload calls; each of its pods calls all of them, so distinct
    /// (pod, host) edges = pods × this.
    pub deps_per_workload: usize,
    /// gRPC streams (gateway workers) the edges are spread over.
    pub streams: usize,
    pub edges_per_batch: usize,
    /// Unacked batches per stream.
    pub window: usize,
    /// Extra arguments to `lazyxds run --kube`.
    pub controller_args: Vec<String>,
    /// Let the writer apply the Sidecars and the gateway routes (to the fake API server,
    /// whose watches echo them back), as in a cluster; false: `--dry-run`.
    pub write: bool,
    /// How long everything may take before the measure fails.
    pub timeout: Duration,
    /// After P7: P7b (restart the controller on the same cluster) and P7c (pod churn on
    /// the restarted one).
    pub restart_and_churn: bool,
    /// P7c: pods replaced per second, for this long.
    pub churn_per_sec: usize,
    pub churn_for: Duration,
}

impl MeshSpec {
    /// The goal's size: 100k pods, 20k services, 1M edges.
    pub fn full() -> MeshSpec {
        MeshSpec {
            namespaces: 200,
            services: 20_000,
            pods_per_workload: 5,
            deps_per_workload: 10,
            streams: 4,
            edges_per_batch: 1000,
            window: 8,
            controller_args: Vec::new(),
            write: true,
            timeout: Duration::from_secs(600),
            restart_and_churn: true,
            churn_per_sec: 100,
            churn_for: Duration::from_secs(60),
        }
    }

    /// `BENCH_QUICK`: 1k pods, 200 services, 10k edges.
    pub fn quick() -> MeshSpec {
        MeshSpec {
            namespaces: 10,
            services: 200,
            timeout: Duration::from_secs(60),
            churn_for: Duration::from_secs(2),
            ..MeshSpec::full()
        }
    }

    pub fn pods(&self) -> usize {
        self.services * self.pods_per_workload
    }

    pub fn edges(&self) -> usize {
        self.pods() * self.deps_per_workload
    }

    fn namespace_of(&self, w: usize) -> String {
        format!("ns-{:03}", w * self.namespaces / self.services)
    }

    fn service_name(w: usize) -> String {
        format!("svc-{w:05}")
    }

    fn fqdn(&self, w: usize) -> String {
        format!(
            "{}.{}.svc.cluster.local",
            Self::service_name(w),
            self.namespace_of(w)
        )
    }

    /// The services workload `w` calls: spread over the mesh (mostly other namespaces).
    fn deps_of(&self, w: usize) -> Vec<usize> {
        let mut deps = Vec::with_capacity(self.deps_per_workload);
        let mut k = 1;
        while deps.len() < self.deps_per_workload.min(self.services.saturating_sub(1)) {
            let d = (w + k * 7919) % self.services;
            k += 1;
            if d != w && !deps.contains(&d) {
                deps.push(d);
            }
        }
        deps
    }

    /// Pod `p`'s IP: 10.1.0.0 + p.
    fn pod_ip(p: usize) -> Ipv4Addr {
        Ipv4Addr::from(0x0A01_0000u32 + p as u32)
    }
}

/// A pod-template-hash-like suffix (k8s uses a safe alphabet: no vowels).
fn hash_suffix(mut x: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x5851_F42D_4C95_7F2D;
    (0..len)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            if x == 0 {
                x = 0x2545_F491_4F6C_DD1D;
            }
            c
        })
        .collect()
}

fn rfc3339(unix_s: u64) -> String {
    // Days since the epoch → civil date (Howard Hinnant's algorithm).
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// What was written into the fake API server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seeded {
    pub namespaces: usize,
    pub deployments: usize,
    pub replica_sets: usize,
    pub pods: usize,
    pub services: usize,
    /// Bytes of JSON of one pod as built (the API server adds managedFields etc.).
    pub pod_json_bytes: usize,
    pub seconds: f64,
}

/// Writes the mesh into `api`, one object at a time.
pub fn seed(api: &FakeApiServer, spec: &MeshSpec, now: u64) -> Result<Seeded> {
    let started = Instant::now();
    let mut s = Seeded::default();
    let apply = |obj: Value| -> Result<()> {
        api.apply_object(obj)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("fake API server refused an object: {e:?}"))
    };
    apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "lazyxds-system"}}))?;
    for n in 0..spec.namespaces {
        apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{n:03}"),
                "labels": {"istio-injection": "enabled", "kubernetes.io/metadata.name": format!("ns-{n:03}")},
                "annotations": {"lazyxds.io/enabled": "true"}}}))?;
        s.namespaces += 1;
    }
    let start_time = rfc3339(now.saturating_sub(3600));
    let mut p = 0usize;
    for w in 0..spec.services {
        let ns = spec.namespace_of(w);
        let name = MeshSpec::service_name(w);
        let labels = json!({"app": name, "version": "v1"});
        let cluster_ip = Ipv4Addr::from(0xAC14_0000u32 + w as u32).to_string();
        apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name, "service": name}},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                "selector": {"app": name},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                    {"name": "grpc", "port": 9090, "targetPort": 9090, "protocol": "TCP", "appProtocol": "grpc"}]}}))?;
        s.services += 1;
        let template_annotations = json!({"lazyxds.io/enabled": "true",
            "prometheus.io/scrape": "true", "prometheus.io/port": "8080"});
        let deploy_uid = format!("d{w:07}-0000-4000-8000-000000000000");
        apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "uid": deploy_uid, "labels": {"app": name},
                "annotations": {"deployment.kubernetes.io/revision": "2"}},
            "spec": {"replicas": spec.pods_per_workload,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": labels, "annotations": template_annotations},
                    "spec": {"serviceAccountName": name,
                        "containers": [{"name": "app", "image": format!("registry.example.com/{name}:1.4.2"),
                            "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "grpc"}]}]}}},
            "status": {"replicas": spec.pods_per_workload, "readyReplicas": spec.pods_per_workload}}))?;
        s.deployments += 1;
        // The current ReplicaSet and one old one (scaled to 0), as rollouts leave them.
        for (rev, replicas) in [(1u64, 0usize), (2, spec.pods_per_workload)] {
            let hash = rs_hash(w, rev);
            let rs = format!("{name}-{hash}");
            apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs, "namespace": ns,
                    "uid": format!("r{w:07}-{rev:04}-4000-8000-000000000000"),
                    "labels": {"app": name, "version": "v1", "pod-template-hash": hash},
                    "annotations": {"deployment.kubernetes.io/revision": rev.to_string()},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                        "uid": deploy_uid, "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name, "pod-template-hash": hash}}},
                "status": {"replicas": replicas}}))?;
            s.replica_sets += 1;
        }
        for _ in 0..spec.pods_per_workload {
            let pod = pod_json(spec, w, &pod_name(w, p), MeshSpec::pod_ip(p), &start_time);
            if p == 0 {
                s.pod_json_bytes = pod.to_string().len();
            }
            apply(pod)?;
            s.pods += 1;
            p += 1;
        }
    }
    s.seconds = started.elapsed().as_secs_f64();
    Ok(s)
}

/// The pod-template-hash of workload `w`'s ReplicaSet of revision `rev` (2 is current).
fn rs_hash(w: usize, rev: u64) -> String {
    hash_suffix((w as u64) << 8 | rev, 10)
}

/// The name of pod `p` (of workload `w`), as its current ReplicaSet names it.
fn pod_name(w: usize, p: usize) -> String {
    format!(
        "{}-{}-{}",
        MeshSpec::service_name(w),
        rs_hash(w, 2),
        hash_suffix(p as u64, 5)
    )
}

/// A running, Istio-injected pod of workload `w` named `name` with `ip` (which also
/// picks its node and uid).
fn pod_json(spec: &MeshSpec, w: usize, name: &str, ip: Ipv4Addr, start_time: &str) -> Value {
    let p = u32::from(ip) as usize;
    let ns = spec.namespace_of(w);
    let svc = MeshSpec::service_name(w);
    let current = rs_hash(w, 2);
    let rs = format!("{svc}-{current}");
    let ip = ip.to_string();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
            "uid": format!("p{p:010}-0000-4000-8000-000000000000"),
            "labels": {"app": svc, "version": "v1", "pod-template-hash": current,
                "security.istio.io/tlsMode": "istio",
                "service.istio.io/canonical-name": svc,
                "service.istio.io/canonical-revision": "v1"},
            "annotations": {"lazyxds.io/enabled": "true",
                "prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                "prometheus.io/path": "/stats/prometheus",
                "kubectl.kubernetes.io/default-container": "app",
                "sidecar.istio.io/status": "{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"workload-socket\",\"credential-socket\",\"workload-certs\",\"istio-envoy\",\"istio-data\",\"istio-podinfo\",\"istio-token\",\"istiod-ca-cert\"],\"imagePullSecrets\":null,\"revision\":\"default\"}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                "uid": format!("r{w:07}-0002-4000-8000-000000000000"),
                "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"serviceAccountName": svc, "nodeName": format!("node-{:03}", p % 500),
            "containers": [
                {"name": "app", "image": format!("registry.example.com/{svc}:1.4.2"),
                    "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0",
                    "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "hostIP": format!("192.168.{}.{}", (p % 500) / 250, (p % 500) % 250 + 1),
            "startTime": start_time,
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}})
}

/// `VmRSS` and `VmHWM` of `pid`, in bytes.
pub fn rss_hwm(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in {path}"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad line {line:?} in {path}"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The unlabelled samples of `GET /metrics` (name → value).
async fn metrics(http_port: u16) -> Result<HashMap<String, f64>> {
    let r = lazyxds_e2e::client::get(http_port, "/metrics").await?;
    ensure!(r.status == 200, "/metrics: {} {}", r.status, r.body);
    Ok(r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// A metric by the end of its name (prefix and `_total` vary).
fn metric(m: &HashMap<String, f64>, name: &str) -> u64 {
    m.iter()
        .filter(|(k, _)| k.trim_end_matches("_total").ends_with(name))
        .map(|(_, v)| *v as u64)
        .max()
        .unwrap_or(0)
}

/// One gateway-like stream, kept open until dropped.
struct EdgeStream {
    tx: mpsc::Sender<GatewayMessage>,
    reader: tokio::task::JoinHandle<Result<()>>,
    sent_batches: u64,
    acked: Arc<AtomicU64>,
}

/// Sends every edge of the pods `p % streams == s`, returns the open stream.
async fn feed_stream(port: u16, s: usize, spec: &MeshSpec, now: u64) -> Result<EdgeStream> {
    let deps: Vec<Vec<usize>> = (0..spec.services).map(|w| spec.deps_of(w)).collect();
    let mut edges = Vec::new();
    for p in (s..spec.pods()).step_by(spec.streams) {
        let w = p / spec.pods_per_workload;
        edges.extend(deps[w].iter().map(|&d| (p, d)));
    }
    feed(port, &format!("w{s}"), edges.into_iter(), spec, now).await
}

/// Sends the (pod, service called) edges over a new stream as gateway worker `worker`,
/// returns the open stream.
async fn feed(
    port: u16,
    worker: &str,
    edges_to_send: impl Iterator<Item = (usize, usize)>,
    spec: &MeshSpec,
    now: u64,
) -> Result<EdgeStream> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the controller's gRPC port")?;
    let mut client = EdgeSinkClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<GatewayMessage>(spec.window + 1);
    tx.send(GatewayMessage {
        kind: Some(gateway_message::Kind::Hello(Hello {
            gateway_id: "bench-p7".into(),
            worker: worker.to_string(),
            resync: false,
        })),
    })
    .await?;
    let inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .context("opening the edge stream")?
        .into_inner();
    let window = Arc::new(Semaphore::new(spec.window));
    let acked = Arc::new(AtomicU64::new(0));
    let (reader_window, reader_acked) = (window.clone(), acked.clone());
    let reader = tokio::spawn(async move {
        let on_acked = move |n| {
            reader_acked.fetch_add(n, Relaxed);
        };
        crate::ingest::read_acks(inbound, reader_window, on_acked)
            .await
            .map_err(anyhow::Error::from)
    });
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<Name> = Vec::new();
    let mut id_of = |value: String, names: &mut Vec<Name>| -> u32 {
        let next = ids.len() as u32 + 1;
        *ids.entry(value.clone()).or_insert_with(|| {
            names.push(Name { id: next, value });
            next
        })
    };
    let mut edges = Vec::with_capacity(spec.edges_per_batch);
    let mut seq = 0u64;
    let send = |edges: &mut Vec<Edge>, names: &mut Vec<Name>, seq: &mut u64| {
        *seq += 1;
        GatewayMessage {
            kind: Some(gateway_message::Kind::Batch(EdgeBatch {
                seq: *seq,
                sent_at_unix_s: now,
                names: std::mem::take(names),
                edges: std::mem::take(edges),
            })),
        }
    };
    for (p, d) in edges_to_send {
        let w = p / spec.pods_per_workload;
        let principal = id_of(
            format!(
                "spiffe://cluster.local/ns/{}/sa/{}",
                spec.namespace_of(w),
                MeshSpec::service_name(w)
            ),
            &mut names,
        );
        let host = spec.fqdn(d);
        let cluster = id_of(format!("outbound|80||{host}"), &mut names);
        let host = id_of(host, &mut names);
        edges.push(Edge {
            source_ip: MeshSpec::pod_ip(p).octets().to_vec(),
            host,
            cluster,
            requests: 1 + (p as u64 % 5),
            idle_s: 0,
            principal,
        });
        if edges.len() == spec.edges_per_batch {
            window.acquire().await?.forget();
            tx.send(send(&mut edges, &mut names, &mut seq)).await?;
        }
    }
    if !edges.is_empty() {
        window.acquire().await?.forget();
        tx.send(send(&mut edges, &mut names, &mut seq)).await?;
    }
    Ok(EdgeStream {
        tx,
        reader,
        sent_batches: seq,
        acked,
    })
}

/// What P7 measured (and P7b, P7c after it, when asked).
#[derive(Debug, Clone)]
pub struct MemResult {
    pub seeded: Seeded,
    pub rss_after_mesh: u64,
    pub rss: u64,
    pub hwm: u64,
    /// Seconds: the controller's list/watch until its writer's first pass; the edges
    /// until every batch was acked; then until the writer was idle.
    pub sync_s: f64,
    pub edges_s: f64,
    pub settle_s: f64,
    pub edges_sent: u64,
    pub batches: u64,
    /// From `/metrics` at the end.
    pub counters: HashMap<String, f64>,
    pub controller_args: Vec<String>,
    pub restart: Option<Result<RestartResult, String>>,
    pub churn: Option<Result<ChurnResult, String>>,
}

impl MemResult {
    pub fn counter(&self, name: &str) -> u64 {
        metric(&self.counters, name)
    }
}

/// P7b: a new controller process on the cluster the first one left (every Sidecar
/// written with its deps), as after a crash or a rollout.
#[derive(Debug, Clone)]
pub struct RestartResult {
    /// Seconds from the new process's start until its writer's first pass (every watch
    /// listed and the plan applied).
    pub first_pass_s: f64,
    /// Seconds from the start until the first correct write: a dependency new to one
    /// workload, sent over gRPC as soon as the port accepts (and again every 2 s, as a
    /// gateway resends), is in its Sidecar in the API server.
    pub first_correct_write_s: f64,
    /// Sidecar server-side applies the new process made, the new dependency's included.
    pub sidecar_applies: usize,
    /// Sidecar versions stored with fewer egress hosts or fewer learned deps than the
    /// version before them (from a watch of the fake's Sidecars), and a few of them.
    pub shrinking_writes: u64,
    pub shrunk: Vec<String>,
    pub sidecars: usize,
    pub rss: u64,
    pub hwm: u64,
}

/// P7c: pods replaced (deleted, and a new one with a new name and IP created) at a steady
/// rate on the restarted controller.
#[derive(Debug, Clone)]
pub struct ChurnResult {
    pub replaced: usize,
    pub churn_s: f64,
    /// Controller CPU (user + system) from the first replacement until it was idle again.
    pub cpu_s: f64,
    pub watch_events: u64,
    pub rss_before: u64,
    pub rss_end_of_churn: u64,
    /// Once idle again, after [`CHURN_SETTLE`].
    pub rss_after: u64,
    pub hwm: u64,
}

/// How long after the churn its RSS is read again (mimalloc's idle collects run every
/// second; the index prunes ended IP holders on its own clock).
pub const CHURN_SETTLE: Duration = Duration::from_secs(15);

/// Polls `/metrics` until `done` holds, then until `keys` stop changing for `quiet` (at
/// least twice the writer's last pass, so a pass in progress is not mistaken for idle).
async fn wait_metrics(
    http_port: u16,
    proc: &mut Proc,
    deadline: Instant,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
    keys: &[&str],
    quiet: Duration,
) -> Result<HashMap<String, f64>> {
    let mut last: Option<(Vec<u64>, Instant)> = None;
    loop {
        if let Some(status) = proc.exited() {
            bail!("lazyxds exited ({status}):\n{}", proc.log_tail(30));
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {what}; log tail:\n{}",
                proc.log_tail(20)
            );
        }
        if let Ok(m) = metrics(http_port).await {
            if done(&m) {
                let now: Vec<u64> = keys.iter().map(|k| metric(&m, k)).collect();
                let quiet = quiet.max(Duration::from_millis(2 * metric(&m, "writer_last_pass_ms")));
                match &last {
                    Some((prev, since)) if *prev == now => {
                        if since.elapsed() >= quiet {
                            return Ok(m);
                        }
                    }
                    _ => last = Some((now, Instant::now())),
                }
            } else {
                last = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sidecars in the fake API server that we own, and how many list `deps` learned deps.
fn sidecars_written(api: &FakeApiServer, deps: usize) -> (usize, usize) {
    let all = api.list_objects("networking.istio.io/v1", "Sidecar", None);
    let with_deps = all
        .iter()
        .filter(|s| deps_of_sidecar(s) == Some(deps))
        .count();
    (all.len(), with_deps)
}

/// The number of learned deps a Sidecar's `lazyxds.io/deps` lists.
fn deps_of_sidecar(s: &Value) -> Option<usize> {
    s["metadata"]["annotations"]["lazyxds.io/deps"]
        .as_str()
        .and_then(|d| serde_json::from_str::<serde_json::Map<String, Value>>(d).ok())
        .map(|d| d.len())
}

/// Egress hosts over a Sidecar's egress listeners.
fn hosts_of_sidecar(s: &Value) -> usize {
    s["spec"]["egress"].as_array().map_or(0, |e| {
        e.iter()
            .map(|l| l["hosts"].as_array().map_or(0, Vec::len))
            .sum()
    })
}

/// A controller process with its ports.
struct Controller {
    proc: Proc,
    grpc_port: u16,
    http_port: u16,
    args: Vec<String>,
    started: Instant,
}

fn spawn_controller(
    bin: &Path,
    spec: &MeshSpec,
    kubeconfig: &Path,
    log: &Path,
) -> Result<Controller> {
    let grpc_port = lazyxds_e2e::free_port()?;
    let http_port = lazyxds_e2e::free_port()?;
    let mut args: Vec<String> = [
        "run",
        "--kube",
        "--grpc-addr",
        &format!("127.0.0.1:{grpc_port}"),
        "--http-addr",
        &format!("127.0.0.1:{http_port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if spec.write {
        // The default (20/s) would take minutes for 20k Sidecars; memory is what counts.
        args.extend(["--max-writes-per-sec".into(), "100000".into()]);
    } else {
        args.push("--dry-run".into());
    }
    args.extend(spec.controller_args.iter().cloned());
    let mut cmd = Command::new(bin);
    cmd.args(&args)
        .env("KUBECONFIG", kubeconfig)
        .env("LAZYXDS_LOG_LEVEL", "info")
        .env("NO_COLOR", "1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_LOG");
    let started = Instant::now();
    let proc = Proc::spawn("lazyxds", &mut cmd, log)?;
    Ok(Controller {
        proc,
        grpc_port,
        http_port,
        args,
        started,
    })
}

/// Runs P7 once: the mesh in a fake API server, `bin` (`lazyxds`) in Kubernetes mode on
/// it, the edges over gRPC, then the process's memory. With `spec.restart_and_churn`,
/// then P7b ([`restart`]) and P7c ([`churn`]).
pub async fn run(bin: &Path, spec: &MeshSpec) -> Result<MemResult> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let api = FakeApiServer::start().await;
    let seeded = seed(&api, spec, now)?;
    // From here: seeding the bench's own fake takes from a few seconds to minutes on a
    // busy machine, and is not the controller's time.
    let deadline = Instant::now() + spec.timeout;
    progress!(
        "P7: mesh in the fake API server: {} namespaces, {} services, {} deployments, {} replicasets, {} pods ({:.1} s)",
        seeded.namespaces,
        seeded.services,
        seeded.deployments,
        seeded.replica_sets,
        seeded.pods,
        seeded.seconds
    );
    let dir = tempfile::tempdir()?;
    let kubeconfig = api
        .write_kubeconfig(dir.path())
        .context("writing the kubeconfig")?;
    let mut c = spawn_controller(bin, spec, &kubeconfig, &dir.path().join("lazyxds.log"))?;
    let (grpc_port, http_port) = (c.grpc_port, c.http_port);
    let pid = c.proc.pid();
    // Synced and the first pass over the whole mesh done (and written, with `write`).
    let m = wait_metrics(
        http_port,
        &mut c.proc,
        deadline,
        "the watches to sync and the writer's first pass",
        |m| {
            metric(m, "writer_passes") >= 1
                && (!spec.write || sidecars_written(&api, 0).0 >= spec.services)
        },
        &["writer_passes", "writer_applies", "watch_events"],
        Duration::from_secs(2),
    )
    .await?;
    let sync_s = c.started.elapsed().as_secs_f64();
    let errors = metric(&m, "watch_errors");
    ensure!(
        errors == 0,
        "{errors} watch errors; log tail:\n{}",
        c.proc.log_tail(20)
    );
    let (rss_after_mesh, _) = rss_hwm(pid)?;
    progress!(
        "P7: lazyxds synced the mesh and planned every Sidecar in {sync_s:.1} s: RSS {:.0} MB",
        crate::measures::mb(rss_after_mesh)
    );

    let edges_started = Instant::now();
    let shared = Arc::new(spec.clone());
    let feeds: Vec<_> = (0..spec.streams)
        .map(|s| {
            let spec = shared.clone();
            tokio::spawn(async move { feed_stream(grpc_port, s, &spec, now).await })
        })
        .collect();
    let mut streams = Vec::new();
    for feed in feeds {
        streams.push(feed.await.context("edge feed panicked")??);
    }
    let batches: u64 = streams.iter().map(|s| s.sent_batches).sum();
    loop {
        let acked: u64 = streams.iter().map(|s| s.acked.load(Relaxed)).sum();
        if acked >= batches {
            break;
        }
        if streams.iter().any(|s| s.reader.is_finished()) {
            bail!(
                "an edge stream ended early; log tail:\n{}",
                c.proc.log_tail(20)
            );
        }
        ensure!(Instant::now() < deadline, "timed out waiting for acks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let edges_s = edges_started.elapsed().as_secs_f64();
    let edges_sent = spec.edges() as u64;
    progress!(
        "P7: {} edges in {batches} batches over {} streams acked in {edges_s:.1} s",
        edges_sent,
        spec.streams
    );
    let settle_started = Instant::now();
    let counters = wait_metrics(
        http_port,
        &mut c.proc,
        deadline,
        "the writer to be idle after the edges",
        |m| {
            metric(m, "index_edges") >= edges_sent
                && (!spec.write
                    || sidecars_written(&api, spec.deps_per_workload).1 >= spec.services)
        },
        &[
            "writer_passes",
            "writer_applies",
            "watch_events",
            "index_deps_added",
        ],
        Duration::from_secs(2),
    )
    .await?;
    let settle_s = settle_started.elapsed().as_secs_f64();
    let (rss, hwm) = rss_hwm(pid)?;
    progress!(
        "P7: writer idle after {settle_s:.1} s more: RSS {:.0} MB, peak {:.0} MB",
        crate::measures::mb(rss),
        crate::measures::mb(hwm)
    );
    c.proc.terminate(Duration::from_secs(5));
    for s in streams {
        drop(s.tx);
        s.reader.abort();
    }
    let (mut restarted, mut churned) = (None, None);
    if spec.restart_and_churn && spec.write {
        let log = dir.path().join("lazyxds-restarted.log");
        match restart(bin, spec, &api, &kubeconfig, &log, now).await {
            Ok((r, mut c)) => {
                restarted = Some(Ok(r));
                churned = Some(
                    churn(spec, &api, &mut c, now)
                        .await
                        .map_err(|e| format!("{e:#}")),
                );
                c.proc.terminate(Duration::from_secs(5));
            }
            Err(e) => restarted = Some(Err(format!("{e:#}"))),
        }
    }
    drop(api);
    Ok(MemResult {
        seeded,
        rss_after_mesh,
        rss,
        hwm,
        sync_s,
        edges_s,
        settle_s,
        edges_sent,
        batches,
        counters,
        controller_args: c.args,
        restart: restarted,
        churn: churned,
    })
}

/// Counts stored Sidecar versions that list fewer hosts or deps than the version before
/// them, from a watch of the fake's Sidecars (a watch sees every version).
struct ShrinkWatch {
    shrinks: Arc<AtomicU64>,
    examples: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ShrinkWatch {
    /// Starts the watch; returns once its first list is in.
    async fn start(api: &FakeApiServer) -> Result<ShrinkWatch> {
        use kube::runtime::watcher::{self, Event};
        use tokio_stream::StreamExt;
        let resource = kube::api::ApiResource {
            group: "networking.istio.io".into(),
            version: "v1".into(),
            api_version: "networking.istio.io/v1".into(),
            kind: "Sidecar".into(),
            plural: "sidecars".into(),
        };
        let sidecars = kube::Api::<kube::api::DynamicObject>::all_with(api.client(), &resource);
        let shrinks = Arc::new(AtomicU64::new(0));
        let examples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (listed_tx, listed) = tokio::sync::oneshot::channel();
        let (count, seen) = (shrinks.clone(), examples.clone());
        let task = tokio::spawn(async move {
            let mut listed_tx = Some(listed_tx);
            let mut last: HashMap<(String, String), (usize, Option<usize>)> = HashMap::new();
            let mut stream = Box::pin(watcher::watcher(sidecars, watcher::Config::default()));
            while let Some(event) = stream.next().await {
                let obj = match event {
                    Ok(Event::InitApply(o)) | Ok(Event::Apply(o)) => o,
                    Ok(Event::InitDone) => {
                        if let Some(tx) = listed_tx.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let key = (
                    obj.metadata.namespace.clone().unwrap_or_default(),
                    obj.metadata.name.clone().unwrap_or_default(),
                );
                let value = serde_json::to_value(&obj).unwrap_or(Value::Null);
                let now = (hosts_of_sidecar(&value), deps_of_sidecar(&value));
                if let Some((hosts, deps)) = last.insert(key.clone(), now) {
                    if now.0 < hosts || now.1 < deps {
                        count.fetch_add(1, Relaxed);
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        if seen.len() < 5 {
                            seen.push(format!(
                                "{}/{}: hosts {hosts} → {}, deps {deps:?} → {:?}",
                                key.0, key.1, now.0, now.1
                            ));
                        }
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), listed)
            .await
            .context("the Sidecar watch did not list in 60 s")?
            .context("the Sidecar watch ended")?;
        Ok(ShrinkWatch {
            shrinks,
            examples,
            task,
        })
    }
}

/// P7b: a new controller on the cluster P7 left. Returns it running for P7c.
async fn restart(
    bin: &Path,
    spec: &MeshSpec,
    api: &FakeApiServer,
    kubeconfig: &Path,
    log: &Path,
    now: u64,
) -> Result<(RestartResult, Controller)> {
    use fake_apiserver::{RequestMatch, Verb};
    let deadline = Instant::now() + spec.timeout;
    let watch = ShrinkWatch::start(api).await?;
    api.clear_requests();
    let mut c = spawn_controller(bin, spec, kubeconfig, log)?;
    // Workload 0 calls a service it never called before, from its first pod.
    let known = spec.deps_of(0);
    let new_dep = (1..spec.services)
        .find(|d| !known.contains(d))
        .context("no service left to call")?;
    let (ns0, workload0) = (
        spec.namespace_of(0),
        format!("Deployment/{}", MeshSpec::service_name(0)),
    );
    let written = || {
        api.list_objects("networking.istio.io/v1", "Sidecar", Some(&ns0))
            .iter()
            .any(|s| {
                s["metadata"]["annotations"]["lazyxds.io/workload"].as_str() == Some(&workload0)
                    && deps_of_sidecar(s) == Some(known.len() + 1)
            })
    };
    let mut streams = Vec::new();
    let mut next_send = Instant::now();
    let mut first_pass_s = None;
    let first_correct_write_s = loop {
        if first_pass_s.is_none() {
            if let Ok(m) = metrics(c.http_port).await {
                if metric(&m, "writer_passes") >= 1 {
                    first_pass_s = Some(c.started.elapsed().as_secs_f64());
                }
            }
        }
        if written() {
            break c.started.elapsed().as_secs_f64();
        }
        if let Some(status) = c.proc.exited() {
            bail!("lazyxds exited ({status}):\n{}", c.proc.log_tail(30));
        }
        ensure!(
            Instant::now() < deadline,
            "timed out waiting for the new dependency's write; log tail:\n{}",
            c.proc.log_tail(20)
        );
        if Instant::now() >= next_send {
            // Refused until the gRPC port is up; then resent every 2 s, as a gateway does.
            if let Ok(s) = feed(
                c.grpc_port,
                "restart",
                std::iter::once((0, new_dep)),
                spec,
                now,
            )
            .await
            {
                streams.push(s);
                next_send = Instant::now() + Duration::from_secs(2);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_metrics(
        c.http_port,
        &mut c.proc,
        deadline,
        "the restarted writer to be idle",
        |m| metric(m, "writer_passes") >= 1,
        &["writer_passes", "writer_applies", "watch_events"],
        Duration::from_secs(2),
    )
    .await?;
    // The write needs a pass: when it was seen first, the first pass had ended.
    let first_pass_s = first_pass_s.unwrap_or(first_correct_write_s);
    for s in streams {
        drop(s.tx);
        s.reader.abort();
    }
    let sidecar_applies = api
        .requests_matching(&RequestMatch::any().verb(Verb::Apply).resource("sidecars"))
        .len();
    let (rss, hwm) = rss_hwm(c.proc.pid())?;
    // The watch has seen what the API server stored by now (same process, loopback).
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.task.abort();
    let shrunk = watch
        .examples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let r = RestartResult {
        first_pass_s,
        first_correct_write_s,
        sidecar_applies,
        shrinking_writes: watch.shrinks.load(Relaxed),
        shrunk,
        sidecars: sidecars_written(api, 0).0,
        rss,
        hwm,
    };
    progress!(
        "P7b: restarted: first correct write after {:.1} s, {} Sidecar applies, {} shrinking; RSS {:.0} MB, peak {:.0} MB",
        r.first_correct_write_s,
        r.sidecar_applies,
        r.shrinking_writes,
        crate::measures::mb(rss),
        crate::measures::mb(hwm)
    );
    Ok((r, c))
}

/// P7c: replaces `spec.churn_per_sec` pods a second for `spec.churn_for` (every one a
/// different pod, spread over the mesh): delete, then create its successor with a new
/// name and IP, as a rollout or a node drain does.
async fn churn(
    spec: &MeshSpec,
    api: &FakeApiServer,
    c: &mut Controller,
    now: u64,
) -> Result<ChurnResult> {
    let deadline = Instant::now() + spec.churn_for + spec.timeout;
    let pid = c.proc.pid();
    let tick_s = 1.0 / crate::procfs::clock_ticks_per_s() as f64;
    // The baseline is read as the final value is: idle, then settled as long. Read right
    // after the restart's pass, it held that pass's pages (1.3 GB at 100k pods) and the
    // growth came out negative.
    wait_metrics(
        c.http_port,
        &mut c.proc,
        deadline,
        "the controller to be idle before the churn",
        |_| true,
        &["writer_passes", "writer_applies", "watch_events"],
        Duration::from_secs(2),
    )
    .await?;
    tokio::time::sleep(CHURN_SETTLE).await;
    let before = metrics(c.http_port).await?;
    let (_, _, cpu_before) = lazyxds_e2e::process::rss_and_cpu(pid)?;
    let (rss_before, _) = rss_hwm(pid)?;
    let total = (spec.churn_per_sec as f64 * spec.churn_for.as_secs_f64()) as usize;
    let total = total.min(spec.pods());
    // Distinct pods, spread over workloads: a stride coprime with the pod count.
    let stride = (spec.pods() / total.max(1)).max(1);
    let start_time = rfc3339(now);
    let started = Instant::now();
    let period = Duration::from_secs(1) / spec.churn_per_sec.max(1) as u32;
    for i in 0..total {
        let p = i * stride % spec.pods();
        let w = p / spec.pods_per_workload;
        let ns = spec.namespace_of(w);
        api.delete_object("v1", "Pod", Some(&ns), &pod_name(w, p))
            .map_err(|e| anyhow::anyhow!("deleting pod {p}: {e:?}"))?;
        let name = format!(
            "{}-{}",
            pod_name(w, p),
            hash_suffix(1_000_000 + i as u64, 3)
        );
        // New IPs: 10.2.0.0 + i (the mesh's are 10.1.x.x).
        let ip = Ipv4Addr::from(0x0A02_0000u32 + i as u32);
        api.apply_object(pod_json(spec, w, &name, ip, &start_time))
            .map_err(|e| anyhow::anyhow!("creating pod {name}: {e:?}"))?;
        let due = started + period * (i as u32 + 1);
        tokio::time::sleep_until(due.into()).await;
    }
    let churn_s = started.elapsed().as_secs_f64();
    let (rss_end_of_churn, _) = rss_hwm(pid)?;
    let after = wait_metrics(
        c.http_port,
        &mut c.proc,
        deadline,
        "the controller to be idle after the churn",
        |_| true,
        &["writer_passes", "writer_applies", "watch_events"],
        Duration::from_secs(2),
    )
    .await?;
    let (_, _, cpu_after) = lazyxds_e2e::process::rss_and_cpu(pid)?;
    tokio::time::sleep(CHURN_SETTLE).await;
    let (rss_after, hwm) = rss_hwm(pid)?;
    let r = ChurnResult {
        replaced: total,
        churn_s,
        cpu_s: cpu_after.saturating_sub(cpu_before) as f64 * tick_s,
        watch_events: metric(&after, "watch_events")
            .saturating_sub(metric(&before, "watch_events")),
        rss_before,
        rss_end_of_churn,
        rss_after,
        hwm,
    };
    progress!(
        "P7c: {} pods replaced in {:.1} s: {:.0} µs of controller CPU per replacement; RSS {:.0} → {:.0} (end of churn) → {:.0} MB ({} s later)",
        r.replaced,
        r.churn_s,
        r.cpu_s * 1e6 / r.replaced.max(1) as f64,
        crate::measures::mb(r.rss_before),
        crate::measures::mb(r.rss_end_of_churn),
        crate::measures::mb(r.rss_after),
        CHURN_SETTLE.as_secs()
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_shape() {
        let spec = MeshSpec::quick();
        assert_eq!((spec.pods(), spec.edges()), (1000, 10_000));
        let full = MeshSpec::full();
        assert_eq!((full.pods(), full.edges()), (100_000, 1_000_000));
        for w in [0, 7, 199] {
            let deps = spec.deps_of(w);
            assert_eq!(deps.len(), 10);
            assert!(!deps.contains(&w));
        }
        assert_eq!(spec.namespace_of(199), "ns-009");
        assert_eq!(MeshSpec::pod_ip(0), Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(rfc3339(1_795_687_200), "2026-11-26T10:00:00Z");
        assert_eq!(hash_suffix(3, 10).len(), 10);
        assert_ne!(hash_suffix(3, 5), hash_suffix(4, 5));
    }
}
