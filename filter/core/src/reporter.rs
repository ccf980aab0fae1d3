//! The worker's reporting state machine: dedup table → batches → one gRPC stream, with
//! acks, re-sends, resync and backoff. Pure: the wasm shell feeds it time, request
//! properties and stream events, and sends the bytes it returns.

use crate::config::Config;
use crate::edge::{CheckedProperties, EdgeRef, RequestProperties, Skip};
use crate::table::{BatchRecord, EdgeTable, Observed};
use core::net::IpAddr;
use hashbrown::HashMap;
use lazyxds_proto::v1::{
    controller_message, gateway_message, ControllerMessage, Edge, EdgeBatch, GatewayMessage, Hello,
    Name,
};
use prost::Message;
use std::collections::VecDeque;
use std::rc::Rc;

/// Counters of one worker; the shell exports them as Envoy stats `lazyxds.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests_seen: u64,
    pub edges_new: u64,
    pub skipped_no_route: u64,
    pub skipped_not_outbound: u64,
    pub skipped_bad_source: u64,
    pub edges_evicted_unreported: u64,
    pub edges_sent: u64,
    pub batches_sent: u64,
    pub batches_acked: u64,
    pub streams_opened: u64,
    pub stream_open_failures: u64,
    pub streams_closed: u64,
    pub stream_ack_timeouts: u64,
    pub streams_recycled: u64,
    pub resyncs: u64,
    pub send_failures: u64,
    pub controller_messages_bad: u64,
    /// Requests not counted because the worker state was busy (re-entrant callback).
    pub requests_unrecorded: u64,
}

impl Counters {
    /// Every counter with its stat name, in a fixed order.
    pub fn fields(&self) -> [(&'static str, u64); 18] {
        [
            ("requests_seen", self.requests_seen),
            ("edges_new", self.edges_new),
            ("skipped_no_route", self.skipped_no_route),
            ("skipped_not_outbound", self.skipped_not_outbound),
            ("skipped_bad_source", self.skipped_bad_source),
            ("edges_evicted_unreported", self.edges_evicted_unreported),
            ("edges_sent", self.edges_sent),
            ("batches_sent", self.batches_sent),
            ("batches_acked", self.batches_acked),
            ("streams_opened", self.streams_opened),
            ("stream_open_failures", self.stream_open_failures),
            ("streams_closed", self.streams_closed),
            ("stream_ack_timeouts", self.stream_ack_timeouts),
            ("streams_recycled", self.streams_recycled),
            ("resyncs", self.resyncs),
            ("send_failures", self.send_failures),
            ("controller_messages_bad", self.controller_messages_bad),
            ("requests_unrecorded", self.requests_unrecorded),
        ]
    }
}

/// Why the reporter wants its stream closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The oldest batch in flight was not acked within `ack_timeout_ms`.
    AckTimeout,
    /// The stream's dictionary reached `max_names_per_stream`.
    DictionaryFull,
}

#[derive(Debug)]
struct Inflight {
    seq: u64,
    sent_at_ms: u64,
    records: Vec<BatchRecord>,
}

#[derive(Debug, Default)]
struct OpenStream {
    next_seq: u64,
    /// Names already defined on this stream.
    names: HashMap<Rc<str>, u32>,
    inflight: VecDeque<Inflight>,
    acked_any: bool,
    dictionary_full: bool,
}

/// Base of the reconnect backoff; doubled per stream that closes without any ack.
const BACKOFF_BASE_MS: u64 = 50;
/// Bytes of a batch besides its names and edges (seq, time, framing), rounded up.
const BATCH_OVERHEAD_BYTES: usize = 32;

/// One worker's reporting state.
#[derive(Debug)]
pub struct Reporter {
    config: Config,
    gateway_id: String,
    worker: String,
    table: EdgeTable,
    stream: Option<OpenStream>,
    streams_so_far: u64,
    /// A record taken for a batch that was full; it goes first into the next one.
    carry: Option<BatchRecord>,
    /// Streams in a row that closed without an ack.
    failures: u32,
    retry_at_ms: u64,
    host_buf: String,
    counters: Counters,
    /// Set by the first request this worker handles.
    traffic_seen: bool,
}

