//! `lazyxds run --kube` against the in-process fake API server: the real binary with a
//! kubeconfig, the real kube client and watchers, edges over real gRPC. Only what the real
//! API server cannot do or show lives here (injected faults, the exact requests made, dry
//! run, timing of held edges); learning, opt-out, pod-IP reuse, user Sidecars, the kill
//! switch, Events, leader failover and the mesh config run against a real kube-apiserver
//! in tests/tests/cluster.rs.
#![cfg(unix)]

mod support;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use fake_apiserver::{Failure, FakeApiServer, RequestMatch, Verb};
use serde_json::{json, Value};
use support::{eventually, outbound, Controller};

const SIDECARS: &str = "networking.istio.io/v1";
const WEB_SIDECAR: &str = "lazyxds-deployment-web";
const API: &str = "api.shop.svc.cluster.local";
const DB: &str = "db.shop.svc.cluster.local";

struct Cluster {
    api: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// A namespace `shop` opted in, Deployment `web` (ReplicaSet, one pod at 10.0.0.1) and
    /// Services `api` and `db`.
    async fn start() -> Cluster {
        let api = FakeApiServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
        let c = Cluster {
            api,
            dir,
            kubeconfig,
        };
        c.namespace("shop", Some("true"));
        c.deployment("web", None);
        c.apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d9", "namespace": "shop",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u1", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "web"}}}}));
        c.pod("web-5d9-a", "web-5d9", "10.0.0.1", "web");
        for svc in ["api", "db"] {
            c.apply(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": svc, "namespace": "shop"},
                "spec": {"selector": {"app": svc}, "ports": [{"port": 80, "name": "http"}]}}));
        }
        c
    }

    fn apply(&self, obj: Value) {
        self.api.apply_object(obj).unwrap();
    }

    fn namespace(&self, name: &str, enabled: Option<&str>) {
        let annotations = enabled.map_or(json!({}), |e| json!({"lazyxds.io/enabled": e}));
        self.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": annotations}}));
    }

    fn deployment(&self, name: &str, enabled: Option<&str>) {
        let annotations = enabled.map_or(json!({}), |e| json!({"lazyxds.io/enabled": e}));
        self.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "spec": {"selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}}}}));
    }

    fn pod(&self, name: &str, replica_set: &str, ip: &str, app: &str) {
        self.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": app},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set, "uid": "u2", "controller": true}]},
            "spec": {"containers": [], "serviceAccountName": app},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}], "startTime": "2026-01-01T00:00:00Z"}}));
    }

    fn controller(&self, extra: &[&str]) -> Controller {
        let env: [(&str, &OsStr); 1] = [("KUBECONFIG", self.kubeconfig.as_os_str())];
        let args: Vec<&str> = ["--kube", "--write-debounce-ms", "20"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        Controller::start(self.dir.path(), args, &env)
    }

    fn sidecar(&self, name: &str) -> Option<Value> {
        self.api.get_object(SIDECARS, "Sidecar", Some("shop"), name)
    }

    /// Learned deps of our web Sidecar (None: no Sidecar).
    fn web_deps(&self) -> Option<Vec<String>> {
        let sc = self.sidecar(WEB_SIDECAR)?;
        let deps: serde_json::Map<String, Value> =
            serde_json::from_str(sc["metadata"]["annotations"]["lazyxds.io/deps"].as_str()?)
                .ok()?;
        Some(deps.keys().cloned().collect())
    }

    async fn wait_web_deps(&self, want: &[&str], controller: &Controller) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        eventually(
            Duration::from_secs(15),
            || {
                format!(
                    "web deps {:?}, want {want:?}\n{}",
                    self.web_deps(),
                    controller.log()
                )
            },
            || (self.web_deps().as_ref() == Some(&want)).then_some(()),
        )
        .await;
    }

    fn writes(&self) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| {
                r.verb.is_write()
                    && r.field_manager.as_deref() != Some(fake_apiserver::TEST_MANAGER)
            })
            .filter(|r| r.resource.as_deref() == Some("sidecars"))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_shrinks_and_resync_merges() {
    let c = Cluster::start().await;
    let ctl = c.controller(&[]);
    ctl.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    c.wait_web_deps(&[API], &ctl).await;
    drop(ctl);
    let applies_before = c.writes();

    // A new process knows only the cluster: the Sidecar keeps its dep, and is not even
    // re-written (nothing changed).
    let ctl = c.controller(&[]);
    eventually(
        Duration::from_secs(15),
        || ctl.log(),
        || ctl.log().contains("writer starts").then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.web_deps(), Some(vec![API.to_string()]));
    assert_eq!(
        c.writes(),
        applies_before,
        "no write after restart:\n{}",
        ctl.log()
    );
    // A gateway resync adds to it.
    ctl.send(&[
        ([10, 0, 0, 1], &outbound(API)),
        ([10, 0, 0, 1], &outbound(DB)),
    ])
    .await;
    c.wait_web_deps(&[API, DB], &ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_converge_without_losing_deps_or_hot_looping() {
    let c = Cluster::start().await;
    let apply = RequestMatch::any().verb(Verb::Apply).resource("sidecars");
    c.api.fail_next(2, apply.clone(), Failure::Conflict);
    c.api.fail_next(2, apply.clone(), Failure::InternalError);
    let ctl = c.controller(&[]);
    ctl.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    c.wait_web_deps(&[API], &ctl).await;
    // Watches dropped and the event window expired: the watchers relist, nothing is lost.
    c.api.expire_watch_window();
    c.api.drop_watches(&RequestMatch::any());
    ctl.send(&[([10, 0, 0, 1], &outbound(DB))]).await;
    c.wait_web_deps(&[API, DB], &ctl).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applies = c.api.count_requests(&apply);
    assert!(
        applies <= 10,
        "{applies} applies for 2 changes + 4 injected failures"
    );
    let plan: Value = serde_json::from_str(&ctl.http_get("/debug/plan").await).unwrap();
    let errors = &plan["writer"]["errors"];
    assert_eq!(
        (errors["conflict"].as_u64(), errors["server_500"].as_u64()),
        (Some(2), Some(2)),
        "{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_shows_the_plan() {
    let c = Cluster::start().await;
    let ctl = c.controller(&["--dry-run"]);
    ctl.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    let plan = eventually(
        Duration::from_secs(15),
        || ctl.log(),
        || {
            let text = futures_lite_block(ctl.http_get("/debug/plan"));
            let plan: Value = serde_json::from_str(&text).ok()?;
            let changes = plan["plan"]["changes"].as_array()?.clone();
            let learned = changes
                .iter()
                .any(|c| c["kind"] == "Sidecar" && c["diff"].to_string().contains(API));
            learned.then_some(changes)
        },
    )
    .await;
    // The workload's EnvoyFilter, then its Sidecar listing what it learned.
    let kinds: Vec<&Value> = plan.iter().map(|c| &c["kind"]).collect();
    assert_eq!(kinds, ["EnvoyFilter", "Sidecar"], "{plan:?}");
    let plan = &plan[1];
    assert_eq!(plan["action"], "create");
    assert_eq!(plan["name"], WEB_SIDECAR);
    let writes: Vec<_> = c
        .api
        .requests()
        .into_iter()
        .filter(|r| {
            r.verb.is_write() && r.field_manager.as_deref() != Some(fake_apiserver::TEST_MANAGER)
        })
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert!(
        ctl.log().contains("dry-run: would change kind=Sidecar"),
        "{}",
        ctl.log()
    );
}

/// Issue 15 item 9: `/readyz` said ok while every write failed. Not ready while every
/// Sidecar write of a pass fails; ready again once one gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_every_write_fails() {
    let c = Cluster::start().await;
    let apply = RequestMatch::any().verb(Verb::Apply).resource("sidecars");
    // Enough failures for several passes (backoff 200 ms, 400 ms, ...).
    c.api.fail_next(4, apply.clone(), Failure::InternalError);
    let ctl = c.controller(&[]);
    ctl.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    let not_ready = eventually(
        Duration::from_secs(15),
        || ctl.log(),
        || {
            let body = futures_lite_block(ctl.http_get("/readyz"));
            body.starts_with("not ready: every write of the last pass failed")
                .then_some(body)
        },
    )
    .await;
    assert!(not_ready.contains("server_500"), "{not_ready}");
    c.wait_web_deps(&[API], &ctl).await;
    eventually(
        Duration::from_secs(15),
        || ctl.log(),
        || (futures_lite_block(ctl.http_get("/readyz")) == "ok").then_some(()),
    )
    .await;
}

/// Runs a future to completion from sync code inside the multi-thread runtime.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

const SYSTEM: &str = "lazyxds-system";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_say_when_a_workload_is_scoped_or_refused() {
    let c = Cluster::start().await;
    // No pod-template labels: its Sidecar would have an empty selector (the whole
    // namespace), so it is refused.
    c.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "nolabels", "namespace": "shop"},
        "spec": {"selector": {}, "template": {"metadata": {}, "spec": {"containers": []}}}}));
    let ctl = c.controller(&["--pod-name", "lazyxds-0"]);
    let events = || {
        c.api
            .list_objects("events.k8s.io/v1", "Event", Some("shop"))
    };
    let find = |reason: &str, name: &str| {
        events()
            .into_iter()
            .find(|e| e["reason"] == reason && e["regarding"]["name"] == name)
    };
    let scoped = eventually(
        Duration::from_secs(15),
        || format!("{:#?}\n{}", events(), ctl.log()),
        || find("Scoped", "web"),
    )
    .await;
    assert_eq!(scoped["type"], "Normal");
    assert_eq!(scoped["regarding"]["kind"], "Deployment");
    assert_eq!(scoped["reportingInstance"], "lazyxds-0");
    let refused = eventually(
        Duration::from_secs(15),
        || format!("{:#?}", events()),
        || find("NotScoped", "nolabels"),
    )
    .await;
    assert_eq!(refused["type"], "Warning");
    assert!(
        refused["note"]
            .as_str()
            .unwrap()
            .contains("workloadSelector"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_from_a_pod_the_watch_has_not_shown_yet_is_held_then_attributed() {
    let c = Cluster::start().await;
    let ctl = c.controller(&[]);
    c.wait_web_deps(&[], &ctl).await;
    // The gateway saw a new pod before our pod watch did.
    ctl.send(&[([10, 0, 0, 9], &outbound(DB))]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.pod("web-5d9-b", "web-5d9", "10.0.0.9", "web");
    c.wait_web_deps(&[DB], &ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_edges_writes_deps_and_traffic_stuck_on_the_gateway() {
    let c = Cluster::start().await;
    let ctl = c.controller(&[]);
    ctl.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    c.wait_web_deps(&[API], &ctl).await;
    // The same dep again, with new requests: the Sidecar should have sent these direct.
    ctl.send(&[([10, 0, 0, 1], &outbound(API))]).await;
    let text = eventually(
        Duration::from_secs(10),
        || ctl.log(),
        || {
            let text = futures_lite_block(ctl.http_get("/metrics"));
            text.contains("lazyxds_index_known_dep_requests_total 1")
                .then_some(text)
        },
    )
    .await;
    for line in [
        "lazyxds_grpc_edges_received_total 2",
        "lazyxds_index_attributed_requests_total 2",
        "lazyxds_workload_deps{namespace=\"shop\",workload=\"Deployment/web\"} 1",
        "lazyxds_watch_kill_switch 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let applies = text
        .lines()
        .find_map(|l| l.strip_prefix("lazyxds_writer_applies_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(applies >= Some(1), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mesh_config_discovery_selectors_and_outbound_policy_are_honoured() {
    let c = Cluster::start().await;
    let ctl = c.controller(&[]);
    c.wait_web_deps(&[], &ctl).await;
    let policy = || {
        c.sidecar(WEB_SIDECAR)
            .map(|s| s["metadata"]["annotations"]["lazyxds.io/outbound-policy"].clone())
    };
    assert_eq!(policy(), Some(json!("ALLOW_ANY")));
    // The mesh is REGISTRY_ONLY: recorded as the workload's effective policy.
    let mesh = |yaml: &str| {
        c.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"}, "data": {"mesh": yaml}}));
    };
    mesh("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n");
    eventually(
        Duration::from_secs(10),
        || ctl.log(),
        || (policy() == Some(json!("REGISTRY_ONLY"))).then_some(()),
    )
    .await;
    // istiod only watches labelled namespaces now: shop is not one, so no Sidecar there.
    mesh("discoverySelectors: [{matchLabels: {istio-discovery: enabled}}]\n");
    eventually(
        Duration::from_secs(10),
        || ctl.log(),
        || c.sidecar(WEB_SIDECAR).is_none().then_some(()),
    )
    .await;
    // A mesh config that does not parse keeps the last good one.
    mesh("outboundTrafficPolicy: {mode: SOMETIMES}\n");
    eventually(
        Duration::from_secs(10),
        || ctl.log(),
        || {
            ctl.log()
                .contains("mesh config not understood")
                .then_some(())
        },
    )
    .await;
    c.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"istio-discovery": "enabled"},
            "annotations": {"lazyxds.io/enabled": "true"}}}));
    // The gateway's namespace too: while istiod ignores it, nothing is scoped.
    c.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": SYSTEM, "labels": {"istio-discovery": "enabled"}}}));
    c.wait_web_deps(&[], &ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_routes_follow_the_mesh() {
    let c = Cluster::start().await;
    let ctl = c.controller(&[]);
    let routes = || -> Vec<String> {
        c.api
            .list_objects(SIDECARS, "VirtualService", Some(SYSTEM))
            .iter()
            .filter(|v| v["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "lazyxds")
            .flat_map(|v| v["spec"]["hosts"].as_array().cloned().unwrap_or_default())
            .filter_map(|h| h.as_str().map(String::from))
            .collect()
    };
    eventually(
        Duration::from_secs(15),
        || format!("{:?}\n{}", routes(), ctl.log()),
        || {
            let r = routes();
            (r.contains(&API.to_string()) && r.contains(&DB.to_string())).then_some(())
        },
    )
    .await;
    let placeholder = c.api.list_objects("v1", "Service", Some(SYSTEM));
    assert!(
        placeholder
            .iter()
            .any(|s| s["spec"]["ports"].to_string().contains("\"port\":80")),
        "the placeholder Service carries the mesh's HTTP port 80: {placeholder:?}"
    );
    // The db Service goes away: its route is pruned, the others stay.
    c.api
        .delete_object("v1", "Service", Some("shop"), "db")
        .unwrap();
    eventually(
        Duration::from_secs(15),
        || format!("{:?}", routes()),
        || {
            let r = routes();
            (!r.contains(&DB.to_string()) && r.contains(&API.to_string())).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_prunes_every_stale_route_of_ours_over_several_list_pages() {
    let c = Cluster::start().await;
    // Left by an earlier controller: more than one list page (500) of routes no host has
    // any more, and one VirtualService that is not ours.
    let vs = |name: &str, ours: bool| {
        let labels = if ours {
            json!({"app.kubernetes.io/managed-by": "lazyxds"})
        } else {
            json!({})
        };
        json!({"apiVersion": SIDECARS, "kind": "VirtualService",
            "metadata": {"name": name, "namespace": SYSTEM, "labels": labels},
            "spec": {"hosts": [format!("{name}.gone.svc.cluster.local")], "http": []}})
    };
    for i in 0..501 {
        c.apply(vs(&format!("lazyxds-route-stale-{i}"), true));
    }
    c.apply(vs("theirs", false));
    let names = || -> Vec<String> {
        c.api
            .list_objects(SIDECARS, "VirtualService", Some(SYSTEM))
            .iter()
            .filter_map(|v| v["metadata"]["name"].as_str().map(String::from))
            .collect()
    };
    let ctl = c.controller(&[]);
    eventually(
        Duration::from_secs(30),
        || format!("{:?}\n{}", names(), ctl.log()),
        || {
            let n = names();
            let stale = n.iter().filter(|n| n.contains("-stale-")).count();
            let routed = n.iter().any(|n| n.contains(API));
            (stale == 0 && routed && n.contains(&"theirs".to_string())).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_relist_deletes_nothing_and_a_real_mass_removal_waits_for_fresh_lists() {
    // A truncated list is what the real API server cannot be made to return: the fake's.
    let c = Cluster::start().await;
    let workloads: Vec<String> = (0..7).map(|i| format!("w{i}")).collect();
    for (i, name) in workloads.iter().enumerate() {
        c.deployment(name, None);
        c.apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("{name}-5d9"), "namespace": "shop",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": format!("u-{name}"), "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": name}}}}));
        c.pod(
            &format!("{name}-5d9-a"),
            &format!("{name}-5d9"),
            &format!("10.0.0.{}", 10 + i),
            name,
        );
    }
    let ctl = c.controller(&["--removal-confirm-secs", "2"]);
    let sidecars = || c.api.list_objects(SIDECARS, "Sidecar", Some("shop")).len();
    eventually(
        Duration::from_secs(15),
        || format!("{} Sidecars\n{}", sidecars(), ctl.log()),
        || (sidecars() == 8).then_some(()),
    )
    .await;
    let deletes = RequestMatch::any().verb(Verb::Delete).resource("sidecars");

    // The namespaces' relist comes back empty: every workload looks opted out at once.
    let namespaces = RequestMatch::any().resource("namespaces");
    c.api
        .fail_next(1, namespaces.clone().verb(Verb::List), Failure::EmptyList);
    c.api.expire_watch_window();
    c.api.drop_watches(&namespaces);
    eventually(
        Duration::from_secs(15),
        || ctl.log(),
        || ctl.log().contains("deletes held").then_some(()),
    )
    .await;
    // The guard asked for fresh lists, which show the namespace: nothing was deleted,
    // past the confirm window.
    eventually(
        Duration::from_secs(15),
        || ctl.log(),
        || {
            ctl.log()
                .contains("held Sidecar deletes no longer wanted")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.api.count_requests(&deletes), 0, "{}", ctl.log());
    assert_eq!(sidecars(), 8);

    // A real mass removal (the namespace opted out) waits for the window, then goes. The
    // Sidecars' fresh list is slow: passes run while it is under way.
    c.api.set_latency(
        RequestMatch::any().verb(Verb::List).resource("sidecars"),
        Duration::from_millis(500),
    );
    c.namespace("shop", Some("false"));
    eventually(
        Duration::from_secs(15),
        || ctl.log(),
        || {
            let metrics = futures_lite_block(ctl.http_get("/metrics"));
            metrics
                .contains("lazyxds_writer_removals_held 8")
                .then_some(())
        },
    )
    .await;
    assert_eq!(c.api.count_requests(&deletes), 0);
    eventually(
        Duration::from_secs(15),
        || format!("{} Sidecars\n{}", sidecars(), ctl.log()),
        || (sidecars() == 0).then_some(()),
    )
    .await;
    let log = ctl.log();
    assert!(log.contains("fresh lists agree: deleting"), "{log}");
    // One hold per episode: the fresh lists never made the guard think the removal was
    // over (the live Sidecars stay known while they are listed again).
    assert_eq!(log.matches("deletes held").count(), 2, "{log}");
    assert_eq!(log.matches("no longer wanted").count(), 1, "{log}");
}
