//! Counts gRPC messages in the client-to-server bytes of an HTTP/2 connection.
//!
//! A gRPC message on the wire is a 5-byte prefix (compressed flag, 4-byte big-endian
//! length) and the protobuf bytes, carried in HTTP/2 DATA frames, possibly split across
//! frames and interleaved with other streams. The sum of DATA payloads (padding excluded)
//! is therefore exactly Σ(protobuf + 5) over the messages: the P3 metric, counted the
//! same way for both sinks, with no change to either.

use std::collections::HashMap;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_DATA: u8 = 0;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_PADDED: u8 = 0x8;
/// A frame larger than this means we are not looking at HTTP/2 (max allowed is 2^24-1).
const MAX_FRAME: usize = 1 << 24;

/// Totals of one direction of one or more connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every byte seen (TCP payload).
    pub raw_bytes: u64,
    /// DATA payload bytes without padding = Σ(gRPC 5-byte prefix + message).
    pub grpc_bytes: u64,
    /// gRPC messages whose prefix was seen.
    pub grpc_messages: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            raw_bytes: self.raw_bytes.saturating_sub(o.raw_bytes),
            grpc_bytes: self.grpc_bytes.saturating_sub(o.grpc_bytes),
            grpc_messages: self.grpc_messages.saturating_sub(o.grpc_messages),
        }
    }
}

/// Where a stream is within its current gRPC message.
#[derive(Debug, Default, Clone, Copy)]
struct Message {
    prefix: [u8; 5],
    prefix_have: usize,
    body_left: u64,
}

/// Parses the client side of one HTTP/2 connection, fed in arbitrary chunks.
#[derive(Debug, Default)]
pub struct H2Counter {
    buf: Vec<u8>,
    preface_done: bool,
    streams: HashMap<u32, Message>,
    counts: Counts,
    /// Set when the bytes stopped looking like HTTP/2; counting then stops (raw bytes go on).
    pub error: Option<String>,
}

impl H2Counter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Feeds the next bytes of the connection.
    pub fn feed(&mut self, data: &[u8]) {
        self.counts.raw_bytes += data.len() as u64;
        if self.error.is_some() {
            return;
        }
        self.buf.extend_from_slice(data);
        let mut at = 0;
        if !self.preface_done {
            if self.buf.len() < PREFACE.len() {
                if !PREFACE.starts_with(&self.buf) {
                    self.error = Some("no HTTP/2 preface".into());
                }
                return;
            }
            if &self.buf[..PREFACE.len()] != PREFACE {
                self.error = Some("no HTTP/2 preface".into());
                return;
            }
            self.preface_done = true;
            at = PREFACE.len();
        }
        while self.buf.len() - at >= FRAME_HEADER {
            let h = &self.buf[at..at + FRAME_HEADER];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if len >= MAX_FRAME {
                self.error = Some(format!("frame of {len} bytes"));
                return;
            }
            if self.buf.len() - at < FRAME_HEADER + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if kind == TYPE_DATA {
                let payload = at + FRAME_HEADER..at + FRAME_HEADER + len;
                let payload = self.buf[payload].to_vec();
                if let Err(e) = self.data(stream, flags, &payload) {
                    self.error = Some(e);
                    return;
                }
            }
            at += FRAME_HEADER + len;
        }
        self.buf.drain(..at);
    }

    fn data(&mut self, stream: u32, flags: u8, payload: &[u8]) -> Result<(), String> {
        let data = if flags & FLAG_PADDED != 0 {
            let Some((&pad, rest)) = payload.split_first() else {
                return Err("padded DATA frame without pad length".into());
            };
            let pad = usize::from(pad);
            if pad > rest.len() {
                return Err("DATA padding longer than the frame".into());
            }
            &rest[..rest.len() - pad]
        } else {
            payload
        };
        self.counts.grpc_bytes += data.len() as u64;
        let msg = self.streams.entry(stream).or_default();
        let mut rest = data;
        while !rest.is_empty() {
            if msg.body_left > 0 {
                let take = rest
                    .len()
                    .min(usize::try_from(msg.body_left).unwrap_or(usize::MAX));
                msg.body_left -= take as u64;
                rest = &rest[take..];
                continue;
            }
            let take = (5 - msg.prefix_have).min(rest.len());
            msg.prefix[msg.prefix_have..msg.prefix_have + take].copy_from_slice(&rest[..take]);
            msg.prefix_have += take;
            rest = &rest[take..];
            if msg.prefix_have == 5 {
                let p = msg.prefix;
                msg.body_left = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
                msg.prefix_have = 0;
                self.counts.grpc_messages += 1;
            }
        }
        if flags & FLAG_END_STREAM != 0 {
            self.streams.remove(&stream);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn grpc(body_len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(body_len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(0xab, body_len));
        m
    }

    #[test]
    fn counts_messages_split_across_frames_streams_and_reads() {
        let m1 = grpc(10); // stream 1: one message in two frames
        let m2 = grpc(3); // stream 3: two messages in one padded frame
        let mut two = grpc(3);
        two.extend(grpc(0));
        let mut padded = vec![4u8];
        padded.extend_from_slice(&two);
        padded.extend_from_slice(&[0; 4]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(4, 0, 0, &[0; 6])); // SETTINGS
        wire.extend(frame(1, 4, 1, b"hpack")); // HEADERS
        wire.extend(frame(0, 0, 1, &m1[..7]));
        wire.extend(frame(0, FLAG_PADDED, 3, &padded));
        wire.extend(frame(0, FLAG_END_STREAM, 1, &m1[7..]));
        let mut c = H2Counter::new();
        for chunk in wire.chunks(5) {
            c.feed(chunk);
        }
        assert_eq!(c.error, None);
        assert_eq!(
            c.counts(),
            Counts {
                raw_bytes: wire.len() as u64,
                grpc_bytes: (m1.len() + m2.len() + 5) as u64,
                grpc_messages: 3,
            }
        );
    }

    #[test]
    fn stops_counting_on_garbage_but_counts_raw_bytes() {
        let mut c = H2Counter::new();
        c.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(c.error.is_some());
        assert_eq!(c.counts().raw_bytes, 27);
        assert_eq!(c.counts().grpc_messages, 0);
    }
}
