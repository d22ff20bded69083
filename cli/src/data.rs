//! `put`, `get`, `delete`: the data commands. A value comes from the command line, a file
//! (`--file F`) or standard input (`-`), so values larger than the kernel's 128 KiB argument
//! limit and binary values can be written; `get -o raw` writes a value's bytes unchanged.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use dynamo_client::Client;

use crate::connect::ConnectArgs;
use crate::output;

/// Arguments of `put`.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    pub key: String,
    /// The value; `-` reads it from standard input. Omit it with --file.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file (any bytes, any size up to the cluster's limit).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Context from a previous get or put of this key (base64); omit for a blind write,
    /// which becomes a sibling of whatever the key holds.
    #[arg(long, default_value = "")]
    pub context: String,
    /// Write quorum for this request (1..=N).
    #[arg(long)]
    pub w: Option<u32>,
}

/// Output format of `get`: `raw` writes the value's bytes (exactly one value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GetFormat {
    #[default]
    Text,
    Json,
    Raw,
}

/// Arguments of `get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    pub key: String,
    /// Read quorum for this request (1..=N).
    #[arg(long)]
    pub r: Option<u32>,
    /// text, json, or raw (the value's bytes alone, for files and pipes).
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: GetFormat,
}

/// Arguments of `delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub key: String,
    #[arg(long, default_value = "")]
    pub context: String,
    #[arg(long)]
    pub w: Option<u32>,
}

/// The client of a data command. Partition-aware, it fetches the ring from `endpoint` first, so
/// that the one request goes straight to a replica of its key; if the ring cannot be fetched
/// (the node has not joined yet, or does not answer), the request goes to `endpoint`, whose
/// error then says what is wrong.
pub async fn client(
    connect: &ConnectArgs,
    timeout: Duration,
    partition_aware: bool,
) -> Result<Client, String> {
    let client = connect.client([connect.endpoint.as_str()], timeout, partition_aware)?;
    // Routing is an optimisation: without a ring the endpoint coordinates (or forwards); a
    // refused credential, though, would be refused by the request too: say so now.
    if let Err(e) = client.refresh_ring().await {
        if e.is_auth() {
            return Err(e.to_string());
        }
    }
    Ok(client)
}

/// Decodes a context given on the command line.
pub fn decode_context(context: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(context.trim()).map_err(|e| {
        format!("--context is not valid base64 ({e}): pass the context printed by get or put")
    })
}

/// Encodes a context for the command line.
pub fn encode_context(context: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(context)
}

/// The value of a put: the argument, standard input (`-`), or the file.
fn read_value(args: &PutArgs) -> Result<Vec<u8>, String> {
    match (&args.value, &args.file) {
        (Some(v), None) if v == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read the value from standard input: {e}"))?;
            Ok(buf)
        }
        (Some(v), None) => Ok(v.clone().into_bytes()),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("cannot read the value from {}: {e}", path.display())),
        _ => Err("give the value as an argument, as - (standard input) or with --file".into()),
    }
}

pub async fn put(client: &Client, args: PutArgs) -> Result<(), String> {
    let context = decode_context(&args.context)?;
    let value = read_value(&args)?;
    let out =
        client.put(args.key.as_bytes(), value, context, args.w).await.map_err(|e| e.to_string())?;
    println!("{}", encode_context(&out.context));
    Ok(())
}

pub async fn get(client: &Client, args: GetArgs) -> Result<(), String> {
    let out = client.get(args.key.as_bytes(), args.r).await.map_err(|e| e.to_string())?;
    match args.output {
        GetFormat::Text => print!("{}", output::get(&args.key, &out, crate::Format::Text)),
        GetFormat::Json => print!("{}", output::get(&args.key, &out, crate::Format::Json)),
        GetFormat::Raw => {
            let value = output::raw(&args.key, &out)?;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(value)
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("cannot write the value to standard output: {e}"))?;
        }
    }
    Ok(())
}

pub async fn delete(client: &Client, args: DeleteArgs) -> Result<(), String> {
    let context = decode_context(&args.context)?;
    let out =
        client.delete(args.key.as_bytes(), context, args.w).await.map_err(|e| e.to_string())?;
    println!("{}", encode_context(&out.context));
    Ok(())
}
