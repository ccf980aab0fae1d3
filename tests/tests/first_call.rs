//! First-call routing through the real gateway: Envoy 1.40 with the lazyxds filter, routes
//! generated (as istiod would) from the VirtualServices the real controller renders for
//! `tests/testdata/first-call.yaml`, and the controller pushing its namespace table.
//!
//! Two namespaces each have `reviews`; the same `Host: reviews:9080` must reach the
//! caller's own, whether the caller is known by its verified mTLS identity (a client Envoy
//! with a SPIFFE certificate) or by its pod IP (the pushed table) — also on a worker that
//! has no table yet.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lazyxds_e2e::client::{self, request, request_h2c, Planned, Response};
use lazyxds_e2e::client_sidecar::{ClientSidecars, Workload};
use lazyxds_e2e::grpc;
use lazyxds_e2e::mesh::{MeshOptions, MeshStack, INTERNET};
use serde_json::json;

const EXTERNAL: &str = "api.external.test";

fn topology() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/first-call.yaml")
}

fn pod(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, d)
}

/// Pods of the topology: ns-a has .21 and .22, ns-b .31 and .32.
const A: [u8; 2] = [21, 22];
const B: [u8; 2] = [31, 32];

fn cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

fn svc(name: &str, ns: &str) -> String {
    format!("{name}.{ns}.svc.cluster.local")
}

async fn start(options: MeshOptions) -> Result<(MeshStack, tempfile::TempDir)> {
    let out = tempfile::tempdir()?;
    let stack = MeshStack::start_with(&topology(), out.path(), options).await?;
    Ok((stack, out))
}

