//! Results: one [`Measure`] per claim (P1…P8, P7b, P7c), printed as a table and written as
//! `latest.json` (`p1`…`p8`, `p7b`, `p7c`, each `{value, goal, unit, ...}`; pending ones have
//! `value: null` and `"status": "pending"`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};

/// Every key `latest.json` must have.
pub const KEYS: [&str; 10] = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p7b", "p7c", "p8"];

/// What a value must be to meet its goal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    pub fn value(self) -> f64 {
        match self {
            Goal::AtMost(v) | Goal::AtLeast(v) => v,
        }
    }

    pub fn op(self) -> &'static str {
        match self {
            Goal::AtMost(_) => "<=",
            Goal::AtLeast(_) => ">=",
        }
    }

    pub fn met_by(self, value: f64) -> bool {
        match self {
            Goal::AtMost(g) => value <= g,
            Goal::AtLeast(g) => value >= g,
        }
    }

    /// How far `value` is from the goal, as a factor (> 1: missed by that much).
    pub fn miss_factor(self, value: f64) -> f64 {
        match self {
            Goal::AtMost(g) => value / g,
            Goal::AtLeast(g) => g / value,
        }
    }
}

/// Whether a measure ran.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Measured,
    /// Cannot be measured yet; the reason says what it waits for.
    Pending(String),
    /// The harness failed; the message says how.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct Measure {
    /// `p1` … `p8`.
    pub key: &'static str,
    /// What is measured, in a few words (the table's first column).
    pub name: &'static str,
    pub value: Option<f64>,
    pub goal: Goal,
    pub unit: &'static str,
    pub status: Status,
    /// One line for the table (e.g. the variants' absolute numbers).
    pub note: String,
    /// Everything else worth keeping (per-variant numbers, sample counts, ...).
    pub details: Value,
}

impl Measure {
    pub fn measured(
        key: &'static str,
        name: &'static str,
        value: f64,
        goal: Goal,
        unit: &'static str,
    ) -> Measure {
        Measure {
            key,
            name,
            value: Some(value),
            goal,
            unit,
            status: Status::Measured,
            note: String::new(),
            details: Value::Null,
        }
    }

    pub fn pending(
        key: &'static str,
        name: &'static str,
        goal: Goal,
        unit: &'static str,
        reason: &str,
    ) -> Measure {
        Measure {
            key,
            name,
            value: None,
            goal,
            unit,
            status: Status::Pending(reason.to_string()),
            note: String::new(),
            details: Value::Null,
        }
    }

