//! The mini-mesh's measures (`p5_e2e`, `p6_istiod`, `p9`): measured by
//! `lazyxds-e2e`'s `meshbench` binary, which needs root and network namespaces and so runs
//! before this one under `tests/cluster/netns-run` (`make bench`); read here from the JSON
//! it wrote (`MESHBENCH_OUT`) into the table and `latest.json`.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use crate::report::{Goal, Measure};

pub const P5_E2E_NAME: &str = "mini-mesh: first call → first direct call (p99)";
pub const P6_ISTIOD_NAME: &str = "mini-mesh sidecar memory: full ÷ scoped (real istiod)";
pub const P9_NAME: &str = "istiod CPU for one full push: full ÷ scoped";
/// The controller's route delay (make before break: 2 s by default, released by its 1 s
/// tick, so 2-3 s), plus P5's 250 ms to the Sidecar and istiod's push (its debounce alone
/// waits 100 ms, PILOT_DEBOUNCE_AFTER) and Envoy's update. Set here, not a claim of the issue.
pub const P5_E2E_GOAL: Goal = Goal::AtMost(3500.0);
/// P6's claim (≥ 10 at 2,000 Services), with the real istiod's config.
pub const P6_ISTIOD_GOAL: Goal = Goal::AtLeast(10.0);
/// The same premise for istiod's work (push cost follows what a workload uses). Set here.
pub const P9_GOAL: Goal = Goal::AtLeast(10.0);

/// The three measures; pending in a quick run (the mini-mesh takes minutes and root),
/// errors naming the file when it is missing or unreadable.
pub fn measures(quick: bool, path: &Path) -> Vec<Measure> {
    if quick {
        let reason = "not in bench-quick: the mini-mesh needs root, network namespaces and \
                      ~5 min (its tests run in make test's test-envoy tier); make bench measures it";
        return vec![
            Measure::pending("p5_e2e", P5_E2E_NAME, P5_E2E_GOAL, "ms", reason),
            Measure::pending("p6_istiod", P6_ISTIOD_NAME, P6_ISTIOD_GOAL, "ratio", reason),
            Measure::pending("p9", P9_NAME, P9_GOAL, "ratio", reason),
        ];
    }
    match read(path) {
        Ok(doc) => vec![
            p5_e2e(&doc["p5_e2e"]),
            p6_istiod(&doc["p6_istiod"]),
            p9(&doc["p9"]),
        ],
        Err(e) => vec![
            Measure::error("p5_e2e", P5_E2E_NAME, P5_E2E_GOAL, "ms", &e),
            Measure::error("p6_istiod", P6_ISTIOD_NAME, P6_ISTIOD_GOAL, "ratio", &e),
            Measure::error("p9", P9_NAME, P9_GOAL, "ratio", &e),
        ],
    }
}

