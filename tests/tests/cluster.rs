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
use lazyxds_e2e::cluster::lazyxds::{
    self, send_edges, send_edges_from, ControllerPod, Installed, NAMESPACE,
};
use lazyxds_e2e::cluster::proxy::{IstioProxy, ProxyMode, ProxyPod};
use lazyxds_e2e::cluster::{self, eventually, Cluster};
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

    /// The identity the gateway sees on web's calls (mTLS from its sidecar).
    fn web_principal(&self) -> String {
        format!("spiffe://cluster.local/ns/{}/sa/default", self.ns)
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
    send_edges_from(
        &ctl.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&api, 80))],
    )
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
    send_edges_from(
        &ctl.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&api, 80))],
    )
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

/// The lazy gateway: the installed Deployment's pod, running at a fresh IP, under
/// `pilot-agent proxy router` with its pod's annotations (the downward-API file, where
/// pilot-agent reads `proxy.istio.io/config`) over `proxy_config` (what injection puts in
/// PROXY_CONFIG from the mesh's `defaultConfig`), its module mounted where the install's
/// ConfigMap volume puts it.
async fn lazy_gateway(c: &'static Cluster, proxy_config: Value) -> IstioProxy {
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
            proxy_config,
            mounts: vec![(wasm, "/etc/lazyxds/filter/lazyxds_filter.wasm".into())],
        },
    )
    .await
    .unwrap()
}

impl Dump {
    /// The virtual host Envoy picks for `host` in the route configuration named
    /// `route_config` (a sidecar's are named by port; `None`: every one, as on a gateway
    /// with one server): an exact domain, else the longest `*.suffix` one, else `*`.
    fn virtual_host(&self, route_config: Option<&str>, host: &str) -> Option<&Value> {
        let vhosts: Vec<&Value> = self
            .route_configs()
            .into_iter()
            .filter(|rc| route_config.is_none_or(|name| rc["name"] == name))
            .flat_map(|rc| rc["virtual_hosts"].as_array().into_iter().flatten())
            .collect();
        let domains = |vh: &&Value| -> Vec<String> {
            vh["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        };
        if let Some(vh) = vhosts
            .iter()
            .find(|vh| domains(vh).iter().any(|d| d == host))
        {
            return Some(vh);
        }
        let suffix = vhosts
            .iter()
            .flat_map(|vh| domains(vh).into_iter().map(move |d| (d, *vh)))
            .filter(|(d, _)| {
                d.len() > 1
                    && d.starts_with('*')
                    && host.ends_with(&d[1..])
                    && host.len() > d.len() - 1
            })
            .max_by_key(|(d, _)| d.len());
        if let Some((_, vh)) = suffix {
            return Some(vh);
        }
        vhosts
            .into_iter()
            .find(|vh| domains(vh).iter().any(|d| d == "*"))
    }

    /// The cluster a sidecar's first route for `host` on `port` sends to.
    fn sidecar_route_cluster(&self, host: &str, port: u16) -> Option<String> {
        let vh = self.virtual_host(Some(&port.to_string()), host)?;
        vh["routes"][0]["route"]["cluster"]
            .as_str()
            .map(str::to_string)
    }

    /// A cluster's TLS transport sockets: (the one for every endpoint, any of the per-endpoint
    /// matches auto-mTLS adds).
    fn tls_sockets(cluster: &Value) -> (bool, bool) {
        let tls = |s: &Value| s["name"] == "envoy.transport_sockets.tls";
        let matched = cluster["transport_socket_matches"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| tls(&m["transport_socket"]));
        (tls(&cluster["transport_socket"]), matched)
    }
}

/// Envoy ACKed every listener, route and cluster istiod sent it (no `update_rejected`).
async fn assert_all_accepted(proxy: &IstioProxy) {
    assert_eq!(
        proxy.rejected_updates().await.unwrap(),
        BTreeMap::new(),
        "{}",
        proxy.log()
    );
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
    send_edges_from(
        &ctl.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&api, 80))],
    )
    .await
    .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;

    let gateway = lazy_gateway(c, json!({})).await;

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
    assert_all_accepted(&gateway).await;

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
    assert_all_accepted(&web).await;
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
    send_edges_from(
        &ctl.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&api, 80))],
    )
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
    assert_all_accepted(&web).await;
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
    send_edges_from(
        &ctl.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&api, 80))],
    )
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
    let gateway = lazy_gateway(c, json!({})).await;
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
        assert_all_accepted(proxy).await;
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
    let gateway = lazy_gateway(c, json!({})).await;
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
        assert_all_accepted(proxy).await;
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
    assert_all_accepted(&vault_proxy).await;
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

