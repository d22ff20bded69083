//! The pod network: a Linux bridge on the host and one network namespace per pod, joined to it
//! by a veth pair, so every pod has its own IP address and its own port space (each node listens
//! on 0.0.0.0:7070, as in a real cluster) and the host (the operator, dynamoctl, the test)
//! reaches every pod directly, like a flat CNI network.
//!
//! Each namespace also gets `/etc/netns/<ns>/resolv.conf` pointing at the cluster DNS server
//! (CoreDNS on the bridge address), which `ip netns exec` mounts over `/etc/resolv.conf`: the
//! node resolves its seeds' headless Service names the way it does in a real pod.
//!
//! Needs root (CI runs as root). Everything is named with [`PREFIX`] and removed by
//! [`Network::drop`]; [`Network::create`] first removes leftovers of a run that was killed.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use anyhow::Context;

use crate::process::run;

/// Prefix of every bridge, veth and namespace the harness creates.
pub const PREFIX: &str = "dyne2e";

/// The bridge and the pods' address pool.
pub struct Network {
    /// The bridge device.
    pub bridge: String,
    /// The host's address on the bridge: the cluster DNS server and the nodes' InternalIP.
    pub host_ip: Ipv4Addr,
    /// Prefix length of the pod network.
    pub prefix_len: u8,
    /// Cluster DNS search path for pods of a namespace is derived from this domain.
    pub cluster_domain: String,
    next: Mutex<u32>,
}

/// One pod's network namespace.
pub struct PodNetwork {
    /// Namespace name (`ip netns exec <this> ...`).
    pub netns: String,
    /// The pod IP.
    pub ip: Ipv4Addr,
    host_veth: String,
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

impl Network {
    /// Creates the bridge with `host_ip`/`prefix_len` (e.g. 10.244.0.1/16); pods get addresses
    /// counting up from host_ip + 255.
    pub fn create(
        host_ip: Ipv4Addr,
        prefix_len: u8,
        cluster_domain: &str,
    ) -> anyhow::Result<Network> {
        cleanup_leftovers();
        let bridge = format!("{PREFIX}br0");
        ip(&["link", "add", &bridge, "type", "bridge"])
            .context("creating the pod network bridge (the e2e suite needs root and iproute2)")?;
        ip(&["addr", "add", &format!("{host_ip}/{prefix_len}"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(Network {
            bridge,
            host_ip,
            prefix_len,
            cluster_domain: cluster_domain.into(),
            next: Mutex::new(u32::from(host_ip) + 255),
        })
    }

    /// A new namespace with the next free address, resolving names through `dns` with the
    /// search path of pods in `namespace`.
    pub fn add_pod(&self, namespace: &str) -> anyhow::Result<PodNetwork> {
        let addr = {
            let mut next = self.next.lock().expect("lock");
            *next += 1;
            Ipv4Addr::from(*next)
        };
        let n = u32::from(addr) - u32::from(self.host_ip);
        let netns = format!("{PREFIX}-{n}");
        let host_veth = format!("{PREFIX}v{n}");
        let peer = format!("{PREFIX}p{n}");
        ip(&["netns", "add", &netns])?;
        let pod = PodNetwork { netns: netns.clone(), ip: addr, host_veth: host_veth.clone() };
        ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &netns])?;
        ip(&["link", "set", &host_veth, "master", &self.bridge])?;
        ip(&["link", "set", &host_veth, "up"])?;
        ip(&["-n", &netns, "link", "set", &peer, "name", "eth0"])?;
        ip(&["-n", &netns, "addr", "add", &format!("{addr}/{}", self.prefix_len), "dev", "eth0"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &netns, "route", "add", "default", "via", &self.host_ip.to_string()])?;
        let etc = etc_dir(&netns);
        std::fs::create_dir_all(&etc)?;
        let domain = &self.cluster_domain;
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {}\nsearch {namespace}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n",
                self.host_ip
            ),
        )?;
        Ok(pod)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl PodNetwork {
    /// `ip netns exec <ns>`: prefix of every command run in the pod.
    pub fn exec_prefix(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]);
        c
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        kill_netns_processes(&self.netns);
        let _ = ip(&["link", "del", &self.host_veth]);
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(etc_dir(&self.netns));
    }
}

fn etc_dir(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

fn kill_netns_processes(netns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", netns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill(2) on a process inside a namespace this harness created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes namespaces, links and resolv.conf directories left by a run that was killed.
fn cleanup_leftovers() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(PREFIX) {
                kill_netns_processes(ns);
                let _ = ip(&["netns", "del", ns]);
                let _ = std::fs::remove_dir_all(etc_dir(ns));
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for link in links.lines().filter_map(|l| l.split(':').nth(1)) {
            let name = link.trim().split('@').next().unwrap_or_default();
            if name.starts_with(PREFIX) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}
