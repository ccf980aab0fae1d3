//! The local gateway: `envoyfilter/local/gateway.yaml` filled in, plus the backends and the
//! controller it talks to (`Stack`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::client::{self, Outcome, Planned};
use crate::controller::Controller;
use crate::envoy::Envoy;
use crate::ports::free_port;

/// The bootstrap template (compiled in, so the binaries run from anywhere).
pub const TEMPLATE: &str = include_str!("../../envoyfilter/local/gateway.yaml");

/// Envoy cluster of the controller in the template.
pub const CONTROLLER_CLUSTER: &str = "lazyxds_controller";

/// Virtual hosts of the template.
pub mod hosts {
    /// Weighted 50/50 between subsets v1 and v2.
    pub const REVIEWS: &str = "reviews.default.svc.cluster.local";
    pub const RATINGS: &str = "ratings.default.svc.cluster.local";
    pub const DETAILS: &str = "details.default.svc.cluster.local";
    pub const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";
    /// Routed to `PassthroughCluster`: answered, but not an edge.
    pub const EXTERNAL: &str = "example.com";
    /// Matches only the catch-all 404 (no cluster, no edge).
    pub const UNKNOWN: &str = "unknown.default.svc.cluster.local";
}

/// Clusters of the template with their backend-port placeholder. Each backend is named after
/// its cluster.
pub const UPSTREAMS: [(&str, &str); 6] = [
    (
        "REVIEWS_V1_PORT",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
    ),
    (
        "REVIEWS_V2_PORT",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    ),
    (
        "RATINGS_PORT",
        "outbound|9080||ratings.default.svc.cluster.local",
    ),
    (
        "DETAILS_PORT",
        "outbound|9080||details.default.svc.cluster.local",
    ),
    (
        "PRODUCTPAGE_PORT",
        "outbound|9080||productpage.default.svc.cluster.local",
    ),
    ("PASSTHROUGH_PORT", "PassthroughCluster"),
];

const FILTER_BEGIN: &str = "# BEGIN lazyxds-filter";
const FILTER_END: &str = "# END lazyxds-filter";

/// The plugin configuration for tests: the template's controller cluster, fast flushes, and
/// `overrides` (a JSON object) on top. A known edge's further requests are reported once per
/// `refresh_interval_s`, so 1 s makes the counts catch up quickly.
pub fn plugin_config(overrides: Value) -> String {
    let mut cfg = json!({
        "controller_cluster": CONTROLLER_CLUSTER,
        "flush_interval_ms": 20,
        "refresh_interval_s": 1,
        "reconnect_max_backoff_ms": 1000,
        "gateway_id": "gw-test",
    });
    if let (Some(base), Value::Object(over)) = (cfg.as_object_mut(), overrides) {
        base.extend(over);
    }
    cfg.to_string()
}

/// Values for every placeholder of the template.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen_port: u16,
    pub admin_port: u16,
    pub controller_port: u16,
    /// None: render without the filter (baseline, or validation before the .wasm exists).
    pub wasm_path: Option<PathBuf>,
    /// Raw text handed to the plugin (normally JSON; tests also pass bad values).
    pub plugin_config: String,
    /// Cluster name → backend port, for every cluster of `UPSTREAMS`.
    pub backend_ports: BTreeMap<String, u16>,
}

impl GatewayConfig {
    pub fn render(&self) -> Result<String> {
        if self.plugin_config.contains('\n') {
            bail!("the plugin configuration must be one line (compact JSON)");
        }
        let mut vars: BTreeMap<&str, String> = BTreeMap::from([
            ("LISTEN_PORT", self.listen_port.to_string()),
            ("ADMIN_PORT", self.admin_port.to_string()),
            ("CONTROLLER_PORT", self.controller_port.to_string()),
            // Both sit inside single-quoted YAML scalars, where ' is written ''.
            ("PLUGIN_CONFIG", self.plugin_config.replace('\'', "''")),
            (
                "WASM_PATH",
                self.wasm_path
                    .as_ref()
                    .map(|p| p.display().to_string().replace('\'', "''"))
                    .unwrap_or_default(),
            ),
        ]);
        for (placeholder, cluster) in UPSTREAMS {
            let Some(port) = self.backend_ports.get(cluster) else {
                bail!("no backend port for cluster {cluster}");
            };
            vars.insert(placeholder, port.to_string());
        }
        render(TEMPLATE, &vars, self.wasm_path.is_some())
    }
}

