//! The mini-mesh's measures for `make bench` (issue 16): `p5_e2e`, `p6_istiod`, `p9`.
//! Runs under `tests/cluster/netns-run` (root: network namespaces); writes one JSON file
//! (`MESHBENCH_OUT`, default `target/meshbench/latest.json`) that the bench reads into
//! `latest.json` and its table.
//!
//! - **P5 end to end**: one opted-in client pod, already scoped by its Sidecar, calls
//!   `MESHBENCH_DEPS` new Services one after another (`curl` in the pod's namespaces, as its
//!   app, every 25 ms): first request → first request the backend's sidecar sees from the
//!   client's own identity (direct), so the gateway's report, the controller's write,
//!   istiod's push and Envoy's update are all in it.
//! - **P6 with real istiod**: with `MESHBENCH_SERVICES` bulk Services (selectorless, one
//!   EndpointSlice each) in the mesh, `server.memory_allocated` and the config dump (with
//!   EDS) of a sidecar not opted in (full mesh) ÷ those of the opted-in client (its Sidecar).
//! - **P9**: the controller scaled to 0, the Sidecars it wrote for `MESHBENCH_SIDECARS`
//!   client pods kept; per round, both states (those Sidecars deleted: full; re-applied as
//!   written: scoped), each followed by one full push (istiod's `/debug/adsz?push=true`):
//!   istiod's CPU time (/proc) and Σ `pilot_xds_push_time` over that push, full ÷ scoped.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazyxds_e2e::cluster::lazyxds::NAMESPACE;
use lazyxds_e2e::cluster::meshbench::{
    active_clusters, app_deployment, create_bulk_services, envoy_figures, percentile, pod_get,
    trigger_full_push, wait_istiod_quiet, EnvoyFigures, IstiodSample, MiniMesh,
};
use lazyxds_e2e::cluster::node::{self, PodInfo};
use lazyxds_e2e::cluster::Cluster;
use serde_json::{json, Value};

const SHOP: &str = "shop";
const LOAD: &str = "load";
const BULK: &str = "bulk";
const SIDECARS: &str = "sidecars.networking.istio.io";
/// A client sends one request per interval while it waits for a dependency to go direct.
const INTERVAL: Duration = Duration::from_millis(25);

struct Config {
    services: usize,
    deps: usize,
    sidecars: usize,
    rounds: usize,
    /// Full pushes per state and round.
    pushes: usize,
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().with_context(|| format!("{name}={v:?}")),
        _ => Ok(default),
    }
}

fn main() -> ExitCode {
    let out = std::env::var_os("MESHBENCH_OUT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            lazyxds_e2e::paths::workspace_root().join("target/meshbench/latest.json")
        });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&out)) {
        Ok(()) => {
            eprintln!("meshbench: results in {}", out.display());
            // The node's pods and the control plane die with this process.
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("meshbench: {e:#}");
            std::process::exit(1)
        }
    }
}

macro_rules! progress {
    ($t0:expr, $($arg:tt)*) => {
        eprintln!("[{:>6.1}s] meshbench: {}", $t0.elapsed().as_secs_f64(), format!($($arg)*))
    };
}

