//! The filter's plugin configuration (`lazyxds_filter_core::config`), as Envoy hands it
//! to `on_configure`. Input: the configuration's bytes.
//!
//! Properties: a refusal names a field and says why; an accepted configuration is one
//! the controller accepts on the wire (its `Hello`, its batches and dictionary within
//! `lazyxds_proto::limits`) and whose `cluster_domain` its `--cluster-domain` accepts, written back as JSON it parses to the same configuration,
//! and the filter's parts start from it.

use lazyxds_filter_core::{Config, Reporter, Router};
use lazyxds_index::decode::oversized_hello_field;
use lazyxds_proto::limits::{MAX_BATCH_BYTES, MAX_BATCH_EDGES, MAX_NAME_BYTES, MAX_STREAM_NAMES};
use lazyxds_proto::v1::Hello;

/// The configuration as the JSON document that sets every field.
pub fn to_json(c: &Config) -> serde_json::Value {
    serde_json::json!({
        "controller_cluster": c.controller_cluster,
        "gateway_id": c.gateway_id,
        "flush_interval_ms": c.flush_interval_ms,
        "refresh_interval_s": c.refresh_interval_s,
        "max_edges": c.max_edges,
        "max_batch_edges": c.max_batch_edges,
        "max_batch_bytes": c.max_batch_bytes,
        "max_inflight_batches": c.max_inflight_batches,
        "max_names_per_stream": c.max_names_per_stream,
        "ack_timeout_ms": c.ack_timeout_ms,
        "reconnect_max_backoff_ms": c.reconnect_max_backoff_ms,
        "report": c.report,
        "routing": c.routing,
        "cluster_domain": c.cluster_domain,
        "routing_wait_ms": c.routing_wait_ms,
    })
}

pub fn check(bytes: &[u8]) {
    let config = match Config::parse(bytes) {
        Ok(config) => config,
        Err(error) => {
            assert!(
                !error.field.is_empty() && !error.message.is_empty(),
                "{error:?}"
            );
            let shown = error.to_string();
            assert!(
                shown.contains(&format!("field `{}`", error.field)),
                "{shown}"
            );
            return;
        }
    };
    // What the controller refuses on the wire, the filter's configuration refuses.
    assert!(config.max_batch_edges >= 1 && config.max_batch_edges <= MAX_BATCH_EDGES);
    assert!(config.max_names_per_stream <= MAX_STREAM_NAMES);
    assert!(config.max_batch_bytes <= MAX_BATCH_BYTES);
    assert!(config.gateway_id.len() <= MAX_NAME_BYTES);
    assert!(!config.controller_cluster.is_empty());
    assert!(
        lazyxds_index::host::is_dns_domain(&config.cluster_domain),
        "the controller's --cluster-domain refuses {:?}",
        config.cluster_domain
    );
    let long_node = "n".repeat(MAX_NAME_BYTES + 7);
    for node in [
        None,
        Some(""),
        Some("sidecar~10.0.0.1~gw.ns~ns.svc.cluster.local"),
        Some(long_node.as_str()),
    ] {
        let hello = Hello {
            gateway_id: config.gateway_id(node),
            worker: "0".into(),
            resync: false,
        };
        assert_eq!(
            oversized_hello_field(&hello),
            None,
            "the controller refuses {node:?}'s Hello"
        );
    }
    // Written back, it reads the same.
    let json = to_json(&config).to_string();
    assert_eq!(
        Config::parse(json.as_bytes()).as_ref(),
        Ok(&config),
        "{json}"
    );
    // The filter's parts start from it.
    let router = Router::new(&config);
    assert_eq!(router.enabled(), config.routing);
    let mut reporter = Reporter::new(config.clone(), config.gateway_id(None), "0".into());
    assert!(!reporter.stream_opened().is_empty());
}
