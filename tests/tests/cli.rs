//! The binaries as a user runs them: `dynamo-node` start-up errors, and the quickstart
//! (`dynamoctl dev up`, then put/get/status with dynamoctl, Ctrl-C, and data back after a
//! restart of the dev cluster).

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

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    run_with_input(bin, args, &[])
}

/// Runs `bin` with `input` on its standard input; stdout is returned lossily as text.
fn run_with_input(bin: &str, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let (code, out, err) = run_bytes(bin, args, input);
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

fn run_bytes(bin: &str, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write as _;
    let mut child = Command::new(bin)
        .args(args)
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
    let (code, _, err) = run(&CTL, &["--endpoint", "127.0.0.1:1", "get", "k"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach a dynamo node at 127.0.0.1:1"), "{err}");
    let (code, _, err) =
        run(&CTL, &["--endpoint", "127.0.0.1:1", "put", "k", "v", "--context", "%%%"]);
    assert_eq!(code, 1);
    assert!(err.contains("--context is not valid base64"), "{err}");
}

fn free_port_block(len: u16) -> u16 {
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

/// Starts `dynamoctl dev up` and waits for its "dev cluster up" line.
fn dev_up(dir: &std::path::Path, port: u16) -> DevUp {
    let mut guard = DevUp(Some(
        Command::new(&*CTL)
            .args(["dev", "up", "--nodes", "3", "--base-port", &port.to_string(), "--data-dir"])
            .arg(dir)
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
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("dev up printed its banner");
        if line.starts_with("dev cluster up: 3 nodes in 3 zone(s), N=3 R=2 W=2") {
            return guard;
        }
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
    let port = free_port_block(3);
    let endpoint = format!("127.0.0.1:{}", port + 1);
    let child = dev_up(dir.path(), port);

    let (code, context, err) =
        run(&CTL, &["--endpoint", &endpoint, "put", "cart:42", "{\"items\":[1]}"]);
    assert_eq!(code, 0, "{err}");
    assert!(!context.trim().is_empty() && context.trim().lines().count() == 1);
    let (code, out, err) = run(&CTL, &["--endpoint", &endpoint, "get", "cart:42", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["key"], "cart:42");
    assert_eq!(doc["values"], serde_json::json!(["{\"items\":[1]}"]));
    // Values from a file and from standard input, larger than the 128 KiB a command-line
    // argument may be, with every byte value; `get -o raw` gives the bytes back unchanged.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = dir.path().join("value.bin");
    std::fs::write(&file, &big).unwrap();
    let (code, _, err) =
        run(&CTL, &["--endpoint", &endpoint, "put", "blob:file", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, raw, err) =
        run_bytes(&CTL, &["--endpoint", &endpoint, "get", "blob:file", "-o", "raw"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(raw == big, "get -o raw returned {} bytes, not the {} written", raw.len(), big.len());
    let (code, _, err) =
        run_with_input(&CTL, &["--endpoint", &endpoint, "put", "blob:stdin", "-"], &big[..200_000]);
    assert_eq!(code, 0, "{err}");
    let (code, raw, err) =
        run_bytes(&CTL, &["--endpoint", &endpoint, "get", "blob:stdin", "-o", "raw"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(raw == big[..200_000], "stdin value came back as {} bytes", raw.len());
    // Raw output of a missing key or of siblings is an error that says why, not empty bytes.
    let (code, raw, err) =
        run_bytes(&CTL, &["--endpoint", &endpoint, "get", "nothing", "-o", "raw"], &[]);
    assert_eq!((code, raw.len()), (1, 0));
    assert!(err.contains("nothing: not found"), "{err}");
    run(&CTL, &["--endpoint", &endpoint, "put", "blob:stdin", "sibling"]);
    let (code, _, err) =
        run_bytes(&CTL, &["--endpoint", &endpoint, "get", "blob:stdin", "-o", "raw"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("2 concurrent values"), "{err}");
    // Neither a value nor --file: a usage error naming what is missing.
    let (code, _, err) = run(&CTL, &["--endpoint", &endpoint, "put", "k"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("<VALUE>") || err.contains("--file"), "{err}");

    let (code, out, _) = run(&CTL, &["--endpoint", &endpoint, "status", "-o", "json"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["reachable"] == true), "{out}");
    let (code, out, _) = run(&CTL, &["--endpoint", &endpoint, "ring", "-o", "json"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let total: usize = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["partitions"].as_array().unwrap().len())
        .sum();
    assert_eq!(total as u64, doc["partitions"].as_u64().unwrap());
    drop(child);

    // Same folder again: the data is still there.
    let child = dev_up(dir.path(), port);
    let (code, out, err) = run(&CTL, &["--endpoint", &endpoint, "get", "cart:42", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["values"], serde_json::json!(["{\"items\":[1]}"]));
    drop(child);

    // A different shape on the same folder is refused with a reason.
    let (code, _, err) =
        run(&CTL, &["dev", "up", "--nodes", "2", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("holds a cluster of 3 nodes"), "{err}");
}
