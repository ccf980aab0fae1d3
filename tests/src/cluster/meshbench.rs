//! The mini-mesh's measurements (issue 16, `make bench`: `p5_e2e`, `p6_istiod`, `p9`) and
//! `make demo-mesh`: the same real control plane and process node as `tests/tests/mesh.rs`,
//! started by [`MiniMesh::start`], plus what the measures need: requests sent from inside a
//! pod ([`pod_get`]), a sidecar's Envoy figures ([`envoy_figures`]), istiod's CPU time and
//! push metrics ([`IstiodSample`]), a mesh of bulk Services ([`create_bulk_services`]), and a
//! small SVG line plot ([`svg_lines`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::inject::Injector;
use super::lazyxds::{leader_pod, Installed, NAMESPACE};
use super::node::{self, Node, PodInfo, APP_UID, BRIDGE_IP};
use super::{http_get_plain, Cluster, ClusterOptions, CLUSTER_DOMAIN};
use crate::client::{BACKEND_HEADER, REQUEST_XFCC_HEADER};

/// The app image of the mini-mesh (`src/bin/mesh-app.rs`).
pub const APP_IMAGE: &str = "lazyxds-test/mesh-app";

/// The control plane, the cluster's DNS for the given namespaces, the node, and the install
/// (its Deployments injected and run on the node), the controller leading.
pub struct MiniMesh {
    pub cluster: &'static Cluster,
    pub injector: &'static Injector,
    pub node: Node,
    pub dns: NamespaceDns,
    /// How long the start took.
    pub started_in: Duration,
}

impl MiniMesh {
    /// `mesh_app`: the `mesh-app` binary; `dns_namespaces`: the namespaces whose Services
    /// the pods' nameserver answers (see [`NamespaceDns`]).
    pub async fn start(mesh_app: PathBuf, dns_namespaces: Vec<String>) -> Result<MiniMesh> {
        let t0 = Instant::now();
        let bridge = node::make_bridge()?;
        let cluster: &'static Cluster = tokio::task::spawn_blocking(move || {
            Cluster::shared_with(ClusterOptions {
                listen: bridge,
                ..ClusterOptions::default()
            })
        })
        .await??;
        let dns = NamespaceDns::start(cluster, dns_namespaces).await?;
        let injector: &'static Injector = Box::leak(Box::new(Injector::new(cluster)?));
        let (_, rendered) = super::lazyxds::render(&[])?;
        let controller_image = rendered
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "lazyxds")
            .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
            .ok_or_else(|| anyhow!("the install renders no controller image"))?
            .to_string();
        let images = BTreeMap::from([
            (APP_IMAGE.to_string(), mesh_app),
            (controller_image, crate::paths::lazyxds_bin()?),
        ]);
        let node = tokio::task::spawn_blocking(move || Node::start(cluster, images)).await??;
        tokio::task::spawn_blocking(move || {
            Installed::shared_injected(cluster, injector).map(|_| ())
        })
        .await??;
        // Two controller replicas and the gateway.
        node.wait_ready(NAMESPACE, "lazyxds-", 3, Duration::from_secs(240))
            .await?;
        wait_leader(cluster).await?;
        Ok(MiniMesh {
            cluster,
            injector,
            node,
            dns,
            started_in: t0.elapsed(),
        })
    }

    /// Applies `objects`, workloads injected as the webhook would.
    pub fn apply_injected(&self, objects: &[Value]) -> Result<()> {
        let yaml = objects
            .iter()
            .map(serde_norway::to_string)
            .collect::<std::result::Result<Vec<_>, _>>()?
            .join("---\n");
        let injected = self.injector.inject(&yaml)?;
        self.cluster.apply(&injected)?;
        Ok(())
    }
}

