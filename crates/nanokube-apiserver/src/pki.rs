//! The cluster's certificates, written the way minikube lays them out (seed S3, S8):
//! a self-signed CA, the API server's serving certificate, the admin client certificate
//! (O=system:masters), the service-account signing key pair, and the front proxy's own CA
//! and `front-proxy-client` certificate (what aggregated API servers trust, as kubeadm
//! lays them out). Created on first start, reused afterwards.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

/// Paths of every file in the data directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The data directory.
    pub dir: PathBuf,
}

impl Paths {
    /// Paths under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Paths { dir: dir.into() }
    }
    /// `ca.crt`.
    pub fn ca_crt(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// `apiserver.crt`.
    pub fn server_crt(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    /// `apiserver.key`.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }
    /// `client.crt` (admin).
    pub fn client_crt(&self) -> PathBuf {
        self.dir.join("client.crt")
    }
    /// `client.key` (admin).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
    /// `sa.key` (service-account signing key, PKCS#8 PEM).
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    /// `sa.pub`.
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
    /// `front-proxy-ca.crt`: the CA aggregated API servers trust for the requests this
    /// server proxies to them (`requestheader-client-ca-file`).
    pub fn front_proxy_ca_crt(&self) -> PathBuf {
        self.dir.join("front-proxy-ca.crt")
    }
    /// `front-proxy-ca.key`.
    pub fn front_proxy_ca_key(&self) -> PathBuf {
        self.dir.join("front-proxy-ca.key")
    }
    /// `front-proxy-client.crt`: this server's client certificate towards them.
    pub fn front_proxy_client_crt(&self) -> PathBuf {
        self.dir.join("front-proxy-client.crt")
    }
    /// `front-proxy-client.key`.
    pub fn front_proxy_client_key(&self) -> PathBuf {
        self.dir.join("front-proxy-client.key")
    }
    /// `state.db`.
    pub fn state_db(&self) -> PathBuf {
        self.dir.join("state.db")
    }
    /// `kubeconfig`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
}

/// PEM material loaded for serving.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate PEM.
    pub ca_pem: String,
    /// CA key PEM.
    pub ca_key_pem: String,
    /// Serving certificate PEM.
    pub server_pem: String,
    /// Serving key PEM.
    pub server_key_pem: String,
    /// Admin client certificate PEM.
    pub client_pem: String,
    /// Admin client key PEM.
    pub client_key_pem: String,
    /// Service-account signing key PEM (PKCS#8, ECDSA P-256).
    pub sa_key_pem: String,
    /// Service-account public key PEM.
    pub sa_pub_pem: String,
    /// The front proxy's CA certificate PEM (what aggregated API servers trust).
    pub front_proxy_ca_pem: String,
    /// The front-proxy client certificate PEM (CN `front-proxy-client`).
    pub front_proxy_client_pem: String,
    /// Its key PEM.
    pub front_proxy_client_key_pem: String,
    /// Whether anything was created on this start.
    pub created: Vec<PathBuf>,
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("{what}: {e}"))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn validity(params: &mut CertificateParams, years: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365 * years);
}

