//! Real Envoy + the lazyxds Wasm filter + the real controller, all on loopback.
//!
//! Needs `make setup` (Envoy), `make wasm` (the filter) and `cargo build -p lazyxds`; a missing
//! piece fails the test with that hint. Each test owns its processes and ports, so they run in
//! parallel; Envoy runs with 2 workers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use lazyxds_e2e::client::{self, sources, Outcome, Planned};
use lazyxds_e2e::edges::{self, any_count, expected_edges, with_counts, EdgeKey};
use lazyxds_e2e::gateway::{self, hosts, GatewayConfig, Stack, UPSTREAMS};
use lazyxds_e2e::{free_port, paths, Envoy};
use serde_json::json;

/// Filter counters (Envoy stat suffixes) for requests that produce no edge.
const SKIPPED_NOT_OUTBOUND: &str = "lazyxds.skipped_not_outbound";
const SKIPPED_NO_ROUTE: &str = "lazyxds.skipped_no_route";

/// How long a delivered-by-now edge may take to show up (flushes are every 20 ms; the bound
/// absorbs a busy machine, not a slow filter).
const ARRIVAL: Duration = Duration::from_secs(10);

fn plan(sources: &[Ipv4Addr], hosts: &[&str]) -> Vec<Planned> {
    sources
        .iter()
        .flat_map(|s| hosts.iter().map(move |h| Planned::new(*s, h)))
        .collect()
}

