//! `make demo` (`cargo run -p lazyxds-e2e --bin demo [-- --hold]`)
//!
//! The whole idea on one machine, no cluster: a topology file describes a mesh (two
//! namespaces, a dozen services, client workloads whose pods use 127.0.0.x addresses);
//! local servers stand in for the services; the lazyxds controller runs in file mode;
//! a real Envoy gateway with the lazyxds filter routes requests from those pod IPs.
//! The edges it reports become the Sidecars an operator would apply, written as YAML,
//! and `lazyxds report` tells how much config each workload sheds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazyxds_e2e::client::Planned;
use lazyxds_e2e::mesh::{
    demo_topology_path, demo_traffic, read_sidecar_files, MeshStack, SidecarFile,
};
use lazyxds_e2e::{paths, request, run_load};

/// Requests per (pod, host) pair.
const REPEAT: usize = 3;

fn usage() -> ! {
    eprintln!(
        "usage: demo [--hold]\n  --hold  keep the gateway and controller running until Ctrl-C"
    );
    std::process::exit(2)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn relative(path: &Path) -> String {
    let root = workspace_root()
        .canonicalize()
        .unwrap_or_else(|_| workspace_root());
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    path.strip_prefix(&root)
        .unwrap_or(&path)
        .display()
        .to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut hold = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--hold" => hold = true,
            _ => usage(),
        }
    }
    lazyxds_e2e::set_verbose(false);
    let t0 = Instant::now();
    let topology = demo_topology_path();
    let out = workspace_root().join("out/demo/sidecars");
    // A fresh start: Sidecars left in --out are state the controller would read back.
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;

    println!("lazyxds demo: traffic through a lazy egress gateway becomes scoped Istio Sidecars\n");
    let stack = MeshStack::start(&topology, &out, None)
        .await
        .context("starting the demo (backends, controller, gateway)")?;
    println!("  topology    {}", relative(&topology));
    println!(
        "  services    {} local servers (HTTP/1.1, gRPC for HTTP/2 ports), one per Envoy cluster the mesh would have",
        stack.backends.len() + stack.grpc_backends.len()
    );
    println!(
        "  controller  lazyxds run --file {} --out {}   (pid {}, edges at http://127.0.0.1:{}/debug/edges)",
        relative(&topology),
        relative(&out),
        stack.controller.pid().unwrap_or(0),
        stack.controller.http_port()
    );
    let virtual_services = stack
        .objects
        .iter()
        .filter(|o| o["kind"] == "VirtualService")
        .count();
    println!(
        "  gateway     Envoy (pid {}) on 127.0.0.1:{} with the lazyxds filter; its routes are what istiod\n              would make of the controller's {} VirtualServices ({})\n",
        stack.envoy.pid(),
        stack.listen_port,
        virtual_services,
        relative(&out.join("gateway/lazyxds-gateway.yaml")),
    );

    let traffic = demo_traffic();
    let pods: BTreeSet<_> = traffic.iter().map(|(ip, _)| *ip).collect();
    // The first call of every (pod, host) pair, one by one: none of these workloads has
    // ever called these services, and they use short names.
    println!(
        "First calls, with the short names applications use ({} pods; the gateway expands each\nname in the caller's namespace, known from its pod IP):\n",
        pods.len()
    );
    println!(
        "  {:<12} {:<40} {:>6}  SERVED BY (Envoy cluster)",
        "FROM", "HOST", "STATUS"
    );
    let sent_at = Instant::now();
    let mut first_failed = 0;
    for (ip, host) in &traffic {
        let r = request(*ip, stack.listen_port, host, "/").await?;
        let served = match r.backend() {
            Some(b) => b.to_string(),
            None => format!("- ({})", r.body.trim()),
        };
        if r.status != 200 && !host.starts_with("nowhere") {
            first_failed += 1;
        }
        println!(
            "  {:<12} {:<40} {:>6}  {served}",
            ip.to_string(),
            host,
            r.status
        );
    }
    if first_failed > 0 {
        bail!("{first_failed} first calls failed");
    }
    let plan: Vec<Planned> = traffic
        .iter()
        .flat_map(|(ip, host)| std::iter::repeat_n(Planned::new(*ip, host), REPEAT - 1))
        .collect();
    println!(
        "\nSending {} more requests from {} pod IPs through the gateway...",
        plan.len(),
        pods.len()
    );
    let outcomes = run_load(stack.listen_port, &plan, 8, Duration::from_secs(30)).await;
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes {
        let key = o.status.map_or_else(
            || format!("failed ({})", o.error.clone().unwrap_or_default()),
            |s| s.to_string(),
        );
        *statuses.entry(key).or_default() += 1;
    }
    let summary: Vec<String> = statuses.iter().map(|(s, n)| format!("{n} × {s}")).collect();
    println!(
        "  answered: {} (the 404s asked for a service that does not exist: no edge)\n",
        summary.join(", ")
    );

    // Wait until the Sidecar files hold every learned dependency.
    let expected: BTreeSet<(std::net::Ipv4Addr, &str)> = traffic
        .iter()
        .filter(|(_, h)| !h.starts_with("nowhere"))
        .copied()
        .collect();
    // Settled: every edge is at the controller and the files have not changed for a few
    // write-debounce periods; convergence is when they last changed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last: Option<(BTreeMap<String, SidecarFile>, Instant)> = None;
    let (files, converged) = loop {
        let files = read_sidecar_files(&out)?;
        let now = Instant::now();
        let changed_at = match &last {
            Some((prev, at)) if *prev == files => *at,
            _ => now,
        };
        last = Some((files.clone(), changed_at));
        let learned: usize = files.values().map(|f| f.deps.len()).sum();
        let edges = stack.controller.edges().await?.len();
        if edges >= expected.len() && learned > 0 && now - changed_at > Duration::from_millis(300) {
            break (files, changed_at - sent_at);
        }
        if now > deadline {
            bail!(
                "Sidecars did not settle within 20 s; controller log:\n{}",
                stack.controller.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    println!("Dependencies learned at the gateway (each workload's Sidecar lists only these, plus what it always keeps):\n");
    let width = files.keys().map(String::len).max().unwrap_or(8).max(8);
    println!("  {:width$}  DEPENDENCIES", "WORKLOAD");
    for (workload, file) in &files {
        let deps = if file.deps.is_empty() {
            "-".to_string()
        } else {
            file.deps.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        println!("  {workload:width$}  {deps}");
    }
    println!(
        "\n  (shop/Deployment/details opted out with lazyxds.io/enabled: \"false\": it keeps the full config, no Sidecar)\n"
    );

    println!(
        "{} Sidecars written to {}/ . One of them:\n",
        files.len(),
        relative(&out)
    );
    if let Some(file) = files.get("shop/Deployment/productpage") {
        let text = std::fs::read_to_string(&file.file)?;
        for line in text.lines() {
            println!("    {line}");
        }
    }

    let report = std::process::Command::new(paths::lazyxds_bin()?)
        .args(["report", "--file"])
        .arg(&topology)
        .arg("--sidecars")
        .arg(&out)
        .output()
        .context("running lazyxds report")?;
    if !report.status.success() {
        bail!(
            "lazyxds report failed: {}",
            String::from_utf8_lossy(&report.stderr)
        );
    }
    println!(
        "\nlazyxds report --file {} --sidecars {}\n",
        relative(&topology),
        relative(&out)
    );
    for line in String::from_utf8_lossy(&report.stdout).lines() {
        println!("  {line}");
    }

    println!(
        "\nFrom the first request to the last Sidecar written: {} ms. Total {:.1} s.",
        converged.as_millis(),
        t0.elapsed().as_secs_f64()
    );
    if hold {
        println!("\nHolding. Try: curl --interface 127.0.0.18 -H 'Host: ledger.payments:9080' http://127.0.0.1:{}/", stack.listen_port);
        println!("then: ls {}   (Ctrl-C stops)", relative(&out));
        tokio::signal::ctrl_c().await?;
    }
    drop(stack);
    println!("Stopped the gateway, the controller and the services.");
    Ok(())
}
