//! Who may call what: the cluster's certificate authority, the certificates it issues (each
//! names one [`Role`]), and bearer tokens (kept only as hashes). Shared by the node (which
//! checks callers), the client and `dynamoctl` (which present credentials, and create a dev
//! cluster's CA) and the operator (which issues a cluster's CA and certificates).
//!
//! A certificate's role is a URI subject alternative name `urn:dynamokv:role:<role>`; its
//! subject common name is the holder's name (a node id, `operator`, a user). A certificate
//! without a role URI grants nothing. A cluster is identified by its name and the SHA-256
//! fingerprint of its CA certificate ([`fingerprint`]), which gossip carries so that nodes of
//! two clusters never merge their views.
//!
//! The token file holds one token per line, `<role> <name> sha256:<hex>`; `#` starts a comment.
//! Only the SHA-256 of a token is stored, so the file (or its Secret) does not let anyone call
//! the cluster; comparisons are in constant time.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Client API reads (get, ring).
    Read,
    /// Client API reads and writes.
    ReadWrite,
    /// Everything a client may do, plus the admin API (status, decommission, repair, faults).
    Admin,
    /// Another node of the cluster: the internode API only.
    Peer,
}

/// The prefix of the URI subject alternative name that carries a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:dynamokv:role:";

impl Role {
    pub const ALL: [Role; 4] = [Role::Read, Role::ReadWrite, Role::Admin, Role::Peer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "readwrite",
            Role::Admin => "admin",
            Role::Peer => "peer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a holder of this role may do what `needed` guards. Admin includes the client
    /// roles; peer is separate (a node's certificate is not an admin's).
    pub fn grants(self, needed: Role) -> bool {
        match self {
            Role::Peer => needed == Role::Peer,
            Role::Admin => needed != Role::Peer,
            Role::ReadWrite => matches!(needed, Role::Read | Role::ReadWrite),
            Role::Read => needed == Role::Read,
        }
    }

    /// The role URI a certificate carries.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate or token problem.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{what} is not a valid PEM certificate: {message}")]
    BadCertificate { what: String, message: String },
    #[error("{what} is not a valid PEM private key: {message}")]
    BadKey { what: String, message: String },
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
    #[error("token file {path}, line {line}: {message}")]
    BadToken { path: String, line: usize, message: String },
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject common name.
    pub name: String,
    pub role: Role,
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// When the certificate stops being valid.
    pub not_after: SystemTime,
}

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// Subject common name: a node id, `operator`, a user name.
    pub name: String,
    pub role: Role,
    /// DNS names it serves under (nodes): pod and Service names, `localhost`.
    pub dns_names: Vec<String>,
    /// IP addresses it serves on (nodes).
    pub ips: Vec<IpAddr>,
    /// How long it is valid from now.
    pub lifetime: Duration,
}

impl CertRequest {
    /// A request for a client or admin certificate (no server names).
    pub fn client(name: impl Into<String>, role: Role, lifetime: Duration) -> CertRequest {
        CertRequest { name: name.into(), role, dns_names: vec![], ips: vec![], lifetime }
    }
}

/// A cluster's certificate authority: its certificate and its signing key.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

/// Certificates start being valid a little in the past, so a peer whose clock is slightly
/// behind accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(300);

fn validity(lifetime: Duration) -> (time::OffsetDateTime, time::OffsetDateTime, SystemTime) {
    let now = SystemTime::now();
    let not_after = now + lifetime;
    (time::OffsetDateTime::from(now - BACKDATE), time::OffsetDateTime::from(not_after), not_after)
}

impl Ca {
    /// A new CA for cluster `cluster`, valid for `lifetime`.
    pub fn generate(cluster: &str, lifetime: Duration) -> Result<Ca, SecurityError> {
        let issue = |e: rcgen::Error| SecurityError::Issue(e.to_string());
        let key = KeyPair::generate().map_err(issue)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("dynamo cluster {cluster} CA"));
        dn.push(DnType::OrganizationName, "dynamokv");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after, _) = validity(lifetime);
        let cert = params.self_signed(&key).map_err(issue)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its PEM certificate and key (a Secret, a dev cluster's files).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, SecurityError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| SecurityError::BadKey {
            what: "the CA key".into(),
            message: e.to_string(),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| SecurityError::BadCertificate {
                what: "the CA certificate".into(),
                message: e.to_string(),
            })?;
        Ok(Ca { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string(), issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate's SHA-256 fingerprint (hex): half of the cluster's identity.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_pem).expect("a CA built from a PEM certificate has one")
    }

    /// A certificate signed by this CA for `request`.
    pub fn issue(&self, request: &CertRequest) -> Result<Issued, SecurityError> {
        let issue = |e: rcgen::Error| SecurityError::Issue(e.to_string());
        let key = KeyPair::generate().map_err(issue)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, request.name.clone());
        dn.push(DnType::OrganizationName, "dynamokv");
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(request.role.uri().try_into().map_err(issue)?)];
        for name in &request.dns_names {
            sans.push(SanType::DnsName(name.clone().try_into().map_err(issue)?));
        }
        sans.extend(request.ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if !request.dns_names.is_empty() || !request.ips.is_empty() {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after, expires) = validity(request.lifetime);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after: expires })
    }
}

