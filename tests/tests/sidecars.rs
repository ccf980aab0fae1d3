//! Traffic through a real Envoy gateway becomes the exact Sidecars (file mode): the demo
//! topology, the controller running `--file --out`, clients on the topology's pod IPs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use lazyxds_e2e::client::Planned;
use lazyxds_e2e::mesh::{demo_topology_path, demo_traffic, read_sidecar_files, MeshStack};
use lazyxds_e2e::run_load;

fn set(hosts: &[&str]) -> BTreeSet<String> {
    hosts.iter().map(|h| h.to_string()).collect()
}

/// Learned deps per workload for `demo_traffic()`; workloads without traffic have none.
fn expected_deps() -> BTreeMap<String, BTreeSet<String>> {
    let none = set(&[]);
    BTreeMap::from([
        (
            "shop/Deployment/productpage".into(),
            // The VirtualService host, not the reviews-v2 cluster it routed to.
            set(&[
                "details.shop.svc.cluster.local",
                "reviews.shop.svc.cluster.local",
            ]),
        ),
        (
            "shop/Deployment/reviews-v1".into(),
            set(&["ratings.shop.svc.cluster.local"]),
        ),
        (
            "shop/Deployment/reviews-v2".into(),
            set(&["ratings.shop.svc.cluster.local"]),
        ),
        (
            "shop/StatefulSet/cart".into(),
            set(&[
                "catalog.shop.svc.cluster.local",
                "payments-api.payments.svc.cluster.local",
            ]),
        ),
        ("shop/Deployment/catalog".into(), none.clone()),
        ("shop/Deployment/ratings".into(), none.clone()),
        ("shop/StatefulSet/postgres".into(), none.clone()),
        (
            "payments/Deployment/payments-api".into(),
            set(&[
                "fraud.payments.svc.cluster.local",
                "ledger.payments.svc.cluster.local",
            ]),
        ),
        (
            "payments/Deployment/ledger".into(),
            set(&["notifications.payments.svc.cluster.local"]),
        ),
        ("payments/Deployment/fraud".into(), none.clone()),
        ("payments/Deployment/notifications".into(), none),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_the_gateway_becomes_the_expected_sidecars() -> Result<()> {
    let out = tempfile::tempdir()?;
    let stack = MeshStack::start(&demo_topology_path(), out.path(), None).await?;
    let plan: Vec<Planned> = demo_traffic()
        .into_iter()
        .flat_map(|(ip, host)| std::iter::repeat_n(Planned::new(ip, host), 3))
        .collect();
    let outcomes = run_load(stack.listen_port, &plan, 8, Duration::from_secs(20)).await;
    for o in &outcomes {
        let want = if o.host.starts_with("nowhere") {
            404
        } else {
            200
        };
        ensure!(
            o.status == Some(want),
            "{} from {}: {:?} (want {want})",
            o.host,
            o.source,
            o
        );
    }

    let want = expected_deps();
    let deadline = Instant::now() + Duration::from_secs(15);
    let files = loop {
        let files = read_sidecar_files(out.path())?;
        let got: BTreeMap<String, BTreeSet<String>> = files
            .iter()
            .map(|(w, f)| (w.clone(), f.deps.clone()))
            .collect();
        if got == want {
            break files;
        }
        ensure!(
            Instant::now() < deadline,
            "Sidecars did not converge.\n got: {got:#?}\nwant: {want:#?}\ncontroller log:\n{}",
            stack.controller.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    ensure!(
        !files.contains_key("shop/Deployment/details"),
        "details opted out: no Sidecar"
    );
    let productpage = &files["shop/Deployment/productpage"].egress_hosts;
    for host in [
        "istio-system/*",
        "lazyxds-system/lazyxds-gateway.lazyxds-system.svc.cluster.local",
        "shop/reviews.shop.svc.cluster.local",
        "shop/details.shop.svc.cluster.local",
        // TCP-only: always visible (raw TCP cannot be routed lazily).
        "shop/postgres.shop.svc.cluster.local",
    ] {
        ensure!(
            productpage.contains(&host.to_string()),
            "{host} missing: {productpage:?}"
        );
    }
    ensure!(
        !productpage.iter().any(|h| h.contains("reviews-v2")),
        "the VS destination is not listed: {productpage:?}"
    );
    let cart = &files["shop/StatefulSet/cart"].egress_hosts;
    ensure!(
        cart.contains(&"payments/payments-api.payments.svc.cluster.local".to_string()),
        "cross-namespace dep (also pinned): {cart:?}"
    );
    let mut sorted = productpage.clone();
    sorted.sort();
    sorted.dedup();
    ensure!(
        &sorted == productpage,
        "egress hosts sorted and unique: {productpage:?}"
    );
    Ok(())
}
