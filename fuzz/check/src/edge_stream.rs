//! A gateway's edge stream into the controller's decoder, message by message, as the
//! gRPC service reads it (`controller/src/edges/stream.rs`).
//!
//! Input: byte 0 picks the stream limits (even: the defaults, `lazyxds_proto::limits`;
//! odd: small ones the fuzzer can reach); the rest is the stream's request body, gRPC
//! length-prefixed messages (1 byte compressed flag, 4 bytes big-endian length, a
//! protobuf `GatewayMessage`) as Envoy sends them. A frame that is compressed, longer
//! than the controller's message limit or cut short ends the stream, as tonic does.
//!
//! Properties, for every batch: the decoder accepts exactly what a reference model of the
//! protocol (ids, dictionary, seq, limits; written here from the proto's comments) does,
//! and returns the edges the model does; an accepted batch is within the stream's limits
//! and those within `lazyxds_proto::limits`; a refused batch changes nothing (the next
//! batches see the same dictionary and seq) and its error names it. The real stream
//! ends at the first refusal (or a second `Hello`, or a message with no kind); here the
//! decoder is driven on, to check that nothing of a refused batch stays behind.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use lazyxds_index::decode::{oversized_hello_field, Decoder, Limits};
use lazyxds_index::ObservedEdge;
use lazyxds_proto::limits::{
    MAX_BATCH_EDGES, MAX_NAME_BYTES, MAX_STREAM_NAMES, MIN_CONTROLLER_MESSAGE_BYTES,
};
use lazyxds_proto::v1::{gateway_message, EdgeBatch, GatewayMessage};
use prost::Message;

/// Limits small enough for short inputs to reach (16 names: the least a filter may be
/// configured with).
pub const SMALL_LIMITS: Limits = Limits {
    max_batch_edges: 4,
    max_names: 16,
};

/// The messages of one gRPC request body, up to the first frame tonic would refuse.
pub fn frames(mut body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [compressed, l0, l1, l2, l3, rest @ ..] = body {
        let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
        if *compressed != 0 || len > MIN_CONTROLLER_MESSAGE_BYTES || len > rest.len() {
            break;
        }
        let (message, next) = rest.split_at(len);
        out.push(message);
        body = next;
    }
    out
}

/// One gRPC frame around `message` (for seeds and tests).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut out = vec![0];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The protocol as `edges.proto` states it, written plainly.
struct Model {
    limits: Limits,
    names: HashMap<u32, String>,
    last_seq: u64,
}

impl Model {
    fn apply(&mut self, batch: &EdgeBatch) -> Option<Vec<ObservedEdge>> {
        if batch.seq <= self.last_seq || batch.edges.len() > self.limits.max_batch_edges {
            return None;
        }
        let mut names = self.names.clone();
        for name in &batch.names {
            if name.id == 0 || name.value.len() > MAX_NAME_BYTES {
                return None;
            }
            match names.get(&name.id) {
                Some(old) if *old == name.value => {}
                Some(_) => return None,
                None if names.len() >= self.limits.max_names => return None,
                None => {
                    names.insert(name.id, name.value.clone());
                }
            }
        }
        let name = |id: u32| names.get(&id).map(|v| Arc::<str>::from(v.as_str()));
        let optional = |id: u32| {
            if id == 0 {
                Some(None)
            } else {
                name(id).map(Some)
            }
        };
        let mut edges = Vec::new();
        for edge in &batch.edges {
            let source_ip = match edge.source_ip.len() {
                4 => <[u8; 4]>::try_from(edge.source_ip.as_slice())
                    .ok()
                    .map(IpAddr::from)?,
                16 => <[u8; 16]>::try_from(edge.source_ip.as_slice())
                    .ok()
                    .map(|b| IpAddr::from(b).to_canonical())?,
                _ => return None,
            };
            if edge.cluster == 0 {
                return None;
            }
            edges.push(ObservedEdge {
                source_ip,
                host: optional(edge.host)?,
                cluster: name(edge.cluster)?,
                principal: optional(edge.principal)?,
                requests: edge.requests,
                last_seen_unix_s: batch.sent_at_unix_s.saturating_sub(u64::from(edge.idle_s)),
            });
        }
        self.names = names;
        self.last_seq = batch.seq;
        Some(edges)
    }
}

pub fn check(bytes: &[u8]) {
    let Some((&mode, body)) = bytes.split_first() else {
        return;
    };
    let limits = if mode % 2 == 0 {
        Limits::default()
    } else {
        SMALL_LIMITS
    };
    assert!(limits.max_batch_edges <= MAX_BATCH_EDGES && limits.max_names <= MAX_STREAM_NAMES);
    let mut decoder = Decoder::new(limits);
    let mut model = Model {
        limits,
        names: HashMap::new(),
        last_seq: 0,
    };
    let mut greeted = false;
    for message in frames(body) {
        // tonic's prost codec: `Message::decode` of the whole frame.
        let Ok(message) = GatewayMessage::decode(message) else {
            return;
        };
        match message.kind {
            None => return,
            Some(gateway_message::Kind::Hello(hello)) => {
                if greeted {
                    return;
                }
                if let Some((field, len)) = oversized_hello_field(&hello) {
                    assert!(len > MAX_NAME_BYTES, "{field}: {len} bytes refused");
                    return;
                }
                assert!(hello.gateway_id.len() <= MAX_NAME_BYTES);
                assert!(hello.worker.len() <= MAX_NAME_BYTES);
                greeted = true;
            }
            // The stream refuses a batch before Hello.
            Some(gateway_message::Kind::Batch(_)) if !greeted => return,
            Some(gateway_message::Kind::Batch(batch)) => {
                check_batch(&mut decoder, &mut model, &batch)
            }
        }
    }
}

fn check_batch(decoder: &mut Decoder, model: &mut Model, batch: &EdgeBatch) {
    let before = (decoder.last_seq(), decoder.names_len());
    let want = model.apply(batch);
    match decoder.apply_batch(batch) {
        Ok(edges) => {
            assert_eq!(
                Some(&edges),
                want.as_ref(),
                "the decoder accepted batch {} as the model did",
                batch.seq
            );
            assert!(edges.len() <= model.limits.max_batch_edges);
            assert!(edges.len() <= MAX_BATCH_EDGES);
            assert!(decoder.names_len() <= model.limits.max_names);
            assert!(decoder.names_len() <= MAX_STREAM_NAMES);
            assert_eq!(decoder.last_seq(), batch.seq);
            for edge in &edges {
                assert!(edge.last_seen_unix_s <= batch.sent_at_unix_s);
                for name in [
                    Some(&edge.cluster),
                    edge.host.as_ref(),
                    edge.principal.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    assert!(name.len() <= MAX_NAME_BYTES);
                }
            }
        }
        Err(error) => {
            assert_eq!(
                want, None,
                "the decoder refused batch {} ({error}); the model accepted it",
                batch.seq
            );
            assert_eq!(
                (decoder.last_seq(), decoder.names_len()),
                before,
                "a refused batch changed the stream's state"
            );
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("batch {}: ", batch.seq)),
                "{message:?} does not name the batch"
            );
            assert!(!error.reason().is_empty() && error.reason() != "unknown");
        }
    }
    assert_eq!(
        decoder.names_len(),
        model.names.len(),
        "dictionary sizes agree"
    );
    assert_eq!(decoder.last_seq(), model.last_seq, "seqs agree");
}
