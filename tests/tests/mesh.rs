//! The mini-mesh (issue 16): the real control plane, a process node running pods in network
//! namespaces of their own with Istio's sidecar (injected by `istioctl kube-inject`, traffic
//! captured by `pilot-agent istio-iptables`, DNS answered by the agent, certificates from
//! istiod), the lazy gateway from `lazyxds install` on the same node, and test apps sending
//! real requests. Runs in a network namespace of its own (`tests/cluster/netns-run`).
//!
//! What it shows: an opted-in workload's requests never fail through learning (first calls
//! via the gateway, the controller writes its Sidecar, istiod pushes, the next calls go
//! direct), converged traffic goes direct (counted from Envoy's own counters), and a user's
//! weighted VirtualService holds through the gateway and direct.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lazyxds_e2e::cluster::inject::Injector;
use lazyxds_e2e::cluster::lazyxds::{self, parse_yaml_stream, Installed, NAMESPACE};
use lazyxds_e2e::cluster::node::{self, ClusterDns, Node, PodInfo};
use lazyxds_e2e::cluster::{Cluster, ClusterOptions};
use serde_json::{json, Value};

const APP_IMAGE: &str = "lazyxds-test/mesh-app";
const SIDECARS: &str = "sidecars.networking.istio.io";
/// Each client sends one request per interval.
const CLIENT_INTERVAL_MS: u64 = 50;
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
    let interval = CLIENT_INTERVAL_MS.to_string();
    let mut args = vec![
        "client",
        "--out",
        "results.jsonl",
        "--interval-ms",
        &interval,
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

/// One request a client made, from its results file.
#[derive(Debug)]
struct Sent {
    client: String,
    /// Not an HTTP request to reviews: `tcp://` to the TCP-only `db`, `https://` outside.
    tcp: bool,
    at_ms: u64,
    ok: bool,
    backend: Option<String>,
    /// The caller identity the backend's sidecar saw (the gateway's, or the client's own).
    via_gateway: bool,
    line: String,
}

fn results(pod: &PodInfo) -> Vec<Sent> {
    let path = pod.dir.join("root/results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            let backend = v["backend"].as_str().map(str::to_string);
            let xfcc = v["xfcc"].as_str().unwrap_or_default();
            // Not an HTTP request to reviews (TCP to db, HTTPS to the external server).
            let tcp = v["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("tcp://") || u.starts_with("https://"));
            let url = v["url"].as_str().unwrap_or_default();
            let want: &[&str] = if url.starts_with("https://") {
                &["external"]
            } else if url.starts_with("tcp://") {
                &["db"]
            } else {
                &["v1", "v2"]
            };
            Some(Sent {
                client: format!("{}/{}", pod.namespace, pod.name),
                tcp,
                at_ms: v["at_ms"].as_u64().unwrap_or(0),
                ok: v["status"] == 200 && backend.as_deref().is_some_and(|b| want.contains(&b)),
                backend,
                via_gateway: xfcc.contains(&format!(
                    "URI=spiffe://cluster.local/ns/{NAMESPACE}/sa/lazyxds-gateway"
                )),
                line: l.to_string(),
            })
        })
        .collect()
}

/// (requests via the gateway, requests direct to reviews) by the client's sidecar, from
/// its Envoy's `upstream_rq_total` counters.
fn upstream_counts(pod: &PodInfo, reviews_host: &str) -> (u64, u64) {
    let stats = node::proxy_stats(pod, "upstream_rq_total").unwrap_or_default();
    let mut gateway = 0;
    let mut direct = 0;
    for (k, v) in stats {
        if !k.ends_with(".upstream_rq_total") || !k.starts_with("cluster.outbound|") {
            continue;
        }
        if k.contains(&format!("lazyxds-gateway.{NAMESPACE}.svc")) {
            gateway += v;
        } else if k.contains(reviews_host) {
            direct += v;
        }
    }
    (gateway, direct)
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

/// The controller pod that leads (it labels itself `lazyxds.io/leader=true`).
async fn wait_leader(c: &Cluster) -> String {
    let t = Instant::now();
    loop {
        let out = c
            .kubectl(
                &[
                    "get",
                    "pods",
                    "-n",
                    NAMESPACE,
                    "-l",
                    "lazyxds.io/leader=true",
                    "-o",
                    "name",
                ],
                None,
            )
            .unwrap();
        if let Some(name) = out.lines().next() {
            return name.trim_start_matches("pod/").to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no controller leads after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    let n = sent.len() as f64;
    let v2 = sent
        .iter()
        .filter(|s| s.backend.as_deref() == Some("v2"))
        .count() as f64;
    let p = v2 / n;
    let sigma = (V2_WEIGHT * (1.0 - V2_WEIGHT) / n).sqrt();
    let line = format!(
        "{what}: {v2}/{n} to v2 = {:.1} % (want 20 % ± 4σ = ± {:.1} %)",
        100.0 * p,
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
    tokio::task::spawn_blocking(move || {
        Installed::shared_with(c, |manifest| {
            let mut objects = parse_yaml_stream(manifest)?;
            for o in objects.iter_mut() {
                if o["kind"] == "Deployment" {
                    let injected = injector.inject(&serde_norway::to_string(o)?)?;
                    *o = parse_yaml_stream(&injected)?.remove(0);
                }
            }
            Ok(json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string())
        })
    })
    .await
    .unwrap()
    .unwrap();
    // Two controller replicas and the gateway.
    node.wait_ready(NAMESPACE, "lazyxds-", 3, Duration::from_secs(180))
        .await
        .unwrap();
    let leader = wait_leader(c).await;
    eprintln!(
        "mesh: control plane, controller and gateway up at {:?}",
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
    let reviews = format!("reviews.{shop}.svc.cluster.local");
    let short_url = "http://reviews:9080/".to_string();
    let fqdn_url = format!("http://{reviews}:9080/");
    // A TCP-only Service (a database stand-in), by short name and FQDN.
    let db_short = "tcp://db:5432".to_string();
    let db_fqdn = format!("tcp://db.{shop}.svc.cluster.local:5432");
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
    c.apply_json(&[
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": shop},
            "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}}),
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
                &["echo", "--name", "v1", "--port", "9080"],
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
        ],
    );
    node.wait_ready(&shop, "db-", 1, Duration::from_secs(180))
        .await
        .unwrap();
    node.wait_ready(&shop, "reviews-v", 2, Duration::from_secs(180))
        .await
        .unwrap();
    apply_injected(
        c,
        injector,
        &[
            client(&shop, "caller", json!({}), &[&short_url, &db_short]),
            client(
                &front,
                "caller",
                json!({}),
                &[&fqdn_url, &db_fqdn, &external_url],
            ),
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
    let short = node
        .wait_ready(&shop, "caller-", 1, Duration::from_secs(180))
        .await
        .unwrap()
        .remove(0);
    let fqdn = node
        .wait_ready(&front, "caller-", 1, Duration::from_secs(180))
        .await
        .unwrap()
        .remove(0);
    let plain = node
        .wait_ready(&front, "plain-caller-", 1, Duration::from_secs(180))
        .await
        .unwrap()
        .remove(0);
    let locked_pods = [
        node.wait_ready(&locked, "caller-", 1, Duration::from_secs(180))
            .await
            .unwrap()
            .remove(0),
        node.wait_ready(&locked, "plain-caller-", 1, Duration::from_secs(180))
            .await
            .unwrap()
            .remove(0),
    ];
    let apps_up = Instant::now();
    eprintln!("mesh: apps up at {:?}", t0.elapsed());

    // Learning: each opted-in caller's Sidecar gets reviews, then its sidecar stops using
    // the gateway (no gateway request for 3 s while direct requests flow).
    let opted_in = [(&shop, &short), (&front, &fqdn)];
    let deadline = Instant::now() + Duration::from_secs(60);
    for (ns, pod) in opted_in {
        loop {
            let learned = deps(c, ns, "caller").is_some_and(|d| d.iter().any(|h| h == &reviews));
            if learned {
                let (g0, d0) = upstream_counts(pod, &reviews);
                tokio::time::sleep(Duration::from_secs(3)).await;
                let (g1, d1) = upstream_counts(pod, &reviews);
                if g1 == g0 && d1 > d0 {
                    break;
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
            }
            assert!(
                Instant::now() < deadline,
                "{ns}/caller not converged: deps {:?}, counts {:?}; node errors {:?}\ncontroller {leader}:\n{}",
                deps(c, ns, "caller"),
                upstream_counts(pod, &reviews),
                node.errors(),
                controller_log(&node, &leader)
            );
        }
    }
    let converged_after = apps_up.elapsed();
    eprintln!("mesh: converged {converged_after:?} after the apps were up");

    // Converged means direct: a measured window, counted by the callers' own sidecars.
    let before: Vec<(u64, u64)> = opted_in
        .iter()
        .map(|(_, p)| upstream_counts(p, &reviews))
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after: Vec<(u64, u64)> = opted_in
        .iter()
        .map(|(_, p)| upstream_counts(p, &reviews))
        .collect();
    let mut window = Vec::new();
    for (((ns, _), b), a) in opted_in.iter().zip(&before).zip(&after) {
        let (gw, direct) = (a.0 - b.0, a.1 - b.1);
        let share = direct as f64 / (gw + direct).max(1) as f64;
        window.push(format!(
            "{ns}/caller: {direct} direct, {gw} via the gateway ({:.1} % direct)",
            100.0 * share
        ));
        assert!(direct >= 50 && share >= 0.99, "{}", window.join("; "));
    }
    let (plain_gw, plain_direct) = upstream_counts(&plain, &reviews);
    assert_eq!(
        plain_gw, 0,
        "the caller that is not opted in used the gateway"
    );
    assert!(
        deps(c, &front, "plain-caller").is_none(),
        "a Sidecar for the caller not opted in"
    );
    assert!(node.errors().is_empty(), "node: {:?}", node.errors());

    node.shutdown();

    // No request failed, from the first through learning; the split held.
    let mut all = Vec::new();
    for pod in [&short, &fqdn, &plain] {
        all.extend(results(pod));
    }
    // REGISTRY_ONLY not loosened: in `locked`, reviews answers every call, the external
    // host none, whether the caller is scoped by lazyxds or not.
    let mut locked_figures = Vec::new();
    for pod in &locked_pods {
        let sent = results(pod);
        let (external, internal): (Vec<&Sent>, Vec<&Sent>) = sent.iter().partition(|s| s.tcp);
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
        "mesh: per client (requests, via the gateway, last via the gateway at ms): {per_client:?}"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        all.len(),
        failed.iter().take(5).map(|s| &s.line).collect::<Vec<_>>()
    );
    for (ns, pod) in opted_in {
        let via_gateway = all
            .iter()
            .filter(|s| s.client == format!("{ns}/{}", pod.name) && s.via_gateway)
            .count();
        assert!(
            via_gateway > 0,
            "{ns}/caller never went through the gateway: learning was not exercised"
        );
    }
    assert!(
        all.iter()
            .filter(|s| s.client.contains("plain-caller"))
            .all(|s| !s.via_gateway),
        "the caller not opted in went through the gateway"
    );
    let http: Vec<&Sent> = all.iter().filter(|s| !s.tcp).collect();
    let tcp = all.len() - http.len();
    let direct: Vec<&Sent> = http.iter().copied().filter(|s| !s.via_gateway).collect();
    let via_gw: Vec<&Sent> = http.iter().copied().filter(|s| s.via_gateway).collect();
    let all_refs = http.clone();
    let mut split = vec![
        split_within_4_sigma("all", &all_refs),
        split_within_4_sigma("direct", &direct),
    ];
    if via_gw.len() >= 30 {
        split.push(split_within_4_sigma("via the gateway", &via_gw));
    } else {
        let v2 = via_gw
            .iter()
            .filter(|s| s.backend.as_deref() == Some("v2"))
            .count();
        split.push(format!(
            "via the gateway: {v2}/{} to v2 (too few for a 4σ check)",
            via_gw.len()
        ));
    }
    eprintln!(
        "mesh: {} requests ({tcp} TCP to db or HTTPS outside the mesh), 100 % succeeded; {} via the gateway; converged {converged_after:?} after the apps were up; window: {}; split: {}; plain caller: {plain_direct} direct; total {:?}",
        all.len(),
        via_gw.len(),
        window.join("; "),
        split.join("; "),
        t0.elapsed()
    );
}
