//! Who may call what: one table from gRPC method to the roles that may call it, and one tower
//! layer in front of every router that checks the caller's credential against it before any
//! handler runs. A caller proves a role with a client certificate issued by the cluster CA
//! (verified by TLS; its role is in the certificate, see `dynamo_api::security`) or with a
//! bearer token found in the node's token file.
//!
//! - client API: `Get`, `Ring` need `read`; `Put`, `Delete` need `readwrite`;
//! - admin API: `admin` (a certificate or a token); `Decommission`, `Backup` and `Restore` also
//!   accept a `peer` certificate, because a node forwards a decommission to the node it names
//!   and asks every member for its part of a backup or restore;
//! - internode API: a `peer` certificate only (never a token);
//! - gRPC health: anyone (probes speak neither TLS credentials nor tokens);
//! - anything else: `admin`.
//!
//! No credential: `UNAUTHENTICATED`; a credential without the role: `PERMISSION_DENIED`; each
//! message says which credential the method needs. A node started with `--dev --insecure`
//! checks nothing. The `dynamo-from` header is never used to authorize: only the test-only
//! fault switch reads it.

use std::sync::Arc;

use dynamo_api::contract::AUTHORIZATION_KEY;
use dynamo_api::security::{identity_of, Role, Tokens};
use futures::future::BoxFuture;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::gate::Gate;
use crate::error::Error;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a credential.
    Public,
    /// A caller holding a role that grants one of these.
    AnyOf(&'static [Role]),
}

/// How a caller proved its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Certificate,
    Token,
    /// The node runs without authentication (`--dev --insecure`).
    Insecure,
}

/// The authenticated caller of a request (in its extensions once admitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The certificate's common name or the token's name.
    pub name: String,
    pub role: Role,
    pub proof: Proof,
}

/// The access rule of a gRPC method, by its path (`/package.Service/Method`).
pub fn access(path: &str) -> Access {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Access::Public,
        ("dynamo.client.v1.Client", "Get" | "Ring") => Access::AnyOf(&[Role::Read]),
        ("dynamo.client.v1.Client", "Put" | "Delete") => Access::AnyOf(&[Role::ReadWrite]),
        ("dynamo.internode.v1.Internode", _) => Access::AnyOf(&[Role::Peer]),
        // A node asks the others to take their part of a decommission, backup or restore.
        ("dynamo.admin.v1.Admin", "Decommission" | "Backup" | "Restore") => {
            Access::AnyOf(&[Role::Admin, Role::Peer])
        }
        _ => Access::AnyOf(&[Role::Admin]),
    }
}

/// What the layer checks credentials against.
#[derive(Debug, Default)]
pub struct Policy {
    /// Check nothing (`--dev --insecure`).
    pub insecure: bool,
    /// Accepted bearer tokens; replaced when the token file changes.
    pub tokens: std::sync::RwLock<Tokens>,
}

impl Policy {
    pub fn new(insecure: bool, tokens: Tokens) -> Policy {
        Policy { insecure, tokens: std::sync::RwLock::new(tokens) }
    }

