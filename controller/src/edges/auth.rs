//! Who may open an edge stream: only the gateway. Every stream is checked before it
//! takes a stream slot or sees the namespace table; a refusal is a gRPC status
//! (`UNAUTHENTICATED` when the caller proved nothing we accept, `PERMISSION_DENIED` when
//! it proved to be someone else), counted by reason and logged (rate-limited). No
//! message or log line echoes a secret.
//!
//! | mode | where | the gateway proves itself by |
//! | --- | --- | --- |
//! | `xfcc` | behind the controller's own Istio sidecar (the install) | the LAST element of `x-forwarded-client-cert` ([`super::xfcc`]): `By=` our own SPIFFE id (our sidecar appended it), `URI=` the gateway's |
//! | `mtls` | outside a mesh | a client certificate from `--edge-client-ca` whose URI SAN is the gateway's id |
//! | `token` | outside a mesh | `authorization: Bearer <token>`, compared in constant time with `--edge-token-file` |
//! | `none` | loopback `--grpc-addr` only | nothing |
//!
//! Why `xfcc` is not forgeable (istiod's source, `istio.io/istio`
//! `pilot/pkg/networking/core/listener_inbound.go` `buildSidecarInboundHTTPOpts`,
//! lines 824-831: the sidecar's inbound HTTP connection manager gets
//! `forward_client_cert_details` from the pod's ProxyConfig, default `APPEND_FORWARD`
//! (`pilot/pkg/networking/util/proxy_headers.go:52`, overridden at :72-74), and
//! `set_current_client_cert_details` with `Subject`, `URI` and `DNS`): the install pins
//! `SANITIZE_SET` in the controller pod's `proxy.istio.io/config`, so on an mTLS connection
//! the header holds exactly the element our sidecar wrote and on a plaintext one (a
//! PERMISSIVE port) it is removed. Under `APPEND_FORWARD` a plaintext client's header
//! would be forwarded as sent, which is why only the last element counts, why its `By=`
//! must be us, and why the AuthorizationPolicy (principals need mTLS) stays as the
//! first gate.

use std::path::Path;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::xfcc;

/// The header Envoy writes the caller's certificate details into.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

use lazyxds_proto::limits::{is_token, MAX_TOKEN_BYTES, MIN_TOKEN_BYTES};

/// How edge streams are authenticated (`--edge-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EdgeAuthMode {
    /// Behind the controller's Istio sidecar: the x-forwarded-client-cert element it
    /// appends names the gateway (--gateway-identity) and is ours (--own-identity).
    Xfcc,
    /// TLS with client certificates from --edge-client-ca; the gateway's URI SAN is
    /// --gateway-identity.
    Mtls,
    /// A bearer token (authorization metadata) equal to --edge-token-file's content.
    Token,
    /// No authentication: only with a loopback --grpc-addr.
    None,
}

impl EdgeAuthMode {
    pub fn name(self) -> &'static str {
        match self {
            EdgeAuthMode::Xfcc => "xfcc",
            EdgeAuthMode::Mtls => "mtls",
            EdgeAuthMode::Token => "token",
            EdgeAuthMode::None => "none",
        }
    }
}

/// The check each stream goes through (the TLS part of `mtls` is the listener's).
#[derive(Clone)]
pub enum EdgeAuth {
    None,
    Xfcc {
        own: String,
        gateway: String,
    },
    Mtls {
        gateway: String,
    },
    /// SHA-256 of the token: compared digest to digest, in constant time.
    Token {
        digest: [u8; 32],
    },
}

impl std::fmt::Debug for EdgeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeAuth::None => f.write_str("None"),
            EdgeAuth::Xfcc { own, gateway } => f
                .debug_struct("Xfcc")
                .field("own", own)
                .field("gateway", gateway)
                .finish(),
            EdgeAuth::Mtls { gateway } => f.debug_struct("Mtls").field("gateway", gateway).finish(),
            EdgeAuth::Token { .. } => f.write_str("Token(..)"),
        }
    }
}

/// Why a stream was refused; each is a `reason` label of
/// `lazyxds_grpc_auth_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credential of the configured kind (no header, no token, no client certificate).
    Missing(&'static str),
    /// A credential that does not parse (XFCC syntax, not `Bearer`, ...).
    Malformed(String),
    /// The XFCC element was not appended by our own sidecar (`By=` is not us).
    NotOurSidecar(String),
    /// Authenticated, as someone other than the gateway.
    WrongIdentity(String),
    /// A token that is not ours.
    WrongToken,
}

