//! Checks of what ships beside the code and cannot be built here (no Docker engine): the two
//! Dockerfiles (multi-stage, non-root, entrypoints that are binaries the build produces, flags
//! and variables the binaries accept), the Helm chart's operator flags, and the example cluster.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use dynamo_operator::config::Config;
use dynamo_operator::crd::DynamoCluster;

/// The node's flags and variables, as its contract with the operator lists them.
const NODE_FLAGS: &[&str] = &[
    "config",
    "id",
    "listen",
    "advertise",
    "zone",
    "weight",
    "data-dir",
    "seeds",
    "cluster-name",
    "cluster-secret",
    "partitions",
    "n",
    "r",
    "w",
    "request-timeout-ms",
];
use dynamo_operator::render::NODE_ENV;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// One Dockerfile instruction: keyword and its arguments (continuations joined).
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn parse_dockerfile(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push(Instruction { keyword: keyword.to_uppercase(), args: args.trim().to_string() });
        current.clear();
    }
    assert!(current.is_empty(), "the Dockerfile ends inside a continued line");
    out
}

/// The exec-form (JSON array) arguments of an instruction.
fn exec_form(i: &Instruction) -> Vec<String> {
    serde_json::from_str(&i.args)
        .unwrap_or_else(|e| panic!("{} must be in exec form (a JSON array): {e}", i.keyword))
}

/// Stages: each FROM starts one. Returns (image, stage name, instructions).
fn stages(instructions: &[Instruction]) -> Vec<(String, Option<String>, Vec<&Instruction>)> {
    let mut stages: Vec<(String, Option<String>, Vec<&Instruction>)> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let name = (words.len() == 3 && words[1].eq_ignore_ascii_case("AS"))
                .then(|| words[2].to_string());
            stages.push((words[0].to_string(), name, Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.2.push(i);
        } else {
            // Only global build arguments (e.g. the offline images' BASE) precede the first FROM.
            assert_eq!(i.keyword, "ARG", "FROM comes first, after global ARGs only");
        }
    }
    stages
}

/// Common checks; returns the final stage's entrypoint and command.
fn check_image(path: &str, binaries: &[&str]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let text = read(path);
    let instructions = parse_dockerfile(&text);
    let stages = stages(&instructions);
    assert!(stages.len() >= 2, "{path}: build in one stage, run in a small one");
    let (build_image, build_name, build) = &stages[0];
    let build_name = build_name.as_deref().expect("the build stage is named");
    let version = build_image.strip_prefix("rust:").expect("the build stage uses the rust image");
    let version: Vec<u32> =
        version.split('-').next().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
    // The newest rust-version any manifest asks for (the workspace's, the operator's).
    let msrv: Vec<u32> = [read("Cargo.toml"), read("operator/Cargo.toml")]
        .iter()
        .flat_map(|m| {
            m.lines().filter_map(|l| l.strip_prefix("rust-version = ")).collect::<Vec<_>>()
        })
        .map(|v| v.trim_matches('"').split('.').map(|p| p.parse().unwrap()).collect::<Vec<u32>>())
        .max()
        .expect("a rust-version");
    assert!(version >= msrv, "{path}: rust {version:?} is older than rust-version {msrv:?}");
    let cargo = build
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        cargo.args.contains("--release") && cargo.args.contains("--locked"),
        "{path}: {}",
        cargo.args
    );

    let (runtime_image, _, runtime) = stages.last().unwrap();
    assert!(
        runtime_image.starts_with("debian:") && runtime_image.ends_with("-slim"),
        "{path}: {runtime_image}"
    );
    let user =
        runtime.iter().rev().find(|i| i.keyword == "USER").expect("the runtime stage sets USER");
    let uid = user.args.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "{path}: runs as root");
    for binary in binaries {
        assert!(cargo.args.contains(&format!("--bin {binary}")), "{path}: {binary} is not built");
        let copied = runtime.iter().any(|i| {
            i.keyword == "COPY"
                && i.args.contains(&format!("--from={build_name}"))
                && i.args.contains(&format!("target/release/{binary}"))
        });
        assert!(copied, "{path}: {binary} is not copied from the build stage");
    }
    let entrypoint =
        exec_form(runtime.iter().find(|i| i.keyword == "ENTRYPOINT").expect("an ENTRYPOINT"));
    let cmd = runtime.iter().find(|i| i.keyword == "CMD").map(|i| exec_form(i)).unwrap_or_default();
    assert_eq!(
        entrypoint[0],
        format!("/usr/local/bin/{}", binaries[0]),
        "{path}: the entrypoint runs the binary"
    );
    let envs: Vec<String> = runtime
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .map(|kv| kv.split('=').next().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    (entrypoint, cmd, envs)
}

