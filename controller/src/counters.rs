//! Process-wide counters of the edge pipeline, shown on `/debug/edges`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use prometheus_client::registry::Registry;

use crate::error::BatchError;
use crate::metrics::{register_counters, register_fields, MetricsSource};

/// Monotonic counters (and one gauge); relaxed atomics, read only for display.
#[derive(Debug, Default)]
pub struct Counters {
    pub streams_opened: AtomicU64,
    /// Gauge: streams currently open.
    pub streams_open: AtomicU64,
    /// Hellos with `resync = true` (a gateway worker reconnected).
    pub resync_hellos: AtomicU64,
    pub batches_acked: AtomicU64,
    /// Edges in acked batches.
    pub edges_received: AtomicU64,
    pub batches_rejected: AtomicU64,
    /// By [`BatchError::reason_index`].
    pub batches_rejected_by_reason: [AtomicU64; BatchError::REASONS.len()],
    /// Messages that could not be decoded (bad protobuf, too large, no kind).
    pub messages_undecodable: AtomicU64,
    /// New edges not stored because the store was full.
    pub edges_dropped_store_full: AtomicU64,
    /// Namespace tables pushed to gateway workers (one per stream and change).
    pub namespace_tables_sent: AtomicU64,
}

/// A point-in-time copy of [`Counters`]; this is the `counters` object of
/// `/debug/edges`, field for field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersSnapshot {
    pub streams_opened: u64,
    pub streams_open: u64,
    pub resync_hellos: u64,
    pub batches_acked: u64,
    pub edges_received: u64,
    pub batches_rejected: u64,
    pub messages_undecodable: u64,
    pub edges_dropped_store_full: u64,
    pub namespace_tables_sent: u64,
}

impl Counters {
    pub fn rejected(&self, error: &BatchError) {
        self.batches_rejected.fetch_add(1, Relaxed);
        self.batches_rejected_by_reason[error.reason_index()].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            streams_opened: self.streams_opened.load(Relaxed),
            streams_open: self.streams_open.load(Relaxed),
            resync_hellos: self.resync_hellos.load(Relaxed),
            batches_acked: self.batches_acked.load(Relaxed),
            edges_received: self.edges_received.load(Relaxed),
            batches_rejected: self.batches_rejected.load(Relaxed),
            messages_undecodable: self.messages_undecodable.load(Relaxed),
            edges_dropped_store_full: self.edges_dropped_store_full.load(Relaxed),
            namespace_tables_sent: self.namespace_tables_sent.load(Relaxed),
        }
    }

    /// Rejected batches per reason label, in [`BatchError::REASONS`] order.
    pub fn rejected_by_reason(&self) -> Vec<(&'static str, u64)> {
        BatchError::REASONS
            .iter()
            .zip(&self.batches_rejected_by_reason)
            .map(|(reason, n)| (*reason, n.load(Relaxed)))
            .collect()
    }
}

impl MetricsSource for Counters {
    fn collect(&self, registry: &mut Registry) {
        register_fields(
            registry,
            "grpc",
            &self.snapshot(),
            &["streams_open"],
            "gateway edge streams (see /debug/edges counters)",
        );
        register_counters(
            registry,
            "grpc_batches_rejected_by_reason",
            "edge batches refused, by reason",
            self.rejected_by_reason()
                .into_iter()
                .map(|(reason, n)| (vec![("reason".to_string(), reason.to_string())], n)),
        );
    }
}