fn statuses(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        let k = match (o.status, &o.error) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => format!("error: {e}"),
            (None, None) => "?".into(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

fn ensure_all(outcomes: &[Outcome], want: u16, what: &str) -> Result<()> {
    let bad: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != Some(want)).collect();
    ensure!(
        bad.is_empty(),
        "{what}: {} of {} requests did not get {want}: {:?}; first: {:?}",
        bad.len(),
        outcomes.len(),
        statuses(outcomes),
        bad.first()
    );
    Ok(())
}

async fn counter_reaches(stack: &Stack, name: &str, want: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = stack.envoy.counter(name).await?;
        if got >= want || Instant::now() >= deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After every expected edge arrived, a few more flush periods must add nothing unexpected.
async fn assert_exact_edges(
    stack: &Stack,
    expected: &BTreeMap<EdgeKey, Option<u64>>,
) -> Result<()> {
    stack.controller.wait_for_edges(expected, ARRIVAL).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows = stack.controller.edges().await?;
    let diff = edges::diff(expected, &rows);
    ensure!(
        diff.is_empty(),
        "controller edges differ from the traffic sent:\n{diff}"
    );
    Ok(())
}

#[tokio::test]
async fn reports_every_edge_from_40_sources() -> Result<()> {
    let stack = Stack::start(json!({})).await?;
    let srcs = sources(10, 49);
    let mut plan = Vec::new();
    for (i, s) in srcs.iter().enumerate() {
        // Weighted route several times (both subsets show up), in the spellings clients use.
        plan.push(Planned::new(*s, hosts::REVIEWS));
        plan.push(Planned::new(*s, "reviews.default.svc.cluster.local:9080"));
        plan.push(Planned::new(*s, "Reviews.Default.svc.cluster.local"));
        plan.push(Planned::new(*s, "ratings.default.svc.cluster.local:9080"));
        if i % 2 == 0 {
            plan.push(Planned::new(*s, hosts::DETAILS));
        }
        if i % 3 == 0 {
            plan.push(Planned::new(*s, hosts::PRODUCTPAGE));
        }
        plan.push(Planned::new(*s, hosts::EXTERNAL));
        plan.push(Planned::new(*s, hosts::UNKNOWN));
    }
    let started = Instant::now();
    let outcomes = stack.load(&plan, 32, Duration::from_secs(60)).await;
    eprintln!(
        "sent {} requests in {:?}: {:?}",
        plan.len(),
        started.elapsed(),
        statuses(&outcomes)
    );

    let (unknown, routed): (Vec<Outcome>, Vec<Outcome>) = outcomes
        .iter()
        .cloned()
        .partition(|o| o.host == hosts::UNKNOWN);
    ensure_all(&routed, 200, "routed hosts")?;
    ensure_all(&unknown, 404, "unknown host")?;
    let passthrough = outcomes
        .iter()
        .filter(|o| o.backend.as_deref() == Some("PassthroughCluster"))
        .count();
    ensure!(
        passthrough == srcs.len(),
        "example.com must reach PassthroughCluster"
    );

    let expected = expected_edges(&outcomes);
    let clusters: BTreeSet<&str> = expected.keys().map(|k| k.cluster.as_str()).collect();
    ensure!(
        clusters.len() == 5,
        "traffic must cover both reviews subsets and 3 more services: {clusters:?}"
    );
    assert_exact_edges(&stack, &with_counts(&expected)).await?;
    eprintln!(
        "{} edges from {} sources arrived {:?} after the first request",
        expected.len(),
        srcs.len(),
        started.elapsed()
    );

    let no_route = counter_reaches(&stack, SKIPPED_NO_ROUTE, unknown.len() as u64).await?;
    ensure!(
        no_route == unknown.len() as u64,
        "{SKIPPED_NO_ROUTE} = {no_route}, sent {} unroutable",
        unknown.len()
    );
    let not_outbound = counter_reaches(&stack, SKIPPED_NOT_OUTBOUND, passthrough as u64).await?;
    ensure!(
        not_outbound == passthrough as u64,
        "{SKIPPED_NOT_OUTBOUND} = {not_outbound}, sent {passthrough} to PassthroughCluster"
    );
    // One stream per worker that served traffic; Envoy's main-thread VMs open none.
    let streams = stack.controller.counters().await?["streams_opened"];
    ensure!(
        (1..=u64::from(gateway::TEST_CONCURRENCY)).contains(&streams),
        "{streams} streams for {} workers",
        gateway::TEST_CONCURRENCY
    );
    Ok(())
}

#[tokio::test]
async fn survives_controller_outage() -> Result<()> {
    let mut stack = Stack::start(json!({})).await?;
    let port = stack.port();

    // Phase 1: traffic flowing; the controller dies (SIGKILL) in the middle of it.
    let round = plan(&sources(10, 19), &[hosts::REVIEWS, hosts::RATINGS]);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let mut all = Vec::new();
        while !*stop_rx.borrow_and_update() {
            all.extend(client::run_load(port, &round, 4, Duration::from_secs(30)).await);
        }
        all
    });
    let deadline = Instant::now() + ARRIVAL;
    while stack.controller.edges().await?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "no edge reached the controller before the outage"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let more edges reach the doomed controller: the new one must relearn them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let delivered_before_kill = stack.controller.edges().await?.len();
    stack.controller.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true)?;
    let before = load.await?;
    let after_kill = before
        .iter()
        .filter(|o| o.done_at.is_some_and(|t| t > killed_at))
        .count();
    ensure!(
        after_kill > 0,
        "no request was answered after the kill: not mid-traffic"
    );
    ensure_all(&before, 200, "traffic while the controller was killed")?;
    eprintln!(
        "{} requests around the kill, {after_kill} answered after it; {delivered_before_kill} edges had reached the killed controller",
        before.len()
    );

    // Phase 2: controller down; new sources and new hosts must still be served.
    let during_plan = plan(
        &sources(20, 29),
        &[hosts::DETAILS, hosts::PRODUCTPAGE, hosts::REVIEWS],
    );
    let during = stack.load(&during_plan, 8, Duration::from_secs(60)).await;
    ensure_all(&during, 200, "traffic during the outage")?;
    // Long enough for failed reconnects and a backoff at its cap (reconnect_max_backoff_ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    eprintln!("outage lasted {:?}", killed_at.elapsed());

    // A fresh controller (empty memory) on the same port learns everything again.
    stack.controller.restart().await?;
    let restarted = Instant::now();
    let mut expected: BTreeSet<EdgeKey> = expected_edges(&before).into_keys().collect();
    expected.extend(expected_edges(&during).into_keys());
    // Counts are not checked: a resynced edge may carry none.
    assert_exact_edges(&stack, &any_count(&expected)).await?;
    eprintln!(
        "{} edges (before + during the outage) back at the new controller {:?} after its restart",
        expected.len(),
        restarted.elapsed()
    );
    let counters = stack.controller.counters().await?;
    eprintln!("restarted controller counters: {counters:?}");
    let resyncs = counters.get("resync_hellos").copied().unwrap_or(0);
    ensure!(
        resyncs >= 1,
        "the gateway reconnected without announcing a resync: {counters:?}"
    );
    Ok(())
}

