//! Decoding a gateway's edge stream. Pure: no I/O, no clock, no async. [`Decoder`] holds
//! one stream's state (dictionary and last seq) and turns each [`EdgeBatch`] into
//! [`ObservedEdge`]s, validating the whole batch before anything of it takes effect.
//! Every [`BatchError`] names the batch's `seq` and, where there is one, the index of the
//! offending name or edge, so the message alone (sent back as the gRPC status and logged)
//! is enough to find the bug in the gateway.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use lazyxds_proto::v1::{EdgeBatch, Hello, Name};

use crate::ObservedEdge;

/// Longest dictionary name or `Hello` field accepted; the filter's configuration holds
/// gateways to the same limit.
pub use lazyxds_proto::limits::MAX_NAME_BYTES;
/// The defaults are the most a gateway may send (`lazyxds_proto::limits`), and the
/// floors of `--max-batch-edges`/`--max-stream-names`: any configuration the filter
/// accepts is accepted here.
pub const DEFAULT_MAX_BATCH_EDGES: usize = lazyxds_proto::limits::MAX_BATCH_EDGES;
pub const DEFAULT_MAX_STREAM_NAMES: usize = lazyxds_proto::limits::MAX_STREAM_NAMES;

/// The first `Hello` field longer than [`MAX_NAME_BYTES`], with its length: such a
/// `Hello` ends the stream.
pub fn oversized_hello_field(hello: &Hello) -> Option<(&'static str, usize)> {
    [("gateway_id", &hello.gateway_id), ("worker", &hello.worker)]
        .into_iter()
        .find(|(_, value)| value.len() > MAX_NAME_BYTES)
        .map(|(field, value)| (field, value.len()))
}

/// Per-stream limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most edges in one batch.
    pub max_batch_edges: usize,
    /// Most dictionary names one stream may define.
    pub max_names: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_edges: DEFAULT_MAX_BATCH_EDGES,
            max_names: DEFAULT_MAX_STREAM_NAMES,
        }
    }
}

/// A stream's name dictionary. Gateways hand out ids 1, 2, 3, ..., so ids live in a
/// `Vec` indexed by id; the `Vec` only grows to about twice the number of names, so a
/// gateway sending huge or sparse ids lands in the map instead of making us allocate.
#[derive(Debug, Default)]
struct Dictionary {
    dense: Vec<Option<Arc<str>>>,
    sparse: HashMap<u32, Arc<str>>,
    len: usize,
}

/// Ids below `2 * len + DENSE_SLACK` go to the dense `Vec`.
const DENSE_SLACK: usize = 1024;

impl Dictionary {
    #[inline]
    fn get(&self, id: u32) -> Option<&Arc<str>> {
        match self.dense.get(id as usize) {
            Some(Some(value)) => Some(value),
            _ if self.sparse.is_empty() => None,
            _ => self.sparse.get(&id),
        }
    }

    /// `id` must be absent.
    fn insert(&mut self, id: u32, value: Arc<str>) {
        let i = id as usize;
        let dense_up_to = self.len.saturating_mul(2).saturating_add(DENSE_SLACK);
        if i >= self.dense.len() && i < dense_up_to {
            self.dense.resize(i.saturating_add(1), None);
        }
        match self.dense.get_mut(i) {
            Some(slot) => *slot = Some(value),
            None => {
                self.sparse.insert(id, value);
            }
        }
        self.len = self.len.saturating_add(1);
    }

    fn remove(&mut self, id: u32) {
        let removed = match self.dense.get_mut(id as usize) {
            Some(slot @ Some(_)) => slot.take().is_some(),
            _ => self.sparse.remove(&id).is_some(),
        };
        if removed {
            self.len = self.len.saturating_sub(1);
        }
    }
}

