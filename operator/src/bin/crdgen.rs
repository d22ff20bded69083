//! Prints the DynamoCluster CustomResourceDefinition as YAML. Its output is committed as
//! `crds/dynamoclusters.yaml` (and the chart's copy); a test fails when they are stale:
//! `cargo run -p dynamo-operator --bin crdgen > crds/dynamoclusters.yaml`.

fn main() {
    print!("{}", dynamo_operator::crd::crd_yaml());
}