/// `r` was served by `want` (the backend named after the cluster) and that backend saw
/// `host` as the Host.
fn served_by(r: &Response, want: &str, host: &str, what: &str) -> Result<()> {
    ensure!(
        r.status == 200 && r.backend() == Some(want) && r.request_host() == Some(host),
        "{what}: want 200 from {want} with Host {host}, got {} from {:?} with Host {:?}: {}",
        r.status,
        r.backend(),
        r.request_host(),
        r.body.trim()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_names_reach_the_callers_namespace_by_identity_or_pod_ip() -> Result<()> {
    let started = Instant::now();
    let (stack, _out) = start(MeshOptions {
        mtls: true,
        ..MeshOptions::default()
    })
    .await?;
    let port = stack.listen_port;
    let (a, b) = (svc("reviews", "ns-a"), svc("reviews", "ns-b"));

    // (b) By pod IP, the very first requests on fresh workers: each namespace its own.
    // A worker that has not received the table yet holds the request until it has.
    let first = futures_join(vec![
        request(pod(A[0]), port, "reviews:9080", "/"),
        request(pod(B[0]), port, "reviews:9080", "/"),
    ])
    .await;
    served_by(
        &first[0],
        &cluster(9080, "", &a),
        &format!("{a}:9080"),
        "first call from ns-a",
    )?;
    served_by(
        &first[1],
        &cluster(9080, "", &b),
        &format!("{b}:9080"),
        "first call from ns-b",
    )?;
    eprintln!(
        "first calls answered {:?} after the start",
        started.elapsed()
    );

    // Every short form, from pods of both namespaces.
    for (source, authority, want_cluster, want_host) in [
        (
            A[1],
            "reviews:9080",
            cluster(9080, "", &a),
            format!("{a}:9080"),
        ),
        (
            B[1],
            "reviews:9080",
            cluster(9080, "", &b),
            format!("{b}:9080"),
        ),
        (
            A[0],
            "Reviews:9080",
            cluster(9080, "", &a),
            format!("{a}:9080"),
        ),
        (
            A[0],
            "reviews.ns-b:9080",
            cluster(9080, "", &b),
            format!("{b}:9080"),
        ),
        (
            B[0],
            "reviews.ns-a:9080",
            cluster(9080, "", &a),
            format!("{a}:9080"),
        ),
        (
            B[0],
            "reviews.ns-a.svc:9080",
            cluster(9080, "", &a),
            format!("{a}:9080"),
        ),
        // An FQDN is left as it is.
        (
            A[0],
            "reviews.ns-b.svc.cluster.local:9080",
            cluster(9080, "", &b),
            format!("{b}:9080"),
        ),
    ] {
        let r = request(pod(source), port, authority, "/").await?;
        served_by(
            &r,
            &want_cluster,
            &want_host,
            &format!("{authority} from {}", pod(source)),
        )?;
    }

    // (a) By verified identity: sidecars with SPIFFE certificates, over mTLS. The ns-a
    // workload's connections come from an ns-b pod's address (IPs are reused; identities
    // are not), the ns-b one's from an address nobody has.
    let ca = stack.ca.as_ref().context("mTLS stack has a CA")?;
    let sidecars = ClientSidecars::start(
        ca,
        stack.mtls_port.context("mTLS port")?,
        &[
            Workload {
                namespace: "ns-a".into(),
                service_account: "client".into(),
                source: pod(B[1]),
            },
            Workload {
                namespace: "ns-b".into(),
                service_account: "client".into(),
                source: pod(41),
            },
        ],
    )
    .await?;
    for (i, want) in [(0, &a), (1, &b)] {
        for authority in ["reviews:9080", "reviews.ns-a.svc.cluster.local:9080"] {
            let r = request(Ipv4Addr::LOCALHOST, sidecars.ports[i], authority, "/").await?;
            let want = if authority.contains('.') { &a } else { want };
            served_by(
                &r,
                &cluster(9080, "", want),
                &format!("{want}:9080"),
                &format!("{authority} over mTLS as workload {i}"),
            )?;
        }
    }
    let identity = counter_reaches(&stack, "lazyxds.routing_rewrites_by_identity", 2).await?;
    ensure!(identity == 2, "rewrites by identity: {identity}");

    // The edges carry the routed host and the identity: the controller learns the FQDN.
    let edges = stack.controller.edges().await?;
    let spiffe_a = "spiffe://cluster.local/ns/ns-a/sa/client";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut edges = edges;
    while !edges
        .iter()
        .any(|e| e.principal.as_deref() == Some(spiffe_a))
    {
        ensure!(
            Instant::now() < deadline,
            "no edge with identity {spiffe_a}: {edges:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        edges = stack.controller.edges().await?;
    }
    let e = edges
        .iter()
        .find(|e| e.principal.as_deref() == Some(spiffe_a))
        .context("edge")?;
    ensure!(
        e.host.as_deref() == Some(a.as_str()) && e.source_ip == pod(B[1]),
        "edge {e:?}"
    );
    eprintln!("whole test {:?}", started.elapsed());
    Ok(())
}

/// Filter counters are exported on the worker's tick: poll.
async fn counter_reaches(stack: &MeshStack, name: &str, want: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = stack.envoy.counter(name).await?;
        if got >= want || Instant::now() >= deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn futures_join<F: std::future::Future<Output = Result<Response>> + Send + 'static>(
    futures: Vec<F>,
) -> Vec<Response> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        match h.await {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(e)) => panic!("request failed: {e:#}"),
            Err(e) => panic!("request task: {e}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_user_routes_and_protocols() -> Result<()> {
    let (stack, _out) = start(MeshOptions::default()).await?;
    let port = stack.listen_port;
    let ratings = svc("ratings", "ns-a");

    // A two-port service: each request reaches the port its authority names.
    for p in [9080, 9081] {
        let r = request(pod(A[0]), port, &format!("ratings:{p}"), "/").await?;
        served_by(
            &r,
            &cluster(p, "", &ratings),
            &format!("{ratings}:{p}"),
            "two ports",
        )?;
    }
    // A Host without port is port 80: reviews has none.
    let r = request(pod(A[0]), port, "reviews", "/").await?;
    ensure!(
        r.status == 404 && r.backend().is_none(),
        "reviews (port 80): {r:?}"
    );

    // The user's weighted route (75/25 between subsets), for a port-80 service.
    let details = svc("details", "ns-b");
    let plan: Vec<Planned> = (0..200)
        .map(|i| Planned::new(pod(B[i % 2]), "details"))
        .collect();
    let outcomes = client::run_load(port, &plan, 16, Duration::from_secs(30)).await;
    let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes {
        ensure!(o.status == Some(200), "weighted route: {o:?}");
        *by_backend
            .entry(o.backend.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let v1 = by_backend
        .get(&cluster(80, "v1", &details))
        .copied()
        .unwrap_or(0);
    let v2 = by_backend
        .get(&cluster(80, "v2", &details))
        .copied()
        .unwrap_or(0);
    eprintln!("weighted 75/25 over 200 requests: v1 {v1}, v2 {v2}");
    ensure!(v1 + v2 == 200, "only the two subsets: {by_backend:?}");
    // 4 standard deviations of a binomial(200, 0.75) (about ±6.1 each).
    ensure!((125..=175).contains(&v1), "v1 {v1}, v2 {v2}: not 75/25");

    // h2c: the authority is `:authority`; the backend still gets the rewritten one.
    let (a, b) = (svc("reviews", "ns-a"), svc("reviews", "ns-b"));
    for (source, want) in [(A[1], &a), (B[1], &b)] {
        let r = request_h2c(pod(source), port, "reviews:9080", "/").await?;
        served_by(&r, &cluster(9080, "", want), &format!("{want}:9080"), "h2c")?;
    }

    // gRPC (HTTP/2 upstream): the check succeeds only on the backend named in it.
    let greeter = cluster(9090, "", &svc("greeter", "ns-a"));
    grpc::check_or_explain(pod(A[0]), port, "greeter:9090", &greeter).await?;
    grpc::check_or_explain(pod(B[0]), port, "greeter.ns-a:9090", &greeter).await?;
    // From ns-b, `greeter` is ns-b's: there is none.
    let missing = grpc::check(pod(B[0]), port, "greeter:9090", &greeter).await;
    ensure!(missing.is_err(), "greeter from ns-b: {missing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_follow_the_callers_policy_and_odd_hosts_pass_untouched() -> Result<()> {
    let (stack, _out) = start(MeshOptions {
        internet_names: vec![EXTERNAL.into()],
        ..MeshOptions::default()
    })
    .await?;
    let port = stack.listen_port;
    let internet = stack.internet.port();
    let external = format!("{EXTERNAL}:{internet}");
    let literal = format!("127.0.0.1:{internet}");

    // ALLOW_ANY (ns-a): forwarded, as its sidecar would have; by name and by IP.
    for host in [&external, &literal] {
        let r = request(pod(A[0]), port, host, "/").await?;
        served_by(&r, INTERNET, host, "external from ALLOW_ANY")?;
    }
    ensure!(
        stack.dns.queries().iter().any(|q| q.starts_with(EXTERNAL)),
        "resolved through the fake DNS: {:?}",
        stack.dns.queries()
    );
    // REGISTRY_ONLY (ns-b): refused by the filter, with a body that says why.
    for host in [&external, &literal] {
        let r = request(pod(B[0]), port, host, "/").await?;
        ensure!(
            r.status == 502
                && r.backend().is_none()
                && r.body.contains(host.as_str())
                && r.body.contains("namespace ns-b is REGISTRY_ONLY"),
            "external from REGISTRY_ONLY: {r:?}"
        );
    }
    ensure!(stack.internet.served() == 2, "nothing from ns-b got out");
    // A registered external host (HTTP ServiceEntry) is no unknown host.
    let r = request(pod(B[1]), port, "api.partner.test", "/").await?;
    served_by(
        &r,
        &cluster(80, "", "api.partner.test"),
        "api.partner.test",
        "ServiceEntry",
    )?;

    // A short name no Service has: a 404 that says so (not forwarded, not refused).
    for source in [A[0], B[0]] {
        let r = request(pod(source), port, "nosuch:9080", "/").await?;
        ensure!(
            r.status == 404 && r.body.contains("no such service"),
            "nosuch from {}: {r:?}",
            pod(source)
        );
    }

    // Odd Host values are never rewritten; nothing breaks (Envoy's answer, whichever it
    // is, never a mesh backend; the filter keeps serving).
    let long = "a".repeat(300);
    let odd = [
        "re views:9080",
        ":9080",
        "reviews:99999",
        "reviews:",
        "-reviews:9080",
        "r\u{e9}views:9080",
        "\u{440}\u{435}\u{432}\u{44c}\u{44e}",
        long.as_str(),
        "[::1]:9080",
        "reviews..ns-a:9080",
        // Not a short name to Istio (lazyxds_proto::authority): no sidecar route or DNS
        // alias has it, so neither does the gateway.
        "reviews.ns-b.svc.cluster:9080",
    ];
    let mut answers = BTreeMap::new();
    for host in odd {
        for source in [A[0], B[0]] {
            let r = request(pod(source), port, host, "/").await?;
            ensure!(
                r.backend().is_none() && [400, 404, 502, 503].contains(&r.status),
                "{host:?} from {}: {r:?}",
                pod(source)
            );
            let shown: String = host.chars().take(12).collect();
            answers.insert((shown, pod(source)), r.status);
        }
    }
    eprintln!("odd hosts (Envoy 400: refused by its codec; 502: refused for REGISTRY_ONLY; 503: no such name out there): {answers:?}");
    let r = request(pod(A[1]), port, "reviews:9080", "/").await?;
    let a = svc("reviews", "ns-a");
    served_by(
        &r,
        &cluster(9080, "", &a),
        &format!("{a}:9080"),
        "after odd hosts",
    )?;
    let log = stack.envoy.log();
    ensure!(
        !log.contains("lazyxds: panic"),
        "the filter panicked:\n{log}"
    );
    let refused = counter_reaches(&stack, "lazyxds.routing_external_refused", 2).await?;
    let forwarded = counter_reaches(&stack, "lazyxds.routing_external_forwarded", 2).await?;
    eprintln!(
        "external: {forwarded} forwarded, {refused} refused; DNS queries {:?}",
        stack.dns.queries()
    );
    ensure!(
        refused >= 2 && forwarded >= 2,
        "{refused} refused, {forwarded} forwarded"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_table_holds_the_request_until_it_arrives() -> Result<()> {
    // The controller is down while the gateway starts: its workers have no table. A
    // request needing it waits (up to routing_wait_ms) instead of failing; the controller
    // comes back, the table arrives, the request goes on to the right backend.
    let (mut stack, _out) = start(MeshOptions {
        concurrency: 1,
        controller_down: true,
        plugin: json!({"routing_wait_ms": 8000, "reconnect_max_backoff_ms": 100}),
        ..MeshOptions::default()
    })
    .await?;
    let port = stack.listen_port;
    let sent = Instant::now();
    let waiting = tokio::spawn(async move { request(pod(B[0]), port, "reviews:9080", "/").await });
    // Held: no answer while there is no controller.
    tokio::time::sleep(Duration::from_millis(400)).await;
    ensure!(!waiting.is_finished(), "answered without the table");
    let waits = counter_reaches(&stack, "lazyxds.routing_waits", 1).await?;
    ensure!(waits == 1, "routing_waits = {waits}");
    stack.controller.restart().await?;
    let r = waiting.await??;
    let held = sent.elapsed();
    let b = svc("reviews", "ns-b");
    served_by(
        &r,
        &cluster(9080, "", &b),
        &format!("{b}:9080"),
        "held request",
    )?;
    eprintln!("held {held:?} (controller down for 400 ms, then restarted)");
    ensure!(
        stack.envoy.counter("lazyxds.routing_wait_timeouts").await? == 0,
        "it was the table, not the timeout, that released it"
    );
    // The table is here: the next one is not held.
    let t = Instant::now();
    let r = request(pod(A[0]), port, "reviews:9080", "/").await?;
    let a = svc("reviews", "ns-a");
    served_by(
        &r,
        &cluster(9080, "", &a),
        &format!("{a}:9080"),
        "after the table",
    )?;
    ensure!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    ensure!(stack.envoy.counter("lazyxds.routing_waits").await? == 1);
    Ok(())
}
