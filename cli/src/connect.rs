//! How `dynamoctl` reaches a cluster: the node endpoints and the credentials every command
//! presents (the global `--ca-cert`, `--cert`, `--key`, `--token`, `--admin-addr` and
//! `--insecure` flags and their `DYNAMO_*` variables). Nodes serve TLS only, so without a CA
//! certificate `dynamoctl` refuses to start unless `--insecure` asks for plaintext explicitly.

use std::path::PathBuf;
use std::time::Duration;

use dynamo_client::{Client, Credentials};

/// The connection flags shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// A node's client endpoint, HOST:PORT.
    #[arg(long, global = true, env = "DYNAMO_ENDPOINT", default_value = "127.0.0.1:7070")]
    pub endpoint: String,
    /// Where admin commands (status, decommission, repair) go: a node's peer port, HOST:PORT
    /// (7071 by default on a node; `dynamoctl dev up` prints it). Default: --endpoint, which
    /// answers admin calls only if it is a peer port.
    #[arg(long, global = true, env = "DYNAMO_ADMIN_ADDR", value_name = "HOST:PORT")]
    pub admin_addr: Option<String>,
    /// The cluster CA's certificate (PEM), to verify the nodes with.
    #[arg(long, global = true, env = "DYNAMO_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate issued by the cluster CA (PEM; its role decides what it may do).
    #[arg(
        id = "client_cert",
        long = "cert",
        global = true,
        env = "DYNAMO_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        id = "client_key",
        long = "key",
        global = true,
        env = "DYNAMO_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
    /// A bearer token (its role, read, readwrite or admin, decides what it may do).
    #[arg(long, global = true, env = "DYNAMO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The name to verify the nodes' certificate against instead of the address dialled, e.g.
    /// the client Service's `<cluster>.<namespace>.svc` when dialling pod IPs.
    #[arg(long, global = true, env = "DYNAMO_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Talk plaintext, without credentials: only to a `dynamo-node --dev --insecure` cluster
    /// (env DYNAMO_INSECURE=true). `dev up --insecure`: start such a cluster.
    // Not clap's `env`: the variable must not turn `dev up` into a plaintext cluster.
    #[arg(long, global = true)]
    pub insecure: bool,
}

/// The environment variable that asks for plaintext, like --insecure.
pub const INSECURE_ENV: &str = "DYNAMO_INSECURE";

/// Whether DYNAMO_INSECURE is set to a true value (true, 1, yes, on).
fn insecure_from_env() -> bool {
    std::env::var(INSECURE_ENV).is_ok_and(|v| {
        matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on")
    })
}

impl ConnectArgs {
    /// The credentials the flags describe. Without a CA certificate and without --insecure,
    /// an error that names both.
    pub fn credentials(&self) -> Result<Credentials, String> {
        if self.insecure || insecure_from_env() {
            for (flag, given) in [
                ("--ca-cert (DYNAMO_CA_CERT)", self.ca_cert.is_some()),
                ("--cert (DYNAMO_CERT)", self.cert.is_some()),
                ("--key (DYNAMO_KEY)", self.key.is_some()),
            ] {
                if given {
                    return Err(format!(
                        "--insecure (plaintext) and {flag} contradict each other: drop \
                         --insecure to use TLS, or unset {flag} for a --dev --insecure cluster"
                    ));
                }
            }
            // A plaintext node checks nothing, and a token must not travel in clear.
            return Ok(Credentials::insecure());
        }
        if self.ca_cert.is_none() {
            return Err("no CA certificate to verify the nodes with: pass --ca-cert FILE (or set \
                 DYNAMO_CA_CERT; `dynamoctl dev up` prints the line that sets it), or --insecure \
                 (DYNAMO_INSECURE=true) to talk plaintext to a --dev --insecure cluster"
                .into());
        }
        Credentials::load(
            self.ca_cert.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
            self.token.clone(),
        )
        .map(|c| Credentials { server_name: self.tls_server_name.clone(), ..c })
        .map_err(|e| e.to_string())
    }

    /// A client of `seeds` with these credentials and admin endpoint.
    pub fn client<S: Into<String>>(
        &self,
        seeds: impl IntoIterator<Item = S>,
        timeout: Duration,
        partition_aware: bool,
    ) -> Result<Client, String> {
        let mut builder = Client::builder(seeds)
            .timeout(timeout)
            .partition_aware(partition_aware)
            .credentials(self.credentials()?);
        if let Some(admin) = &self.admin_addr {
            builder = builder.admin_endpoint(admin.as_str());
        }
        builder.build().map_err(|e| e.to_string())
    }

    /// A client of the endpoint node alone, for the admin commands and `ring`.
    pub fn endpoint_client(&self, timeout: Duration) -> Result<Client, String> {
        self.client([self.endpoint.as_str()], timeout, false)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::Cli;

    fn credentials(args: &[&str]) -> Result<dynamo_client::Credentials, String> {
        let mut argv = vec!["dynamoctl"];
        argv.extend_from_slice(args);
        argv.push("status");
        Cli::try_parse_from(argv).map_err(|e| e.to_string())?.connect.credentials()
    }

    #[test]
    fn a_cluster_is_reached_with_a_ca_or_explicitly_in_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            dynamo_api::security::Ca::generate("t", std::time::Duration::from_secs(60)).unwrap();
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let ca_arg = ca_path.to_str().unwrap();

        let err = credentials(&[]).unwrap_err();
        assert!(err.contains("--ca-cert") && err.contains("--insecure"), "{err}");
        let plain = credentials(&["--insecure", "--token", "t"]).unwrap();
        assert!(!plain.is_tls() && plain.token.is_none(), "no token in clear");
        let err = credentials(&["--insecure", "--ca-cert", ca_arg]).unwrap_err();
        assert!(err.contains("contradict"), "{err}");
        let tls = credentials(&["--ca-cert", ca_arg, "--token", " t0k\n"]).unwrap();
        assert!(tls.is_tls());
        assert_eq!(tls.token.as_deref(), Some("t0k"));
        let err = credentials(&["--ca-cert", "/nonexistent/ca.crt"]).unwrap_err();
        assert!(err.contains("/nonexistent/ca.crt"), "{err}");
        // A certificate needs its key.
        let err = credentials(&["--ca-cert", ca_arg, "--cert", ca_arg]).unwrap_err();
        assert!(err.contains("--key"), "{err}");
    }
}
