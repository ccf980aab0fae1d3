//! The mini-mesh (issue 16): the real control plane, a process node running pods in network
//! namespaces of their own with Istio's sidecar (injected by `istioctl kube-inject`, traffic
//! captured by `pilot-agent istio-iptables`, DNS answered by the agent, certificates from
//! istiod), the lazy gateway from `lazyxds install` on the same node, and test apps sending
//! real requests. Runs in a network namespace of its own (`tests/cluster/netns-run`).
//!
//! What it shows: an opted-in workload's requests never fail through learning (first calls
//! via the gateway, the controller writes its Sidecar, istiod pushes, the next calls go
//! direct), for HTTP/1.1, gRPC over h2c, a two-port Service, TCP and HTTPS outside the
//! mesh; converged traffic goes direct (counted from Envoy's own counters); a user's
//! weighted VirtualService holds through the gateway and direct; the controller killed
//! (`kill -9`, restarted by the node) and its leader's pod deleted (the standby takes
//! over) loses no dependency and fails no request, and learning goes on after both;
//! opting a workload out and the kill switch give back the full config, again with no
//! failed request.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lazyxds_e2e::cluster::inject::Injector;
use lazyxds_e2e::cluster::lazyxds::{self, leader_pod, Installed, NAMESPACE};
use lazyxds_e2e::cluster::node::{self, ClusterDns, Node, PodInfo};
use lazyxds_e2e::cluster::{Cluster, ClusterOptions};
use serde_json::{json, Value};

const APP_IMAGE: &str = "lazyxds-test/mesh-app";
const SIDECARS: &str = "sidecars.networking.istio.io";
/// Each client sends one request per interval.
const CLIENT_INTERVAL_MS: u64 = 50;
/// The weigher's interval: many requests to reviews while only the gateway can route them.
const WEIGHER_INTERVAL_MS: u64 = 20;
/// The file (in a client's working directory) it reads added URLs from.
const URLS_FILE: &str = "urls.txt";
/// The external HTTPS destination: a name only the cluster's DNS knows, an address no
/// Service has, a certificate of its own (trusted by the caller through a ConfigMap).
const EXTERNAL_HOST: &str = "shop.example.test";
const EXTERNAL_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 50);
const EXTERNAL_CA: &str = "external-ca";
/// The weights of the user's VirtualService: v1 80, v2 20.
const V2_WEIGHT: f64 = 0.2;

fn to_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_norway::to_string(o).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Applies `objects`, workloads injected as the webhook would.
fn apply_injected(c: &Cluster, injector: &Injector, objects: &[Value]) {
    let injected = injector.inject(&to_yaml(objects)).unwrap();
    c.apply(&injected).unwrap();
}

fn deployment(
    ns: &str,
    name: &str,
    labels: Value,
    annotations: Value,
    args: &[&str],
    port: Option<u16>,
) -> Value {
    let mut container = json!({"name": "app", "image": APP_IMAGE, "args": args});
    if let Some(p) = port {
        container["ports"] = json!([{"containerPort": p, "name": "http"}]);
        container["readinessProbe"] =
            json!({"httpGet": {"path": "/", "port": p}, "periodSeconds": 1});
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels, "annotations": annotations},
                "spec": {"containers": [container]}}}})
}

fn client(ns: &str, name: &str, annotations: Value, urls: &[&str]) -> Value {
    client_every(ns, name, annotations, urls, CLIENT_INTERVAL_MS)
}

/// A client sending one request every `interval_ms`, to `urls` and then to those the test
/// adds to its [`URLS_FILE`].
fn client_every(
    ns: &str,
    name: &str,
    annotations: Value,
    urls: &[&str],
    interval_ms: u64,
) -> Value {
    let interval = interval_ms.to_string();
    let mut args = vec![
        "client",
        "--out",
        "results.jsonl",
        "--interval-ms",
        &interval,
        "--urls-file",
        URLS_FILE,
    ];
    let https = urls.iter().any(|u| u.starts_with("https://"));
    if https {
        args.extend(["--ca", "/etc/external-ca/ca.pem"]);
    }
    for u in urls {
        args.extend(["--url", u]);
    }
    let mut d = deployment(ns, name, json!({"app": name}), annotations, &args, None);
    if https {
        // The external server's certificate, from a ConfigMap, as a volume.
        let spec = &mut d["spec"]["template"]["spec"];
        spec["volumes"] = json!([{"name": "external-ca", "configMap": {"name": EXTERNAL_CA}}]);
        spec["containers"][0]["volumeMounts"] =
            json!([{"name": "external-ca", "mountPath": "/etc/external-ca"}]);
    }
    d
}

/// Adds `url` to what a running client calls (its [`URLS_FILE`]).
fn add_url(pod: &PodInfo, url: &str) {
    use std::io::Write;
    let path = pod.dir.join("root").join(URLS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "{url}").unwrap();
}

