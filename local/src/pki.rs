//! TLS material and tokens for a local cluster, kept in one folder: the cluster CA
//! (`ca.crt`, `ca.key`), a certificate per node (`<id>.crt`, `<id>.key`, role peer, valid for
//! 127.0.0.1, localhost and the node's own addresses), client certificates, and bearer tokens
//! (`<name>.token` in clear for the people and tests that use them, their hashes in the node's
//! `tokens` file). Opening the folder again reuses the CA and the tokens, so a restarted dev
//! cluster keeps its identity and the credentials already handed out keep working; node
//! certificates are issued afresh on every start (cheap, and never expire under a long-lived
//! dev cluster).

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dynamo_api::config::TlsConfig;
use dynamo_api::security::{
    generate_token, read_pem, Ca, CertRequest, Credentials, Role, TokenEntry, Tokens,
};

use crate::LaunchError;

/// How long a local cluster's CA is valid: it outlives any dev folder.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// How long node and client certificates are valid (re-issued on each start).
const CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// The CA certificate's file name in the folder.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name in the folder.
const CA_KEY_FILE: &str = "ca.key";
/// The node's token file (hashes only) in the folder.
pub const TOKENS_FILE: &str = "tokens";

/// The `tls` settings of node `id` whose material is in `dir` (what
/// [`LocalPki::issue_node`] writes there); pure, for planning a cluster's configuration.
pub fn node_tls(dir: &Path, id: &str) -> TlsConfig {
    TlsConfig {
        ca_cert: Some(dir.join(CA_CERT_FILE)),
        cert: Some(dir.join(format!("{id}.crt"))),
        key: Some(dir.join(format!("{id}.key"))),
    }
}

/// The tokens file in `dir` (what [`LocalPki::token`] maintains).
pub fn tokens_path(dir: &Path) -> PathBuf {
    dir.join(TOKENS_FILE)
}

/// See the module docs.
pub struct LocalPki {
    dir: PathBuf,
    ca: Ca,
}

impl std::fmt::Debug for LocalPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPki").field("dir", &self.dir).field("ca", &self.ca).finish()
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> LaunchError {
    move |source| LaunchError::Io { what, source }
}

fn security(what: &str) -> impl FnOnce(dynamo_api::security::SecurityError) -> LaunchError + '_ {
    move |e| LaunchError::Io { what: what.to_string(), source: std::io::Error::other(e) }
}

/// Writes `text` to `path`, readable by its owner only when `private` (keys, tokens).
fn write(path: &Path, text: &str, private: bool) -> Result<(), LaunchError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(format!("cannot write {}", path.display())))?;
    file.write_all(text.as_bytes()).map_err(io(format!("cannot write {}", path.display())))
}

