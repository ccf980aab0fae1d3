//! What loads the filter into the gateway: an EnvoyFilter (module from the ConfigMap) or a
//! WasmPlugin (module from a registry), both with the same plugin configuration.

use serde_json::{json, Map, Value};

use super::config::{InstallConfig, Module, PLUGIN_NAME};
use super::istio::{
    ConfigPatch, EnvoyFilter, EnvoyFilterSpec, IstioObject, MatchLabels, PatchMatch, PortSelector,
    TrafficSelector, WasmPlugin, WasmPluginSpec, WorkloadSelector, ENVOY_FILTER_API,
    WASM_PLUGIN_API,
};
use super::{envoy_filter_annotations, istio, istio_metadata, to_value, InstallError};

/// Name of the EnvoyFilter / WasmPlugin.
pub const FILTER_OBJECT: &str = "lazyxds-filter";

/// Applied before the routing's catch-all EnvoyFilter
/// (`lazyxds_index::gateway::CATCH_ALL_PRIORITY`, lower first), so our filter ends up ahead
/// of the dynamic forward proxy filter: both insert themselves before the router, and the
/// filter must rewrite `:authority` before the forward proxy resolves it. Not 0: `istioctl
/// analyze` flags a relative patch (`INSERT_BEFORE`) at priority 0 (IST0151).
pub const ENVOY_FILTER_PRIORITY: i32 = -10;

/// The plugin configuration (a JSON object), as the filter gets it: the Istio cluster of
/// the controller's gRPC Service, the flush and refresh intervals, the cluster domain when
/// it is not the default, then the extra keys.
pub fn plugin_config(config: &InstallConfig) -> Map<String, Value> {
    let mut cfg = Map::new();
    cfg.insert(
        "controller_cluster".into(),
        json!(config.controller_cluster()),
    );
    cfg.insert(
        "flush_interval_ms".into(),
        json!(config.filter.flush_interval_ms),
    );
    cfg.insert(
        "refresh_interval_s".into(),
        json!(config.filter.refresh_interval_s),
    );
    if config.cluster_domain != "cluster.local" {
        cfg.insert("cluster_domain".into(), json!(config.cluster_domain));
    }
    for (k, v) in &config.filter.extra {
        cfg.insert(k.clone(), v.clone());
    }
    cfg
}

/// [`plugin_config`], refused (naming the field) when the filter itself would refuse it.
pub(super) fn checked_plugin_config(config: &InstallConfig) -> Result<String, InstallError> {
    let text = Value::Object(plugin_config(config)).to_string();
    lazyxds_filter_core::Config::parse(text.as_bytes())
        .map_err(|e| InstallError::PluginConfig(e.to_string()))?;
    Ok(text)
}

/// The EnvoyFilter or the WasmPlugin.
pub(super) fn object(config: &InstallConfig) -> Result<Value, InstallError> {
    match &config.module {
        Module::ConfigMap(_) => to_value("EnvoyFilter", &envoy_filter(config)?),
        Module::WasmPlugin { url, sha256 } => {
            to_value("WasmPlugin", &wasm_plugin(config, url, sha256.as_deref()))
        }
    }
}

fn envoy_filter(config: &InstallConfig) -> Result<EnvoyFilter, InstallError> {
    let plugin = checked_plugin_config(config)?;
    let wasm = json!({
        "name": PLUGIN_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": PLUGIN_NAME,
                "root_id": PLUGIN_NAME,
                "failure_policy": config.failure_policy().envoy(),
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin,
                },
                "vm_config": {
                    "vm_id": PLUGIN_NAME,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": config.module_path()}},
                },
            },
        },
    });
    Ok(IstioObject {
        api_version: ENVOY_FILTER_API.into(),
        kind: "EnvoyFilter".into(),
        metadata: istio::Metadata {
            annotations: envoy_filter_annotations(),
            ..istio_metadata(config, FILTER_OBJECT, "gateway")
        },
        spec: EnvoyFilterSpec {
            workload_selector: Some(WorkloadSelector {
                labels: config.gateway_selector().into(),
            }),
            priority: Some(ENVOY_FILTER_PRIORITY),
            config_patches: vec![ConfigPatch::new(
                "HTTP_FILTER",
                PatchMatch::gateway_router(u32::from(config.gateway.egress_proxy_port)),
                "INSERT_BEFORE",
                wasm,
            )],
        },
    })
}

fn wasm_plugin(config: &InstallConfig, url: &str, sha256: Option<&str>) -> WasmPlugin {
    IstioObject {
        api_version: WASM_PLUGIN_API.into(),
        kind: "WasmPlugin".into(),
        metadata: istio_metadata(config, FILTER_OBJECT, "gateway"),
        spec: WasmPluginSpec {
            selector: MatchLabels {
                match_labels: config.gateway_selector(),
            },
            url: url.to_string(),
            sha256: sha256.map(str::to_string),
            // A tag may move; a digest (in the url or `sha256`) pins the module.
            image_pull_policy: Some("IfNotPresent".into()),
            plugin_name: PLUGIN_NAME.into(),
            plugin_config: plugin_config(config),
            // Unspecified phase: at the end of the chain, right before the router (and
            // before the catch-all's forward proxy filter, inserted by an EnvoyFilter).
            phase: None,
            priority: None,
            fail_strategy: config.failure_policy().istio().into(),
            type_: "HTTP".into(),
            match_: vec![TrafficSelector {
                mode: "CLIENT".into(),
                ports: vec![PortSelector {
                    number: u32::from(config.gateway.egress_proxy_port),
                }],
            }],
        },
    }
}
