//! `lazyxds run --file --out` and `lazyxds report` as an operator runs them: the real
//! binary, edges over real gRPC, Sidecars read back from disk.
#![cfg(unix)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use support::{outbound, Controller};

const TOPOLOGY: &str = r#"
namespaces:
  - name: shop
    annotations: {lazyxds.io/enabled: "true"}
workloads:
  - {kind: Deployment, namespace: shop, name: web, labels: {app: web}, pods: [{ip: 10.0.0.1}]}
  - {kind: Deployment, namespace: shop, name: api, labels: {app: api}, pods: [{ip: 10.0.0.2}]}
services:
  - {namespace: shop, name: api, selector: {app: api}, ports: [{port: 80, name: http}]}
  - {namespace: shop, name: db, selector: {app: db}, ports: [{port: 80, name: http}]}
"#;

const API: &str = "api.shop.svc.cluster.local";
const DB: &str = "db.shop.svc.cluster.local";

/// Learned deps in the web workload's Sidecar file (None: no file).
fn web_deps(dir: &Path) -> Option<BTreeSet<String>> {
    let text =
        std::fs::read_to_string(dir.join("sidecars/shop_lazyxds-deployment-web.yaml")).ok()?;
    // The workload's catch-all EnvoyFilter, then its Sidecar.
    let v: Value = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "Sidecar")
        .unwrap();
    let deps: serde_json::Map<String, Value> = serde_json::from_str(
        v["metadata"]["annotations"]["lazyxds.io/deps"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    Some(deps.keys().cloned().collect())
}

async fn wait_for_web_deps(dir: &Path, want: &[&str], controller: &Controller) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while web_deps(dir).as_ref() != Some(&want) {
        assert!(
            Instant::now() < deadline,
            "web deps {:?}, want {want:?}\n{}",
            web_deps(dir),
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(dir: &Path) -> Controller {
    let (topology, out) = (dir.join("topology.yaml"), dir.join("sidecars"));
    let args = [
        "--file".as_ref(),
        topology.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    Controller::start(dir, args, &[])
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topology.yaml"), TOPOLOGY).unwrap();
    dir
}

#[tokio::test]
async fn learned_deps_survive_a_restart_and_never_shrink() {
    let dir = setup();
    let controller = start(dir.path());
    controller.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    wait_for_web_deps(dir.path(), &[API], &controller).await;
    drop(controller); // SIGKILL: nothing flushed on the way out

    // A fresh process knows nothing but the files; a new edge adds to them.
    let controller = start(dir.path());
    assert!(
        controller.log().contains("restored_deps=1"),
        "{}",
        controller.log()
    );
    controller.send(&[([10, 0, 0, 1], &outbound(DB))]).await;
    wait_for_web_deps(dir.path(), &[API, DB], &controller).await;
}

#[tokio::test]
async fn a_bad_topology_edit_is_reported_and_the_last_good_state_kept() {
    let dir = setup();
    let controller = start(dir.path());
    controller.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    wait_for_web_deps(dir.path(), &[API], &controller).await;

    // Two pods with one IP: refused, naming the file, the objects and the IP.
    let bad = TOPOLOGY.replace("10.0.0.2", "10.0.0.1");
    // mtime granularity: make sure the edit is seen as a change.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(dir.path().join("topology.yaml"), bad).unwrap();
    wait_log(&controller, "topology not reloaded").await;
    let log = controller.log();
    assert!(
        log.contains("topology.yaml") && log.contains("10.0.0.1"),
        "{log}"
    );
    // Still learning on the last good state.
    controller.send(&[([10, 0, 0, 1], &outbound(DB))]).await;
    wait_for_web_deps(dir.path(), &[API, DB], &controller).await;
}

#[test]
fn a_bad_topology_at_start_is_a_clear_error() {
    let dir = setup();
    let bad = TOPOLOGY.replace("{app: web}", "{app: web}, replicas: 3");
    std::fs::write(dir.path().join("topology.yaml"), bad).unwrap();
    let out = run_once(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("topology.yaml")
            && stderr.contains("shop/web")
            && stderr.contains("replicas"),
        "{stderr}"
    );
    assert!(!dir.path().join("sidecars").exists(), "nothing written");
}

#[tokio::test]
async fn report_reads_the_topology_and_the_written_sidecars() {
    let dir = setup();
    let controller = start(dir.path());
    controller.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    wait_for_web_deps(dir.path(), &[API], &controller).await;
    drop(controller);

    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazyxds"));
        cmd.arg("report")
            .arg("--file")
            .arg(dir.path().join("topology.yaml"));
        cmd.arg("--sidecars").arg(dir.path().join("sidecars"));
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(false);
    assert!(
        table.lines().next().unwrap().contains("WORKLOAD"),
        "{table}"
    );
    assert!(
        table.contains("Deployment/web") && table.contains("TOTAL"),
        "{table}"
    );
    let json: Value = serde_json::from_str(&run(true)).unwrap();
    let web = json["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w.to_string().contains("web"))
        .cloned()
        .unwrap();
    assert!(web.to_string().contains("scoped"), "{web}");
}

#[tokio::test]
async fn a_cluster_domain_names_the_services_and_a_bad_one_is_refused() {
    let dir = setup();
    let (topology, out) = (
        dir.path().join("topology.yaml"),
        dir.path().join("sidecars"),
    );
    let args = [
        "--file".as_ref(),
        topology.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--cluster-domain".as_ref(),
        "corp.example".as_ref(),
    ];
    let controller = Controller::start(dir.path(), args, &[]);
    let api = "api.shop.svc.corp.example";
    controller.send(&[([10, 0, 0, 1], &outbound(api))]).await;
    wait_for_web_deps(dir.path(), &[api], &controller).await;
    drop(controller);
    // Every host the Sidecar names (the gateway, the placeholder Service) is in the domain.
    let sidecar =
        std::fs::read_to_string(dir.path().join("sidecars/shop_lazyxds-deployment-web.yaml"))
            .unwrap();
    assert!(
        sidecar.contains("lazyxds-gateway.lazyxds-system.svc.corp.example")
            && !sidecar.contains("cluster.local"),
        "{sidecar}"
    );

    for bad in ["Corp.Example", "corp..example", "-corp.example", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_lazyxds"))
            .args(["run".to_string(), format!("--cluster-domain={bad}")])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            stderr.contains("--cluster-domain") && stderr.contains("is not a DNS domain"),
            "{bad:?}: {stderr}"
        );
    }
}

/// Waits until the controller's log says `what`.
async fn wait_log(controller: &Controller, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !controller.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run_once(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lazyxds"))
        .args([
            "run",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--file")
        .arg(dir.join("topology.yaml"))
        .arg("--out")
        .arg(dir.join("sidecars"))
        .output()
        .unwrap()
}

#[tokio::test]
async fn an_empty_topology_removes_nothing_on_reload_or_at_start() {
    let dir = setup();
    let controller = start(dir.path());
    controller.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    wait_for_web_deps(dir.path(), &[API], &controller).await;
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("sidecars"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = files();
    assert_eq!(before.len(), 3, "{before:?}"); // web, api, gateway/

    // Truncated to nothing (a failed write, a bad sync): refused, the last good state kept.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(dir.path().join("topology.yaml"), "").unwrap();
    wait_log(&controller, "topology not reloaded").await;
    assert!(
        controller.log().contains("2 of 2 workloads"),
        "{}",
        controller.log()
    );
    controller.send(&[([10, 0, 0, 1], &outbound(DB))]).await;
    wait_for_web_deps(dir.path(), &[API, DB], &controller).await;
    assert_eq!(files(), before);
    drop(controller);

    // A restart on the empty file refuses to start, naming the file and the flag.
    let out = run_once(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("topology.yaml")
            && stderr.contains("2 of 2 workloads")
            && stderr.contains("--max-removal-percent"),
        "{stderr}"
    );
    assert_eq!(files(), before);
    assert_eq!(
        web_deps(dir.path()).map(|d| d.len()),
        Some(2),
        "the learned deps are still on disk"
    );
}

#[tokio::test]
async fn a_damaged_workload_file_is_moved_aside_not_overwritten() {
    let dir = setup();
    let sidecars = dir.path().join("sidecars");
    std::fs::create_dir_all(&sidecars).unwrap();
    let web = sidecars.join("shop_lazyxds-deployment-web.yaml");
    std::fs::write(&web, "apiVersion: networking.istio.io/v1\nkind: Side").unwrap();
    // Not ours by name: left alone whatever it holds.
    let other = sidecars.join("notes.yaml");
    std::fs::write(&other, "{{{ not yaml").unwrap();
    let controller = start(dir.path());
    wait_log(&controller, "moved aside").await;
    let aside: Vec<_> = std::fs::read_dir(&sidecars)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".yaml.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(&aside[0]).unwrap(),
        "apiVersion: networking.istio.io/v1\nkind: Side"
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "{{{ not yaml");
    // The workload is scoped afresh.
    controller.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    wait_for_web_deps(dir.path(), &[API], &controller).await;
}