#[tokio::test]
async fn new_edge_arrives_within_50ms_of_flush() -> Result<()> {
    let stack = Stack::start(json!({"flush_interval_ms": 20})).await?;
    // Warm up both workers' streams, so samples measure flush + delivery, not connection setup.
    let warm = stack
        .load(
            &plan(&sources(60, 63), &[hosts::RATINGS]),
            4,
            Duration::from_secs(30),
        )
        .await;
    ensure_all(&warm, 200, "warm-up")?;
    stack
        .controller
        .wait_for_edges(&any_count(expected_edges(&warm).keys()), ARRIVAL)
        .await?;

    let mut samples = Vec::new();
    for d in 70..80u8 {
        let src = Ipv4Addr::new(127, 0, 0, d);
        let resp = client::request(src, stack.port(), hosts::DETAILS, "/").await?;
        let answered = Instant::now();
        ensure!(resp.status == 200, "{resp:?}");
        let deadline = answered + Duration::from_secs(5);
        loop {
            let rows = stack.controller.edges().await?;
            if rows.iter().any(|r| r.source_ip == IpAddr::V4(src)) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "edge from {src} did not arrive within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(answered.elapsed());
    }
    samples.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "response -> edge at /debug/edges (flush 20 ms, 5 ms polling), {} samples: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        samples.len(),
        ms(&samples[0]),
        ms(&samples[samples.len() / 2]),
        ms(&samples[samples.len() - 1])
    );
    let max = samples[samples.len() - 1];
    ensure!(max < Duration::from_secs(1), "slowest edge took {max:?}");
    Ok(())
}