/// The DER bytes of the first certificate in `pem`.
pub fn first_certificate(pem: &str) -> Result<Vec<u8>, SecurityError> {
    first_cert_der(pem, "the certificate")
}

fn first_cert_der(pem: &str, what: &str) -> Result<Vec<u8>, SecurityError> {
    let bad = |message: String| SecurityError::BadCertificate { what: what.into(), message };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(format!("found a {} block, not a CERTIFICATE", pem.label)));
    }
    Ok(pem.contents)
}

/// The SHA-256 fingerprint (hex) of the first certificate in `pem`.
pub fn fingerprint(pem: &str) -> Result<String, SecurityError> {
    Ok(hex::encode(Sha256::digest(first_cert_der(pem, "the certificate")?)))
}

/// When the first certificate in `pem` expires.
pub fn not_after(pem: &str) -> Result<SystemTime, SecurityError> {
    let der = first_cert_der(pem, "the certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        SecurityError::BadCertificate { what: "the certificate".into(), message: e.to_string() }
    })?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// The holder and role of a DER certificate (already verified against the CA by TLS); None
/// when it names no role.
pub fn identity_of(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let role = cert.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => {
                uri.strip_prefix(ROLE_URI_PREFIX).and_then(Role::parse)
            }
            _ => None,
        })
    })?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Some(CertIdentity { name, role })
}

/// A new random bearer token (256 bits, hex).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// The form a token is stored in: `sha256:<hex>`.
pub fn hash_token(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.trim().as_bytes())))
}

/// One line of the token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub role: Role,
    pub name: String,
    /// `sha256:<hex>`.
    pub hash: String,
}

impl TokenEntry {
    /// The entry for a token given in clear (what `dynamoctl dev up` and the operator write).
    pub fn for_token(role: Role, name: impl Into<String>, token: &str) -> TokenEntry {
        TokenEntry { role, name: name.into(), hash: hash_token(token) }
    }
}

/// The tokens a node accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

impl Tokens {
    pub fn new(entries: Vec<TokenEntry>) -> Tokens {
        Tokens { entries }
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Tokens, SecurityError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SecurityError::Read { path: path.display().to_string(), source })?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// Parses a token file's text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, SecurityError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| SecurityError::BadToken {
                path: origin.to_string(),
                line: i + 1,
                message,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [role, name, hash] = fields[..] else {
                return Err(bad("expected `<role> <name> sha256:<hex>`".into()));
            };
            let role = Role::parse(role).filter(|r| *r != Role::Peer).ok_or_else(|| {
                bad(format!("unknown role '{role}': use read, readwrite or admin"))
            })?;
            let hex_part = hash.strip_prefix("sha256:").unwrap_or("");
            if hex_part.len() != 64 || hex::decode(hex_part).is_err() {
                return Err(bad(
                    "the hash must be sha256: and 64 hex digits (store hashes, not tokens: \
                     `dynamoctl token hash`)"
                        .into(),
                ));
            }
            entries.push(TokenEntry {
                role,
                name: name.to_string(),
                hash: hash.to_ascii_lowercase(),
            });
        }
        Ok(Tokens { entries })
    }

    /// The file form of these tokens.
    pub fn render(&self) -> String {
        let mut out = String::from("# <role> <name> sha256:<hex of the token>\n");
        for e in &self.entries {
            out.push_str(&format!("{} {} {}\n", e.role, e.name, e.hash));
        }
        out
    }

    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// The entry whose hash matches `token`, compared in constant time.
    pub fn verify(&self, token: &str) -> Option<&TokenEntry> {
        let presented = hash_token(token);
        let mut found = None;
        for entry in &self.entries {
            if constant_time_eq(presented.as_bytes(), entry.hash.as_bytes()) {
                found = Some(entry);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a caller presents to a node: the CA it verifies the node with, its own certificate
/// (optional) and a bearer token (optional). No CA means plaintext (a `--dev --insecure` node).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The cluster CA's certificate, PEM; None: plaintext.
    pub ca_pem: Option<String>,
    /// This caller's certificate and key, PEM (mutual TLS).
    pub identity: Option<(String, String)>,
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The name to verify the node's certificate against, instead of the host dialled (a node
    /// dialled by IP whose certificate names its Service, as on Kubernetes).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.ca_pem.is_some())
            .field("certificate", &self.identity.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Credentials {
    /// Plaintext, no credential: only for `--dev --insecure` nodes.
    pub fn insecure() -> Credentials {
        Credentials::default()
    }

    /// Reads PEM files; `setting` names below are the flags the caller used, for errors.
    pub fn load(
        ca_cert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        token: Option<String>,
    ) -> Result<Credentials, SecurityError> {
        let ca_pem = ca_cert.map(|p| read_pem("ca-cert", p)).transpose()?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read_pem("cert", c)?, read_pem("key", k)?)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(SecurityError::BadKey {
                    what: "--cert/--key".into(),
                    message: "give both the certificate and its key, or neither".into(),
                })
            }
        };
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        Ok(Credentials { ca_pem, identity, token, server_name: None })
    }

    /// Whether calls use TLS.
    pub fn is_tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// The TLS settings of a channel (None: plaintext).
    pub fn tls_config(&self) -> Option<tonic::transport::ClientTlsConfig> {
        let ca = self.ca_pem.as_ref()?;
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Some(tls)
    }

    /// An endpoint for `address` (HOST:PORT) with these credentials' scheme and TLS settings.
    pub fn endpoint(
        &self,
        address: &str,
    ) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("{}://{address}", self.scheme()))?;
        match self.tls_config() {
            Some(tls) => endpoint.tls_config(tls),
            None => Ok(endpoint),
        }
    }

    /// The `authorization` metadata value, when there is a token.
    pub fn bearer(&self) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        let token = self.token.as_ref()?;
        format!("Bearer {token}").parse().ok()
    }

    /// Adds the token (if any) to a request.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(v) = self.bearer() {
            request.metadata_mut().insert(crate::contract::AUTHORIZATION_KEY, v);
        }
    }
}

