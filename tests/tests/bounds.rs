//! Bounds on real processes: partitions of values near the 1 MiB limit move on a join and a
//! decommission (pages are cut by bytes, not by a count of keys); oversized and greedy requests
//! on every internode and admin method are refused with the right code or answered within the
//! page budget, and the node's memory stays bounded; a burst of client requests past the
//! admission limit is refused at once and everything is served again after it; a node down past
//! the hint window gets no new hints and anti-entropy restores what it missed (history checker).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_api::config::Limits;
use dynamo_api::pb::admin::{
    admin_client::AdminClient, DecommissionRequest, RepairRequest, SetFaultsRequest, StatusRequest,
};
use dynamo_api::pb::client::{client_client::ClientClient, GetRequest};
use dynamo_api::pb::internode::{
    internode_client::InternodeClient, CoordinatePutRequest, FetchRequest, GossipRequest,
    MerkleHashesRequest, MerkleItemsRequest, PingRequest, ReplicateRequest, StreamPartitionRequest,
};
use dynamo_api::security::Credentials;
use dynamo_client::{MemberState, TransferState};
use dynamo_node::storage::TREE_SHAPE;
use dynamo_tests::history::{check, Outcome};
use dynamo_tests::nemesis::{converge, endpoints};
use dynamo_tests::workload::{recorded_put, Recorder};
use dynamo_tests::{Cluster, ClusterOptions};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Values just under the 1 MiB value limit.
const BIG: usize = 1000 << 10;

/// The tests here move hundreds of megabytes or hold nodes at their limits: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn big_value(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; BIG];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

/// Every key is on each of its N replicas, with its value.
async fn assert_on_replicas(cluster: &Cluster, keys: &BTreeMap<String, usize>) {
    let placement = cluster.placement().await.unwrap();
    for (key, &i) in keys {
        let replicas = placement.replicas(key.as_bytes());
        assert_eq!(replicas.len(), 3, "{key} has replicas {replicas:?}");
        for r in replicas {
            let values = cluster.local_values(r, key.as_bytes()).await.unwrap();
            assert!(
                values == vec![big_value(i)],
                "{key} is not on its replica {} ({} values)",
                cluster.nodes[r].id,
                values.len()
            );
        }
    }
}

