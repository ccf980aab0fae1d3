//! The crate's one error type.

/// Everything that can go wrong in this crate: invalid input, never I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A `lazyxds.io/*` annotation with a value we cannot use. `object` names the kind and
    /// `ns/name` (e.g. `Deployment shop/cart`), so an operator can find it.
    #[error("{object}: annotation {annotation}: {value:?} {reason}")]
    Annotation {
        object: String,
        annotation: &'static str,
        value: String,
        reason: String,
    },
    /// A topology file that is not YAML at all.
    #[error("{file}: invalid YAML: {message}")]
    Yaml { file: String, message: String },
    /// A topology file with a bad object: `location` is `section[i] (ns/name): field`.
    #[error("{file}: {location}: {message}")]
    Topology {
        file: String,
        location: String,
        message: String,
    },
    /// Rendering a value to YAML or JSON failed.
    #[error("cannot serialize {what}: {message}")]
    Serialize { what: String, message: String },
}

/// `Topology::from_yaml` errors are ordinary [`Error`]s; the alias keeps call sites readable.
pub type TopologyError = Error;