async fn run(out: &std::path::Path) -> Result<()> {
    let t0 = Instant::now();
    let cfg = Config {
        services: env_usize("MESHBENCH_SERVICES", 2000)?,
        deps: env_usize("MESHBENCH_DEPS", 20)?,
        sidecars: env_usize("MESHBENCH_SIDECARS", 8)?.max(1),
        rounds: env_usize("MESHBENCH_ROUNDS", 3)?.max(1),
        pushes: env_usize("MESHBENCH_PUSHES", 3)?.max(1),
    };
    lazyxds_e2e::set_verbose(false);
    let mesh_app = std::env::current_exe()?.with_file_name("mesh-app");
    if !mesh_app.is_file() {
        bail!(
            "{} not found: build it beside this binary (cargo build -p lazyxds-e2e --bin mesh-app)",
            mesh_app.display()
        );
    }
    let mut mesh = MiniMesh::start(mesh_app, vec![SHOP.into(), LOAD.into()]).await?;
    let c = mesh.cluster;
    progress!(
        t0,
        "control plane, controller and gateway up in {:?}",
        mesh.started_in
    );

    // The backends: one echo pod behind `deps + 1` Services (dep-0 warms the clients up).
    namespace(c, SHOP, json!({})).await?;
    namespace(c, LOAD, json!({"lazyxds.io/enabled": "true"})).await?;
    let mut objects = vec![
        app_deployment(
            SHOP,
            "echo",
            json!({}),
            &["echo", "--name", "echo", "--port", "9080"],
            9080,
        ),
        // The backend's namespace is not opted in; a user's namespace-wide Sidecar keeps its
        // sidecar small, so that in P9 the clients are the only sidecars that change between
        // full and scoped (the gateway is the other constant).
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": SHOP},
            "spec": {"egress": [{"hosts": ["./*", "istio-system/*"]}]}}),
    ];
    for i in 0..=cfg.deps {
        objects.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("dep-{i}"), "namespace": SHOP},
            "spec": {"selector": {"app": "echo"},
                "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}}));
    }
    // The clients: opted in (their namespace), idle apps; requests come from `curl` in
    // their namespaces. `plain` is not opted in: the full mesh's sidecar.
    let idle = ["echo", "--name", "idle", "--port", "8080"];
    for i in 0..cfg.sidecars {
        objects.push(app_deployment(
            LOAD,
            &format!("sc-{i}"),
            json!({}),
            &idle,
            8080,
        ));
    }
    objects.push(app_deployment(
        LOAD,
        "plain",
        json!({"lazyxds.io/enabled": "false"}),
        &idle,
        8080,
    ));
    mesh.apply_injected(&objects)?;
    let node = &mesh.node;
    node.wait_ready(SHOP, "echo-", 1, Duration::from_secs(240))
        .await?;
    let mut clients = Vec::new();
    for i in 0..cfg.sidecars {
        clients.push(
            node.wait_ready(LOAD, &format!("sc-{i}-"), 1, Duration::from_secs(240))
                .await?
                .remove(0),
        );
    }
    let plain = node
        .wait_ready(LOAD, "plain-", 1, Duration::from_secs(240))
        .await?
        .remove(0);
    progress!(t0, "{} clients and the backend up", cfg.sidecars + 1);

    // Each client scoped: its Sidecar exists and dep-0 goes direct.
    let epoch = Instant::now();
    // Failed requests while each client's first Sidecar is new (its first dependency),
    // and while P5 runs.
    let mut warmup_failures: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (i, pod) in clients.iter().enumerate() {
        let sc = format!("lazyxds-deployment-sc-{i}");
        let t = Instant::now();
        while c.get(SIDECARS, Some(LOAD), &sc)?.is_none() {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("no Sidecar {LOAD}/{sc} after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (_, fails) = until_direct(pod, &dep_url(0), epoch, Duration::from_secs(120)).await?;
        warmup_failures.extend(fails);
    }
    progress!(t0, "clients scoped (dep-0 direct)");

    // P5 end to end.
    let mut samples_ms = Vec::new();
    let mut via_gateway = 0;
    for i in 1..=cfg.deps {
        let (s, fails) =
            until_direct(&clients[0], &dep_url(i), epoch, Duration::from_secs(60)).await?;
        failures.extend(fails);
        via_gateway += s.via_gateway;
        samples_ms.push(s.first_to_direct.as_secs_f64() * 1000.0);
        progress!(
            t0,
            "p5: dep-{i}: {:.0} ms ({} via the gateway)",
            samples_ms.last().unwrap_or(&0.0),
            s.via_gateway
        );
    }
    let mut sorted = samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    // Requests the client's own sidecar answered 503 because the route's cluster was not
    // active yet (Envoy's NC): the routers' `no_cluster`, summed over its listeners.
    let no_cluster: u64 = node::proxy_stats(&clients[0], "no_cluster")
        .map(|s| s.values().sum())
        .unwrap_or(0);
    let p5 = json!({
        "samples": samples_ms.len(),
        "p50_ms": percentile(&sorted, 50.0),
        "p99_ms": percentile(&sorted, 99.0),
        "max_ms": sorted.last(),
        "samples_ms": samples_ms,
        "requests_via_gateway": via_gateway,
        "interval_ms": INTERVAL.as_millis() as u64,
        "failed_requests": failures.len(),
        "first_failures": failures.iter().take(5).collect::<Vec<_>>(),
        "no_cluster_503s": no_cluster,
        "warmup_failed_requests": warmup_failures.len(),
        "warmup_first_failures": warmup_failures.iter().take(5).collect::<Vec<_>>(),
    });
    progress!(t0, "p5_e2e: {p5}");

    // The bulk mesh.
    namespace(c, BULK, json!({})).await?;
    let t = Instant::now();
    {
        let n = cfg.services;
        tokio::task::spawn_blocking(move || create_bulk_services(c, BULK, n)).await??;
    }
    progress!(
        t0,
        "{} bulk Services and EndpointSlices created in {:?}",
        cfg.services,
        t.elapsed()
    );
    wait_clusters(
        std::slice::from_ref(&plain),
        |n| n >= cfg.services as u64,
        "the full sidecar",
    )
    .await?;
    wait_istiod_quiet(c, Duration::from_secs(5), Duration::from_secs(600)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    progress!(t0, "istiod quiet with the bulk mesh");

    let constant: Vec<Value> = mesh
        .node
        .pods()
        .iter()
        .filter(|p| p.name.starts_with("lazyxds-gateway") || p.namespace == SHOP)
        .map(|p| json!({"pod": format!("{}/{}", p.namespace, p.name), "active_clusters": active_clusters(p)}))
        .collect();
    progress!(t0, "the other proxies: {constant:?}");
    // P6: the sidecar not opted in vs the scoped client, side by side.
    let full = envoy_figures(&plain)?;
    let scoped = envoy_figures(&clients[0])?;
    let p6 = json!({
        "services": cfg.services,
        "ratio_memory_allocated": full.memory_allocated as f64 / scoped.memory_allocated.max(1) as f64,
        "ratio_config_dump": full.config_dump_bytes as f64 / scoped.config_dump_bytes.max(1) as f64,
        "full": figures_json(&full),
        "scoped": figures_json(&scoped),
        "scoped_deps": cfg.deps + 1,
    });
    progress!(t0, "p6_istiod: {p6}");

    // P9: the same sidecars full vs scoped, the controller stopped so the Sidecars stay as
    // the bench sets them.
    c.kubectl(
        &["delete", "deployment", "-n", LOAD, "plain", "--wait=false"],
        None,
    )?;
    c.kubectl(
        &[
            "scale",
            "deployment",
            "-n",
            NAMESPACE,
            "lazyxds",
            "--replicas=0",
        ],
        None,
    )?;
    let t = Instant::now();
    while mesh.node.pods().iter().any(|p| {
        (p.namespace == LOAD && p.name.starts_with("plain-"))
            || (p.namespace == NAMESPACE
                && p.name.starts_with("lazyxds-")
                && !p.name.starts_with("lazyxds-gateway"))
    }) {
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the controller and plain pods still run after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let written: Vec<Value> = c
        .list(SIDECARS, LOAD)?
        .into_iter()
        .map(|s| {
            json!({"apiVersion": s["apiVersion"], "kind": "Sidecar",
                "metadata": {"name": s["metadata"]["name"], "namespace": LOAD,
                    "labels": s["metadata"]["labels"], "annotations": s["metadata"]["annotations"]},
                "spec": s["spec"]})
        })
        .collect();
    if written.len() != cfg.sidecars {
        bail!(
            "{} Sidecars in {LOAD}, want {}",
            written.len(),
            cfg.sidecars
        );
    }
    // istiod's CPU while idle, to subtract from each push's window.
    let idle0 = IstiodSample::take(c)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle1 = IstiodSample::take(c)?;
    let idle_cpu_per_s = (idle1.cpu_s - idle0.cpu_s) / secs(&idle0, &idle1);
    let mut rounds = Vec::new();
    for r in 0..cfg.rounds {
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut round = serde_json::Map::new();
        for full_state in order {
            if full_state {
                c.kubectl(&["delete", SIDECARS, "--all", "-n", LOAD], None)?;
                wait_clusters(&clients, |n| n >= cfg.services as u64, "full").await?;
            } else {
                c.apply_json(&written)?;
                wait_clusters(&clients, |n| n < cfg.services as u64 / 4, "scoped").await?;
            }
            let before =
                wait_istiod_quiet(c, Duration::from_secs(3), Duration::from_secs(600)).await?;
            // A few pushes, each once istiod is quiet again: CPU time comes in 10 ms ticks.
            let mut reply = String::new();
            let mut after = before.clone();
            for _ in 0..cfg.pushes {
                reply = trigger_full_push(c)?;
                after =
                    wait_istiod_quiet(c, Duration::from_secs(2), Duration::from_secs(600)).await?;
            }
            let window = secs(&before, &after);
            let cpu = after.cpu_s - before.cpu_s;
            let push = json!({
                "pushes": cfg.pushes,
                "istiod_cpu_s": cpu,
                "istiod_cpu_s_minus_idle": cpu - idle_cpu_per_s * window,
                "window_s": window,
                "push_time_sum_s": after.push_time_sum - before.push_time_sum,
                "push_time_count": after.push_time_count - before.push_time_count,
                "convergence_mean_s": (after.convergence_sum - before.convergence_sum)
                    / (after.convergence_count - before.convergence_count).max(1.0),
                "convergences": after.convergence_count - before.convergence_count,
                "proxies_connected": after.connected,
                "istiod": reply.trim(),
            });
            progress!(
                t0,
                "p9 round {r} {}: {push}",
                if full_state { "full" } else { "scoped" }
            );
            round.insert(if full_state { "full" } else { "scoped" }.into(), push);
        }
        rounds.push(Value::Object(round));
    }
    let ratio = |key: &str| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|r| Some(r["full"][key].as_f64()? / r["scoped"][key].as_f64()?))
            .collect()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 50.0)
    };
    let p9 = json!({
        "sidecars": cfg.sidecars,
        "services": cfg.services,
        "ratio_cpu": median(ratio("istiod_cpu_s_minus_idle")),
        "ratio_cpu_raw": median(ratio("istiod_cpu_s")),
        "ratio_push_time": median(ratio("push_time_sum_s")),
        "idle_cpu_per_s": idle_cpu_per_s,
        "other_proxies": constant,
        "rounds": rounds,
    });
    progress!(
        t0,
        "p9: ratio cpu {} push time {}",
        p9["ratio_cpu"],
        p9["ratio_push_time"]
    );
    mesh.node.shutdown();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let doc = json!({
        "p5_e2e": p5, "p6_istiod": p6, "p9": p9,
        "config": {"services": cfg.services, "deps": cfg.deps, "sidecars": cfg.sidecars,
            "rounds": cfg.rounds, "pushes": cfg.pushes,
            "controller": lazyxds_e2e::paths::lazyxds_bin()?},
        "duration_s": t0.elapsed().as_secs_f64(),
        "cluster_timings": format!("{:?}", c.timings),
    });
    std::fs::write(out, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

fn secs(a: &IstiodSample, b: &IstiodSample) -> f64 {
    match (a.at, b.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    }
}

fn figures_json(f: &EnvoyFigures) -> Value {
    json!({"memory_allocated": f.memory_allocated, "config_dump_bytes": f.config_dump_bytes,
        "active_clusters": f.clusters})
}

fn dep_url(i: usize) -> String {
    format!("http://dep-{i}.{SHOP}.svc.cluster.local:9080/")
}

/// A namespace with a fixed name (the DNS lists these), once its `default` ServiceAccount
/// exists.
async fn namespace(c: &'static Cluster, name: &str, annotations: Value) -> Result<()> {
    c.apply_json(&[json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "annotations": annotations}})])?;
    let t = Instant::now();
    while c.get("serviceaccount", Some(name), "default")?.is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("namespace {name}: no default ServiceAccount after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

struct Sample {
    first_to_direct: Duration,
    via_gateway: usize,
}

/// Calls `url` from `pod` every [`INTERVAL`] until the backend sees the pod's own identity;
/// the time from the first request to that one, and every failed request.
async fn until_direct(
    pod: &PodInfo,
    url: &str,
    epoch: Instant,
    timeout: Duration,
) -> Result<(Sample, Vec<String>)> {
    let mut first = None;
    let mut via_gateway = 0;
    let mut failures = Vec::new();
    let mut next = tokio::time::Instant::now();
    loop {
        let (p, u) = (pod.clone(), url.to_string());
        let got = tokio::task::spawn_blocking(move || pod_get(&p, &u, epoch)).await?;
        let first_at = *first.get_or_insert(got.at);
        if !got.ok() {
            failures.push(format!(
                "{}/{} {url} at {:?}: {:?} {:?}",
                pod.namespace, pod.name, got.at, got.status, got.error
            ));
        } else if got.direct_from(&pod.namespace) {
            return Ok((
                Sample {
                    first_to_direct: got.at.saturating_sub(first_at),
                    via_gateway,
                },
                failures,
            ));
        } else if got.via_gateway() {
            via_gateway += 1;
        }
        if got.at.saturating_sub(first_at) > timeout {
            bail!(
                "{}/{}: {url} not direct after {timeout:?} ({via_gateway} via the gateway; last {got:?})",
                pod.namespace,
                pod.name
            );
        }
        next += INTERVAL;
        tokio::time::sleep_until(next).await;
    }
}

/// Waits until every pod's sidecar has a cluster count `ok` accepts (5 min at most).
async fn wait_clusters(pods: &[PodInfo], ok: impl Fn(u64) -> bool, what: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        let counts: Vec<u64> = pods.iter().map(active_clusters).collect();
        if counts.iter().all(|n| ok(*n)) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("{what}: sidecars' active clusters {counts:?} after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
