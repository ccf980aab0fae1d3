//! The pieces of `uninstall` that talk to the cluster: every object carrying our
//! `app.kubernetes.io/managed-by: lazyxds` label, of the kinds the controller writes
//! ([`list_owned`]), and `uninstall --wait` ([`drain`]; its decisions are `uninstall.rs`'s).

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use lazyxds_index::objects::{
    KILL_SWITCH_CONFIGMAP, LABEL_MANAGED_BY, LEADER_LEASE, MANAGED_BY_US,
};
use serde_json::json;

use super::config::CONTROLLER_NAME;
use super::uninstall::{drain_step, written_by_controller, DrainStep, ObjectRef, UninstallConfig};

/// The kinds the controller may create (Sidecars; the gateway routes), as
/// (group, version, kind, plural).
pub const OWNED_KINDS: [(&str, &str, &str, &str); 6] = [
    ("networking.istio.io", "v1", "Sidecar", "sidecars"),
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    ("networking.istio.io", "v1", "Gateway", "gateways"),
    (
        "networking.istio.io",
        "v1alpha3",
        "EnvoyFilter",
        "envoyfilters",
    ),
    ("", "v1", "Service", "services"),
];

/// Lists, in every namespace, the objects of [`OWNED_KINDS`] that carry our label. A kind
/// the cluster does not serve (404) has none.
pub async fn list_owned(client: &Client) -> Result<Vec<ObjectRef>, kube::Error> {
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY_US}");
    let mut out = Vec::new();
    for (group, version, kind, plural) in OWNED_KINDS {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.clone(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let list = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list,
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        for o in list.items {
            out.push(ObjectRef::new(
                &api_version,
                kind,
                o.namespace().as_deref(),
                &o.name_any(),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// `uninstall --wait`, the Helm chart's pre-delete hook: sets the kill switch, waits (at most
/// `timeout`) until the controller has deleted every Sidecar and catch-all EnvoyFilter of
/// ours, stops the controller (its Deployment to 0 replicas, its pods gone), then deletes
/// what else it wrote ([`written_by_controller`]: the gateway's routes; past the timeout,
/// what the controller left too, Sidecars first) and its Lease. `log` gets one line per
/// step and per wait.
pub async fn drain(
    client: &Client,
    config: &UninstallConfig,
    timeout: Duration,
    log: &dyn Fn(String),
) -> anyhow::Result<()> {
    let install = &config.install;
    let ns = install.namespace.as_str();
    let poll = Duration::from_secs(2);
    let written = || async {
        let owned = list_owned(client)
            .await
            .context("listing the objects of ours")?;
        Ok::<_, anyhow::Error>(written_by_controller(install, &owned)?)
    };

    let switch: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let off = json!({"data": {"enabled": "false"}});
    let controller_runs = match switch
        .patch(
            KILL_SWITCH_CONFIGMAP,
            &PatchParams::default(),
            &Patch::Merge(&off),
        )
        .await
    {
        Ok(_) => {
            log(format!(
                "kill switch set (ConfigMap {ns}/{KILL_SWITCH_CONFIGMAP} enabled=false): the \
                 controller deletes every Sidecar and catch-all EnvoyFilter of ours"
            ));
            true
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            log(format!(
                "no ConfigMap {ns}/{KILL_SWITCH_CONFIGMAP}: no controller installed here to \
                 delete its Sidecars; deleting what is left of ours directly"
            ));
            false
        }
        Err(e) => return Err(e).context("setting the kill switch"),
    };
    if controller_runs {
        let started = Instant::now();
        loop {
            match drain_step(&written().await?, started.elapsed(), timeout) {
                DrainStep::Drained => {
                    log(format!(
                        "the controller deleted every Sidecar and catch-all EnvoyFilter of \
                         ours in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ));
                    break;
                }
                DrainStep::Wait { left } => log(format!(
                    "waiting for the controller to delete {left} ({} s of {} s)",
                    started.elapsed().as_secs(),
                    timeout.as_secs()
                )),
                DrainStep::TimedOut { left } => {
                    log(format!(
                        "the controller did not delete {left} within {} s (not running, or \
                         in dry-run?): they are deleted directly once it is stopped",
                        timeout.as_secs()
                    ));
                    break;
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    // Nothing may write any more before the rest goes (it would put the gateway's routes
    // back).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let zero = json!({"spec": {"replicas": 0}});
    match deployments
        .patch(
            CONTROLLER_NAME,
            &PatchParams::default(),
            &Patch::Merge(&zero),
        )
        .await
    {
        Ok(_) => log(format!(
            "controller stopped: Deployment {ns}/{CONTROLLER_NAME} scaled to 0"
        )),
        Err(kube::Error::Api(e)) if e.code == 404 => log(format!(
            "no Deployment {ns}/{CONTROLLER_NAME}: no controller to stop"
        )),
        Err(e) => return Err(e).context("scaling the controller to 0"),
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = install
        .controller_selector()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let stopping = Instant::now();
    loop {
        let left: Vec<String> = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .context("listing the controller's pods")?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        if left.is_empty() {
            break;
        }
        if stopping.elapsed() >= timeout {
            anyhow::bail!(
                "the controller's pods {left:?} are still there {} s after scaling it to 0",
                timeout.as_secs()
            );
        }
        log(format!(
            "waiting for the controller's pods to end: {} ({} s)",
            left.join(", "),
            stopping.elapsed().as_secs()
        ));
        tokio::time::sleep(poll).await;
    }

    let rest = written().await?;
    for r in &rest {
        delete(client, r).await?;
        log(format!(
            "deleted {} {}/{}",
            r.kind,
            r.namespace.as_deref().unwrap_or_default(),
            r.name
        ));
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    match leases.delete(LEADER_LEASE, &DeleteParams::default()).await {
        Ok(_) => log(format!("deleted Lease {ns}/{LEADER_LEASE}")),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e).context("deleting the controller's Lease"),
    }
    log(format!(
        "done: nothing the controller wrote is left ({} deleted here); the install's own \
         objects are the installer's to delete",
        rest.len()
    ));
    Ok(())
}

/// Deletes one object of [`OWNED_KINDS`] (gone already is fine).
async fn delete(client: &Client, r: &ObjectRef) -> anyhow::Result<()> {
    let Some((group, version, kind, plural)) =
        OWNED_KINDS.into_iter().find(|(_, _, k, _)| *k == r.kind)
    else {
        anyhow::bail!("{} {}: not a kind lazyxds writes", r.kind, r.name);
    };
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = match &r.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    match api.delete(&r.name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("deleting {} {:?}/{}", r.kind, r.namespace, r.name))
        }
    }
}
