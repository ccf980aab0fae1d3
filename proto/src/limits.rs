//! Limits of the `lazyxds.v1` stream that both ends must agree on: the filter's
//! configuration refuses a value the controller would refuse on the wire (else every
//! stream would be ended and no edge would ever arrive), and the controller accepts at
//! least these (its flags cannot go below them).

/// Longest string on the wire: a dictionary name (host, cluster, principal) or a `Hello`
/// field (`gateway_id`, `worker`). Hosts are at most 253 bytes, Istio's cluster names and
/// SPIFFE ids a little more; anything longer is a broken or hostile gateway.
pub const MAX_NAME_BYTES: usize = 1024;

/// Most dictionary names one stream may define (the filter recycles its stream before
/// it would define more). At most ~1 KiB each, this bounds one stream's dictionary on
/// either side to ~100 MiB; real names are ~50 bytes (~5 MiB).
pub const MAX_STREAM_NAMES: usize = 100_000;

/// Most edges in one batch.
pub const MAX_BATCH_EDGES: usize = 10_000;

/// Most encoded bytes of one batch the filter may build. The controller's message limit
/// (4 MiB by default, never less than this plus gRPC framing) accepts every such batch.
pub const MAX_BATCH_BYTES: usize = 4_000_000;

/// The gRPC message limit the controller never goes below: a full batch plus framing and
/// the message envelope, rounded up to 4 MiB (tonic's own default).
pub const MIN_CONTROLLER_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// An edge token (the controller's `--edge-token-file`, the filter's `controller_token`):
/// at least this long (shorter could be guessed) ...
pub const MIN_TOKEN_BYTES: usize = 16;
/// ... at most this long, printable ASCII without spaces: it travels as the value of an
/// `authorization: Bearer` header.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Whether `token` may be an edge token (length and characters, as above).
pub fn is_token(token: &[u8]) -> bool {
    (MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&token.len())
        && token.iter().all(u8::is_ascii_graphic)
}

// The controller's floor must hold the filter's largest batch.
const _: () = assert!(MIN_CONTROLLER_MESSAGE_BYTES > MAX_BATCH_BYTES + 1024);
