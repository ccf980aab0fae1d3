//! `make bench`: every lazyxds performance claim measured side by side in one run.
//!
//! The machine is shared and noisy, so every speed figure is a ratio between variants run
//! interleaved in the same run, never a lone absolute time. The pieces:
//!
//! - [`gateway`] / [`sidecar`]: Envoy bootstraps (the P1–P3 gateway in five variants; the
//!   P6 Istio-like sidecar at any mesh size, full or scoped).
//! - [`load`]: an open-loop, fixed-rate HTTP/1.1 load generator posing as many pods.
//! - [`als`]: a minimal Envoy access-log-service sink (the original design's learning path).
//! - [`proxy`] / [`h2count`]: a byte-counting TCP proxy that counts gRPC messages and their
//!   bytes (protobuf + 5-byte frame) in front of either sink, identically.
//! - [`ingest`]: the controller's gRPC edge sink fed in-process (P4).
//! - [`ctlmem`]: the real controller on a 100k-pod mesh in the fake API server (P7).
//! - [`procfs`]: CPU time, RSS and CPU pinning from `/proc`.
//! - [`report`] / [`plot`]: the table, `latest.json` and the SVG plots.
//! - [`measures`]: one function per measure, P1…P8.
//! - [`minimesh`]: `p5_e2e`, `p6_istiod` and `p9`, read from what the mini-mesh run
//!   (`lazyxds-e2e`'s `meshbench`, root) wrote.
//! - [`callgrind`]: P1 in instructions per request, each gateway under callgrind (`--bin callgrind`).
#![deny(unsafe_code)]

pub mod als;
pub mod callgrind;
pub mod ctlmem;
pub mod gateway;
pub mod h2count;
pub mod ingest;
pub mod load;
pub mod measures;
pub mod minimesh;
pub mod plot;
pub mod procfs;
pub mod proxy;
pub mod report;
pub mod sidecar;

use std::sync::OnceLock;
use std::time::Instant;

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Marks the start of the run (progress lines show the time since).
pub fn start_clock() {
    let _ = STARTED.set(Instant::now());
}

/// A progress line on stderr, prefixed with the time since the run started.
pub fn progress(msg: std::fmt::Arguments<'_>) {
    let t = STARTED.get().map(|s| s.elapsed().as_secs()).unwrap_or(0);
    eprintln!("[bench {:02}:{:02}] {msg}", t / 60, t % 60);
}

/// `progress!("...", args)`: a timestamped progress line on stderr.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => { $crate::progress(format_args!($($arg)*)) };
}

/// Median of `values` (mean of the two middle ones for an even count); None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// (min, max) of `values`; None when empty.
pub fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let mut it = values.iter().copied().filter(|x| x.is_finite());
    let first = it.next()?;
    Some(it.fold((first, first), |(lo, hi), x| (lo.min(x), hi.max(x))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
        assert_eq!(min_max(&[2.0, -1.0, 5.0]), Some((-1.0, 5.0)));
        assert_eq!(min_max(&[]), None);
    }
}