/// One gateway stream's decoding state.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    names: Dictionary,
    last_seq: u64,
    /// Ids defined by the batch being applied, to undo them if it is refused.
    added: Vec<u32>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            names: Dictionary::default(),
            last_seq: 0,
            added: Vec::new(),
        }
    }

    /// The seq of the last applied batch, 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Number of names the stream has defined.
    pub fn names_len(&self) -> usize {
        self.names.len
    }

    /// Validates and applies a batch: either the whole batch (its names, its seq) takes
    /// effect and its edges are returned, or nothing changes.
    pub fn apply_batch(&mut self, batch: &EdgeBatch) -> Result<Vec<ObservedEdge>, BatchError> {
        let seq = batch.seq;
        if seq <= self.last_seq {
            return Err(BatchError::SeqNotIncreasing {
                seq,
                last: self.last_seq,
            });
        }
        if batch.edges.len() > self.limits.max_batch_edges {
            return Err(BatchError::TooManyEdges {
                seq,
                count: batch.edges.len(),
                max: self.limits.max_batch_edges,
            });
        }
        self.added.clear();
        let result = self
            .define_names(seq, &batch.names)
            .and_then(|()| self.decode_edges(batch));
        match result {
            Ok(edges) => {
                self.last_seq = seq;
                Ok(edges)
            }
            Err(error) => {
                for id in self.added.drain(..) {
                    self.names.remove(id);
                }
                Err(error)
            }
        }
    }

    fn define_names(&mut self, seq: u64, names: &[Name]) -> Result<(), BatchError> {
        for (index, name) in names.iter().enumerate() {
            let id = name.id;
            if id == 0 {
                return Err(BatchError::NameIdZero { seq, index });
            }
            if name.value.len() > MAX_NAME_BYTES {
                return Err(BatchError::NameTooLong {
                    seq,
                    index,
                    id,
                    len: name.value.len(),
                    max: MAX_NAME_BYTES,
                });
            }
            match self.names.get(id) {
                // Re-sending a definition is harmless (a gateway may repeat names).
                Some(old) if **old == *name.value => {}
                Some(old) => {
                    return Err(BatchError::NameRedefined {
                        seq,
                        index,
                        id,
                        old: old.clone(),
                        new: name.value.clone(),
                    })
                }
                None if self.names.len >= self.limits.max_names => {
                    return Err(BatchError::TooManyNames {
                        seq,
                        index,
                        id,
                        max: self.limits.max_names,
                    })
                }
                None => {
                    self.names.insert(id, Arc::from(name.value.as_str()));
                    self.added.push(id);
                }
            }
        }
        Ok(())
    }

    fn decode_edges(&self, batch: &EdgeBatch) -> Result<Vec<ObservedEdge>, BatchError> {
        let seq = batch.seq;
        let lookup = |index: usize, field: NameField, id: u32| -> Result<Arc<str>, BatchError> {
            self.names.get(id).cloned().ok_or(BatchError::UnknownName {
                seq,
                index,
                field,
                id,
            })
        };
        let optional = |index: usize, field: NameField, id: u32| match id {
            0 => Ok(None),
            id => lookup(index, field, id).map(Some),
        };

        let mut out = Vec::with_capacity(batch.edges.len());
        for (index, edge) in batch.edges.iter().enumerate() {
            let source_ip = decode_ip(&edge.source_ip).ok_or(BatchError::BadSourceIp {
                seq,
                index,
                len: edge.source_ip.len(),
            })?;
            if edge.cluster == 0 {
                return Err(BatchError::MissingCluster { seq, index });
            }
            let host = optional(index, NameField::Host, edge.host)?;
            let cluster = lookup(index, NameField::Cluster, edge.cluster)?;
            let principal = optional(index, NameField::Principal, edge.principal)?;
            out.push(ObservedEdge {
                source_ip,
                host,
                cluster,
                principal,
                requests: edge.requests,
                last_seen_unix_s: batch.sent_at_unix_s.saturating_sub(u64::from(edge.idle_s)),
            });
        }
        Ok(out)
    }
}

/// A dictionary field of an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameField {
    Host,
    Cluster,
    Principal,
}

impl std::fmt::Display for NameField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameField::Host => "host",
            NameField::Cluster => "cluster",
            NameField::Principal => "principal",
        })
    }
}

