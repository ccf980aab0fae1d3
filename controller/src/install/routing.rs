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

use super::config::{InstallConfig, CONTROLLER_NAME};

/// With `PILOT_FILTER_GATEWAY_CLUSTER_CONFIG=true` (off by default) istiod gives a gateway
/// only the clusters its VirtualServices route to, plus the Services an EnvoyFilter
/// selecting it names here (`pilot/pkg/model/envoyfilter.go`, `convertToEnvoyFilterWrapper`;
/// `push_context.go`, `extraServicesForProxy`): without it the filter's controller cluster
/// would be missing and no edge would reach the controller. It goes on the catch-all
/// EnvoyFilter, the one the gateway has however the module is delivered (a WasmPlugin
/// has no such annotation).
pub const REFERENCED_SERVICES: &str = "envoyfilter.istio.io/referenced-services";
use super::{common_labels, envoy_filter_annotations, InstallError};

pub(super) fn objects(config: &InstallConfig) -> Result<Vec<Value>, InstallError> {
    let empty = Index::new(IndexConfig {
        cluster_domain: config.cluster_domain.clone(),
        ..IndexConfig::default()
    });
    let gw = gateway_objects(&empty, &config.render_config());
    let unknown = gw
        .virtual_services
        .iter()
        .find(|vs| vs.name() == lazyxds_index::gateway::UNKNOWN_MESH_HOSTS)
        .map(lazyxds_index::JsonText::value)
        .ok_or_else(|| InstallError::Render {
            what: "the gateway routing".into(),
            message: format!(
                "no {} VirtualService for an empty mesh",
                lazyxds_index::gateway::UNKNOWN_MESH_HOSTS
            ),
        })?;
    let mut envoy_filter = gw.envoy_filter;
    if let Some(meta) = envoy_filter
        .pointer_mut("/metadata")
        .and_then(Value::as_object_mut)
    {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(a) = annotations.as_object_mut() {
            for (k, v) in envoy_filter_annotations() {
                a.insert(k, Value::String(v));
            }
            a.insert(
                REFERENCED_SERVICES.into(),
                Value::String(format!(
                    "{}/{}",
                    config.namespace,
                    config.service_fqdn(CONTROLLER_NAME)
                )),
            );
        }
    }
    let mut out = vec![gw.gateway, gw.destination_rule, envoy_filter, unknown];
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
