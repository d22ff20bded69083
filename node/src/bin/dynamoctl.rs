//! `dynamoctl`: see `dynamoctl --help`.

fn main() -> std::process::ExitCode {
    dynamo_node::cli::main()
}