    /// Replaces the accepted tokens (the token file changed).
    pub fn set_tokens(&self, tokens: Tokens) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    /// The caller of `path`, or why it may not call it.
    pub fn check(
        &self,
        path: &str,
        extensions: &http::Extensions,
        headers: &http::HeaderMap,
    ) -> Result<Option<Caller>, Error> {
        let needed = match access(path) {
            Access::Public => return Ok(None),
            Access::AnyOf(roles) => roles,
        };
        if self.insecure {
            return Ok(Some(Caller {
                name: String::new(),
                role: Role::Admin,
                proof: Proof::Insecure,
            }));
        }
        let wanted = || needed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ");
        let how = |roles: &[Role]| {
            if roles == [Role::Peer] {
                "a node certificate issued by this cluster's CA (role peer)".to_string()
            } else {
                format!(
                    "a client certificate issued by this cluster's CA or a bearer token \
                     (dynamoctl --token / DYNAMO_TOKEN) with role {}",
                    wanted()
                )
            }
        };
        let certificate = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().and_then(|c| identity_of(c.as_ref())))
            .map(|id| Caller { name: id.name, role: id.role, proof: Proof::Certificate });
        let token = match headers.get(AUTHORIZATION_KEY) {
            None => None,
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        Error::Unauthenticated(format!(
                            "{path}: the authorization header is not `Bearer <token>`; this \
                             call needs {}",
                            how(needed)
                        ))
                    })?;
                let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
                let entry = tokens.verify(token).ok_or_else(|| {
                    Error::Unauthenticated(format!(
                        "{path}: the bearer token is not one this node accepts (revoked, or \
                         from another cluster); this call needs {}",
                        how(needed)
                    ))
                })?;
                Some(Caller { name: entry.name.clone(), role: entry.role, proof: Proof::Token })
            }
        };
        // Internode calls accept certificates only: a token is never a node.
        let candidates: Vec<Caller> =
            certificate.into_iter().chain(token.filter(|_| needed != [Role::Peer])).collect();
        if let Some(caller) = candidates.iter().find(|c| needed.iter().any(|n| c.role.grants(*n))) {
            return Ok(Some(caller.clone()));
        }
        match candidates.first() {
            None => {
                Err(Error::Unauthenticated(format!("{path} needs a credential: {}", how(needed))))
            }
            Some(c) => Err(Error::PermissionDenied(format!(
                "{path} needs role {}, but {} '{}' has role {}: use {}",
                wanted(),
                match c.proof {
                    Proof::Certificate => "certificate",
                    _ => "token",
                },
                c.name,
                c.role,
                how(needed)
            ))),
        }
    }
}

/// Reloads the token file when it changes (a token added or revoked, a Secret updated), so no
/// restart is needed. A file that no longer parses keeps the tokens in force and is logged.
pub struct TokenFileWorker {
    path: std::path::PathBuf,
    policy: Arc<Policy>,
    seen: Option<std::time::SystemTime>,
}

impl TokenFileWorker {
    pub fn new(path: std::path::PathBuf, policy: Arc<Policy>) -> TokenFileWorker {
        let seen = modified(&path);
        TokenFileWorker { path, policy, seen }
    }
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// How often the token file is checked for changes.
pub const TOKENS_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl crate::worker::Worker for TokenFileWorker {
    fn name(&self) -> &'static str {
        "tokens"
    }

    fn wait(&self) -> std::time::Duration {
        TOKENS_RELOAD_INTERVAL
    }

    fn step(&mut self) -> BoxFuture<'_, crate::worker::WorkerState> {
        Box::pin(async move {
            let now = modified(&self.path);
            if now == self.seen {
                return crate::worker::WorkerState::Idle;
            }
            self.seen = now;
            match Tokens::load(&self.path) {
                Ok(tokens) => {
                    tracing::info!(tokens = tokens.entries().len(), "token file reloaded");
                    self.policy.set_tokens(tokens);
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "the token file changed but cannot be used; keeping the tokens in force"
                ),
            }
            crate::worker::WorkerState::Busy
        })
    }
}

impl Gate for Policy {
    type Pass = ();

