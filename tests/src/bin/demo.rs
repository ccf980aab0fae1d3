//! `cargo run -p lazyxds-e2e --bin demo [-- --hold]`
//!
//! Starts local stand-ins for a few mesh services, the lazyxds controller and a gateway Envoy
//! with the lazyxds filter; sends traffic from 10 source IPs (each playing a pod); prints the
//! dependency edges the controller learned. `--hold` keeps everything running until Ctrl-C.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazyxds_e2e::client::Planned;
use lazyxds_e2e::edges::{any_count, expected_edges, with_counts};
use lazyxds_e2e::gateway::{hosts, Stack};
use lazyxds_e2e::{paths, EdgeRow};
use serde_json::json;

const ROUNDS: usize = 3;

/// Which pod (source IP) calls which hosts, per round: the bookinfo call graph plus one pod
/// calling the Internet and one calling a service that does not exist.
fn traffic() -> Vec<Planned> {
    let ip = |d: u8| Ipv4Addr::new(127, 0, 0, d);
    let mut round: Vec<Planned> = Vec::new();
    let mut add = |d: u8, host: &str, times: usize| {
        round.extend((0..times).map(|_| Planned::new(ip(d), host)));
    };
    for d in 10..=12 {
        // productpage pods
        add(d, hosts::REVIEWS, 4);
        add(d, hosts::DETAILS, 2);
    }
    for d in 13..=15 {
        // reviews pods
        add(d, "ratings.default.svc.cluster.local:9080", 3);
    }
    for d in 16..=17 {
        // front-end pods
        add(d, hosts::PRODUCTPAGE, 2);
        add(d, hosts::EXTERNAL, 1);
    }
    add(18, hosts::EXTERNAL, 2);
    add(19, hosts::UNKNOWN, 2);
    let mut all = Vec::new();
    for _ in 0..ROUNDS {
        all.extend(round.iter().cloned());
    }
    all
}

