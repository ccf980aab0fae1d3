//! Every Envoy configuration lazyxds ships is accepted by the real Envoy with the real
//! module: `envoy --mode validate` builds the whole config and runs the plugin's
//! `on_configure`, so a plugin configuration the filter refuses fails here too.
//!
//! - the local gateway bootstrap (`envoyfilter/local/gateway.yaml`, tests and demo);
//! - docker-compose's Envoy config (`envoyfilter/compose/envoy.yaml`), which is generated
//!   from that template (drift-checked here; `LAZYXDS_BLESS=1` rewrites it) and agrees
//!   with `docker-compose.yaml` and the compose topology;
//! - the install's EnvoyFilters (module, catch-all route) applied to a gateway bootstrap
//!   the way istiod would, and the WasmPlugin's configuration.
//!
//! Docker cannot run here: compose itself is exercised only through these checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use lazyxds_e2e::gateway::{self, UPSTREAMS};
use lazyxds_e2e::{paths, Envoy};
use serde::Deserialize;
use serde_json::{json, Value};

fn root() -> PathBuf {
    paths::workspace_root()
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap()
}

fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

async fn assert_valid(what: &str, config: &str) {
    let report = Envoy::validate(config).await.unwrap();
    assert!(
        report.status.is_some_and(|s| s.success()),
        "{what}: envoy --mode validate refused it ({:?}):\n{}\n--- config ---\n{config}",
        report.status,
        report.log
    );
}

async fn assert_invalid(what: &str, config: &str, want_in_log: &str) {
    let report = Envoy::validate(config).await.unwrap();
    assert!(
        report.status.is_some_and(|s| !s.success()),
        "{what}: envoy --mode validate accepted it:\n{}",
        report.log
    );
    assert!(report.log.contains(want_in_log), "{what}:\n{}", report.log);
}

/// Every HTTP filter loading a Wasm module, for each: `f(config)`.
fn wasm_configs(bootstrap: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    for l in bootstrap["static_resources"]["listeners"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        for chain in l["filter_chains"].as_array_mut().into_iter().flatten() {
            for nf in chain["filters"].as_array_mut().into_iter().flatten() {
                for hf in nf["typed_config"]["http_filters"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    let is_wasm = hf["typed_config"]["@type"]
                        == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
                    if is_wasm {
                        f(&mut hf["typed_config"]["config"]);
                    }
                }
            }
        }
    }
}

/// Points every Wasm filter that loads `expected` at the real module instead.
fn use_real_module(bootstrap: &mut Value, expected: &str) -> usize {
    let wasm = paths::wasm_path().unwrap().display().to_string();
    let mut n = 0;
    wasm_configs(bootstrap, &mut |config| {
        let file = &mut config["vm_config"]["code"]["local"]["filename"];
        assert_eq!(file, expected, "the module path the config expects");
        *file = json!(wasm);
        n += 1;
    });
    n
}

// ---- the local gateway ----------------------------------------------------------------

#[tokio::test]
async fn the_local_gateway_bootstrap_is_valid() {
    let config = gateway::GatewayConfig {
        listen_port: 18081,
        admin_port: 18082,
        controller_port: 18083,
        wasm_path: Some(paths::wasm_path().unwrap()),
        plugin_config: gateway::plugin_config(json!({})),
        backend_ports: UPSTREAMS
            .iter()
            .enumerate()
            .map(|(i, (_, c))| (c.to_string(), 19000 + i as u16))
            .collect(),
    };
    assert_valid("envoyfilter/local/gateway.yaml", &config.render().unwrap()).await;
    // Issue 15 item 10: values the controller refuses on the wire passed validation,
    // then every stream was refused. The filter holds them to the same limits
    // (lazyxds_proto::limits).
    for (overrides, field) in [
        (json!({"gateway_id": "g".repeat(1025)}), "gateway_id"),
        (
            json!({"max_names_per_stream": 100_001}),
            "max_names_per_stream",
        ),
    ] {
        let bad = gateway::GatewayConfig {
            plugin_config: gateway::plugin_config(overrides),
            backend_ports: config.backend_ports.clone(),
            wasm_path: config.wasm_path.clone(),
            ..config
        };
        assert_invalid(field, &bad.render().unwrap(), field).await;
    }
    // Validation runs the plugin's on_configure: a configuration it refuses fails here.
    let bad = gateway::GatewayConfig {
        plugin_config: r#"{"no_such_field":1}"#.into(),
        ..config
    };
    assert_invalid(
        "a bad plugin configuration",
        &bad.render().unwrap(),
        "no_such_field",
    )
    .await;
}

