//! A real Kubernetes control plane on loopback, from the binaries `e2e/tools/build` makes: etcd,
//! kube-apiserver (client-certificate auth, RBAC), kube-controller-manager (StatefulSet, garbage
//! collector, EndpointSlice, PV binder, service accounts, ...), kube-scheduler, kwok (keeps the
//! fake Nodes Ready; it is given node stages only, so it leaves pods to [`crate::kubelet`]) and
//! CoreDNS (the `kubernetes` plugin answering `cluster.local` from the API, on the pod network's
//! host address).
//!
//! Certificates (a CA, the API server's serving certificate, an admin client certificate in
//! `system:masters`, the service-account key pair) are made with `openssl` in the run's
//! directory, and one kubeconfig with the data inline is written there too. Dropping the
//! [`ControlPlane`] stops every process.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use dynamo_local::free_port;

use crate::process::{run, Process};

/// Where the Go-built tools are: `$DYNAMO_E2E_TOOLS`, as printed by `e2e/tools/build`.
pub fn tools_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("DYNAMO_E2E_TOOLS").map(PathBuf::from).context(
        "DYNAMO_E2E_TOOLS is not set: run scripts/e2e, or export \
         DYNAMO_E2E_TOOLS=$(e2e/tools/build)",
    )?;
    for tool in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kwok",
        "helm",
        "coredns",
    ] {
        if !dir.join(tool).is_file() {
            bail!("{} has no {tool}: run e2e/tools/build", dir.display());
        }
    }
    Ok(dir)
}

/// The running control plane.
pub struct ControlPlane {
    /// The run's directory: certificates, kubeconfig, data and every log.
    pub dir: PathBuf,
    /// The Go-built tools.
    pub tools: PathBuf,
    /// Admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Started in order, stopped in reverse.
    processes: Vec<Process>,
}

const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The fake nodes' annotation kwok selects on.
pub const KWOK_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("openssl").current_dir(dir).args(args)).map(drop)
}

/// A new 2048-bit RSA key (PKCS#8) in `dir/file`.
fn rsa_key(dir: &Path, file: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", file],
    )
}

/// CA, API server certificate, admin client certificate, service-account keys.
fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    rsa_key(dir, "ca.key")?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=dynamo-e2e-ca",
            "-days",
            "7",
            "-out",
            "ca.crt",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,\
         DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n\
         extendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (name, subject, ext) in [
        ("server", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=dynamo-e2e-admin", "client.ext"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        rsa_key(dir, &key)?;
        openssl(dir, &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr])?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "7",
                "-extfile",
                ext,
                "-out",
                &crt,
            ],
        )?;
    }
    rsa_key(dir, "sa.key")?;
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

fn b64_file(path: &Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(data))
}

/// A kubeconfig for `server` with the CA and either the admin certificate or a bearer token.
pub fn kubeconfig(dir: &Path, server: &str, token: Option<&str>) -> anyhow::Result<String> {
    let ca = b64_file(&dir.join("ca.crt"))?;
    let user = match token {
        Some(token) => format!("    token: {token}\n"),
        None => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64_file(&dir.join("admin.crt"))?,
            b64_file(&dir.join("admin.key"))?
        ),
    };
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: e2e\n  user:\n{user}contexts:\n- name: e2e\n  \
         context:\n    cluster: e2e\n    user: e2e\n    namespace: default\ncurrent-context: e2e\n"
    ))
}

/// kwok's configuration: the node stages of kwok's "fast" and "heartbeat-with-lease" presets
/// and no pod stage, so kwok keeps Nodes Ready and never touches pods.
const KWOK_STAGES: &str = include_str!("../kwok-node-stages.yaml");

impl ControlPlane {
    /// Starts everything in `dir` (created if needed) and waits until the API server is ready
    /// and the default service account exists. CoreDNS listens on `dns_ip`:53 (the pod network's
    /// host address, which must exist already).
    pub async fn start(dir: &Path, dns_ip: Ipv4Addr) -> anyhow::Result<ControlPlane> {
        let tools = tools_dir()?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        make_certificates(&dir)?;
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let admin_kubeconfig = dir.join("kubeconfig");
        std::fs::write(&admin_kubeconfig, kubeconfig(&dir, &server, None)?)?;
        let mut cp = ControlPlane {
            dir: dir.clone(),
            tools: tools.clone(),
            kubeconfig: admin_kubeconfig,
            server,
            processes: Vec::new(),
        };

        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let mut etcd = Command::new(tools.join("etcd"));
        etcd.args([
            "--name=e2e",
            &format!("--data-dir={}", dir.join("etcd").display()),
            &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}"),
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=4294967296",
        ]);
        cp.spawn("etcd", etcd)?;