fn usage() -> ! {
    eprintln!(
        "usage: demo [--hold]\n  --hold  keep the gateway and controller running until Ctrl-C"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
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

    println!("lazyxds demo: a gateway Envoy with the lazyxds filter learns which workload calls which service\n");
    let wasm = paths::wasm_path()?;
    let stack = Stack::start(json!({"gateway_id": "demo"}))
        .await
        .context("starting the demo (backends, controller, gateway)")?;
    println!("  services    {} local HTTP servers stand in for bookinfo (reviews v1+v2, ratings, details,", stack.backends.len());
    println!("              productpage) and for the Internet (example.com)");
    println!(
        "  controller  lazyxds (pid {}): gRPC 127.0.0.1:{}, edges at http://127.0.0.1:{}/debug/edges",
        stack.controller.pid().unwrap_or(0),
        stack.controller.grpc_port(),
        stack.controller.http_port()
    );
    println!(
        "  gateway     Envoy (pid {}) on 127.0.0.1:{}, admin 127.0.0.1:{}, filter {}",
        stack.envoy.pid(),
        stack.port(),
        stack.envoy.admin_port(),
        wasm.display()
    );
    println!(
        "              config {}\n",
        stack.envoy.config_path().display()
    );

    let plan = traffic();
    let sources: std::collections::BTreeSet<Ipv4Addr> = plan.iter().map(|p| p.source).collect();
    println!(
        "Sending {} requests from {} source IPs (each stands for a pod) through the gateway...",
        plan.len(),
        sources.len()
    );
    let sent_at = Instant::now();
    let outcomes = stack.load(&plan, 16, Duration::from_secs(60)).await;
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status.is_none()).collect();
    if let Some(f) = failed.first() {
        bail!("{} requests failed, e.g. {f:?}", failed.len());
    }
    let last_response = Instant::now();

    let expected = expected_edges(&outcomes);
    // Two moments: every edge known (what matters for Sidecars), then every request counted
    // (a known edge's further requests are reported once per refresh interval).
    stack
        .controller
        .wait_for_edges(&any_count(expected.keys()), Duration::from_secs(10))
        .await?;
    let known_in = last_response.elapsed();
    stack
        .controller
        .wait_for_edges(&with_counts(&expected), Duration::from_secs(10))
        .await?;
    let counted_in = last_response.elapsed();
    // Settle: anything extra would show up now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rows = stack.controller.edges().await?;

    println!(
        "\nEdges learned by the controller (what lazyxds would put in each workload's Sidecar):\n"
    );
    print_table(&rows);

    let count =
        |pred: &dyn Fn(&lazyxds_e2e::Outcome) -> bool| outcomes.iter().filter(|o| pred(o)).count();
    let external = count(&|o| o.backend.as_deref() == Some("PassthroughCluster"));
    let unrouted = count(&|o| o.status == Some(404));
    println!(
        "\nNot edges: {external} requests to {} (PassthroughCluster: outside the mesh) and {unrouted} to {} (no route: 404).",
        hosts::EXTERNAL,
        hosts::UNKNOWN
    );

    let tx = stack
        .envoy
        .counter("cluster.lazyxds_controller.upstream_cx_tx_bytes_total")
        .await
        .unwrap_or(0);
    let rx = stack
        .envoy
        .counter("cluster.lazyxds_controller.upstream_cx_rx_bytes_total")
        .await
        .unwrap_or(0);
    println!(
        "\nSummary: {} requests sent in {:.0} ms; {} edges learned: all known to the controller {:.0} ms after the last \
         response, all requests counted after {:.0} ms (counts refresh every second); gateway->controller {tx} bytes \
         (acks back {rx} bytes) over gRPC; {:.1} s in total.",
        outcomes.len(),
        (last_response - sent_at).as_secs_f64() * 1e3,
        rows.len(),
        known_in.as_secs_f64() * 1e3,
        counted_in.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64()
    );

    if hold {
        println!("\nStill running (Ctrl-C to stop). Try:");
        println!(
            "  curl -s --interface 127.0.0.42 -H 'Host: {}' http://127.0.0.1:{}/",
            hosts::RATINGS,
            stack.port()
        );
        println!(
            "  curl -s http://127.0.0.1:{}/debug/edges",
            stack.controller.http_port()
        );
        println!(
            "  curl -s http://127.0.0.1:{}/stats | grep lazyxds",
            stack.envoy.admin_port()
        );
        tokio::signal::ctrl_c().await?;
        println!();
    }

    let Stack {
        envoy,
        mut controller,
        backends,
        ..
    } = stack;
    let envoy_exit = envoy.stop(Duration::from_secs(10)).await;
    controller.stop(Duration::from_secs(10));
    drop(backends);
    println!(
        "Stopped: gateway ({}), controller, services.",
        envoy_exit.map_or("killed".to_string(), |s| s.to_string())
    );
    Ok(())
}

fn print_table(rows: &[EdgeRow]) {
    let mut sorted: Vec<&EdgeRow> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        (a.source_ip, &a.host, &a.cluster).cmp(&(b.source_ip, &b.host, &b.cluster))
    });
    let cells: Vec<[String; 4]> = sorted
        .iter()
        .map(|r| {
            [
                r.source_ip.to_string(),
                r.host.clone().unwrap_or_else(|| "-".into()),
                r.cluster.clone(),
                r.requests.to_string(),
            ]
        })
        .collect();
    let head = ["SOURCE IP", "HOST", "CLUSTER", "REQUESTS"];
    let mut w: [usize; 4] = head.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.len());
        }
    }
    let line = |c: [&str; 4]| {
        println!(
            "  {:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}",
            c[0],
            c[1],
            c[2],
            c[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )
    };
    line(head);
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3]]);
    }
    let by_source: BTreeMap<_, usize> = sorted.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.source_ip).or_insert(0) += 1;
        m
    });
    println!(
        "  ({} edges from {} source IPs)",
        rows.len(),
        by_source.len()
    );
}