fn flag_names(args: &[String]) -> Vec<String> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn node_image_runs_dynamo_node_with_its_own_flags() {
    let (entrypoint, cmd, envs) =
        check_image("images/node.Dockerfile", &["dynamo-node", "dynamoctl"]);
    let text = read("images/node.Dockerfile");
    assert!(
        text.contains("libclang-dev"),
        "RocksDB's bindings need libclang-dev in the build stage"
    );
    let args: Vec<String> = entrypoint[1..].iter().chain(&cmd).cloned().collect();
    for flag in flag_names(&args) {
        assert!(NODE_FLAGS.contains(&flag.as_str()), "--{flag} is not a dynamo-node flag");
    }
    assert!(!envs.is_empty());
    for var in envs {
        assert!(NODE_ENV.contains(&var.as_str()), "{var} is not a variable dynamo-node reads");
    }
}

#[test]
fn operator_image_runs_dynamo_operator_with_valid_flags() {
    let (entrypoint, cmd, _) = check_image("images/operator.Dockerfile", &["dynamo-operator"]);
    let args = std::iter::once("dynamo-operator".to_string())
        .chain(entrypoint[1..].iter().cloned())
        .chain(cmd);
    let config = Config::try_parse_from(args).expect("the image's arguments parse");
    config.validate().unwrap();
    assert!(
        !read("images/operator.Dockerfile").contains("libclang"),
        "the operator needs no RocksDB toolchain"
    );
}

#[test]
fn chart_passes_only_flags_the_operator_has() {
    let template = read("charts/dynamo-operator/templates/deployment.yaml");
    let command = Config::command();
    let known: Vec<&str> = command.get_arguments().filter_map(|a| a.get_long()).collect();
    let used: Vec<String> = template
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|l| l.split('=').next().unwrap().to_string())
        .collect();
    assert!(used.len() >= 5, "{used:?}");
    for flag in used {
        assert!(
            known.contains(&flag.as_str()),
            "the chart passes --{flag}, which dynamo-operator does not have"
        );
    }
}

