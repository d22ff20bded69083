//! Backups on real processes: 20,000 keys (some with siblings, some deleted) backed up to a
//! directory, a second backup after more writes uploads only the new files, and a restore into
//! a new cluster of another size gives back every value and sibling, and no deleted key. The
//! same to S3-compatible storage: a `moto` server (PyPI) the test starts on loopback.

use std::collections::BTreeMap;
use std::sync::Arc;

use dynamo_client::Client;
use dynamo_tests::{Cluster, ClusterOptions};

/// Writes `keys` keys from `first` through `client` with 8 writers; returns nothing (the source
/// cluster is read back for the comparison).
async fn write_keys(client: &Client, first: usize, keys: usize) {
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (first + w..first + keys).step_by(8) {
                    let key = format!("key-{i:05}");
                    client
                        .put(key.as_bytes(), format!("v{i}").into_bytes(), vec![], None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

/// Every key's sorted values, read at r = N.
async fn read_all(client: &Client, keys: &[String]) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(keys.len().div_ceil(8)) {
        let client = client.clone();
        let chunk = chunk.to_vec();
        out.extend(
            tokio::spawn(async move {
                let mut part = Vec::new();
                for key in chunk {
                    let mut values = client.get(key.as_bytes(), Some(3)).await.unwrap().values;
                    values.sort();
                    part.push((key, values));
                }
                part
            })
            .await
            .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_cluster_of_another_size_and_the_next_uploads_only_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let destination = format!("file://{}", dir.path().join("backups").display());
    let source = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = source.routing_client(std::time::Duration::from_secs(10));
    write_keys(&client, 0, 20_000).await;
    // Siblings: a second blind write of 200 keys through another node.
    let other = source.client(1);
    for i in 0..200 {
        let key = format!("key-{i:05}");
        other.put(key.as_bytes(), format!("sibling{i}").into_bytes(), vec![], None).await.unwrap();
    }
    // Deletes: 200 keys deleted with their context.
    for i in 200..400 {
        let key = format!("key-{i:05}");
        let got = client.get(key.as_bytes(), None).await.unwrap();
        client.delete(key.as_bytes(), got.context, None).await.unwrap();
    }

    let admin = source.client(0);
    let first = admin.backup(&destination, Some("first")).await.unwrap();
    println!(
        "first backup: {} nodes, {} files, {} bytes, {} uploaded",
        first.nodes.len(),
        first.nodes.iter().map(|n| n.files).sum::<u32>(),
        first.bytes_total(),
        first.bytes_uploaded()
    );
    assert_eq!(first.nodes.len(), 3);
    assert_eq!(first.bytes_uploaded(), first.bytes_total(), "a first backup uploads everything");
    // The same id twice is refused.
    let again = admin.backup(&destination, Some("first")).await.unwrap_err().to_string();
    assert!(again.contains("already holds a backup 'first'"), "{again}");

    write_keys(&client, 20_000, 300).await;
    let second = admin.backup(&destination, None).await.unwrap();
    println!(
        "second backup {}: {} bytes, {} uploaded",
        second.backup_id,
        second.bytes_total(),
        second.bytes_uploaded()
    );
    assert!(
        second.bytes_uploaded() < second.bytes_total() / 2,
        "the second backup sent {} of {} bytes: it should send only the new files",
        second.bytes_uploaded(),
        second.bytes_total()
    );
    let listed = admin.backups(&destination).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|b| b.backup_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"first") && ids.contains(&second.backup_id.as_str()), "{ids:?}");
    assert!(listed.iter().all(|b| b.cluster == "test"));

    // A new cluster of four nodes gets the second backup.
    let target =
        Cluster::start(ClusterOptions { nodes: 4, ..ClusterOptions::default() }).await.unwrap();
    let restored = target.client(0).restore(&destination, &second.backup_id).await.unwrap();
    for n in &restored {
        println!("{}: kept {} of {} keys read", n.node_id, n.keys_kept, n.keys_read);
    }
    assert_eq!(restored.len(), 4);
    let keys: Vec<String> = (0..20_300).map(|i| format!("key-{i:05}")).collect();
    let want = read_all(&client, &keys).await;
    let got = read_all(&target.routing_client(std::time::Duration::from_secs(10)), &keys).await;
    let differ: Vec<_> = keys.iter().filter(|k| want[*k] != got[*k]).take(5).collect();
    assert!(
        differ.is_empty(),
        "restored values differ, e.g. {:?}",
        differ.iter().map(|k| (k, &want[*k], &got[*k])).collect::<Vec<_>>()
    );
    assert_eq!(want["key-00007"].len(), 2, "a key with siblings: {:?}", want["key-00007"]);
    assert!(got["key-00300"].is_empty(), "a deleted key came back");
    assert_eq!(got["key-20100"], vec![b"v20100".to_vec()]);

    // Deleting the first backup frees what only it used; the second is still listed.
    let (objects, bytes) = admin.delete_backup(&destination, "first").await.unwrap();
    println!("deleting the first backup removed {objects} objects, {bytes} bytes");
    assert!(objects > 0);
    let left: Vec<String> =
        admin.backups(&destination).await.unwrap().into_iter().map(|b| b.backup_id).collect();
    assert_eq!(left, vec![second.backup_id.clone()]);
    let missing = admin.restore(&destination, "first").await.unwrap_err().to_string();
    assert!(missing.contains("no complete backup 'first'"), "{missing}");
}

/// A moto S3 server on a free loopback port, killed on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server: `$DYNAMO_MOTO_SERVER`, the one scripts/bootstrap installs, or on the PATH.
fn moto_server() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("DYNAMO_MOTO_SERVER") {
        return path.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let installed = std::path::Path::new(&home).join(".cache/dynamo/moto-5.2.1/bin/moto_server");
    if installed.exists() {
        installed
    } else {
        "moto_server".into()
    }
}

/// Starts moto's S3 server (scripts/bootstrap installs it) and creates `bucket` with a plain
/// HTTP request (moto takes any credentials).
fn moto(bucket: &str) -> Moto {
    use std::io::{Read, Write};
    let port = dynamo_tests::cluster::free_port().unwrap();
    let child = std::process::Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server runs: scripts/bootstrap installs it");
    let server = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let request = format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            s.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 200"), "creating the bucket: {answer}");
            return server;
        }
        assert!(std::time::Instant::now() < deadline, "moto_server did not listen within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_to_s3_compatible_storage_restores_and_the_next_uploads_only_new_files() {
    let s3 = moto("dynamo");
    // The nodes read their S3 settings from the environment they inherit.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", s3.endpoint.as_str()),
    ] {
        std::env::set_var(k, v);
    }
    let destination = "s3://dynamo/backups/test";
    let source = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = source.routing_client(std::time::Duration::from_secs(10));
    write_keys(&client, 0, 5000).await;
    let admin = source.client(0);
    let first = admin.backup(destination, Some("one")).await.unwrap();
    assert_eq!(first.bytes_uploaded(), first.bytes_total());
    write_keys(&client, 5000, 100).await;
    let second = admin.backup(destination, Some("two")).await.unwrap();
    println!(
        "s3: first {} bytes; second {} bytes, {} uploaded",
        first.bytes_total(),
        second.bytes_total(),
        second.bytes_uploaded()
    );
    assert!(second.bytes_uploaded() < second.bytes_total() / 2, "{second:?}");
    let target =
        Cluster::start(ClusterOptions { nodes: 4, ..ClusterOptions::default() }).await.unwrap();
    target.client(0).restore(destination, "two").await.unwrap();
    let keys: Vec<String> = (0..5100).map(|i| format!("key-{i:05}")).collect();
    let want = read_all(&client, &keys).await;
    let got = read_all(&target.routing_client(std::time::Duration::from_secs(10)), &keys).await;
    assert!(keys.iter().all(|k| want[k] == got[k] && !got[k].is_empty()), "restored values differ");
    let ids: Vec<String> =
        admin.backups(destination).await.unwrap().into_iter().map(|b| b.backup_id).collect();
    assert_eq!(ids, ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_writes_holds_every_write_acknowledged_before_it_started() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let destination = format!("file://{}", dir.path().join("backups").display());
    let source = Cluster::start(ClusterOptions::default()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Four writers of unique keys through every node; each records when its put was acked.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = source.client(w % 3);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{i}");
                    if client
                        .put(key.as_bytes(), key.clone().into_bytes(), vec![], None)
                        .await
                        .is_ok()
                    {
                        acked.push((key, Instant::now()));
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let taken = source.client(0).backup(&destination, Some("live")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut before = Vec::new();
    let mut total = 0;
    for w in writers {
        let acked = w.await.unwrap();
        total += acked.len();
        before.extend(acked.into_iter().filter(|(_, at)| *at < started).map(|(k, _)| k));
    }
    println!(
        "{total} writes acknowledged, {} before the backup started; backup of {} bytes",
        before.len(),
        taken.bytes_total()
    );
    assert!(before.len() >= 100, "too few writes to prove anything");
    let target = Cluster::start(ClusterOptions::default()).await.unwrap();
    target.client(0).restore(&destination, "live").await.unwrap();
    let got = read_all(&target.routing_client(Duration::from_secs(10)), &before).await;
    let lost: Vec<&String> =
        before.iter().filter(|k| got[*k] != vec![k.as_bytes().to_vec()]).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes are not in the backup, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
