//! One reconcile pass: everything the targets (files, the cluster) must make true, from
//! the index alone. Pure: the runtime's one loop calls [`reconcile`] and hands the
//! [`Pass`] to its target.

use lazyxds_proto::v1::NamespaceTable;

use crate::desired::{desired, Desired, RenderConfig};
use crate::gateway::{gateway_objects, namespace_table, GatewayObjects};
use crate::index::Index;

/// What one pass wants written and published.
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    /// The Sidecar of every opted-in workload, and why some get none; nothing while the
    /// kill switch is on (every Sidecar we own goes).
    pub desired: Desired,
    /// The gateway's routing objects. They follow the mesh, not the kill switch: first
    /// calls through the gateway keep working either way.
    pub gateway: GatewayObjects,
    /// What gateways route first calls with (pod IPs, namespaces, outbound policies).
    pub namespace_table: NamespaceTable,
    /// The kill switch was on.
    pub killed: bool,
}

/// Renders the pass for the index as it is now. Istio's mesh config, as the index holds
/// it, wins over `config`'s mesh outbound policy.
pub fn reconcile(index: &Index, config: &RenderConfig) -> Pass {
    let killed = index.kill_switch();
    Pass {
        desired: if killed {
            Desired::default()
        } else {
            desired(index, config)
        },
        gateway: gateway_objects(index, config),
        namespace_table: namespace_table(index, config),
        killed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshConfig;

    fn index() -> Index {
        Index::test()
    }

    #[test]
    fn a_pass_is_the_sidecars_the_gateway_objects_and_the_table() {
        let index = index();
        let config = RenderConfig::test();
        let pass = reconcile(&index, &config);
        assert_eq!(pass.desired, desired(&index, &config));
        assert_eq!(pass.desired.sidecars.len(), 3);
        assert_eq!(pass.gateway, gateway_objects(&index, &config));
        assert_eq!(pass.namespace_table, namespace_table(&index, &config));
        assert!(!pass.killed);
    }

    #[test]
    fn the_kill_switch_empties_the_sidecars_only() {
        let mut index = index();
        assert!(index.set_kill_switch(true));
        assert!(!index.set_kill_switch(true), "unchanged");
        let config = RenderConfig::test();
        let pass = reconcile(&index, &config);
        assert!(pass.killed);
        assert_eq!(pass.desired, Desired::default());
        assert_eq!(pass.gateway, gateway_objects(&index, &config));
        assert_eq!(pass.namespace_table, namespace_table(&index, &config));
    }

    #[test]
    fn the_mesh_configs_policy_wins_over_the_configured_one() {
        let mut index = index();
        let config = RenderConfig::test();
        let policy = |pass: &Pass| {
            let sidecar: crate::Sidecar = pass
                .desired
                .sidecars
                .values()
                .next()
                .unwrap()
                .typed()
                .unwrap();
            (
                sidecar.metadata.annotations[crate::objects::ANNOTATION_OUTBOUND_POLICY].clone(),
                pass.namespace_table.mesh_policy,
            )
        };
        let allow = lazyxds_proto::v1::OutboundPolicy::AllowAny as i32;
        let registry = lazyxds_proto::v1::OutboundPolicy::RegistryOnly as i32;
        assert_eq!(
            policy(&reconcile(&index, &config)),
            ("ALLOW_ANY".to_string(), allow)
        );
        index.set_mesh_config(
            MeshConfig::parse("outboundTrafficPolicy: {mode: REGISTRY_ONLY}").unwrap(),
        );
        assert_eq!(
            policy(&reconcile(&index, &config)),
            ("REGISTRY_ONLY".to_string(), registry)
        );
        index.set_mesh_config(MeshConfig::default());
        assert_eq!(
            policy(&reconcile(&index, &config)),
            ("ALLOW_ANY".to_string(), allow)
        );
    }
}
