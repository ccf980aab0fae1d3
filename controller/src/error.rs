//! The crate's error type: why a gateway's edge batch was refused.
//!
//! Every variant names the batch's `seq` and, where there is one, the index of the
//! offending name or edge, so the message alone (sent back as the gRPC status and logged)
//! is enough to find the bug in the gateway.

use std::sync::Arc;

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
        Self::REASONS[self.reason_index()]
    }
}

/// Why file mode (`run --file`, `report`) could not read or write its files.
#[derive(Debug, thiserror::Error)]
pub enum FileModeError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Sidecar {
        path: std::path::PathBuf,
        message: String,
    },
    /// Already names the file, object and field.
    #[error(transparent)]
    Topology(#[from] lazyxds_index::TopologyError),
    #[error("{path} is {size} bytes, more than --max-topology-bytes {max}")]
    TooLarge {
        path: std::path::PathBuf,
        size: u64,
        max: u64,
    },
    /// The parse thread ended without a result (it panicked).
    #[error("{path}: parsing failed: {message}")]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(
        "{file} lacks {removal} that have Sidecar files in {dir}: more than \
         --max-removal-percent {max_percent}; refusing to start (a truncated or empty \
         topology would remove their Sidecars and learned deps; fix the file or raise the flag)"
    )]
    Shrink {
        file: std::path::PathBuf,
        dir: std::path::PathBuf,
        removal: lazyxds_index::Removal,
        max_percent: u8,
    },
}
