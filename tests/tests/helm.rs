//! The Helm chart (`charts/lazyxds`) installed by the pinned helm (`make setup-cluster`)
//! into the real API server of tier 4 (a cluster of this binary's own: the chart's
//! cluster-scoped objects share names with the install `cluster.rs` applies), with the
//! mini-mesh's process node (`tests/src/cluster/node.rs`) as its kubelet. `make test-chart`
//! checks what the chart renders; this checks that the API server takes it (CRD schemas of
//! Istio's own CRDs, RBAC objects, the admission policy), that the controller runs as the
//! release's Deployment's pods on the node (the release's ServiceAccount, in-cluster config)
//! and leads, and that `helm uninstall` leaves nothing of ours behind: its pre-delete hook
//! (a Job running `lazyxds uninstall --wait`, on the node) sets the kill switch, waits until
//! the controller has deleted our Sidecars, stops it and deletes the gateway's routes; a
//! user's Sidecar stays as it was.
//!
//! The node runs the controller image (the debug lazyxds binary) without an Istio sidecar
//! (no injection here; `mesh.rs` runs it injected): the test streams edges straight to the
//! leader's pod IP with the `x-forwarded-client-cert` its sidecar would write. The gateway
//! (`image: auto`, injected by Istio) is not on the node: its pods stay Pending.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazyxds_e2e::cluster::lazyxds::{
    leader_pod, render, scheduled_pods, send_edges_from, NAMESPACE,
};
use lazyxds_e2e::cluster::node::{self, Node};
use lazyxds_e2e::cluster::{self, eventually, Cluster, ClusterOptions};
use lazyxds_e2e::paths::workspace_root;
use serde_json::{json, Value};

/// The kinds the controller writes (`controller/src/install/cluster.rs` OWNED_KINDS), as
/// kubectl names them.
const OWNED_KINDS: &str = "sidecars.networking.istio.io,virtualservices.networking.istio.io,\
    destinationrules.networking.istio.io,gateways.networking.istio.io,\
    envoyfilters.networking.istio.io,services";
const SIDECARS: &str = "sidecars.networking.istio.io";

