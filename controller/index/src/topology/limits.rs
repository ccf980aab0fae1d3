//! How deep a topology file nests, found before it is parsed.
//!
//! The YAML parser keeps every open flow collection in a list it walks for each token,
//! so parsing `[[[[…` costs the square of its depth (a 10 MB file took 51 s to refuse,
//! issue 15 item 8), and it loads a whole document, however deep, before the
//! deserializer's own depth limit (128) refuses it (1.5 GB for 10 MB of `- - - …`). One
//! linear pass over the text first finds where it nests deeper than a limit.
//! Aliases (`*a` copies its anchor's value) can make the parsed document deeper than its
//! text: [`value_too_deep`] measures the value after parsing (the deserializer bounds
//! how much aliases may copy).
//!
//! The count is an estimate that errs high only for malformed text: flow collections
//! (`[`, `{` where a node may start, outside quotes and comments), compact block
//! collections (`- - x`, `? `), and block nesting by indentation. Block scalars (`|`,
//! `>`), quoted scalars (also over several lines) and comments are skipped.

use serde_norway::Value;

/// The deepest nesting a topology file may have. A real one nests about 10 levels (a
/// VirtualService route's header match); serde's own limit is 128.
pub const MAX_DEPTH: usize = 64;

/// Where a text nests deeper than `max`: 1-based line and column of the node that is one
/// level too deep. `None` when it stays within.
pub fn too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    let mut scan = Scan {
        max,
        flow: 0,
        flow_base: 0,
        quote: None,
        block: Vec::new(),
        block_scalar: None,
    };
    for (line_no, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line).as_bytes();
        if let Some(column) = scan.line(line) {
            return Some((line_no.saturating_add(1), column.saturating_add(1)));
        }
    }
    None
}

/// Where a parsed document nests deeper than `max`: the section and item (`services[3]`)
/// holding the first node one level too deep, or `top level`. Within the text limit only
/// aliases do this (`*a` copies its anchor's whole value, however deep it is used); the
/// deserializer's own limit (128) keeps the walk's recursion bounded.
pub fn value_too_deep(value: &Value, max: usize) -> Option<String> {
    if !deeper_than(value, max) {
        return None;
    }
    let below = max.saturating_sub(1);
    let Value::Mapping(sections) = value else {
        return Some("top level".to_string());
    };
    let (key, section) = sections
        .iter()
        .find(|(k, v)| deeper_than(k, below) || deeper_than(v, below))?;
    let name = key.as_str().unwrap_or("a key");
    let item = match section {
        Value::Sequence(items) => items
            .iter()
            .position(|item| deeper_than(item, below.saturating_sub(1))),
        _ => None,
    };
    Some(match item {
        Some(i) => format!("{name}[{i}]"),
        None => name.to_string(),
    })
}

/// Whether `value` nests more than `max` collections deep (a scalar nests 0).
fn deeper_than(value: &Value, max: usize) -> bool {
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Sequence(items) => Box::new(items.iter()),
        Value::Mapping(map) => Box::new(map.iter().flat_map(|(k, v)| [k, v])),
        Value::Tagged(tagged) => return deeper_than(&tagged.value, max),
        _ => return false,
    };
    match max.checked_sub(1) {
        None => true,
        Some(below) => children.into_iter().any(|child| deeper_than(child, below)),
    }
}

struct Scan {
    max: usize,
    /// Flow collections open now.
    flow: usize,
    /// Block depth of the node the open flow collection belongs to.
    flow_base: usize,
    /// Inside a quoted scalar that goes on past a line end.
    quote: Option<u8>,
    /// Columns of the block collections the current line may be inside.
    block: Vec<usize>,
    /// Inside a block scalar introduced on a line with this indentation.
    block_scalar: Option<usize>,
}

