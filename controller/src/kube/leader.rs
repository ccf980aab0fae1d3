//! Leader election on a `coordination.k8s.io` Lease: every replica serves (and is
//! Ready), only the leader writes. The leader labels its own pod `lazyxds.io/leader=true`
//! so the gRPC Service (which selects that label) sends gateways to it; it also clears the
//! label from any other pod (a replica that died as leader keeps its label otherwise).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use tokio::sync::watch;

pub use lazyxds_index::objects::{LEADER_LABEL, LEADER_LEASE};

/// Starts the election as `pod_name` on [`LEADER_LEASE`] in `namespace` (the controller's,
/// where its pods are); a holder that has not renewed for `duration_secs` loses the
/// lease, and renews a third of that before. The receiver says whether this replica
/// leads now.
pub async fn elect(
    client: Client,
    namespace: &str,
    pod_name: &str,
    duration_secs: u64,
) -> kube_lease_manager::Result<watch::Receiver<bool>> {
    let manager = LeaseManagerBuilder::new(client.clone(), LEADER_LEASE)
        .with_namespace(namespace)
        .with_identity(pod_name)
        .with_duration(duration_secs)
        .with_grace((duration_secs / 3).max(1))
        .build()
        .await?;
    let (mut lease, _task) = manager.watch().await;
    let (tx, rx) = watch::channel(false);
    let pod_name = pod_name.to_string();
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    tokio::spawn(async move {
        loop {
            let leading = *lease.borrow_and_update();
            // Followers stop writing before anything else happens.
            tx.send_replace(leading);
            tracing::info!(pod = %pod_name, leading, "leadership changed");
            label_pods(&pods, &pod_name, leading).await;
            if lease.changed().await.is_err() {
                tx.send_replace(false);
                return;
            }
        }
    });
    Ok(rx)
}

/// Puts the leader label on our pod (leading) or takes it off; as leader, also clears it
/// from every other pod. Failures are logged; the next change retries.
async fn label_pods(pods: &Api<Pod>, me: &str, leading: bool) {
    let value = if leading { json!("true") } else { json!(null) };
    let patch = json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    if let Err(error) = pods
        .patch(me, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(pod = me, %error, "cannot update the leader label of our pod");
    }
    if !leading {
        return;
    }
    let stale = match pods
        .list(&ListParams::default().labels(&format!("{LEADER_LABEL}=true")))
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            tracing::warn!(%error, "cannot list pods with the leader label");
            return;
        }
    };
    let clear = json!({"metadata": {"labels": {LEADER_LABEL: null}}});
    for pod in stale {
        let Some(name) = pod.metadata.name.filter(|n| n != me) else {
            continue;
        };
        match pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&clear))
            .await
        {
            Ok(_) => tracing::info!(pod = %name, "cleared a stale leader label"),
            Err(error) => tracing::warn!(pod = %name, %error, "cannot clear a stale leader label"),
        }
    }
}

/// Leadership for a single replica without election: always leading (the sender is
/// dropped: it never changes).
pub fn always() -> watch::Receiver<bool> {
    watch::channel(true).1
}