/// Reads a PEM file named by a setting, with an error that names the setting.
pub fn read_pem(setting: &str, path: &Path) -> Result<String, SecurityError> {
    std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
        path: format!("{} ({setting})", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn der(pem: &str) -> Vec<u8> {
        first_cert_der(pem, "test").unwrap()
    }

    #[test]
    fn issued_certificates_carry_their_role_and_name() {
        let ca = Ca::generate("c1", DAY).unwrap();
        let node = ca
            .issue(&CertRequest {
                name: "node-1".into(),
                role: Role::Peer,
                dns_names: vec!["localhost".into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
                lifetime: DAY,
            })
            .unwrap();
        assert_eq!(
            identity_of(&der(&node.cert_pem)),
            Some(CertIdentity { name: "node-1".into(), role: Role::Peer })
        );
        let admin = ca.issue(&CertRequest::client("alice", Role::Admin, DAY)).unwrap();
        assert_eq!(identity_of(&der(&admin.cert_pem)).unwrap().role, Role::Admin);
        // The CA certificate itself names no role.
        assert_eq!(identity_of(&der(ca.cert_pem())), None);
        let expires = not_after(&admin.cert_pem).unwrap();
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(left > DAY - Duration::from_secs(60) && left <= DAY, "{left:?}");
    }

    #[test]
    fn a_ca_reloaded_from_pem_keeps_its_fingerprint_and_issues() {
        let ca = Ca::generate("c1", DAY).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        let other = Ca::generate("c1", DAY).unwrap();
        assert_ne!(ca.fingerprint(), other.fingerprint());
        again.issue(&CertRequest::client("bob", Role::Read, DAY)).unwrap();
        assert!(matches!(
            Ca::from_pem("nope", ca.key_pem()),
            Err(SecurityError::BadCertificate { .. })
        ));
    }

    #[test]
    fn roles_grant_what_they_should() {
        use Role::*;
        assert!(Admin.grants(ReadWrite) && Admin.grants(Read) && Admin.grants(Admin));
        assert!(!Admin.grants(Peer));
        assert!(Peer.grants(Peer) && !Peer.grants(Read) && !Peer.grants(Admin));
        assert!(ReadWrite.grants(Read) && !ReadWrite.grants(Admin));
        assert!(!Read.grants(ReadWrite));
    }

    #[test]
    fn token_files_store_hashes_and_verify_tokens() {
        let admin = generate_token();
        let reader = generate_token();
        assert_ne!(admin, reader);
        let tokens = Tokens::new(vec![
            TokenEntry::for_token(Role::Admin, "ops", &admin),
            TokenEntry::for_token(Role::Read, "app", &reader),
        ]);
        let text = tokens.render();
        assert!(!text.contains(&admin), "the file must not hold a token in clear");
        let parsed = Tokens::parse(&text, "t").unwrap();
        assert_eq!(parsed, tokens);
        assert_eq!(parsed.verify(&admin).unwrap().role, Role::Admin);
        assert_eq!(parsed.verify(&reader).unwrap().name, "app");
        assert!(parsed.verify("guess").is_none());
        assert!(parsed.verify("").is_none());
    }

    #[test]
    fn bad_token_lines_are_named() {
        let err = Tokens::parse("admin ops\n", "f").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("<role>"), "{err}");
        let err = Tokens::parse("root ops sha256:00\n", "f").unwrap_err().to_string();
        assert!(err.contains("unknown role 'root'"), "{err}");
        let err = Tokens::parse("# c\n\nadmin ops secret-in-clear\n", "f").unwrap_err();
        assert!(err.to_string().contains("line 3") && err.to_string().contains("64 hex"));
        let err = Tokens::parse(&format!("peer n {}\n", hash_token("x")), "f").unwrap_err();
        assert!(err.to_string().contains("unknown role 'peer'"));
    }
}