impl Refusal {
    /// Every reason label, in [`Refusal::reason_index`] order; the last is the TLS
    /// handshake's (counted by the listener).
    pub const REASONS: [&'static str; 6] = [
        "missing",
        "malformed",
        "not_our_sidecar",
        "wrong_identity",
        "wrong_token",
        "tls_handshake",
    ];
    /// Index of `tls_handshake` in [`Refusal::REASONS`].
    pub const TLS_HANDSHAKE: usize = 5;

    pub fn reason_index(&self) -> usize {
        match self {
            Refusal::Missing(_) => 0,
            Refusal::Malformed(_) => 1,
            Refusal::NotOurSidecar(_) => 2,
            Refusal::WrongIdentity(_) => 3,
            Refusal::WrongToken => 4,
        }
    }

    pub fn reason(&self) -> &'static str {
        Self::REASONS
            .get(self.reason_index())
            .copied()
            .unwrap_or("unknown")
    }

    pub fn code(&self) -> Code {
        match self {
            Refusal::WrongIdentity(_) => Code::PermissionDenied,
            _ => Code::Unauthenticated,
        }
    }

    /// What was wrong, for the caller and the log; never a secret.
    pub fn message(&self) -> String {
        match self {
            Refusal::Missing(what) => {
                format!("lazyxds accepts edge streams only from the gateway: {what}")
            }
            Refusal::Malformed(what) => {
                format!("lazyxds cannot read the caller's credentials: {what}")
            }
            Refusal::NotOurSidecar(by) => format!(
                "the last x-forwarded-client-cert element was not appended by this controller's \
                 sidecar (By={by}): direct connections that bypass the sidecar are refused"
            ),
            Refusal::WrongIdentity(who) => {
                format!("{who} is not the lazyxds gateway; only the gateway may report edges")
            }
            Refusal::WrongToken => "the bearer token is not the one lazyxds was given \
                 (--edge-token-file)"
                .to_string(),
        }
    }

    pub fn status(&self) -> Status {
        Status::new(self.code(), self.message())
    }
}

/// A value from a caller, shortened and quoted for a message or a log line.
fn shown(value: &str) -> String {
    const MAX: usize = 256;
    let mut s: String = value.chars().take(MAX).collect();
    if value.chars().count() > MAX {
        s.push('…');
    }
    format!("{s:?}")
}

impl EdgeAuth {
    /// A token read from `path`: its content, trailing whitespace removed.
    pub fn token_from_file(path: &Path) -> Result<EdgeAuth, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("--edge-token-file {}: {e}", path.display()))?;
        let token = trim_ascii_end(&text);
        if token.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "--edge-token-file {}: the token has {} bytes, fewer than {MIN_TOKEN_BYTES} \
                 (e.g. `head -c 32 /dev/urandom | base64`)",
                path.display(),
                token.len()
            ));
        }
        if !is_token(token) {
            return Err(format!(
                "--edge-token-file {}: the token must be at most {MAX_TOKEN_BYTES} bytes of \
                 printable ASCII without spaces (it travels as a header value)",
                path.display()
            ));
        }
        Ok(EdgeAuth::Token {
            digest: sha256(token),
        })
    }

    /// Checks a stream's credentials: its metadata and, with `mtls`, the URI SANs of the
    /// client certificate the listener verified (`None`: not a TLS connection; empty: no
    /// client certificate). `Ok` with who the caller is.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        client_cert_uris: Option<&[String]>,
    ) -> Result<String, Refusal> {
        match self {
            EdgeAuth::None => Ok("anyone (--edge-auth none)".into()),
            EdgeAuth::Xfcc { own, gateway } => {
                let values: Vec<&[u8]> = metadata
                    .get_all(XFCC_HEADER)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                check_xfcc(&values, own, gateway)
            }
            EdgeAuth::Mtls { gateway } => check_client_cert(client_cert_uris, gateway),
            EdgeAuth::Token { digest } => {
                let values: Vec<&[u8]> = metadata
                    .get_all("authorization")
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                check_token(&values, digest)
            }
        }
    }
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i.saturating_add(1));
    bytes.get(..end).unwrap_or_default()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `x-forwarded-client-cert` values of a request (one, as Envoy sends it).
