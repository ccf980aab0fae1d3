//! The one piece of `uninstall` that reads the cluster: every object carrying our
//! `app.kubernetes.io/managed-by: lazyxds` label, of the kinds the controller writes.

use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use lazyxds_index::objects::{LABEL_MANAGED_BY, MANAGED_BY_US};

use super::uninstall::ObjectRef;

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
