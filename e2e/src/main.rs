//! `dynamo-e2e up [DIR]`: starts the e2e environment (pod network, control plane, fake Nodes in
//! three zones, the kubelet running pods as dynamo-node processes), installs the operator's
//! chart and runs the operator, restarting it when it exits or is killed (as its Deployment
//! would), until Ctrl-C. For trying the operator by hand (real containers: `e2e/kind/`).
//! Needs root and `DYNAMO_E2E_TOOLS` (see `scripts/e2e`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dynamo_e2e::environment::Environment;
use dynamo_e2e::operator::{install_chart, Operator};
use dynamo_tests::cluster::target_binary;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some("up"), dir) = (args.first().map(String::as_str), args.get(1)) else {
        eprintln!("usage: dynamo-e2e up [DIR]   (DIR defaults to ./e2e-run)");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir.map_or("e2e-run", String::as_str));
    let images = BTreeMap::from([("dynamo-node".to_string(), target_binary("dynamo-node")?)]);
    let env = Environment::start(&dir, images).await?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
    let kubeconfig = install_chart(&env.control_plane, repo)?;
    let log = env.control_plane.dir.join("operator.log");
    let mut operator = Operator::new(target_binary("dynamo-operator")?, kubeconfig, log.clone());
    operator.start()?;
    println!("control plane up with the operator; logs in {}", env.control_plane.dir.display());
    println!("export KUBECONFIG={}", env.control_plane.kubeconfig.display());
    println!("export PATH={}:$PATH", env.control_plane.tools.display());
    println!("the operator logs to {} and is restarted when it exits", log.display());
    println!("Ctrl-C stops everything");
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            r = &mut ctrl_c => { r?; break; }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if !operator.running() {
                    eprintln!("dynamo-e2e: the operator exited; starting it again");
                    operator.start()?;
                }
            }
        }
    }
    operator.kill();
    Ok(())
}
