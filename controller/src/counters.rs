//! Process-wide counters of the edge pipeline, shown on `/debug/edges`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use prometheus_client::registry::Registry;

use crate::edges::auth::Refusal;
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
    /// Gauge: gRPC connections open.
    pub connections_open: AtomicU64,
    pub connections_accepted: AtomicU64,
    /// Closed at once: `--max-connections` were open.
    pub connections_refused_at_cap: AtomicU64,
    /// Closed: no stream said Hello within `--grpc-handshake-timeout-secs`.
    pub connections_closed_handshake_timeout: AtomicU64,
    /// Closed: no stream open for `--grpc-idle-timeout-secs`.
    pub connections_closed_idle: AtomicU64,
    /// A connection reached `--max-streams-per-connection` (HTTP/2 refuses more on it).
    pub connections_at_stream_cap: AtomicU64,
    /// `accept` failed (e.g. out of file descriptors); the listener backed off.
    pub accept_errors: AtomicU64,
    /// Streams refused: `--max-streams` were open.
    pub streams_refused_at_cap: AtomicU64,
    /// Streams ended: no Hello within the handshake timeout.
    pub hellos_timed_out: AtomicU64,
    /// Stream tasks that panicked (a bug): the gateway got INTERNAL.
    pub stream_panics: AtomicU64,
    /// Streams (and TLS handshakes) refused by `--edge-auth`.
    pub auth_refused: AtomicU64,
    /// HTTP connections closed at once: `--max-http-connections` were open.
    pub http_connections_refused_at_cap: AtomicU64,
    /// By [`Refusal::reason_index`] (and [`Refusal::TLS_HANDSHAKE`]).
    pub auth_refused_by_reason: [AtomicU64; Refusal::REASONS.len()],
}

/// A point-in-time copy of [`Counters`]; this is the `counters` object of
/// `/debug/edges`, field for field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_refused_at_cap: u64,
    pub connections_closed_handshake_timeout: u64,
    pub connections_closed_idle: u64,
    pub connections_at_stream_cap: u64,
    pub accept_errors: u64,
    pub streams_refused_at_cap: u64,
    pub hellos_timed_out: u64,
    pub stream_panics: u64,
    pub auth_refused: u64,
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
            connections_open: self.connections_open.load(Relaxed),
            connections_accepted: self.connections_accepted.load(Relaxed),
            connections_refused_at_cap: self.connections_refused_at_cap.load(Relaxed),
            connections_closed_handshake_timeout: self
                .connections_closed_handshake_timeout
                .load(Relaxed),
            connections_closed_idle: self.connections_closed_idle.load(Relaxed),
            connections_at_stream_cap: self.connections_at_stream_cap.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            streams_refused_at_cap: self.streams_refused_at_cap.load(Relaxed),
            hellos_timed_out: self.hellos_timed_out.load(Relaxed),
            stream_panics: self.stream_panics.load(Relaxed),
            auth_refused: self.auth_refused.load(Relaxed),
        }
    }

    /// A stream or TLS handshake refused by `--edge-auth`, by [`Refusal::REASONS`] index.
    pub fn auth_refused(&self, reason_index: usize) {
        self.auth_refused.fetch_add(1, Relaxed);
        if let Some(n) = self.auth_refused_by_reason.get(reason_index) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// Refused streams per reason label, in [`Refusal::REASONS`] order.
    pub fn auth_refused_by_reason(&self) -> Vec<(&'static str, u64)> {
        Refusal::REASONS
            .iter()
            .zip(&self.auth_refused_by_reason)
            .map(|(reason, n)| (*reason, n.load(Relaxed)))
            .collect()
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
            &["streams_open", "connections_open"],
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
        registry.register(
            "http_connections_refused_at_cap",
            "HTTP connections closed at once: --max-http-connections were open",
            prometheus_client::metrics::counter::ConstCounter::new(
                self.http_connections_refused_at_cap.load(Relaxed),
            ),
        );
        register_counters(
            registry,
            "grpc_streams_refused_by_auth",
            "edge streams (and TLS handshakes) refused by --edge-auth, by reason",
            self.auth_refused_by_reason()
                .into_iter()
                .map(|(reason, n)| (vec![("reason".to_string(), reason.to_string())], n)),
        );
    }
}