/// The sidecar of the installed controller's pod `pod` (its ServiceAccount, labels).
async fn controller_sidecar(
    c: &'static Cluster,
    pod: &str,
    ip: Ipv4Addr,
    proxy_config: Value,
) -> IstioProxy {
    let pod_object = c.get("pod", Some(NAMESPACE), pod).unwrap().unwrap();
    IstioProxy::start(
        c,
        ProxyPod {
            namespace: NAMESPACE.into(),
            name: pod.to_string(),
            service_account: "lazyxds".into(),
            ip,
            labels: labels_of(&pod_object),
            mode: ProxyMode::Sidecar,
            concurrency: 1,
            proxy_config,
            mounts: vec![],
        },
    )
    .await
    .unwrap()
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
    send_edges_from(
        &ctl.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&db, 80))],
    )
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
    // The follower refuses gateway streams, saying why (it said "shutting down"); the
    // leader takes them.
    let refused = send_edges_from(
        &b.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&shop.host("api"), 80))],
    )
    .await
    .unwrap_err();
    assert!(
        format!("{refused:#}").contains("not the leader"),
        "{refused:#}"
    );
    let api = shop.host("api");
    let db = shop.host("db");
    send_edges_from(
        &a.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&api, 80))],
    )
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
            futures_block(send_edges_from(
                &b.grpc_addr(),
                &shop.web_principal(),
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
    assert_all_accepted(&web).await;
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
    let gateway = lazy_gateway(c, json!({})).await;
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

// ---- the install on every supported Istio release, analyze, the gateway's guards ------

/// The objects the controller writes, rendered by its own code for the demo mesh: the
/// committed demo Sidecars (`controller/index/testdata/demo-sidecars.yaml`, the demo's
/// output, kept true by its test) and the gateway's routing objects for the demo topology
/// (`lazyxds_index::reconcile`, what the leader applies).
fn controller_rendered_objects() -> Vec<String> {
    let root = lazyxds_e2e::paths::workspace_root();
    let sidecars =
        std::fs::read_to_string(root.join("controller/index/testdata/demo-sidecars.yaml")).unwrap();
    let topology_file = root.join("controller/index/testdata/demo-topology.yaml");
    let topology = lazyxds_index::topology::Topology::from_yaml(
        &std::fs::read_to_string(&topology_file).unwrap(),
        "demo-topology.yaml",
    )
    .unwrap();
    let mut index = lazyxds_index::Index::new(lazyxds_index::IndexConfig::default());
    topology.apply_to(&mut index);
    let config = topology.render_config(lazyxds_index::RenderConfig::default());
    let pass = lazyxds_index::reconcile(&index, &config);
    assert!(
        pass.gateway.virtual_services.len() > 3,
        "the demo mesh renders per-host routes"
    );
    vec![sidecars, pass.gateway.to_yaml().unwrap()]
}

/// Every namespace `objects` (YAML streams) put something in, as Namespace objects.
fn namespaces_of(objects: &[String]) -> Value {
    let mut names = std::collections::BTreeSet::from(["istio-system".to_string()]);
    for yaml in objects {
        for o in lazyxds::parse_yaml_stream(yaml).unwrap() {
            if let Some(ns) = o["metadata"]["namespace"].as_str() {
                names.insert(ns.to_string());
            }
        }
    }
    let items: Vec<Value> = names
        .into_iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_istio_release_accepts_the_install_our_sidecars_and_the_gateway_objects() {
    let _serial = SERIAL.lock().await;
    tokio::task::spawn_blocking(check_every_istio_release)
        .await
        .unwrap();
}

/// Per release, a fresh API server (no istiod: only the schemas are in question) with
/// that release's CRDs, then the default install, the WasmPlugin install without and with
/// `--istio-version`, our Sidecars and the gateway's objects applied: every Istio object
/// is created, and checked whole, under each release's schema. A fresh server rather than
/// one whose CRDs are deleted and re-created: a CRD deleted while its storage is
/// re-initialising leaves its finalizer failing ("could not list instances: storage is
/// (re)initializing") and retried with exponential backoff, minutes on a loaded machine.
fn check_every_istio_release() {
    let started = Instant::now();
    let releases = cluster::istio_releases().unwrap();
    let render = |flags: &[&str]| lazyxds::render(flags).unwrap().0;
    let oci = "oci://ghcr.io/lazyxds/lazyxds-filter:test";
    // The default install, a WasmPlugin install naming no release, our Sidecars, the
    // gateway's objects; per release below, a WasmPlugin install naming it.
    let mut objects = vec![
        render(&["--no-module"]),
        render(&["--module-url", oci, "--namespace", "lazyxds-wasm"]),
    ];
    objects.extend(controller_rendered_objects());
    let pinned_ns = "lazyxds-wasm-pinned";
    let mut namespaces = objects.clone();
    namespaces.push(render(&["--module-url", oci, "--namespace", pinned_ns]));
    let namespaces = namespaces_of(&namespaces).to_string();
    let mut failures = Vec::new();
    let mut timings = Vec::new();
    for (release, crds) in &releases {
        let t = Instant::now();
        let api = Cluster::start(&cluster::ClusterOptions {
            api_server_only: true,
            name: Some(format!("istio-{release}")),
            ..cluster::ClusterOptions::default()
        })
        .unwrap();
        let api_up = t.elapsed();
        api.apply(&namespaces).unwrap();
        let crds = crds.display().to_string();
        api.kubectl(&["create", "-f", &crds], None).unwrap();
        api.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "-f",
                &crds,
                "--timeout=60s",
            ],
            None,
        )
        .unwrap();
        let established = t.elapsed();
        let minor = release.trim_start_matches('v');
        let pinned = render(&[
            "--module-url",
            oci,
            "--namespace",
            pinned_ns,
            "--istio-version",
            minor,
        ]);
        // One apply of everything (kubectl goes on past a refused object and names each),
        // with strict field validation: unknown fields are refused too.
        let all: String = objects
            .iter()
            .chain([&pinned])
            .map(|yaml| format!("---\n{yaml}\n"))
            .collect();
        if let Err(e) = api.kubectl(&["apply", "--server-side", "-f", "-"], Some(&all)) {
            failures.push(format!("Istio {release}: {e:#}"));
        }
        timings.push((release.clone(), api_up, established, t.elapsed()));
    }
    lazyxds_e2e::note(format_args!(
        "Istio releases checked in {:?} (per release: API server up, CRDs established, \
         all applied): {timings:?}",
        started.elapsed(),
    ));
    assert!(
        failures.is_empty(),
        "refused by the API server:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_admits_only_mesh_identities_trusts_no_forwarded_for_and_reaches_the_controller(
) {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let _inst = installed(c).await;
    // The mesh's defaultConfig trusts two proxies in front of gateways (as for an ingress
    // behind a load balancer): injection would put that in PROXY_CONFIG.
    let gateway = lazy_gateway(c, json!({"gatewayTopology": {"numTrustedProxies": 2}})).await;
    let controller_cluster = format!("outbound|18000||lazyxds.{NAMESPACE}.svc.cluster.local");
    let hcm_of = |d: &Dump| -> Option<Value> {
        d.listeners()
            .into_iter()
            .find(|l| l["address"]["socket_address"]["port_value"] == 8080)
            .and_then(|l| {
                l["filter_chains"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|fc| fc["filters"].as_array().into_iter().flatten())
                    .find(|f| f["name"] == "envoy.filters.network.http_connection_manager")
                    .map(|f| f["typed_config"].clone())
            })
    };
    let dump = wait_config(&gateway, "the gateway's listener and clusters", |d| {
        let hcm = hcm_of(d).context("no HTTP connection manager on 8080")?;
        let mut missing = Vec::new();
        if !hcm["http_filters"]
            .to_string()
            .contains("envoy.filters.http.rbac")
        {
            missing.push("no RBAC filter on 8080 (the AuthorizationPolicy)".to_string());
        }
        if hcm["xff_num_trusted_hops"].as_u64().unwrap_or(0) != 0 {
            missing.push(format!(
                "xff_num_trusted_hops {} (the mesh's, not the pod's 0)",
                hcm["xff_num_trusted_hops"]
            ));
        }
        // istiod filters the gateway's clusters (PILOT_FILTER_GATEWAY_CLUSTER_CONFIG, on
        // in this tier): the controller's is there because our EnvoyFilter names it.
        if !d.cluster_names().contains(&controller_cluster) {
            missing.push(format!("no cluster {controller_cluster}"));
        }
        match missing.is_empty() {
            true => Ok(()),
            false => bail!("{}", missing.join("; ")),
        }
    })
    .await;
    let hcm = hcm_of(&dump).unwrap();
    // The AuthorizationPolicy: ALLOW (the RBAC filter's default action) requests to the
    // egress port from any authenticated peer; nothing else.
    let rbac = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.rbac")
        .unwrap();
    let rules = &rbac["typed_config"]["rules"];
    assert!(
        rules["action"].is_null() || rules["action"] == "ALLOW",
        "{rbac:#}"
    );
    let policies = rules["policies"].as_object().unwrap();
    assert_eq!(policies.len(), 1, "{rbac:#}");
    let (name, policy) = policies.iter().next().unwrap();
    assert!(
        name.contains(&format!("ns[{NAMESPACE}]-policy[lazyxds-gateway]")),
        "{name}"
    );
    let principals = policy["principals"].to_string();
    assert!(principals.contains("authenticated"), "{principals}");
    assert!(
        policy["permissions"]
            .to_string()
            .contains(r#""destination_port":8080"#),
        "{policy:#}"
    );
    // numTrustedProxies 0 from the pod's annotation wins over the mesh's 2: the source
    // address is the connection's.
    assert_eq!(
        hcm["xff_num_trusted_hops"].as_u64().unwrap_or(0),
        0,
        "{}",
        hcm["xff_num_trusted_hops"]
    );
    assert_eq!(hcm["use_remote_address"], true);
    assert_all_accepted(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_may_write_only_objects_labelled_ours() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let _inst = installed(c).await;
    let ns = c.namespace("guarded", json!({}), json!({})).unwrap();
    let sidecar = |name: &str, ours: bool, hosts: &[&str]| {
        let labels = if ours {
            json!({"app.kubernetes.io/managed-by": "lazyxds"})
        } else {
            json!({})
        };
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"workloadSelector": {"labels": {"app": name}},
                "egress": [{"hosts": hosts}]}})
    };
    let user_vs = |hosts: &[&str]| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "users", "namespace": NAMESPACE},
            "spec": {"hosts": hosts, "http": [{"route": [
                {"destination": {"host": "users.example.com"}}]}]}})
    };
    // A user's Sidecar, and a user's VirtualService in our own namespace (RBAC lets the
    // controller write VirtualServices there, for the gateway's routes; not this one).
    c.apply_json(&[
        sidecar("users", false, &["./*"]),
        user_vs(&["users.example.com"]),
    ])
    .unwrap();
    let kc = c.kubeconfig_for(NAMESPACE, "lazyxds").unwrap();
    // The controller writes by server-side apply as `lazyxds` (it cannot even `get` one
    // Sidecar: it lists and watches), forcing conflicts as it does.
    let apply = |o: &Value, dry_run: bool| {
        let mut args = vec![
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=lazyxds",
            "-f",
            "-",
        ];
        if dry_run {
            args.push("--dry-run=server");
        }
        c.kubectl_as(&kc, &args, Some(&o.to_string()))
    };
    let delete = |name: &str| c.kubectl_as(&kc, &["delete", SIDECARS, name, "-n", &ns], None);
    let rewrite_users = sidecar("users", false, &["istio-system/*"]);
    // The policy is in force once the API server has loaded it (the install may have been
    // applied just now): probed with dry runs, which admission judges but nothing stores.
    eventually(
        Duration::from_secs(20),
        || "the controller may still rewrite a user's Sidecar".into(),
        || apply(&rewrite_users, true).err(),
    )
    .await;
    let refused = format!(
        "{:#}",
        apply(&rewrite_users, false).expect_err("rewriting a user's Sidecar")
    );
    assert!(
        refused.contains("ValidatingAdmissionPolicy 'lazyxds-writes-only-ours'")
            && refused.contains(
                "lazyxds may UPDATE only objects labelled app.kubernetes.io/managed-by=lazyxds"
            ),
        "{refused}"
    );
    // Its own: created, rewritten, deleted.
    apply(&sidecar("ours", true, &["./*"]), false).unwrap();
    apply(&sidecar("ours", true, &["istio-system/*"]), false).unwrap();
    delete("ours").unwrap();
    apply(&sidecar("ours", true, &["./*"]), false).unwrap();
    // Never a user's: not relabelled ours, not deleted, none created without our label,
    // its own not unlabelled.
    for (what, result) in [
        (
            "relabel a user's Sidecar ours",
            apply(&sidecar("users", true, &["./*"]), false),
        ),
        ("delete a user's Sidecar", delete("users")),
        (
            "create an unlabelled Sidecar",
            apply(&sidecar("unlabelled", false, &["./*"]), false),
        ),
        (
            "unlabel its own Sidecar",
            apply(&sidecar("ours", false, &["./*"]), false),
        ),
        (
            "rewrite a user's VirtualService in its own namespace",
            apply(&user_vs(&["other.example.com"]), false),
        ),
    ] {
        let err = format!("{:#}", result.expect_err(what));
        assert!(
            err.contains("ValidatingAdmissionPolicy 'lazyxds-writes-only-ours'"),
            "{what}: {err}"
        );
    }
    let users = c.get(SIDECARS, Some(&ns), "users").unwrap().unwrap();
    assert!(users["metadata"]["labels"]["app.kubernetes.io/managed-by"].is_null());
    assert_eq!(users["spec"]["egress"][0]["hosts"], json!(["./*"]));
    // Anyone but the controller is not affected.
    c.apply_json(&[rewrite_users]).unwrap();
    c.kubectl(
        &[
            "delete",
            "virtualservices.networking.istio.io",
            "users",
            "-n",
            NAMESPACE,
        ],
        None,
    )
    .unwrap();
}