#[test]
fn example_cluster_is_valid_with_three_zones_and_quorums_of_two() {
    let cluster: DynamoCluster =
        serde_yaml::from_str(&read("examples/cluster.yaml")).expect("a DynamoCluster");
    let spec = &cluster.spec;
    let zones: Vec<(&str, i32)> =
        spec.zones.iter().map(|z| (z.name.as_str(), z.replicas)).collect();
    assert_eq!(zones, [("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    assert_eq!((spec.replication.n, spec.replication.r, spec.replication.w), (3, 2, 2));
    dynamo_operator::validate::validate("demo", spec).unwrap();
    kube::core::cel::validate_cel(&cluster).unwrap();
}

/// The final stage's run-time settings: USER, ENTRYPOINT, CMD, ENV names, EXPOSE, VOLUME.
fn runtime_settings(path: &str) -> Vec<(String, String)> {
    let text = read(path);
    let instructions = parse_dockerfile(&text);
    let stages = stages(&instructions);
    let (_, _, runtime) = stages.last().unwrap();
    runtime
        .iter()
        .filter(|i| {
            ["USER", "ENTRYPOINT", "CMD", "ENV", "EXPOSE", "VOLUME"].contains(&i.keyword.as_str())
        })
        .map(|i| (i.keyword.clone(), i.args.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

#[test]
fn offline_images_run_like_the_multi_stage_ones() {
    for name in ["node", "operator"] {
        let multi = format!("images/{name}.Dockerfile");
        let offline = format!("images/{name}.offline.Dockerfile");
        let settings = runtime_settings(&multi);
        assert!(settings.iter().any(|(k, _)| k == "USER"), "{multi}: no USER");
        assert_eq!(settings, runtime_settings(&offline), "{offline} must run as {multi} does");
        let text = read(&offline);
        let instructions = parse_dockerfile(&text);
        let stages = stages(&instructions);
        assert_eq!(stages.len(), 1, "{offline}: one stage on the debootstrapped base");
        assert_eq!(stages[0].0, "${BASE}", "{offline}: FROM the base images/base-image made");
        for path in [&multi, &offline] {
            let labels = read(path);
            for label in ["revision=${REVISION}", "version=${VERSION}"] {
                assert!(
                    labels.contains(&format!("org.opencontainers.image.{label}")),
                    "{path}: {label}"
                );
            }
        }
    }
}

/// `KEY=value` lines of `images/refs`.
fn image_refs() -> std::collections::BTreeMap<String, String> {
    let out = std::process::Command::new("bash")
        .arg(repo().join("images/refs"))
        .output()
        .expect("bash runs images/refs");
    assert!(out.status.success(), "images/refs: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn image_references_agree_everywhere() {
    use dynamo_operator::crd::{default_node_image, default_operator_image, IMAGE_REGISTRY};
    let version = env!("CARGO_PKG_VERSION");
    let refs = image_refs();
    assert_eq!(refs["DYNAMO_IMAGE_VERSION"], version, "images/refs reads Cargo.toml's version");
    assert_eq!(refs["DYNAMO_NODE_IMAGE"], default_node_image());
    assert_eq!(refs["DYNAMO_OPERATOR_IMAGE"], default_operator_image());
    assert!(default_node_image().starts_with(IMAGE_REGISTRY));

    // The CRD's default for spec.image, in both committed copies.
    for crd in ["crds/dynamoclusters.yaml", "charts/dynamo-operator/crds/dynamoclusters.yaml"] {
        assert!(
            read(crd).contains(&format!("default: {}", default_node_image())),
            "{crd}: spec.image's default is not {}",
            default_node_image()
        );
    }
    // The chart: the operator image is image.repository at the chart's appVersion.
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read("charts/dynamo-operator/Chart.yaml")).unwrap();
    assert_eq!(chart["appVersion"].as_str(), Some(version), "Chart.yaml's appVersion");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&read("charts/dynamo-operator/values.yaml")).unwrap();
    let repository = values["image"]["repository"].as_str().unwrap();
    assert_eq!(format!("{repository}:{version}"), default_operator_image(), "values.yaml");
    assert_eq!(values["image"]["tag"].as_str(), Some(""), "the tag follows appVersion");

    // Scripts take the references from images/refs, never a literal.
    for script in ["e2e/kind/up", "e2e/kind/scenarios", "images/build-offline", "images/check"] {
        let text = read(script);
        assert!(!text.contains(IMAGE_REGISTRY), "{script} names the registry: use images/refs");
    }
    assert!(read("e2e/kind/up").contains("images/refs"), "e2e/kind/up reads images/refs");

    // Every versioned reference in the docs and Dockerfiles has this version.
    let docs =
        ["README.md", "e2e/README.md", "images/node.Dockerfile", "images/operator.Dockerfile"];
    for doc in docs {
        let text = read(doc);
        for (at, _) in text.match_indices(&format!("{IMAGE_REGISTRY}/dynamo-")) {
            let reference: String = text[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !"`\"')".contains(*c))
                .collect();
            let Some((_, tag)) = reference.rsplit_once(':') else { continue };
            if tag.starts_with(|c: char| c.is_ascii_digit()) {
                assert_eq!(tag, version, "{doc}: {reference} is not this release's image");
            }
        }
    }
}
