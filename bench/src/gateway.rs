//! The P1–P3 gateway: one Envoy listener routing `svc-N.bench.svc.cluster.local` to
//! clusters named like Istio's (`outbound|9080||svc-N.bench.svc.cluster.local`), each a
//! local backend. The five variants differ only in the HTTP filter or the access loggers;
//! listener, routes and clusters (the controller's and the ALS cluster included) are the
//! same in all of them.

use std::path::Path;

use serde_json::{json, Value};

/// Envoy cluster of the lazyxds controller (HTTP/2).
pub const CONTROLLER_CLUSTER: &str = "lazyxds_controller";
/// Envoy cluster of the access-log service, named as the original lazyxds named it.
pub const ALS_CLUSTER: &str = "lazyxds-accesslog-service";
/// The ALS `log_name` the original lazyxds used.
pub const ALS_LOG_NAME: &str = "http_envoy_accesslog";

/// The original lazyxds egress gateway's stdout access-log line (Istio's long format).
pub const FILE_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// What the gateway does besides routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    /// (a) router only.
    NoFilter,
    /// (b) the lazyxds filter loaded with `report: false` (the V8 floor).
    FilterInert,
    /// (c) the lazyxds filter reporting to the controller.
    Filter,
    /// (d) `envoy.access_loggers.http_grpc` with Envoy's default buffering.
    Als,
    /// (e) (d) plus the stdout file access log: exactly what the original shipped.
    AlsFile,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::NoFilter,
        Variant::FilterInert,
        Variant::Filter,
        Variant::Als,
        Variant::AlsFile,
    ];

    /// `a` … `e`.
    pub fn letter(self) -> &'static str {
        match self {
            Variant::NoFilter => "a",
            Variant::FilterInert => "b",
            Variant::Filter => "c",
            Variant::Als => "d",
            Variant::AlsFile => "e",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::NoFilter => "no filter",
            Variant::FilterInert => "filter, report:false",
            Variant::Filter => "lazyxds filter",
            Variant::Als => "gRPC ALS (defaults)",
            Variant::AlsFile => "gRPC ALS + stdout log",
        }
    }

    fn wasm(self) -> Option<bool> {
        match self {
            Variant::FilterInert => Some(false),
            Variant::Filter => Some(true),
            _ => None,
        }
    }

    fn als(self) -> bool {
        matches!(self, Variant::Als | Variant::AlsFile)
    }
}

/// The mesh services of the gateway: `svc-0.bench.svc.cluster.local` …
pub fn service_host(i: usize) -> String {
    format!("svc-{i}.bench.svc.cluster.local")
}

/// The bench mesh as a `lazyxds run --file` topology: namespace `bench` (opted in, mesh
/// ALLOW_ANY), one Deployment per client pod at each source address, services `svc-N`
/// (port 9080, one pod each). With it the controller works as deployed: it attributes
/// edges to workloads, writes Sidecars and pushes the namespace table the filter routes by.
pub fn topology(sources: &[std::net::Ipv4Addr], services: usize) -> String {
    let mut out = String::from(
        "mesh:\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n\
         gateway: {host: lazyxds-gateway.lazyxds-system.svc.cluster.local, namespace: lazyxds-system, port: 8080}\n\
         namespaces:\n  - {name: bench, annotations: {lazyxds.io/enabled: \"true\"}}\n\
         workloads:\n",
    );
    for (k, ip) in sources.iter().enumerate() {
        out.push_str(&format!(
            "  - {{kind: Deployment, namespace: bench, name: client-{k}, labels: {{app: client-{k}}}, serviceAccount: client, pods: [{{ip: {ip}}}]}}\n"
        ));
    }
    for i in 0..services {
        out.push_str(&format!(
            "  - {{kind: Deployment, namespace: bench, name: svc-{i}, labels: {{app: svc-{i}}}, serviceAccount: svc-{i}, pods: [{{ip: 127.0.3.{}}}]}}\n",
            1 + i % 250
        ));
    }
    out.push_str("services:\n");
    for i in 0..services {
        out.push_str(&format!(
            "  - {{namespace: bench, name: svc-{i}, selector: {{app: svc-{i}}}, ports: [{{port: 9080, name: http}}]}}\n"
        ));
    }
    out
}

/// Istio's cluster name for service `i`, port 9080.
pub fn service_cluster(i: usize) -> String {
    format!("outbound|9080||{}", service_host(i))
}

/// Ports and files one gateway bootstrap needs.
#[derive(Debug, Clone)]
pub struct GatewayPorts<'a> {
    pub listen: u16,
    /// Where the filter's gRPC stream goes (the controller, or a proxy in front of it).
    pub controller: u16,
    /// Where the ALS stream goes (the sink, or a proxy in front of it).
    pub als: u16,
    /// One backend per service, in service order.
    pub backends: &'a [u16],
    pub wasm: &'a Path,
    /// Names the gateway in the filter's Hello.
    pub gateway_id: &'a str,
}