// ---- docker-compose -------------------------------------------------------------------

const COMPOSE_DIR: &str = "envoyfilter/compose";
/// Where the compose gateway mounts the module.
const COMPOSE_WASM: &str = "/etc/envoy/lazyxds_filter.wasm";
/// Each cluster of the template → the compose service answering for it.
const COMPOSE_ENDPOINTS: [(&str, &str); 7] = [
    ("lazyxds_controller", "controller"),
    (
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "reviews-v1",
    ),
    (
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "reviews-v2",
    ),
    (
        "outbound|9080||ratings.default.svc.cluster.local",
        "ratings",
    ),
    (
        "outbound|9080||details.default.svc.cluster.local",
        "details",
    ),
    (
        "outbound|9080||productpage.default.svc.cluster.local",
        "productpage",
    ),
    ("PassthroughCluster", "external"),
];
const ECHO_PORT: u16 = 5678;
const CONTROLLER_GRPC_PORT: u16 = 18000;

/// compose's Envoy config: the local template with compose's ports and module path, then
/// compose's addresses (listen everywhere; every cluster resolves its service by DNS).
fn compose_envoy_config() -> String {
    let token = std::fs::read_to_string(root().join(COMPOSE_DIR).join("edge-token")).unwrap();
    let plugin = json!({
        "controller_cluster": gateway::CONTROLLER_CLUSTER,
        "controller_token": token.trim_end(),
        "gateway_id": "compose-gateway",
        "flush_interval_ms": 20,
        "refresh_interval_s": 5,
    });
    let mut vars: BTreeMap<&str, String> = BTreeMap::from([
        ("LISTEN_PORT", "8080".to_string()),
        ("ADMIN_PORT", "9901".to_string()),
        ("CONTROLLER_PORT", CONTROLLER_GRPC_PORT.to_string()),
        ("WASM_PATH", COMPOSE_WASM.to_string()),
        ("PLUGIN_CONFIG", plugin.to_string().replace('\'', "''")),
    ]);
    for (placeholder, _) in UPSTREAMS {
        vars.insert(placeholder, ECHO_PORT.to_string());
    }
    let text = gateway::render(gateway::TEMPLATE, &vars, true).unwrap();
    let mut v = yaml(&text);
    v["admin"]["address"]["socket_address"]["address"] = json!("0.0.0.0");
    for l in v["static_resources"]["listeners"].as_array_mut().unwrap() {
        l["address"]["socket_address"]["address"] = json!("0.0.0.0");
    }
    let endpoints: BTreeMap<&str, &str> = COMPOSE_ENDPOINTS.into_iter().collect();
    let clusters = v["static_resources"]["clusters"].as_array_mut().unwrap();
    let names: BTreeSet<String> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        endpoints.keys().map(|k| k.to_string()).collect(),
        "the template's clusters changed: map each to a compose service"
    );
    for c in clusters {
        let host = endpoints[c["name"].as_str().unwrap()];
        c["type"] = json!("STRICT_DNS");
        c["dns_lookup_family"] = json!("V4_ONLY");
        for group in c["load_assignment"]["endpoints"].as_array_mut().unwrap() {
            for e in group["lb_endpoints"].as_array_mut().unwrap() {
                e["endpoint"]["address"]["socket_address"]["address"] = json!(host);
            }
        }
    }
    format!(
        "# Generated from envoyfilter/local/gateway.yaml (the bootstrap the real-Envoy tests \
         run) by\n# tests/tests/validate.rs: `make manifests` regenerates it, `make test` \
         checks it. Do not edit.\n# compose's addresses: listen on 0.0.0.0, clusters \
         resolve the compose services by DNS.\n{}",
        serde_norway::to_string(&v).unwrap()
    )
}

