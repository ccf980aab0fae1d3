//! The built module's exports. Envoy enters the VM for every exported per-request callback
//! on every request (a V8 call and Envoy's bookkeeping around it), so the module exports
//! only request headers and log; this fails if an SDK or a new callback brings back the
//! others.

use std::collections::BTreeSet;

use lazyxds_e2e::paths;

/// Reads an unsigned LEB128 number at `*at`.
fn leb(bytes: &[u8], at: &mut usize) -> u64 {
    let (mut value, mut shift) = (0u64, 0);
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
        shift += 7;
    }
}

/// The names in a module's export section.
fn exports(module: &[u8]) -> BTreeSet<String> {
    assert_eq!(&module[..4], b"\0asm", "not a wasm module");
    let mut at = 8;
    let mut names = BTreeSet::new();
    while at < module.len() {
        let id = module[at];
        at += 1;
        let size = leb(module, &mut at) as usize;
        let end = at + size;
        if id == 7 {
            let mut p = at;
            for _ in 0..leb(module, &mut p) {
                let len = leb(module, &mut p) as usize;
                names.insert(String::from_utf8(module[p..p + len].to_vec()).unwrap());
                p += len;
                let _kind = module[p];
                p += 1;
                leb(module, &mut p);
            }
        }
        at = end;
    }
    names
}

#[test]
fn the_module_exports_only_the_callbacks_it_needs() {
    let path = paths::wasm_path().unwrap();
    let module = std::fs::read(&path).unwrap();
    let got = exports(&module);
    let per_request: BTreeSet<&str> = got
        .iter()
        .map(String::as_str)
        .filter(|n| {
            n.starts_with("proxy_on_")
                && ![
                    "proxy_on_vm_start",
                    "proxy_on_configure",
                    "proxy_on_tick",
                    "proxy_on_grpc_receive",
                    "proxy_on_grpc_close",
                    "proxy_on_memory_allocate",
                ]
                .contains(n)
        })
        .collect();
    assert_eq!(
        per_request,
        BTreeSet::from(["proxy_on_request_headers", "proxy_on_log"]),
        "{}: every exported per-request callback costs a VM entry per request; exports: {got:?}",
        path.display()
    );
    for needed in [
        "proxy_abi_version_0_2_1",
        "_initialize",
        "proxy_on_memory_allocate",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_grpc_receive",
        "proxy_on_grpc_close",
    ] {
        assert!(got.contains(needed), "{needed} is not exported: {got:?}");
    }
}