pub fn check_xfcc(values: &[&[u8]], own: &str, gateway: &str) -> Result<String, Refusal> {
    let value = match values {
        [] => {
            return Err(Refusal::Missing(
                "no x-forwarded-client-cert header (the stream did not come through this \
                 controller's Istio sidecar over mTLS)",
            ))
        }
        [one] => *one,
        more => {
            return Err(Refusal::Malformed(format!(
                "{} x-forwarded-client-cert headers, expected one",
                more.len()
            )))
        }
    };
    let text = std::str::from_utf8(value)
        .map_err(|_| Refusal::Malformed("x-forwarded-client-cert is not UTF-8".into()))?;
    let element = xfcc::last(text)
        .map_err(|e| Refusal::Malformed(format!("x-forwarded-client-cert: {e}")))?;
    match element.single("By") {
        Ok(Some(by)) if by == own => {}
        Ok(Some(by)) => return Err(Refusal::NotOurSidecar(shown(by))),
        Ok(None) => {
            return Err(Refusal::Malformed(
                "the last x-forwarded-client-cert element has no By=".into(),
            ))
        }
        Err(n) => {
            return Err(Refusal::Malformed(format!(
                "the last x-forwarded-client-cert element has {n} By= values"
            )))
        }
    }
    match element.single("URI") {
        Ok(Some(uri)) if uri == gateway => Ok(uri.to_string()),
        Ok(Some(uri)) => Err(Refusal::WrongIdentity(format!("caller {}", shown(uri)))),
        Ok(None) => Err(Refusal::Missing(
            "the caller's certificate has no URI SAN (no SPIFFE identity)",
        )),
        Err(n) => Err(Refusal::Malformed(format!(
            "the caller's certificate has {n} URI SANs; a workload certificate has one"
        ))),
    }
}