/// Istio's sidecar-injector webhooks as `istioctl manifest generate` renders them for a
/// default install, made inert (their selectors are what `istioctl analyze` reads: whether
/// a Deployment with `image: auto` would be injected): no request matches their rules, and
/// none would be sent anywhere.
fn inert_injection_webhooks() -> Value {
    let out = std::process::Command::new(cluster::bin("istioctl").unwrap())
        .args(["manifest", "generate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = lazyxds::parse_yaml_stream(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let mut webhooks = objects
        .into_iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("Istio's manifest has the injector's MutatingWebhookConfiguration");
    for wh in webhooks["webhooks"].as_array_mut().unwrap() {
        wh["clientConfig"] = json!({"url": "https://127.0.0.1:9/inject"});
        wh["failurePolicy"] = json!("Ignore");
        wh["rules"] = json!([{"operations": ["CREATE"], "apiGroups": ["test.lazyxds.io"],
            "apiVersions": ["v1"], "resources": ["nothing"]}]);
    }
    webhooks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istioctl_analyze_reports_nothing_about_our_objects() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    // Scoped workloads: web (running, a learned dependency), jobs (running), idle (opted
    // in, no pod, nothing learned: it must get no Sidecar selecting nothing) and parked
    // (scaled to zero with a dependency its Sidecar remembers from an earlier controller:
    // the Sidecar stays, so a restart keeps the dependency, and analyze says nothing).
    let shop = Shop::create(c, true).await.unwrap();
    let api = shop.host("api");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let parked_sidecar = json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "lazyxds-deployment-parked", "namespace": shop.ns,
            "labels": {"app.kubernetes.io/managed-by": "lazyxds"},
            "annotations": {"lazyxds.io/workload": "Deployment/parked",
                "lazyxds.io/deps": json!({api.clone(): now}).to_string()}},
        "spec": {"workloadSelector": {"labels": {"app": "parked"}},
            "egress": [{"hosts": ["istio-system/*", format!("{}/{api}", shop.ns)]}]}});
    c.apply_json(&[
        deployment(&shop.ns, "jobs", 1),
        deployment(&shop.ns, "idle", 0),
        deployment(&shop.ns, "parked", 0),
        parked_sidecar,
    ])
    .unwrap();
    let jobs = lazyxds::scheduled_pods(c, &shop.ns, "jobs", 1)
        .await
        .unwrap();
    c.set_pod_running(
        &shop.ns,
        jobs[0]["metadata"]["name"].as_str().unwrap(),
        c.pod_ip(),
    )
    .unwrap();
    let ctl = controller(c, inst).await.unwrap();
    send_edges_from(
        &ctl.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&api, 80))],
    )
    .await
    .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;
    eventually(
        Duration::from_secs(30),
        || tail(&ctl.log()),
        || shop.sidecar("lazyxds-deployment-jobs"),
    )
    .await;
    let parked = eventually(
        Duration::from_secs(30),
        || tail(&ctl.log()),
        || {
            let sc = shop.sidecar("lazyxds-deployment-parked")?;
            (sc["metadata"]["annotations"]["galley.istio.io/analyze-suppress"] == "IST0101")
                .then_some(sc)
        },
    )
    .await;
    assert!(
        parked["spec"]["egress"][0]["hosts"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("{}/{api}", shop.ns))),
        "{parked:#}"
    );
    assert!(c
        .get(
            "envoyfilters.networking.istio.io",
            Some(&shop.ns),
            "lazyxds-deployment-parked"
        )
        .unwrap()
        .is_some());
    let webhooks = inert_injection_webhooks();
    c.apply_json(std::slice::from_ref(&webhooks)).unwrap();
    let out = std::process::Command::new(cluster::bin("istioctl").unwrap())
        .args([
            "analyze",
            "--all-namespaces",
            "--output",
            "json",
            "--kubeconfig",
        ])
        .arg(c.admin_kubeconfig())
        .output()
        .unwrap();
    c.kubectl(
        &[
            "delete",
            "mutatingwebhookconfiguration",
            webhooks["metadata"]["name"].as_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "istioctl analyze: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let messages: Vec<Value> = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("istioctl analyze -o json: {e}\n{stdout}");
    });
    // "Kind namespace/name" or "Kind name".
    let ours = |origin: &str| {
        let (kind, name) = origin.split_once(' ').unwrap_or((origin, ""));
        let (ns, name) = name.split_once('/').unwrap_or(("", name));
        ns == NAMESPACE || name.starts_with("lazyxds") || (kind == "Namespace" && name == NAMESPACE)
    };
    let about_ours: Vec<&Value> = messages
        .iter()
        .filter(|m| ours(m["origin"].as_str().unwrap_or_default()))
        // The test cluster runs no injector: the gateway's pods still say `image: auto`,
        // which Istio's injection replaces (the Deployment's own check, IST0146, judges
        // whether it would be injected, against the webhooks above).
        .filter(|m| {
            !(m["code"] == "IST0147" && m["origin"].as_str().is_some_and(|o| o.starts_with("Pod ")))
        })
        .collect();
    assert!(
        about_ours.is_empty(),
        "istioctl analyze reports about our objects:\n{}",
        serde_json::to_string_pretty(&about_ours).unwrap()
    );
    assert!(shop.sidecar("lazyxds-deployment-idle").is_none());
    assert!(shop.sidecar("lazyxds-deployment-parked").is_some());
}