/// A batch that was refused as a whole; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch {seq}: seq must be greater than the previous batch's {last}")]
    SeqNotIncreasing { seq: u64, last: u64 },

    #[error("batch {seq}: {count} edges, more than the limit of {max}")]
    TooManyEdges { seq: u64, count: usize, max: usize },

    #[error("batch {seq}: name {index}: id 0 is reserved for \"absent\"")]
    NameIdZero { seq: u64, index: usize },

    #[error("batch {seq}: name {index} (id {id}): {len} bytes, more than the limit of {max}")]
    NameTooLong {
        seq: u64,
        index: usize,
        id: u32,
        len: usize,
        max: usize,
    },

    #[error(
        "batch {seq}: name {index}: id {id} is already {old:?}, cannot redefine it as {new:?}"
    )]
    NameRedefined {
        seq: u64,
        index: usize,
        id: u32,
        old: Arc<str>,
        new: String,
    },

    #[error("batch {seq}: name {index} (id {id}): the stream already has {max} names, the limit")]
    TooManyNames {
        seq: u64,
        index: usize,
        id: u32,
        max: usize,
    },

    #[error("batch {seq}: edge {index}: source_ip has {len} bytes, want 4 (IPv4) or 16 (IPv6)")]
    BadSourceIp { seq: u64, index: usize, len: usize },

    #[error("batch {seq}: edge {index}: cluster id is 0, a cluster is required")]
    MissingCluster { seq: u64, index: usize },

    #[error("batch {seq}: edge {index}: {field} id {id} is not in the stream's dictionary")]
    UnknownName {
        seq: u64,
        index: usize,
        field: NameField,
        id: u32,
    },
}

impl BatchError {
    /// Stable reason labels, in [`BatchError::reason_index`] order, for counters.
    pub const REASONS: [&'static str; 9] = [
        "seq_not_increasing",
        "too_many_edges",
        "name_id_zero",
        "name_too_long",
        "name_redefined",
        "too_many_names",
        "bad_source_ip",
        "missing_cluster",
        "unknown_name",
    ];

    /// Index of this error's reason in [`BatchError::REASONS`].
    pub fn reason_index(&self) -> usize {
        match self {
            BatchError::SeqNotIncreasing { .. } => 0,
            BatchError::TooManyEdges { .. } => 1,
            BatchError::NameIdZero { .. } => 2,
            BatchError::NameTooLong { .. } => 3,
            BatchError::NameRedefined { .. } => 4,
            BatchError::TooManyNames { .. } => 5,
            BatchError::BadSourceIp { .. } => 6,
            BatchError::MissingCluster { .. } => 7,
            BatchError::UnknownName { .. } => 8,
        }
    }

    /// A short, stable label for counters and logs.
    pub fn reason(&self) -> &'static str {
        Self::REASONS
            .get(self.reason_index())
            .copied()
            .unwrap_or("unknown")
    }
}

