//! Readiness (`GET /readyz`): whether this replica can do its job now — its view of the
//! mesh is complete and current (Kubernetes: every watch listed once and none is
//! failing), and what it writes gets written (the API server takes its Sidecars; file
//! mode: the output directory takes files). `/healthz` only says the process serves.
//!
//! A readiness probe's failure threshold smooths single failures (the install's: 3 in a
//! row, 5 s apart); this view reports the current state.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Whether this replica can do its job; the reason when not.
pub trait ReadyView: Send + Sync + 'static {
    fn ready(&self) -> Result<(), String>;
}

/// Watches retry at most this far apart while the API server is down (kube-runtime's
/// default backoff tops out at 30 s): a failing streak with no error for this long is
/// over.
pub const WATCH_ERROR_WINDOW: Duration = Duration::from_secs(60);
/// Watch errors make this replica unready once they have gone on this long with no
/// event in between: a dropped watch, an API server restart or a 410 recover in less.
pub const WATCH_FAILING_FOR: Duration = Duration::from_secs(30);

/// The last outcome of the write path (a pass's writes, or a probe of it).
#[derive(Debug, Default)]
pub struct WritePath {
    last: Mutex<Option<Result<(), String>>>,
}

impl WritePath {
    pub fn record(&self, outcome: Result<(), String>) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }

    /// `Err` when the last write or probe failed; `Ok` before the first.
    pub fn check(&self) -> Result<(), String> {
        match &*self.last.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(Err(reason)) => Err(reason.clone()),
            _ => Ok(()),
        }
    }
}

impl ReadyView for WritePath {
    fn ready(&self) -> Result<(), String> {
        self.check()
    }
}

/// Watch errors and events, for "the API server is reachable".
#[derive(Debug, Default)]
pub struct WatchHealth {
    state: Mutex<WatchState>,
}

#[derive(Debug, Default, Clone)]
struct WatchState {
    /// The first error since the last event (or since the last streak ended).
    failing_since: Option<Instant>,
    last_error: Option<(Instant, String)>,
}

impl WatchState {
    fn error(&mut self, now: Instant, error: String) {
        if !self.failing(now) {
            self.failing_since = Some(now);
        }
        self.last_error = Some((now, error));
    }

    /// In a failing streak: an error, no event since, and the last one recent.
    fn failing(&self, now: Instant) -> bool {
        self.failing_since.is_some()
            && self
                .last_error
                .as_ref()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) < WATCH_ERROR_WINDOW)
    }

    fn check(&self, now: Instant) -> Result<(), String> {
        match (&self.failing_since, &self.last_error) {
            (Some(since), Some((last, error)))
                if self.failing(now)
                    && last.saturating_duration_since(*since) >= WATCH_FAILING_FOR =>
            {
                Err(format!(
                    "the API server is failing (watch errors for {:?}): {error}",
                    last.saturating_duration_since(*since)
                ))
            }
            _ => Ok(()),
        }
    }
}

impl WatchHealth {
    pub fn error(&self, kind: &str, error: &dyn std::fmt::Display) {
        self.lock()
            .error(Instant::now(), format!("watch of {kind}: {error}"));
    }

    /// A watch event arrived: the API server answers.
    pub fn event(&self) {
        self.lock().failing_since = None;
    }

    pub fn check(&self) -> Result<(), String> {
        self.lock().check(Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_write_decides() {
        let writes = WritePath::default();
        assert_eq!(writes.check(), Ok(()));
        writes.record(Err("disk full".into()));
        assert_eq!(writes.check(), Err("disk full".into()));
        writes.record(Ok(()));
        assert_eq!(writes.check(), Ok(()));
    }

    #[test]
    fn watch_errors_count_once_they_persist() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut watches = WatchState::default();
        watches.error(at(0), "connection refused".into());
        // A blip is not an outage.
        assert_eq!(watches.check(at(1)), Ok(()));
        assert_eq!(watches.check(at(45)), Ok(()));
        // Retries keep failing for 30 s: not ready.
        watches.error(at(20), "connection refused".into());
        watches.error(at(30), "connection refused".into());
        assert!(watches
            .check(at(31))
            .is_err_and(|e| e.contains("connection refused")));
        // No error for a window: the streak is over, a new error starts another.
        assert_eq!(watches.check(at(91)), Ok(()));
        watches.error(at(100), "timeout".into());
        assert_eq!(watches.check(at(101)), Ok(()));
        // An event ends a streak at once.
        watches.error(at(130), "timeout".into());
        assert!(watches.check(at(131)).is_err());
        watches.failing_since = None;
        assert_eq!(watches.check(at(131)), Ok(()));
    }
}