        let p = |f: &str| dir.join(f).display().to_string();
        let mut api = Command::new(tools.join("kube-apiserver"));
        api.args([
            &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1",
            // Loopback may not be advertised; the pod network's host address is where pods would
            // reach the API. Nothing in the suite uses the `kubernetes` Service, so its
            // endpoints are not maintained.
            &format!("--advertise-address={dns_ip}"),
            "--endpoint-reconciler-type=none",
            &format!("--secure-port={api_port}"),
            &format!("--cert-dir={}", p("apiserver-certs")),
            &format!("--tls-cert-file={}", p("server.crt")),
            &format!("--tls-private-key-file={}", p("server.key")),
            &format!("--client-ca-file={}", p("ca.crt")),
            &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-account-key-file={}", p("sa.pub")),
            &format!("--service-account-signing-key-file={}", p("sa.key")),
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
        ]);
        cp.spawn("kube-apiserver", api)?;
        cp.wait_ready(Duration::from_secs(120)).await?;

        let mut kcm = Command::new(tools.join("kube-controller-manager"));
        kcm.args([
            &format!("--kubeconfig={}", p("kubeconfig")),
            &format!("--authentication-kubeconfig={}", p("kubeconfig")),
            &format!("--authorization-kubeconfig={}", p("kubeconfig")),
            "--bind-address=127.0.0.1",
            &format!("--secure-port={}", free_port()?),
            &format!("--root-ca-file={}", p("ca.crt")),
            &format!("--service-account-private-key-file={}", p("sa.key")),
            "--use-service-account-credentials=true",
            &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--leader-elect=false",
            "--controllers=*",
            // Quick garbage collection and StatefulSet reactions for a test.
            "--concurrent-gc-syncs=5",
        ]);
        cp.spawn("kube-controller-manager", kcm)?;

        let mut scheduler = Command::new(tools.join("kube-scheduler"));
        scheduler.args([
            &format!("--kubeconfig={}", p("kubeconfig")),
            &format!("--authentication-kubeconfig={}", p("kubeconfig")),
            &format!("--authorization-kubeconfig={}", p("kubeconfig")),
            "--bind-address=127.0.0.1",
            &format!("--secure-port={}", free_port()?),
            "--leader-elect=false",
        ]);
        cp.spawn("kube-scheduler", scheduler)?;

        std::fs::write(dir.join("kwok.yaml"), KWOK_STAGES)?;
        let mut kwok = Command::new(tools.join("kwok"));
        kwok.args([
            &format!("--kubeconfig={}", p("kubeconfig")),
            &format!("--config={}", p("kwok.yaml")),
            "--manage-all-nodes=false",
            &format!(
                "--manage-nodes-with-annotation-selector={}={}",
                KWOK_ANNOTATION.0, KWOK_ANNOTATION.1
            ),
            &format!("--node-ip={dns_ip}"),
            "--node-lease-duration-seconds=40",
            &format!("--server-address=127.0.0.1:{}", free_port()?),
        ]);
        cp.spawn("kwok", kwok)?;

        std::fs::write(
            dir.join("Corefile"),
            format!(
                "cluster.local:53 {{\n    bind {dns_ip}\n    errors\n    kubernetes cluster.local {{\n        \
                 kubeconfig {} e2e\n    }}\n}}\n.:53 {{\n    bind {dns_ip}\n    errors\n    \
                 template ANY ANY {{\n        rcode NXDOMAIN\n    }}\n}}\n",
                p("kubeconfig")
            ),
        )?;
        let mut coredns = Command::new(tools.join("coredns"));
        coredns.args(["-conf", &p("Corefile")]);
        cp.spawn("coredns", coredns)?;

        cp.wait_for(Duration::from_secs(60), "the default service account", || {
            let mut c = cp.kubectl();
            c.args(["get", "serviceaccount", "default", "-n", "default"]);
            run(&mut c).is_ok()
        })
        .await?;
        Ok(cp)
    }

    fn spawn(&mut self, name: &str, command: Command) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        self.processes.push(Process::spawn(name, command, &log)?);
        Ok(())
    }

    /// Fails if a control-plane process has exited, naming it with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            if p.exited() {
                bail!("{} exited; the end of {}:\n{}", p.name, p.log.display(), p.tail(30));
            }
        }
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let mut c = self.kubectl();
            c.args(["get", "--raw", "/readyz"]);
            match run(&mut c) {
                Ok(out) if out.trim() == "ok" => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(out) => bail!("the API server is not ready after {timeout:?}: {out}"),
                Err(e) => bail!("the API server is not ready after {timeout:?}: {e:#}"),
            }
        }
    }

    /// Polls `ready` every 500 ms until it holds or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !ready() {
            if Instant::now() >= deadline {
                bail!("{what}: not there after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.tools.join("kubectl"));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// `helm` with the admin kubeconfig and its state in the run's directory.
    pub fn helm(&self) -> Command {
        let mut c = Command::new(self.tools.join("helm"));
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        c
    }

    /// A kube-rs client with the admin kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            config,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for ControlPlane {
    /// Asks every process to stop at once, then waits for each (the API server and etcd take a
    /// few seconds each).
    fn drop(&mut self) {
        for p in self.processes.iter().rev() {
            p.terminate();
        }
        for p in self.processes.iter_mut().rev() {
            p.stop(Duration::from_secs(5));
        }
    }
}
