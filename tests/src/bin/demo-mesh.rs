//! `make demo-mesh` (Linux, root): the mini-mesh live. The real control plane (etcd,
//! kube-apiserver, istiod), the process node running pods with Istio's sidecar, the lazyxds
//! install (gateway + controller) on it, and three clients sending real requests: two opted
//! in (by short name and by FQDN), one not. Every second it prints, per client, how many
//! requests went through the lazy gateway and how many direct (from the identity the
//! backend's sidecar saw); then the Sidecars lazyxds wrote and what they removed from each
//! client's Envoy; and a plot of the transition (`target/demo-mesh/transition.svg`).
//! Runs under `tests/cluster/netns-run`; `DEMO_MESH_SECONDS` sets the live part (40 s).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use lazyxds_e2e::cluster::lazyxds::NAMESPACE;
use lazyxds_e2e::cluster::meshbench::{
    app_deployment, create_bulk_services, envoy_figures, svg_lines, MiniMesh, PlotLine, APP_IMAGE,
};
use lazyxds_e2e::cluster::node::PodInfo;
use serde_json::{json, Value};

const SHOP: &str = "shop";
const FRONT: &str = "front";
const CATALOG: &str = "catalog";
const CATALOG_SERVICES: usize = 200;
const INTERVAL_MS: u64 = 100;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(run()),
        Err(e) => Err(e.into()),
    };
    // The node's pods and the control plane die with this process.
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("demo-mesh: {e:#}");
            std::process::exit(1)
        }
    }
}