/// The controller pod that leads (it labels itself `lazyxds.io/leader=true`).
pub async fn wait_leader(c: &Cluster) -> Result<String> {
    let t = Instant::now();
    loop {
        if let Some(name) = leader_pod(c)? {
            return Ok(name);
        }
        if t.elapsed() > Duration::from_secs(90) {
            bail!("no controller leads after 90 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pods' nameserver (kube-dns's part they need, on the bridge, port 53), answering the
/// Services of the given namespaces only. `node::ClusterDns` lists every Service of the
/// cluster twice a second with kubectl; with the bench's 2,000 bulk Services that is a
/// core's worth of JSON, noise on the CPU istiod is measured on, and the bulk Services are
/// never called by name.
pub struct NamespaceDns {
    task: tokio::task::JoinHandle<()>,
}

impl NamespaceDns {
    pub async fn start(cluster: &'static Cluster, namespaces: Vec<String>) -> Result<NamespaceDns> {
        let dns = crate::dns::FakeDns::start_on((BRIDGE_IP, 53).into(), BTreeMap::new()).await?;
        let task = tokio::spawn(async move {
            loop {
                let nss = namespaces.clone();
                let listed = tokio::task::spawn_blocking(move || {
                    let mut names = BTreeMap::new();
                    for ns in nss {
                        // A namespace not created yet lists nothing.
                        for s in cluster.list("services", &ns).unwrap_or_default() {
                            let Some(ip) = s["spec"]["clusterIP"]
                                .as_str()
                                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                            else {
                                continue;
                            };
                            let name = s["metadata"]["name"].as_str().unwrap_or_default();
                            names.insert(format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"), ip);
                        }
                    }
                    names
                })
                .await;
                if let Ok(names) = listed {
                    dns.set_names(names);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(NamespaceDns { task })
    }
}

impl Drop for NamespaceDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Deployment of the mesh app with one replica.
pub fn app_deployment(ns: &str, name: &str, annotations: Value, args: &[&str], port: u16) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": APP_IMAGE, "args": args,
                    "ports": [{"containerPort": port, "name": "http"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1}}]}}}})
}

/// What one request sent from inside a pod got.
#[derive(Debug, Clone)]
pub struct Got {
    /// When it was sent, since the caller's `epoch`.
    pub at: Duration,
    pub status: u16,
    pub backend: Option<String>,
    pub xfcc: Option<String>,
    pub error: Option<String>,
}

impl Got {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.status == 200
    }

    /// Whether the backend's sidecar saw the lazy gateway as the caller.
    pub fn via_gateway(&self) -> bool {
        self.xfcc
            .as_deref()
            .is_some_and(|x| x.contains(&format!("/ns/{NAMESPACE}/sa/lazyxds-gateway")))
    }

    /// Whether the request went direct: the backend's sidecar saw `client_ns`'s own
    /// identity and not the gateway's (through the gateway, the header holds both: the
    /// gateway forwards the client's element and its own is appended).
    pub fn direct_from(&self, client_ns: &str) -> bool {
        !self.via_gateway()
            && self
                .xfcc
                .as_deref()
                .is_some_and(|x| x.contains(&format!("URI=spiffe://cluster.local/ns/{client_ns}/")))
    }
}

/// A GET of `url` from inside the pod, as its app would send it: in the pod's network and
/// mount namespaces (its resolv.conf), as the app's uid, so the sidecar captures it and the
/// agent answers its DNS. `curl` is the client.
pub fn pod_get(pod: &PodInfo, url: &str, epoch: Instant) -> Got {
    let at = epoch.elapsed();
    let pid = pod.holder_pid.to_string();
    let uid = APP_UID.to_string();
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-n", "-m", "--", "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args([
            "--clear-groups",
            "--",
            "curl",
            "-s",
            "-D",
            "-",
            "--max-time",
            "5",
            url,
        ])
        .output();
    let mut got = Got {
        at,
        status: 0,
        backend: None,
        xfcc: None,
        error: None,
    };
    match out {
        Ok(o) if o.status.success() => {
            // The head, then the body (kept when the status is not 200: Envoy says why).
            let text = String::from_utf8_lossy(&o.stdout);
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            for line in head.lines() {
                if let Some(code) = line.strip_prefix("HTTP/") {
                    got.status = code
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                } else if let Some((k, v)) = line.split_once(':') {
                    let v = v.trim().to_string();
                    if k.eq_ignore_ascii_case(BACKEND_HEADER) {
                        got.backend = Some(v);
                    } else if k.eq_ignore_ascii_case(REQUEST_XFCC_HEADER) {
                        got.xfcc = Some(v);
                    }
                }
            }
            if got.status != 200 {
                // Which Envoy answered, and why, is in the head (`server`, `x-envoy-*`).
                let head: Vec<&str> = head.lines().skip(1).collect();
                got.error = Some(format!(
                    "{url}: {} {:?} [{}]",
                    got.status,
                    body.chars().take(120).collect::<String>(),
                    head.join("; ")
                ));
            }
        }
        Ok(o) => {
            got.error = Some(format!(
                "curl {url}: {} {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => got.error = Some(format!("nsenter curl {url}: {e}")),
    }
    got
}

/// A sidecar's Envoy, read on its admin port: `server.memory_allocated`, the config dump's
/// size (with EDS), and its dynamic clusters.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvoyFigures {
    pub memory_allocated: u64,
    pub config_dump_bytes: u64,
    pub clusters: u64,
}

pub fn envoy_figures(pod: &PodInfo) -> Result<EnvoyFigures> {
    let stats = node::proxy_stats(
        pod,
        "server.memory_allocated|cluster_manager.active_clusters",
    )?;
    let stat = |k: &str| {
        stats
            .get(k)
            .copied()
            .ok_or_else(|| anyhow!("{}/{}: no {k} in its stats", pod.namespace, pod.name))
    };
    let pid = pod.holder_pid.to_string();
    let dump = Command::new("nsenter")
        .args(["-t", &pid, "-n", "--", "curl", "-sf", "--max-time", "60"])
        .arg("http://127.0.0.1:15000/config_dump?include_eds")
        .output()
        .context("nsenter curl config_dump")?;
    if !dump.status.success() {
        bail!(
            "{}/{}: config_dump failed ({})",
            pod.namespace,
            pod.name,
            dump.status
        );
    }
    Ok(EnvoyFigures {
        memory_allocated: stat("server.memory_allocated")?,
        config_dump_bytes: dump.stdout.len() as u64,
        clusters: stat("cluster_manager.active_clusters")?,
    })
}

/// The sidecar's active cluster count, or 0 if it does not answer.
pub fn active_clusters(pod: &PodInfo) -> u64 {
    node::proxy_stats(pod, "cluster_manager.active_clusters")
        .ok()
        .and_then(|s| s.get("cluster_manager.active_clusters").copied())
        .unwrap_or(0)
}

/// `n` Services `svc-<i>` in `ns` (one HTTP port, 9080) without pods: selectorless, each
/// with an EndpointSlice holding one address (198.18.128.0 onwards: the pod range, where
/// nothing listens), created through the API server in chunks.
pub fn create_bulk_services(c: &Cluster, ns: &str, n: usize) -> Result<()> {
    const CHUNK: usize = 250;
    let base = u32::from(Ipv4Addr::new(198, 18, 128, 0));
    for start in (0..n).step_by(CHUNK) {
        let mut items = Vec::new();
        for i in start..(start + CHUNK).min(n) {
            let name = format!("svc-{i}");
            let ip = Ipv4Addr::from(base + i as u32 + 1);
            items.push(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]}}));
            items.push(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]}),
            );
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
        c.kubectl(&["create", "-f", "-", "-o", "name"], Some(&list))
            .with_context(|| format!("creating bulk Services {start}.."))?;
    }
    Ok(())
}

