//! The workspace's crate boundaries, checked with `cargo tree` (resolves the graph, builds
//! nothing): the client library, the CLI and the operator never pull in RocksDB, and the server
//! depends on no client-side crate.

use std::process::Command;

/// The normal (non-dev, non-build) dependencies of `package`, one crate name per entry.
fn dependencies(package: &str) -> Vec<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["tree", "--locked", "--offline", "--manifest-path", manifest])
        .args(["-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn client_side_crates_do_not_build_rocksdb() {
    for package in ["dynamo-api", "dynamo-client", "dynamoctl", "dynamo-local", "dynamo-operator"] {
        let deps = dependencies(package);
        assert!(deps.iter().any(|d| d == "tonic"), "{package}: the tree looks wrong: {deps:?}");
        for heavy in ["librocksdb-sys", "rocksdb", "dynamo-node"] {
            assert!(!deps.iter().any(|d| d == heavy), "{package} depends on {heavy}");
        }
    }
}

#[test]
fn the_server_depends_on_no_client_side_crate() {
    let deps = dependencies("dynamo-node");
    assert!(deps.iter().any(|d| d == "dynamo-api"), "{deps:?}");
    for client_side in ["dynamo-client", "dynamoctl", "dynamo-local", "dynamo-operator", "kube"] {
        assert!(!deps.iter().any(|d| d == client_side), "dynamo-node depends on {client_side}");
    }
}