/// Polls every running node's status until the ring settles on `count` members (all normal,
/// nothing pending), and returns the transfers reported meanwhile (the last report of each; a
/// node lists the transfers of the layout change under way).
async fn settle_watching_transfers(
    cluster: &Cluster,
    count: usize,
) -> BTreeMap<(u32, String, String), dynamo_client::Transfer> {
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut settled = true;
        for i in (0..cluster.nodes.len()).filter(|&i| cluster.is_running(i)) {
            let client = cluster.client(i);
            match (client.ring().await, client.status().await) {
                (Ok(ring), Ok(status)) => {
                    settled &= ring.members.len() == count
                        && status.pending_partitions == 0
                        && ring
                            .members
                            .iter()
                            .all(|m| status.membership_of(&m.id) == Some(MemberState::Normal));
                    for t in status.transfers {
                        seen.insert((t.partition, t.from.clone(), t.to.clone()), t);
                    }
                }
                _ => settled = false,
            }
        }
        if settled {
            return seen;
        }
        assert!(Instant::now() < deadline, "the ring did not settle within 300 s: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_values_near_the_limit_move_on_a_join_and_a_decommission() {
    let _serial = SERIAL.lock().await;
    // Four partitions and 320 values of 1000 KiB: about 80 MB a partition, so a page of 256
    // keys (the old transfer page) would be over three times the 64 MiB message cap.
    let opts = ClusterOptions { partitions: 4, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(opts).await.unwrap();
    let mut keys = BTreeMap::new();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = cluster.client(w % 3);
            tokio::spawn(async move {
                let mut done = Vec::new();
                for i in (w..320).step_by(4) {
                    let key = format!("big-{i}");
                    client.put(key.as_bytes(), big_value(i), vec![], Some(3)).await.unwrap();
                    done.push((key, i));
                }
                done
            })
        })
        .collect();
    for w in writers {
        keys.extend(w.await.unwrap());
    }
    let ring = cluster.ring(0).await.unwrap();
    let mut per_partition = BTreeMap::<u32, usize>::new();
    for key in keys.keys() {
        *per_partition.entry(ring.partition_of(key.as_bytes())).or_default() += 1;
    }
    println!("keys per partition: {per_partition:?}");
    assert!(per_partition.values().any(|&n| n * BIG > 64 << 20), "no partition is over 64 MiB");

    // A fourth node joins and takes its share.
    let started = Instant::now();
    let new = cluster.add_node().await.unwrap();
    let transfers = settle_watching_transfers(&cluster, 4).await;
    println!("join settled in {:?}", started.elapsed());
    let to_new: Vec<_> =
        transfers.values().filter(|t| t.to == cluster.nodes[new].id && t.keys_sent > 0).collect();
    assert!(!to_new.is_empty(), "no transfer to the new node was reported: {transfers:?}");
    for t in &to_new {
        println!(
            "partition {} from {} to {}: {} keys, {} bytes, {} bytes/s, {}",
            t.partition,
            t.from,
            t.to,
            t.keys_sent,
            t.bytes_sent,
            t.bytes_per_second,
            t.state.as_str()
        );
        assert!(t.bytes_sent >= t.keys_sent * BIG as u64, "{t:?}");
        assert!(t.bytes_per_second > 0, "the transfer's rate is not reported: {t:?}");
    }
    assert!(
        to_new.iter().any(|t| t.state == TransferState::Done && t.keys_sent > 64),
        "no transfer of more than 64 values (over the old 64 MiB cap) was seen done"
    );
    assert_on_replicas(&cluster, &keys).await;

    // The first node leaves, handing everything it holds to the others.
    let started = Instant::now();
    cluster.decommission(0).await.unwrap();
    println!("decommission finished in {:?}", started.elapsed());
    cluster.kill(0);
    assert_on_replicas(&cluster, &keys).await;
}

/// A client of node `i`'s peer port, able to send and receive messages of any size.
async fn peer_channel(cluster: &Cluster, i: usize, credentials: &Credentials) -> Channel {
    dynamo_client::channel(&cluster.nodes[i].peer_address, Duration::from_secs(10), credentials)
        .unwrap()
}

fn internode(channel: &Channel) -> InternodeClient<Channel> {
    InternodeClient::new(channel.clone())
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX)
}

fn admin(channel: &Channel) -> AdminClient<Channel> {
    AdminClient::new(channel.clone())
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX)
}

/// The node's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib << 10
}