/// The cluster, listening on the node's bridge (pods reach the API server there).
async fn cluster() -> &'static Cluster {
    let bridge = node::make_bridge().unwrap_or_else(|e| panic!("{e:#}"));
    tokio::task::spawn_blocking(move || {
        Cluster::shared_with(ClusterOptions {
            listen: bridge,
            ..ClusterOptions::default()
        })
    })
    .await
    .expect("cluster thread")
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every object of the kinds the controller writes that carries our label, cluster-wide.
fn labelled_ours(c: &Cluster) -> Vec<String> {
    let out = c
        .kubectl(
            &[
                "get",
                OWNED_KINDS,
                "-A",
                "-l",
                "app.kubernetes.io/managed-by=lazyxds",
                "-o",
                "jsonpath={range .items[*]}{.kind} {.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}",
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    out.lines().map(str::to_string).collect()
}

/// Runs the pinned helm against the test cluster; its caches and config in the run's dir.
fn helm(c: &Cluster, args: &[&str]) -> Result<String> {
    let home = c.dir().join("helm");
    let out = Command::new(cluster::bin("helm")?)
        .args(args)
        .arg(format!("--kubeconfig={}", c.admin_kubeconfig().display()))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .current_dir(workspace_root())
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What kubectl calls this object's kind: `kind.group` (core kinds by kind alone).
fn resource(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    match object["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .split_once('/')
    {
        Some((group, _)) => format!("{kind}.{group}"),
        None => kind,
    }
}

fn name_of(object: &Value) -> (Option<&str>, &str) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str(),
        meta["name"].as_str().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_the_chart_and_its_pre_delete_hook_leaves_nothing_of_ours_behind() {
    let t0 = Instant::now();
    let c = cluster().await;
    let chart = workspace_root().join("charts/lazyxds");
    let chart = chart.to_str().expect("workspace path is UTF-8");
    // The chart's default values render what these flags render (`make test-chart`).
    let (_, objects) = render(&["--no-module", "--no-create-namespace"]).expect("render");
    assert!(
        objects.len() > 20,
        "the install renders {} objects",
        objects.len()
    );
    // The node's one image: the controller's (the debug lazyxds binary), which the hook's
    // Job runs too.
    let controller_image = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "lazyxds")
        .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .expect("the install's controller image")
        .to_string();
    let images = BTreeMap::from([(
        controller_image,
        lazyxds_e2e::paths::lazyxds_bin().expect("lazyxds binary"),
    )]);
    let node = tokio::task::spawn_blocking(move || Node::start(c, images))
        .await
        .expect("node thread")
        .unwrap_or_else(|e| panic!("{e:#}"));

    let out = helm(
        c,
        &[
            "install",
            "lazyxds",
            chart,
            "-n",
            NAMESPACE,
            "--create-namespace",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("STATUS: deployed"), "helm install: {out}");

    for object in &objects {
        let (ns, name) = name_of(object);
        let kind = resource(object);
        let got = c
            .get(&kind, ns, name)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .unwrap_or_else(|| {
                panic!("{kind} {ns:?}/{name}: not on the server after helm install")
            });
        // Helm owns it (so uninstall deletes it), and the install's own labels are kept.
        assert_eq!(
            got["metadata"]["annotations"]["meta.helm.sh/release-name"], "lazyxds",
            "{kind} {name}"
        );
        assert_eq!(
            got["metadata"]["labels"]["app.kubernetes.io/part-of"], "lazyxds",
            "{kind} {name}"
        );
    }

    // The controller: the release's Deployment's two pods on the node, under the release's
    // ServiceAccount; one leads (it labels its pod).
    let controllers = node
        .wait_ready(NAMESPACE, "lazyxds-", 2, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("the release's controller pods: {e:#}"));
    let leader_ip: Ipv4Addr = eventually(
        Duration::from_secs(60),
        || format!("no controller leads; node errors {:?}", node.errors()),
        || {
            let name = leader_pod(c).ok()??;
            controllers.iter().find(|p| p.name == name).map(|p| p.ip)
        },
    )
    .await;
    eprintln!(
        "helm: installed, controller leading at {leader_ip} after {:?}",
        t0.elapsed()
    );

    // A workload opted in, with a Sidecar the controller wrote and a dependency it learned
    // (so the gateway got a route of ours for it too), and a user's Sidecar beside it.
    let shop = c
        .namespace("shop", json!({}), json!({"lazyxds.io/enabled": "true"}))
        .unwrap_or_else(|e| panic!("{e:#}"));
    c.apply_json(&[
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": shop},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    // Not an image of the node: the test writes its status.
                    "spec": {"containers": [{"name": "web", "image": "test/web"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": shop},
            "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": 80}]}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "user-scope", "namespace": shop},
            "spec": {"workloadSelector": {"labels": {"app": "other"}},
                "egress": [{"hosts": ["./*", "istio-system/*"]}]}}),
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let user_sidecar = c
        .get(SIDECARS, Some(&shop), "user-scope")
        .unwrap_or_else(|e| panic!("{e:#}"))
        .expect("the user's Sidecar");
    let web_pod = scheduled_pods(c, &shop, "web", 1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))[0]["metadata"]["name"]
        .as_str()
        .expect("pod name")
        .to_string();
    let web_ip = c.pod_ip();
    c.set_pod_running(&shop, &web_pod, web_ip)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let api = format!("api.{shop}.svc.cluster.local");
    eventually(
        Duration::from_secs(30),
        || "no Sidecar for web".into(),
        || {
            c.get(SIDECARS, Some(&shop), "lazyxds-deployment-web")
                .ok()
                .flatten()
        },
    )
    .await;
    send_edges_from(
        &format!("{leader_ip}:18000"),
        &format!("spiffe://cluster.local/ns/{shop}/sa/default"),
        &[(web_ip, &format!("outbound|80||{api}"))],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    eventually(
        Duration::from_secs(30),
        || format!("web did not learn {api}: {:?}", labelled_ours(c)),
        || {
            let sc = c
                .get(SIDECARS, Some(&shop), "lazyxds-deployment-web")
                .ok()??;
            sc["metadata"]["annotations"]["lazyxds.io/deps"]
                .as_str()?
                .contains(&api)
                .then_some(())
        },
    )
    .await;
    let ours = eventually(
        Duration::from_secs(30),
        || format!("no gateway route of ours for {api}: {:?}", labelled_ours(c)),
        || {
            let ours = labelled_ours(c);
            ours.iter()
                .any(|o| {
                    o.starts_with("VirtualService ") && !o.ends_with("/lazyxds-unknown-mesh-hosts")
                })
                .then_some(ours)
        },
    )
    .await;
    eprintln!("helm: of ours before helm uninstall: {ours:?}");
    assert!(
        ours.contains(&format!("Sidecar {shop}/lazyxds-deployment-web"))
            && ours.contains(&format!("EnvoyFilter {shop}/lazyxds-deployment-web")),
        "{ours:?}"
    );

    let started = Instant::now();
    helm(c, &["uninstall", "lazyxds", "-n", NAMESPACE, "--wait"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();

    // The hook's pod on the node (its log names each step).
    let hooks: Vec<_> = node
        .finished()
        .into_iter()
        .filter(|p| p.info.namespace == NAMESPACE && p.info.name.starts_with("lazyxds-uninstall-"))
        .collect();
    let hook_log = hooks
        .first()
        .and_then(|p| std::fs::read_to_string(p.info.dir.join("uninstall.log")).ok())
        .unwrap_or_default();
    eprintln!("helm: uninstall took {took:?}; the hook's log:\n{hook_log}");

    // Nothing labelled ours anywhere; the user's Sidecar untouched.
    let left = labelled_ours(c);
    assert!(
        left.is_empty(),
        "labelled ours after helm uninstall: {left:?}"
    );
    let after = c
        .get(SIDECARS, Some(&shop), "user-scope")
        .unwrap_or_else(|e| panic!("{e:#}"))
        .expect("the user's Sidecar after helm uninstall");
    assert_eq!(
        after["metadata"]["resourceVersion"], user_sidecar["metadata"]["resourceVersion"],
        "the user's Sidecar was changed"
    );
    // The hook ran on the node and succeeded.
    assert!(
        hooks.len() == 1 && hooks[0].succeeded,
        "the pre-delete hook's pod on the node: {hooks:?}; node errors {:?}",
        node.errors()
    );
    assert!(
        hook_log.contains("kill switch set") && hook_log.contains("deleted VirtualService"),
        "{hook_log}"
    );

    // The release's objects and the hook's own are gone.
    let mut left = Vec::new();
    let hook_objects = [
        ("job.batch", Some(NAMESPACE)),
        ("serviceaccount", Some(NAMESPACE)),
        ("role.rbac.authorization.k8s.io", Some(NAMESPACE)),
        ("rolebinding.rbac.authorization.k8s.io", Some(NAMESPACE)),
        ("clusterrole.rbac.authorization.k8s.io", None),
        ("clusterrolebinding.rbac.authorization.k8s.io", None),
    ];
    for (kind, ns) in hook_objects {
        if c.get(kind, ns, "lazyxds-uninstall")
            .unwrap_or_else(|e| panic!("{e:#}"))
            .is_some()
        {
            left.push(format!("{kind} {ns:?}/lazyxds-uninstall"));
        }
    }
    for object in &objects {
        let (ns, name) = name_of(object);
        let kind = resource(object);
        if c.get(&kind, ns, name)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .is_some()
        {
            left.push(format!("{kind} {ns:?}/{name}"));
        }
    }
    if c.get(
        "lease.coordination.k8s.io",
        Some(NAMESPACE),
        "lazyxds-leader",
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
    .is_some()
    {
        left.push("the controller's Lease".into());
    }
    assert!(left.is_empty(), "left after helm uninstall: {left:?}");
    eprintln!("helm: total {:?}", t0.elapsed());
}