/// A client certificate for `user` in `groups`, signed by the CA (for `nanokube user add`
/// and the admin certificate). Returns (cert PEM, key PEM).
pub fn issue_client_cert(ca_pem: &str, ca_key_pem: &str, user: &str, groups: &[String]) -> std::io::Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(err("ca.key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(err("ca.crt"))?;
    let key = KeyPair::generate().map_err(err("key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err("params"))?;
    let mut dn = DistinguishedName::new();
    for g in groups {
        dn.push(DnType::OrganizationName, g.as_str());
    }
    dn.push(DnType::CommonName, user);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 1);
    let cert = params.signed_by(&key, &issuer).map_err(err("sign"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `common_name` with the given SANs, signed by the CA (the API
/// server's, the kubelet API's). Returns (cert PEM, key PEM).
pub fn issue_serving_cert(ca_pem: &str, ca_key_pem: &str, common_name: &str, sans_ips: &[IpAddr], sans_dns: &[String]) -> std::io::Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(err("ca.key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(err("ca.crt"))?;
    let key = KeyPair::generate().map_err(err("server key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err("server params"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names =
        sans_ips.iter().map(|ip| SanType::IpAddress(*ip)).chain(sans_dns.iter().filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))).collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 1);
    let cert = params.signed_by(&key, &issuer).map_err(err("server sign"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new self-signed CA (10 years), its key written private.
fn new_ca(crt: &Path, key_path: &Path, common_name: &str) -> std::io::Result<()> {
    let key = KeyPair::generate().map_err(err("ca key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err("ca params"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 10);
    let cert = params.self_signed(&key).map_err(err("ca sign"))?;
    write_private(key_path, &key.serialize_pem())?;
    std::fs::write(crt, cert.pem())
}

/// Ensure every certificate exists in the data directory and load them.
/// `sans_ips` and `sans_dns` are the serving certificate's extra SANs.
pub fn ensure(paths: &Paths, sans_ips: &[IpAddr], sans_dns: &[String]) -> std::io::Result<Pki> {
    std::fs::create_dir_all(&paths.dir)?;
    let mut created = Vec::new();

    if !paths.ca_crt().exists() || !paths.ca_key().exists() {
        new_ca(&paths.ca_crt(), &paths.ca_key(), "nanokubeCA")?;
        created.push(paths.ca_crt());
        // A new CA invalidates every certificate signed by an older one.
        for p in [paths.server_crt(), paths.client_crt()] {
            let _ = std::fs::remove_file(p);
        }
    }
    let ca_pem = std::fs::read_to_string(paths.ca_crt())?;
    let ca_key_pem = std::fs::read_to_string(paths.ca_key())?;

    let want_sans: Vec<String> = sans_ips.iter().map(|ip| ip.to_string()).chain(sans_dns.iter().cloned()).collect();
    let sans_file = paths.dir.join("apiserver.sans");
    let have_sans = std::fs::read_to_string(&sans_file).unwrap_or_default();
    if !paths.server_crt().exists() || !paths.server_key().exists() || have_sans.trim() != want_sans.join(",") {
        let (cert, key) = issue_serving_cert(&ca_pem, &ca_key_pem, "nanokube-apiserver", sans_ips, sans_dns)?;
        write_private(&paths.server_key(), &key)?;
        std::fs::write(paths.server_crt(), cert)?;
        std::fs::write(&sans_file, want_sans.join(","))?;
        created.push(paths.server_crt());
    }

    if !paths.client_crt().exists() || !paths.client_key().exists() {
        let (cert, key) = issue_client_cert(&ca_pem, &ca_key_pem, "nanokube-admin", &["system:masters".to_string()])?;
        write_private(&paths.client_key(), &key)?;
        std::fs::write(paths.client_crt(), cert)?;
        created.push(paths.client_crt());
    }

    // The front proxy (the aggregation layer) has a CA of its own, as kubeadm lays it out:
    // aggregated API servers trust it for the user headers only.
    if !paths.front_proxy_ca_crt().exists() || !paths.front_proxy_ca_key().exists() {
        new_ca(&paths.front_proxy_ca_crt(), &paths.front_proxy_ca_key(), "front-proxy-ca")?;
        let _ = std::fs::remove_file(paths.front_proxy_client_crt());
        created.push(paths.front_proxy_ca_crt());
    }
    let front_proxy_ca_pem = std::fs::read_to_string(paths.front_proxy_ca_crt())?;
    if !paths.front_proxy_client_crt().exists() || !paths.front_proxy_client_key().exists() {
        let ca_key = std::fs::read_to_string(paths.front_proxy_ca_key())?;
        let (cert, key) = issue_client_cert(&front_proxy_ca_pem, &ca_key, "front-proxy-client", &[])?;
        write_private(&paths.front_proxy_client_key(), &key)?;
        std::fs::write(paths.front_proxy_client_crt(), cert)?;
        created.push(paths.front_proxy_client_crt());
    }

    if !paths.sa_key().exists() || !paths.sa_pub().exists() {
        let key = KeyPair::generate().map_err(err("sa key"))?;
        write_private(&paths.sa_key(), &key.serialize_pem())?;
        std::fs::write(paths.sa_pub(), key.public_key_pem())?;
        created.push(paths.sa_key());
    }

    Ok(Pki {
        ca_pem,
        ca_key_pem,
        server_pem: std::fs::read_to_string(paths.server_crt())?,
        server_key_pem: std::fs::read_to_string(paths.server_key())?,
        client_pem: std::fs::read_to_string(paths.client_crt())?,
        client_key_pem: std::fs::read_to_string(paths.client_key())?,
        sa_key_pem: std::fs::read_to_string(paths.sa_key())?,
        sa_pub_pem: std::fs::read_to_string(paths.sa_pub())?,
        front_proxy_ca_pem,
        front_proxy_client_pem: std::fs::read_to_string(paths.front_proxy_client_crt())?,
        front_proxy_client_key_pem: std::fs::read_to_string(paths.front_proxy_client_key())?,
        created,
    })
}
