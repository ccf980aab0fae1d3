//! The plugin configuration: JSON, parsed once in `on_configure`.

use lazyxds_proto::limits::{MAX_BATCH_BYTES, MAX_BATCH_EDGES, MAX_NAME_BYTES, MAX_STREAM_NAMES};
use serde::Deserialize;

/// Every setting of the filter; absent keys take the defaults below.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Envoy cluster (HTTP/2) of the controller's gRPC service. The default is the name
    /// istiod gives the controller Service, so a mesh needs no extra cluster.
    pub controller_cluster: String,
    /// Sent as `authorization: Bearer <token>` on every edge stream, for a controller run
    /// with `--edge-auth token` (outside a mesh; in one, the mesh's mTLS identifies the
    /// gateway and this stays empty). Never shown by `Debug`.
    pub controller_token: Token,
    /// Names this gateway in `Hello`; empty = Envoy's node id. At most
    /// [`MAX_NAME_BYTES`]: the controller refuses a longer `Hello`.
    pub gateway_id: String,
    /// How often a worker flushes new edges (a new edge reaches the controller within
    /// about one interval).
    pub flush_interval_ms: u64,
    /// A known edge is reported again (with its accumulated count) at most this often.
    /// What a refresh carries is only needed coarsely: request counts for the metrics and
    /// last-seen for an expiry (off by default, TTL/10 granularity). A new edge never waits
    /// for it, and a reconnect re-sends the whole table anyway.
    pub refresh_interval_s: u64,
    /// Capacity of the per-worker dedup table (LRU).
    pub max_edges: usize,
    /// Edges per gRPC message.
    pub max_batch_edges: usize,
    /// Encoded bytes per gRPC message (tonic refuses more than 4 MiB by default).
    pub max_batch_bytes: usize,
    /// Batches sent and not yet acked.
    pub max_inflight_batches: usize,
    /// Dictionary entries per stream; past it the stream is recycled.
    pub max_names_per_stream: usize,
    /// A batch not acked within this closes the stream (it is re-sent on the next one).
    pub ack_timeout_ms: u64,
    /// Upper bound of the reconnect backoff while the controller is unreachable.
    pub reconnect_max_backoff_ms: u64,
    /// false: the filter is loaded but does nothing per request (for measuring the Wasm
    /// floor).
    pub report: bool,
    /// First-call routing: expand short authorities (`reviews:9080`, `reviews.ns`, ...) to
    /// the FQDN of the caller's namespace, and apply the caller's outbound policy to hosts
    /// the mesh does not know. Needs the controller's namespace table, so a worker keeps
    /// its stream open even with nothing to report.
    pub routing: bool,
    /// The mesh's DNS suffix, lower case (as the controller's `--cluster-domain`): short
    /// names become `name.ns.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// How long a request that needs the namespace table waits for it (a fresh worker,
    /// before the first push); then it goes on unchanged. 0: never wait.
    pub routing_wait_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            controller_cluster: "outbound|18000||lazyxds.lazyxds-system.svc.cluster.local".into(),
            controller_token: Token::default(),
            gateway_id: String::new(),
            flush_interval_ms: 20,
            refresh_interval_s: 300,
            max_edges: 10_000,
            max_batch_edges: 1_000,
            max_batch_bytes: 1 << 20,
            max_inflight_batches: 4,
            max_names_per_stream: 100_000,
            ack_timeout_ms: 10_000,
            reconnect_max_backoff_ms: 2_000,
            report: true,
            routing: true,
            cluster_domain: "cluster.local".into(),
            routing_wait_ms: 200,
        }
    }
}

/// The controller token: a secret, so `Debug` says only whether there is one.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl core::fmt::Debug for Token {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Token(none)"
        } else {
            "Token(..)"
        })
    }
}

impl Token {
    /// The `authorization` value to send, if there is a token.
    pub fn bearer(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| format!("Bearer {}", self.0))
    }
}