#[tokio::test]
async fn bad_plugin_config_is_refused_with_a_clear_message() -> Result<()> {
    let wasm = paths::wasm_path()?;
    let config = |plugin: &str| -> Result<String> {
        GatewayConfig {
            listen_port: free_port()?,
            admin_port: free_port()?,
            controller_port: free_port()?,
            wasm_path: Some(wasm.clone()),
            plugin_config: plugin.to_string(),
            backend_ports: UPSTREAMS.iter().map(|(_, c)| (c.to_string(), 9)).collect(),
        }
        .render()
    };
    // `--mode validate` runs the plugin's on_configure too, so CI can check configs offline.
    let good = gateway::plugin_config(json!({}));
    let v = Envoy::validate(&config(&good)?).await?;
    ensure!(
        v.status.is_some_and(|s| s.success()),
        "envoy --mode validate refused a good plugin config {good}: {:?}\n{}",
        v.status,
        lazyxds_e2e::process::tail(&v.log, 20)
    );
    for (plugin, field) in [
        (r#"{"flush_interval_ms":"soon"}"#, "flush_interval_ms"),
        (r#"{"no_such_field":1}"#, "no_such_field"),
    ] {
        let text = config(plugin)?;
        let run = Envoy::run_expect_exit(&text, 2, Duration::from_secs(60)).await?;
        let validate = Envoy::validate(&text).await?;
        for (mode, report) in [("serve", &run), ("validate", &validate)] {
            let tail = lazyxds_e2e::process::tail(&report.log, 30);
            match report.status {
                Some(s) => ensure!(
                    !s.success(),
                    "Envoy ({mode}) accepted plugin config {plugin}; log:\n{tail}"
                ),
                None => anyhow::bail!(
                    "Envoy ({mode}) kept running with plugin config {plugin}; log:\n{tail}"
                ),
            }
            let naming: Vec<&str> = report.log.lines().filter(|l| l.contains(field)).collect();
            ensure!(
                !naming.is_empty(),
                "Envoy's log ({mode}) never names the field `{field}` (config {plugin}); log:\n{tail}"
            );
            eprintln!(
                "{plugin}: Envoy ({mode}) {} after {:?}; {}",
                report.status.map_or("running".into(), |s| s.to_string()),
                report.elapsed,
                naming[0].trim()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn unmatched_routes_produce_no_edge() -> Result<()> {
    let stack = Stack::start(json!({})).await?;
    // A short name (no namespace table from this controller: it waits for one, in vain,
    // then goes on unchanged) and odd Host values the filter must leave alone.
    let long = "a".repeat(300);
    let unknown = [
        "unknown.default.svc.cluster.local",
        "nope.example",
        "reviews",
        "reviews:99999",
        "-reviews:9080",
        "reviews..default:9080",
        long.as_str(),
    ];
    let outcomes = stack
        .load(
            &plan(&sources(10, 19), &unknown),
            8,
            Duration::from_secs(30),
        )
        .await;
    ensure_all(&outcomes, 404, "unroutable hosts")?;
    let sent = outcomes.len() as u64;
    let no_route = counter_reaches(&stack, SKIPPED_NO_ROUTE, sent).await?;
    ensure!(
        no_route == sent,
        "{SKIPPED_NO_ROUTE} = {no_route}, sent {sent}"
    );
    let timeouts = counter_reaches(&stack, "lazyxds.routing_wait_timeouts", 1).await?;
    ensure!(
        timeouts >= 1,
        "`reviews` never waited for a namespace table"
    );
    // Many flush periods (20 ms) later, still nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = stack.controller.edges().await?;
    ensure!(rows.is_empty(), "404 traffic produced edges: {rows:?}");
    ensure!(
        stack.envoy.counter(SKIPPED_NO_ROUTE).await? == sent,
        "no-route counter moved on"
    );
    Ok(())
}

/// The shipped template itself: valid for Envoy, and its routes send each host where the tests
/// assume (checked without the filter, so this needs only Envoy).
#[tokio::test]
async fn template_validates_and_routes_as_documented() -> Result<()> {
    let backends = gateway::start_backends().await?;
    let config = GatewayConfig {
        listen_port: free_port()?,
        admin_port: free_port()?,
        controller_port: free_port()?,
        wasm_path: None,
        plugin_config: gateway::plugin_config(json!({})),
        backend_ports: backends
            .iter()
            .map(|b| (b.name().to_string(), b.port()))
            .collect(),
    };
    let text = config.render()?;
    let v = Envoy::validate(&text).await?;
    ensure!(
        v.status.is_some_and(|s| s.success()),
        "envoy --mode validate rejected the template: {:?}\n{}",
        v.status,
        lazyxds_e2e::process::tail(&v.log, 20)
    );

    let envoy = Envoy::start(&text, 2).await?;
    let port = config.listen_port;
    let mut seen: BTreeMap<&str, BTreeSet<Option<String>>> = BTreeMap::new();
    for (i, host) in [
        hosts::REVIEWS,
        hosts::RATINGS,
        hosts::DETAILS,
        hosts::PRODUCTPAGE,
        hosts::EXTERNAL,
        hosts::UNKNOWN,
    ]
    .into_iter()
    .enumerate()
    {
        for n in 0..20u8 {
            let src = Ipv4Addr::new(127, 0, 0, 10 + n);
            let r = client::request(src, port, host, "/").await?;
            let want = if host == hosts::UNKNOWN { 404 } else { 200 };
            ensure!(r.status == want, "{host} #{i}: {r:?}");
            seen.entry(host)
                .or_default()
                .insert(r.backend().map(str::to_string));
        }
    }
    let one = |c: &str| BTreeSet::from([Some(c.to_string())]);
    let want: BTreeMap<&str, BTreeSet<Option<String>>> = BTreeMap::from([
        (
            hosts::REVIEWS,
            BTreeSet::from([
                Some(UPSTREAMS[0].1.to_string()),
                Some(UPSTREAMS[1].1.to_string()),
            ]),
        ),
        (hosts::RATINGS, one(UPSTREAMS[2].1)),
        (hosts::DETAILS, one(UPSTREAMS[3].1)),
        (hosts::PRODUCTPAGE, one(UPSTREAMS[4].1)),
        (hosts::EXTERNAL, one("PassthroughCluster")),
        (hosts::UNKNOWN, BTreeSet::from([None])),
    ]);
    ensure!(
        seen == want,
        "routing differs from the template's documentation: {seen:#?}"
    );
    let stopped = envoy.stop(Duration::from_secs(10)).await;
    ensure!(
        stopped.is_some_and(|s| s.success()),
        "Envoy did not exit cleanly: {stopped:?}"
    );
    Ok(())
}
