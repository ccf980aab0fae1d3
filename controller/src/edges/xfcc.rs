//! Envoy's `x-forwarded-client-cert` header, parsed (pure; no I/O).
//!
//! The value is a comma-separated list of elements, one per proxy that appended one; each
//! element is a semicolon-separated list of `Key=value` pairs (`By`, `Hash`, `Cert`,
//! `Chain`, `Subject`, `URI`, `DNS`; `By`, `URI` and `DNS` may repeat). A value holding
//! `,` `;` or `=` is double-quoted (Envoy quotes `Subject`, `Cert` and `Chain`), and inside
//! quotes a backslash escapes the next character. (Envoy's `conn_manager_utility.cc`,
//! `mutateXfccRequestHeader`; the header's documentation in `HttpConnectionManager`.)
//!
//! Only the LAST element can be trusted, and only by the proxy that appended it: every
//! earlier one came from the client. An unterminated quote anywhere makes the whole
//! header malformed: a forged element ending inside quotes cannot swallow the element
//! our sidecar appended after it (that element's own quotes come in pairs, so the header
//! would still end inside quotes).

/// One element: the certificate details one proxy added, pairs in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub pairs: Vec<(String, String)>,
}

impl Element {
    /// Every value of `key` (case-insensitive, as Envoy's keys are fixed words).
    pub fn values<'a, 'k>(&'a self, key: &'k str) -> impl Iterator<Item = &'a str> + use<'a, 'k> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The one value of `key`: `Ok(None)` when absent, `Err(count)` when it repeats.
    pub fn single<'a>(&'a self, key: &str) -> Result<Option<&'a str>, usize> {
        let mut values = self.values(key);
        let first = values.next();
        match values.count() {
            0 => Ok(first),
            more => Err(more.saturating_add(1)),
        }
    }
}

/// What is wrong with a header value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XfccError {
    #[error("the header is empty")]
    Empty,
    #[error("a quoted value is not terminated")]
    UnterminatedQuote,
    #[error("element {element} has a pair without '=': {pair:?}")]
    NoEquals { element: usize, pair: String },
    #[error("element {element} has an empty key")]
    EmptyKey { element: usize },
    #[error("element {element} is empty")]
    EmptyElement { element: usize },
    #[error("a quote opens in the middle of a value")]
    StrayQuote,
}

/// Splits `text` at `sep` outside double quotes; `Err` on an unterminated quote.
fn split_unquoted(text: &str, sep: char) -> Result<Vec<&str>, XfccError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i.saturating_add(c.len_utf8());
            }
            _ => {}
        }
    }
    if quoted {
        return Err(XfccError::UnterminatedQuote);
    }
    parts.push(text.get(start..).unwrap_or_default());
    Ok(parts)
}