fn destination_rule(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn virtual_service(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The events.k8s.io Event with this reason on workload `name` of `ns`, if any.
fn event(c: &Cluster, ns: &str, reason: &str, name: &str) -> Option<Value> {
    c.list("events.events.k8s.io", ns)
        .unwrap_or_default()
        .into_iter()
        .find(|e| e["reason"] == reason && e["regarding"]["name"] == name)
}

/// Issue 14 item 5. istiod looks for a caller's DestinationRule in the caller's namespace
/// before the gateway's (`push_context.go` `destinationRule`), so a `*.local` rule there
/// with `tls.mode: DISABLE` replaces ours for the scoped sidecar's cluster to the gateway:
/// first calls would leave in plaintext for a gateway that only speaks Istio mTLS. lazyxds
/// refuses such a workload (no Sidecar, a NotScoped Event saying which rule); a rule that
/// keeps `ISTIO_MUTUAL` breaks nothing, and the workload is scoped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_namespace_rule_that_would_send_first_calls_in_plaintext_refuses_the_workload() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    let mut ctl = controller(c, inst).await.unwrap();
    let api = shop.host("api");
    send_edges_from(
        &ctl.grpc_addr(),
        &shop.web_principal(),
        &[(shop.web_ip, &outbound(&api, 80))],
    )
    .await
    .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;
    let web = shop.start_web_sidecar().await;
    let gateway_cluster = format!("outbound|8080||lazyxds-gateway.{NAMESPACE}.svc.cluster.local");
    let db = outbound(&shop.host("db"), 80);
    let tls_to_gateway = |d: &Dump| {
        let cluster = d.cluster(&gateway_cluster).context("no gateway cluster")?;
        Ok::<_, anyhow::Error>(Dump::tls_sockets(cluster))
    };
    // Scoped (db hidden), and ours applies: mTLS to the gateway.
    wait_config(&web, "scoped, mTLS to the gateway", |d| {
        if d.cluster_names().contains(&db) {
            bail!("not scoped yet");
        }
        match tls_to_gateway(d)? {
            (true, _) => Ok(()),
            other => bail!("gateway cluster TLS sockets {other:?}"),
        }
    })
    .await;

    // The premise, read from istiod with the controller stopped (it would act on the rule):
    // the caller namespace's `*.local` DISABLE rule wins over ours for the scoped sidecar.
    ctl.kill();
    c.apply_json(&[destination_rule(
        &shop.ns,
        "plain",
        json!({"host": "*.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    )])
    .unwrap();
    wait_config(&web, "the gateway cluster in plaintext", |d| {
        if d.cluster_names().contains(&db) {
            bail!("no longer scoped");
        }
        match tls_to_gateway(d)? {
            (false, false) => Ok(()),
            other => bail!("gateway cluster TLS sockets {other:?}"),
        }
    })
    .await;

    // lazyxds refuses web: its Sidecar goes, and an Event names the rule.
    ctl.restart().await.unwrap();
    ctl.wait_leading(c).await.unwrap();
    shop.wait_web_sidecar_gone(&ctl).await;
    let refused = eventually(
        Duration::from_secs(30),
        || tail(&ctl.log()),
        || event(c, &shop.ns, "NotScoped", "web"),
    )
    .await;
    let note = refused["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("DestinationRule {}/plain (host *.local)", shop.ns))
            && note.contains("sets tls mode DISABLE"),
        "{note}"
    );
    assert_eq!(refused["type"], "Warning");

    // The same rule with ISTIO_MUTUAL does what ours does: web is scoped again, and its
    // gateway cluster (from the user's rule now) is mTLS.
    c.apply_json(&[destination_rule(
        &shop.ns,
        "plain",
        json!({"host": "*.local", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    )])
    .unwrap();
    shop.wait_web_deps(&[&api], &ctl).await;
    wait_config(&web, "scoped again, mTLS to the gateway", |d| {
        if d.cluster_names().contains(&db) {
            bail!("not scoped yet");
        }
        match tls_to_gateway(d)? {
            (true, _) => Ok(()),
            other => bail!("gateway cluster TLS sockets {other:?}"),
        }
    })
    .await;
    assert_all_accepted(&web).await;
}

/// Issue 14 item 7. Of several VirtualServices for one host a sidecar takes its namespace's
/// private ones first, then the oldest public one (`push_context.go`
/// `VirtualServicesForGateway`, `virtualservice.go` `SelectVirtualServices`, creation
/// order). The gateway routes a first call as an unscoped caller's own sidecar does (the
/// oldest public one, whatever the names), and a caller whose namespace has its own
/// VirtualService for the host keeps the host visible and routes it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_routes_a_host_with_several_virtual_services_as_the_callers_sidecar() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    let ns = shop.ns.clone();
    let http = [("http", 9080)];
    c.apply_json(&[
        service(&ns, "reviews", &http),
        service(&ns, "reviews-old", &http),
        service(&ns, "reviews-new", &http),
        service(&ns, "reviews-mine", &http),
    ])
    .unwrap();
    let to = |dest: &str| json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": dest}}]}]});
    // `b-old` is the older; `a-new` sorts first by name (what the gateway used to take).
    c.apply_json(&[virtual_service(&ns, "b-old", to("reviews-old"))])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.apply_json(&[virtual_service(&ns, "a-new", to("reviews-new"))])
        .unwrap();
    // The shop's own, for its callers only, ahead of any public one.
    let mut mine = to("reviews-mine");
    mine["exportTo"] = json!(["."]);
    c.apply_json(&[virtual_service(&ns, "mine", mine)]).unwrap();
    // An unscoped caller in another namespace: what its own sidecar chooses.
    let other = Shop::create(c, false).await.unwrap();
    let ctl = controller(c, inst).await.unwrap();
    let reviews = shop.host("reviews");
    let cluster_of = |svc: &str| outbound(&shop.host(svc), 9080);

    let unscoped = other.start_web_sidecar().await;
    wait_config(
        &unscoped,
        "the unscoped caller's route for reviews",
        |d| match d.sidecar_route_cluster(&reviews, 9080) {
            Some(got) if got == cluster_of("reviews-old") => Ok(()),
            got => bail!("reviews goes to {got:?}"),
        },
    )
    .await;
    let gateway = lazy_gateway(c, json!({})).await;
    wait_config(&gateway, "the gateway's route for reviews", |d| {
        let route = d
            .gateway_route(&format!("{reviews}:9080"))
            .context("no gateway route for reviews:9080")?;
        match route["route"]["cluster"].as_str() {
            Some(got) if got == cluster_of("reviews-old") => Ok(()),
            got => bail!("reviews goes to {got:?} at the gateway"),
        }
    })
    .await;

    // web (scoped, in the shop) never called reviews, yet keeps it and its own route.
    shop.wait_web_deps(&[], &ctl).await;
    let sidecar = shop.sidecar("lazyxds-deployment-web").unwrap();
    let hosts = sidecar["spec"]["egress"][0]["hosts"].to_string();
    assert!(hosts.contains(&format!("{ns}/{reviews}")), "{hosts}");
    let web = shop.start_web_sidecar().await;
    wait_config(&web, "the scoped caller's own route for reviews", |d| {
        if d.cluster_names().contains(&outbound(&shop.host("db"), 80)) {
            bail!("not scoped yet");
        }
        match d.sidecar_route_cluster(&reviews, 9080) {
            Some(got) if got == cluster_of("reviews-mine") => Ok(()),
            got => bail!("reviews goes to {got:?}"),
        }
    })
    .await;
    for proxy in [&unscoped, &gateway, &web] {
        assert_all_accepted(proxy).await;
    }
}

/// Issue 14 item 7, headless Services. A pod of one is called by its own name
/// (`search-0.search.<ns>.svc.cluster.local`): the gateway routes no such name (it falls to
/// the `*.svc` 404), while the caller's sidecar has `*.search.<ns>.svc.cluster.local`
/// domains for it (`httproute.go` `generateVirtualHostDomains`). So a headless Service
/// stays visible to scoped callers, learned or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_service_stays_visible_as_only_the_callers_sidecar_routes_its_pods() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let shop = Shop::create(c, true).await.unwrap();
    let mut search = service(&shop.ns, "search", &[("http", 9200)]);
    search["spec"]["clusterIP"] = json!("None");
    c.apply_json(&[search]).unwrap();
    let ctl = controller(c, inst).await.unwrap();
    let search = shop.host("search");
    let pod_name = format!("search-0.{search}");

    // The premise: at the gateway a pod's name gets the unknown-host 404.
    let gateway = lazy_gateway(c, json!({})).await;
    wait_config(&gateway, "the gateway's virtual host for a pod name", |d| {
        if d.gateway_route(&format!("{search}:9200")).is_none() {
            bail!("no gateway route for {search} yet");
        }
        let vh = d.virtual_host(None, &pod_name).context("no virtual host")?;
        match vh["routes"][0]["direct_response"]["status"].as_u64() {
            Some(404) => Ok(()),
            _ => bail!("{pod_name} takes {vh}"),
        }
    })
    .await;

    shop.wait_web_deps(&[], &ctl).await;
    let web = shop.start_web_sidecar().await;
    wait_config(&web, "the headless service in the scoped sidecar", |d| {
        if d.cluster_names().contains(&outbound(&shop.host("db"), 80)) {
            bail!("not scoped yet");
        }
        let cluster = d.sidecar_route_cluster(&pod_name, 9200);
        if cluster != Some(outbound(&search, 9200)) {
            bail!("{pod_name}:9200 goes to {cluster:?}");
        }
        Ok(())
    })
    .await;
    for proxy in [&gateway, &web] {
        assert_all_accepted(proxy).await;
    }
}

/// The HTTP connection managers of a sidecar's `virtualInbound` filter chains for
/// destination port `port` (one per transport: mTLS and, under PERMISSIVE, plaintext).
fn inbound_hcms(dump: &Dump, port: u16) -> Vec<Value> {
    dump.listeners()
        .into_iter()
        .filter(|l| l["name"] == "virtualInbound")
        .flat_map(|l| l["filter_chains"].as_array().into_iter().flatten())
        .filter(|fc| fc["filter_chain_match"]["destination_port"] == json!(port))
        .flat_map(|fc| fc["filters"].as_array().into_iter().flatten())
        .filter(|f| f["name"] == "envoy.filters.network.http_connection_manager")
        .map(|f| f["typed_config"].clone())
        .collect()
}

/// Whether an HTTP connection manager runs Envoy's RBAC filter (the name also appears in
/// its tracing tags, so only `http_filters` counts).
fn has_rbac_filter(hcm: &Value) -> bool {
    hcm["http_filters"]
        .as_array()
        .is_some_and(|fs| fs.iter().any(|f| f["name"] == "envoy.filters.http.rbac"))
}

/// Issue 15 item 1: what istiod gives the controller's own sidecar (the install's pod, its
/// `proxy.istio.io/config`, the install's AuthorizationPolicy) on the gRPC edge port: an
/// RBAC filter allowing only the gateway's principal, and an HTTP connection manager that
/// replaces `x-forwarded-client-cert` with the verified peer's (`SANITIZE_SET`, URI
/// included), so what `--edge-auth xfcc` reads is never a caller's own header. Then the
/// controller, run as the Deployment says, takes a stream carrying what that sidecar writes
/// for the gateway and refuses the rest (learning nothing from them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_sidecar_forwards_only_the_gateways_verified_identity() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let ctl = controller(c, inst).await.unwrap();
    let pods = controller_pods(c).await.unwrap();
    let (pod, ip) = pods[0].clone();
    let grpc_port: u16 = 18000;
    let proxy = controller_sidecar(c, &pod, ip, json!({})).await;
    let gateway_principal = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/lazyxds-gateway");
    let dump = wait_config(&proxy, "the controller's inbound gRPC chains", |d| {
        let hcms = inbound_hcms(d, grpc_port);
        if hcms.is_empty() {
            bail!("no inbound HTTP chain for port {grpc_port}");
        }
        if !hcms.iter().all(has_rbac_filter) {
            bail!("an inbound chain for {grpc_port} without the RBAC filter");
        }
        Ok(())
    })
    .await;
    let hcms = inbound_hcms(&dump, grpc_port);
    for hcm in &hcms {
        assert_eq!(
            hcm["forward_client_cert_details"], "SANITIZE_SET",
            "{hcm:#}"
        );
        let details = &hcm["set_current_client_cert_details"];
        assert_eq!(details["uri"], true, "{details}");
        let rbac = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "envoy.filters.http.rbac")
            .unwrap();
        let text = rbac.to_string();
        assert!(text.contains(&gateway_principal), "{rbac:#}");
        // No other principal is allowed on this port.
        assert!(
            !text.contains("\"principals\":[{\"any\":true}]"),
            "{rbac:#}"
        );
        lazyxds_e2e::note(format_args!(
            "controller sidecar inbound :{grpc_port}: forward_client_cert_details={} \
             set_current_client_cert_details={} rbac allows {gateway_principal}",
            hcm["forward_client_cert_details"], details
        ));
    }
    lazyxds_e2e::note(format_args!(
        "controller sidecar: {} inbound HTTP chain(s) for :{grpc_port}",
        hcms.len()
    ));
    assert_all_accepted(&proxy).await;

    // The controller (`--edge-auth xfcc`, as rendered) against what reaches it.
    let web = c.pod_ip();
    let api = "api.lazyxds-system.svc.cluster.local";
    let own = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/lazyxds");
    let cases = [
        (None, "missing"),
        (
            Some(format!(
                "By=spiffe://cluster.local/ns/shop/sa/x;URI={gateway_principal}"
            )),
            "not_our_sidecar",
        ),
        (
            Some(format!(
                "By={own};URI={gateway_principal},By={own};Hash=0;Subject=\"\";\
                 URI=spiffe://cluster.local/ns/shop/sa/cart"
            )),
            "wrong_identity",
        ),
    ];
    for (xfcc, reason) in &cases {
        let err = lazyxds::send_edges_as(
            &ctl.grpc_addr(),
            xfcc.as_deref(),
            &[(web, &outbound(api, 80))],
        )
        .await
        .unwrap_err();
        let status = err
            .downcast_ref::<tonic::Status>()
            .map(|s| (s.code(), s.message().to_string()));
        lazyxds_e2e::note(format_args!("refused ({reason}): {status:?}"));
        assert!(status.is_some(), "{err:#}");
    }
    let metrics = ctl.http_get("/metrics").unwrap();
    for (_, reason) in &cases {
        let line = format!("lazyxds_grpc_streams_refused_by_auth_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} not in /metrics");
    }
    send_edges(&ctl.grpc_addr(), &[(web, &outbound(api, 80))])
        .await
        .unwrap();
}

/// A client certificate and key (PEM files) for `spiffe_id`, signed with istiod's CA
/// (its self-signed `istio-ca-secret`), as a workload's sidecar would hold.
fn mesh_client_cert(
    c: &Cluster,
    spiffe_id: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let secret = c
        .get("secret", Some("istio-system"), "istio-ca-secret")?
        .context("no istio-ca-secret")?;
    let dir = c.dir().join("mesh-client");
    std::fs::create_dir_all(&dir)?;
    for (key, file) in [("ca-cert.pem", "ca.pem"), ("ca-key.pem", "ca-key.pem")] {
        let b64 = secret["data"][key].as_str().context("CA secret field")?;
        std::fs::write(dir.join(format!("{file}.b64")), b64)?;
    }
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=URI:{spiffe_id}\nextendedKeyUsage=clientAuth,serverAuth\n\
             keyUsage=digitalSignature,keyEncipherment\n"
        ),
    )?;
    let run = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    for file in ["ca.pem", "ca-key.pem"] {
        run(&[
            "base64",
            "-d",
            "-A",
            "-in",
            &format!("{file}.b64"),
            "-out",
            file,
        ])?;
    }
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "key.pem",
        "-subj",
        "/O=cluster.local",
        "-out",
        "req.csr",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ])?;
    Ok((dir.join("cert.pem"), dir.join("key.pem")))
}