impl Reporter {
    pub fn new(config: Config, gateway_id: String, worker: String) -> Self {
        let table = EdgeTable::new(config.max_edges, config.refresh_interval_s * 1_000);
        Reporter {
            config,
            gateway_id,
            worker,
            table,
            stream: None,
            streams_so_far: 0,
            carry: None,
            failures: 0,
            retry_at_ms: 0,
            host_buf: String::new(),
            counters: Counters::default(),
            traffic_seen: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn counters(&self) -> Counters {
        Counters {
            edges_evicted_unreported: self.table.evicted_unreported,
            ..self.counters.clone()
        }
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Edges in the dedup table.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Batches sent and not acked.
    pub fn inflight_len(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.inflight.len())
    }

    pub fn is_stream_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Records one request.
    pub fn observe(&mut self, props: &RequestProperties<'_>, now_ms: u64) {
        let Reporter {
            table,
            counters,
            host_buf,
            ..
        } = self;
        record(table, counters, props.edge(host_buf), now_ms);
    }

    /// Records one request whose cluster and source the shell already checked (the hot
    /// path: the same counts as [`Reporter::observe`] on the raw values).
    pub fn observe_checked(&mut self, props: &CheckedProperties<'_>, now_ms: u64) {
        let Reporter {
            table,
            counters,
            host_buf,
            ..
        } = self;
        record(table, counters, props.edge(host_buf), now_ms);
    }

    /// Periodic work: known edges whose refresh interval passed become pending.
    pub fn tick(&mut self, now_ms: u64) {
        self.table.promote_due(now_ms);
    }

    fn has_data(&self) -> bool {
        self.carry.is_some() || self.table.pending_len() > 0
    }

    /// True when the shell should open a stream now: there is something to send (or
    /// first-call routing is on and this worker serves traffic: the stream brings the
    /// namespace table), none is open, and the backoff has passed. VMs that never see a
    /// request (Envoy's main-thread VMs) never open one.
    pub fn wants_stream(&self, now_ms: u64) -> bool {
        self.config.report
            && self.stream.is_none()
            && now_ms >= self.retry_at_ms
            && ((self.config.routing && self.traffic_seen) || self.has_data())
    }

    /// Whether the shell's tick must run at the flush interval: edges to send, batches
    /// waiting for their ack (the ack timeout is checked on ticks), a stream to recycle,
    /// or a stream wanted and not open (the backoff is retried on ticks). Otherwise the
    /// tick idles: a known edge only counts a request, and at the flush interval the tick
    /// would enter the VM 50 times a second for nothing.
    pub fn needs_tick(&self) -> bool {
        if !self.config.report {
            return false;
        }
        match &self.stream {
            Some(stream) => {
                self.has_data() || !stream.inflight.is_empty() || stream.dictionary_full
            }
            None => self.has_data() || (self.config.routing && self.traffic_seen),
        }
    }

    /// The worker handled a request (from the request-headers callback, before any edge).
    pub fn traffic_seen(&mut self) {
        self.traffic_seen = true;
    }

    /// The shell opened a stream; returns the `Hello` to send first.
    pub fn stream_opened(&mut self) -> Vec<u8> {
        let resync = self.streams_so_far > 0;
        self.streams_so_far += 1;
        self.counters.streams_opened += 1;
        if resync {
            self.counters.resyncs += 1;
        }
        self.stream = Some(OpenStream {
            next_seq: 1,
            ..OpenStream::default()
        });
        GatewayMessage {
            kind: Some(gateway_message::Kind::Hello(Hello {
                gateway_id: self.gateway_id.clone(),
                worker: self.worker.clone(),
                resync,
            })),
        }
        .encode_to_vec()
    }

    /// The next batch to send on the open stream, if the in-flight window allows.
    pub fn next_batch(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        let max_inflight = self.config.max_inflight_batches;
        let stream = self.stream.as_mut()?;
        if stream.dictionary_full || stream.inflight.len() >= max_inflight {
            return None;
        }
        let mut batch = EdgeBatch {
            seq: stream.next_seq,
            sent_at_unix_s: now_ms / 1_000,
            names: Vec::new(),
            edges: Vec::new(),
        };
        let mut records = Vec::new();
        let mut bytes = BATCH_OVERHEAD_BYTES;
        while records.len() < self.config.max_batch_edges {
            let Some(record) = self.carry.take().or_else(|| self.table.pop_pending()) else {
                break;
            };
            let before = batch.names.len();
            let edge = encode_edge(stream, &mut batch.names, &record, now_ms);
            let added = prost::encoding::message::encoded_len(4, &edge)
                + batch.names[before..]
                    .iter()
                    .map(|n| prost::encoding::message::encoded_len(3, n))
                    .sum::<usize>();
            let over_bytes = bytes + added > self.config.max_batch_bytes && !records.is_empty();
            let over_names = stream.names.len() > self.config.max_names_per_stream;
            if over_bytes || over_names {
                // Undo this record's new names; it goes first into the next batch.
                for name in batch.names.drain(before..) {
                    stream.names.remove(name.value.as_str());
                }
                self.carry = Some(record);
                if over_names {
                    stream.dictionary_full = true;
                }
                break;
            }
            bytes += added;
            batch.edges.push(edge);
            records.push(record);
        }
        if records.is_empty() {
            return None;
        }
        stream.next_seq += 1;
        self.counters.batches_sent += 1;
        self.counters.edges_sent += records.len() as u64;
        stream.inflight.push_back(Inflight {
            seq: batch.seq,
            sent_at_ms: now_ms,
            records,
        });
        Some(
            GatewayMessage {
                kind: Some(gateway_message::Kind::Batch(batch)),
            }
            .encode_to_vec(),
        )
    }

    /// A message from the controller on the open stream. Acks are handled here; pushes
    /// (namespace table, policies) are returned for the router.
    pub fn on_controller_message(&mut self, bytes: &[u8]) -> Option<controller_message::Kind> {
        let Ok(message) = ControllerMessage::decode(bytes) else {
            self.counters.controller_messages_bad += 1;
            return None;
        };
        match message.kind {
            Some(controller_message::Kind::Ack(ack)) => {
                self.acked(ack.seq);
                None
            }
            // None: a push this version does not know (newer controller); ignored.
            push => push,
        }
    }

    fn acked(&mut self, seq: u64) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        while stream.inflight.front().is_some_and(|b| b.seq <= seq) {
            stream.inflight.pop_front();
            stream.acked_any = true;
            self.counters.batches_acked += 1;
        }
        if stream.acked_any {
            self.failures = 0;
        }
    }

    /// Whether the open stream should be closed by the shell (then call
    /// [`Reporter::stream_closed`]).
    pub fn close_reason(&self, now_ms: u64) -> Option<CloseReason> {
        let stream = self.stream.as_ref()?;
        if stream.dictionary_full && stream.inflight.is_empty() {
            return Some(CloseReason::DictionaryFull);
        }
        let oldest = stream.inflight.front()?;
        (now_ms.saturating_sub(oldest.sent_at_ms) >= self.config.ack_timeout_ms)
            .then_some(CloseReason::AckTimeout)
    }

    /// Envoy refused to open a stream (e.g. unknown cluster): back off as for a failed one.
    pub fn stream_open_failed(&mut self, now_ms: u64) {
        self.counters.stream_open_failures += 1;
        self.back_off(now_ms);
    }

    fn back_off(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        let backoff = BACKOFF_BASE_MS.saturating_mul(1 << self.failures.min(16));
        self.retry_at_ms = now_ms + backoff.min(self.config.reconnect_max_backoff_ms);
    }

    /// The stream ended (closed by Envoy, failed to send, or closed by the shell for
    /// `reason`). Unacked batches go back into the table and the whole table is queued
    /// again, so the next stream resyncs the controller.
    pub fn stream_closed(&mut self, now_ms: u64, reason: Option<CloseReason>) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        self.counters.streams_closed += 1;
        match reason {
            Some(CloseReason::AckTimeout) => self.counters.stream_ack_timeouts += 1,
            Some(CloseReason::DictionaryFull) => self.counters.streams_recycled += 1,
            None => {}
        }
        for batch in stream.inflight {
            for record in batch.records {
                self.table.restore(record);
            }
        }
        self.table.mark_all_pending();
        if stream.acked_any || reason == Some(CloseReason::DictionaryFull) {
            self.failures = 0;
            self.retry_at_ms = now_ms;
        } else {
            self.back_off(now_ms);
        }
    }
}

