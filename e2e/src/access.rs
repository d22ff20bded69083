//! How the suite reaches the nodes of the cluster under test: like the operator, with
//! certificates issued from the cluster's CA (read from its `<cluster>-ca` Secret), dialling pods
//! by IP and verifying them under the client Service's name, which the nodes' certificate
//! carries. Set once the cluster's CA exists ([`set`]); plaintext before that.

use std::sync::RwLock;
use std::time::Duration;

use dynamo_api::contract::{DEFAULT_PEER_PORT, DEFAULT_PORT};
use dynamo_api::security::{Ca, CertRequest, Credentials, Role};
use dynamo_client::Client;
use dynamo_tests::cluster::Access;

/// The access in force, with the CA certificate it was made from.
static CURRENT: RwLock<Option<(String, Access)>> = RwLock::new(None);

const LIFETIME: Duration = Duration::from_secs(86_400);

/// Uses the CA `ca_pem`/`key_pem` of a cluster whose nodes answer to `server_name`: issues an
/// admin and a peer certificate for the suite (once per CA).
pub fn set(ca_pem: &str, key_pem: &str, server_name: &str) -> anyhow::Result<()> {
    if CURRENT.read().unwrap().as_ref().is_some_and(|(ca, _)| ca == ca_pem) {
        return Ok(());
    }
    let ca = Ca::from_pem(ca_pem, key_pem)?;
    let credentials = |role: Role, name: &str| -> anyhow::Result<Credentials> {
        let issued = ca.issue(&CertRequest::client(name, role, LIFETIME))?;
        Ok(Credentials {
            ca_pem: Some(ca_pem.to_string()),
            identity: Some((issued.cert_pem, issued.key_pem)),
            token: None,
            server_name: Some(server_name.to_string()),
        })
    };
    let access = Access {
        admin: credentials(Role::Admin, "e2e-admin")?,
        peer: credentials(Role::Peer, "e2e")?,
    };
    *CURRENT.write().unwrap() = Some((ca_pem.to_string(), access));
    Ok(())
}

/// The suite's credentials (plaintext before [`set`]).
pub fn access() -> Access {
    CURRENT.read().unwrap().as_ref().map(|(_, a)| a.clone()).unwrap_or_else(Access::insecure)
}

/// A client of the node at `address` (`host:7070`) with the suite's admin credentials; admin
/// calls go to the same host's peer port.
pub fn client(address: &str, timeout: Duration) -> anyhow::Result<Client> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let admin = if address.ends_with(&format!(":{DEFAULT_PORT}")) {
        format!("{host}:{DEFAULT_PEER_PORT}")
    } else {
        address.to_string()
    };
    Ok(Client::builder([address])
        .timeout(timeout)
        .partition_aware(false)
        .credentials(access().admin)
        .admin_endpoint(admin)
        .build()?)
}
