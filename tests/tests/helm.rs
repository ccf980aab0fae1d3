//! The Helm chart (`charts/lazyxds`) installed by the pinned helm (`make setup-cluster`)
//! into the real API server of tier 4 (a cluster of this binary's own: the chart's
//! cluster-scoped objects share names with the install `cluster.rs` applies). `make
//! test-chart` checks what the chart renders; this checks that the API server takes it
//! (CRD schemas of Istio's own CRDs, RBAC objects, the admission policy) and that `helm
//! uninstall` leaves none of it behind.
//!
//! The controller then runs as the release's Deployment's pod, with a token of the release's
//! ServiceAccount, and must elect itself leader (Lease, its pod's leader label).
//!
//! Not here yet: a pre-delete hook that sets the kill switch and waits for our Sidecars
//! (the chart has none yet).

use std::process::Command;

use anyhow::{bail, Context, Result};
use lazyxds_e2e::cluster::lazyxds::{
    register_node, render, scheduled_pods, ControllerPod, Installed, NAMESPACE,
};
use lazyxds_e2e::cluster::{self, Cluster};
use lazyxds_e2e::paths::workspace_root;
use serde_json::Value;

async fn cluster() -> &'static Cluster {
    tokio::task::spawn_blocking(Cluster::shared)
        .await
        .expect("cluster thread")
        .unwrap_or_else(|e| panic!("{e:#}"))
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
async fn helm_installs_the_chart_into_the_real_api_server_and_uninstall_leaves_nothing() {
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

    // The controller under the release's RBAC: the Deployment as Helm created it, its first
    // pod (the test plays the kubelet), a token of the release's ServiceAccount.
    register_node(c).unwrap_or_else(|e| panic!("{e:#}"));
    let deployment = c
        .get("deployment.apps", Some(NAMESPACE), "lazyxds")
        .unwrap_or_else(|e| panic!("{e:#}"))
        .expect("the release's controller Deployment");
    let release = Installed {
        manifest: String::new(),
        objects: vec![deployment],
    };
    let pods = scheduled_pods(c, NAMESPACE, "lazyxds", 1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pod = pods[0]["metadata"]["name"].as_str().expect("pod name");
    let ip = c.pod_ip();
    c.set_pod_running(NAMESPACE, pod, ip)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ctl = ControllerPod::start(c, &release, pod, ip, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ctl.wait_leading(c)
        .await
        .unwrap_or_else(|e| panic!("the controller under the release's RBAC: {e:#}"));
    drop(ctl);

    helm(c, &["uninstall", "lazyxds", "-n", NAMESPACE, "--wait"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut left = Vec::new();
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
    assert!(left.is_empty(), "left after helm uninstall: {left:?}");
}