/// Traffic to `ip:port` (but the sidecar's own, from 127.0.0.6) redirected to the
/// sidecar's inbound listener, as Istio's init container captures a pod's inbound traffic
/// (`iptables -t nat … REDIRECT --to-ports 15006`); removed when dropped.
struct InboundCapture(Vec<String>);

impl InboundCapture {
    fn new(ip: Ipv4Addr, port: u16) -> Result<InboundCapture> {
        let rule: Vec<String> = [
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &ip.to_string(),
            "--dport",
            &port.to_string(),
            "!",
            "-s",
            "127.0.0.6",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15006",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let status = std::process::Command::new("iptables")
            .args(["-t", "nat", "-A"])
            .args(&rule)
            .status()?;
        if !status.success() {
            bail!("iptables -t nat -A {rule:?}: {status}");
        }
        Ok(InboundCapture(rule))
    }
}

impl Drop for InboundCapture {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args(["-t", "nat", "-D"])
            .args(&self.0)
            .status();
    }
}

/// Issue 15 item 1, the whole path: the real lazy gateway (Envoy under pilot-agent, the
/// filter, istiod's cluster for the controller Service with auto mTLS) streams to the
/// controller through the controller's real sidecar (inbound traffic captured as Istio's
/// init container does): the sidecar's RBAC lets the gateway through, its
/// `x-forwarded-client-cert` names it, and the controller takes the stream. A plaintext
/// caller forging that header is stopped by the sidecar's RBAC; with the
/// AuthorizationPolicy deleted, the sidecar strips the forged header (`SANITIZE_SET`) and
/// the controller refuses it itself: a missing policy fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_gateway_streams_through_the_controller_sidecar_and_a_forger_does_not() {
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    let inst = installed(c).await;
    let ctl = controller(c, inst).await.unwrap();
    let (pod, ip) = controller_pods(c).await.unwrap()[0].clone();
    // What injection would label the pod with: the mesh then sends it mTLS (auto mTLS).
    // Taken off again at the end: the pod is shared, and has no sidecar in other tests.
    struct Unlabel<'a>(&'a Cluster, String);
    impl Drop for Unlabel<'_> {
        fn drop(&mut self) {
            let _ = self.0.kubectl(
                &[
                    "-n",
                    NAMESPACE,
                    "label",
                    "pod",
                    &self.1,
                    "security.istio.io/tlsMode-",
                ],
                None,
            );
        }
    }
    let _unlabel = Unlabel(c, pod.clone());
    c.kubectl(
        &[
            "-n",
            NAMESPACE,
            "label",
            "pod",
            &pod,
            "security.istio.io/tlsMode=istio",
            "--overwrite",
        ],
        None,
    )
    .unwrap();
    // Every stat, for the failure message (Istio keeps few by default).
    let stats = json!({"proxyStatsMatcher": {"inclusionRegexps": [".*"]}});
    let sidecar = controller_sidecar(c, &pod, ip, stats).await;
    let grpc_port = 18000;
    wait_config(
        &sidecar,
        "the controller's inbound gRPC chains",
        |d| match inbound_hcms(d, grpc_port).len() {
            0 => bail!("no inbound HTTP chain for {grpc_port}"),
            _ => Ok(()),
        },
    )
    .await;
    let _capture = InboundCapture::new(ip, grpc_port).unwrap();

    // The gateway's filter opens its stream on its first request: one over mTLS with a
    // mesh certificate (signed here with istiod's own CA, `istio-ca-secret`).
    let gateway = lazy_gateway(
        c,
        json!({"proxyStatsMatcher": {"inclusionRegexps": [".*"]}}),
    )
    .await;
    let (cert, key) = mesh_client_cert(c, "spiffe://cluster.local/ns/default/sa/client").unwrap();
    let gateway_id = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/lazyxds-gateway");
    let t = Instant::now();
    let opened = loop {
        let _ = std::process::Command::new("curl")
            .args(["-sk", "--max-time", "2", "-o", "/dev/null", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--resolve", "gw:8080:127.0.0.1", "https://gw:8080/"])
            .args(["-H", "Host: api.lazyxds-system.svc.cluster.local"])
            .status();
        let log = ctl.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("gateway stream opened") && l.contains(&gateway_id))
        {
            break line.to_string();
        }
        if t.elapsed() > Duration::from_secs(60) {
            let admin = |port: u16, path: &'static str, grep: &'static str| async move {
                match lazyxds_e2e::client::get(port, path).await {
                    Ok(r) => r
                        .body
                        .lines()
                        .filter(|l| l.contains(grep) && !l.ends_with(": 0"))
                        .take(400)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    Err(e) => format!("{e:#}"),
                }
            };
            let curl = std::process::Command::new("curl")
                .args(["-skv", "--max-time", "2", "-o", "/dev/null", "--cert"])
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .args(["--resolve", "gw:8080:127.0.0.1", "https://gw:8080/"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            panic!(
                "no gateway stream through the sidecar:\n{}\ncurl: {curl:?}\ngateway stats:\n{}\ngateway clusters:\n{}\nsidecar stats:\n{}",
                lazyxds_e2e::process::tail(&log, 10),
                admin(gateway.admin_port(), "/stats", "lazyxds.lazyxds-system").await,
                admin(gateway.admin_port(), "/clusters", "18000||lazyxds.").await,
                admin(sidecar.admin_port(), "/stats", "").await,
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    lazyxds_e2e::note(format_args!(
        "through the controller's sidecar in {:?}: {opened}",
        t.elapsed()
    ));
    let rbac = sidecar.stats("rbac").await.unwrap();
    lazyxds_e2e::note(format_args!("controller sidecar RBAC stats: {rbac:?}"));
    assert!(
        rbac.iter()
            .any(|(k, v)| k.ends_with("rbac.allowed") && *v > 0),
        "{rbac:?}"
    );
    let metrics = ctl.http_get("/metrics").unwrap();
    assert!(
        !metrics.lines().any(
            |l| l.starts_with("lazyxds_grpc_streams_refused_by_auth_total{") && !l.ends_with(" 0")
        ),
        "a refusal while only the gateway called"
    );

    // A plaintext caller forging the header the sidecar would write: the sidecar's RBAC
    // (a principal needs mTLS) stops it.
    let web = c.pod_ip();
    let edge = [(web, &*outbound("api.lazyxds-system.svc.cluster.local", 80))];
    let forged = lazyxds::gateway_xfcc();
    let err = lazyxds::send_edges_as(&ctl.grpc_addr(), Some(&forged), &edge)
        .await
        .unwrap_err();
    lazyxds_e2e::note(format_args!("plaintext forger, policy in place: {err:#}"));
    assert!(format!("{err:#}").contains("RBAC"), "{err:#}");

    // The AuthorizationPolicy deleted: the forger reaches the controller, without its
    // header (SANITIZE_SET on a plaintext connection), and is refused there.
    let policy = inst
        .object("AuthorizationPolicy", "lazyxds")
        .unwrap()
        .clone();
    struct Restore<'a>(&'a Cluster, Value);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = self.0.apply_json(std::slice::from_ref(&self.1));
        }
    }
    let _restore = Restore(c, policy);
    c.kubectl(
        &["-n", NAMESPACE, "delete", "authorizationpolicy", "lazyxds"],
        None,
    )
    .unwrap();
    wait_config(
        &sidecar,
        "no RBAC on the controller's inbound chains",
        |d| {
            let hcms = inbound_hcms(d, grpc_port);
            match hcms.iter().any(has_rbac_filter) {
                true => bail!("the RBAC filter is still there"),
                false => Ok(()),
            }
        },
    )
    .await;
    let err = lazyxds::send_edges_as(&ctl.grpc_addr(), Some(&forged), &edge)
        .await
        .unwrap_err();
    lazyxds_e2e::note(format_args!("plaintext forger, policy deleted: {err:#}"));
    let status = err.downcast_ref::<tonic::Status>().cloned();
    assert_eq!(
        status.as_ref().map(tonic::Status::code),
        Some(tonic::Code::Unauthenticated),
        "{err:#}"
    );
    let metrics = ctl.http_get("/metrics").unwrap();
    assert!(
        metrics.contains("lazyxds_grpc_streams_refused_by_auth_total{reason=\"missing\"} 1"),
        "{metrics}"
    );
    assert_all_accepted(&sidecar).await;
}