impl LocalPki {
    /// The CA in `dir`, or a new one for cluster `cluster` (creating `dir`).
    pub fn open_or_create(dir: &Path, cluster: &str) -> Result<LocalPki, LaunchError> {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let ca = if cert.exists() && key.exists() {
            let cert_pem = read_pem("the local CA certificate", &cert)
                .map_err(security("reading the local CA"))?;
            let key_pem =
                read_pem("the local CA key", &key).map_err(security("reading the local CA"))?;
            Ca::from_pem(&cert_pem, &key_pem)
                .map_err(security("loading the local CA (delete the folder to start over)"))?
        } else {
            let ca = Ca::generate(cluster, CA_LIFETIME).map_err(security("creating a CA"))?;
            write(&key, ca.key_pem(), true)?;
            write(&cert, ca.cert_pem(), false)?;
            ca
        };
        Ok(LocalPki { dir: dir.to_path_buf(), ca })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster CA (to issue more certificates, e.g. in tests).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CA certificate's file (what clients pass as `--ca-cert`).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// The token file the nodes read (`tokens_file`).
    pub fn tokens_path(&self) -> PathBuf {
        tokens_path(&self.dir)
    }

    /// Issues node `id`'s certificate (role peer; SANs 127.0.0.1, localhost and `ips`), writes
    /// it and its key, and returns the node's `tls` settings.
    pub fn issue_node(&self, id: &str, ips: &[IpAddr]) -> Result<TlsConfig, LaunchError> {
        let mut all: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
        for ip in ips {
            if !all.contains(ip) {
                all.push(*ip);
            }
        }
        let request = CertRequest {
            name: id.to_string(),
            role: Role::Peer,
            dns_names: vec!["localhost".into()],
            ips: all,
            lifetime: CERT_LIFETIME,
        };
        self.write_issued(id, &request)?;
        Ok(node_tls(&self.dir, id))
    }

    /// Issues a client certificate `name` with `role`, writes it and its key (`<name>.crt`,
    /// `<name>.key`), and returns credentials presenting it.
    pub fn issue_client(&self, name: &str, role: Role) -> Result<Credentials, LaunchError> {
        let (cert, key) =
            self.write_issued(name, &CertRequest::client(name, role, CERT_LIFETIME))?;
        Credentials::load(Some(&self.ca_cert_path()), Some(&cert), Some(&key), None)
            .map_err(security("reading a client certificate just written"))
    }

    fn write_issued(
        &self,
        name: &str,
        request: &CertRequest,
    ) -> Result<(PathBuf, PathBuf), LaunchError> {
        let issued = self.ca.issue(request).map_err(security("issuing a certificate"))?;
        let (cert, key) =
            (self.dir.join(format!("{name}.crt")), self.dir.join(format!("{name}.key")));
        write(&key, &issued.key_pem, true)?;
        write(&cert, &issued.cert_pem, false)?;
        Ok((cert, key))
    }

    /// The token named `name` (`<name>.token`), created with `role` if there is none, and
    /// listed (hashed) in the tokens file. Returns the token in clear.
    pub fn token(&self, name: &str, role: Role) -> Result<String, LaunchError> {
        let path = self.dir.join(format!("{name}.token"));
        let token = match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let t = generate_token();
                write(&path, &format!("{t}\n"), true)?;
                t
            }
        };
        let tokens_path = self.tokens_path();
        let mut entries: Vec<TokenEntry> = if tokens_path.exists() {
            Tokens::load(&tokens_path)
                .map_err(security("reading the tokens file"))?
                .entries()
                .to_vec()
        } else {
            Vec::new()
        };
        let entry = TokenEntry::for_token(role, name, &token);
        if !entries.contains(&entry) {
            entries.retain(|e| e.name != name);
            entries.push(entry);
            write(&tokens_path, &Tokens::new(entries).render(), false)?;
        }
        Ok(token)
    }

    /// Credentials that verify the nodes with this CA and present `token`.
    pub fn token_credentials(&self, token: &str) -> Credentials {
        Credentials {
            ca_pem: Some(self.ca.cert_pem().to_string()),
            identity: None,
            token: Some(token.to_string()),
            server_name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_keeps_its_ca_and_tokens_and_issues_node_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let pki = LocalPki::open_or_create(dir.path(), "dev").unwrap();
        let fingerprint = pki.ca().fingerprint();
        let admin = pki.token("admin", Role::Admin).unwrap();
        let reader = pki.token("reader", Role::Read).unwrap();
        let tls = pki.issue_node("node-1", &["127.0.0.2".parse().unwrap()]).unwrap();
        let cert = std::fs::read_to_string(tls.cert.unwrap()).unwrap();
        let der = x509_der(&cert);
        let identity = dynamo_api::security::identity_of(&der).unwrap();
        assert_eq!((identity.name.as_str(), identity.role), ("node-1", Role::Peer));
        let key_mode = std::fs::metadata(tls.key.unwrap()).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o077, 0);

        let again = LocalPki::open_or_create(dir.path(), "dev").unwrap();
        assert_eq!(again.ca().fingerprint(), fingerprint, "the CA is reused");
        assert_eq!(again.token("admin", Role::Admin).unwrap(), admin, "the token is reused");
        let tokens = Tokens::load(&again.tokens_path()).unwrap();
        assert_eq!(tokens.entries().len(), 2);
        assert_eq!(tokens.verify(&admin).unwrap().role, Role::Admin);
        assert_eq!(tokens.verify(&reader).unwrap().role, Role::Read);
        let text = std::fs::read_to_string(again.tokens_path()).unwrap();
        assert!(!text.contains(&admin), "the tokens file holds hashes only");
    }

    fn x509_der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }
}