#[test]
fn compose_envoy_config_is_generated_from_the_local_template() {
    let want = compose_envoy_config();
    let path = root().join(COMPOSE_DIR).join("envoy.yaml");
    if std::env::var_os("LAZYXDS_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is not the local template rendered for compose: run `make manifests`\n{want}",
        path.display()
    );
}

#[tokio::test]
async fn compose_envoy_config_is_valid() {
    let text = std::fs::read_to_string(root().join(COMPOSE_DIR).join("envoy.yaml")).unwrap();
    let mut v = yaml(&text);
    assert_eq!(use_real_module(&mut v, COMPOSE_WASM), 1);
    assert_valid(
        "envoyfilter/compose/envoy.yaml",
        &serde_norway::to_string(&v).unwrap(),
    )
    .await;
}

/// docker-compose.yaml, envoy.yaml and the topology agree: the client has the pod address
/// of the topology's client, every cluster's endpoint is a compose service listening on
/// that port, the module is mounted where envoy.yaml loads it, the client's hosts are the
/// gateway's.
#[test]
fn compose_files_agree() {
    let dir = root().join(COMPOSE_DIR);
    let compose = yaml(&std::fs::read_to_string(dir.join("docker-compose.yaml")).unwrap());
    let envoy = yaml(&std::fs::read_to_string(dir.join("envoy.yaml")).unwrap());
    let topology_text = std::fs::read_to_string(dir.join("topology.yaml")).unwrap();
    // The controller accepts it (the same parser as `lazyxds run --file`).
    lazyxds_index::Topology::from_yaml(&topology_text, "topology.yaml").unwrap();
    let services = compose["services"].as_object().unwrap();
    let ip = |svc: &str| services[svc]["networks"]["mesh"]["ipv4_address"].as_str();

    // The client is the topology's client pod.
    let topo: Value = yaml(&topology_text);
    let client_pod = topo["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "client")
        .unwrap()["pods"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ip("client"), Some(client_pod.as_str()));
    let subnet = compose["networks"]["mesh"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap();
    assert!(subnet.starts_with(&client_pod[..client_pod.rfind('.').unwrap()]));

    // Every cluster endpoint is a service, on the port it listens on.
    for c in envoy["static_resources"]["clusters"].as_array().unwrap() {
        let sa = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        let host = sa["address"].as_str().unwrap();
        let port = sa["port_value"].as_u64().unwrap();
        let svc = services
            .get(host)
            .unwrap_or_else(|| panic!("cluster {}: no compose service {host}", c["name"]));
        if host == "controller" {
            assert_eq!(port, u64::from(CONTROLLER_GRPC_PORT));
            let env = &svc["environment"];
            assert_eq!(env["LAZYXDS_GRPC_ADDR"], format!("0.0.0.0:{port}"));
        } else {
            let listen = format!("-listen=:{port}");
            assert!(
                svc["command"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| *a == listen),
                "{host} must listen on {port}"
            );
        }
    }

    // The controller reads the topology from where compose mounts it.
    let ctl = &services["controller"];
    let cmd: Vec<&str> = ctl["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let file = cmd[cmd.iter().position(|a| *a == "--file").unwrap() + 1];
    let mounts: Vec<&str> = ctl["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(mounts.contains(&format!("./topology.yaml:{file}:ro").as_str()));
    // The controller takes streams only with the token the gateway's plugin sends.
    let env = &ctl["environment"];
    assert_eq!(env["LAZYXDS_EDGE_AUTH"], "token");
    let token_path = env["LAZYXDS_EDGE_TOKEN_FILE"].as_str().unwrap();
    assert!(mounts.contains(&format!("./edge-token:{token_path}:ro").as_str()));
    assert!(
        serde_json::to_string(&envoy).unwrap().contains(
            std::fs::read_to_string(dir.join("edge-token"))
                .unwrap()
                .trim_end()
        ),
        "envoy.yaml's plugin configuration does not carry the token"
    );
    assert_eq!(
        ctl["image"],
        format!("ghcr.io/lazyxds/lazyxds:{}", env!("CARGO_PKG_VERSION"))
    );

    // The gateway mounts the module (the `make wasm` output) where envoy.yaml loads it.
    let gw_mounts: Vec<&str> = services["gateway"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(gw_mounts.contains(
        &format!("../../target/wasm32-wasip1/wasm/lazyxds_filter.wasm:{COMPOSE_WASM}:ro").as_str()
    ));
    let mut loads = Vec::new();
    let mut envoy_mut = envoy.clone();
    wasm_configs(&mut envoy_mut, &mut |c| {
        loads.push(c["vm_config"]["code"]["local"]["filename"].clone())
    });
    assert_eq!(loads, [json!(COMPOSE_WASM)]);
    assert_eq!(
        services["gateway"]["image"],
        format!("docker.io/envoyproxy/envoy:v{}", envoy_version())
    );

    // The client asks for hosts the gateway has (one of each kind of answer).
    let hosts: Vec<String> = services["client"]["environment"]["HOSTS"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let vhosts = &envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"];
    for h in &hosts {
        let matched = vhosts.as_array().unwrap().iter().any(|vh| {
            vh["domains"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d == h.as_str())
        });
        let bare = h.split(':').next().unwrap();
        assert!(
            matched || bare.starts_with("unknown."),
            "client host {h} has no virtual host"
        );
    }
    // Every service the client learns is one the topology has.
    let topo_services: BTreeSet<String> = topo["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}.{}.svc.cluster.local",
                s["name"].as_str().unwrap(),
                s["namespace"].as_str().unwrap()
            )
        })
        .collect();
    for h in &hosts {
        let bare = h.split(':').next().unwrap();
        if bare.ends_with(".default.svc.cluster.local") && !bare.starts_with("unknown.") {
            assert!(topo_services.contains(bare), "{bare} not in topology.yaml");
        }
    }
}

/// ENVOY_VERSION from the Makefile (the Envoy the tests run).
fn envoy_version() -> String {
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    makefile
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION"))
        .and_then(|l| l.split(":=").nth(1))
        .unwrap()
        .trim()
        .to_string()
}

// ---- the install's EnvoyFilters and WasmPlugin -----------------------------------------

fn lazyxds(args: &[&str]) -> String {
    let out = Command::new(paths::lazyxds_bin().unwrap())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lazyxds {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The install with the real module, one file per part.
fn install_dir(extra: &[&str]) -> (tempfile::TempDir, BTreeMap<String, Vec<Value>>) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = paths::wasm_path().unwrap();
    let mut args = vec![
        "install",
        "--wasm",
        wasm.to_str().unwrap(),
        "--out-dir",
        dir.path().to_str().unwrap(),
    ];
    args.extend(extra);
    lazyxds(&args);
    let parts = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                docs(&std::fs::read_to_string(&p).unwrap()),
            )
        })
        .collect();
    (dir, parts)
}

/// The gateway bootstrap EnvoyFilters are applied to: the local template without our
/// filter, listening on the egress port, plus the cluster istiod gives the controller's
/// Service (the plugin's `controller_cluster`).
fn gateway_base(port: u16, controller_cluster: &str) -> Value {
    let mut vars: BTreeMap<&str, String> = BTreeMap::from([
        ("LISTEN_PORT", port.to_string()),
        ("ADMIN_PORT", "15000".to_string()),
        ("CONTROLLER_PORT", "18000".to_string()),
        ("WASM_PATH", String::new()),
        ("PLUGIN_CONFIG", String::new()),
    ]);
    for (i, (placeholder, _)) in UPSTREAMS.iter().enumerate() {
        vars.insert(placeholder, (19100 + i).to_string());
    }
    let mut v = yaml(&gateway::render(gateway::TEMPLATE, &vars, false).unwrap());
    v["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": controller_cluster,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            },
            "load_assignment": {"cluster_name": controller_cluster, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}}},
            ]}]},
        }));
    v
}

