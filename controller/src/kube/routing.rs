//! The gateway's routing objects in a cluster: the per-host VirtualServices and the
//! placeholder Service (every HTTP port of the mesh) change with the mesh, so the leader
//! keeps them applied, like Sidecars: server-side apply as `lazyxds`, pruning only
//! VirtualServices carrying our label. The static objects (Gateway, DestinationRule,
//! EnvoyFilter) come with `lazyxds install`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use lazyxds_index::gateway::UNKNOWN_MESH_HOSTS;
use lazyxds_index::objects::{LABEL_MANAGED_BY, MANAGED_BY_US};
use lazyxds_index::GatewayObjects;
use serde_json::Value;

use super::{istio_resource, FIELD_MANAGER};

/// (kind, namespace, name).
type Key = (String, String, String);

fn key(object: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&object["kind"]),
        s(&object["metadata"]["namespace"]),
        s(&object["metadata"]["name"]),
    )
}

fn resource(kind: &str) -> Option<ApiResource> {
    match kind {
        "VirtualService" => Some(istio_resource("VirtualService", "virtualservices")),
        "Service" => Some(ApiResource::erase::<k8s_openapi::api::core::v1::Service>(
            &(),
        )),
        _ => None,
    }
}

type Digest = [u8; 32];

/// Never the digest of an object.
const UNKNOWN: Digest = [0; 32];

/// SHA-256 of an object's JSON (`Value::to_string`: keys sorted, so equal objects have
/// equal digests).
fn digest(text: &str) -> Digest {
    let mut out = UNKNOWN;
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
    out
}

/// What this writer applied, so unchanged objects are not applied again: the SHA-256 of
/// each object's JSON (one VirtualService per mesh host: keeping the objects themselves
/// would cost kilobytes each).
#[derive(Debug, Default)]
pub struct RoutingState {
    applied: BTreeMap<Key, Digest>,
    /// Our VirtualServices found in the cluster at start (to prune what is stale).
    listed: bool,
}

/// One dynamic gateway object as [`render`] keeps it.
#[derive(Debug)]
pub struct Rendered {
    key: Key,
    digest: Digest,
    /// The object's JSON, only when it is not what this writer last applied.
    text: Option<String>,
}

/// The gateway objects that change with the mesh (the placeholder Service and a
/// VirtualService per mesh host), keeping of each its digest, and its JSON only when it
/// is not what was last applied. Then [`sync`].
pub fn render(objects: &GatewayObjects, state: &RoutingState) -> Vec<Rendered> {
    let rendered = |key: Key, text: &str| {
        let digest = digest(text);
        let changed = state.applied.get(&key) != Some(&digest);
        Rendered {
            key,
            digest,
            text: changed.then(|| text.to_string()),
        }
    };
    let placeholder = &objects.placeholder_service;
    let per_host = objects
        .virtual_services
        .iter()
        .filter(|vs| vs.name() != UNKNOWN_MESH_HOSTS)
        .map(|vs| {
            let key = (
                "VirtualService".to_string(),
                vs.namespace().to_string(),
                vs.name().to_string(),
            );
            rendered(key, &vs.text())
        });
    std::iter::once(rendered(key(placeholder), &placeholder.to_string()))
        .chain(per_host)
        .collect()
}

/// Objects a page of [`list_our_names`] holds: one VirtualService per mesh host, so a
/// restart at 20k Services would otherwise hold them all at once.
const LIST_PAGE: u32 = 500;

/// The names of our VirtualServices in `api`'s namespace: metadata only (their specs are
/// not needed), page by page.
async fn list_our_names(
    api: &Api<DynamicObject>,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let ours = ListParams::default()
        .labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY_US}"))
        .limit(LIST_PAGE);
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = match &next {
            Some(token) => ours.clone().continue_token(token),
            None => ours.clone(),
        };
        let list = match tokio::time::timeout(timeout, api.list_metadata(&page)).await {
            Ok(Ok(list)) => list,
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("timed out".into()),
        };
        names.extend(list.items.into_iter().filter_map(|item| item.metadata.name));
        next = list.metadata.continue_.filter(|token| !token.is_empty());
        if next.is_none() {
            return Ok(names);
        }
    }
}

/// Applies the rendered objects that changed and deletes our VirtualServices that are no
/// longer desired. Returns whether something failed (retried on the next pass).
pub async fn sync(
    client: &Client,
    rendered: Vec<Rendered>,
    gateway_namespace: &str,
    state: &mut RoutingState,
    timeout: Duration,
) -> bool {
    let vs = istio_resource("VirtualService", "virtualservices");
    if !state.listed {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), gateway_namespace, &vs);
        match list_our_names(&api, timeout).await {
            Ok(names) => {
                for name in names {
                    // Unknown content: it will be compared unequal and re-applied once.
                    state.applied.insert(
                        ("VirtualService".into(), gateway_namespace.into(), name),
                        UNKNOWN,
                    );
                }
                state.listed = true;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot list our gateway VirtualServices");
                return true;
            }
        }
    }
    let mut failed = false;
    let mut desired: BTreeSet<Key> = BTreeSet::new();
    for Rendered {
        key: k,
        digest,
        text,
    } in rendered
    {
        desired.insert(k.clone());
        // Unchanged, or changed since `render` but applied meanwhile: nothing to do.
        let Some(text) = text.filter(|_| state.applied.get(&k) != Some(&digest)) else {
            continue;
        };
        let Some(ar) = resource(&k.0) else { continue };
        let Ok(object) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &k.1, &ar);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match tokio::time::timeout(timeout, api.patch(&k.2, &params, &Patch::Apply(&object))).await
        {
            Ok(Ok(_)) => {
                tracing::info!(kind = %k.0, namespace = %k.1, name = %k.2, "gateway route applied");
                state.applied.insert(k, digest);
            }
            Ok(Err(error)) => {
                failed = true;
                tracing::warn!(kind = %k.0, name = %k.2, %error, "gateway route apply failed; will retry");
            }
            Err(_) => failed = true,
        }
    }
    let stale: Vec<Key> = state
        .applied
        .keys()
        .filter(|k| k.0 == "VirtualService" && !desired.contains(*k))
        .filter(|k| k.2 != UNKNOWN_MESH_HOSTS)
        .cloned()
        .collect();
    for k in stale {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &k.1, &vs);
        match tokio::time::timeout(timeout, api.delete(&k.2, &DeleteParams::default())).await {
            Ok(Ok(_)) => {
                tracing::info!(namespace = %k.1, name = %k.2, "gateway route deleted");
                state.applied.remove(&k);
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                state.applied.remove(&k);
            }
            _ => failed = true,
        }
    }
    failed
}
