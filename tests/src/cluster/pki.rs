//! The control plane's own PKI, as kubeadm would lay it out: one CA that signs the API
//! server's serving certificate and the client certificates of the admin, the
//! controller-manager and the scheduler, plus the ServiceAccount token signing key (so
//! TokenRequest and TokenReview work for real).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A client certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every file the control plane's processes are started with.
#[derive(Debug, Clone)]
pub struct KubePki {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// ServiceAccount token signing key (private) and its public half.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    /// `system:masters`: the test's own identity.
    pub admin: ClientCert,
    pub controller_manager: ClientCert,
    pub scheduler: ClientCert,
}

impl KubePki {
    /// Writes everything into `dir`; the serving certificate is valid for `ips` and the
    /// in-cluster names of the `kubernetes` Service.
    pub fn create(dir: &Path, ips: &[IpAddr], cluster_domain: &str) -> Result<KubePki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lazyxds test cluster CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca = write("ca.crt", &issuer.pem())?;
        let ca_key = write("ca.key", &ca_key_pem)?;

        let mut names: Vec<String> = vec![
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            format!("kubernetes.default.svc.{cluster_domain}"),
        ];
        names.sort();
        let mut serving = CertificateParams::new(names)?;
        for ip in ips {
            serving.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_keypair = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_keypair, &issuer)?;
        let serving_cert = write("apiserver.crt", &serving_cert.pem())?;
        let serving_key = write("apiserver.key", &serving_keypair.serialize_pem())?;

        let sa = KeyPair::generate()?;
        let sa_key = write("sa.key", &sa.serialize_pem())?;
        let sa_pub = write("sa.pub", &sa.public_key_pem())?;

        let client = |stem: &str, user: &str, group: Option<&str>| -> Result<ClientCert> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, user);
            if let Some(group) = group {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, group);
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok(ClientCert {
                cert: write(&format!("{stem}.crt"), &cert.pem())?,
                key: write(&format!("{stem}.key"), &key.serialize_pem())?,
            })
        };
        Ok(KubePki {
            ca,
            ca_key,
            serving_cert,
            serving_key,
            sa_key,
            sa_pub,
            admin: client("admin", "lazyxds-test-admin", Some("system:masters"))?,
            controller_manager: client(
                "controller-manager",
                "system:kube-controller-manager",
                None,
            )?,
            scheduler: client("scheduler", "system:kube-scheduler", None)?,
        })
    }
}