/// Applies EnvoyFilters' patches as istiod does for a gateway (lower `priority` first, in
/// order), for the operations lazyxds uses; any other operation fails the test (extend
/// this when adding one).
fn apply_envoy_filters(base: &mut Value, filters: &[Value]) {
    let mut filters: Vec<&Value> = filters.iter().collect();
    filters.sort_by_key(|f| f["spec"]["priority"].as_i64().unwrap_or(0));
    let port = base["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap();
    for f in filters {
        for p in f["spec"]["configPatches"].as_array().unwrap() {
            assert_eq!(p["match"]["context"], "GATEWAY");
            let value = p["patch"]["value"].clone();
            let op = (
                p["applyTo"].as_str().unwrap(),
                p["patch"]["operation"].as_str().unwrap(),
            );
            match op {
                ("HTTP_FILTER", "INSERT_BEFORE") => {
                    let m = &p["match"]["listener"];
                    assert_eq!(m["portNumber"].as_u64(), Some(port), "listener port");
                    assert_eq!(
                        m["filterChain"]["filter"]["name"],
                        "envoy.filters.network.http_connection_manager"
                    );
                    let before = m["filterChain"]["filter"]["subFilter"]["name"].clone();
                    let hcm = &mut base["static_resources"]["listeners"][0]["filter_chains"][0]
                        ["filters"][0]["typed_config"];
                    let chain = hcm["http_filters"].as_array_mut().unwrap();
                    let at = chain.iter().position(|h| h["name"] == before).unwrap();
                    chain.insert(at, value);
                }
                ("CLUSTER", "ADD") => base["static_resources"]["clusters"]
                    .as_array_mut()
                    .unwrap()
                    .push(value),
                ("VIRTUAL_HOST", "ADD") => {
                    let m = &p["match"]["routeConfiguration"];
                    assert_eq!(m["portNumber"].as_u64(), Some(port), "route port");
                    let rc = &mut base["static_resources"]["listeners"][0]["filter_chains"][0]
                        ["filters"][0]["typed_config"]["route_config"];
                    let vhosts = rc["virtual_hosts"].as_array_mut().unwrap();
                    // Istio's gateway routes have no catch-all of their own: the template's
                    // (a local stand-in) makes way, as two `*` domains are refused.
                    if value["domains"].as_array().unwrap().contains(&json!("*")) {
                        vhosts
                            .retain(|vh| !vh["domains"].as_array().unwrap().contains(&json!("*")));
                    }
                    vhosts.push(value);
                }
                other => panic!(
                    "EnvoyFilter {}: patch {other:?} not assembled",
                    f["metadata"]["name"]
                ),
            }
        }
    }
}

fn plugin_of(filter: &Value) -> Value {
    let cfg = filter["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
        ["configuration"]["value"]
        .as_str()
        .unwrap();
    serde_json::from_str(cfg).unwrap()
}

/// The module EnvoyFilter and the routing's catch-all EnvoyFilter, applied to a gateway.
#[tokio::test]
async fn the_install_envoy_filters_applied_to_a_gateway_are_valid() {
    let (_dir, parts) = install_dir(&[]);
    let module_filter = parts["filter.yaml"][0].clone();
    assert_eq!(module_filter["kind"], "EnvoyFilter");
    let routing: Vec<Value> = parts["routing.yaml"]
        .iter()
        .filter(|d| d["kind"] == "EnvoyFilter")
        .cloned()
        .collect();
    assert!(!routing.is_empty());
    // Where the gateway Deployment mounts the module.
    let gw = parts["gateway.yaml"]
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let mount = gw["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    let key = gw["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"][0]["path"]
        .as_str()
        .unwrap();
    let module_path = format!("{mount}/{key}");
    let plugin = plugin_of(&module_filter);
    let cluster = plugin["controller_cluster"].as_str().unwrap();
    let port = module_filter["spec"]["configPatches"][0]["match"]["listener"]["portNumber"]
        .as_u64()
        .unwrap() as u16;

    let mut all = vec![module_filter.clone()];
    all.extend(routing.clone());
    let mut bootstrap = gateway_base(port, cluster);
    apply_envoy_filters(&mut bootstrap, &all);
    assert_eq!(use_real_module(&mut bootstrap, &module_path), 1);
    // Our filter first, the forward proxy after it, the router last.
    let chain: Vec<String> = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
        ["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        chain,
        [
            "lazyxds",
            "envoy.filters.http.dynamic_forward_proxy",
            "envoy.filters.http.router"
        ]
    );
    assert_valid(
        "the install's EnvoyFilters on a gateway",
        &serde_norway::to_string(&bootstrap).unwrap(),
    )
    .await;

    // Non-default flags render a configuration the module accepts too.
    let (_dir2, parts2) = install_dir(&[
        "--flush-interval-ms",
        "50",
        "--refresh-interval-s",
        "30",
        "--cluster-domain",
        "corp.example",
        "--filter-config",
        r#"{"max_edges":50000}"#,
        "--failure-policy",
        "FAIL_OPEN",
    ]);
    let f2 = parts2["filter.yaml"][0].clone();
    let mut b2 = gateway_base(port, plugin_of(&f2)["controller_cluster"].as_str().unwrap());
    apply_envoy_filters(&mut b2, &[f2]);
    use_real_module(&mut b2, &module_path);
    assert_valid(
        "the install with flags",
        &serde_norway::to_string(&b2).unwrap(),
    )
    .await;
}

/// The WasmPlugin's configuration, as the Wasm filter Istio builds from it.
#[tokio::test]
async fn the_wasm_plugin_configuration_is_valid() {
    let text = std::fs::read_to_string(root().join("envoyfilter/wasmplugin/filter.yaml")).unwrap();
    let wp = docs(&text).remove(0);
    assert_eq!(wp["kind"], "WasmPlugin");
    let spec = &wp["spec"];
    let name = spec["pluginName"].as_str().unwrap();
    let policy = match spec["failStrategy"].as_str().unwrap() {
        "FAIL_CLOSE" => "FAIL_CLOSED",
        other => other,
    };
    let port = spec["match"][0]["ports"][0]["number"].as_u64().unwrap() as u16;
    let filter = json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "wasmplugin-equivalent"},
        "spec": {"configPatches": [{
            "applyTo": "HTTP_FILTER",
            "match": {"context": "GATEWAY", "listener": {"portNumber": port, "filterChain": {"filter": {
                "name": "envoy.filters.network.http_connection_manager",
                "subFilter": {"name": "envoy.filters.http.router"}}}}},
            "patch": {"operation": "INSERT_BEFORE", "value": {
                "name": name,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": name,
                        "root_id": name,
                        "failure_policy": policy,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": spec["pluginConfig"].to_string(),
                        },
                        "vm_config": {
                            "vm_id": name,
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": "oci-module"}},
                        },
                    },
                },
            }},
        }]},
    });
    let cluster = spec["pluginConfig"]["controller_cluster"].as_str().unwrap();
    let mut bootstrap = gateway_base(port, cluster);
    apply_envoy_filters(&mut bootstrap, &[filter]);
    assert_eq!(use_real_module(&mut bootstrap, "oci-module"), 1);
    assert_valid(
        "the WasmPlugin's configuration",
        &serde_norway::to_string(&bootstrap).unwrap(),
    )
    .await;
}