    /// Checks the caller and records it in the request's extensions ([`Caller`]).
    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<(), Error> {
        match self.check(req.uri().path(), req.extensions(), req.headers()) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
                Ok(())
            }
            Err(e) => {
                tracing::info!(path = req.uri().path(), error = %e, "call refused");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_api::security::TokenEntry;

    fn policy() -> Policy {
        Policy::new(
            false,
            Tokens::new(vec![
                TokenEntry::for_token(Role::Read, "reader", "r-token"),
                TokenEntry::for_token(Role::ReadWrite, "app", "rw-token"),
                TokenEntry::for_token(Role::Admin, "ops", "admin-token"),
            ]),
        )
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(AUTHORIZATION_KEY, format!("Bearer {token}").parse().unwrap());
        h
    }

    fn check(path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Error> {
        policy().check(path, &http::Extensions::new(), headers)
    }

    #[test]
    fn every_method_has_the_documented_rule() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(access("/dynamo.client.v1.Client/Get"), Access::AnyOf(&[Role::Read]));
        assert_eq!(access("/dynamo.client.v1.Client/Ring"), Access::AnyOf(&[Role::Read]));
        assert_eq!(access("/dynamo.client.v1.Client/Put"), Access::AnyOf(&[Role::ReadWrite]));
        assert_eq!(access("/dynamo.client.v1.Client/Delete"), Access::AnyOf(&[Role::ReadWrite]));
        assert_eq!(access("/dynamo.internode.v1.Internode/Gossip"), Access::AnyOf(&[Role::Peer]));
        assert_eq!(access("/dynamo.admin.v1.Admin/SetFaults"), Access::AnyOf(&[Role::Admin]));
        // A node asks the others for their part of a backup or restore with its peer
        // certificate; listing and deleting backups is for admins only.
        let admin_or_peer = Access::AnyOf(&[Role::Admin, Role::Peer]);
        assert_eq!(access("/dynamo.admin.v1.Admin/Backup"), admin_or_peer);
        assert_eq!(access("/dynamo.admin.v1.Admin/Restore"), admin_or_peer);
        assert_eq!(access("/dynamo.admin.v1.Admin/ListBackups"), Access::AnyOf(&[Role::Admin]));
        assert_eq!(access("/dynamo.admin.v1.Admin/DeleteBackup"), Access::AnyOf(&[Role::Admin]));
        assert_eq!(access("/dynamo.client.v1.Client/Unknown"), Access::AnyOf(&[Role::Admin]));
        assert_eq!(access("garbage"), Access::AnyOf(&[Role::Admin]));
    }

    #[test]
    fn tokens_grant_their_role_and_nothing_more() {
        let none = http::HeaderMap::new();
        let err = check("/dynamo.client.v1.Client/Get", &none).unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
        assert!(err.to_string().contains("needs a credential"), "{err}");
        let caller = check("/dynamo.client.v1.Client/Get", &bearer("r-token")).unwrap().unwrap();
        assert_eq!((caller.name.as_str(), caller.role), ("reader", Role::Read));
        let err = check("/dynamo.client.v1.Client/Put", &bearer("r-token")).unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
        assert!(err.to_string().contains("needs role readwrite"), "{err}");
        check("/dynamo.client.v1.Client/Put", &bearer("rw-token")).unwrap();
        let err = check("/dynamo.admin.v1.Admin/Status", &bearer("rw-token")).unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
        check("/dynamo.admin.v1.Admin/Status", &bearer("admin-token")).unwrap();
        check("/dynamo.client.v1.Client/Delete", &bearer("admin-token")).unwrap();
        // A token never stands for a node, not even an admin's.
        let err = check("/dynamo.internode.v1.Internode/Replicate", &bearer("admin-token"));
        assert!(matches!(err, Err(Error::Unauthenticated(_))));
        let err = check("/dynamo.client.v1.Client/Get", &bearer("guess")).unwrap_err();
        assert!(err.to_string().contains("not one this node accepts"), "{err}");
        let mut basic = http::HeaderMap::new();
        basic.insert(AUTHORIZATION_KEY, "Basic abc".parse().unwrap());
        assert!(check("/dynamo.client.v1.Client/Get", &basic).is_err());
        assert_eq!(check("/grpc.health.v1.Health/Check", &none).unwrap(), None);
    }

    #[test]
    fn an_insecure_node_checks_nothing() {
        let p = Policy::new(true, Tokens::default());
        let caller = p
            .check(
                "/dynamo.admin.v1.Admin/Decommission",
                &http::Extensions::new(),
                &http::HeaderMap::new(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(caller.proof, Proof::Insecure);
    }
}