/// 4 or 16 raw bytes. IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack listener
/// reports for an IPv4 peer) becomes the IPv4 address, as pods are known by it.
fn decode_ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
    Some(IpAddr::V6(v6).to_canonical())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lazyxds_proto::v1::{Edge, EdgeBatch, Name};

    use super::*;

    const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
    const REVIEWS_HOST: &str = "reviews.default.svc.cluster.local";
    const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";
    const SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/productpage";

    fn mk_name(id: u32, value: &str) -> Name {
        Name {
            id,
            value: value.to_string(),
        }
    }

    fn mk_edge(ip: &[u8], host: u32, cluster: u32, requests: u64, idle_s: u32) -> Edge {
        Edge {
            source_ip: ip.to_vec(),
            host,
            cluster,
            requests,
            idle_s,
            principal: 0,
        }
    }

    fn mk_batch(seq: u64, names: &[(u32, &str)], edges: Vec<Edge>) -> EdgeBatch {
        EdgeBatch {
            seq,
            sent_at_unix_s: 1_000,
            names: names.iter().map(|&(id, v)| mk_name(id, v)).collect(),
            edges,
        }
    }

    fn mk_observed(
        ip: &str,
        host: Option<&str>,
        cluster: &str,
        requests: u64,
        last_seen: u64,
    ) -> ObservedEdge {
        ObservedEdge {
            source_ip: ip.parse().unwrap(),
            host: host.map(Arc::from),
            cluster: Arc::from(cluster),
            principal: None,
            requests,
            last_seen_unix_s: last_seen,
        }
    }

    const IP: [u8; 4] = [10, 0, 0, 7];

    #[test]
    fn decodes_a_valid_batch() {
        let mut ipv6 = [0u8; 16];
        ipv6[0] = 0xfd;
        ipv6[15] = 1;
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 8];
        let mut with_principal = mk_edge(&IP, 0, 1, 2, 0);
        with_principal.principal = 3;
        let batch = EdgeBatch {
            seq: 1,
            sent_at_unix_s: 1_000,
            names: vec![
                mk_name(1, REVIEWS),
                mk_name(2, REVIEWS_HOST),
                mk_name(3, SPIFFE),
            ],
            edges: vec![
                mk_edge(&IP, 2, 1, 5, 10),
                mk_edge(&ipv6, 0, 1, 1, 2_000),
                mk_edge(&mapped, 2, 1, 0, 0),
                with_principal,
            ],
        };
        let mut decoder = Decoder::new(Limits::default());
        let got = decoder.apply_batch(&batch).unwrap();
        let mut principal = mk_observed("10.0.0.7", None, REVIEWS, 2, 1_000);
        principal.principal = Some(Arc::from(SPIFFE));
        assert_eq!(
            got,
            vec![
                mk_observed("10.0.0.7", Some(REVIEWS_HOST), REVIEWS, 5, 990),
                // idle_s beyond sent_at saturates at 0.
                mk_observed("fd00::1", None, REVIEWS, 1, 0),
                mk_observed("10.0.0.8", Some(REVIEWS_HOST), REVIEWS, 0, 1_000),
                principal,
            ]
        );
        assert_eq!((decoder.last_seq(), decoder.names_len()), (1, 3));
    }

    #[test]
    fn refuses_invalid_batches() {
        let small = Limits {
            max_batch_edges: 2,
            max_names: 2,
        };
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let cases: Vec<(&str, Limits, EdgeBatch, BatchError)> = vec![
            (
                "seq 0 is not after the start",
                Limits::default(),
                mk_batch(0, &[], vec![]),
                BatchError::SeqNotIncreasing { seq: 0, last: 0 },
            ),
            (
                "too many edges",
                small,
                mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&IP, 0, 1, 1, 0); 3]),
                BatchError::TooManyEdges {
                    seq: 1,
                    count: 3,
                    max: 2,
                },
            ),
            (
                "name id 0",
                Limits::default(),
                mk_batch(1, &[(1, REVIEWS), (0, RATINGS)], vec![]),
                BatchError::NameIdZero { seq: 1, index: 1 },
            ),
            (
                "name too long",
                Limits::default(),
                mk_batch(1, &[(4, &long)], vec![]),
                BatchError::NameTooLong {
                    seq: 1,
                    index: 0,
                    id: 4,
                    len: MAX_NAME_BYTES + 1,
                    max: MAX_NAME_BYTES,
                },
            ),
            (
                "redefined within the batch",
                Limits::default(),
                mk_batch(1, &[(1, REVIEWS), (1, RATINGS)], vec![]),
                BatchError::NameRedefined {
                    seq: 1,
                    index: 1,
                    id: 1,
                    old: Arc::from(REVIEWS),
                    new: RATINGS.to_string(),
                },
            ),
            (
                "too many names",
                small,
                mk_batch(1, &[(1, REVIEWS), (2, RATINGS), (3, SPIFFE)], vec![]),
                BatchError::TooManyNames {
                    seq: 1,
                    index: 2,
                    id: 3,
                    max: 2,
                },
            ),
            (
                "5-byte source ip",
                Limits::default(),
                mk_batch(
                    1,
                    &[(1, REVIEWS)],
                    vec![
                        mk_edge(&IP, 0, 1, 1, 0),
                        mk_edge(&[1, 2, 3, 4, 5], 0, 1, 1, 0),
                    ],
                ),
                BatchError::BadSourceIp {
                    seq: 1,
                    index: 1,
                    len: 5,
                },
            ),
            (
                "empty source ip",
                Limits::default(),
                mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&[], 0, 1, 1, 0)]),
                BatchError::BadSourceIp {
                    seq: 1,
                    index: 0,
                    len: 0,
                },
            ),
            (
                "cluster id 0",
                Limits::default(),
                mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&IP, 1, 0, 1, 0)]),
                BatchError::MissingCluster { seq: 1, index: 0 },
            ),
            (
                "unknown cluster",
                Limits::default(),
                mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&IP, 0, 9, 1, 0)]),
                BatchError::UnknownName {
                    seq: 1,
                    index: 0,
                    field: NameField::Cluster,
                    id: 9,
                },
            ),
            (
                "unknown host",
                Limits::default(),
                mk_batch(1, &[(1, REVIEWS)], vec![mk_edge(&IP, 7, 1, 1, 0)]),
                BatchError::UnknownName {
                    seq: 1,
                    index: 0,
                    field: NameField::Host,
                    id: 7,
                },
            ),
            (
                "unknown principal",
                Limits::default(),
                mk_batch(
                    1,
                    &[(1, REVIEWS)],
                    vec![Edge {
                        principal: 8,
                        ..mk_edge(&IP, 0, 1, 1, 0)
                    }],
                ),
                BatchError::UnknownName {
                    seq: 1,
                    index: 0,
                    field: NameField::Principal,
                    id: 8,
                },
            ),
        ];
        for (name, limits, batch, want) in cases {
            let mut decoder = Decoder::new(limits);
            assert_eq!(decoder.apply_batch(&batch), Err(want), "{name}");
            // Atomic: nothing of a refused batch stays behind.
            assert_eq!((decoder.last_seq(), decoder.names_len()), (0, 0), "{name}");
        }
    }

    #[test]
    fn error_messages_name_batch_edge_and_problem() {
        let cases = [
            (
                BatchError::BadSourceIp {
                    seq: 7,
                    index: 3,
                    len: 5,
                },
                "batch 7: edge 3: source_ip has 5 bytes, want 4 (IPv4) or 16 (IPv6)",
            ),
            (
                BatchError::UnknownName {
                    seq: 2,
                    index: 0,
                    field: NameField::Cluster,
                    id: 9,
                },
                "batch 2: edge 0: cluster id 9 is not in the stream's dictionary",
            ),
            (
                BatchError::MissingCluster { seq: 1, index: 4 },
                "batch 1: edge 4: cluster id is 0, a cluster is required",
            ),
            (
                BatchError::SeqNotIncreasing { seq: 3, last: 3 },
                "batch 3: seq must be greater than the previous batch's 3",
            ),
            (
                BatchError::TooManyEdges {
                    seq: 1,
                    count: 10_001,
                    max: 10_000,
                },
                "batch 1: 10001 edges, more than the limit of 10000",
            ),
            (
                BatchError::NameIdZero { seq: 5, index: 2 },
                "batch 5: name 2: id 0 is reserved for \"absent\"",
            ),
            (
                BatchError::NameTooLong {
                    seq: 1,
                    index: 0,
                    id: 4,
                    len: 1025,
                    max: 1024,
                },
                "batch 1: name 0 (id 4): 1025 bytes, more than the limit of 1024",
            ),
            (
                BatchError::NameRedefined {
                    seq: 2,
                    index: 0,
                    id: 1,
                    old: Arc::from("a"),
                    new: "b".to_string(),
                },
                "batch 2: name 0: id 1 is already \"a\", cannot redefine it as \"b\"",
            ),
            (
                BatchError::TooManyNames {
                    seq: 9,
                    index: 1,
                    id: 12,
                    max: 10,
                },
                "batch 9: name 1 (id 12): the stream already has 10 names, the limit",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
    }

    #[test]
    fn dictionary_spans_batches() {
        let mut decoder = Decoder::new(Limits::default());
        let first = mk_batch(
            1,
            &[(1, REVIEWS), (2, REVIEWS_HOST)],
            vec![mk_edge(&IP, 2, 1, 3, 0)],
        );
        assert_eq!(
            decoder.apply_batch(&first),
            Ok(vec![mk_observed(
                "10.0.0.7",
                Some(REVIEWS_HOST),
                REVIEWS,
                3,
                1_000
            )])
        );
        // Later batches use earlier ids, may repeat a definition unchanged, and add more;
        // seq may skip.
        let second = mk_batch(
            5,
            &[(1, REVIEWS), (3, RATINGS)],
            vec![mk_edge(&IP, 2, 1, 1, 0), mk_edge(&IP, 0, 3, 1, 0)],
        );
        assert_eq!(
            decoder.apply_batch(&second),
            Ok(vec![
                mk_observed("10.0.0.7", Some(REVIEWS_HOST), REVIEWS, 1, 1_000),
                mk_observed("10.0.0.7", None, RATINGS, 1, 1_000),
            ])
        );
        // Redefining an id from an earlier batch is refused; so is going back in seq.
        assert_eq!(
            decoder.apply_batch(&mk_batch(6, &[(3, REVIEWS)], vec![])),
            Err(BatchError::NameRedefined {
                seq: 6,
                index: 0,
                id: 3,
                old: Arc::from(RATINGS),
                new: REVIEWS.to_string(),
            })
        );
        assert_eq!(
            decoder.apply_batch(&mk_batch(5, &[], vec![])),
            Err(BatchError::SeqNotIncreasing { seq: 5, last: 5 })
        );
        assert_eq!((decoder.last_seq(), decoder.names_len()), (5, 3));
    }

    #[test]
    fn refused_batch_rolls_back_its_names() {
        let mut decoder = Decoder::new(Limits::default());
        decoder
            .apply_batch(&mk_batch(1, &[(1, REVIEWS)], vec![]))
            .unwrap();
        // Defines 2 but then fails on edge 1: id 2 must not survive.
        let bad = mk_batch(
            2,
            &[(2, RATINGS)],
            vec![mk_edge(&IP, 0, 2, 1, 0), mk_edge(&IP, 0, 9, 1, 0)],
        );
        assert!(decoder.apply_batch(&bad).is_err());
        assert_eq!((decoder.last_seq(), decoder.names_len()), (1, 1));
        // The same id can then be defined with another value, and the seq reused.
        let retry = mk_batch(2, &[(2, REVIEWS_HOST)], vec![mk_edge(&IP, 2, 1, 1, 0)]);
        assert_eq!(
            decoder.apply_batch(&retry),
            Ok(vec![mk_observed(
                "10.0.0.7",
                Some(REVIEWS_HOST),
                REVIEWS,
                1,
                1_000
            )])
        );
    }

    #[test]
    fn sparse_and_huge_ids_do_not_allocate_by_id() {
        let mut decoder = Decoder::new(Limits::default());
        let batch = mk_batch(
            1,
            &[(u32::MAX, REVIEWS), (5_000, RATINGS), (1, REVIEWS_HOST)],
            vec![
                mk_edge(&IP, 1, u32::MAX, 1, 0),
                mk_edge(&IP, 0, 5_000, 1, 0),
            ],
        );
        assert_eq!(
            decoder.apply_batch(&batch),
            Ok(vec![
                mk_observed("10.0.0.7", Some(REVIEWS_HOST), REVIEWS, 1, 1_000),
                mk_observed("10.0.0.7", None, RATINGS, 1, 1_000),
            ])
        );
        assert!(decoder.names.dense.len() < 2 * DENSE_SLACK);
        // Dense growth past a sparse id still finds it.
        let names: Vec<(u32, String)> = (2..6_000)
            .filter(|&i| i != 5_000)
            .map(|i| (i, format!("n{i}")))
            .collect();
        let names: Vec<(u32, &str)> = names.iter().map(|(i, v)| (*i, v.as_str())).collect();
        decoder.apply_batch(&mk_batch(2, &names, vec![])).unwrap();
        assert!(decoder.names.dense.len() > 5_000);
        assert_eq!(decoder.names.get(5_000).map(|v| &**v), Some(RATINGS));
        assert_eq!(decoder.names_len(), 6_000);
    }
}
