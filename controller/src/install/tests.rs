use serde_json::json;

use super::*;

fn mk_config(module: Module) -> InstallConfig {
    InstallConfig {
        module,
        ..InstallConfig::default()
    }
}

#[test]
fn the_default_plugin_configuration_names_the_controller_cluster() {
    assert_eq!(
        serde_json::Value::Object(plugin_config(&InstallConfig::default())),
        json!({
            "controller_cluster": "outbound|18000||lazyxds.lazyxds-system.svc.cluster.local",
            "flush_interval_ms": 20,
            "refresh_interval_s": 300,
        })
    );
    // The filter's own default is the same cluster: an install with defaults and a filter
    // without configuration agree.
    assert_eq!(
        lazyxds_filter_core::Config::default().controller_cluster,
        InstallConfig::default().controller_cluster()
    );
}

#[test]
fn parts_and_files() {
    let install = render(&mk_config(Module::ConfigMap(Some(
        b"\0asm\x01\0\0\0".to_vec(),
    ))))
    .unwrap();
    let files: Vec<&str> = install.files().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        files,
        [
            "namespace.yaml",
            "controller.yaml",
            "module.yaml",
            "filter.yaml",
            "routing.yaml",
            "gateway.yaml"
        ]
    );
    let wasm_plugin = render(&mk_config(Module::WasmPlugin {
        url: "oci://r/f:1".into(),
        sha256: None,
    }))
    .unwrap();
    // No module ConfigMap (the kill switch's ConfigMap has no binaryData).
    let modules = wasm_plugin
        .of_kind("ConfigMap")
        .filter(|m| m.object["binaryData"].is_object());
    assert_eq!(modules.count(), 0);
    assert_eq!(wasm_plugin.of_kind("WasmPlugin").count(), 1);
    assert_eq!(
        wasm_plugin.of_kind("EnvoyFilter").count(),
        1,
        "the routing's only"
    );

    // Switching to a WasmPlugin removes the module file of an earlier render.
    let dir = tempfile::tempdir().unwrap();
    install.write_dir(dir.path()).unwrap();
    std::fs::write(dir.path().join("README.md"), "mine").unwrap();
    wasm_plugin.write_dir(dir.path()).unwrap();
    assert!(!dir.path().join("module.yaml").exists());
    assert!(
        dir.path().join("README.md").exists(),
        "other files are left alone"
    );
}

#[test]
fn module_urls_and_digests_are_checked() {
    let bad = |url: &str, sha: Option<&str>| {
        render(&mk_config(Module::WasmPlugin {
            url: url.into(),
            sha256: sha.map(str::to_string),
        }))
        .unwrap_err()
        .to_string()
    };
    assert!(bad("ftp://x/f.wasm", None).contains("--module-url"));
    assert!(bad("https://x/f.wasm", None).contains("--module-sha256"));
    assert!(bad("oci://x/f:1", Some("ABC")).contains("64 lowercase hex"));
    let sha = sha256_hex(b"module");
    assert_eq!(sha.len(), 64);
    render(&mk_config(Module::WasmPlugin {
        url: "https://x/f.wasm".into(),
        sha256: Some(sha),
    }))
    .unwrap();
}

#[test]
fn sha256_is_the_standard_one() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn uninstall_never_deletes_the_namespace_unless_asked() {
    let config = UninstallConfig {
        install: InstallConfig::default(),
        delete_namespace: false,
    };
    let refs = uninstall(&config, &[]).unwrap();
    assert!(!refs.iter().any(|r| r.kind == "Namespace"));
    assert_eq!(refs[0].kind, "Deployment");
    let owned = [ObjectRef::new(
        "networking.istio.io/v1",
        "Sidecar",
        Some("shop"),
        "lazyxds-deployment-web",
    )];
    let refs = uninstall(
        &UninstallConfig {
            delete_namespace: true,
            ..config
        },
        &owned,
    )
    .unwrap();
    assert_eq!(refs.last().unwrap().kind, "Namespace");
    let sidecar = refs.iter().position(|r| r.kind == "Sidecar").unwrap();
    let gateway = refs
        .iter()
        .position(|r| r.kind == "Deployment" && r.name == "lazyxds-gateway")
        .unwrap();
    assert!(sidecar < gateway);
}