fn static_cluster(name: &str, port: u16, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}
            }}}]}]
        }
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// The lazyxds Wasm filter as `envoyfilter/local/gateway.yaml` loads it.
fn wasm_filter(path: &Path, report: bool, gateway_id: &str) -> Value {
    let mut cfg = json!({"controller_cluster": CONTROLLER_CLUSTER, "gateway_id": gateway_id});
    if !report {
        cfg["report"] = json!(false);
    }
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "lazyxds",
                "root_id": "lazyxds",
                "failure_policy": "FAIL_RELOAD",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": cfg.to_string()
                },
                "vm_config": {
                    "vm_id": "lazyxds",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": path.display().to_string()}}
                }
            }
        }
    })
}

/// The access loggers of the original lazyxds egress gateway: gRPC ALS with no buffer
/// settings (Envoy's defaults), and with `file` also the stdout text log.
fn access_logs(file: bool) -> Value {
    let mut logs = Vec::new();
    if file {
        logs.push(json!({
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": "/dev/stdout",
                "log_format": {"text_format": FILE_LOG_FORMAT}
            }
        }));
    }
    logs.push(json!({
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": ALS_LOG_NAME,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": ALS_CLUSTER}}
            }
        }
    }));
    Value::Array(logs)
}

/// The whole bootstrap (JSON, which Envoy reads as YAML). Admin on an ephemeral port
/// (the harness learns it from `--admin-address-path`).
pub fn bootstrap(variant: Variant, p: &GatewayPorts<'_>) -> Value {
    let mut filters = Vec::new();
    if let Some(report) = variant.wasm() {
        filters.push(wasm_filter(p.wasm, report, p.gateway_id));
    }
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut vhosts: Vec<Value> = (0..p.backends.len())
        .map(|i| {
            let host = service_host(i);
            json!({
                "name": format!("svc-{i}"),
                "domains": [host.clone(), format!("{host}:9080")],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": service_cluster(i)}}]
            })
        })
        .collect();
    vhosts.push(json!({
        "name": "not_found",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}]
    }));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "http_filters": filters,
        "route_config": {"name": "gateway", "virtual_hosts": vhosts}
    });
    if variant.als() {
        hcm["access_log"] = access_logs(variant == Variant::AlsFile);
    }
    let mut clusters = vec![
        static_cluster(CONTROLLER_CLUSTER, p.controller, true),
        static_cluster(ALS_CLUSTER, p.als, true),
    ];
    for (i, port) in p.backends.iter().enumerate() {
        clusters.push(static_cluster(&service_cluster(i), *port, false));
    }
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": p.listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm
                }]}]
            }],
            "clusters": clusters
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(variant: Variant) -> Value {
        bootstrap(
            variant,
            &GatewayPorts {
                listen: 1,
                controller: 2,
                als: 3,
                backends: &[10, 11, 12],
                wasm: Path::new("/x/f.wasm"),
                gateway_id: "gw",
            },
        )
    }

    fn hcm(v: &Value) -> &Value {
        &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    #[test]
    fn variants_differ_only_in_filter_and_access_log() {
        for v in Variant::ALL {
            let b = mk(v);
            let filters = hcm(&b)["http_filters"].as_array().unwrap();
            let has_wasm = filters.len() == 2;
            assert_eq!(has_wasm, v.wasm().is_some(), "{v:?}");
            let logs = hcm(&b)["access_log"].as_array().map_or(0, Vec::len);
            assert_eq!(logs, [0, 0, 0, 1, 2][v as usize], "{v:?}");
            // Same clusters and routes everywhere.
            assert_eq!(
                b["static_resources"]["clusters"],
                mk(Variant::NoFilter)["static_resources"]["clusters"]
            );
            assert_eq!(
                hcm(&b)["route_config"],
                hcm(&mk(Variant::NoFilter))["route_config"]
            );
        }
    }

    #[test]
    fn inert_filter_has_report_false_and_als_keeps_envoy_defaults() {
        let b = mk(Variant::FilterInert);
        let cfg = hcm(&b)["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .to_string();
        let cfg: Value = serde_json::from_str(&cfg).unwrap();
        assert_eq!(cfg["report"], false);
        let b = mk(Variant::AlsFile);
        let als = &hcm(&b)["access_log"][1]["typed_config"]["common_config"];
        assert_eq!(
            als["grpc_service"]["envoy_grpc"]["cluster_name"],
            ALS_CLUSTER
        );
        assert!(als.get("buffer_size_bytes").is_none());
        assert!(als.get("buffer_flush_interval").is_none());
        assert_eq!(
            hcm(&b)["access_log"][0]["typed_config"]["path"],
            "/dev/stdout"
        );
    }
}