/// A configuration the plugin refuses, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The JSON path of the bad value (`.` for the document itself).
    pub field: String,
    pub message: String,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "invalid lazyxds plugin configuration: field `{}`: {}",
            self.field, self.message
        )
    }
}

impl Config {
    /// Parses the plugin configuration; empty or whitespace-only means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        // serde would also accept a positional array for a struct; only objects are valid.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ConfigError {
                field: ".".into(),
                message: "expected a JSON object, e.g. {\"controller_cluster\": \"...\"}".into(),
            });
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let config: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            // Syntax errors have no path ("?"): they are about the document itself. An
            // unknown key that is empty is shown quoted, so the field is never blank.
            let field = match e.path().to_string() {
                p if p == "?" => ".".to_string(),
                p if p.is_empty() => "\"\"".to_string(),
                p => p,
            };
            let message = e.into_inner().to_string();
            ConfigError { field, message }
        })?;
        de.end().map_err(|e| ConfigError {
            field: ".".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The `gateway_id` of `Hello`: the configured one, else Envoy's node id cut to
    /// [`MAX_NAME_BYTES`] (at a character boundary; a longer `Hello` would be refused),
    /// else `unknown`.
    pub fn gateway_id(&self, node_id: Option<&str>) -> String {
        if !self.gateway_id.is_empty() {
            return self.gateway_id.clone();
        }
        let Some(id) = node_id.filter(|id| !id.is_empty()) else {
            return "unknown".into();
        };
        let mut end = id.len().min(MAX_NAME_BYTES);
        while !id.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        id.get(..end).unwrap_or("unknown").to_string()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn range<T: PartialOrd + core::fmt::Display>(
            field: &str,
            value: T,
            min: T,
            max: T,
        ) -> Result<(), ConfigError> {
            if value < min || value > max {
                return Err(ConfigError {
                    field: field.into(),
                    message: format!("{value} is out of range, want {min}..={max}"),
                });
            }
            Ok(())
        }
        if self.controller_cluster.is_empty() {
            return Err(ConfigError {
                field: "controller_cluster".into(),
                message: "must name the Envoy cluster of the controller".into(),
            });
        }
        let token = self.controller_token.0.as_bytes();
        if !token.is_empty() && !lazyxds_proto::limits::is_token(token) {
            return Err(ConfigError {
                field: "controller_token".into(),
                message: format!(
                    "must be {}..={} bytes of printable ASCII without spaces (the controller's \
                     --edge-token-file; it is not shown here)",
                    lazyxds_proto::limits::MIN_TOKEN_BYTES,
                    lazyxds_proto::limits::MAX_TOKEN_BYTES
                ),
            });
        }
        range("flush_interval_ms", self.flush_interval_ms, 1, 60_000)?;
        range("refresh_interval_s", self.refresh_interval_s, 1, 86_400)?;
        // What the controller refuses on the wire is refused here (lazyxds_proto::limits),
        // so a configuration that loads is one whose streams are accepted.
        if self.gateway_id.len() > MAX_NAME_BYTES {
            return Err(ConfigError {
                field: "gateway_id".into(),
                message: format!(
                    "has {} bytes, more than the {MAX_NAME_BYTES} the controller accepts",
                    self.gateway_id.len()
                ),
            });
        }
        range("max_edges", self.max_edges, 1, 1_000_000)?;
        range("max_batch_edges", self.max_batch_edges, 1, MAX_BATCH_EDGES)?;
        range(
            "max_batch_bytes",
            self.max_batch_bytes,
            1_024,
            MAX_BATCH_BYTES,
        )?;
        range("max_inflight_batches", self.max_inflight_batches, 1, 64)?;
        range(
            "max_names_per_stream",
            self.max_names_per_stream,
            16,
            MAX_STREAM_NAMES,
        )?;
        range("ack_timeout_ms", self.ack_timeout_ms, 100, 600_000)?;
        range("routing_wait_ms", self.routing_wait_ms, 0, 10_000)?;
        // Lower case, as the controller's `--cluster-domain` wants it (a rewrite is lower
        // case: an upper-case domain here would name hosts the controller spells otherwise).
        let domain_ok = !self.cluster_domain.is_empty()
            && self.cluster_domain.len() <= 200
            && !self.cluster_domain.bytes().any(|b| b.is_ascii_uppercase())
            && self
                .cluster_domain
                .split('.')
                .all(crate::authority::is_label);
        if !domain_ok {
            return Err(ConfigError {
                field: "cluster_domain".into(),
                message: "is not a DNS name (lower-case labels of letters, digits, '-')".into(),
            });
        }
        range(
            "reconnect_max_backoff_ms",
            self.reconnect_max_backoff_ms,
            10,
            600_000,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_controller_token_is_checked_and_never_shown() {
        let secret = "tok-0123456789abcdef";
        let config =
            Config::parse(format!(r#"{{"controller_token":"{secret}"}}"#).as_bytes()).unwrap();
        assert_eq!(
            config.controller_token.bearer(),
            Some(format!("Bearer {secret}"))
        );
        assert!(!format!("{config:?}").contains(secret));
        assert_eq!(Config::default().controller_token.bearer(), None);
        for bad in ["short", "has a space in it ok", "ééééééééé"] {
            let err =
                Config::parse(format!(r#"{{"controller_token":"{bad}"}}"#).as_bytes()).unwrap_err();
            assert_eq!(err.field, "controller_token", "{bad}");
            assert!(!err.message.contains(bad), "{err}");
        }
    }

    #[test]
    fn empty_configuration_means_defaults() {
        for input in ["", "  \n", "{}"] {
            assert_eq!(
                Config::parse(input.as_bytes()),
                Ok(Config::default()),
                "{input:?}"
            );
        }
    }

    #[test]
    fn every_field_can_be_set() {
        let json = r#"{"controller_cluster":"sink","controller_token":"0123456789abcdef",
            "gateway_id":"gw-1","flush_interval_ms":5,
            "refresh_interval_s":30,"max_edges":100,"max_batch_edges":10,"max_batch_bytes":2048,
            "max_inflight_batches":2,"max_names_per_stream":64,"ack_timeout_ms":500,
            "reconnect_max_backoff_ms":100,"report":false,"routing":false,
            "cluster_domain":"mesh.example","routing_wait_ms":0}"#;
        let want = Config {
            controller_cluster: "sink".into(),
            controller_token: Token("0123456789abcdef".into()),
            gateway_id: "gw-1".into(),
            flush_interval_ms: 5,
            refresh_interval_s: 30,
            max_edges: 100,
            max_batch_edges: 10,
            max_batch_bytes: 2048,
            max_inflight_batches: 2,
            max_names_per_stream: 64,
            ack_timeout_ms: 500,
            reconnect_max_backoff_ms: 100,
            report: false,
            routing: false,
            cluster_domain: "mesh.example".into(),
            routing_wait_ms: 0,
        };
        assert_eq!(Config::parse(json.as_bytes()), Ok(want));
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let cases = [
            (
                r#"{"flush_interval_ms":"soon"}"#,
                "flush_interval_ms",
                "invalid type: string",
            ),
            (
                r#"{"no_such_field":1}"#,
                "no_such_field",
                "unknown field `no_such_field`",
            ),
            (
                r#"{"max_edges":0}"#,
                "max_edges",
                "0 is out of range, want 1..=1000000",
            ),
            (
                r#"{"max_batch_bytes":5000000}"#,
                "max_batch_bytes",
                "out of range",
            ),
            (
                r#"{"flush_interval_ms":-1}"#,
                "flush_interval_ms",
                "invalid value: integer `-1`",
            ),
            (
                r#"{"controller_cluster":""}"#,
                "controller_cluster",
                "must name",
            ),
            (r#"{"report":"yes"}"#, "report", "invalid type: string"),
            (
                r#"{"routing_wait_ms":60000}"#,
                "routing_wait_ms",
                "out of range",
            ),
            (
                r#"{"cluster_domain":"cluster..local"}"#,
                "cluster_domain",
                "is not a DNS name",
            ),
            (
                r#"{"cluster_domain":""}"#,
                "cluster_domain",
                "not a DNS name",
            ),
            (
                r#"{"max_names_per_stream":100001}"#,
                "max_names_per_stream",
                "out of range, want 16..=100000",
            ),
            (
                r#"{"max_batch_edges":10001}"#,
                "max_batch_edges",
                "out of range, want 1..=10000",
            ),
            (r#"{"max_edges":10"#, ".", "EOF"),
            ("not json", ".", "expected a JSON object"),
            (r#"[1,2]"#, ".", "expected a JSON object"),
            (r#"{"max_edges":1} x"#, ".", "trailing characters"),
        ];
        for (input, field, message) in cases {
            let err = Config::parse(input.as_bytes()).expect_err(input);
            assert_eq!(err.field, field, "input {input}: {err}");
            assert!(err.message.contains(message), "input {input}: {err}");
            assert!(
                err.to_string().contains(&format!("field `{field}`")),
                "{err}"
            );
        }
    }

    /// A gateway_id the controller would refuse in `Hello` (issue 15: it passed
    /// `envoy --mode validate`, then every stream was refused) is refused here; the
    /// longest it accepts loads.
    #[test]
    fn gateway_id_is_held_to_the_controllers_limit() {
        let id = |n: usize| format!(r#"{{"gateway_id":"{}"}}"#, "g".repeat(n));
        assert!(Config::parse(id(MAX_NAME_BYTES).as_bytes()).is_ok());
        let err = Config::parse(id(MAX_NAME_BYTES + 1).as_bytes()).unwrap_err();
        assert_eq!(err.field, "gateway_id");
        assert!(err.message.contains("more than the 1024"), "{err}");
    }

    /// The controller's `--cluster-domain` takes lower-case labels only, and a rewrite is
    /// lower case: `mesmRep` loaded, then rewrites left the domain as configured (found by
    /// `make fuzz`, authority).
    #[test]
    fn cluster_domain_is_lower_case_as_the_controller_wants_it() {
        for domain in ["Cluster.Local", "mesmRep", "cluster.LOCAL"] {
            let json = format!(r#"{{"cluster_domain":"{domain}"}}"#);
            let err = Config::parse(json.as_bytes()).unwrap_err();
            assert_eq!(err.field, "cluster_domain", "{domain}: {err}");
        }
        let ok = Config::parse(br#"{"cluster_domain":"corp-1.example"}"#).unwrap();
        assert_eq!(ok.cluster_domain, "corp-1.example");
    }

    /// An unknown key that is empty still names a field (found by `make fuzz`,
    /// plugin_config: the error said "field ``").
    #[test]
    fn an_empty_unknown_key_is_named() {
        let err = Config::parse(br#"{"":1}"#).unwrap_err();
        assert_eq!(err.field, r#""""#, "{err}");
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn the_node_id_is_cut_to_what_the_controller_accepts() {
        let config = Config::default();
        assert_eq!(config.gateway_id(Some("gw-1")), "gw-1");
        assert_eq!(config.gateway_id(None), "unknown");
        assert_eq!(config.gateway_id(Some("")), "unknown");
        let long = "é".repeat(MAX_NAME_BYTES); // 2 bytes each
        let cut = config.gateway_id(Some(&long));
        assert_eq!(cut.len(), MAX_NAME_BYTES);
        let odd = format!("x{long}");
        assert_eq!(config.gateway_id(Some(&odd)).len(), MAX_NAME_BYTES - 1);
        let set = Config {
            gateway_id: "mine".into(),
            ..Config::default()
        };
        assert_eq!(set.gateway_id(Some("node")), "mine");
    }
}
