//! The crate's error types: why a gateway's edge batch was refused (the pure decoder's,
//! [`lazyxds_index::decode`]), why file mode could not read or write.

pub use lazyxds_index::decode::{BatchError, NameField};

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