/// Replaces every `{{NAME}}` of `template`; with `with_filter` false, also drops the lines
/// between the lazyxds-filter markers. Fails on a placeholder without a value.
pub fn render(template: &str, vars: &BTreeMap<&str, String>, with_filter: bool) -> Result<String> {
    let mut text = String::with_capacity(template.len());
    let mut skipping = false;
    for line in template.lines() {
        let t = line.trim();
        if t == FILTER_BEGIN {
            skipping = !with_filter;
            continue;
        }
        if t == FILTER_END {
            skipping = false;
            continue;
        }
        if !skipping {
            text.push_str(line);
            text.push('\n');
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("unterminated placeholder in template");
        };
        let name = &after[..end];
        // Comment lines document the placeholders; leave them as they are.
        let line_start = out.rfind('\n').map_or(0, |i| i + 1);
        if out[line_start..].trim_start().starts_with('#') {
            out.push_str(&rest[start..start + 2 + end + 2]);
        } else {
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => bail!("no value for template placeholder {{{{{name}}}}}"),
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Backends for every cluster of the template, each named after its cluster.
pub async fn start_backends() -> Result<Vec<Backend>> {
    let mut out = Vec::new();
    for (_, cluster) in UPSTREAMS {
        out.push(Backend::start(cluster).await?);
    }
    Ok(out)
}

/// Everything one test needs: backends, the controller, and the gateway Envoy with the filter.
/// Dropping it kills Envoy first, then the controller.
#[derive(Debug)]
pub struct Stack {
    pub envoy: Envoy,
    pub controller: Controller,
    pub backends: Vec<Backend>,
    pub config: GatewayConfig,
}

/// Envoy worker threads in tests: several tests (and Envoys) run at once on a small machine.
pub const TEST_CONCURRENCY: u32 = 2;

impl Stack {
    /// Starts the stack with `plugin_config(overrides)`.
    pub async fn start(overrides: Value) -> Result<Stack> {
        let wasm = crate::paths::wasm_path()?;
        crate::paths::envoy_bin()?;
        let backends = start_backends().await?;
        let controller = Controller::start().await?;
        let config = GatewayConfig {
            listen_port: free_port()?,
            admin_port: free_port()?,
            controller_port: controller.grpc_port(),
            wasm_path: Some(wasm),
            plugin_config: plugin_config(overrides),
            backend_ports: backends
                .iter()
                .map(|b| (b.name().to_string(), b.port()))
                .collect(),
        };
        let envoy = Envoy::start(&config.render()?, TEST_CONCURRENCY).await?;
        Ok(Stack {
            envoy,
            controller,
            backends,
            config,
        })
    }

    /// The gateway listener port.
    pub fn port(&self) -> u16 {
        self.config.listen_port
    }

    /// `client::run_load` against this gateway.
    pub async fn load(
        &self,
        plan: &[Planned],
        concurrency: usize,
        budget: Duration,
    ) -> Vec<Outcome> {
        client::run_load(self.port(), plan, concurrency, budget).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_config(wasm: Option<&str>, plugin: &str) -> GatewayConfig {
        GatewayConfig {
            listen_port: 1,
            admin_port: 2,
            controller_port: 3,
            wasm_path: wasm.map(PathBuf::from),
            plugin_config: plugin.into(),
            backend_ports: UPSTREAMS
                .iter()
                .enumerate()
                .map(|(i, (_, c))| (c.to_string(), 100 + i as u16))
                .collect(),
        }
    }

    #[test]
    fn renders_every_placeholder_and_quotes_the_plugin_config() {
        let text = mk_config(Some("/x/it's.wasm"), r#"{"gateway_id":"o'neil"}"#)
            .render()
            .unwrap();
        let body: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(!body.contains("{{"), "{text}");
        assert!(
            text.contains(r#"value: '{"gateway_id":"o''neil"}'"#),
            "{text}"
        );
        assert!(text.contains("filename: '/x/it''s.wasm'"), "{text}");
        assert!(text.contains("port_value: 105"), "{text}");
    }

    #[test]
    fn renders_without_the_filter() {
        let text = mk_config(None, "{}").render().unwrap();
        assert!(!text.contains("envoy.filters.http.wasm"));
        assert!(text.contains("envoy.filters.http.router"));
    }

    #[test]
    fn plugin_config_overrides_defaults() {
        let v: Value =
            serde_json::from_str(&plugin_config(json!({"flush_interval_ms": 5}))).unwrap();
        assert_eq!(v["flush_interval_ms"], 5);
        assert_eq!(v["controller_cluster"], CONTROLLER_CLUSTER);
    }
}