/// One request a client made, from its results file.
#[derive(Debug)]
struct Sent {
    client: String,
    /// The first label of the URL's host: `reviews`, `db`, `inventory`, `grpc-echo`, …;
    /// `shop` for the external host.
    target: String,
    /// `https://` to the external host (outside the mesh).
    external: bool,
    at_ms: u64,
    ok: bool,
    backend: Option<String>,
    /// The caller identity the backend's sidecar saw (the gateway's, or the client's own);
    /// HTTP/1.1 echoes only (gRPC and TCP answers do not carry it).
    via_gateway: bool,
    line: String,
}

/// The backends that may answer a URL (by its host's first label).
fn expected_backends(target: &str) -> &'static [&'static str] {
    match target {
        "reviews" => &["v1", "v2"],
        // Services over reviews' pods: `ratings` and the two-port `inventory` select v1,
        // `details` v2.
        "ratings" | "inventory" => &["v1"],
        "details" => &["v2"],
        "db" => &["db"],
        "grpc-echo" => &["grpc-echo"],
        _ => &["external"],
    }
}

/// A client's requests answered before `until_ms` (ms since the epoch). The node tears
/// pods down one by one while clients still send: a request answered after teardown began
/// may have met a backend already gone, which says nothing about the mesh.
fn results(pod: &PodInfo, until_ms: u64) -> Vec<Sent> {
    let path = pod.dir.join("root/results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            if v["at_ms"].as_u64().is_some_and(|at| at >= until_ms) {
                return None;
            }
            let backend = v["backend"].as_str().map(str::to_string);
            let xfcc = v["xfcc"].as_str().unwrap_or_default();
            let url = v["url"].as_str().unwrap_or_default();
            let host = url.split("://").nth(1).unwrap_or_default();
            let target = host
                .split(['.', ':', '/'])
                .next()
                .unwrap_or_default()
                .to_string();
            let want = expected_backends(&target);
            Some(Sent {
                client: format!("{}/{}", pod.namespace, pod.name),
                external: url.starts_with("https://"),
                at_ms: v["at_ms"].as_u64().unwrap_or(0),
                ok: v["status"] == 200 && backend.as_deref().is_some_and(|b| want.contains(&b)),
                backend,
                target,
                via_gateway: xfcc.contains(&format!(
                    "URI=spiffe://cluster.local/ns/{NAMESPACE}/sa/lazyxds-gateway"
                )),
                line: l.to_string(),
            })
        })
        .collect()
}

/// (requests via the gateway, requests direct to any of `hosts`) by a client's sidecar,
/// from its Envoy's `upstream_rq_total` counters (HTTP/1.1 and gRPC alike).
fn upstream_counts(pod: &PodInfo, hosts: &[&str]) -> (u64, u64) {
    let stats = node::proxy_stats(pod, "upstream_rq_total").unwrap_or_default();
    let mut gateway = 0;
    let mut direct = 0;
    for (k, v) in stats {
        if !k.ends_with(".upstream_rq_total") || !k.starts_with("cluster.outbound|") {
            continue;
        }
        if k.contains(&format!("lazyxds-gateway.{NAMESPACE}.svc")) {
            gateway += v;
        } else if hosts
            .iter()
            // Istio's stat name is the cluster's name and `;` (its alt_stat_name).
            .any(|h| k.contains(&format!("|{h};")) || k.contains(&format!("|{h}.upstream")))
        {
            direct += v;
        }
    }
    (gateway, direct)
}

/// Whether a pod's sidecar has a cluster for `host` (port 9080): `false` while a scoped
/// Sidecar hides it, `true` with the full config (its Envoy's `/clusters`).
fn has_cluster(pod: &PodInfo, host: &str) -> bool {
    node::proxy_admin(pod, "/clusters")
        .unwrap_or_default()
        .contains(&format!("outbound|9080||{host}::"))
}

