//! The gateway routing's static objects, rendered by `lazyxds_index::gateway` (the same
//! code the controller uses) for an empty mesh: the Gateway and DestinationRule
//! (ISTIO_MUTUAL), the EnvoyFilter adding the catch-all route for unknown hosts, and the
//! VirtualService answering `*.svc.<domain>` hosts no Service has.
//!
//! The rest of the routing depends on the mesh and is the controller's to keep: the
//! placeholder Service (one `http-<port>` per HTTP port of the mesh) and one
//! VirtualService per host.

use lazyxds_index::{gateway_objects, Index, IndexConfig};
use serde_json::Value;

use super::config::InstallConfig;
use super::{common_labels, InstallError};

pub(super) fn objects(config: &InstallConfig) -> Result<Vec<Value>, InstallError> {
    let empty = Index::new(IndexConfig {
        cluster_domain: config.cluster_domain.clone(),
        ..IndexConfig::default()
    });
    let gw = gateway_objects(&empty, &config.render_config());
    let unknown = gw
        .virtual_services
        .iter()
        .find(|vs| vs["metadata"]["name"] == lazyxds_index::gateway::UNKNOWN_MESH_HOSTS)
        .cloned()
        .ok_or_else(|| InstallError::Render {
            what: "the gateway routing".into(),
            message: format!(
                "no {} VirtualService for an empty mesh",
                lazyxds_index::gateway::UNKNOWN_MESH_HOSTS
            ),
        })?;
    let mut out = vec![gw.gateway, gw.destination_rule, gw.envoy_filter, unknown];
    for object in &mut out {
        if let Some(labels) = object
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            for (k, v) in common_labels("routing") {
                labels.entry(k).or_insert(Value::String(v));
            }
        }
    }
    Ok(out)
}