/// A value, unquoted: `"a\"b"` → `a"b`; an unquoted one as is (trimmed).
fn unquote(value: &str) -> Result<String, XfccError> {
    let value = value.trim();
    let Some(inner) = value.strip_prefix('"') else {
        if value.contains('"') {
            return Err(XfccError::StrayQuote);
        }
        return Ok(value.to_string());
    };
    let Some(inner) = inner.strip_suffix('"') else {
        return Err(XfccError::UnterminatedQuote);
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            '"' => return Err(XfccError::StrayQuote),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Every element of a header value, in order.
pub fn parse(header: &str) -> Result<Vec<Element>, XfccError> {
    if header.trim().is_empty() {
        return Err(XfccError::Empty);
    }
    let mut elements = Vec::new();
    for (element, text) in split_unquoted(header, ',')?.into_iter().enumerate() {
        if text.trim().is_empty() {
            return Err(XfccError::EmptyElement { element });
        }
        let mut pairs = Vec::new();
        for pair in split_unquoted(text, ';')? {
            if pair.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = pair.split_once('=') else {
                return Err(XfccError::NoEquals {
                    element,
                    pair: pair.chars().take(64).collect(),
                });
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(XfccError::EmptyKey { element });
            }
            pairs.push((key.to_string(), unquote(value)?));
        }
        if pairs.is_empty() {
            return Err(XfccError::EmptyElement { element });
        }
        elements.push(Element { pairs });
    }
    Ok(elements)
}

/// The element the last proxy appended (the only one it vouches for).
pub fn last(header: &str) -> Result<Element, XfccError> {
    parse(header)?.pop().ok_or(XfccError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(pairs: &[(&str, &str)]) -> Element {
        Element {
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn headers_parse_into_elements() {
        const CTL: &str = "spiffe://cluster.local/ns/lazyxds-system/sa/lazyxds";
        const GW: &str = "spiffe://cluster.local/ns/lazyxds-system/sa/lazyxds-gateway";
        let sidecar = format!("By={CTL};Hash=abc123;Subject=\"\";URI={GW}");
        let cases: Vec<(String, Result<Vec<Element>, XfccError>)> = vec![
            // What Istio's sidecar sets (SANITIZE_SET / APPEND_FORWARD, Subject+URI+DNS).
            (
                sidecar.clone(),
                Ok(vec![el(&[
                    ("By", CTL),
                    ("Hash", "abc123"),
                    ("Subject", ""),
                    ("URI", GW),
                ])]),
            ),
            // Commas, semicolons and '=' inside quotes belong to the value.
            (
                "By=a;Subject=\"CN=x,O=y;z\";URI=u".into(),
                Ok(vec![el(&[
                    ("By", "a"),
                    ("Subject", "CN=x,O=y;z"),
                    ("URI", "u"),
                ])]),
            ),
            // An escaped quote inside quotes.
            (
                r#"Subject="a\"b,c";URI=u"#.into(),
                Ok(vec![el(&[("Subject", "a\"b,c"), ("URI", "u")])]),
            ),
            // Several elements, in order; repeated keys kept.
            (
                format!("By=x;URI=y,{sidecar};DNS=a;DNS=b"),
                Ok(vec![
                    el(&[("By", "x"), ("URI", "y")]),
                    el(&[
                        ("By", CTL),
                        ("Hash", "abc123"),
                        ("Subject", ""),
                        ("URI", GW),
                        ("DNS", "a"),
                        ("DNS", "b"),
                    ]),
                ]),
            ),
            ("".into(), Err(XfccError::Empty)),
            ("  ".into(), Err(XfccError::Empty)),
            (
                "By=a,,URI=b".into(),
                Err(XfccError::EmptyElement { element: 1 }),
            ),
            ("By=a;Subject=\"x".into(), Err(XfccError::UnterminatedQuote)),
            (
                "By=a;junk".into(),
                Err(XfccError::NoEquals {
                    element: 0,
                    pair: "junk".into(),
                }),
            ),
            ("=a".into(), Err(XfccError::EmptyKey { element: 0 })),
            ("URI=a\"b\"".into(), Err(XfccError::StrayQuote)),
            ("Subject=\"a\"b".into(), Err(XfccError::UnterminatedQuote)),
        ];
        for (header, want) in cases {
            assert_eq!(parse(&header), want, "{header:?}");
        }
    }

    /// A forged element ending inside quotes cannot swallow the element the sidecar appends
    /// after it: the header ends inside quotes and is refused whole.
    #[test]
    fn a_forged_open_quote_cannot_hide_the_appended_element() {
        let forged = "By=spiffe://td/ns/sys/sa/ctl;URI=spiffe://td/ns/sys/sa/gw,Subject=\"";
        let appended =
            "By=spiffe://td/ns/sys/sa/ctl;Hash=h;Subject=\"\";URI=spiffe://td/ns/evil/sa/evil";
        assert_eq!(
            last(&format!("{forged},{appended}")),
            Err(XfccError::UnterminatedQuote)
        );
        // Balanced forged quotes: the appended element is the last, as it should be.
        let forged = "By=x;Subject=\"a,b\"";
        let got = last(&format!("{forged},{appended}")).unwrap();
        assert_eq!(got.single("URI"), Ok(Some("spiffe://td/ns/evil/sa/evil")));
        // A forged trailing backslash inside quotes escapes only the comma after it.
        let forged = "By=x;Subject=\"a\\";
        assert_eq!(
            last(&format!("{forged},{appended}")),
            Err(XfccError::UnterminatedQuote)
        );
    }

    #[test]
    fn single_values_and_repeats() {
        let e = el(&[("URI", "a"), ("uri", "b"), ("By", "c")]);
        assert_eq!(e.single("By"), Ok(Some("c")));
        assert_eq!(e.single("URI"), Err(2));
        assert_eq!(e.single("DNS"), Ok(None));
    }
}
