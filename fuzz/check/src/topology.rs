//! The topology file parser (`lazyxds_index::topology`), with its depth limit
//! (`topology::limits`). Input: the file's bytes (the controller reads the file as UTF-8
//! text; the size limit is the caller's, `--max-topology-bytes`).
//!
//! Properties: a refusal names the file; an accepted file nests no deeper than
//! `limits::MAX_DEPTH` (the scan before parsing never lets a deeper one through), and
//! the same document written back as YAML (what any YAML tool would save) parses to the
//! same topology, which the index takes as a full resync; a reconcile pass over it renders
//! every workload's YAML, and its namespace table is one the gateway filter takes whole.

use lazyxds_filter_core::{Config, Router};
use lazyxds_index::topology::limits::MAX_DEPTH;
use lazyxds_index::{reconcile, Index, IndexConfig, RenderConfig, Topology};
use serde_norway::Value;

/// The name errors must carry.
pub const FILE: &str = "fuzz-topology.yaml";

/// How deeply a YAML value nests (a scalar is 0).
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Sequence(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Mapping(map) => {
            1 + map
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        Value::Tagged(tagged) => depth(&tagged.value),
        _ => 0,
    }
}

pub fn check(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let topology = match Topology::from_yaml(text, FILE) {
        Ok(topology) => topology,
        Err(error) => {
            let shown = error.to_string();
            assert!(shown.starts_with(FILE), "{shown:?} does not name the file");
            return;
        }
    };
    let value: Value =
        serde_norway::from_str(text).unwrap_or_else(|e| panic!("accepted, yet not YAML: {e}"));
    let nested = depth(&value);
    assert!(
        nested <= MAX_DEPTH,
        "accepted a file nesting {nested} levels"
    );
    let written = serde_norway::to_string(&value)
        .unwrap_or_else(|e| panic!("an accepted document does not write back: {e}"));
    match Topology::from_yaml(&written, FILE) {
        Ok(again) => assert_eq!(again, topology, "written back as\n{written}"),
        Err(e) => panic!("written back, it is refused: {e}\n{written}"),
    }
    // What file mode does with it: one reconcile pass, each workload's YAML written; the
    // namespace table pushed to gateways is one the filter takes whole.
    let mut index = Index::new(IndexConfig::default());
    topology.apply_to(&mut index);
    let pass = reconcile(&index, &topology.render_config(RenderConfig::default()));
    for key in pass.desired.sidecars.keys() {
        if let Err(e) = pass.desired.workload_yaml(key) {
            panic!("{key:?}: its YAML does not render: {e}");
        }
    }
    let mut router = Router::new(&Config::default());
    router.apply_table(pass.namespace_table);
    assert_eq!(
        router.counters().bad_tables,
        0,
        "the filter refused the controller's table"
    );
}
