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

fn owned(api_version: &str, kind: &str, ns: &str, name: &str) -> ObjectRef {
    ObjectRef::new(api_version, kind, Some(ns), name)
}

#[test]
fn the_pre_delete_hook_deletes_what_the_controller_wrote_and_leaves_the_install_to_helm() {
    let sidecar = owned(
        "networking.istio.io/v1",
        "Sidecar",
        "shop",
        "lazyxds-deployment-web",
    );
    let catch_all = owned(
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        "shop",
        "lazyxds-deployment-web",
    );
    let route = owned(
        "networking.istio.io/v1",
        "VirtualService",
        "lazyxds-system",
        "lazyxds-route-api.shop.svc.cluster.local",
    );
    let placeholder = owned("v1", "Service", "lazyxds-system", "lazyxds-http-ports");
    // The install's own objects labelled ours (the routing's), at either API version.
    let install_gateway = owned(
        "networking.istio.io/v1beta1",
        "Gateway",
        "lazyxds-system",
        "lazyxds-gateway",
    );
    let install_catch_all = owned(
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        "lazyxds-system",
        "lazyxds-external",
    );
    let config = InstallConfig::default();
    let cases: [(&str, Vec<ObjectRef>, Vec<&ObjectRef>); 4] = [
        ("nothing listed", vec![], vec![]),
        (
            "only the install's",
            vec![install_gateway.clone(), install_catch_all.clone()],
            vec![],
        ),
        (
            "Sidecars, then catch-alls, then routes; the install's left out",
            vec![
                route.clone(),
                install_catch_all.clone(),
                placeholder.clone(),
                catch_all.clone(),
                install_gateway.clone(),
                sidecar.clone(),
            ],
            vec![&sidecar, &catch_all, &route, &placeholder],
        ),
        (
            "listed twice",
            vec![sidecar.clone(), sidecar.clone()],
            vec![&sidecar],
        ),
    ];
    for (what, listed, want) in cases {
        let got = written_by_controller(&config, &listed).unwrap();
        let want: Vec<ObjectRef> = want.into_iter().cloned().collect();
        assert_eq!(got, want, "{what}");
    }
    // The install's catch-all is named as the routing renders it.
    let rendered = render(&config).unwrap();
    assert!(
        rendered
            .objects
            .iter()
            .any(|m| m.kind() == "EnvoyFilter"
                && m.object["metadata"]["name"] == install_catch_all.name),
        "the routing's catch-all EnvoyFilter is not {}",
        install_catch_all.name
    );
}

#[test]
fn the_pre_delete_hook_waits_for_the_controller_until_its_timeout() {
    use std::time::Duration;
    let s = |n: &str| owned("networking.istio.io/v1", "Sidecar", "shop", n);
    let f = |n: &str| owned("networking.istio.io/v1alpha3", "EnvoyFilter", "shop", n);
    let route = owned(
        "networking.istio.io/v1",
        "VirtualService",
        "lazyxds-system",
        "r",
    );
    let timeout = Duration::from_secs(120);
    let early = Duration::from_secs(3);
    let cases = [
        ("nothing left", vec![], early, DrainStep::Drained),
        (
            "only the gateway's routes left: they are not the kill switch's",
            vec![route.clone()],
            early,
            DrainStep::Drained,
        ),
        (
            "a Sidecar and its catch-all, within the timeout",
            vec![s("a"), f("a"), route.clone()],
            early,
            DrainStep::Wait {
                left: "1 Sidecar, 1 EnvoyFilter: Sidecar shop/a, EnvoyFilter shop/a".into(),
            },
        ),
        (
            "a catch-all alone (its Sidecar already deleted)",
            vec![f("a")],
            early,
            DrainStep::Wait {
                left: "1 EnvoyFilter: EnvoyFilter shop/a".into(),
            },
        ),
        (
            "left at the timeout",
            vec![s("a"), s("b"), s("c"), s("d"), s("e"), s("f")],
            timeout,
            DrainStep::TimedOut {
                left: "6 Sidecars: Sidecar shop/a, Sidecar shop/b, Sidecar shop/c, \
                       Sidecar shop/d, Sidecar shop/e, …"
                    .into(),
            },
        ),
    ];
    for (what, written, waited, want) in cases {
        assert_eq!(drain_step(&written, waited, timeout), want, "{what}");
    }
}

fn wasm_plugin_config(
    policy: Option<FailurePolicy>,
    version: Option<IstioVersion>,
) -> InstallConfig {
    let mut c = mk_config(Module::WasmPlugin {
        url: "oci://r/f:1".into(),
        sha256: None,
    });
    c.filter.failure_policy = policy;
    c.istio_version = version;
    c
}

