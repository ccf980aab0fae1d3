//! `GET /metrics`: Prometheus text, built per scrape from the same counters the debug
//! endpoints show (prometheus-client, a fresh registry each time: nothing to keep in sync).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Something that adds its metrics to a scrape.
pub trait MetricsSource: Send + Sync + 'static {
    fn collect(&self, registry: &mut Registry);
}

/// Registers every numeric field of `counters` as `<prefix>_<field>` (a counter, or a
/// gauge for the names in `gauges`). Serde keeps this in step with the structs.
pub fn register_fields(
    registry: &mut Registry,
    prefix: &str,
    counters: &impl Serialize,
    gauges: &[&str],
    help: &str,
) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(counters) else {
        return;
    };
    for (name, value) in fields {
        let Some(value) = value.as_u64() else {
            continue;
        };
        let metric = format!("{prefix}_{name}");
        if gauges.contains(&name.as_str()) {
            registry.register(metric, help, ConstGauge::new(value as i64));
        } else {
            registry.register(metric, help, ConstCounter::new(value));
        }
    }
}

/// Registers a gauge family `name{labels...}`.
pub fn register_gauges(
    registry: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(String, String)>, i64)>,
) {
    let family = Family::<Vec<(String, String)>, Gauge>::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

/// Registers a counter family `name{labels...}`.
pub fn register_counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(String, String)>, u64)>,
) {
    let family =
        Family::<Vec<(String, String)>, prometheus_client::metrics::counter::Counter>::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

/// The text exposition of every source.
pub fn render(sources: &[Arc<dyn MetricsSource>]) -> String {
    let mut registry = Registry::with_prefix("lazyxds");
    for source in sources {
        source.collect(&mut registry);
    }
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn counters_and_gauges_are_exposed_with_the_prefix() {
        let counters = crate::counters::Counters::default();
        counters.edges_received.store(42, Relaxed);
        counters.streams_open.store(3, Relaxed);
        let text = render(&[Arc::new(counters)]);
        assert!(
            text.contains("# TYPE lazyxds_grpc_edges_received counter"),
            "{text}"
        );
        assert!(
            text.contains("lazyxds_grpc_edges_received_total 42"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lazyxds_grpc_streams_open gauge"),
            "{text}"
        );
        assert!(text.contains("lazyxds_grpc_streams_open 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
