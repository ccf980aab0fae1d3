//! A test-time mesh CA and workload certificates with SPIFFE identities, as Istio's CA would
//! issue them (`spiffe://cluster.local/ns/<ns>/sa/<sa>` as the URI SAN), written as PEM
//! files for Envoy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::envoy::TempDirGuard;

/// Certificate and key files of one workload.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The URI SAN.
    pub spiffe: String,
}

/// The mesh CA; issued files live in its temp dir.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: TempDirGuard,
    ca_file: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("dir", &self.dir.path()).finish()
    }
}

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}")
}

impl Ca {
    pub fn new() -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "lazyxds test mesh CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let dir = TempDirGuard::new("pki")?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, issuer.pem())?;
        Ok(Ca {
            issuer,
            dir,
            ca_file,
        })
    }

    /// The CA certificate (PEM), the trust anchor of both sides.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A workload certificate for `namespace`/`service_account`, usable as client and
    /// server certificate, with extra DNS names.
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        dns_names: &[&str],
    ) -> Result<CertFiles> {
        let spiffe = spiffe_id(namespace, service_account);
        let mut params =
            CertificateParams::new(dns_names.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .insert(0, SanType::URI(spiffe.as_str().try_into()?));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let stem = format!("{namespace}-{service_account}");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}-key.pem")),
            spiffe,
        };
        std::fs::write(&files.cert, cert.pem())
            .with_context(|| format!("writing {}", files.cert.display()))?;
        std::fs::write(&files.key, key.serialize_pem())
            .with_context(|| format!("writing {}", files.key.display()))?;
        Ok(files)
    }
}
