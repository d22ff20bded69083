//! The binaries as a user runs them: `dynamo-node` start-up errors, `dynamoctl`'s credential
//! flags and tokens, and the quickstart (`dynamoctl dev up`, its export line, then
//! put/get/status with dynamoctl over TLS, Ctrl-C, and data back after a restart of the dev
//! cluster; `dev up --insecure` for plaintext).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::LazyLock;

/// The binaries as cargo built them (they live in other crates of the workspace).
static NODE: LazyLock<String> = LazyLock::new(|| binary("dynamo-node"));
static CTL: LazyLock<String> = LazyLock::new(|| binary("dynamoctl"));

fn binary(name: &str) -> String {
    dynamo_tests::cluster::target_binary(name).unwrap().to_string_lossy().into_owned()
}

/// Environment variables for a command (what a dev cluster's export line sets).
type Env = Vec<(String, String)>;

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    run_with_input(&[], bin, args, &[])
}

/// Runs `bin` with `env` and `input` on its standard input; stdout is returned lossily as text.
fn run_with_input(
    env: &[(String, String)],
    bin: &str,
    args: &[&str],
    input: &[u8],
) -> (i32, String, String) {
    let (code, out, err) = run_bytes(env, bin, args, input);
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// `dynamoctl args` with `env`.
fn ctl(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    run_with_input(env, &CTL, args, &[])
}

fn run_bytes(
    env: &[(String, String)],
    bin: &str,
    args: &[&str],
    input: &[u8],
) -> (i32, Vec<u8>, String) {
    use std::io::Write as _;
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("DYNAMO_ENDPOINT")
        .env_remove("DYNAMO_ADMIN_ADDR")
        .env_remove("DYNAMO_CA_CERT")
        .env_remove("DYNAMO_CERT")
        .env_remove("DYNAMO_KEY")
        .env_remove("DYNAMO_TOKEN")
        .env_remove("DYNAMO_INSECURE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A writer thread: a large input must not block while the child fills its stdout pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn node_help_documents_every_flag() {
    let (code, out, _) = run(&NODE, &["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--id",
        "--listen",
        "--zone",
        "--data-dir",
        "--seeds",
        "--n",
        "--r",
        "--w",
        "--config",
        "--partitions",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
}

#[test]
fn node_refuses_bad_settings_with_the_setting_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--engine", "memory"], "id: is required"),
        (&["--id", "a", "--engine", "memory", "--listen", "nope"], "listen:"),
        (&["--id", "a"], "data-dir:"),
        (&["--id", "a", "--engine", "memory", "--n", "1", "--r", "2"], "r=2 must be in 1..=1"),
        (&["--id", "a", "--engine", "memory", "--seeds", "no-port"], "seeds:"),
        (&["--id", "a", "--engine", "memory", "--partitions", "100"], "not a power of two"),
    ];
    for (args, expected) in cases {
        let (code, _, err) = run(&NODE, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (code, _, err) = run(&NODE, &["--config", missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn dynamoctl_explains_an_unreachable_endpoint_and_a_bad_context() {
    let (code, _, err) = run(&CTL, &["--insecure", "--endpoint", "127.0.0.1:1", "get", "k"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach a dynamo node at 127.0.0.1:1"), "{err}");
    let (code, _, err) = run(
        &CTL,
        &["--insecure", "--endpoint", "127.0.0.1:1", "put", "k", "v", "--context", "%%%"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("--context is not valid base64"), "{err}");
}

#[test]
fn dynamoctl_wants_a_ca_or_an_explicit_insecure() {
    for args in [&["get", "k"][..], &["status"], &["bench", "--ops", "1"]] {
        let (code, _, err) = run(&CTL, args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains("--ca-cert") && err.contains("--insecure"), "{args:?}: {err}");
    }
    let env: Env = vec![("DYNAMO_INSECURE".into(), "true".into())];
    let (code, _, err) = ctl(&env, &["--ca-cert", "/x/ca.crt", "get", "k"]);
    assert_eq!(code, 1);
    assert!(err.contains("contradict"), "{err}");
    let env: Env = vec![("DYNAMO_CA_CERT".into(), "/nonexistent/ca.crt".into())];
    let (code, _, err) = ctl(&env, &["get", "k"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/ca.crt"), "{err}");
}

#[test]
fn token_create_prints_a_token_and_its_line_and_hash_agrees() {
    let (code, out, err) = run(&CTL, &["token", "create", "--role", "readwrite", "--name", "shop"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    let [token, line] = lines[..] else { panic!("{out}") };
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[..2], ["readwrite", "shop"], "{line}");
    let (code, hash, err) =
        run_with_input(&[], &CTL, &["token", "hash"], format!("{token}\n").as_bytes());
    assert_eq!(code, 0, "{err}");
    assert_eq!(hash.trim(), fields[2], "token hash gives the line's hash");
    assert!(hash.trim().starts_with("sha256:") && hash.trim().len() == 7 + 64);
    let (code, _, err) = run(&CTL, &["token", "create", "--role", "peer", "--name", "x"]);
    assert_eq!(code, 2, "peer is not a token role: {err}");
    let (code, _, err) = run_with_input(&[], &CTL, &["token", "hash"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("no token on standard input"), "{err}");
}

fn free_port_block(len: u16) -> u16 {
    assert!(len > 0);
    // Find `len` consecutive free ports, below the ephemeral range (see `free_port`).
    'outer: for _ in 0..50 {
        let base = dynamo_local::free_port().unwrap();
        if base > 65000 {
            continue;
        }
        for p in base..base + len {
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                continue 'outer;
            }
        }
        return base;
    }
    panic!("no free port block");
}

/// A running `dynamoctl dev up`; stopped with SIGTERM when dropped, so a failing test does
/// not leak the cluster.
struct DevUp(Option<std::process::Child>);

impl Drop for DevUp {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop(child);
        }
    }
}

/// Starts `dynamoctl dev up` with `extra` arguments, waits for its "dev cluster up" banner
/// (which must start with `banner`) and returns the variables its export line sets.
fn dev_up(dir: &std::path::Path, port: u16, extra: &[&str], banner: &str) -> (DevUp, Env) {
    let mut guard = DevUp(Some(
        Command::new(&*CTL)
            .args(["dev", "up", "--base-port", &port.to_string()])
            .args(extra)
            .arg("--data-dir")
            .arg(dir)
            .env_remove("DYNAMO_CA_CERT")
            .env_remove("DYNAMO_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    ));
    let stdout = guard.0.as_mut().and_then(|c| c.stdout.take()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("dev up printed no export line; it printed {seen:#?}"));
        if line.starts_with("dev cluster up:") {
            assert!(line.starts_with(banner), "{line}");
        }
        // `export A=1 B=2` or `unset ...; export A=1 B=2`: one line for the shell.
        if let Some((_, exports)) = line.split_once("export ") {
            assert!(seen.iter().any(|l: &String| l.starts_with(banner)), "{seen:#?}");
            let env = exports
                .split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("NAME=value");
                    (k.to_string(), v.to_string())
                })
                .collect();
            return (guard, env);
        }
        seen.push(line);
    }
}

fn stop(mut child: std::process::Child) {
    let panicking = std::thread::panicking();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(panicking || status.success(), "dev up exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            assert!(panicking, "dev up did not stop on SIGTERM");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn quickstart_dev_cluster_serves_dynamoctl_and_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_block(9);
    let banner = "dev cluster up: 3 nodes in 3 zone(s), N=3 R=2 W=2, TLS";
    let (child, env) = dev_up(dir.path(), port, &["--nodes", "3"], banner);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["DYNAMO_ENDPOINT", "DYNAMO_ADMIN_ADDR", "DYNAMO_CA_CERT", "DYNAMO_TOKEN"]);
    assert_eq!(env[0].1, format!("127.0.0.1:{port}"));
    assert_eq!(env[1].1, format!("127.0.0.1:{}", port + 3), "node-1's peer port");
    let second = format!("127.0.0.1:{}", port + 1);

    let (code, context, err) = ctl(&env, &["put", "cart:42", "{\"items\":[1]}"]);
    assert_eq!(code, 0, "{err}");
    assert!(!context.trim().is_empty() && context.trim().lines().count() == 1);
    let (code, out, err) = ctl(&env, &["--endpoint", &second, "get", "cart:42", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["key"], "cart:42");
    assert_eq!(doc["values"], serde_json::json!(["{\"items\":[1]}"]));
    // Values from a file and from standard input, larger than the 128 KiB a command-line
    // argument may be, with every byte value; `get -o raw` gives the bytes back unchanged.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = dir.path().join("value.bin");
    std::fs::write(&file, &big).unwrap();
    let (code, _, err) = ctl(&env, &["put", "blob:file", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, raw, err) = run_bytes(&env, &CTL, &["get", "blob:file", "-o", "raw"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(raw == big, "get -o raw returned {} bytes, not the {} written", raw.len(), big.len());
    let (code, _, err) = run_with_input(&env, &CTL, &["put", "blob:stdin", "-"], &big[..200_000]);
    assert_eq!(code, 0, "{err}");
    let (code, raw, err) = run_bytes(&env, &CTL, &["get", "blob:stdin", "-o", "raw"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(raw == big[..200_000], "stdin value came back as {} bytes", raw.len());
    // Raw output of a missing key or of siblings is an error that says why, not empty bytes.
    let (code, raw, err) = run_bytes(&env, &CTL, &["get", "nothing", "-o", "raw"], &[]);
    assert_eq!((code, raw.len()), (1, 0));
    assert!(err.contains("nothing: not found"), "{err}");
    ctl(&env, &["put", "blob:stdin", "sibling"]);
    let (code, _, err) = run_bytes(&env, &CTL, &["get", "blob:stdin", "-o", "raw"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("2 concurrent values"), "{err}");
    // Neither a value nor --file: a usage error naming what is missing.
    let (code, _, err) = ctl(&env, &["put", "k"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("<VALUE>") || err.contains("--file"), "{err}");

    let (code, out, err) = ctl(&env, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["reachable"] == true), "{out}");
    let (code, out, err) = ctl(&env, &["ring", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let total: usize = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["partitions"].as_array().unwrap().len())
        .sum();
    assert_eq!(total as u64, doc["partitions"].as_u64().unwrap());

    // Without the token the nodes refuse, and dynamoctl says what to pass; admin calls to a
    // client port say where they go.
    let anonymous: Env = env.iter().filter(|(k, _)| k != "DYNAMO_TOKEN").cloned().collect();
    let (code, _, err) = ctl(&anonymous, &["get", "cart:42"]);
    assert_eq!(code, 1);
    assert!(err.contains("refused the call") && err.contains("--token"), "{err}");
    let client_port: Env = env.iter().filter(|(k, _)| k != "DYNAMO_ADMIN_ADDR").cloned().collect();
    let (code, _, err) = ctl(&client_port, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("--admin-addr"), "{err}");
    // A read token made with dynamoctl and appended to the tokens file works after a
    // restart; it cannot write.
    let tokens = dir.path().canonicalize().unwrap().join("tls").join("tokens");
    let (code, out, err) = run(&CTL, &["token", "create", "--role", "read", "--name", "reader"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    let mut file = std::fs::OpenOptions::new().append(true).open(&tokens).unwrap();
    std::io::Write::write_all(&mut file, format!("{}\n", lines[1]).as_bytes()).unwrap();
    drop(child);

    // Same folder again: the data is still there, the CA and the admin token are the same.
    let (child, again) = dev_up(dir.path(), port, &["--nodes", "3"], banner);
    assert_eq!(again, env, "the CA and the admin token are reused");
    let (code, out, err) = ctl(&env, &["get", "cart:42", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["values"], serde_json::json!(["{\"items\":[1]}"]));
    let mut reader = anonymous.clone();
    reader.push(("DYNAMO_TOKEN".into(), lines[0].to_string()));
    let (code, _, err) = ctl(&reader, &["get", "cart:42"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(&reader, &["put", "cart:42", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("refused the call") && err.contains("role"), "{err}");
    drop(child);

    // A different shape on the same folder is refused with a reason.
    let (code, _, err) =
        run(&CTL, &["dev", "up", "--nodes", "2", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("holds a cluster of 3 nodes"), "{err}");
}

#[test]
fn an_insecure_dev_cluster_says_so_and_serves_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_block(3);
    let banner = "dev cluster up: 1 nodes in 1 zone(s), N=1 R=1 W=1, PLAINTEXT";
    let (child, env) = dev_up(dir.path(), port, &["--nodes", "1", "--insecure"], banner);
    assert!(env.contains(&("DYNAMO_INSECURE".into(), "true".into())), "{env:?}");
    let (code, _, err) = ctl(&env, &["put", "k", "v"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ctl(&env, &["get", "k"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains('v'), "{out}");
    let (code, _, err) = ctl(&env, &["status"]);
    assert_eq!(code, 0, "{err}");
    // No TLS material was made for it.
    assert!(!dir.path().join("tls").exists());
    drop(child);
}