fn record(
    table: &mut EdgeTable,
    counters: &mut Counters,
    edge: Result<EdgeRef<'_>, Skip>,
    now_ms: u64,
) {
    counters.requests_seen += 1;
    match edge {
        Ok(edge) => {
            if table.observe(&edge, now_ms) == Observed::New {
                counters.edges_new += 1;
            }
        }
        Err(Skip::NoRoute) => counters.skipped_no_route += 1,
        Err(Skip::NotOutbound) => counters.skipped_not_outbound += 1,
        Err(Skip::BadSource) => counters.skipped_bad_source += 1,
    }
}

fn encode_edge(
    stream: &mut OpenStream,
    names: &mut Vec<Name>,
    record: &BatchRecord,
    now_ms: u64,
) -> Edge {
    let mut id_of = |value: &Rc<str>| -> u32 {
        if let Some(&id) = stream.names.get(value) {
            return id;
        }
        let id = stream.names.len() as u32 + 1;
        stream.names.insert(value.clone(), id);
        names.push(Name {
            id,
            value: value.to_string(),
        });
        id
    };
    let key = &record.key;
    let host = key.host.as_ref().map_or(0, &mut id_of);
    let cluster = id_of(&key.cluster);
    let principal = key.principal.as_ref().map_or(0, &mut id_of);
    let idle_s = (now_ms.saturating_sub(record.last_seen_ms) / 1_000).min(u64::from(u32::MAX));
    Edge {
        source_ip: match key.source_ip {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        },
        host,
        cluster,
        requests: record.requests,
        idle_s: idle_s as u32,
        principal,
    }
}
