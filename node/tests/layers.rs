//! The node's modules depend on each other in one direction only: a module uses modules of
//! lower layers, never one of its own layer or above (so there is no import cycle). Read from
//! the sources' `crate::` paths, so a new upward import fails here, not in review.

use std::collections::BTreeMap;
use std::path::Path;

/// Layers, lowest first. Modules in one layer do not use each other.
const LAYERS: &[&[&str]] = &[
    // Pure: no I/O, no other layer.
    &["ring", "version", "merkle", "config", "throttle", "worker"],
    &["error", "metrics"],
    &["storage"],
    // What the protocol needs from the network: traits, and the one simulator.
    &["net"],
    // The protocol, each against the net traits and storage; backups against storage alone.
    &["membership", "coordinator", "antientropy", "backup"],
    // Hint delivery, transfers and tombstone reaping follow membership's view.
    &["handoff", "reap"],
    // gRPC: peers implementing the net traits, services, status mapping, fault injection.
    &["rpc"],
    // The Node context and its workers; then the wiring.
    &["node"],
    &["server"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer: add it to LAYERS"))
}

/// Every `crate::<module>` a source file names, outside comments.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String =
                after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
            rest = after;
        }
    }
    out
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn modules_only_use_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut uses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_paths(&text).into_iter().filter(|u| *u != module) {
            uses.entry(module.clone()).or_default().push(used);
        }
    }
    assert!(uses.contains_key("coordinator") && uses.contains_key("rpc"), "{uses:?}");
    let mut wrong = Vec::new();
    for (module, used) in &uses {
        for u in used {
            if layer_of(u) >= layer_of(module) {
                wrong.push(format!("{module} uses {u}"));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "imports against the layering: {wrong:?}");
}

#[test]
fn the_checker_sees_paths_in_use_lists_and_expressions() {
    let text = "use crate::net::{Net, PeerError};\n// crate::server in a comment\nlet x = crate::ring::key_hash(k);";
    assert_eq!(crate_paths(text), ["net", "ring"]);
}