fn read(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{} (the mini-mesh run, `meshbench`, did not write it: see its log beside it)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

fn number(v: &Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .filter(|n| n.is_finite())
        .ok_or_else(|| anyhow!("meshbench JSON: no number at {key}"))
}

fn p5_e2e(v: &Value) -> Measure {
    let m = || -> Result<Measure> {
        let failed = number(v, "failed_requests")?;
        let note = format!(
            "p50 {:.0} ms, max {:.0} ms over {} new dependencies of one scoped client (one \
             request per {} ms); {} via the gateway, {failed} failed ({} answered 503 by the \
             client's sidecar for want of an active cluster, NC)",
            number(v, "p50_ms")?,
            number(v, "max_ms")?,
            number(v, "samples")?,
            number(v, "interval_ms")?,
            number(v, "requests_via_gateway")?,
            number(v, "no_cluster_503s")?,
        );
        Ok(Measure::measured(
            "p5_e2e",
            P5_E2E_NAME,
            number(v, "p99_ms")?,
            P5_E2E_GOAL,
            "ms",
        )
        .with_note(note)
        .with_details(v.clone()))
    };
    m().unwrap_or_else(|e| Measure::error("p5_e2e", P5_E2E_NAME, P5_E2E_GOAL, "ms", &e))
}

fn p6_istiod(v: &Value) -> Measure {
    let m = || -> Result<Measure> {
        let mb = |side: &str, key: &str| -> Result<f64> { Ok(number(&v[side], key)? / 1e6) };
        let note = format!(
            "at {} Services: server.memory_allocated {:.1} MB full vs {:.1} MB scoped; config \
             dump {:.1} MB vs {:.2} MB (÷ {:.0}); {} vs {} clusters",
            number(v, "services")?,
            mb("full", "memory_allocated")?,
            mb("scoped", "memory_allocated")?,
            mb("full", "config_dump_bytes")?,
            mb("scoped", "config_dump_bytes")?,
            number(v, "ratio_config_dump")?,
            number(&v["full"], "active_clusters")?,
            number(&v["scoped"], "active_clusters")?,
        );
        Ok(Measure::measured(
            "p6_istiod",
            P6_ISTIOD_NAME,
            number(v, "ratio_memory_allocated")?,
            P6_ISTIOD_GOAL,
            "ratio",
        )
        .with_note(note)
        .with_details(v.clone()))
    };
    m().unwrap_or_else(|e| Measure::error("p6_istiod", P6_ISTIOD_NAME, P6_ISTIOD_GOAL, "ratio", &e))
}

fn p9(v: &Value) -> Measure {
    let m = || -> Result<Measure> {
        let note = format!(
            "{} sidecars, {} Services, median of {} rounds; Σ pilot_xds_push_time full ÷ \
             scoped {:.1} (raw CPU ratio {:.1}, idle CPU subtracted from the value)",
            number(v, "sidecars")?,
            number(v, "services")?,
            v["rounds"].as_array().map_or(0, Vec::len),
            number(v, "ratio_push_time")?,
            number(v, "ratio_cpu_raw")?,
        );
        Ok(
            Measure::measured("p9", P9_NAME, number(v, "ratio_cpu")?, P9_GOAL, "ratio")
                .with_note(note)
                .with_details(v.clone()),
        )
    };
    m().unwrap_or_else(|e| Measure::error("p9", P9_NAME, P9_GOAL, "ratio", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_each_measure_from_the_meshbench_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.json");
        std::fs::write(
            &path,
            json!({
                "p5_e2e": {"samples": 20, "p50_ms": 400.0, "p99_ms": 900.0, "max_ms": 900.0,
                    "interval_ms": 50, "requests_via_gateway": 160, "failed_requests": 0,
                    "no_cluster_503s": 0},
                "p6_istiod": {"services": 2000, "ratio_memory_allocated": 12.5,
                    "ratio_config_dump": 80.0,
                    "full": {"memory_allocated": 1e8, "config_dump_bytes": 4e7, "active_clusters": 2010},
                    "scoped": {"memory_allocated": 8e6, "config_dump_bytes": 5e5, "active_clusters": 30}},
                "p9": {"sidecars": 3, "services": 2000, "ratio_cpu": 20.0, "ratio_cpu_raw": 15.0,
                    "ratio_push_time": 30.0, "rounds": [{}, {}, {}]},
            })
            .to_string(),
        )
        .unwrap();
        let got = measures(false, &path);
        let values: Vec<(&str, Option<f64>, Option<bool>)> =
            got.iter().map(|m| (m.key, m.value, m.pass())).collect();
        assert_eq!(
            values,
            [
                ("p5_e2e", Some(900.0), Some(true)),
                ("p6_istiod", Some(12.5), Some(true)),
                ("p9", Some(20.0), Some(true)),
            ]
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it_and_quick_is_pending() {
        let got = measures(false, Path::new("/nonexistent/mesh.json"));
        for m in &got {
            match &m.status {
                crate::report::Status::Error(e) => {
                    assert!(e.contains("/nonexistent/mesh.json"), "{e}")
                }
                other => panic!("{}: {other:?}", m.key),
            }
        }
        let quick = measures(true, Path::new("/nonexistent/mesh.json"));
        assert!(quick
            .iter()
            .all(|m| matches!(m.status, crate::report::Status::Pending(_))));
    }

    #[test]
    fn a_field_missing_is_an_error_for_that_measure_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.json");
        std::fs::write(
            &path,
            json!({"p5_e2e": {}, "p6_istiod": {}, "p9": {}}).to_string(),
        )
        .unwrap();
        let got = measures(false, &path);
        assert!(got.iter().all(
            |m| matches!(&m.status, crate::report::Status::Error(e) if e.contains("no number"))
        ));
    }
}