/// istiod's CPU time and its push metrics at one moment.
#[derive(Debug, Clone, Default)]
pub struct IstiodSample {
    pub at: Option<Instant>,
    /// utime + stime of the istiod process, seconds.
    pub cpu_s: f64,
    /// Σ `pilot_xds_push_time` (every xDS type), seconds, and its count.
    pub push_time_sum: f64,
    pub push_time_count: f64,
    /// `pilot_proxy_convergence_time`: sum (s) and count.
    pub convergence_sum: f64,
    pub convergence_count: f64,
    /// Σ `pilot_xds_pushes` (every type).
    pub pushes: f64,
    /// `pilot_xds`: proxies connected.
    pub connected: f64,
}

impl IstiodSample {
    pub fn take(c: &Cluster) -> Result<IstiodSample> {
        let pid = c
            .pid_of("istiod")
            .ok_or_else(|| anyhow!("istiod is not running"))?;
        let metrics = http_get_plain(c.listen(), c.istiod().monitoring, "/metrics")?;
        let sum = |name: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok(IstiodSample {
            at: Some(Instant::now()),
            cpu_s: process_cpu_s(pid)?,
            push_time_sum: sum("pilot_xds_push_time_sum"),
            push_time_count: sum("pilot_xds_push_time_count"),
            convergence_sum: sum("pilot_proxy_convergence_time_sum"),
            convergence_count: sum("pilot_proxy_convergence_time_count"),
            pushes: sum("pilot_xds_pushes"),
            connected: sum("pilot_xds"),
        })
    }
}

/// utime + stime of a process, seconds (`/proc/<pid>/stat`, in USER_HZ ticks: 100 per
/// second on Linux, whatever the kernel's HZ).
pub fn process_cpu_s(pid: u32) -> Result<f64> {
    let (_, _, ticks) = crate::process::rss_and_cpu(pid)?;
    Ok(ticks as f64 / 100.0)
}

/// Waits until istiod is quiet: no new push and no new convergence for `quiet`, at most
/// `timeout`. Returns the last sample.
pub async fn wait_istiod_quiet(
    c: &'static Cluster,
    quiet: Duration,
    timeout: Duration,
) -> Result<IstiodSample> {
    let t = Instant::now();
    let mut last = sample(c).await?;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = sample(c).await?;
        if s.pushes != last.pushes || s.convergence_count != last.convergence_count {
            since = Instant::now();
        }
        last = s;
        if since.elapsed() >= quiet {
            return Ok(last);
        }
        if t.elapsed() > timeout {
            bail!("istiod still pushing after {timeout:?}");
        }
    }
}

