//! Kubernetes mode (`lazyxds run --kube`): watchers feed the index, a writer applies the
//! desired Sidecars with server-side apply.

pub mod project;
pub mod watch;
pub mod writer;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::json;

use crate::http::PlanView;
use crate::learn::SharedLearner;

/// What `/debug/plan` shows in Kubernetes mode.
#[derive(Debug, Clone)]
pub struct KubeStatus {
    pub writer: Arc<writer::WriterStats>,
    pub watched: Arc<watch::Watched>,
}

impl PlanView for KubeStatus {
    fn plan(&self) -> serde_json::Value {
        let w = &self.writer;
        let v = &self.watched;
        json!({
            "plan": w.plan(),
            "writer": {
                "passes": w.passes.load(Relaxed),
                "applies": w.applies.load(Relaxed),
                "deletes": w.deletes.load(Relaxed),
                "blocked": w.blocked.load(Relaxed),
                "errors": w.errors(),
                "last_pass_ms": w.last_pass_ms.load(Relaxed),
            },
            "watch": {
                "events": v.events.load(Relaxed),
                "errors": v.watch_errors.load(Relaxed),
                "invalid_annotations": v.invalid_annotations.load(Relaxed),
            },
        })
    }
}

/// Starts the watchers; returns the status view and the writer (to run until `stop`).
pub fn start(
    client: ::kube::Client,
    learner: SharedLearner,
    config: writer::WriterConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    KubeStatus,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let watched = Arc::new(watch::Watched::default());
    let stats = Arc::new(writer::WriterStats::default());
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(Vec::new());
    let tasks = watch::spawn_all(client.clone(), learner.clone(), watched.clone(), synced_tx);
    let status = KubeStatus {
        writer: stats.clone(),
        watched: watched.clone(),
    };
    let writer = async move {
        writer::run(client, learner, watched, synced_rx, config, stats, stop).await;
        for task in tasks {
            task.abort();
        }
    };
    (status, writer)
}