fn indentation(line: &[u8]) -> usize {
    line.iter().take_while(|&&b| b == b' ').count()
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

/// `-`, `?` or `:` followed by a space or the end of the line: an indicator.
fn indicator_at(line: &[u8], at: usize, indicator: u8) -> bool {
    line.get(at) == Some(&indicator)
        && line
            .get(at.saturating_add(1))
            .is_none_or(|b| *b == b' ' || *b == b'\t')
}

fn skip_spaces(line: &[u8], mut at: usize) -> usize {
    while line.get(at).is_some_and(|b| *b == b' ' || *b == b'\t') {
        at = at.saturating_add(1);
    }
    at
}

impl Scan {
    /// Scans one line; `Some(column)` (0-based) where it nests too deep.
    fn line(&mut self, line: &[u8]) -> Option<usize> {
        if let Some(parent) = self.block_scalar {
            if is_blank(line) || indentation(line) > parent {
                return None;
            }
            self.block_scalar = None;
        }
        if self.quote.is_some() || self.flow > 0 {
            return self.inline(line, 0);
        }
        let indent = indentation(line);
        if *line.get(indent)? == b'#' {
            return None;
        }
        let mut at = indent;
        if indent == 0 && (line.starts_with(b"---") || line.starts_with(b"...")) {
            // A new document: nothing is open any more.
            self.block.clear();
            at = skip_spaces(line, 3);
            line.get(at)?;
        }
        while self.block.last().is_some_and(|&col| col >= at) {
            self.block.pop();
        }
        // Compact collections on this line: `- - x`, `? x`, `- key: value`.
        loop {
            if indicator_at(line, at, b'-') || indicator_at(line, at, b'?') {
                self.block.push(at);
                if self.block.len() > self.max {
                    return Some(at);
                }
                at = skip_spaces(line, at.saturating_add(1));
                continue;
            }
            break;
        }
        if let Some(colon) = self.mapping_key(line, at) {
            self.block.push(at);
            if self.block.len() > self.max {
                return Some(at);
            }
            at = skip_spaces(line, colon.saturating_add(1));
        }
        self.value(line, at, indent)
    }

    /// The column of the `:` that makes this line's node at `at` a mapping key (plain or
    /// quoted key), if any.
    fn mapping_key(&self, line: &[u8], at: usize) -> Option<usize> {
        let mut i = at;
        match line.get(at) {
            Some(b'[' | b'{' | b'|' | b'>' | b'#' | b'&' | b'*' | b'!') | None => return None,
            Some(&q @ (b'"' | b'\'')) => {
                i = closing_quote(line, at.saturating_add(1), q)?.saturating_add(1);
                return indicator_at(line, i, b':').then_some(i);
            }
            Some(_) => {}
        }
        while let Some(&b) = line.get(i) {
            if b == b'#' && line.get(i.wrapping_sub(1)).is_some_and(|p| *p == b' ') {
                return None;
            }
            if indicator_at(line, i, b':') {
                return Some(i);
            }
            i = i.saturating_add(1);
        }
        None
    }

    /// A node's value starting at `at` on a block line indented `indent`.
    fn value(&mut self, line: &[u8], at: usize, indent: usize) -> Option<usize> {
        // Anchors and tags come before the node itself.
        let mut at = at;
        while let Some(b'&' | b'!') = line.get(at) {
            while line.get(at).is_some_and(|b| *b != b' ') {
                at = at.saturating_add(1);
            }
            at = skip_spaces(line, at);
        }
        match line.get(at) {
            Some(b'[' | b'{') => {
                self.flow_base = self.block.len();
                self.inline(line, at)
            }
            Some(&q @ (b'"' | b'\'')) => self.inline_quote(line, at.saturating_add(1), q),
            Some(b'|' | b'>') => {
                self.block_scalar = Some(indent);
                None
            }
            _ => None,
        }
    }

    /// A quoted scalar opened before `at`; then the rest of the line as flow text.
    fn inline_quote(&mut self, line: &[u8], at: usize, q: u8) -> Option<usize> {
        match closing_quote(line, at, q) {
            Some(end) => {
                self.quote = None;
                if self.flow > 0 {
                    self.inline(line, end.saturating_add(1))
                } else {
                    None
                }
            }
            None => {
                self.quote = Some(q);
                None
            }
        }
    }

    /// Flow text (or the end of a quoted scalar) from `at`.
    fn inline(&mut self, line: &[u8], at: usize) -> Option<usize> {
        if let Some(q) = self.quote {
            return self.inline_quote(line, at, q);
        }
        let mut i = at;
        // Where a node may start: after `[`, `{`, `,`, `:` or at the beginning.
        let mut node_start = true;
        while let Some(&b) = line.get(i) {
            match b {
                b'[' | b'{' if node_start => {
                    self.flow = self.flow.saturating_add(1);
                    if self.flow_base.saturating_add(self.flow) > self.max {
                        return Some(i);
                    }
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    if self.flow == 0 {
                        // Back in block context: the rest of the line is a comment.
                        return None;
                    }
                }
                b'"' | b'\'' if node_start => {
                    return self.inline_quote(line, i.saturating_add(1), b);
                }
                b'#' if i == 0 || line.get(i.wrapping_sub(1)) == Some(&b' ') => return None,
                _ => {}
            }
            node_start = match b {
                b'[' | b'{' | b',' | b':' => true,
                b' ' | b'\t' => node_start,
                _ => false,
            };
            i = i.saturating_add(1);
        }
        None
    }
}

/// The index of the quote closing a scalar quoted with `q` that goes on at `from`.
fn closing_quote(line: &[u8], from: usize, q: u8) -> Option<usize> {
    let mut i = from;
    while let Some(&b) = line.get(i) {
        if q == b'"' && b == b'\\' {
            i = i.saturating_add(2);
            continue;
        }
        if b == q {
            // `''` inside single quotes is a quote.
            if q == b'\'' && line.get(i.saturating_add(1)) == Some(&b'\'') {
                i = i.saturating_add(2);
                continue;
            }
            return Some(i);
        }
        i = i.saturating_add(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_where_text_nests_too_deep() {
        let flow = "[".repeat(70);
        let flow_map = "{a: ".repeat(70);
        let compact = "- ".repeat(70);
        let mut indented = String::new();
        for i in 0..70 {
            indented.push_str(&" ".repeat(i));
            indented.push_str("a:\n");
        }
        let multiline_flow = "x:\n".to_string() + &"  [\n".repeat(70);
        let after_document = "a: 1\n--- ".to_string() + &"[".repeat(70);
        // (name, text, want: line and column)
        type Case = (&'static str, String, Option<(usize, usize)>);
        let cases: Vec<Case> = vec![
            ("flow sequences", flow, Some((1, 65))),
            ("flow mappings", flow_map, Some((1, 4 * 64 + 1))),
            ("compact block sequences", compact, Some((1, 2 * 64 + 1))),
            ("indentation", indented, Some((65, 65))),
            ("flow over lines", multiline_flow, Some((65, 3))),
            (
                "after a document marker",
                after_document,
                Some((2, 4 + 64 + 1)),
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(too_deep(&text, 64), want, "{name}");
        }
    }

    #[test]
    fn brackets_that_nest_nothing_do_not_count() {
        let deep = "[".repeat(200);
        let cases = [
            format!("a: \"{deep}\"\n"),
            format!("a: '{deep}'\n"),
            format!("a: 'it''s {deep}'\n"),
            format!("a: \"multi\n  line {deep}\"\nb: 1\n"),
            format!("a: 1 # {deep}\n"),
            format!("# {deep}\n"),
            format!("a: |\n  {deep}\n  more\nb: [1]\n"),
            format!("a: >-\n    {deep}\n\n    {deep}\nb: 2\n"),
            format!("regex: a{deep}b\n"),
            format!("a: [x, \"{deep}\", '{deep}']\n"),
            format!("- it's {deep}\n"),
        ];
        for text in cases {
            assert_eq!(too_deep(&text, 64), None, "{text}");
        }
    }

    #[test]
    fn values_deepened_by_aliases_are_measured() {
        let value = |depth: usize| -> Value {
            let text = format!(
                "a: &a {}x{}\nb: [*a]\n",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            serde_norway::from_str(&text).unwrap()
        };
        // `b` is the mapping (1), its list (2) and the copy of `a`.
        assert_eq!(value_too_deep(&value(62), 64), None);
        assert_eq!(value_too_deep(&value(63), 64), Some("b[0]".to_string()));
        let listed: Value = serde_norway::from_str("s: [{x: &x [[[1]]]}, {y: [*x]}]").unwrap();
        assert_eq!(value_too_deep(&listed, 7), None);
        assert_eq!(value_too_deep(&listed, 6), Some("s[1]".to_string()));
        let list: Value = serde_norway::from_str("[[1]]").unwrap();
        assert_eq!(value_too_deep(&list, 1), Some("top level".to_string()));
    }

    #[test]
    fn the_demo_topology_is_shallow() {
        let demo = include_str!("../../testdata/demo-topology.yaml");
        assert_eq!(too_deep(demo, 12), None);
        // A VirtualService with Istio's own routes, as deep as topology files go.
        let routes = r#"
virtualServices:
  - namespace: shop
    name: reviews
    hosts: [reviews]
    http:
      - match:
          - headers:
              end-user: {exact: jason}
            uri: {regex: "^/v[12]/"}
        route:
          - destination: {host: reviews, subset: v2, port: {number: 9080}}
            weight: 80
"#;
        assert_eq!(too_deep(routes, 12), None);
        assert!(too_deep(routes, 5).is_some());
    }
}
