//! Kubeconfig files for the test cluster: one per identity.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::pki::ClientCert;

/// Who a kubeconfig authenticates as.
#[derive(Debug)]
pub enum Credential<'a> {
    /// A client certificate signed by the cluster CA.
    Cert(&'a ClientCert),
    /// A bearer token (e.g. a ServiceAccount's, from TokenRequest).
    Token(&'a str),
}

/// Writes a kubeconfig (JSON is valid YAML) for `server`, trusting `ca`.
pub fn write(path: &Path, server: &str, ca: &Path, credential: &Credential<'_>) -> Result<()> {
    let user = match credential {
        Credential::Cert(c) => json!({
            "client-certificate": c.cert, "client-key": c.key,
        }),
        Credential::Token(t) => json!({"token": t}),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}
