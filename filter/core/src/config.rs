//! The plugin configuration: JSON, parsed once in `on_configure`.

use serde::Deserialize;

/// Every setting of the filter; absent keys take the defaults below.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Envoy cluster (HTTP/2) of the controller's gRPC service. The default is the name
    /// istiod gives the controller Service, so a mesh needs no extra cluster.
    pub controller_cluster: String,
    /// Names this gateway in `Hello`; empty = Envoy's node id.
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
    /// The mesh's DNS suffix: short names become `name.ns.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// How long a request that needs the namespace table waits for it (a fresh worker,
    /// before the first push); then it goes on unchanged. 0: never wait.
    pub routing_wait_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            controller_cluster: "outbound|18000||lazyxds.lazyxds-system.svc.cluster.local".into(),
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
            // Syntax errors have no path ("?"): they are about the document itself.
            let field = match e.path().to_string() {
                p if p == "?" => ".".to_string(),
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
        range("flush_interval_ms", self.flush_interval_ms, 1, 60_000)?;
        range("refresh_interval_s", self.refresh_interval_s, 1, 86_400)?;
        range("max_edges", self.max_edges, 1, 1_000_000)?;
        range("max_batch_edges", self.max_batch_edges, 1, 10_000)?;
        range("max_batch_bytes", self.max_batch_bytes, 1_024, 4_000_000)?;
        range("max_inflight_batches", self.max_inflight_batches, 1, 64)?;
        range(
            "max_names_per_stream",
            self.max_names_per_stream,
            16,
            1_000_000,
        )?;
        range("ack_timeout_ms", self.ack_timeout_ms, 100, 600_000)?;
        range("routing_wait_ms", self.routing_wait_ms, 0, 10_000)?;
        let domain_ok = !self.cluster_domain.is_empty()
            && self.cluster_domain.len() <= 200
            && self
                .cluster_domain
                .split('.')
                .all(crate::authority::is_label);
        if !domain_ok {
            return Err(ConfigError {
                field: "cluster_domain".into(),
                message: "is not a DNS name (labels of letters, digits, '-')".into(),
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
        let json = r#"{"controller_cluster":"sink","gateway_id":"gw-1","flush_interval_ms":5,
            "refresh_interval_s":30,"max_edges":100,"max_batch_edges":10,"max_batch_bytes":2048,
            "max_inflight_batches":2,"max_names_per_stream":64,"ack_timeout_ms":500,
            "reconnect_max_backoff_ms":100,"report":false,"routing":false,
            "cluster_domain":"mesh.example","routing_wait_ms":0}"#;
        let want = Config {
            controller_cluster: "sink".into(),
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
}