/// The client certificate's URI SANs (the listener verified the chain against
/// `--edge-client-ca`).
pub fn check_client_cert(uris: Option<&[String]>, gateway: &str) -> Result<String, Refusal> {
    match uris {
        None => Err(Refusal::Missing("not a TLS connection (--edge-auth mtls)")),
        Some([]) => Err(Refusal::Missing(
            "no client certificate (--edge-auth mtls needs one from --edge-client-ca)",
        )),
        Some(uris) if uris.iter().any(|u| u == gateway) => Ok(gateway.to_string()),
        Some(uris) => Err(Refusal::WrongIdentity(format!(
            "client certificate with URI SANs [{}]",
            uris.iter().map(|u| shown(u)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// `authorization: Bearer <token>`; the token is never shown.
pub fn check_token(values: &[&[u8]], digest: &[u8; 32]) -> Result<String, Refusal> {
    let value = match values {
        [] => return Err(Refusal::Missing("no authorization metadata (bearer token)")),
        [one] => *one,
        more => {
            return Err(Refusal::Malformed(format!(
                "{} authorization values, expected one",
                more.len()
            )))
        }
    };
    let Some(token) = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
    else {
        return Err(Refusal::Malformed(
            "authorization is not `Bearer <token>`".into(),
        ));
    };
    if bool::from(sha256(token).ct_eq(digest)) {
        Ok("the holder of the edge token".into())
    } else {
        Err(Refusal::WrongToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTL: &str = "spiffe://cluster.local/ns/lazyxds-system/sa/lazyxds";
    const GW: &str = "spiffe://cluster.local/ns/lazyxds-system/sa/lazyxds-gateway";
    const EVIL: &str = "spiffe://cluster.local/ns/shop/sa/cart";

    fn reason(r: Result<String, Refusal>) -> Result<String, &'static str> {
        r.map_err(|e| e.reason())
    }

    /// Only the last element counts; its By= must be this controller, its URI= the gateway.
    #[test]
    fn xfcc_accepts_only_the_gateway_through_our_sidecar() {
        let ours = |uri: &str| format!("By={CTL};Hash=h;Subject=\"\";URI={uri};DNS=x");
        let cases: Vec<(Vec<String>, Result<String, &str>)> = vec![
            (vec![ours(GW)], Ok(GW.into())),
            // Forged earlier elements change nothing, either way.
            (
                vec![format!("By={CTL};URI={EVIL},{}", ours(GW))],
                Ok(GW.into()),
            ),
            (
                vec![format!("By={CTL};URI={GW},{}", ours(EVIL))],
                Err("wrong_identity"),
            ),
            // A client that bypassed the sidecar and wrote the header itself as another
            // proxy would: By= is not us.
            (
                vec![format!("By=spiffe://cluster.local/ns/x/sa/proxy;URI={GW}")],
                Err("not_our_sidecar"),
            ),
            // ... or appended to a forged one ending in an open quote.
            (
                vec![format!("By={CTL};URI={GW},Subject=\",{}", ours(EVIL))],
                Err("malformed"),
            ),
            (vec![], Err("missing")),
            (vec![String::new()], Err("malformed")),
            (vec![ours(GW), ours(GW)], Err("malformed")),
            (vec![format!("Hash=h;URI={GW}")], Err("malformed")),
            (
                vec![format!("By={CTL};By={CTL};URI={GW}")],
                Err("malformed"),
            ),
            // A certificate without a SPIFFE identity.
            (
                vec![format!("By={CTL};Hash=h;Subject=\"CN=x\"")],
                Err("missing"),
            ),
            (
                vec![format!("By={CTL};URI={GW};URI={EVIL}")],
                Err("malformed"),
            ),
            // Not the same identity: another trust domain, a suffix, a case change.
            (
                vec![ours(
                    "spiffe://other.td/ns/lazyxds-system/sa/lazyxds-gateway",
                )],
                Err("wrong_identity"),
            ),
            (vec![ours(&format!("{GW}-x"))], Err("wrong_identity")),
            (vec![ours(&GW.to_uppercase())], Err("wrong_identity")),
        ];
        for (values, want) in cases {
            let bytes: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            assert_eq!(reason(check_xfcc(&bytes, CTL, GW)), want, "{values:?}");
        }
        // Non-UTF-8.
        assert_eq!(reason(check_xfcc(&[b"By=\xff"], CTL, GW)), Err("malformed"));
    }

    #[test]
    fn wrong_identity_is_permission_denied_the_rest_unauthenticated() {
        let wrong = check_xfcc(&[format!("By={CTL};URI={EVIL}").as_bytes()], CTL, GW).unwrap_err();
        assert_eq!(wrong.code(), Code::PermissionDenied);
        assert!(wrong.message().contains(EVIL), "{}", wrong.message());
        let missing = check_xfcc(&[], CTL, GW).unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
    }

    #[test]
    fn client_certificates_must_name_the_gateway() {
        let uris = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        type Case = (Option<Vec<String>>, Result<String, &'static str>);
        let cases: Vec<Case> = vec![
            (Some(uris(&[GW])), Ok(GW.into())),
            (Some(uris(&["spiffe://x/y", GW])), Ok(GW.into())),
            (Some(uris(&[EVIL])), Err("wrong_identity")),
            (Some(vec![]), Err("missing")),
            (None, Err("missing")),
        ];
        for (given, want) in cases {
            assert_eq!(
                reason(check_client_cert(given.as_deref(), GW)),
                want,
                "{given:?}"
            );
        }
    }

    #[test]
    fn tokens_compare_whole_and_are_never_shown() {
        let secret = "s3cret-token-0123456789";
        let digest = sha256(secret.as_bytes());
        let cases: Vec<(Vec<String>, Result<(), &str>)> = vec![
            (vec![format!("Bearer {secret}")], Ok(())),
            (vec![format!("bearer {secret}")], Ok(())),
            (vec![format!("Bearer {secret}x")], Err("wrong_token")),
            (
                vec![format!("Bearer {}", &secret[..10])],
                Err("wrong_token"),
            ),
            (vec!["Bearer ".into()], Err("wrong_token")),
            (vec![secret.into()], Err("malformed")),
            (vec![format!("Basic {secret}")], Err("malformed")),
            (vec![], Err("missing")),
            (
                vec![format!("Bearer {secret}"), format!("Bearer {secret}")],
                Err("malformed"),
            ),
        ];
        for (values, want) in cases {
            let bytes: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            let got = check_token(&bytes, &digest);
            if let Err(refusal) = &got {
                assert!(!refusal.message().contains(secret), "{refusal:?}");
                assert!(!refusal.message().contains(&secret[..10]), "{refusal:?}");
            }
            assert_eq!(got.map(|_| ()).map_err(|e| e.reason()), want, "{values:?}");
        }
    }

    #[test]
    fn token_files_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        let auth = EdgeAuth::token_from_file(&path).unwrap();
        let EdgeAuth::Token { digest } = &auth else {
            panic!("{auth:?}")
        };
        assert!(check_token(&[b"Bearer 0123456789abcdef"], digest).is_ok());
        assert_eq!(format!("{auth:?}"), "Token(..)");
        std::fs::write(&path, "short\n").unwrap();
        let err = EdgeAuth::token_from_file(&path).unwrap_err();
        assert!(
            err.contains("--edge-token-file") && err.contains("fewer than 16"),
            "{err}"
        );
        assert!(!err.contains("short"), "{err}");
        std::fs::write(&path, "0123456789 abcdef").unwrap();
        assert!(EdgeAuth::token_from_file(&path).is_err());
        let missing = EdgeAuth::token_from_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.contains("--edge-token-file"), "{missing}");
    }
}
