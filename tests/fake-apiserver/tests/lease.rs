//! kube-lease-manager (server-side apply with conflicts, strategic-merge releases) against the fake.

use std::time::Duration;

use fake_apiserver::FakeApiServer;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};

async fn manager(server: &FakeApiServer, identity: &str) -> LeaseManager {
    LeaseManagerBuilder::new(server.client(), "lazyxds-leader")
        .with_namespace("lazyxds")
        .with_identity(identity)
        .with_duration(2)
        .with_grace(1)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn only_one_leader_and_handover_on_release() {
    let server = FakeApiServer::start().await;
    let a = manager(&server, "replica-a").await;
    let b = manager(&server, "replica-b").await;

    assert!(a.changed().await.unwrap(), "a takes the free lease");
    // b sees a live holder (and an apply from it would conflict with a's holderIdentity)
    let b_try = tokio::time::timeout(Duration::from_millis(1200), b.changed()).await;
    assert!(
        b_try.is_err(),
        "b must not become leader while a holds the lease"
    );
    let lease = server
        .get_object(
            "coordination.k8s.io/v1",
            "Lease",
            Some("lazyxds"),
            "lazyxds-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    let grab = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "lazyxds-leader", "namespace": "lazyxds"},
        "spec": {"holderIdentity": "intruder"},
    });
    let err = server
        .server_side_apply("intruder", grab, false)
        .unwrap_err();
    assert_eq!(err.code, 409, "{err}");

    a.release().await.unwrap();
    let b_now = tokio::time::timeout(Duration::from_secs(10), b.changed()).await;
    assert!(b_now.unwrap().unwrap(), "b takes over after a releases");
    let lease = server
        .get_object(
            "coordination.k8s.io/v1",
            "Lease",
            Some("lazyxds"),
            "lazyxds-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");

    let verbs: Vec<String> = server
        .rbac_rules()
        .into_iter()
        .filter(|(g, r, _)| g == "coordination.k8s.io" && r == "leases")
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(verbs, ["create", "get", "patch"]);
}