fn client(ns: &str, name: &str, annotations: Value, urls: &[&str]) -> Value {
    let interval = INTERVAL_MS.to_string();
    let mut args = vec![
        "client",
        "--out",
        "results.jsonl",
        "--interval-ms",
        &interval,
    ];
    for u in urls {
        args.extend(["--url", u]);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": APP_IMAGE, "args": args}]}}}})
}

/// Per second since `start_ms`: (via the gateway, direct, failed) of one client.
fn per_second(pod: &PodInfo, start_ms: u64) -> BTreeMap<u64, (u64, u64, u64)> {
    let text = std::fs::read_to_string(pod.dir.join("root/results.jsonl")).unwrap_or_default();
    let mut out: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let at = v["at_ms"].as_u64().unwrap_or(0);
        let e = out.entry(at.saturating_sub(start_ms) / 1000).or_default();
        let xfcc = v["xfcc"].as_str().unwrap_or_default();
        if v["status"] != 200 {
            e.2 += 1;
        } else if xfcc.contains(&format!("/ns/{NAMESPACE}/sa/lazyxds-gateway")) {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    out
}

/// When a client sent its first request (ms since the epoch), from its results file.
fn first_request_ms(pod: &PodInfo) -> Option<u64> {
    let text = std::fs::read_to_string(pod.dir.join("root/results.jsonl")).ok()?;
    let first: Value = serde_json::from_str(text.lines().next()?).ok()?;
    first["at_ms"].as_u64()
}

async fn run() -> Result<()> {
    let seconds: u64 = match std::env::var("DEMO_MESH_SECONDS") {
        Ok(v) if !v.is_empty() => v.parse().context("DEMO_MESH_SECONDS")?,
        _ => 40,
    };
    let out_dir = lazyxds_e2e::paths::workspace_root().join("target/demo-mesh");
    std::fs::create_dir_all(&out_dir)?;
    let mesh_app = std::env::current_exe()?.with_file_name("mesh-app");
    if !mesh_app.is_file() {
        bail!(
            "{} not found: cargo build -p lazyxds-e2e --bin mesh-app",
            mesh_app.display()
        );
    }
    lazyxds_e2e::set_verbose(false);
    println!("demo-mesh: starting etcd, kube-apiserver, istiod, the node and lazyxds (1-3 min)…");
    let mut mesh = MiniMesh::start(mesh_app, vec![SHOP.into(), FRONT.into()]).await?;
    let c = mesh.cluster;
    println!(
        "demo-mesh: control plane and lazyxds up in {:.0?}",
        mesh.started_in
    );
    let mut objects = Vec::new();
    for ns in [SHOP, FRONT] {
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "annotations": {"lazyxds.io/enabled": "true"}}}));
    }
    c.apply_json(&objects)?;
    for ns in [SHOP, FRONT] {
        let t = Instant::now();
        while c.get("serviceaccount", Some(ns), "default")?.is_none() {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("namespace {ns}: no default ServiceAccount after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut objects = Vec::new();
    for svc in ["reviews", "ratings"] {
        objects.push(app_deployment(
            SHOP,
            svc,
            json!({}),
            &["echo", "--name", svc, "--port", "9080"],
            9080,
        ));
        objects.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc, "namespace": SHOP},
            "spec": {"selector": {"app": svc}, "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}}));
    }
    mesh.apply_injected(&objects)?;
    for svc in ["reviews-", "ratings-"] {
        mesh.node
            .wait_ready(SHOP, svc, 1, Duration::from_secs(240))
            .await?;
    }
    // The rest of the mesh: Services the clients never call (no pods, one endpoint each),
    // so what a Sidecar removes shows.
    c.apply_json(&[
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CATALOG}}),
    ])?;
    tokio::task::spawn_blocking(move || create_bulk_services(c, CATALOG, CATALOG_SERVICES))
        .await??;
    let fqdn = format!("http://reviews.{SHOP}.svc.cluster.local:9080/");
    mesh.apply_injected(&[
        client(
            SHOP,
            "caller",
            json!({}),
            &["http://reviews:9080/", "http://ratings:9080/"],
        ),
        client(FRONT, "caller", json!({}), &[&fqdn]),
        client(
            FRONT,
            "plain-caller",
            json!({"lazyxds.io/enabled": "false"}),
            &[&fqdn],
        ),
    ])?;
    let mut clients = Vec::new();
    for (ns, name) in [
        (SHOP, "caller-"),
        (FRONT, "caller-"),
        (FRONT, "plain-caller-"),
    ] {
        let pod = mesh
            .node
            .wait_ready(ns, name, 1, Duration::from_secs(240))
            .await?
            .remove(0);
        clients.push(pod);
    }
    let label = |p: &PodInfo| {
        let opted = if p.name.starts_with("plain-") {
            "not opted in"
        } else {
            "opted in"
        };
        format!(
            "{}/{} ({opted})",
            p.namespace,
            p.name.rsplitn(3, '-').last().unwrap_or(&p.name)
        )
    };
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    // Second 0 is the first request of any client (they start as their pods become Ready,
    // before the last one is): the rows already past are printed at once, then one a second.
    let start_ms = clients
        .iter()
        .filter_map(first_request_ms)
        .min()
        .unwrap_or_else(now_ms);
    println!("\nper second: requests via the lazy gateway / direct / failed, per client");
    println!(
        "{:>4}  {}",
        "s",
        clients
            .iter()
            .map(|p| format!("{:>34}", label(p)))
            .collect::<Vec<_>>()
            .join("")
    );
    for s in 0..seconds {
        let due = start_ms + (s + 1) * 1000 + 200;
        let now = now_ms();
        if due > now {
            tokio::time::sleep(Duration::from_millis(due - now)).await;
        }
        let row: Vec<String> = clients
            .iter()
            .map(|p| {
                let (g, d, f) = per_second(p, start_ms).get(&s).copied().unwrap_or_default();
                format!("{:>34}", format!("{g:>3} gw {d:>3} direct {f:>2} failed"))
            })
            .collect();
        println!("{s:>4}  {}", row.join(""));
    }

    println!("\nSidecars written by lazyxds:");
    for ns in [SHOP, FRONT] {
        for sc in c.list("sidecars.networking.istio.io", ns)? {
            let name = sc["metadata"]["name"].as_str().unwrap_or_default();
            let deps = sc["metadata"]["annotations"]["lazyxds.io/deps"]
                .as_str()
                .unwrap_or("{}");
            let hosts = &sc["spec"]["egress"][0]["hosts"];
            println!("  {ns}/{name}\n    deps: {deps}\n    egress hosts: {hosts}");
        }
    }
    // `lazyxds report` reads a topology file and the Sidecars of file mode; in a cluster the
    // same figures come from each sidecar's own Envoy.
    println!("\nreport (from each client's Envoy: what its Sidecar removed):");
    for p in &clients {
        match envoy_figures(p) {
            Ok(f) => println!(
                "  {:<38} {:>4} clusters, config dump {:>8} B, server.memory_allocated {:>5.1} MB",
                label(p),
                f.clusters,
                f.config_dump_bytes,
                f.memory_allocated as f64 / 1e6
            ),
            Err(e) => println!("  {}: {e:#}", label(p)),
        }
    }
    let mut lines = Vec::new();
    let mut totals = Vec::new();
    for p in &clients {
        let per = per_second(p, start_ms);
        let pts = |f: fn(&(u64, u64, u64)) -> u64| -> Vec<(f64, f64)> {
            (0..seconds)
                .map(|s| (s as f64, per.get(&s).map_or(0, f) as f64))
                .collect()
        };
        lines.push(PlotLine {
            label: format!("{}: via gateway", label(p)),
            points: pts(|c| c.0),
            dashed: false,
        });
        lines.push(PlotLine {
            label: format!("{}: direct", label(p)),
            points: pts(|c| c.1),
            dashed: true,
        });
        let (g, d, f) = per
            .values()
            .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
        totals.push(format!(
            "{}: {g} via the gateway, {d} direct, {f} failed",
            label(p)
        ));
    }
    let svg = out_dir.join("transition.svg");
    svg_lines(
        &svg,
        "mini-mesh: requests per second through the lazy gateway vs direct",
        "seconds since the clients started",
        "requests per second",
        &lines,
    )?;
    println!("\ntotals: {}", totals.join("; "));
    println!("plot: {}", relative(&svg));
    mesh.node.shutdown();
    Ok(())
}

fn relative(p: &std::path::Path) -> String {
    let root: PathBuf = lazyxds_e2e::paths::workspace_root();
    p.strip_prefix(&root).unwrap_or(p).display().to_string()
}
