//! The fake API server driven through the real kube::Client, kube::Api and kube-runtime watcher.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_apiserver::{ApiError, Failure, FakeApiServer, Options, RequestMatch, Verb};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn api_err(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn fast_server() -> FakeApiServer {
    FakeApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn crud_not_found_and_conflicts() {
    let server = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();

    let created = cms.create(&pp, &cm("a", &[("k", "1")])).await.unwrap();
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();
    assert!(created.uid().is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));

    let (code, reason, msg) = api_err(cms.create(&pp, &cm("a", &[])).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(msg, "configmaps \"a\" already exists");

    let (code, reason, msg) = api_err(cms.get("nope").await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (404, "NotFound", "configmaps \"nope\" not found")
    );
    assert!(cms.get_opt("nope").await.unwrap().is_none());

    // replace with the current resourceVersion succeeds; with a stale one it conflicts
    let mut fresh = cms.get("a").await.unwrap();
    fresh.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = cms.replace("a", &pp, &fresh).await.unwrap();
    let rv2: u64 = replaced.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1);
    assert_eq!(replaced.uid(), created.uid());
    let (code, reason, _) = api_err(cms.replace("a", &pp, &fresh).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let (code, _, _) = api_err(
        cms.replace("missing", &pp, &cm("missing", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);

    // merge patch (null deletes) and JSON patch
    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": null, "x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.labels(),
        &BTreeMap::from([("x".to_string(), "y".to_string())])
    );
    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "add", "path": "/data/j", "value": "v"}]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["j"], "v");
    // a merge patch carrying a stale resourceVersion is a precondition
    let (code, _, _) = api_err(
        cms.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 409);

    // list: selectors and pagination
    for n in ["b", "c", "d"] {
        cms.create(&pp, &cm(n, &[])).await.unwrap();
    }
    let all = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        all.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        all.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
    let by_label = cms
        .list(&ListParams::default().labels("app in (b,c)"))
        .await
        .unwrap();
    assert_eq!(by_label.items.len(), 2);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=d"))
        .await
        .unwrap();
    assert_eq!(by_name.items[0].name_any(), "d");
    let page1 = cms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page1.items.len(), 3);
    let token = page1.metadata.continue_.clone().unwrap();
    let page2 = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        page2.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        ["d"]
    );
    assert!(page2.metadata.continue_.is_none());
    let everywhere: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        4
    );

    // delete: Status on immediate deletion, 404 afterwards
    let deleted = cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right());
    assert_eq!(api_err(cms.get("a").await.unwrap_err()).0, 404);
    assert_eq!(
        api_err(cms.delete("a", &DeleteParams::default()).await.unwrap_err()).0,
        404
    );

    // finalizers hold a deletion until an update removes them
    cms.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["x/y"]}})),
    )
    .await
    .unwrap();
    let pending = cms.delete("b", &DeleteParams::default()).await.unwrap();
    let pending = pending.left().expect("still there");
    assert!(pending.metadata.deletion_timestamp.is_some());
    cms.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("b").await.unwrap().is_none());

    // dry-run writes store nothing
    let rv = server.resource_version();
    cms.create(
        &PostParams {
            dry_run: true,
            ..pp.clone()
        },
        &cm("dry", &[]),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("dry").await.unwrap().is_none());
    assert_eq!(server.resource_version(), rv);

    // cluster-scoped objects and the status subresource
    let nss: Api<Namespace> = Api::all(server.client());
    nss.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(nss.get("team-a").await.unwrap().name_any(), "team-a");
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    pods.create(
        &pp,
        &serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    // the main resource ignores status; the status subresource ignores the rest
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podIP": "10.0.0.1"}})),
    )
    .await
    .unwrap();
    assert!(pods.get("p").await.unwrap().status.is_none());
    let p = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"no": "pe"}}, "status": {"podIP": "10.0.0.1"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some("10.0.0.1"));
    assert!(p.metadata.labels.is_none());

    let version = server.client().apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn server_side_apply_ownership_conflicts_and_force() {
    let server = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let cfg = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": data});

    // a user creates it with kubectl-style SSA
    let user = PatchParams::apply("kubectl");
    cms.patch(
        "shared",
        &user,
        &Patch::Apply(cfg(json!({"mode": "user", "keep": "1"}))),
    )
    .await
    .unwrap();

    // lazyxds changing a field the user owns: conflict, with the manager and field named
    let ours = PatchParams::apply("lazyxds");
    let err = cms
        .patch("shared", &ours, &Patch::Apply(cfg(json!({"mode": "ours"}))))
        .await
        .unwrap_err();
    let (code, reason, msg) = api_err(err);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        msg,
        "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.mode"
    );

    // applying the same value is not a conflict: the field becomes shared
    let rv_before = cms.get("shared").await.unwrap().resource_version();
    let shared = cms
        .patch(
            "shared",
            &ours,
            &Patch::Apply(cfg(json!({"mode": "user", "extra": "x"}))),
        )
        .await
        .unwrap();
    assert_ne!(shared.resource_version(), rv_before);
    let managers: BTreeSet<String> = shared
        .managed_fields()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m.manager.as_deref().unwrap(),
                m.operation.as_deref().unwrap()
            )
        })
        .collect();
    assert_eq!(
        managers,
        BTreeSet::from(["kubectl/Apply".to_string(), "lazyxds/Apply".to_string()])
    );

    // re-applying an identical configuration is a no-op (no new resourceVersion)
    let again = cms
        .patch(
            "shared",
            &ours,
            &Patch::Apply(cfg(json!({"mode": "user", "extra": "x"}))),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), shared.resource_version());

    // force takes ownership
    let forced = cms
        .patch(
            "shared",
            &ours.clone().force(),
            &Patch::Apply(cfg(json!({"mode": "ours", "extra": "x"}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["mode"], "ours");
    let kubectl_fields = forced
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("kubectl"))
        .and_then(|m| m.fields_v1.clone())
        .unwrap();
    assert_eq!(kubectl_fields.0, json!({"f:data": {"f:keep": {}}}));

    // dropping a field from our configuration removes it (we own it alone)...
    let pruned = cms
        .patch("shared", &ours, &Patch::Apply(cfg(json!({"mode": "ours"}))))
        .await
        .unwrap();
    assert_eq!(
        pruned.data.unwrap(),
        BTreeMap::from([
            ("keep".to_string(), "1".to_string()),
            ("mode".to_string(), "ours".to_string())
        ])
    );

    // ...and an update (merge patch) takes ownership of what it changes, without conflicts
    cms.patch(
        "shared",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"mode": "edited"}})),
    )
    .await
    .unwrap();
    let (code, _, msg) = api_err(
        cms.patch("shared", &ours, &Patch::Apply(cfg(json!({"mode": "ours"}))))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    assert!(msg.contains("conflict with \"unknown\""), "{msg}");

    // apply requires a field manager
    let (code, _, _) = api_err(
        cms.patch(
            "shared",
            &PatchParams::default(),
            &Patch::Apply(cfg(json!({}))),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);

    // test-side SSA as another actor obeys the same rules
    let e: ApiError = server
        .server_side_apply(
            "someone",
            cfg(json!({"mode": "theirs"}))
                .as_object()
                .cloned()
                .map(|mut o| {
                    o["metadata"]["namespace"] = json!("default");
                    serde_json::Value::Object(o)
                })
                .unwrap(),
            false,
        )
        .unwrap_err();
    assert_eq!(e.code, 409);
}

#[tokio::test]
async fn watch_from_a_resource_version_sees_later_events_in_order_with_bookmarks() {
    let server = fast_server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    cms.create(&pp, &cm("before", &[])).await.unwrap();
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let wp = WatchParams::default().timeout(5);
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    let sel_cms = cms.clone();
    let mut labelled = sel_cms
        .watch(&WatchParams::default().labels("app=x").timeout(5), &rv)
        .await
        .unwrap()
        .boxed();

    cms.create(&pp, &cm("x", &[("a", "1")])).await.unwrap();
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    cms.delete("x", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    let mut last_rv = 0u64;
    while seen.len() < 4 {
        let ev = tokio::time::timeout(T, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let (kind, obj) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("{e:?}"),
        };
        let rv: u64 = obj.resource_version().unwrap().parse().unwrap();
        assert!(rv > last_rv, "resourceVersions increase");
        last_rv = rv;
        seen.push((kind, obj.name_any()));
    }
    assert_eq!(
        seen,
        [
            ("ADDED", "x".to_string()),
            ("MODIFIED", "x".into()),
            ("MODIFIED", "x".into()),
            ("DELETED", "x".into())
        ]
    );

    // with a label selector, losing the label reads as DELETED
    let mut sel_seen = Vec::new();
    while sel_seen.len() < 3 {
        match tokio::time::timeout(T, labelled.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(_) => sel_seen.push("ADDED"),
            WatchEvent::Modified(_) => sel_seen.push("MODIFIED"),
            WatchEvent::Deleted(_) => sel_seen.push("DELETED"),
            _ => {}
        }
    }
    assert_eq!(sel_seen, ["ADDED", "MODIFIED", "DELETED"]);

    // bookmarks arrive, carrying the current resourceVersion
    let mut bm = cms
        .watch(&WatchParams::default().timeout(5), &last_rv.to_string())
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(T, bm.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            );
            assert_eq!(b.types.kind, "ConfigMap");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }

    // timeoutSeconds ends the stream
    let start = Instant::now();
    let mut short = cms
        .watch(&WatchParams::default().timeout(1), &last_rv.to_string())
        .await
        .unwrap()
        .boxed();
    while tokio::time::timeout(T, short.try_next())
        .await
        .unwrap()
        .unwrap()
        .is_some()
    {}
    assert!(start.elapsed() >= Duration::from_millis(900));

    // a watch from before the window gets an ERROR event with 410
    server.expire_watch_window();
    let mut old = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(T, old.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
}

/// What a watcher has seen: current objects by name, and how many times it (re)listed.
#[derive(Clone, Default)]
struct Mirror {
    objects: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
    lists: Arc<Mutex<usize>>,
}

impl Mirror {
    fn spawn(api: Api<ConfigMap>, config: watcher::Config) -> (Self, tokio::task::JoinHandle<()>) {
        let m = Mirror::default();
        let mm = m.clone();
        let task = tokio::spawn(async move {
            let mut buffer = BTreeMap::new();
            let mut stream = watcher(api, config).boxed();
            while let Some(ev) = stream.next().await {
                let data = |c: &ConfigMap| c.data.clone().unwrap_or_default();
                match ev {
                    Ok(watcher::Event::Init) => buffer.clear(),
                    Ok(watcher::Event::InitApply(c)) => {
                        buffer.insert(c.name_any(), data(&c));
                    }
                    Ok(watcher::Event::InitDone) => {
                        *mm.objects.lock().unwrap() = buffer.clone();
                        *mm.lists.lock().unwrap() += 1;
                    }
                    Ok(watcher::Event::Apply(c)) => {
                        mm.objects.lock().unwrap().insert(c.name_any(), data(&c));
                    }
                    Ok(watcher::Event::Delete(c)) => {
                        mm.objects.lock().unwrap().remove(&c.name_any());
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        (m, task)
    }

    fn names(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    async fn converge(&self, server: &FakeApiServer) {
        let want = |s: &FakeApiServer| -> BTreeMap<String, BTreeMap<String, String>> {
            s.list_objects("v1", "ConfigMap", Some("default"))
                .into_iter()
                .map(|o| {
                    let c: ConfigMap = serde_json::from_value(o).unwrap();
                    (c.name_any(), c.data.unwrap_or_default())
                })
                .collect()
        };
        let deadline = Instant::now() + T;
        while *self.objects.lock().unwrap() != want(server) {
            assert!(
                Instant::now() < deadline,
                "watcher did not converge: {:?}",
                self.names()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn watches() -> RequestMatch {
    RequestMatch::any().verb(Verb::Watch).resource("configmaps")
}

fn lists() -> RequestMatch {
    RequestMatch::any().verb(Verb::List).resource("configmaps")
}

#[tokio::test]
async fn gone_makes_the_watcher_relist_and_converge() {
    let server = fast_server().await;
    for i in 0..5 {
        server
            .apply_object(serde_json::to_value(cm(&format!("c{i}"), &[("i", "0")])).unwrap())
            .unwrap();
    }
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let (mirror, task) = Mirror::spawn(cms, watcher::Config::default().page_size(2));
    assert!(server.wait_for_watches(&watches(), 1, T).await);
    mirror.converge(&server).await;
    assert_eq!(
        server.count_requests(&lists()),
        3,
        "5 objects in pages of 2"
    );

    // Compact the history and cut the stream: the watcher resumes from its last
    // resourceVersion, which is now too old, gets 410 and lists again.
    server
        .delete_object("v1", "ConfigMap", Some("default"), "c0")
        .unwrap();
    server
        .apply_object(serde_json::to_value(cm("c9", &[("i", "9")])).unwrap())
        .unwrap();
    server.expire_watch_window();
    assert_eq!(server.drop_watches(&watches()), 1);
    server
        .merge_patch_object(
            "v1",
            "ConfigMap",
            Some("default"),
            "c1",
            json!({"data": {"i": "1"}}),
        )
        .unwrap();

    mirror.converge(&server).await;
    assert!(*mirror.lists.lock().unwrap() >= 2, "relisted");
    let gone: Vec<_> = server
        .requests_matching(&watches())
        .into_iter()
        .filter(|r| r.code == 410)
        .collect();
    assert!(!gone.is_empty(), "a watch got 410");
    assert_eq!(mirror.names(), ["c1", "c2", "c3", "c4", "c9"]);

    // it keeps following changes after the relist
    server
        .delete_object("v1", "ConfigMap", Some("default"), "c2")
        .unwrap();
    mirror.converge(&server).await;
    task.abort();
}

#[tokio::test]
async fn dropped_watch_connections_are_resumed_without_relisting() {
    let server = fast_server().await;
    server
        .apply_object(serde_json::to_value(cm("a", &[])).unwrap())
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let (mirror, task) = Mirror::spawn(cms, watcher::Config::default());
    assert!(server.wait_for_watches(&watches(), 1, T).await);
    mirror.converge(&server).await;

    for round in 0..3 {
        assert_eq!(server.drop_watches(&watches()), 1);
        server
            .apply_object(serde_json::to_value(cm(&format!("n{round}"), &[])).unwrap())
            .unwrap();
        mirror.converge(&server).await;
        assert!(server.wait_for_watches(&watches(), 1, T).await);
    }
    assert_eq!(
        server.count_requests(&lists()),
        1,
        "resumed, never relisted"
    );
    let resumed = server.requests_matching(&watches());
    assert!(resumed.len() >= 4);
    assert!(resumed
        .iter()
        .all(|r| r.query_param("resourceVersion").is_some()));
    assert_eq!(*mirror.lists.lock().unwrap(), 1);

    // a streaming-list watcher (sendInitialEvents) converges too
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let (streaming, task2) = Mirror::spawn(cms, watcher::Config::default().streaming_lists());
    streaming.converge(&server).await;
    assert_eq!(server.count_requests(&lists()), 1);
    task.abort();
    task2.abort();
}

#[tokio::test]
async fn injected_faults_reach_the_client() {
    let server = FakeApiServer::start().await;
    server
        .apply_object(serde_json::to_value(cm("a", &[])).unwrap())
        .unwrap();
    let get_cms = RequestMatch::any().verb(Verb::Get).resource("configmaps");

    // 429 with Retry-After: kube's default client retries by itself
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.fail_next(
        2,
        get_cms.clone(),
        Failure::TooManyRequests {
            retry_after_secs: 0,
        },
    );
    cms.get("a").await.unwrap();
    let codes: Vec<u16> = server
        .requests_matching(&get_cms)
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [429, 429, 200]);
    assert_eq!(server.pending_faults(), 0);

    // ...and without retries the caller sees it
    let mut config = server.config();
    config.default_retry = false;
    let raw: Api<ConfigMap> = Api::namespaced(Client::try_from(config).unwrap(), "default");
    server.fail_next(
        1,
        get_cms.clone(),
        Failure::TooManyRequests {
            retry_after_secs: 3,
        },
    );
    assert_eq!(api_err(raw.get("a").await.unwrap_err()).0, 429);

    // 500 and 409 are not retried
    server.fail_next(1, get_cms.clone(), Failure::InternalError);
    assert_eq!(api_err(cms.get("a").await.unwrap_err()).0, 500);
    let apply = RequestMatch::any()
        .verb(Verb::Apply)
        .resource("configmaps")
        .field_manager("lazyxds");
    server.fail_next(1, apply.clone(), Failure::Conflict);
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}});
    let (code, reason, _) = api_err(
        cms.patch("a", &PatchParams::apply("lazyxds"), &Patch::Apply(&cfg))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    cms.patch("a", &PatchParams::apply("lazyxds"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    assert!(server
        .requests_matching(&apply)
        .iter()
        .map(|r| r.injected)
        .eq([true, false]));

    // a closed connection is an error too
    server.fail_next(1, get_cms.clone(), Failure::CloseConnection);
    assert!(cms.get("a").await.is_err());

    // latency
    server.set_latency(get_cms.clone(), Duration::from_millis(300));
    let start = Instant::now();
    cms.get("a").await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    server.clear_faults();
    let start = Instant::now();
    cms.get("a").await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn request_log_and_rbac_rules() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    server
        .apply_object(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
        )
        .unwrap();

    let pods: Api<Pod> = Api::all(client.clone());
    pods.list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    let mut w = pods
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    while w.try_next().await.unwrap().is_some() {}
    Api::<Namespace>::all(client.clone())
        .get("apps")
        .await
        .unwrap();
    let sidecar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "Sidecar"),
        "sidecars",
    );
    let sidecars: Api<DynamicObject> = Api::namespaced_with(client.clone(), "apps", &sidecar);
    let sc = json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "web"}, "spec": {}});
    sidecars
        .patch(
            "web",
            &PatchParams::apply("lazyxds").force(),
            &Patch::Apply(&sc),
        )
        .await
        .unwrap();
    sidecars
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "apps");
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "lazyxds"}})).unwrap(),
        )
        .await
        .unwrap();

    let log = server.requests();
    let summary: Vec<String> = log
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.verb,
                r.rbac_resource().unwrap_or_default(),
                r.code
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "list pods 200",
            "watch pods 200",
            "get namespaces 200",
            "apply sidecars 201",
            "delete sidecars 200",
            "create leases 201",
        ]
    );
    assert_eq!(
        log[0].query_param("labelSelector").as_deref(),
        Some("app=web")
    );
    assert_eq!(log[0].namespace, None);
    assert_eq!(log[3].field_manager.as_deref(), Some("lazyxds"));
    assert_eq!(log[3].namespace.as_deref(), Some("apps"));
    assert_eq!(log[3].name.as_deref(), Some("web"));
    assert_eq!(
        log[3].path,
        "/apis/networking.istio.io/v1/namespaces/apps/sidecars/web"
    );
    let rule = |g: &str, r: &str, v: &str| (g.to_string(), r.to_string(), v.to_string());
    assert_eq!(
        server.rbac_rules(),
        BTreeSet::from([
            rule("", "pods", "list"),
            rule("", "pods", "watch"),
            rule("", "namespaces", "get"),
            rule("networking.istio.io", "sidecars", "patch"),
            rule("networking.istio.io", "sidecars", "delete"),
            rule("coordination.k8s.io", "leases", "create"),
        ])
    );
    server.clear_requests();
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn istio_sidecar_round_trip_as_a_dynamic_object() {
    let server = fast_server().await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "Sidecar"),
        "sidecars",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(), "shop", &ar);
    let mut events = api
        .watch(
            &WatchParams::default().timeout(5),
            &server.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();

    let mut sc = DynamicObject::new("web", &ar).within("shop");
    sc.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            "lazyxds".to_string(),
        )]
        .into(),
    );
    sc.data = json!({"spec": {
        "workloadSelector": {"labels": {"app": "web"}},
        "egress": [{"hosts": ["istio-system/*", "shop/api.shop.svc.cluster.local"]}],
    }});
    let applied = api
        .patch("web", &PatchParams::apply("lazyxds"), &Patch::Apply(&sc))
        .await
        .unwrap();
    assert_eq!(applied.types.as_ref().unwrap().kind, "Sidecar");
    assert_eq!(
        applied.data["spec"]["egress"][0]["hosts"][1],
        "shop/api.shop.svc.cluster.local"
    );
    assert_eq!(
        applied.managed_fields()[0].manager.as_deref(),
        Some("lazyxds")
    );

    let got = api.get("web").await.unwrap();
    assert_eq!(got.data, applied.data);
    assert_eq!(got.labels()["app.kubernetes.io/managed-by"], "lazyxds");
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    // the same object through the test-side store, and at another served version
    let stored = server
        .get_object("networking.istio.io/v1", "Sidecar", Some("shop"), "web")
        .unwrap();
    assert_eq!(stored["spec"]["workloadSelector"]["labels"]["app"], "web");
    let beta = server
        .get_object(
            "networking.istio.io/v1beta1",
            "Sidecar",
            Some("shop"),
            "web",
        )
        .unwrap();
    assert_eq!(beta["apiVersion"], "networking.istio.io/v1beta1");

    api.delete("web", &DeleteParams::default()).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(T, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => kinds.push(("ADDED", o.name_any())),
            WatchEvent::Deleted(o) => kinds.push(("DELETED", o.name_any())),
            _ => {}
        }
    }
    assert_eq!(
        kinds,
        [("ADDED", "web".to_string()), ("DELETED", "web".to_string())]
    );

    // a resource the server has never heard of is served too
    let widget = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1alpha1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::all_with(server.client(), &widget);
    let w = DynamicObject::new("w", &widget).data(json!({"spec": {"size": 3}}));
    widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(widgets.get("w").await.unwrap().data["spec"]["size"], 3);
    assert_eq!(
        server
            .get_object("example.com/v1alpha1", "Widget", None, "w")
            .unwrap()["spec"]["size"],
        3
    );
}