    pub fn error(
        key: &'static str,
        name: &'static str,
        goal: Goal,
        unit: &'static str,
        error: &anyhow::Error,
    ) -> Measure {
        Measure {
            key,
            name,
            value: None,
            goal,
            unit,
            status: Status::Error(format!("{error:#}")),
            note: String::new(),
            details: Value::Null,
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Measure {
        self.note = note.into();
        self
    }

    pub fn with_details(mut self, details: Value) -> Measure {
        self.details = details;
        self
    }

    /// Some(true/false) for a measured value, None otherwise.
    pub fn pass(&self) -> Option<bool> {
        match (&self.status, self.value) {
            (Status::Measured, Some(v)) => Some(self.goal.met_by(v)),
            _ => None,
        }
    }

    fn status_word(&self) -> &'static str {
        match self.status {
            Status::Measured => "measured",
            Status::Pending(_) => "pending",
            Status::Error(_) => "error",
        }
    }

    /// The JSON form, keys in a fixed order (`name, value, goal, goal_op, unit, status,
    /// pass, reason|error, note, details`).
    pub fn to_json(&self) -> Value {
        // serde_json's map sorts keys; go through a struct to keep ours in order when
        // serialized directly (see `render_json`), and through Value for checks.
        serde_json::to_value(self.view()).unwrap_or(Value::Null)
    }

    fn view(&self) -> MeasureView<'_> {
        let (reason, error) = match &self.status {
            Status::Pending(r) => (Some(r.as_str()), None),
            Status::Error(e) => (None, Some(e.as_str())),
            Status::Measured => (None, None),
        };
        MeasureView {
            name: self.name,
            value: self.value,
            goal: self.goal.value(),
            goal_op: self.goal.op(),
            unit: self.unit,
            status: self.status_word(),
            pass: self.pass(),
            reason,
            error,
            note: (!self.note.is_empty()).then_some(self.note.as_str()),
            details: (!self.details.is_null()).then_some(&self.details),
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct MeasureView<'a> {
    name: &'a str,
    value: Option<f64>,
    goal: f64,
    goal_op: &'a str,
    unit: &'a str,
    status: &'a str,
    pass: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
}

/// A number for people: 3 significant digits, thousands separated.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The results table (measure, value, goal, pass/fail), then each note.
pub fn table(measures: &[Measure], quick: bool) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "".into(),
        "measure".into(),
        "value".into(),
        "goal".into(),
        "result".into(),
    ]];
    for m in measures {
        let value = match m.value {
            Some(v) => format!("{} {}", fmt_num(v), m.unit),
            None => "-".into(),
        };
        let goal = format!(
            "{} {} {}",
            if m.goal.op() == "<=" { "≤" } else { "≥" },
            fmt_num(m.goal.value()),
            m.unit
        );
        let result = match (&m.status, m.pass()) {
            (Status::Pending(_), _) => "pending".to_string(),
            (Status::Error(_), _) => "ERROR".to_string(),
            (_, Some(true)) => "pass".to_string(),
            (_, Some(false)) => {
                let f = m.goal.miss_factor(m.value.unwrap_or(f64::NAN));
                format!("FAIL (off by {:.2}x)", f)
            }
            (_, None) => "-".to_string(),
        };
        let result = if quick && m.status == Status::Measured {
            "ran (quick run: goal not checked)".to_string()
        } else {
            result
        };
        rows.push([m.key.to_uppercase(), m.name.into(), value, goal, result]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            // Numbers right-aligned, words left-aligned.
            if c == 2 && i > 0 {
                let _ = write!(line, "{}{}  ", " ".repeat(pad), cell);
            } else {
                let _ = write!(line, "{}{}  ", cell, " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * 4;
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out.push('\n');
    for m in measures {
        let text = match &m.status {
            Status::Pending(reason) => format!("pending: {reason}"),
            Status::Error(e) => format!("error: {e}"),
            Status::Measured => m.note.clone(),
        };
        if !text.is_empty() {
            let _ = writeln!(out, "{}: {text}", m.key.to_uppercase());
        }
    }
    out
}

/// The whole `latest.json` document as a value (keys sorted).
pub fn document(measures: &[Measure], run: Value) -> Value {
    let mut m = Map::new();
    m.insert("run".into(), run);
    for measure in measures {
        m.insert(measure.key.into(), measure.to_json());
    }
    Value::Object(m)
}

/// `latest.json` as text: `p1`…`p8` in order, each with its keys in a fixed order, then
/// `run`.
pub fn render_json(measures: &[Measure], run: &Value) -> Result<String> {
    use serde::ser::{SerializeMap, Serializer};
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"  "),
    );
    let mut map = ser.serialize_map(Some(measures.len() + 1))?;
    let mut sorted: Vec<&Measure> = measures.iter().collect();
    sorted.sort_by_key(|m| m.key);
    for m in sorted {
        map.serialize_entry(m.key, &m.view())?;
    }
    map.serialize_entry("run", run)?;
    map.end()?;
    Ok(String::from_utf8(out)? + "\n")
}

/// Checks that `doc` has every key of [`KEYS`], each `{value, goal, unit}` with a number or null
/// value (null exactly when not measured), a number goal and a unit.
pub fn validate(doc: &Value) -> Result<()> {
    let obj = doc.as_object().context("latest.json is not an object")?;
    for key in KEYS {
        let m = obj
            .get(key)
            .and_then(Value::as_object)
            .with_context(|| format!("{key} missing or not an object"))?;
        let status = m.get("status").and_then(Value::as_str).unwrap_or("");
        let value = m
            .get("value")
            .with_context(|| format!("{key}.value missing"))?;
        match (status, value) {
            ("measured", Value::Number(n)) => {
                ensure!(
                    n.as_f64().is_some_and(f64::is_finite),
                    "{key}.value {n} is not finite"
                )
            }
            ("pending" | "error", Value::Null) => {}
            (s, v) => bail!("{key}: status {s:?} with value {v}"),
        }
        ensure!(
            m.get("goal").and_then(Value::as_f64).is_some(),
            "{key}.goal is not a number"
        );
        ensure!(
            m.get("unit")
                .and_then(Value::as_str)
                .is_some_and(|u| !u.is_empty()),
            "{key}.unit is not a string"
        );
        if status == "pending" {
            ensure!(
                m.get("reason")
                    .and_then(Value::as_str)
                    .is_some_and(|r| !r.is_empty()),
                "{key} is pending without a reason"
            );
        }
    }
    Ok(())
}

/// Writes `latest.json` to `path`, reads it back and validates it.
pub fn write_json(path: &Path, measures: &[Measure], run: &Value) -> Result<()> {
    let text = render_json(measures, run)?;
    std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    let back: Value = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    validate(&back).with_context(|| format!("{} is not well formed", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_all() -> Vec<Measure> {
        let mut v = vec![
            Measure::measured("p1", "a", 1.01, Goal::AtMost(1.05), "ratio"),
            Measure::measured("p2", "b", 0.95, Goal::AtMost(0.9), "ratio"),
            Measure::measured("p3", "c", 20_000.0, Goal::AtLeast(10_000.0), "ratio"),
            Measure::error(
                "p4",
                "d",
                Goal::AtLeast(1e6),
                "edges/s",
                &anyhow::anyhow!("boom"),
            ),
            Measure::pending("p5", "e", Goal::AtMost(250.0), "ms", "needs file mode"),
            Measure::measured("p6", "f", 12.0, Goal::AtLeast(10.0), "ratio"),
            Measure::pending("p7", "g", Goal::AtMost(300.0), "MB", "needs kube mode"),
            Measure::measured("p7b", "g2", 0.0, Goal::AtMost(0.0), "writes"),
            Measure::measured("p7c", "g3", 0.4, Goal::AtMost(1.0), "MB"),
            Measure::measured("p8", "h", 186_940.0, Goal::AtMost(204_800.0), "bytes"),
        ];
        v[0].note = "note".into();
        v
    }

    #[test]
    fn document_validates_and_pending_has_null_value() {
        let doc = document(&mk_all(), json!({"mode": "test"}));
        validate(&doc).unwrap();
        assert_eq!(doc["p5"]["value"], Value::Null);
        assert_eq!(doc["p5"]["status"], "pending");
        assert_eq!(doc["p2"]["pass"], false);
        assert_eq!(doc["p8"]["pass"], true);
        assert_eq!(doc["p4"]["pass"], Value::Null);
    }

    #[test]
    fn validate_refuses_missing_keys_and_bad_values() {
        let mut doc = document(&mk_all(), Value::Null);
        doc.as_object_mut().unwrap().remove("p7");
        assert!(validate(&doc).is_err());
        let mut doc = document(&mk_all(), Value::Null);
        doc.as_object_mut().unwrap().remove("p7c");
        assert!(validate(&doc).is_err());
        let mut doc = document(&mk_all(), Value::Null);
        doc["p1"]["value"] = Value::Null;
        assert!(validate(&doc).is_err());
        let mut doc = document(&mk_all(), Value::Null);
        doc["p5"]["value"] = json!(3);
        assert!(validate(&doc).is_err());
    }

    #[test]
    fn rendered_json_keeps_measure_order_and_validates() {
        let text = render_json(&mk_all(), &json!({"mode": "test"})).unwrap();
        let p1 = text.find("\"p1\"").unwrap();
        let p8 = text.find("\"p8\"").unwrap();
        assert!(p1 < p8);
        let m = &text[p1..];
        assert!(m.find("\"value\"").unwrap() < m.find("\"goal\"").unwrap());
        validate(&serde_json::from_str(&text).unwrap()).unwrap();
    }

    #[test]
    fn table_says_pass_fail_pending() {
        let t = table(&mk_all(), false);
        assert!(t.contains("pass"), "{t}");
        assert!(t.contains("FAIL (off by 1.06x)"), "{t}");
        assert!(t.contains("pending"), "{t}");
        assert!(t.contains("P5: pending: needs file mode"), "{t}");
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(fmt_num(1_234_567.0), "1,234,567");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.0449), "1.04");
        assert_eq!(fmt_num(0.1234), "0.123");
    }
}
