//! Kubernetes mode (`lazyxds run --kube`): watchers feed the index, a writer applies the
//! desired Sidecars with server-side apply.

pub mod leader;
pub mod project;
pub mod routing;
pub mod slim;
pub mod watch;
pub mod writer;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use kube::api::ApiResource;
use serde_json::json;

use crate::http::PlanView;
use crate::learn::SharedLearner;
use crate::ready::ReadyView;

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "lazyxds";

/// The Istio kinds, served as `DynamicObject`s (no generated types needed).
pub fn istio_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// EnvoyFilters: served as `networking.istio.io/v1alpha3` only.
pub fn envoy_filter_resource() -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1alpha3".into(),
        api_version: lazyxds_index::istio::ENVOY_FILTER_API.into(),
        kind: lazyxds_index::istio::ENVOY_FILTER.into(),
        plural: "envoyfilters".into(),
    }
}

/// Where the API serves Istio's AuthorizationPolicies (`security.istio.io/v1`, Istio ≥ 1.22).
pub fn authorization_policy_resource() -> ApiResource {
    ApiResource {
        group: "security.istio.io".into(),
        version: "v1".into(),
        api_version: "security.istio.io/v1".into(),
        kind: "AuthorizationPolicy".into(),
        plural: "authorizationpolicies".into(),
    }
}

/// What `/debug/plan` shows in Kubernetes mode.
#[derive(Debug, Clone)]
pub struct KubeStatus {
    pub writer: Arc<writer::WriterStats>,
    pub watched: Arc<watch::Watched>,
    pub learner: SharedLearner,
    /// What the writer renders with (the gateway's namespace decides what it can see).
    pub render: lazyxds_index::RenderConfig,
}

/// The writer's and the watches' counters, as `/debug/plan` and `/metrics` show them.
#[derive(serde::Serialize)]
struct Counts {
    passes: u64,
    applies: u64,
    deletes: u64,
    blocked: u64,
    capped: u64,
    removals_held: u64,
    last_pass_ms: u64,
}

#[derive(serde::Serialize)]
struct WatchCounts {
    events: u64,
    errors: u64,
    invalid_annotations: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_switch: Option<u64>,
}

impl KubeStatus {
    fn counts(&self) -> (Counts, WatchCounts) {
        let (w, v) = (&self.writer, &self.watched);
        let writer = Counts {
            passes: w.passes.load(Relaxed),
            applies: w.applies.load(Relaxed),
            deletes: w.deletes.load(Relaxed),
            blocked: w.blocked.load(Relaxed),
            capped: w.capped.load(Relaxed),
            removals_held: w.removals_held.load(Relaxed),
            last_pass_ms: w.last_pass_ms.load(Relaxed),
        };
        let watch = WatchCounts {
            events: v.events.load(Relaxed),
            errors: v.watch_errors.load(Relaxed),
            invalid_annotations: v.invalid_annotations.load(Relaxed),
            kill_switch: None,
        };
        (writer, watch)
    }
}

impl ReadyView for KubeStatus {
    /// Ready once every watch listed, while they reach the API server and the last
    /// pass's writes (if any) got through. A standby is ready on the same terms: it
    /// takes over at once.
    fn ready(&self) -> Result<(), String> {
        if !self.writer.synced.load(Relaxed) {
            return Err("the watches have not listed everything yet".into());
        }
        self.watched.health.check()?;
        self.writer.writes.check()
    }
}

impl PlanView for KubeStatus {
    fn plan(&self) -> serde_json::Value {
        let (writer, watch) = self.counts();
        let mut writer = json!(writer);
        writer["errors"] = json!(self.writer.errors());
        let index = self.learner.index();
        json!({
            "plan": &*self.writer.plan(),
            "writer": writer,
            "watch": watch,
            "kill_switch": index.kill_switch(),
            // Hosts every scoped Sidecar keeps, learned or not, and why.
            "always_visible": lazyxds_index::report::always_visible_hosts(&index, &self.render),
        })
    }
}

impl crate::metrics::MetricsSource for KubeStatus {
    fn collect(&self, registry: &mut prometheus_client::registry::Registry) {
        use crate::metrics::{register_counters, register_fields};
        let (writer, mut watch) = self.counts();
        watch.kill_switch = Some(u64::from(self.learner.index().kill_switch()));
        let help = "the Sidecar writer";
        register_fields(
            registry,
            "writer",
            &writer,
            &["last_pass_ms", "capped", "removals_held"],
            help,
        );
        register_counters(
            registry,
            "writer_errors",
            "failed Sidecar writes, by reason",
            self.writer
                .errors()
                .into_iter()
                .map(|(reason, n)| (vec![("reason".to_string(), reason)], n)),
        );
        let help = "Kubernetes watches; kill_switch 1 = on";
        register_fields(registry, "watch", &watch, &["kill_switch"], help);
    }
}