fn fail_strategy(config: &InstallConfig) -> String {
    let install = render(config).unwrap();
    let wp = install.of_kind("WasmPlugin").next().unwrap();
    wp.object["spec"]["failStrategy"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_wasm_plugins_fail_strategy_is_one_the_meshs_crd_accepts() {
    let v = |minor| Some(IstioVersion::new(1, minor));
    // Unknown release, or one whose CRD has no FAIL_RELOAD: FAIL_OPEN.
    for version in [None, v(24), v(26)] {
        assert_eq!(
            fail_strategy(&wasm_plugin_config(None, version)),
            "FAIL_OPEN",
            "{version:?}"
        );
    }
    for version in [v(27), v(32)] {
        assert_eq!(
            fail_strategy(&wasm_plugin_config(None, version)),
            "FAIL_RELOAD",
            "{version:?}"
        );
    }
    // Asked for where the CRD would refuse it: an error naming the flags.
    for version in [None, v(26)] {
        let err = render(&wasm_plugin_config(
            Some(FailurePolicy::FailReload),
            version,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--failure-policy") && err.contains("--istio-version"),
            "{err}"
        );
    }
    assert_eq!(
        fail_strategy(&wasm_plugin_config(Some(FailurePolicy::FailClosed), None)),
        "FAIL_CLOSE"
    );
    // The EnvoyFilter's is Envoy's field, no CRD's: FAIL_RELOAD whatever the release.
    let mut ef = mk_config(Module::ConfigMap(None));
    ef.istio_version = v(24);
    let install = render(&ef).unwrap();
    let filter = install
        .objects
        .iter()
        .find(|m| m.kind() == "EnvoyFilter" && m.name() == filter::FILTER_OBJECT)
        .unwrap();
    assert_eq!(
        filter.object["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
            ["failure_policy"],
        "FAIL_RELOAD"
    );
}

#[test]
fn istio_versions_parse_and_old_ones_are_refused() {
    for (text, want) in [
        ("1.27", Some((1, 27))),
        ("1.27.3", Some((1, 27))),
        ("v1.24", Some((1, 24))),
        ("1", None),
        ("1.x", None),
        ("1.27.", None),
        ("1.27.3.4", None),
        ("", None),
        ("1.-2", None),
    ] {
        let got = IstioVersion::parse(text).ok().map(|v| (v.major, v.minor));
        assert_eq!(got, want, "{text:?}");
    }
    assert!(IstioVersion::parse("1.x")
        .unwrap_err()
        .contains("MAJOR.MINOR"));
    let old = InstallConfig {
        istio_version: Some(IstioVersion::new(1, 23)),
        ..InstallConfig::default()
    };
    let err = render(&old).unwrap_err().to_string();
    assert!(
        err.contains("--istio-version") && err.contains("1.24"),
        "{err}"
    );
}

#[test]
fn the_admission_policy_guards_every_write_rbac_cannot_narrow() {
    use super::admission::{GUARDED, NOT_GUARDED};
    let writes = ["create", "update", "patch", "delete", "deletecollection"];
    for rules in [
        rbac::CLUSTER_RULES,
        rbac::NAMESPACE_RULES,
        rbac::MESH_CONFIG_RULES,
    ] {
        for r in rules {
            if !r.verbs.iter().any(|v| writes.contains(v)) {
                continue;
            }
            for res in r.resources {
                let guarded = GUARDED.contains(&(r.group, *res));
                let exempt = NOT_GUARDED
                    .iter()
                    .any(|(g, x, _)| *g == r.group && x == res);
                assert!(
                    guarded || exempt,
                    "RBAC lets the controller write {}/{res}: guard it in the admission \
                     policy or say in NOT_GUARDED why not",
                    r.group
                );
            }
        }
    }
    // The policy names the controller's own ServiceAccount and guards those kinds.
    let install = render(&InstallConfig::default()).unwrap();
    let policy = &install
        .of_kind("ValidatingAdmissionPolicy")
        .next()
        .unwrap()
        .object;
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:lazyxds-system:lazyxds'"
    );
    let mut covered: Vec<(String, String)> = Vec::new();
    for rule in policy["spec"]["matchConstraints"]["resourceRules"]
        .as_array()
        .unwrap()
    {
        assert_eq!(rule["operations"], json!(["CREATE", "UPDATE", "DELETE"]));
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                covered.push((
                    g.as_str().unwrap().to_string(),
                    r.as_str().unwrap().to_string(),
                ));
            }
        }
    }
    covered.sort();
    let mut want: Vec<(String, String)> = GUARDED
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    want.sort();
    assert_eq!(covered, want);
    let binding = &install
        .of_kind("ValidatingAdmissionPolicyBinding")
        .next()
        .unwrap()
        .object;
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    // In apply order before the controller's Deployment.
    let pos = |k: &str| install.objects.iter().position(|m| m.kind() == k).unwrap();
    assert!(pos("ValidatingAdmissionPolicyBinding") < pos("Deployment"));
    // Left out on request (Kubernetes < 1.30), and nothing else.
    let without = render(&InstallConfig {
        admission_policy: false,
        ..InstallConfig::default()
    })
    .unwrap();
    let kinds = |i: &Install| {
        i.objects
            .iter()
            .map(|m| m.kind().to_string())
            .collect::<Vec<_>>()
    };
    let mut want = kinds(&install);
    want.retain(|k| !k.starts_with("ValidatingAdmissionPolicy"));
    assert_eq!(kinds(&without), want);
}

#[test]
fn envoy_filters_have_priorities_analyze_accepts_in_the_order_they_need() {
    let install = render(&InstallConfig::default()).unwrap();
    let priority = |name: &str| {
        install
            .of_kind("EnvoyFilter")
            .find(|m| m.name() == name)
            .and_then(|m| m.object["spec"]["priority"].as_i64())
    };
    let filter = priority(filter::FILTER_OBJECT).unwrap();
    let catch_all = priority(lazyxds_index::gateway::EXTERNAL_ROUTE).unwrap();
    // IST0151: a relative patch (INSERT_BEFORE) at priority 0.
    assert!(filter != 0 && catch_all != 0);
    // Lower first: the filter is inserted before the router first, so it stays ahead of the
    // forward proxy the catch-all inserts there after it.
    assert!(filter < catch_all);
}
