//! Pod and Service addresses.
//!
//! Programs in pods need their own address so that several of them can
//! listen on the same port and so that Services and `status.podIP` mean
//! something. Two modes:
//!
//! - [`NetworkMode::Loopback`] (the library default): every pod gets a
//!   distinct address in 127.0.0.0/8, exported as `POD_IP` and
//!   `status.podIP`. Programs must bind that address (binding 0.0.0.0 in
//!   two pods on the same port collides, as all pods share the host's
//!   network). ClusterIPs come from the same /8. Needs no privileges.
//! - [`NetworkMode::Namespace`]: every pod gets its own network namespace,
//!   joined by a veth pair to a kube-sim bridge that owns a private /16
//!   (`10.<n>.0.0/16`); pods may bind 0.0.0.0. ClusterIPs are extra
//!   addresses on the bridge, and the API server is forwarded from the
//!   bridge address so pods reach it. Needs root and the `ip` tool; the
//!   bridge, veths and namespaces are removed on shutdown.
//!
//! Each kube-sim instance in a process takes its own block (`<n>`), so
//! parallel tests never share addresses.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// How pods get their addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A distinct 127.0.0.0/8 address per pod in the host's network.
    #[default]
    Loopback,
    /// A network namespace per pod on a kube-sim bridge (root only).
    Namespace,
}

impl std::str::FromStr for NetworkMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "loopback" => Ok(NetworkMode::Loopback),
            "namespace" | "netns" => Ok(NetworkMode::Namespace),
            _ => Err(Error::BadRequest(format!(
                "network mode \"{s}\" is not one of loopback, namespace"
            ))),
        }
    }
}

/// The `ip` tool, wherever it is installed.
fn ip_tool() -> PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ip"))
}

/// Run `ip ARGS`, failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new(ip_tool()).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Blocks handed out in this process, so instances never overlap.
static NEXT_BLOCK: AtomicU32 = AtomicU32::new(0);

fn next_block() -> u8 {
    // Start from the pid so two processes probably differ too.
    let start = std::process::id() % 200;
    let n = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
    (20 + (start + n) % 200) as u8
}

/// Addresses in use, and where the search for the next one starts.
#[derive(Debug, Default)]
struct Addresses {
    used: HashSet<Ipv4Addr>,
    next: u32,
}

/// A pod's network namespace (namespace mode).
#[derive(Debug)]
pub struct PodNetns {
    /// Name under `/run/netns`.
    pub name: String,
    /// The host end of the pod's veth pair, on the bridge.
    pub host_if: String,
}

impl PodNetns {
    /// Path of the namespace handle, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

/// Address allocation and, in namespace mode, the bridge.
#[derive(Debug)]
pub struct Network {
    mode: NetworkMode,
    block: u8,
    bridge: Option<String>,
    pods: Mutex<Addresses>,
    services: Mutex<Addresses>,
    netns_seq: AtomicU32,
    torn_down: AtomicBool,
}

impl Network {
    /// Set up the network for `mode` (creates the bridge in namespace mode).
    pub fn new(mode: NetworkMode) -> Result<Network> {
        let mut block = next_block();
        let bridge = match mode {
            NetworkMode::Loopback => None,
            NetworkMode::Namespace => {
                // Skip blocks whose bridge is left over from another run.
                for _ in 0..200 {
                    if !PathBuf::from(format!("/sys/class/net/ksim{block}")).exists() {
                        break;
                    }
                    block = next_block();
                }
                let name = format!("ksim{block}");
                ip(&["link", "add", &name, "type", "bridge"])?;
                // A bridge without an address of its own takes the lowest of
                // its ports' and changes it as pods come and go; pods would
                // then keep sending to the old one (dropped) until their
                // ARP entries expire, up to a minute. A fixed, locally
                // administered address never changes.
                let mac = format!("02:6b:73:69:6d:{block:02x}");
                let setup = ip(&["link", "set", &name, "address", &mac])
                    .and_then(|_| ip(&["addr", "add", &format!("10.{block}.0.1/16"), "dev", &name]))
                    .and_then(|_| ip(&["link", "set", &name, "up"]));
                if let Err(e) = setup {
                    let _ = ip(&["link", "del", &name]);
                    return Err(e);
                }
                Some(name)
            }
        };
        Ok(Network {
            mode,
            block,
            bridge,
            pods: Mutex::new(Addresses::default()),
            services: Mutex::new(Addresses::default()),
            netns_seq: AtomicU32::new(0),
            torn_down: AtomicBool::new(false),
        })
    }

    /// The bridge's interface name (namespace mode only).
    pub fn bridge(&self) -> Option<&str> {
        self.bridge.as_deref()
    }

    /// The mode in use.
    pub fn mode(&self) -> NetworkMode {
        self.mode
    }

    /// The host's address as seen from pods: the bridge gateway in
    /// namespace mode, else `None` (pods share the host's loopback).
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.bridge
            .as_ref()
            .map(|_| Ipv4Addr::new(10, self.block, 0, 1))
    }

    fn first_octet(&self) -> u8 {
        match self.mode {
            NetworkMode::Loopback => 127,
            NetworkMode::Namespace => 10,
        }
    }