async fn sample(c: &'static Cluster) -> Result<IstiodSample> {
    tokio::task::spawn_blocking(move || IstiodSample::take(c)).await?
}

/// Asks istiod for a full push of its current state to every connected proxy (its debug
/// endpoint `/debug/adsz?push=true`: `AdsPushAll`, a forced push with reason DebugTrigger,
/// pilot/pkg/xds/debug.go:1135 and ads.go:557).
/// From an address other than loopback istiod wants an identity from its system namespace
/// (`allowAuthenticatedOrLocalhost`, `AuthorizeDebugRequest`: debug.go:244 and 312): a
/// token of `istio-system/default` for istiod's audience, as a bearer.
pub fn trigger_full_push(c: &Cluster) -> Result<String> {
    use std::io::{Read, Write};
    let token = c.token(super::ISTIO_NAMESPACE, "default", Some("istio-ca"))?;
    let addr = (c.listen(), c.istiod().http);
    let mut s = std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET /debug/adsz?push=true HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n",
        c.listen()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "istiod /debug/adsz?push=true: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}

/// p-th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One line of a plot: a label and (x, y) points; `dashed` for the second series of a pair.
pub struct PlotLine {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// A line plot as a small standalone SVG (axes, ticks, legend).
pub fn svg_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[PlotLine],
) -> Result<()> {
    use std::fmt::Write as _;
    const W: f64 = 900.0;
    const H: f64 = 480.0;
    const L: f64 = 70.0;
    const R: f64 = 220.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let pts = lines.iter().flat_map(|l| l.points.iter());
    let xmax = pts.clone().map(|p| p.0).fold(1.0_f64, f64::max);
    let ymax = pts.map(|p| p.1).fold(1.0_f64, f64::max) * 1.1;
    let sx = |x: f64| L + x / xmax * (W - L - R);
    let sy = |y: f64| H - B - y / ymax * (H - T - B);
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r#"<path d="M{L} {T} V{} H{}" stroke="black" fill="none"/>"#,
        H - B,
        W - R
    );
    for i in 0..=5 {
        let (xv, yv) = (xmax * i as f64 / 5.0, ymax * i as f64 / 5.0);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0}</text><text x="{}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
            sx(xv),
            H - B + 16.0,
            xv,
            L - 6.0,
            sy(yv) + 4.0,
            yv
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (L + W - R) / 2.0,
        H - 12.0,
        esc(x_desc)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        H / 2.0,
        H / 2.0,
        esc(y_desc)
    );
    for (i, l) in lines.iter().enumerate() {
        let color = COLORS[i / 2 % COLORS.len()];
        let dash = if l.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let d: Vec<String> = l
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            d.join(" ")
        );
        let ly = T + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            W - R + 10.0,
            W - R + 35.0,
            W - R + 40.0,
            ly + 4.0,
            esc(&l.label)
        );
    }
    s.push_str("</svg>\n");
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn got(status: u16, xfcc: Option<&str>) -> Got {
        Got {
            at: Duration::ZERO,
            status,
            backend: Some("echo".into()),
            xfcc: xfcc.map(str::to_string),
            error: None,
        }
    }

    #[test]
    fn direct_means_the_clients_identity_and_not_the_gateways() {
        let client = "By=spiffe://cluster.local/ns/shop/sa/default;Hash=ab;\
                      URI=spiffe://cluster.local/ns/load/sa/default";
        let gateway = format!(
            "{client},By=spiffe://cluster.local/ns/shop/sa/default;Hash=cd;\
             URI=spiffe://cluster.local/ns/{NAMESPACE}/sa/lazyxds-gateway"
        );
        let cases = [
            ("direct", got(200, Some(client)), true, false),
            // Through the gateway the header holds the client's element too.
            ("via the gateway", got(200, Some(&gateway)), false, true),
            (
                "another namespace's identity",
                got(200, Some("URI=spiffe://cluster.local/ns/loader/sa/x")),
                false,
                false,
            ),
            ("no header", got(200, None), false, false),
        ];
        for (what, g, direct, via) in cases {
            assert_eq!(g.direct_from("load"), direct, "{what}: direct");
            assert_eq!(g.via_gateway(), via, "{what}: via the gateway");
            assert!(g.ok(), "{what}");
        }
        assert!(!got(503, Some(client)).ok());
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 99.0), 20.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn svg_plot_is_well_formed_with_a_polyline_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let lines = [
            PlotLine {
                label: "a <gw>".into(),
                points: vec![(0.0, 4.0), (1.0, 0.0)],
                dashed: false,
            },
            PlotLine {
                label: "a & direct".into(),
                points: vec![(0.0, 6.0), (1.0, 10.0)],
                dashed: true,
            },
        ];
        svg_lines(&path, "t", "x", "y", &lines).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;gw>") && svg.contains("a &amp; direct"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
