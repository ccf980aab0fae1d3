//! The one loop from the index to the world: debounce, leader gating, one
//! [`reconcile`] pass, a [`Target`] that applies it, backoff when it failed.
//!
//! Two targets: [`FileTarget`](crate::filemode::FileTarget) (YAML files) and
//! [`KubeTarget`](crate::kube::writer::KubeTarget) (server-side apply). What differs
//! between them — reading back what is live, rate limits, dry-run, Events — is theirs.

use std::future::Future;
use std::time::Duration;

use lazyxds_index::report::{always_visible_hosts, AlwaysVisibleHost};
use lazyxds_index::{namespace_table, reconcile, Pass, RenderConfig};
use tokio::sync::watch;

use crate::learn::SharedLearner;

/// Where a [`Pass`] is written.
pub trait Target: Send {
    /// Resolves once the target's view of what is live is complete (Kubernetes: every
    /// watch listed once, so the learned deps in our Sidecars are back in the index).
    fn ready(&mut self) -> impl Future<Output = ()> + Send;

    /// The settings passes are rendered with now.
    fn render_config(&self) -> RenderConfig;

    /// Makes what is live equal the pass; `false` when something failed (the loop
    /// retries with backoff).
    fn apply(&mut self, pass: &Pass) -> impl Future<Output = bool> + Send;

    /// Resolves when the target's own inputs changed (file mode: the topology file).
    /// Cancel-safe: the loop drops it whenever something else wakes it.
    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Backoff of a failed pass.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Keeps `target` equal to the index until `stop` resolves. Writes only while `leader`
/// says this replica leads ([`crate::kube::leader::always`] without election); changes
/// within `debounce` are one pass.
pub async fn run(
    learner: SharedLearner,
    mut target: impl Target,
    mut leader: watch::Receiver<bool>,
    debounce: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    tokio::select! {
        () = &mut stop => return,
        () = target.ready() => {}
    }
    let mut first = true;
    let mut always_visible = Vec::new();
    let mut retry: Option<Duration> = None;
    // A closed leadership channel never changes again (no election: always leading).
    let mut leader_open = true;
    loop {
        // Followers compute nothing: the leader's view is the one that counts.
        while !*leader.borrow_and_update() {
            tokio::select! {
                () = &mut stop => return,
                changed = leader.changed(), if leader_open => leader_open = changed.is_ok(),
            }
        }
        if std::mem::take(&mut first) {
            // Gateways connecting now need the table before the first (debounced) pass.
            learner.publish(namespace_table(&learner.index(), &target.render_config()));
        }
        tokio::time::sleep(debounce).await;
        let mut pass = reconcile(&learner.index(), &target.render_config());
        if tracing::enabled!(tracing::Level::DEBUG) {
            log_always_visible_changes(
                &mut always_visible,
                always_visible_hosts(&learner.index(), &target.render_config()),
            );
        }
        learner.publish(std::mem::take(&mut pass.namespace_table));
        let ok = target.apply(&pass).await;
        // Not kept while waiting: the whole mesh's Sidecars, rendered.
        drop(pass);
        retry = (!ok).then(|| retry.map_or(RETRY_MIN, |r| (r * 2).min(RETRY_MAX)));
        tokio::select! {
            () = &mut stop => return,
            () = learner.wait_changed() => {}
            () = target.changed() => {}
            () = sleep_or_forever(retry) => {}
            changed = leader.changed(), if leader_open => leader_open = changed.is_ok(),
        }
    }
}

/// Which hosts became or stopped being always visible since the last pass, and why: a
/// change rewrites every Sidecar that sees the host, which an operator will ask about.
fn log_always_visible_changes(last: &mut Vec<AlwaysVisibleHost>, now: Vec<AlwaysVisibleHost>) {
    let set = |hosts: &[AlwaysVisibleHost]| -> std::collections::HashSet<(String, String)> {
        hosts
            .iter()
            .map(|h| (h.host.clone(), h.reason.clone()))
            .collect()
    };
    let (before, after) = (set(last), set(&now));
    for (host, reason) in before.difference(&after) {
        tracing::debug!(%host, %reason, "no longer always visible");
    }
    for (host, reason) in after.difference(&before) {
        tracing::debug!(%host, %reason, "always visible");
    }
    *last = now;
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