    /// The next free address after the last one handed out, wrapping
    /// around, as the host-local IPAM plugin does: an address just
    /// released is reused last, so peers' ARP caches and connections that
    /// still point at a deleted pod never reach its successor.
    fn take(&self, set: &Mutex<Addresses>, high: bool) -> Result<Ipv4Addr> {
        let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
        // Addresses 10.<block>.x.y with y in 1..=254: pods take x in
        // 0..=127 (10.<block>.0.1 is the gateway), ClusterIPs 128..=254.
        let (first_x, count) = if high { (128u32, 127u32) } else { (0, 128) };
        let at = |i: u32| {
            Ipv4Addr::new(
                self.first_octet(),
                self.block,
                (first_x + i / 254) as u8,
                (1 + i % 254) as u8,
            )
        };
        let size = count * 254;
        let start = set.next % size;
        for i in (0..size).map(|i| (start + i) % size) {
            let a = at(i);
            if a == Ipv4Addr::new(self.first_octet(), self.block, 0, 1) {
                continue;
            }
            if set.used.insert(a) {
                set.next = i + 1;
                return Ok(a);
            }
        }
        Err(Error::Internal("address range exhausted".into()))
    }

    /// A fresh pod address.
    pub fn allocate_pod_ip(&self) -> Result<Ipv4Addr> {
        self.take(&self.pods, false)
    }

    /// Return a pod address.
    pub fn release_pod_ip(&self, a: Ipv4Addr) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .remove(&a);
    }

    /// A fresh ClusterIP, made local (on the bridge) in namespace mode.
    pub fn allocate_service_ip(&self) -> Result<Ipv4Addr> {
        let a = self.take(&self.services, true)?;
        self.claim_service_ip(a)?;
        Ok(a)
    }

    /// Make an existing ClusterIP usable (e.g. one restored from a state dir).
    pub fn claim_service_ip(&self, a: Ipv4Addr) -> Result<()> {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .insert(a);
        if let Some(bridge) = &self.bridge {
            let _ = ip(&["addr", "add", &format!("{a}/32"), "dev", bridge]);
        }
        Ok(())
    }

    /// Whether a ClusterIP can be served here.
    pub fn serves_service_ip(&self, a: IpAddr) -> bool {
        match (self.mode, a) {
            (NetworkMode::Loopback, IpAddr::V4(v4)) => v4.is_loopback(),
            (NetworkMode::Namespace, IpAddr::V4(v4)) => {
                v4.octets()[0] == 10 && v4.octets()[1] == self.block
            }
            _ => false,
        }
    }

    /// Create a pod's namespace with `ip` on eth0 (namespace mode only).
    pub fn create_netns(&self, ip_addr: Ipv4Addr) -> Result<Option<PodNetns>> {
        let Some(bridge) = &self.bridge else {
            return Ok(None);
        };
        let n = self.netns_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("ksim{}-{n}", self.block);
        let host_if = format!("ks{}v{n}", self.block);
        ip(&["netns", "add", &name])?;
        let ns = PodNetns {
            name,
            host_if: host_if.clone(),
        };
        let gw = Ipv4Addr::new(10, self.block, 0, 1).to_string();
        let cidr = format!("{ip_addr}/16");
        let steps: [Vec<&str>; 7] = [
            vec![
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ],
            vec!["link", "set", &host_if, "master", bridge, "up"],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
            vec!["-n", &ns.name, "addr", "add", &cidr, "dev", "eth0"],
            vec!["-n", &ns.name, "link", "set", "eth0", "up"],
            vec!["-n", &ns.name, "route", "add", "default", "via", &gw],
            vec!["link", "set", &host_if, "up"],
        ];
        for s in steps.iter() {
            if let Err(e) = ip(s) {
                self.delete_netns(&ns);
                return Err(e);
            }
        }
        Ok(Some(ns))
    }

    /// Remove a pod's veth pair and namespace.
    ///
    /// The pair goes first and explicitly: the namespace itself lives on
    /// while anything still refers to it (a closed TCP connection still
    /// retransmitting to a peer that is gone, say), and with it the pod's
    /// address on the bridge, answering ARP beside the pod that gets it next.
    pub fn delete_netns(&self, ns: &PodNetns) {
        if std::path::Path::new("/sys/class/net")
            .join(&ns.host_if)
            .exists()
        {
            if let Err(e) = ip(&["link", "del", &ns.host_if]) {
                tracing::warn!(link = %ns.host_if, error = %e, "removing pod veth pair");
            }
        }
        if let Err(e) = ip(&["netns", "del", &ns.name]) {
            tracing::warn!(netns = %ns.name, error = %e, "removing pod network namespace");
        }
    }
}

impl Network {
    /// Remove the bridge (and the ClusterIPs on it); idempotent.
    pub fn teardown(&self) {
        if let Some(bridge) = &self.bridge {
            if !self.torn_down.swap(true, Ordering::SeqCst) {
                if let Err(e) = ip(&["link", "del", bridge]) {
                    tracing::warn!(%bridge, error = %e, "removing bridge");
                }
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_distinct_and_local() {
        let a = Network::new(NetworkMode::Loopback).unwrap();
        let b = Network::new(NetworkMode::Loopback).unwrap();
        let p1 = a.allocate_pod_ip().unwrap();
        let p2 = a.allocate_pod_ip().unwrap();
        let q1 = b.allocate_pod_ip().unwrap();
        let s1 = a.allocate_service_ip().unwrap();
        assert_ne!(p1, p2);
        assert_ne!(p1, q1);
        assert_ne!(s1, p1);
        assert!(p1.is_loopback() && s1.is_loopback());
        a.release_pod_ip(p1);
        // A released address comes back only after the rest of the range.
        let p3 = a.allocate_pod_ip().unwrap();
        assert_ne!(p3, p1);
        assert!(a.serves_service_ip(IpAddr::V4(s1)));
        assert!("namespace".parse::<NetworkMode>().is_ok());
        assert!("bogus".parse::<NetworkMode>().is_err());
    }
}
