//! The real control plane tier: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and istiod built from the pinned Go modules (`make setup-cluster`), one
//! cluster for this whole binary, a fresh namespace per test. Runs in a network namespace
//! of its own (`make test-cluster` runs it through `tests/cluster/netns-run`), one test at a
//! time (the controller pods and the Lease are the install's, shared by every test).
//!
//! What is real here: the API server's validation (CRD schemas and CEL rules of Istio's
//! own CRDs), RBAC (the controller authenticates with a token of its ServiceAccount), the
//! Deployment/ReplicaSet/EndpointSlice/ServiceAccount/namespace controllers, the scheduler,
//! istiod's translation of our objects, its CA, and Envoy under pilot-agent. What is played
//! by the test: the kubelet (pod status is written by the test; no container runs).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazyxds_e2e::cluster::lazyxds::{self, send_edges, ControllerPod, Installed, NAMESPACE};
use lazyxds_e2e::cluster::proxy::{IstioProxy, ProxyMode, ProxyPod};
use lazyxds_e2e::cluster::{self, Cluster};
use serde_json::{json, Value};

const SIDECARS: &str = "sidecars.networking.istio.io";

/// One test at a time: the controller pods and their Lease are the install's, shared.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster() -> &'static Cluster {
    tokio::task::spawn_blocking(Cluster::shared)
        .await
        .expect("cluster thread")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn installed(c: &'static Cluster) -> &'static Installed {
    tokio::task::spawn_blocking(move || Installed::shared(c))
        .await
        .expect("install thread")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Polls `f` until it returns Some, or fails with `what()` after `timeout`.
async fn eventually<T>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t.elapsed() > timeout {
            panic!("not after {timeout:?}: {}", what());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A test namespace: opted in (or not), a Deployment `web` with one pod running at a fresh
/// pod IP, Services `api` and `db` (HTTP port 80).
struct Shop {
    c: &'static Cluster,
    ns: String,
    web_pod: String,
    web_ip: Ipv4Addr,
}

impl Shop {
    async fn create(c: &'static Cluster, enabled: bool) -> Result<Shop> {
        let annotations = if enabled {
            json!({"lazyxds.io/enabled": "true"})
        } else {
            json!({})
        };
        let ns = c.namespace("shop", json!({}), annotations)?;
        let mut objects = vec![deployment(&ns, "web", 1)];
        for svc in ["api", "db"] {
            objects.push(service(&ns, svc, &[("http", 80)]));
        }
        c.apply_json(&objects)?;
        let pods = lazyxds::scheduled_pods(c, &ns, "web", 1).await?;
        let web_pod = pods[0]["metadata"]["name"]
            .as_str()
            .context("pod name")?
            .to_string();
        let web_ip = c.pod_ip();
        c.set_pod_running(&ns, &web_pod, web_ip)?;
        Ok(Shop {
            c,
            ns,
            web_pod,
            web_ip,
        })
    }

    fn host(&self, svc: &str) -> String {
        format!("{svc}.{}.svc.cluster.local", self.ns)
    }

    fn sidecar(&self, name: &str) -> Option<Value> {
        self.c.get(SIDECARS, Some(&self.ns), name).ok().flatten()
    }

    /// The learned deps of web's Sidecar (None: no Sidecar).
    fn web_deps(&self) -> Option<Vec<String>> {
        let sc = self.sidecar("lazyxds-deployment-web")?;
        let deps: serde_json::Map<String, Value> =
            serde_json::from_str(sc["metadata"]["annotations"]["lazyxds.io/deps"].as_str()?)
                .ok()?;
        Some(deps.keys().cloned().collect())
    }

    /// web's pod under `pilot-agent proxy sidecar` (its default ServiceAccount).
    async fn start_web_sidecar(&self) -> IstioProxy {
        IstioProxy::start(
            self.c,
            ProxyPod {
                namespace: self.ns.clone(),
                name: self.web_pod.clone(),
                service_account: "default".into(),
                ip: self.web_ip,
                labels: BTreeMap::from([("app".into(), "web".into())]),
                mode: ProxyMode::Sidecar,
                concurrency: 1,
                proxy_config: json!({}),
                mounts: vec![],
            },
        )
        .await
        .unwrap()
    }

    async fn wait_web_sidecar_gone(&self, ctl: &ControllerPod) {
        eventually(
            Duration::from_secs(30),
            || tail(&ctl.log()),
            || {
                self.sidecar("lazyxds-deployment-web")
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }

    async fn wait_web_deps(&self, want: &[&str], ctl: &ControllerPod) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        eventually(
            Duration::from_secs(30),
            || {
                format!(
                    "web deps {:?}, want {want:?}\n{}",
                    self.web_deps(),
                    tail(&ctl.log())
                )
            },
            || (self.web_deps().as_ref() == Some(&want)).then_some(()),
        )
        .await;
    }
}

/// The install's kill switch: `on` sets `enabled: "false"` in the lazyxds ConfigMap.
fn set_kill_switch(c: &Cluster, on: bool) {
    let patch = json!({"data": {"enabled": if on { "false" } else { "true" }}}).to_string();
    c.kubectl(
        &[
            "patch",
            "configmap",
            "lazyxds",
            "-n",
            NAMESPACE,
            "--type=merge",
            "-p",
            &patch,
        ],
        None,
    )
    .unwrap();
}

fn tail(log: &str) -> String {
    lazyxds_e2e::process::tail(log, 30)
}

fn deployment(ns: &str, app: &str, replicas: u32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": app, "image": format!("test/{app}")}]}}}})
}

fn service(ns: &str, name: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "targetPort": p}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": ports}})
}

/// The install's controller pods, running (status written) at fresh pod IPs; the controller
/// itself is started per test.
async fn controller_pods(c: &'static Cluster) -> Result<Vec<(String, Ipv4Addr)>> {
    static PODS: std::sync::OnceLock<Vec<(String, Ipv4Addr)>> = std::sync::OnceLock::new();
    if let Some(p) = PODS.get() {
        return Ok(p.clone());
    }
    let pods = lazyxds::scheduled_pods(c, NAMESPACE, "lazyxds", 2).await?;
    let mut out = Vec::new();
    for p in pods.iter().take(2) {
        let name = p["metadata"]["name"]
            .as_str()
            .context("pod name")?
            .to_string();
        let ip = c.pod_ip();
        c.set_pod_running(NAMESPACE, &name, ip)?;
        out.push((name, ip));
    }
    Ok(PODS.get_or_init(|| out).clone())
}

/// The controller as the installed Deployment's first pod, with a short write debounce.
async fn controller(c: &'static Cluster, inst: &'static Installed) -> Result<ControllerPod> {
    let pods = controller_pods(c).await?;
    let (pod, ip) = &pods[0];
    let ctl =
        ControllerPod::start(c, inst, pod, *ip, &[("LAZYXDS_WRITE_DEBOUNCE_MS", "20")]).await?;
    ctl.wait_leading(c).await?;
    Ok(ctl)
}

fn outbound(host: &str, port: u16) -> String {
    format!("outbound|{port}||{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_is_real_and_the_install_applies_cleanly() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    // The versions are the pinned ones, not v0.0.0 (Istio's analyzers flag that).
    let version: Value =
        serde_json::from_str(&c.kubectl(&["version", "-o", "json"], None).unwrap()).unwrap();
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(server.starts_with("v1.36."), "server version {server}");

    // `lazyxds install | kubectl apply --server-side -f -`: the real server validates every
    // object against its schema (and Istio's CRDs with their CEL rules).
    let inst = installed(c).await;
    // Every object is there as applied (kubectl get -f fails on any that is missing).
    let live = c
        .kubectl(&["get", "-f", "-", "-o", "name"], Some(&inst.manifest))
        .unwrap();
    assert_eq!(live.lines().count(), inst.objects.len(), "{live}");
    // Applying the same install again changes nothing (server-side apply is idempotent for
    // what we render: no defaulted field fights our manager).
    let again = c
        .kubectl(&["apply", "--server-side", "-f", "-"], Some(&inst.manifest))
        .unwrap();
    assert!(
        again
            .lines()
            .all(|l| l.ends_with("serverside-applied") || l.ends_with("unchanged")),
        "{again}"
    );

    // No Istio validating webhook runs here: istioctl validates what we emit, with the
    // schemas and validation of the same istio module istiod runs.
    let dir = c.dir().join("validate");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("install.yaml");
    std::fs::write(&file, &inst.manifest).unwrap();
    let out = std::process::Command::new(cluster::bin("istioctl").unwrap())
        .args(["validate", "--kubeconfig"])
        .arg(c.admin_kubeconfig())
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "istioctl validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_under_its_installed_rbac_learns_opts_out_and_prunes() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    let ctl = controller(c, inst).await.unwrap();

    // Opted in: a Sidecar at once, nothing learned yet, selecting the real pod's labels.
    shop.wait_web_deps(&[], &ctl).await;
    let sc = shop.sidecar("lazyxds-deployment-web").unwrap();
    assert_eq!(
        sc["spec"]["workloadSelector"]["labels"],
        json!({"app": "web"})
    );
    assert_eq!(
        sc["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "lazyxds"
    );
    // Written by our field manager, under our ServiceAccount.
    let managers: Vec<&str> = sc["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["lazyxds"], "{sc:#}");

    let api = shop.host("api");
    send_edges(&ctl.grpc_addr(), &[(shop.web_ip, &outbound(&api, 80))])
        .await
        .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;
    let hosts =
        shop.sidecar("lazyxds-deployment-web").unwrap()["spec"]["egress"][0]["hosts"].clone();
    assert!(
        hosts
            .as_array()
            .unwrap()
            .contains(&json!(format!("{}/{api}", shop.ns))),
        "{hosts}"
    );

    // A restart learns nothing new and must not shrink or rewrite the Sidecar.
    let before = shop.sidecar("lazyxds-deployment-web").unwrap();
    let mut ctl = ctl;
    ctl.restart().await.unwrap();
    ctl.wait_leading(c).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = shop.sidecar("lazyxds-deployment-web").unwrap();
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"],
        "a restart rewrote the Sidecar\n{}",
        tail(&ctl.log())
    );

    // The workload opts out: its Sidecar is deleted.
    c.kubectl(
        &[
            "annotate",
            "deployment",
            "web",
            "-n",
            &shop.ns,
            "lazyxds.io/enabled=false",
        ],
        None,
    )
    .unwrap();
    shop.wait_web_sidecar_gone(&ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_sidecar_is_never_touched_and_the_kill_switch_removes_only_ours() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    // The user's own Sidecar for another opted-in Deployment, under the very name ours
    // for it would have (and without our managed-by label).
    c.apply_json(&[
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "lazyxds-deployment-jobs", "namespace": shop.ns},
            "spec": {"workloadSelector": {"labels": {"app": "jobs"}},
                "egress": [{"hosts": ["./*"]}]}}),
        deployment(&shop.ns, "jobs", 1),
    ])
    .unwrap();
    let jobs = lazyxds::scheduled_pods(c, &shop.ns, "jobs", 1)
        .await
        .unwrap();
    let jobs_pod = jobs[0]["metadata"]["name"].as_str().unwrap().to_string();
    c.set_pod_running(&shop.ns, &jobs_pod, c.pod_ip()).unwrap();
    let mine = || shop.sidecar("lazyxds-deployment-jobs").unwrap();
    let mine_before = mine();

    let ctl = controller(c, inst).await.unwrap();
    let api = shop.host("api");
    send_edges(&ctl.grpc_addr(), &[(shop.web_ip, &outbound(&api, 80))])
        .await
        .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;
    // jobs has a user Sidecar: we never write it, nor one beside it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        mine()["metadata"]["resourceVersion"],
        mine_before["metadata"]["resourceVersion"]
    );
    assert_eq!(mine()["spec"]["egress"][0]["hosts"], json!(["./*"]));

    // The kill switch: every Sidecar we own goes, the user's stays.
    set_kill_switch(c, true);
    shop.wait_web_sidecar_gone(&ctl).await;
    assert_eq!(
        mine()["metadata"]["resourceVersion"],
        mine_before["metadata"]["resourceVersion"]
    );
    set_kill_switch(c, false);
    // Switched back on: the learned deps were kept, the Sidecar comes back whole.
    shop.wait_web_deps(&[&api], &ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_rbac_grants_what_the_controller_needs_and_no_more() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let _inst = installed(c).await;
    let kc = c.kubeconfig_for(NAMESPACE, "lazyxds").unwrap();
    let can = |args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i"];
        all.extend(args);
        c.kubectl_as(&kc, &all, None)
            .map(|o| o.trim() == "yes")
            .unwrap_or(false)
    };
    for allowed in [
        &["list", "pods", "--all-namespaces"][..],
        &["watch", "services", "--all-namespaces"],
        &["patch", "sidecars.networking.istio.io", "-n", "default"],
        &["create", "events.events.k8s.io", "-n", "default"],
        // Each scoped workload's catch-all.
        &["patch", "envoyfilters.networking.istio.io", "-n", "default"],
    ] {
        assert!(can(allowed), "the controller may not {allowed:?}");
    }
    for refused in [
        &["delete", "pods", "-n", "default"][..],
        &["get", "secrets", "-n", "default"],
        &["patch", "deployments.apps", "-n", "default"],
        &[
            "create",
            "destinationrules.networking.istio.io",
            "-n",
            "default",
        ],
    ] {
        assert!(!can(refused), "the controller may {refused:?}");
    }
}

/// The lazy gateway: the installed Deployment's pod, under `pilot-agent proxy router`, its
/// module mounted where the install's ConfigMap volume puts it.
async fn start_gateway(c: &'static Cluster) -> IstioProxy {
    let gw_pods = lazyxds::scheduled_pods(c, NAMESPACE, "lazyxds-gateway", 1)
        .await
        .unwrap();
    let gw_pod = gw_pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let gw_ip = c.pod_ip();
    c.set_pod_running(NAMESPACE, &gw_pod, gw_ip).unwrap();
    let wasm = lazyxds_e2e::paths::wasm_path().unwrap();
    IstioProxy::start(
        c,
        ProxyPod {
            namespace: NAMESPACE.into(),
            name: gw_pod,
            service_account: "lazyxds-gateway".into(),
            ip: gw_ip,
            labels: labels_of(&gw_pods[0]),
            mode: ProxyMode::Router,
            concurrency: 1,
            proxy_config: json!({}),
            mounts: vec![(wasm, "/etc/lazyxds/filter/lazyxds_filter.wasm".into())],
        },
    )
    .await
    .unwrap()
}

/// Pulls every listener, route config and cluster out of a config dump.
struct Dump(Value);

impl Dump {
    fn configs(&self, type_suffix: &str) -> Vec<&Value> {
        self.0["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(type_suffix))
            })
            .collect()
    }

    fn cluster_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.configs("ClustersConfigDump") {
            for key in ["static_clusters", "dynamic_active_clusters"] {
                for cl in c[key].as_array().into_iter().flatten() {
                    if let Some(n) = cl["cluster"]["name"].as_str() {
                        out.push(n.to_string());
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// An active cluster by name.
    fn cluster(&self, name: &str) -> Option<&Value> {
        self.configs("ClustersConfigDump")
            .into_iter()
            .flat_map(|c| {
                c["dynamic_active_clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .map(|c| &c["cluster"])
            .find(|c| c["name"] == name)
    }

    fn route_configs(&self) -> Vec<&Value> {
        self.configs("RoutesConfigDump")
            .into_iter()
            .flat_map(|c| c["dynamic_route_configs"].as_array().into_iter().flatten())
            .map(|r| &r["route_config"])
            .collect()
    }

    fn listeners(&self) -> Vec<&Value> {
        self.configs("ListenersConfigDump")
            .into_iter()
            .flat_map(|c| c["dynamic_listeners"].as_array().into_iter().flatten())
            .map(|l| &l["active_state"]["listener"])
            .collect()
    }

    /// The first route (in Envoy's order) that a request with this `:authority` takes on a
    /// gateway: the virtual host whose domains hold its host, then the route whose
    /// `:authority` header match is exactly it. None when no route matches it so.
    fn gateway_route(&self, authority: &str) -> Option<&Value> {
        self.gateway_routes(authority).first().copied()
    }

    /// Every route with this exact `:authority` match, in Envoy's order.
    fn gateway_routes(&self, authority: &str) -> Vec<&Value> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        self.route_configs()
            .into_iter()
            .flat_map(|rc| rc["virtual_hosts"].as_array().into_iter().flatten())
            .filter(|vh| {
                vh["domains"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x == host))
            })
            .flat_map(|vh| vh["routes"].as_array().into_iter().flatten())
            .filter(|r| {
                r["match"]["headers"].as_array().is_some_and(|hs| {
                    hs.iter().any(|h| {
                        h["name"] == ":authority" && h["string_match"]["exact"] == authority
                    })
                })
            })
            .collect()
    }
}

/// Waits until `proxy`'s config satisfies `check` (istiod pushes asynchronously).
async fn wait_config(proxy: &IstioProxy, what: &str, check: impl Fn(&Dump) -> Result<()>) -> Dump {
    let t = Instant::now();
    loop {
        let dump = Dump(proxy.config_dump().await.unwrap());
        // Kept beside the proxy's log, for reading after the run.
        let path = proxy.dir().join("config_dump.json");
        let _ = std::fs::write(
            &path,
            serde_json::to_vec_pretty(&dump.0).unwrap_or_default(),
        );
        match check(&dump) {
            Ok(()) => return dump,
            Err(e) if t.elapsed() > Duration::from_secs(60) => {
                panic!("{what}: {e:#} (config dump in {})", path.display());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_turns_our_objects_into_config_the_gateway_and_a_scoped_sidecar_accept() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    // A user VirtualService with subsets and 80/20 weights on a second HTTP port.
    c.apply_json(&[
        service(&shop.ns, "reviews", &[("http", 9080)]),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": shop.ns},
            "spec": {"host": "reviews", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}}]}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": shop.ns},
            "spec": {"hosts": ["reviews"], "http": [
                {"match": [{"headers": {"x-canary": {"exact": "1"}}, "uri": {"prefix": "/api"}}],
                 "rewrite": {"uri": "/v2/api"}, "timeout": "3s",
                 "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                {"route": [
                    {"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
                    {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}]}]}}),
        // Two HTTP ports: the gateway must keep the port asked for.
        service(&shop.ns, "ratings", &[("http", 9080), ("grpc-api", 9090)]),
    ])
    .unwrap();
    let ctl = controller(c, inst).await.unwrap();
    let api = shop.host("api");
    let reviews = shop.host("reviews");
    send_edges(&ctl.grpc_addr(), &[(shop.web_ip, &outbound(&api, 80))])
        .await
        .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;

    let gateway = start_gateway(c).await;

    // The gateway routes each mesh host by authority; reviews keeps the user's 80/20.
    let dump = wait_config(&gateway, "gateway routes", |d| {
        // The user's header route comes first, the weighted one after it.
        let route = d
            .gateway_routes(&format!("{reviews}:9080"))
            .get(1)
            .copied()
            .context("no second gateway route for reviews:9080")?;
        let weighted = &route["route"]["weighted_clusters"]["clusters"];
        let got: BTreeMap<String, u64> = weighted
            .as_array()
            .context("reviews' route has no weighted clusters")?
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap_or_default().to_string(),
                    w["weight"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let want = BTreeMap::from([
            (format!("outbound|9080|v1|{reviews}"), 80),
            (format!("outbound|9080|v2|{reviews}"), 20),
        ]);
        if got != want {
            bail!("reviews weights {got:?}, want {want:?}");
        }
        for authority in [api.clone(), format!("{api}:80")] {
            let route = d
                .gateway_route(&authority)
                .with_context(|| format!("no gateway route for {authority}"))?;
            if route["route"]["cluster"] != outbound(&api, 80) {
                bail!("{authority} goes to {}", route["route"]);
            }
        }
        Ok(())
    })
    .await;
    // The fast tier's model of istiod (tests/src/istio.rs, which builds the gateway of the
    // first-call tests) must route every authority our VirtualServices name the way istiod
    // does, so it cannot drift from the real thing unnoticed.
    let ours: Vec<Value> = c
        .list("virtualservices.networking.istio.io", NAMESPACE)
        .unwrap()
        .into_iter()
        .filter(|vs| vs["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "lazyxds")
        .collect();
    assert!(
        !ours.is_empty(),
        "the controller wrote no gateway VirtualService"
    );
    let model = lazyxds_e2e::istio::gateway_routes(&ours).unwrap();
    let mut drift = Vec::new();
    let mut compared = 0;
    for vh in &model.virtual_hosts {
        for route in vh["routes"].as_array().into_iter().flatten() {
            let want = route_semantics(route);
            let authority = authority_of(route);
            // Routes without an authority match (the `*.svc` 404) are matched by domain.
            // The k-th model route for an authority is compared with istiod's k-th.
            let position = vh["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .take_while(|r| *r != route)
                .filter(|r| authority_of(r) == authority)
                .count();
            compared += 1;
            let got = match authority {
                Some(a) => dump
                    .gateway_routes(a)
                    .get(position)
                    .map(|r| route_semantics(r)),
                None => dump
                    .route_configs()
                    .into_iter()
                    .flat_map(|rc| rc["virtual_hosts"].as_array().into_iter().flatten())
                    .find(|real| real["domains"] == vh["domains"])
                    .and_then(|real| real["routes"].get(0))
                    .map(route_semantics),
            };
            if got.as_ref() != Some(&want) {
                drift.push(format!(
                    "{} {authority:?}:\n  model  {want}\n  istiod {}",
                    vh["name"],
                    got.map_or("(no route)".into(), |g| g.to_string())
                ));
            }
        }
    }
    assert!(compared >= 8, "only {compared} routes compared");
    assert!(
        drift.is_empty(),
        "tests/src/istio.rs disagrees with istiod on {} route(s):\n{}",
        drift.len(),
        drift.join("\n")
    );

    // The filter tells an unknown host by the name of the route Envoy picked for it: the
    // catch-all our EnvoyFilter adds must reach Envoy under that name, after every host.
    let vhosts: Vec<&Value> = dump
        .route_configs()
        .into_iter()
        .flat_map(|rc| rc["virtual_hosts"].as_array().into_iter().flatten())
        .collect();
    let catch_all = vhosts
        .iter()
        .find(|vh| vh["domains"] == json!(["*"]))
        .expect("a catch-all virtual host");
    assert_eq!(
        catch_all["routes"][0]["name"], "lazyxds-external",
        "{catch_all:#}"
    );
    assert_eq!(
        catch_all["routes"][0]["route"]["cluster"],
        "lazyxds-external"
    );

    // Our filter is in the gateway's listener, before the router.
    let listener = dump
        .listeners()
        .into_iter()
        .find(|l| l["address"]["socket_address"]["port_value"] == 8080)
        .expect("a listener on 8080");
    let text = listener.to_string();
    assert!(text.contains("lazyxds_filter.wasm"), "{listener:#}");
    assert_eq!(
        gateway.rejected_updates().await.unwrap(),
        BTreeMap::new(),
        "{}",
        gateway.log()
    );

    // The scoped client sidecar: web's pod under `pilot-agent proxy sidecar`.
    let web = shop.start_web_sidecar().await;
    let gateway_cluster = format!("outbound|8080||lazyxds-gateway.{NAMESPACE}.svc.cluster.local");
    let dump = wait_config(&web, "scoped sidecar", |d| {
        let clusters = d.cluster_names();
        for want in [outbound(&api, 80), gateway_cluster.clone()] {
            if !clusters.contains(&want) {
                bail!("no cluster {want} in {clusters:?}");
            }
        }
        Ok(())
    })
    .await;
    // First calls leave for the gateway over mTLS with the workload's own certificate (SDS
    // `default`), as the fast tier's client sidecars (tests/src/client_sidecar.rs) assume.
    let to_gateway = dump
        .cluster(&gateway_cluster)
        .expect("the gateway's cluster");
    let tls = &to_gateway["transport_socket"];
    assert_eq!(tls["name"], "envoy.transport_sockets.tls", "{to_gateway:#}");
    assert_eq!(
        tls["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"],
        "default",
        "{to_gateway:#}"
    );
    let clusters = dump.cluster_names();
    // Only learned deps (and what always stays visible): db and reviews are not there.
    for hidden in [
        outbound(&shop.host("db"), 80),
        format!("outbound|9080||{reviews}"),
    ] {
        assert!(
            !clusters.contains(&hidden),
            "{hidden} is visible to a scoped web: {clusters:?}"
        );
    }
    // Unknown HTTP leaves through the catch-all to the gateway: our EnvoyFilter's route.
    let allow_any = catch_all_vhost(&dump, "allow_any").expect("an allow_any virtual host");
    assert_eq!(
        allow_any["routes"][0]["route"]["cluster"], gateway_cluster,
        "{allow_any:#}"
    );
    let filter = c
        .get(
            "envoyfilters.networking.istio.io",
            Some(&shop.ns),
            "lazyxds-deployment-web",
        )
        .unwrap()
        .expect("web's catch-all EnvoyFilter");
    let sidecar = shop.sidecar("lazyxds-deployment-web").unwrap();
    assert_eq!(
        filter["spec"]["workloadSelector"], sidecar["spec"]["workloadSelector"],
        "{filter:#}"
    );
    // Unknown TCP and TLS are not: they keep the workload's own policy. (With the
    // Sidecar's `egressProxy`, as before, istiod made the gateway the 15001 listener's TCP
    // catch-all too — listener_builder.go, buildOutboundCatchAllNetworkFiltersOnly — so
    // external TLS or raw TCP was tunnelled into the gateway's HTTP port and failed.)
    assert_eq!(catch_all_tcp(&dump), Some(json!("PassthroughCluster")));
    assert_eq!(
        sidecar["spec"]["outboundTrafficPolicy"],
        json!({"mode": "ALLOW_ANY"})
    );
    assert_eq!(
        web.rejected_updates().await.unwrap(),
        BTreeMap::new(),
        "{}",
        web.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_that_may_not_be_http_stay_in_a_scoped_sidecar() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    // An unnamed port (istiod sniffs it) and a host with an HTTP port beside `tcp-db`:
    // through the gateway their traffic would hit an HTTP connection manager.
    c.apply_json(&[
        service(&shop.ns, "legacy", &[("", 7000)]),
        service(&shop.ns, "store", &[("http", 8081), ("tcp-db", 5432)]),
    ])
    .unwrap();
    let ctl = controller(c, inst).await.unwrap();
    let api = shop.host("api");
    send_edges(&ctl.grpc_addr(), &[(shop.web_ip, &outbound(&api, 80))])
        .await
        .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;

    let web = shop.start_web_sidecar().await;
    // Never learned, still there: the whole host, every port of it.
    let visible = [
        outbound(&api, 80),
        outbound(&shop.host("legacy"), 7000),
        outbound(&shop.host("store"), 5432),
        outbound(&shop.host("store"), 8081),
    ];
    let dump = wait_config(&web, "always-visible clusters", |d| {
        let clusters = d.cluster_names();
        match visible.iter().find(|want| !clusters.contains(want)) {
            Some(want) => bail!("no cluster {want} in {clusters:?}"),
            None => Ok(()),
        }
    })
    .await;
    let db = outbound(&shop.host("db"), 80);
    assert!(
        !dump.cluster_names().contains(&db),
        "{db}: an HTTP service never learned is visible"
    );
    // The placeholder gives no HTTP route table to a port that may not be HTTP.
    let placeholder = c
        .get("service", Some(NAMESPACE), "lazyxds-http-ports")
        .unwrap()
        .expect("the placeholder Service");
    let ports: Vec<&Value> = placeholder["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| &p["port"])
        .collect();
    for opaque in [7000, 5432] {
        assert!(!ports.contains(&&json!(opaque)), "{opaque} in {ports:?}");
    }
    assert_eq!(
        web.rejected_updates().await.unwrap(),
        BTreeMap::new(),
        "{}",
        web.log()
    );
}

/// The egress hosts of web's Sidecar (empty: no Sidecar).
fn web_egress(shop: &Shop) -> Vec<String> {
    shop.sidecar("lazyxds-deployment-web")
        .map(|sc| {
            sc["spec"]["egress"][0]["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Why the controller keeps `ns/host` in every scoped Sidecar (`/debug/plan`'s
/// `always_visible`), if it does.
fn always_visible_reason(ctl: &ControllerPod, egress_host: &str) -> Option<String> {
    let plan: Value = serde_json::from_str(&ctl.http_get("/debug/plan").ok()?).ok()?;
    plan["always_visible"]
        .as_array()?
        .iter()
        .find(|row| row["host"] == egress_host)
        .and_then(|row| row["reason"].as_str().map(String::from))
}

/// Waits until web's Sidecar lists `egress_host` and the controller says why.
async fn wait_kept_visible(shop: &Shop, ctl: &ControllerPod, egress_host: &str) -> String {
    eventually(
        Duration::from_secs(30),
        || {
            format!(
                "{egress_host} not kept: web's Sidecar lists {:?}\n{}",
                web_egress(shop),
                tail(&ctl.log())
            )
        },
        || {
            web_egress(shop)
                .iter()
                .any(|h| h == egress_host)
                .then(|| always_visible_reason(ctl, egress_host))
                .flatten()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_the_gateway_cannot_see_stays_visible_to_its_namespace() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    // Exported to its own namespace only: web sees it, the gateway (in lazyxds-system) does
    // not, so a first call through the gateway could never reach it.
    let mut private = service(&shop.ns, "private", &[("http", 80)]);
    private["metadata"]["annotations"] = json!({"networking.istio.io/exportTo": "."});
    c.apply_json(&[private]).unwrap();
    let ctl = controller(c, inst).await.unwrap();
    let api = shop.host("api");
    send_edges(&ctl.grpc_addr(), &[(shop.web_ip, &outbound(&api, 80))])
        .await
        .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;
    let private = shop.host("private");
    let reason = wait_kept_visible(&shop, &ctl, &format!("{}/{private}", shop.ns)).await;
    assert_eq!(
        reason,
        format!(
            "Service {}/private's exportTo [\".\"] leaves out the gateway's namespace {NAMESPACE}",
            shop.ns
        )
    );
    let db = outbound(&shop.host("db"), 80);

    // istiod agrees: the gateway gets no cluster for it (its route would answer 503 for
    // ever), the scoped web sidecar does; db, never learned and routable, stays hidden.
    let gateway = start_gateway(c).await;
    let dump = wait_config(&gateway, "gateway clusters", |d| {
        let clusters = d.cluster_names();
        match [outbound(&api, 80), db.clone()]
            .into_iter()
            .find(|want| !clusters.contains(want))
        {
            Some(want) => bail!("no cluster {want} in {clusters:?}"),
            None => Ok(()),
        }
    })
    .await;
    assert!(
        !dump.cluster_names().contains(&outbound(&private, 80)),
        "the gateway sees {private}: the premise is wrong"
    );
    let web = shop.start_web_sidecar().await;
    let dump = wait_config(&web, "private in the scoped sidecar", |d| {
        let clusters = d.cluster_names();
        match clusters.contains(&outbound(&private, 80)) {
            true => Ok(()),
            false => bail!("no cluster for {private} in {clusters:?}"),
        }
    })
    .await;
    assert!(!dump.cluster_names().contains(&db), "{db} is visible");
    for proxy in [&gateway, &web] {
        assert_eq!(
            proxy.rejected_updates().await.unwrap(),
            BTreeMap::new(),
            "{}",
            proxy.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_default_export_to_keeps_its_services_visible_and_ours_exported() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    let _restore = MeshConfigRestore(c);
    // Every Service without exportTo is private to its namespace now: the gateway sees
    // none of shop's, so all of them stay in web's Sidecar; the gateway's own Services
    // must still reach every lazy Sidecar.
    c.set_mesh_config("defaultServiceExportTo: [\".\"]\n")
        .unwrap();
    let ctl = controller(c, inst).await.unwrap();
    let db = shop.host("db");
    let reason = wait_kept_visible(&shop, &ctl, &format!("{}/{db}", shop.ns)).await;
    assert_eq!(
        reason,
        format!(
            "Service {}/db sets no exportTo and the mesh's defaultServiceExportTo [\".\"] \
             leaves out the gateway's namespace {NAMESPACE}",
            shop.ns
        )
    );
    let gateway = start_gateway(c).await;
    let gateway_cluster = format!("outbound|8080||lazyxds-gateway.{NAMESPACE}.svc.cluster.local");
    let dump = wait_config(&gateway, "gateway clusters", |d| {
        let clusters = d.cluster_names();
        match clusters.iter().any(|c| c.ends_with(".svc.cluster.local")) {
            true => Ok(()),
            false => bail!("no service clusters yet: {clusters:?}"),
        }
    })
    .await;
    assert!(
        !dump.cluster_names().contains(&outbound(&db, 80)),
        "the gateway sees {db}: the premise is wrong"
    );
    let web = shop.start_web_sidecar().await;
    wait_config(&web, "db and the gateway in the scoped sidecar", |d| {
        let clusters = d.cluster_names();
        match [outbound(&db, 80), gateway_cluster.clone()]
            .into_iter()
            .find(|want| !clusters.contains(want))
        {
            Some(want) => bail!("no cluster {want} in {clusters:?}"),
            None => Ok(()),
        }
    })
    .await;
    for proxy in [&gateway, &web] {
        assert_eq!(
            proxy.rejected_updates().await.unwrap(),
            BTreeMap::new(),
            "{}",
            proxy.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_an_authorization_policy_guards_stays_visible() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    // vault's pods accept only web's identity: a first call through the gateway would
    // arrive as the gateway and be refused.
    c.apply_json(&[
        deployment(&shop.ns, "vault", 1),
        service(&shop.ns, "vault", &[("http", 80)]),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "vault-callers", "namespace": shop.ns},
            "spec": {"selector": {"matchLabels": {"app": "vault"}}, "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": [
                    format!("cluster.local/ns/{}/sa/default", shop.ns)]}}]}]}}),
    ])
    .unwrap();
    let vault_pods = lazyxds::scheduled_pods(c, &shop.ns, "vault", 1)
        .await
        .unwrap();
    let vault_pod = vault_pods[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let vault_ip = c.pod_ip();
    c.set_pod_running(&shop.ns, &vault_pod, vault_ip).unwrap();
    let ctl = controller(c, inst).await.unwrap();
    let vault = shop.host("vault");
    let reason = wait_kept_visible(&shop, &ctl, &format!("{}/{vault}", shop.ns)).await;
    assert_eq!(
        reason,
        format!(
            "AuthorizationPolicy {}/vault-callers (ALLOW) selects its pods: a first call \
             through the gateway would carry the gateway's identity",
            shop.ns
        )
    );
    assert!(
        !web_egress(&shop).contains(&format!("{}/{}", shop.ns, shop.host("db"))),
        "db, unguarded and never learned, is visible"
    );

    // istiod agrees that the policy guards vault's pods: their sidecar's inbound listener
    // enforces it.
    let vault_proxy = IstioProxy::start(
        c,
        ProxyPod {
            namespace: shop.ns.clone(),
            name: vault_pod,
            service_account: "default".into(),
            ip: vault_ip,
            labels: labels_of(&vault_pods[0]),
            mode: ProxyMode::Sidecar,
            concurrency: 1,
            proxy_config: json!({}),
            mounts: vec![],
        },
    )
    .await
    .unwrap();
    wait_config(&vault_proxy, "vault's inbound RBAC", |d| {
        let inbound = d
            .listeners()
            .into_iter()
            .find(|l| l["name"] == "virtualInbound")
            .context("no virtualInbound listener")?
            .to_string();
        match inbound.contains("envoy.filters.http.rbac") && inbound.contains("vault-callers") {
            true => Ok(()),
            false => bail!("no RBAC filter naming vault-callers in virtualInbound"),
        }
    })
    .await;
    assert_eq!(
        vault_proxy.rejected_updates().await.unwrap(),
        BTreeMap::new(),
        "{}",
        vault_proxy.log()
    );
}

/// The exact `:authority` a route matches, if it matches one.
/// The cluster of the 15001 listener's TCP catch-all (unknown TCP and TLS).
fn catch_all_tcp(dump: &Dump) -> Option<Value> {
    dump.listeners()
        .into_iter()
        .filter(|l| l["name"] == "virtualOutbound")
        .flat_map(|l| l["filter_chains"].as_array().into_iter().flatten())
        .find(|fc| fc["name"] == "virtualOutbound-catchall-tcp")
        .map(|fc| fc["filters"][0]["typed_config"]["cluster"].clone())
}

/// The catch-all virtual host of a sidecar's outbound route tables (`allow_any`,
/// `block_all`).
fn catch_all_vhost<'a>(dump: &'a Dump, name: &str) -> Option<&'a Value> {
    dump.route_configs()
        .into_iter()
        .flat_map(|rc| rc["virtual_hosts"].as_array().into_iter().flatten())
        .find(|vh| vh["name"] == name)
}

fn authority_of(route: &Value) -> Option<&str> {
    route["match"]["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == ":authority")
        .and_then(|h| h["string_match"]["exact"].as_str())
}

/// What a route does, as far as a request can tell: its match (path, headers) and where it
/// sends (cluster, weighted clusters, direct response status), its timeout and retries,
/// leaving out what changes no request's fate here (names, decorators, metadata, the max
/// gRPC timeout, case flags).
fn route_semantics(route: &Value) -> Value {
    let m = &route["match"];
    let mut headers: Vec<Value> = m["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| json!({"name": h["name"], "match": h["string_match"]}))
        .collect();
    headers.sort_by_key(|h| h.to_string());
    let action = if let Some(c) = route["route"]["cluster"].as_str() {
        json!({"cluster": c})
    } else if let Some(w) = route["route"]["weighted_clusters"]["clusters"].as_array() {
        json!({"weighted": w.iter().map(|x| json!([x["name"], x["weight"]])).collect::<Vec<_>>()})
    } else if !route["direct_response"].is_null() {
        json!({"direct_response": route["direct_response"]["status"]})
    } else {
        json!({"other": route})
    };
    json!({
        "prefix": m["prefix"], "path": m["path"], "regex": m["safe_regex"]["regex"],
        "headers": headers, "action": action,
        "prefix_rewrite": route["route"]["prefix_rewrite"],
        "host_rewrite": route["route"]["host_rewrite_literal"],
        "timeout": route["route"]["timeout"],
        "retries": route["route"]["retry_policy"]["num_retries"],
        "retry_on": route["route"]["retry_policy"]["retry_on"],
    })
}

fn labels_of(pod: &Value) -> BTreeMap<String, String> {
    pod["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_on_the_real_deployment_says_it_is_scoped() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    let ctl = controller(c, inst).await.unwrap();
    let events = || c.list("events.events.k8s.io", &shop.ns).unwrap_or_default();
    let find = |reason: &str, name: &str| {
        events()
            .into_iter()
            .find(|e| e["reason"] == reason && e["regarding"]["name"] == name)
    };
    let scoped = eventually(
        Duration::from_secs(30),
        || format!("{:#?}\n{}", events(), tail(&ctl.log())),
        || find("Scoped", "web"),
    )
    .await;
    assert_eq!(scoped["type"], "Normal");
    assert_eq!(scoped["regarding"]["kind"], "Deployment");
    assert_eq!(scoped["reportingInstance"], ctl.pod);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pod_ip_moves_new_edges_to_the_new_pod() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    c.apply_json(&[deployment(&shop.ns, "jobs", 1)]).unwrap();
    let jobs = lazyxds::scheduled_pods(c, &shop.ns, "jobs", 1)
        .await
        .unwrap();
    let jobs_pod = jobs[0]["metadata"]["name"].as_str().unwrap().to_string();
    let ctl = controller(c, inst).await.unwrap();
    shop.wait_web_deps(&[], &ctl).await;
    // web's pod goes away (its ReplicaSet makes another, not yet running); the jobs pod
    // starts with the IP web's pod had. No kubelet confirms a graceful deletion here, so
    // the test deletes as a kubelet finishing one would: at once.
    c.kubectl(
        &[
            "delete",
            "pod",
            &shop.web_pod,
            "-n",
            &shop.ns,
            "--grace-period=0",
            "--force",
        ],
        None,
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        || "web's pod is still there".into(),
        || {
            c.get("pod", Some(&shop.ns), &shop.web_pod)
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    c.set_pod_running(&shop.ns, &jobs_pod, shop.web_ip).unwrap();
    let db = shop.host("db");
    let jobs_deps = || -> Option<Vec<String>> {
        let sc = shop.sidecar("lazyxds-deployment-jobs")?;
        let deps: serde_json::Map<String, Value> =
            serde_json::from_str(sc["metadata"]["annotations"]["lazyxds.io/deps"].as_str()?)
                .ok()?;
        Some(deps.keys().cloned().collect())
    };
    eventually(
        Duration::from_secs(30),
        || tail(&ctl.log()),
        || jobs_deps().map(|_| ()),
    )
    .await;
    send_edges(&ctl.grpc_addr(), &[(shop.web_ip, &outbound(&db, 80))])
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        || format!("jobs deps {:?}\n{}", jobs_deps(), tail(&ctl.log())),
        || (jobs_deps()? == vec![db.clone()]).then_some(()),
    )
    .await;
    // Nothing of it went to web.
    assert_eq!(shop.web_deps(), Some(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_failover_keeps_every_dependency() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    let pods = controller_pods(c).await.unwrap();
    // A short Lease so the failover fits a test; everything else as installed.
    let env = [
        ("LAZYXDS_WRITE_DEBOUNCE_MS", "20"),
        ("LAZYXDS_LEASE_DURATION_SECS", "3"),
    ];
    let mut a = ControllerPod::start(c, inst, &pods[0].0, pods[0].1, &env)
        .await
        .unwrap();
    a.wait_leading(c).await.unwrap();
    let b = ControllerPod::start(c, inst, &pods[1].0, pods[1].1, &env)
        .await
        .unwrap();
    // The follower refuses gateway streams; the leader takes them.
    assert!(send_edges(
        &b.grpc_addr(),
        &[(shop.web_ip, &outbound(&shop.host("api"), 80))]
    )
    .await
    .is_err());
    let api = shop.host("api");
    let db = shop.host("db");
    send_edges(&a.grpc_addr(), &[(shop.web_ip, &outbound(&api, 80))])
        .await
        .unwrap();
    shop.wait_web_deps(&[&api], &a).await;
    assert!(
        !b.log().contains("Sidecar written"),
        "the follower wrote:\n{}",
        b.log()
    );

    // The leader dies without releasing the Lease: the follower takes over, and what was
    // learned survives (it is read back from the Sidecars).
    a.kill();
    let killed = Instant::now();
    b.wait_leading(c).await.unwrap();
    eprintln!(
        "failover: {} leads {:?} after the leader died",
        b.pod,
        killed.elapsed()
    );
    eventually(
        Duration::from_secs(30),
        || tail(&b.log()),
        || {
            futures_block(send_edges(
                &b.grpc_addr(),
                &[(shop.web_ip, &outbound(&db, 80))],
            ))
            .ok()
        },
    )
    .await;
    let mut want = vec![api.as_str(), db.as_str()];
    want.sort();
    shop.wait_web_deps(&want, &b).await;
}

/// Runs a future to completion from a sync closure (inside `eventually`).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Puts the cluster's own mesh config back when a test that changed it ends (also on
/// panic), so istiod and the next tests see the default mesh again.
struct MeshConfigRestore(&'static Cluster);

impl Drop for MeshConfigRestore {
    fn drop(&mut self) {
        if let Err(e) = self.0.set_mesh_config("") {
            eprintln!("restoring the mesh config: {e:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_configs_outbound_policy_and_discovery_selectors_are_honoured() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    let _restore = MeshConfigRestore(c);
    let ctl = controller(c, inst).await.unwrap();
    shop.wait_web_deps(&[], &ctl).await;
    let policy = || {
        shop.sidecar("lazyxds-deployment-web")
            .map(|s| s["metadata"]["annotations"]["lazyxds.io/outbound-policy"].clone())
    };
    assert_eq!(policy(), Some(json!("ALLOW_ANY")));
    // The mesh is REGISTRY_ONLY: recorded as the workload's effective policy.
    c.set_mesh_config("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n")
        .unwrap();
    eventually(
        Duration::from_secs(30),
        || tail(&ctl.log()),
        || (policy() == Some(json!("REGISTRY_ONLY"))).then_some(()),
    )
    .await;
    // The scoped sidecar under REGISTRY_ONLY: unknown HTTP still reaches the gateway (our
    // EnvoyFilter's route replaces `block_all`'s 502, and the gateway enforces the
    // namespace's policy), unknown TCP and TLS stay blocked.
    let web = shop.start_web_sidecar().await;
    let gateway_cluster = format!("outbound|8080||lazyxds-gateway.{NAMESPACE}.svc.cluster.local");
    let dump = wait_config(&web, "REGISTRY_ONLY scoped sidecar", |d| {
        let block_all = catch_all_vhost(d, "block_all").context("no block_all virtual host")?;
        if block_all["routes"][0]["route"]["cluster"] != gateway_cluster {
            bail!("block_all is {block_all}");
        }
        Ok(())
    })
    .await;
    assert!(catch_all_vhost(&dump, "allow_any").is_none());
    assert_eq!(catch_all_tcp(&dump), Some(json!("BlackHoleCluster")));
    assert_eq!(
        shop.sidecar("lazyxds-deployment-web").unwrap()["spec"]["outboundTrafficPolicy"],
        json!({"mode": "REGISTRY_ONLY"})
    );
    assert_eq!(
        web.rejected_updates().await.unwrap(),
        BTreeMap::new(),
        "{}",
        web.log()
    );
    drop(web);
    // istiod only watches labelled namespaces now: shop is not one, so no Sidecar there.
    c.set_mesh_config("discoverySelectors: [{matchLabels: {istio-discovery: enabled}}]\n")
        .unwrap();
    shop.wait_web_sidecar_gone(&ctl).await;
    // Labelled, it is in the mesh again; but istiod still ignores the gateway's namespace
    // (its routes too), so web is refused, and says why.
    c.kubectl(
        &["label", "namespace", &shop.ns, "istio-discovery=enabled"],
        None,
    )
    .unwrap();
    let refused = eventually(
        Duration::from_secs(30),
        || tail(&ctl.log()),
        || {
            c.list("events.events.k8s.io", &shop.ns)
                .unwrap_or_default()
                .into_iter()
                .find(|e| e["reason"] == "NotScoped" && e["regarding"]["name"] == "web")
        },
    )
    .await;
    assert!(
        refused["note"]
            .as_str()
            .is_some_and(|n| n.contains(&format!(
                "the gateway's namespace {NAMESPACE} is outside Istio's discoverySelectors"
            ))),
        "{refused:#}"
    );
    assert_eq!(shop.web_deps(), None, "web is scoped without a gateway");
    // istiod agrees: the gateway gets none of our routes.
    let gateway = start_gateway(c).await;
    let api = shop.host("api");
    let dump = Dump(gateway.config_dump().await.unwrap());
    assert_eq!(dump.gateway_route(&api), None, "the gateway routes {api}");
    // The gateway's namespace labelled too: routed, and web scoped again.
    c.kubectl(
        &["label", "namespace", NAMESPACE, "istio-discovery=enabled"],
        None,
    )
    .unwrap();
    let _unlabel = Unlabel(c);
    wait_config(&gateway, "the gateway's routes", |d| {
        match d.gateway_route(&api) {
            Some(_) => Ok(()),
            None => bail!("no gateway route for {api}"),
        }
    })
    .await;
    shop.wait_web_deps(&[], &ctl).await;
}

/// Takes the discovery label off the install's namespace when a test that put it there
/// ends (also on panic).
struct Unlabel(&'static Cluster);

impl Drop for Unlabel {
    fn drop(&mut self) {
        if let Err(e) = self
            .0
            .kubectl(&["label", "namespace", NAMESPACE, "istio-discovery-"], None)
        {
            eprintln!("unlabelling {NAMESPACE}: {e:#}");
        }
    }
}