/// The code of a refused call, or a panic naming the call if it was not refused.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) -> tonic::Status {
    match r {
        Ok(t) => panic!("{what} was accepted: {t:?}"),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_greedy_requests_are_refused_or_bounded_and_the_node_keeps_serving() {
    let _serial = SERIAL.lock().await;
    // One node, one partition holding 48 values of 1000 KiB (47 MiB): a greedy page request
    // could ask for all of it.
    let opts = ClusterOptions { partitions: 1, ..ClusterOptions::single_node() };
    let cluster = Cluster::start(opts).await.unwrap();
    let client = cluster.client(0);
    for i in 0..48 {
        client.put(format!("big-{i}").as_bytes(), big_value(i), vec![], None).await.unwrap();
    }
    let pid = cluster.nodes[0].pid().expect("running");
    let before = rss_bytes(pid);
    let access = cluster.access().clone();
    let peer = peer_channel(&cluster, 0, &access.peer).await;
    let admin_channel = peer_channel(&cluster, 0, &access.admin).await;
    let huge = vec![7u8; 48 << 20];
    let ca_fingerprint = cluster.pki().expect("a TLS cluster").ca().fingerprint();
    let (fanout, depth) = (TREE_SHAPE.fanout, TREE_SHAPE.depth);
    let leaf_count = TREE_SHAPE.level_len(depth);
    let mut peak = before;

    // Three rounds: memory taken for a refused request must not accumulate.
    for round in 0..3 {
        let mut node = internode(&peer);
        let mut admin_api = admin(&admin_channel);
        let mut codes: Vec<(&str, Code)> = Vec::new();
        let mut note = |what: &'static str, status: tonic::Status| {
            if round == 0 {
                println!("{what}: {:?} {}", status.code(), status.message());
            }
            codes.push((what, status.code()));
        };
        // Over the internode message limit: refused by the decoder before anything else.
        let r = node
            .replicate(ReplicateRequest {
                key: b"k".to_vec(),
                clock: huge.clone(),
                ..Default::default()
            })
            .await;
        note("Replicate 48 MiB", refused("a 48 MiB Replicate", r));
        let r = node.ping(PingRequest { from: String::from_utf8(huge.clone()).unwrap() }).await;
        note("Ping 48 MiB", refused("a 48 MiB Ping", r));
        let r = node
            .gossip(GossipRequest {
                view: huge[..6 << 20].to_vec(),
                cluster: "test".into(),
                ca_fingerprint: ca_fingerprint.clone(),
            })
            .await;
        note("Gossip 6 MiB view", refused("a 6 MiB view", r));
        let r = node
            .coordinate_put(CoordinatePutRequest {
                key: b"k".to_vec(),
                value: Some(huge[..2 << 20].to_vec()),
                ..Default::default()
            })
            .await;
        note("CoordinatePut 2 MiB value", refused("a 2 MiB forwarded put", r));
        let r = node.fetch(FetchRequest { key: vec![1; 4096], ..Default::default() }).await;
        note("Fetch 4 KiB key", refused("a 4 KiB key", r));
        let r = node
            .merkle_hashes(MerkleHashesRequest {
                partition: 0,
                level: 1,
                indices: (0..10_000_000).collect(),
                fanout,
                depth,
            })
            .await;
        note("MerkleHashes 10M indices", refused("ten million Merkle indices", r));
        let r = node
            .merkle_items(MerkleItemsRequest {
                partition: 0,
                leaves: vec![0; 1_000_000],
                fanout,
                depth,
                ..Default::default()
            })
            .await;
        note("MerkleItems 1M leaves", refused("a million leaves", r));
        let r = admin_api
            .decommission(DecommissionRequest { node_id: "x".repeat(1 << 20), force: true })
            .await;
        note("Decommission 1 MiB id", refused("a 1 MiB node id", r));
        let r = admin_api
            .set_faults(SetFaultsRequest { blocked_peers: vec!["p".repeat(1024); 1024] })
            .await;
        note("SetFaults 1 MiB list", refused("a 1 MiB peer list", r));
        let r = admin_api.repair(RepairRequest { partition: Some(1 << 30) }).await;
        note("Repair partition 2^30", refused("a partition out of range", r));
        for (what, code) in &codes {
            let expected = match *what {
                "Replicate 48 MiB"
                | "Ping 48 MiB"
                | "Decommission 1 MiB id"
                | "SetFaults 1 MiB list"
                | "MerkleHashes 10M indices" => Code::OutOfRange,
                _ => Code::InvalidArgument,
            };
            assert_eq!(*code, expected, "{what}");
        }

        // Greedy but well-formed: answered within the page budget (16 MiB at most).
        let page = node
            .stream_partition(StreamPartitionRequest {
                partition: 0,
                after: None,
                limit: u32::MAX,
                max_bytes: u64::MAX,
            })
            .await
            .unwrap()
            .into_inner();
        let size = page.encoded_len();
        assert!(!page.done && size <= (16 << 20) + BIG + 4096, "a {size}-byte page");
        assert!(page.entries.len() < 48, "{} entries", page.entries.len());
        let leaves = node
            .merkle_items(MerkleItemsRequest {
                partition: 0,
                leaves: (0..leaf_count).collect(),
                fanout,
                depth,
                after: None,
                max_bytes: u64::MAX,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(leaves.items.len(), 48, "every key's digest fits in one page");
        assert!(!leaves.more);
        peak = peak.max(rss_bytes(pid));
    }
    let after = rss_bytes(pid);
    println!(
        "RSS: {} MiB before, {} MiB at most during, {} MiB after",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    // The bound: the refused messages (48 MiB each) are never buffered whole, and pages are
    // at most 16 MiB: well under 256 MiB over what the node held before.
    assert!(peak < before + (256 << 20), "RSS grew from {before} to {peak} bytes");
    // Still serving: every value reads back, status answers.
    for i in [0, 47] {
        let got = client.get(format!("big-{i}").as_bytes(), None).await.unwrap();
        assert_eq!(got.values, vec![big_value(i)]);
    }
    let status = admin(&admin_channel).status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.node_id, cluster.nodes[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_admission_limit_is_refused_at_once_then_served() {
    let _serial = SERIAL.lock().await;
    let limits = Limits { max_concurrent_requests: 8, ..Limits::default() };
    let opts = ClusterOptions { limits, timeout_ms: 2000, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(opts).await.unwrap();
    let client = cluster.client(0);
    for i in 0..20 {
        client.put(format!("k{i}").as_bytes(), b"v".to_vec(), vec![], Some(3)).await.unwrap();
    }
    // With node 3 paused, a get at R = 3 waits for the quorum timeout: the admitted requests
    // hold their permits for two seconds while the rest of the burst arrives.
    cluster.pause(2);
    let channel = dynamo_client::channel(
        &cluster.nodes[0].address,
        Duration::from_secs(10),
        &cluster.access().admin,
    )
    .unwrap();
    let started = Instant::now();
    let burst: Vec<_> = (0..100)
        .map(|i| {
            let mut raw = ClientClient::new(channel.clone());
            tokio::spawn(async move {
                let request = GetRequest { key: format!("k{}", i % 20).into_bytes(), r: Some(3) };
                let result = raw.get(Request::new(request)).await;
                (result.map(|_| ()), started.elapsed())
            })
        })
        .collect();
    let mut refused = Vec::new();
    let mut admitted = Vec::new();
    for task in burst {
        let (result, took) = task.await.unwrap();
        match result {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("node overloaded"), "{}", s.message());
                assert!(s.message().contains("retry with backoff"), "{}", s.message());
                refused.push(took);
            }
            // Admitted: R = 3 cannot be met with a replica paused.
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                admitted.push(took);
            }
            Ok(()) => panic!("a get at R = 3 succeeded with a replica paused"),
        }
    }
    println!(
        "{} refused (slowest after {:?}), {} admitted (fastest after {:?})",
        refused.len(),
        refused.iter().max(),
        admitted.len(),
        admitted.iter().min()
    );
    assert!(refused.len() >= 80, "only {} of 100 were refused with 8 admitted", refused.len());
    assert!(admitted.len() >= 8, "{} admitted", admitted.len());
    // Refusals did not wait for a permit: each came back before any admitted request ended.
    let first_admitted_end = *admitted.iter().min().unwrap();
    assert!(refused.iter().all(|t| *t < first_admitted_end), "a refusal waited for a permit");

    // After the burst: the node is resumed, every key reads at R = 3, and a burst of 100
    // library puts (which retry refusals with backoff) all succeed.
    cluster.resume(2);
    for i in 0..20 {
        client.get(format!("k{i}").as_bytes(), Some(3)).await.unwrap();
    }
    let puts: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client.put(format!("after-{i}").as_bytes(), b"v".to_vec(), vec![], None).await
            })
        })
        .collect();
    for put in puts {
        put.await.unwrap().expect("a put retried after overload failed");
    }
    for i in 0..3 {
        assert!(cluster.is_running(i), "{} died", cluster.nodes[i].id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_the_hint_window_gets_no_new_hints_and_anti_entropy_restores_it() {
    let _serial = SERIAL.lock().await;
    let opts = ClusterOptions {
        nodes: 4,
        hint_window_ms: 3000,
        anti_entropy_interval_ms: 300,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(opts).await.unwrap();
    let recorder = Arc::new(Recorder::new());
    let via = endpoints(&cluster, Duration::from_secs(5));
    let down_id = cluster.nodes[3].id.clone();
    let hints_for_down = |statuses: &[dynamo_client::ClusterStatus]| -> u64 {
        statuses
            .iter()
            .flat_map(|s| &s.hints)
            .filter(|h| h.target == down_id)
            .map(|h| h.count)
            .sum()
    };
    let statuses = |cluster: &Cluster| {
        let clients: Vec<_> = (0..3).map(|i| cluster.client(i)).collect();
        async move {
            let mut out = Vec::new();
            for c in clients {
                out.push(c.status().await.unwrap());
            }
            out
        }
    };

    let fault = recorder.fault_started("kill", format!("kill {down_id}"));
    cluster.kill(3);
    // Wait until the others see it down (a write then goes to a stand-in with a hint).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut keys = Vec::new();
    let mut seq = 0;
    while hints_for_down(&statuses(&cluster).await) == 0 {
        assert!(Instant::now() < deadline, "no hint for {down_id} was kept");
        let key = format!("early-{seq}");
        recorded_put(&recorder, "w", &via[seq % 3], &key, format!("early-v{seq}"), None).await;
        keys.push(key);
        seq += 1;
    }
    // Within the window: more writes, more hints.
    for i in 0..30 {
        let key = format!("in-window-{i}");
        recorded_put(&recorder, "w", &via[i % 3], &key, format!("in-window-v{i}"), None).await;
        keys.push(key);
    }
    let held = hints_for_down(&statuses(&cluster).await);
    println!("{held} hints held for {down_id} within the window");
    // Past the window: writes still succeed (W = 2), but no new hint is kept for it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let before = hints_for_down(&statuses(&cluster).await);
    let mut late = Vec::new();
    for i in 0..60 {
        let key = format!("late-{i}");
        let op = recorded_put(&recorder, "w", &via[i % 3], &key, format!("late-v{i}"), None).await;
        let outcome = recorder.history().ops[op].outcome.clone();
        assert_eq!(outcome, Outcome::Acked, "late write {i}");
        late.push(key.clone());
        keys.push(key);
    }
    let after = hints_for_down(&statuses(&cluster).await);
    println!("{before} hints for {down_id} when the window closed, {after} after 60 more writes");
    assert!(after <= before, "hints for {down_id} grew past the window: {before} -> {after}");

    // It returns: hints delivered for what was written in the window, anti-entropy (no reads)
    // restores the rest.
    cluster.restart(3).await.unwrap();
    recorder.fault_ended(fault);
    let placement = cluster.placement().await.unwrap();
    let mine: Vec<&String> =
        late.iter().filter(|k| placement.replicas(k.as_bytes()).contains(&3)).collect();
    assert!(!mine.is_empty(), "no late key is replicated on {down_id}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut missing = 0;
        for key in &mine {
            if cluster.local_values(3, key.as_bytes()).await.unwrap().is_empty() {
                missing += 1;
            }
        }
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} keys still missing on {down_id}",
            mine.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("anti-entropy restored {} keys written past the window on {down_id}", mine.len());
    let final_state = converge(&cluster, &keys, &recorder).await.unwrap();
    let history = recorder.history();
    let report = check(&history, &final_state);
    println!("{report}");
    assert!(report.is_ok(), "{report}");
}