/// Waits until `pod`'s sidecar has learned every one of `hosts` (its Sidecar lists them) and
/// goes direct: no request via the gateway for 3 s while requests to them flow direct.
async fn wait_converged(
    c: &Cluster,
    node: &Node,
    pod: &PodInfo,
    workload: &str,
    hosts: &[&str],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let learned = deps(c, &pod.namespace, workload)
            .is_some_and(|d| hosts.iter().all(|h| d.iter().any(|x| x == h)));
        if learned {
            let (g0, d0) = upstream_counts(pod, hosts);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (g1, d1) = upstream_counts(pod, hosts);
            if g1 == g0 && d1 > d0 {
                return;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if Instant::now() >= deadline {
            for p in node.pods() {
                if let Ok(dump) = node::proxy_admin(&p, "/config_dump?include_eds") {
                    let _ = std::fs::write(p.dir.join("config_dump.json"), dump);
                }
            }
            let leader = current_leader(c).unwrap_or_default();
            panic!(
                "{}/{workload} not converged on {hosts:?} within {within:?}: deps {:?}, counts {:?}; node errors {:?}\ncontroller {leader}:\n{}",
                pod.namespace,
                deps(c, &pod.namespace, workload),
                upstream_counts(pod, hosts),
                node.errors(),
                controller_log(node, &leader)
            );
        }
    }
}

fn deps(c: &Cluster, ns: &str, workload: &str) -> Option<Vec<String>> {
    let sc = c
        .get(
            SIDECARS,
            Some(ns),
            &format!("lazyxds-deployment-{workload}"),
        )
        .ok()??;
    let deps: serde_json::Map<String, Value> =
        serde_json::from_str(sc["metadata"]["annotations"]["lazyxds.io/deps"].as_str()?).ok()?;
    Some(deps.keys().cloned().collect())
}

/// The controller pod that leads now (it labels itself `lazyxds.io/leader=true`), if any.
fn current_leader(c: &Cluster) -> Option<String> {
    leader_pod(c).ok().flatten()
}

/// Waits for a leader other than `not` (none: any).
async fn wait_leader_other_than(c: &Cluster, not: Option<&str>, within: Duration) -> String {
    let t = Instant::now();
    loop {
        if let Some(name) = current_leader(c).filter(|n| Some(n.as_str()) != not) {
            return name;
        }
        assert!(
            t.elapsed() < within,
            "no controller leads (other than {not:?}) after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_leader(c: &Cluster) -> String {
    wait_leader_other_than(c, None, Duration::from_secs(60)).await
}

/// Every Sidecar lazyxds owns, by `namespace/name`, with its learned deps.
fn our_sidecars(c: &Cluster) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let out = c.kubectl(
        &[
            "get",
            SIDECARS,
            "-A",
            "-l",
            "app.kubernetes.io/managed-by=lazyxds",
            "-o",
            "json",
        ],
        None,
    )?;
    let list: Value = serde_json::from_str(&out)?;
    let mut all = BTreeMap::new();
    for sc in list["items"].as_array().into_iter().flatten() {
        let name = format!(
            "{}/{}",
            sc["metadata"]["namespace"].as_str().unwrap_or_default(),
            sc["metadata"]["name"].as_str().unwrap_or_default()
        );
        let deps: serde_json::Map<String, Value> = sc["metadata"]["annotations"]["lazyxds.io/deps"]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        all.insert(name, deps.keys().cloned().collect());
    }
    Ok(all)
}

/// Watches our Sidecars (every 300 ms) while the controller is killed and fails over: any
/// Sidecar that disappears or loses a dependency it had is a loss.
struct LossMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl LossMonitor {
    fn start(c: &'static Cluster) -> LossMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let sp = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut losses = Vec::new();
            let mut polls = 0;
            while !sp.load(Ordering::Relaxed) {
                if let Ok(now) = our_sidecars(c) {
                    polls += 1;
                    for (name, had) in &seen {
                        match now.get(name) {
                            None => losses.push(format!("{name} deleted")),
                            Some(has) => {
                                let lost: Vec<&String> = had.difference(has).collect();
                                if !lost.is_empty() {
                                    losses.push(format!("{name} lost {lost:?}"));
                                }
                            }
                        }
                    }
                    for (name, has) in now {
                        seen.entry(name).or_default().extend(has);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            (polls, losses)
        });
        LossMonitor {
            stop,
            thread: Some(thread),
        }
    }

    /// (polls, losses).
    fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// Every dep of `before` is still in `after`'s Sidecar of the same name.
fn assert_kept(
    what: &str,
    before: &BTreeMap<String, BTreeSet<String>>,
    after: &BTreeMap<String, BTreeSet<String>>,
) {
    for (name, deps) in before {
        let now = after.get(name);
        let lost: Vec<&String> = deps
            .iter()
            .filter(|d| !now.is_some_and(|n| n.contains(*d)))
            .collect();
        assert!(
            lost.is_empty(),
            "{what}: {name} lost {lost:?} (had {deps:?}, has {now:?})"
        );
    }
}

/// The last lines of a controller pod's log (its container `lazyxds`, on the node).
fn controller_log(node: &Node, pod: &str) -> String {
    node.pods()
        .iter()
        .find(|p| p.name == pod)
        .and_then(|p| std::fs::read_to_string(p.dir.join("lazyxds.log")).ok())
        .map(|l| lazyxds_e2e::process::tail(&l, 30))
        .unwrap_or_default()
}

fn split_within_4_sigma(what: &str, sent: &[&Sent]) -> String {
    assert!(!sent.is_empty(), "{what}: no requests to reviews");
    let n = sent.len() as f64;
    let v2 = sent
        .iter()
        .filter(|s| s.backend.as_deref() == Some("v2"))
        .count() as f64;
    let p = v2 / n;
    let sigma = (V2_WEIGHT * (1.0 - V2_WEIGHT) / n).sqrt();
    let line = format!(
        "{what}: {v2}/{n} to v2 = {:.1} % (want 20 % ± 4σ, σ = {:.2} %: ± {:.1} %)",
        100.0 * p,
        100.0 * sigma,
        400.0 * sigma
    );
    assert!((p - V2_WEIGHT).abs() <= 4.0 * sigma, "{line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_workloads_requests_never_fail_through_learning_and_go_direct_once_converged() {
    let t0 = Instant::now();
    let bridge = node::make_bridge().unwrap();
    let c: &'static Cluster = tokio::task::spawn_blocking(move || {
        Cluster::shared_with(ClusterOptions {
            listen: bridge,
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    // The pods' nameserver (their resolv.conf), standing in for kube-dns.
    let _dns = ClusterDns::start(
        c,
        BTreeMap::from([(EXTERNAL_HOST.to_string(), EXTERNAL_IP)]),
    )
    .await
    .unwrap();
    // The external HTTPS server, in the test's namespace (the "Internet" of the pods).
    lazyxds::add_pod_address(EXTERNAL_IP).unwrap();
    let external =
        lazyxds_e2e::tls::HttpsServer::start("external", EXTERNAL_HOST, (EXTERNAL_IP, 443).into())
            .await
            .unwrap();
    let injector: &'static Injector = Box::leak(Box::new(Injector::new(c).unwrap()));
    // The node's images: our app, and the controller image the install names (the debug
    // build of the lazyxds binary).
    let (_, rendered) = lazyxds::render(&[]).unwrap();
    let controller_image = rendered
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "lazyxds")
        .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .expect("the install's controller image")
        .to_string();
    let images = BTreeMap::from([
        (
            APP_IMAGE.to_string(),
            PathBuf::from(env!("CARGO_BIN_EXE_mesh-app")),
        ),
        (controller_image, lazyxds_e2e::paths::lazyxds_bin().unwrap()),
    ]);
    let mut node = tokio::task::spawn_blocking(move || Node::start(c, images))
        .await
        .unwrap()
        .unwrap();

    // The install, its Deployments injected (the gateway with Istio's gateway template, the
    // controller with the sidecar one), all run on the node: the gateway reaches the
    // leader through the `lazyxds` Service, over mTLS, into the controller's sidecar.
    tokio::task::spawn_blocking(move || Installed::shared_injected(c, injector))
        .await
        .unwrap()
        .unwrap();
    // Two controller replicas and the gateway.
    node.wait_ready(NAMESPACE, "lazyxds-", 3, Duration::from_secs(180))
        .await
        .unwrap();
    let leader = wait_leader(c).await;
    eprintln!(
        "mesh: control plane, controller and gateway up at {:?} ({leader} leads)",
        t0.elapsed()
    );

    // The application: reviews v1/v2 behind a user VirtualService 80/20 in `shop`; callers
    // by short name (shop) and FQDN (front), both opted in; one caller not opted in.
    let shop = c
        .namespace("shop", json!({}), json!({"lazyxds.io/enabled": "true"}))
        .unwrap();
    let front = c
        .namespace("front", json!({}), json!({"lazyxds.io/enabled": "true"}))
        .unwrap();
    let fqdn = |name: &str| format!("{name}.{shop}.svc.cluster.local");
    let reviews = fqdn("reviews");
    let short_url = "http://reviews:9080/".to_string();
    let fqdn_url = format!("http://{reviews}:9080/");
    // A TCP-only Service (a database stand-in), by short name and FQDN.
    let db_short = "tcp://db:5432".to_string();
    let db_fqdn = format!("tcp://{}:5432", fqdn("db"));
    // A two-port Service (`http` 9080 and `http-admin` 8080, both HTTP) and a gRPC one (h2c).
    let inventory_urls = [
        "http://inventory:9080/".to_string(),
        "http://inventory:8080/".to_string(),
    ];
    let grpc_url = "grpc://grpc-echo:50051/grpc-echo".to_string();
    // HTTPS outside the mesh under ALLOW_ANY (the mesh's default), from an opted-in caller.
    let external_url = format!("https://{EXTERNAL_HOST}/");
    // `locked` (opted in) is REGISTRY_ONLY by its namespace's own Sidecar: the external host
    // must stay unreachable for its callers, opted in or not.
    let locked = c
        .namespace("locked", json!({}), json!({"lazyxds.io/enabled": "true"}))
        .unwrap();
    let mut objects = vec![
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": locked},
        "spec": {"egress": [{"hosts": ["*/*"]}],
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}}),
    ];
    for ns in [&front, &locked] {
        objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": EXTERNAL_CA, "namespace": ns},
            "data": {"ca.pem": external.cert_pem}}));
    }
    c.apply_json(&objects).unwrap();
    let http_service = |name: &str, selector: Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": shop},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}})
    };
    c.apply_json(&[
        http_service("reviews", json!({"app": "reviews"})),
        // Dependencies learned only after the controller was killed: more Services over
        // reviews' pods.
        http_service("ratings", json!({"app": "reviews", "version": "v1"})),
        http_service("details", json!({"app": "reviews", "version": "v2"})),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inventory", "namespace": shop},
            "spec": {"selector": {"app": "reviews", "version": "v1"}, "ports": [
                {"name": "http", "port": 9080, "targetPort": 9080},
                {"name": "http-admin", "port": 8080, "targetPort": 9081}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "grpc-echo", "namespace": shop},
            "spec": {"selector": {"app": "grpc-echo"}, "ports": [{"name": "grpc", "port": 50051, "targetPort": 50051}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": shop},
            "spec": {"selector": {"app": "db"}, "ports": [{"name": "tcp", "port": 5432, "targetPort": 5432}]}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": shop},
            "spec": {"host": "reviews", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": shop},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}]}]}}),
    ])
    .unwrap();
    apply_injected(
        c,
        injector,
        &[
            deployment(
                &shop,
                "reviews-v1",
                json!({"app": "reviews", "version": "v1"}),
                json!({}),
                // 9081: inventory's second port.
                &["echo", "--name", "v1", "--port", "9080", "--port", "9081"],
                Some(9080),
            ),
            deployment(
                &shop,
                "reviews-v2",
                json!({"app": "reviews", "version": "v2"}),
                json!({}),
                &["echo", "--name", "v2", "--port", "9080"],
                Some(9080),
            ),
            deployment(
                &shop,
                "db",
                json!({"app": "db"}),
                json!({}),
                &["tcp-echo", "--name", "db", "--port", "5432"],
                None,
            ),
            deployment(
                &shop,
                "grpc-echo",
                json!({"app": "grpc-echo"}),
                json!({}),
                &["grpc-echo", "--name", "grpc-echo", "--port", "50051"],
                None,
            ),
        ],
    );
    node.wait_ready(&shop, "db-", 1, Duration::from_secs(180))
        .await
        .unwrap();
    node.wait_ready(&shop, "grpc-echo-", 1, Duration::from_secs(180))
        .await
        .unwrap();
    node.wait_ready(&shop, "reviews-v", 2, Duration::from_secs(180))
        .await
        .unwrap();
    apply_injected(
        c,
        injector,
        &[
            client(
                &shop,
                "caller",
                json!({}),
                &[
                    &short_url,
                    &db_short,
                    &inventory_urls[0],
                    &inventory_urls[1],
                    &grpc_url,
                ],
            ),
            client(
                &front,
                "caller",
                json!({}),
                &[&fqdn_url, &db_fqdn, &external_url],
            ),
            // Calls nothing until the test gives it reviews while no controller leads.
            client_every(&front, "weigher", json!({}), &[], WEIGHER_INTERVAL_MS),
            client(
                &front,
                "plain-caller",
                json!({"lazyxds.io/enabled": "false"}),
                &[&fqdn_url],
            ),
            client(&locked, "caller", json!({}), &[&fqdn_url, &external_url]),
            client(
                &locked,
                "plain-caller",
                json!({"lazyxds.io/enabled": "false"}),
                &[&fqdn_url, &external_url],
            ),
        ],
    );
    let ready_one = |ns: String, prefix: &'static str| {
        let node = &node;
        async move {
            node.wait_ready(&ns, prefix, 1, Duration::from_secs(180))
                .await
                .unwrap()
                .remove(0)
        }
    };
    let short = ready_one(shop.clone(), "caller-").await;
    let by_fqdn = ready_one(front.clone(), "caller-").await;
    let weigher = ready_one(front.clone(), "weigher-").await;
    let plain = ready_one(front.clone(), "plain-caller-").await;
    let locked_pods = [
        ready_one(locked.clone(), "caller-").await,
        ready_one(locked.clone(), "plain-caller-").await,
    ];
    let apps_up = Instant::now();
    eprintln!("mesh: apps up at {:?}", t0.elapsed());

    // Learning: each opted-in caller's Sidecar gets what it calls over HTTP and gRPC, then
    // its sidecar stops using the gateway (no gateway request for 3 s while direct requests
    // flow).
    let (inventory, grpc_echo) = (fqdn("inventory"), fqdn("grpc-echo"));
    let short_hosts = [reviews.as_str(), inventory.as_str(), grpc_echo.as_str()];
    wait_converged(
        c,
        &node,
        &short,
        "caller",
        &short_hosts,
        Duration::from_secs(60),
    )
    .await;
    wait_converged(
        c,
        &node,
        &by_fqdn,
        "caller",
        &[&reviews],
        Duration::from_secs(60),
    )
    .await;
    let converged_after = apps_up.elapsed();
    eprintln!("mesh: converged {converged_after:?} after the apps were up");

    // Converged means direct: a measured window, counted by the callers' own sidecars.
    let opted_in: [(&PodInfo, &[&str]); 2] = [(&short, &short_hosts), (&by_fqdn, &[&reviews])];
    let before: Vec<(u64, u64)> = opted_in
        .iter()
        .map(|(p, hosts)| upstream_counts(p, hosts))
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut window = Vec::new();
    for ((pod, hosts), b) in opted_in.iter().zip(&before) {
        let a = upstream_counts(pod, hosts);
        let (gw, direct) = (a.0 - b.0, a.1 - b.1);
        let share = direct as f64 / (gw + direct).max(1) as f64;
        window.push(format!(
            "{}/caller: {direct} direct, {gw} via the gateway ({:.1} % direct)",
            pod.namespace,
            100.0 * share
        ));
        assert!(direct >= 50 && share >= 0.99, "{}", window.join("; "));
    }
    // gRPC direct too, from the caller's own counters for grpc-echo's cluster.
    let (_, grpc_direct) = upstream_counts(&short, &[&grpc_echo]);
    assert!(grpc_direct > 0, "no gRPC request went direct");
    let (plain_gw, _) = upstream_counts(&plain, &[&reviews]);
    assert_eq!(
        plain_gw, 0,
        "the caller that is not opted in used the gateway"
    );
    assert!(
        deps(c, &front, "plain-caller").is_none(),
        "a Sidecar for the caller not opted in"
    );
    assert!(node.errors().is_empty(), "node: {:?}", node.errors());
    // The weigher is scoped (its Sidecar exists, reviews hidden from its sidecar) before it
    // calls anything.
    let t = Instant::now();
    while deps(c, &front, "weigher").is_none() || has_cluster(&weigher, &reviews) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "front/weigher not scoped: deps {:?}, reviews in its sidecar: {}",
            deps(c, &front, "weigher"),
            has_cluster(&weigher, &reviews)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Controller loss (1): `kill -9` of the leading controller's process. The node restarts
    // the container (restartPolicy Always, as the kubelet). Meanwhile front/caller starts
    // calling ratings: learned once a controller leads again. No Sidecar loses anything.
    let monitor = LossMonitor::start(c);
    let ratings = fqdn("ratings");
    let details = fqdn("details");
    let before_kill = our_sidecars(c).unwrap();
    let killed = current_leader(c).expect("a leader");
    let t_kill = Instant::now();
    node.kill_container(NAMESPACE, &killed, "lazyxds").unwrap();
    add_url(&by_fqdn, &format!("http://{ratings}:9080/"));
    wait_converged(
        c,
        &node,
        &by_fqdn,
        "caller",
        &[&reviews, &ratings],
        Duration::from_secs(60),
    )
    .await;
    let after_restart = t_kill.elapsed();
    let restarts = node.restarts();
    assert!(
        restarts
            .iter()
            .any(|r| r.pod == killed && r.container == "lazyxds"),
        "the killed controller was not restarted: {restarts:?}"
    );
    let leader_after_kill = wait_leader(c).await;
    assert_kept(
        "after kill -9 of the leader",
        &before_kill,
        &our_sidecars(c).unwrap(),
    );
    eprintln!(
        "mesh: kill -9 of {killed}: restarted, {leader_after_kill} leads; ratings learned and direct {after_restart:?} after the kill"
    );

    // Controller loss (2): the leader's pod is deleted (its containers SIGKILLed by the
    // node, the Deployment replaces it): another replica (the standby or the replacement)
    // takes the Lease once it expires.
    // Meanwhile shop/caller starts calling details and the weigher reviews: both go
    // through the gateway until the new leader learns them.
    let before_failover = our_sidecars(c).unwrap();
    let old_leader = wait_leader(c).await;
    let t_fail = Instant::now();
    c.kubectl(
        &[
            "delete",
            "pod",
            "-n",
            NAMESPACE,
            &old_leader,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ],
        None,
    )
    .unwrap();
    // The outage starts when the node has killed the pod's containers (a force-deleted
    // pod's processes run until the kubelet stops them).
    let t = Instant::now();
    while node.pods().iter().any(|p| p.name == old_leader) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the node did not stop the deleted pod {old_leader}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    add_url(&short, "http://details:9080/");
    add_url(&weigher, &fqdn_url);
    let new_leader = wait_leader_other_than(c, Some(&old_leader), Duration::from_secs(60)).await;
    let failover_after = t_fail.elapsed();
    let mut short_after: Vec<&str> = short_hosts.to_vec();
    short_after.push(&details);
    wait_converged(
        c,
        &node,
        &short,
        "caller",
        &short_after,
        Duration::from_secs(60),
    )
    .await;
    wait_converged(
        c,
        &node,
        &weigher,
        "weigher",
        &[&reviews],
        Duration::from_secs(60),
    )
    .await;
    let learned_after_failover = t_fail.elapsed();
    assert_kept(
        "after the leader's pod was deleted",
        &before_failover,
        &our_sidecars(c).unwrap(),
    );
    // The Deployment's replacement runs: two controllers and the gateway again.
    node.wait_ready(NAMESPACE, "lazyxds-", 3, Duration::from_secs(120))
        .await
        .unwrap();
    let (polls, losses) = monitor.stop();
    assert!(
        losses.is_empty() && polls > 10,
        "Sidecars lost dependencies while the controller was killed ({polls} polls): {losses:?}"
    );
    eprintln!(
        "mesh: {old_leader}'s pod deleted: {new_leader} leads after {failover_after:?}; details and the weigher's reviews learned and direct {learned_after_failover:?} after; no Sidecar lost anything ({polls} polls)"
    );

    // Opting out: shop/caller's workload says `lazyxds.io/enabled: "false"`; its Sidecar is
    // deleted and its sidecar gets the full config back (ratings, never called by it,
    // appears).
    assert!(
        !has_cluster(&short, &ratings),
        "shop/caller sees ratings while scoped"
    );
    c.kubectl(
        &[
            "annotate",
            "deployment",
            "caller",
            "-n",
            &shop,
            "lazyxds.io/enabled=false",
        ],
        None,
    )
    .unwrap();
    let t_opt = Instant::now();
    while c
        .get(SIDECARS, Some(&shop), "lazyxds-deployment-caller")
        .unwrap()
        .is_some()
        || !has_cluster(&short, &ratings)
    {
        assert!(
            t_opt.elapsed() < Duration::from_secs(30),
            "shop/caller opted out: its Sidecar or the full config still missing after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opt_out_after = t_opt.elapsed();
    // The kill switch: every Sidecar we own goes; front's callers see details again.
    assert!(
        !has_cluster(&by_fqdn, &details),
        "front/caller sees details while scoped"
    );
    c.kubectl(
        &[
            "patch",
            "configmap",
            "lazyxds",
            "-n",
            NAMESPACE,
            "--type=merge",
            "-p",
            r#"{"data":{"enabled":"false"}}"#,
        ],
        None,
    )
    .unwrap();
    let t_switch = Instant::now();
    while !our_sidecars(c).unwrap().is_empty()
        || !has_cluster(&by_fqdn, &details)
        || !has_cluster(&weigher, &details)
    {
        assert!(
            t_switch.elapsed() < Duration::from_secs(30),
            "kill switch: after 30 s still {:?}",
            our_sidecars(c).unwrap().keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let switch_after = t_switch.elapsed();
    // Traffic goes on with the full config.
    let full_before: Vec<(u64, u64)> = [
        (&short, &short_after[..]),
        (&by_fqdn, &[reviews.as_str(), ratings.as_str()][..]),
    ]
    .iter()
    .map(|(p, h)| upstream_counts(p, h))
    .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for ((pod, hosts), b) in [
        (&short, &short_after[..]),
        (&by_fqdn, &[reviews.as_str(), ratings.as_str()][..]),
    ]
    .iter()
    .zip(&full_before)
    {
        let a = upstream_counts(pod, hosts);
        assert!(
            a.0 == b.0 && a.1 > b.1,
            "{}/{}: with the full config, {} via the gateway, {} direct in 3 s",
            pod.namespace,
            pod.name,
            a.0 - b.0,
            a.1 - b.1
        );
    }
    eprintln!(
        "mesh: opted out: Sidecar gone and full config {opt_out_after:?} after; kill switch: every Sidecar gone and full config {switch_after:?} after"
    );
    // The gRPC requests the gateway forwarded (first calls, before grpc-echo was learned),
    // from the gateway's own Envoy.
    let gateway_pod = node
        .pods()
        .into_iter()
        .find(|p| p.namespace == NAMESPACE && p.name.starts_with("lazyxds-gateway-"))
        .expect("the gateway's pod");
    let gateway_grpc: u64 = node::proxy_stats(&gateway_pod, "upstream_rq_total")
        .unwrap_or_default()
        .iter()
        .filter(|(k, _)| k.contains(&format!("outbound|50051||{grpc_echo};")))
        .map(|(_, v)| v)
        .sum();
    // Read before the node stops; asserted with the requests below.
    let no_cluster: Vec<(String, BTreeMap<String, u64>)> = [&short, &by_fqdn, &weigher]
        .into_iter()
        .map(|pod| {
            let counters = node::proxy_stats(pod, "no_cluster").expect("the sidecar's stats");
            (format!("{}/{}", pod.namespace, pod.name), counters)
        })
        .collect();
    let restarts = node.restarts();
    assert!(
        restarts.len() == 1 && node.errors().is_empty(),
        "node: restarts {restarts:?}, errors {:?}",
        node.errors()
    );

    // Requests answered from here on meet the teardown, not the mesh.
    let teardown_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(u64::MAX, |d| d.as_millis() as u64);
    node.shutdown();

    // No request failed, from the first through learning, the controller's loss, opting
    // out and the kill switch; the split held.
    let mut all = Vec::new();
    for pod in [&short, &by_fqdn, &weigher, &plain] {
        all.extend(results(pod, teardown_ms));
    }
    // REGISTRY_ONLY not loosened: in `locked`, reviews answers every call, the external
    // host none, whether the caller is scoped by lazyxds or not.
    let mut locked_figures = Vec::new();
    for pod in &locked_pods {
        let sent = results(pod, teardown_ms);
        let (external, internal): (Vec<&Sent>, Vec<&Sent>) = sent.iter().partition(|s| s.external);
        let reached: Vec<&&Sent> = external.iter().filter(|s| s.ok).collect();
        let failed: Vec<&&Sent> = internal.iter().filter(|s| !s.ok).collect();
        locked_figures.push(format!(
            "{}/{}: {} to reviews ok, {} to the external host all refused",
            pod.namespace,
            pod.name,
            internal.len(),
            external.len()
        ));
        assert!(
            reached.is_empty() && !external.is_empty(),
            "{}/{}: REGISTRY_ONLY loosened: {} of {} external requests answered, first {:?}",
            pod.namespace,
            pod.name,
            reached.len(),
            external.len(),
            reached.first().map(|s| &s.line)
        );
        assert!(
            failed.is_empty() && !internal.is_empty(),
            "{}/{}: {} of {} requests to reviews failed, first {:?}",
            pod.namespace,
            pod.name,
            failed.len(),
            internal.len(),
            failed.first().map(|s| &s.line)
        );
    }
    eprintln!("mesh: REGISTRY_ONLY: {}", locked_figures.join("; "));
    let failed: Vec<&Sent> = all.iter().filter(|s| !s.ok).collect();
    let mut per_target: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in &all {
        let e = per_target.entry(s.target.clone()).or_default();
        e.0 += 1;
        if s.via_gateway {
            e.1 += 1;
        }
    }
    let per_client: BTreeMap<String, (usize, usize, Option<u64>)> =
        all.iter().fold(BTreeMap::new(), |mut m, s| {
            let e = m.entry(s.client.clone()).or_insert((0, 0, None));
            e.0 += 1;
            if s.via_gateway {
                e.1 += 1;
                e.2 = Some(e.2.map_or(s.at_ms, |t: u64| t.max(s.at_ms)));
            }
            m
        });
    eprintln!(
        "mesh: per client (requests, via the gateway, last via the gateway at ms): {per_client:?}; per target (requests, via the gateway): {per_target:?}"
    );
    // Make before break: no sidecar ever routed a request to a cluster it did not have
    // active yet (a new dependency's route before its endpoints: 503 NC).
    for (pod, counters) in &no_cluster {
        assert!(
            !counters.is_empty(),
            "{pod}: no router no_cluster counter (proxyStatsMatcher keeps them)"
        );
        let n: u64 = counters.values().sum();
        assert_eq!(
            n, 0,
            "{pod}: {n} requests answered 503 NC (a route before its cluster): {counters:?}"
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        all.len(),
        failed.iter().take(5).map(|s| &s.line).collect::<Vec<_>>()
    );
    // Every protocol was called, and learning went through the gateway for the HTTP/1.1
    // targets (their echo says who called); gRPC's first calls are counted by the gateway's
    // own Envoy below.
    for target in [
        "reviews",
        "inventory",
        "ratings",
        "details",
        "grpc-echo",
        "db",
        "shop",
    ] {
        let (n, _) = per_target.get(target).copied().unwrap_or_default();
        assert!(n > 0, "no request to {target}");
    }
    for target in ["reviews", "inventory", "ratings", "details"] {
        let (_, via) = per_target.get(target).copied().unwrap_or_default();
        assert!(
            via > 0,
            "no request to {target} went through the gateway: learning was not exercised"
        );
    }
    assert!(
        gateway_grpc > 0,
        "no gRPC request went through the gateway: learning was not exercised for gRPC"
    );
    for pod in [&short, &by_fqdn, &weigher] {
        let via_gateway = all
            .iter()
            .filter(|s| s.client == format!("{}/{}", pod.namespace, pod.name) && s.via_gateway)
            .count();
        assert!(
            via_gateway > 0,
            "{}/{} never went through the gateway: learning was not exercised",
            pod.namespace,
            pod.name
        );
    }
    assert!(
        all.iter()
            .filter(|s| s.client.contains("plain-caller"))
            .all(|s| !s.via_gateway),
        "the caller not opted in went through the gateway"
    );
    // The 80/20 split over every request to reviews, the direct ones, and those the gateway
    // routed (most of them the weigher's, sent while no controller led).
    let to_reviews: Vec<&Sent> = all.iter().filter(|s| s.target == "reviews").collect();
    let direct: Vec<&Sent> = to_reviews
        .iter()
        .copied()
        .filter(|s| !s.via_gateway)
        .collect();
    let via_gw: Vec<&Sent> = to_reviews
        .iter()
        .copied()
        .filter(|s| s.via_gateway)
        .collect();
    assert!(
        via_gw.len() >= 100,
        "only {} requests to reviews went through the gateway: too few for the split",
        via_gw.len()
    );
    let split = [
        split_within_4_sigma("all", &to_reviews),
        split_within_4_sigma("direct", &direct),
        split_within_4_sigma("via the gateway", &via_gw),
    ];
    eprintln!(
        "mesh: {} requests, 100 % succeeded; {} to reviews via the gateway; {gateway_grpc} gRPC via the gateway (its Envoy); converged {converged_after:?} after the apps were up; window: {}; split: {}; total {:?}",
        all.len(),
        via_gw.len(),
        window.join("; "),
        split.join("; "),
        t0.elapsed()
    );
}
