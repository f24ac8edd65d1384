//! The topology in Linux network namespaces, and its cleanup.
//!
//! Layout (every namespace is named `<prefix>-<role>-<name>`, where the prefix `scnXXXXXX` is
//! unique per run, so `securecomm-netsim cleanup` can find leftovers of a crashed run):
//!
//! ```text
//!   [p1] [p2] [r-relay1] ...        public hosts, 198.18.0.0/16 (probes .0.2/.0.3, relays .0.10+)
//!     \    |    /
//!      [inet] bridge br0            the "internet": one L2 segment, no routing needed
//!     /          \
//!  [s-home] wan 198.18.1.1         site router: NAT rules from `nat.rs`, LAN bridge 10.1.0.1/24
//!     |  lan
//!  [h-alice] 10.1.0.10              site hosts, default route via the router
//!
//!  CGNAT site: [c-site] carrier router (wan 198.18.1.N, inner 100.64.N.1/24) in front of
//!              [s-site] (wan 100.64.N.2/24): two NAT layers.
//! ```
//!
//! Veth pairs are created directly between namespaces (`ip -n A link add ... peer ... netns B`),
//! so no interface ever lives in the root namespace; deleting the namespaces removes everything.
//! Every namespace is registered in a process-wide registry before it is created; the registry
//! is emptied by [`Topology`]'s `Drop` and by the SIGINT/SIGTERM handler ([`install_signal_handler`]),
//! which first kills every process still inside those namespaces.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{NetsimError, Result};
use crate::nat;
use crate::scenario::{Impairment, NatKind, Scenario};
use crate::sys;

/// Namespaces created by this process and not yet removed. The lock is held while a namespace
/// is created, so the signal handler never misses one being created.
static REGISTRY: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Set once a signal arrived: no new namespace may be created.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// The name prefix shared by every netsim namespace.
pub const NS_PREFIX: &str = "scn";

/// First probe host's address.
pub const PROBE1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Second probe host's address.
pub const PROBE2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// A fresh per-run prefix: `scn` and six hex digits from the clock and pid.
pub fn new_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(13))
        .unwrap_or(0);
    let mix = nanos ^ std::process::id().rotate_left(20);
    format!("{NS_PREFIX}{:06x}", mix & 0xff_ffff)
}

/// Whether `name` looks like a netsim namespace (`scn` + six hex digits + `-`).
pub fn is_netsim_namespace(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(NS_PREFIX) else {
        return false;
    };
    rest.len() > 7
        && rest.as_bytes().get(6) == Some(&b'-')
        && rest
            .get(..6)
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Kills every process inside `ns`, then deletes it. Errors are reported, not fatal.
fn remove_namespace(ns: &str) -> Result<()> {
    if let Ok(pids) = sys::run(std::process::Command::new("ip").args(["netns", "pids", ns])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            sys::kill(pid, "KILL");
        }
    }
    sys::ip(&["netns", "del", ns]).map(|_| ())
}

/// Removes every namespace in the registry (idempotent).
pub fn cleanup_registered() {
    let names: Vec<String> = match REGISTRY.lock() {
        Ok(mut r) => std::mem::take(&mut *r),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for ns in names.iter().rev() {
        if let Err(e) = remove_namespace(ns) {
            eprintln!("netsim: cleanup of {ns}: {e}");
        }
    }
}

/// Removes every netsim namespace on the machine (leftovers of crashed runs) with the processes
/// inside; returns their names.
pub fn cleanup_all() -> Result<Vec<String>> {
    let list = sys::ip(&["netns", "list"])?;
    let mut removed = Vec::new();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if is_netsim_namespace(name) {
            remove_namespace(name)?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

/// Whether a SIGINT/SIGTERM arrived: the handler thread is cleaning up and will exit the process
/// with status 130, so the main thread must not exit first with its own status.
pub fn interrupted() -> bool {
    SHUTTING_DOWN.load(Ordering::SeqCst)
}

/// Installs a SIGINT/SIGTERM handler (on its own thread) that removes every registered
/// namespace and its processes, then exits with status 130. Call once, early.
pub fn install_signal_handler() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetsimError::io("building the signal runtime", e))?;
    let (mut term, mut int) = rt
        .block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(|e| NetsimError::io("installing signal handlers", e))?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        });
        eprintln!("netsim: interrupted, cleaning up");
        SHUTTING_DOWN.store(true, Ordering::SeqCst);
        cleanup_registered();
        std::process::exit(130);
    });
    Ok(())
}

/// A public host on the internet segment.
#[derive(Debug, Clone)]
pub struct PublicHost {
    /// Scenario name.
    pub name: String,
    /// Namespace.
    pub ns: String,
    /// Address.
    pub addr: Ipv4Addr,
}

/// A site host.
#[derive(Debug, Clone)]
pub struct SiteHost {
    /// Scenario name.
    pub name: String,
    /// Its site's name.
    pub site: String,
    /// Namespace.
    pub ns: String,
    /// LAN address.
    pub addr: Ipv4Addr,
}

/// A site router (and its carrier router for CGNAT).
#[derive(Debug, Clone)]
pub struct Router {
    /// Site name.
    pub site: String,
    /// The behaviour the scenario claims.
    pub label: NatKind,
    /// The behaviour actually configured (differs only in tests of the self-test).
    pub applied: NatKind,
    /// Router namespace.
    pub ns: String,
    /// Carrier namespace (CGNAT only).
    pub carrier_ns: Option<String>,
    /// The site's public address (the carrier's for CGNAT).
    pub public: Ipv4Addr,
    /// The namespace whose `wan` faces the internet.
    pub edge_ns: String,
    /// The impaired uplink's namespace (interfaces `site` towards the edge, `net` towards the
    /// internet), if the site's uplink is impaired.
    pub link_ns: Option<String>,
    /// The uplink's impairment.
    pub uplink: Impairment,
}

/// A built topology; dropping it removes every namespace (and process) it created.
#[derive(Debug)]
pub struct Topology {
    /// Run prefix.
    pub prefix: String,
    /// The internet namespace.
    pub inet: String,
    /// Probe hosts.
    pub probes: [PublicHost; 2],
    /// Relays.
    pub relays: Vec<PublicHost>,
    /// Routers, one per site, in scenario order.
    pub routers: Vec<Router>,
    /// Site hosts.
    pub hosts: Vec<SiteHost>,
    /// Namespaces owned by this topology.
    owned: Vec<String>,
}

impl Topology {
    /// Builds the scenario's topology. `overrides` replaces the NAT actually configured on a
    /// site (by name) while keeping its label: used to prove the self-test catches it.
    pub fn build(
        scenario: &Scenario,
        prefix: &str,
        overrides: &[(String, NatKind)],
    ) -> Result<Self> {
        let mut t = Self {
            prefix: prefix.to_owned(),
            inet: format!("{prefix}-inet"),
            probes: [
                PublicHost {
                    name: "probe1".into(),
                    ns: format!("{prefix}-p1"),
                    addr: PROBE1,
                },
                PublicHost {
                    name: "probe2".into(),
                    ns: format!("{prefix}-p2"),
                    addr: PROBE2,
                },
            ],
            relays: Vec::new(),
            routers: Vec::new(),
            hosts: Vec::new(),
            owned: Vec::new(),
        };
        // On any error, `t` is dropped and removes what exists so far.
        t.add_ns(&t.inet.clone())?;
        sys::ip_in(&t.inet, &["link", "add", "br0", "type", "bridge"])?;
        sys::ip_in(&t.inet, &["link", "set", "br0", "up"])?;
        let mut port = 0usize;
        for p in t.probes.clone() {
            t.add_ns(&p.ns)?;
            t.attach_public(&p.ns, p.addr, &mut port)?;
        }
        for (i, r) in scenario.relays.iter().enumerate() {
            let host = PublicHost {
                name: r.clone(),
                ns: format!("{prefix}-r-{r}"),
                addr: Ipv4Addr::new(198, 18, 0, 10u8.saturating_add(i as u8)),
            };
            t.add_ns(&host.ns)?;
            t.attach_public(&host.ns, host.addr, &mut port)?;
            t.relays.push(host);
        }
        for (i, site) in scenario.sites.iter().enumerate() {
            let n = (i + 1) as u8;
            let applied = overrides
                .iter()
                .find(|(s, _)| *s == site.name)
                .map_or(site.nat, |(_, k)| *k);
            let ns = format!("{prefix}-s-{}", site.name);
            let public = Ipv4Addr::new(198, 18, 1, n);
            t.add_ns(&ns)?;
            forwarding(&ns)?;
            let impaired = site.uplink != Impairment::default();
            let link_ns = impaired.then(|| format!("{prefix}-l-{}", site.name));
            let (edge_ns, carrier_ns) = if applied == NatKind::Cgnat {
                let c = format!("{prefix}-c-{}", site.name);
                t.add_ns(&c)?;
                forwarding(&c)?;
                t.attach_edge(&c, public, &mut port, link_ns.as_deref())?;
                let inner = Ipv4Addr::new(100, 64, n, 1);
                let outer = Ipv4Addr::new(100, 64, n, 2);
                veth(&c, "cust", &ns, "wan")?;
                addr_up(&c, "cust", inner, 24)?;
                addr_up(&ns, "wan", outer, 24)?;
                sys::ip_in(&ns, &["route", "add", "default", "via", &inner.to_string()])?;
                sys::nft_load(&c, &nat::ruleset(NatKind::PortRestricted, public, "wan"))?;
                sys::nft_load(&ns, &nat::ruleset(NatKind::PortRestricted, outer, "wan"))?;
                (c.clone(), Some(c))
            } else {
                t.attach_edge(&ns, public, &mut port, link_ns.as_deref())?;
                sys::nft_load(&ns, &nat::ruleset(applied, public, "wan"))?;
                (ns.clone(), None)
            };
            sys::ip_in(&ns, &["link", "add", "lan", "type", "bridge"])?;
            addr_up(&ns, "lan", Ipv4Addr::new(10, n, 0, 1), 24)?;
            if applied == NatKind::None {
                // Public hosts need a route back to the un-NATed LAN.
                let net = format!("10.{n}.0.0/24");
                let mut publics: Vec<String> = t.probes.iter().map(|p| p.ns.clone()).collect();
                publics.extend(t.relays.iter().map(|r| r.ns.clone()));
                for p in publics {
                    sys::ip_in(&p, &["route", "add", &net, "via", &public.to_string()])?;
                }
            }
            for (j, h) in site.hosts.iter().enumerate() {
                let hns = format!("{prefix}-h-{h}");
                let addr = Ipv4Addr::new(10, n, 0, 10u8.saturating_add(j as u8));
                t.add_ns(&hns)?;
                let port_name = format!("h{j}");
                veth(&ns, &port_name, &hns, "eth0")?;
                sys::ip_in(&ns, &["link", "set", &port_name, "master", "lan", "up"])?;
                addr_up(&hns, "eth0", addr, 24)?;
                sys::ip_in(
                    &hns,
                    &["route", "add", "default", "via", &format!("10.{n}.0.1")],
                )?;
                t.hosts.push(SiteHost {
                    name: h.clone(),
                    site: site.name.clone(),
                    ns: hns,
                    addr,
                });
            }
            t.routers.push(Router {
                site: site.name.clone(),
                label: site.nat,
                applied,
                ns,
                carrier_ns,
                public,
                edge_ns,
                link_ns,
                uplink: site.uplink.clone(),
            });
        }
        // Every other site's edge router needs the route back to an un-NATed LAN too, or its
        // hosts could reach public hosts only through a relay (the NAT matrix showed every pair
        // with an open site relayed).
        let open: Vec<(String, Ipv4Addr, String)> = t
            .routers
            .iter()
            .enumerate()
            .filter(|(_, r)| r.applied == NatKind::None)
            .map(|(i, r)| (format!("10.{}.0.0/24", i + 1), r.public, r.edge_ns.clone()))
            .collect();
        for (net, via, own) in &open {
            for r in &t.routers {
                if r.edge_ns != *own {
                    sys::ip_in(&r.edge_ns, &["route", "add", net, "via", &via.to_string()])?;
                }
            }
        }
        Ok(t)
    }

    /// Registers and creates a namespace with loopback up.
    fn add_ns(&mut self, ns: &str) -> Result<()> {
        {
            let mut reg = match REGISTRY.lock() {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            if SHUTTING_DOWN.load(Ordering::SeqCst) {
                return Err(NetsimError::Interrupted);
            }
            reg.push(ns.to_owned());
            self.owned.push(ns.to_owned());
            sys::ip(&["netns", "add", ns])?;
        }
        sys::ip_in(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Connects `ns` to the internet bridge as `wan` with `addr`/16.
    fn attach_public(&self, ns: &str, addr: Ipv4Addr, port: &mut usize) -> Result<()> {
        let name = format!("v{port}");
        *port += 1;
        veth(&self.inet, &name, ns, "wan")?;
        sys::ip_in(&self.inet, &["link", "set", &name, "master", "br0", "up"])?;
        addr_up(ns, "wan", addr, 16)
    }

    /// Connects a site's edge router to the internet bridge, through an impairment namespace
    /// when `link` is given (bridged in the kernel until [`Self::unbridge`]).
    fn attach_edge(
        &mut self,
        ns: &str,
        addr: Ipv4Addr,
        port: &mut usize,
        link: Option<&str>,
    ) -> Result<()> {
        let Some(link) = link else {
            return self.attach_public(ns, addr, port);
        };
        let name = format!("v{port}");
        *port += 1;
        self.add_ns(link)?;
        veth(&self.inet, &name, link, "net")?;
        sys::ip_in(&self.inet, &["link", "set", &name, "master", "br0", "up"])?;
        veth(link, "site", ns, "wan")?;
        sys::ip_in(link, &["link", "set", "net", "up"])?;
        sys::ip_in(link, &["link", "add", "pass", "type", "bridge"])?;
        sys::ip_in(link, &["link", "set", "site", "master", "pass"])?;
        sys::ip_in(link, &["link", "set", "net", "master", "pass"])?;
        sys::ip_in(link, &["link", "set", "pass", "up"])?;
        // A veth leaves checksums to the receiver (offload); frames the forwarder copies out
        // of a packet socket would then arrive with checksums nobody computes. Both senders
        // into the link compute them instead.
        no_checksum_offload(ns, "wan")?;
        no_checksum_offload(&self.inet, &name)?;
        addr_up(ns, "wan", addr, 16)
    }

    /// Removes the kernel bridge of an impaired link, so only the user-space forwarder
    /// (started next) carries its frames.
    pub fn unbridge(&self, link_ns: &str) -> Result<()> {
        sys::ip_in(link_ns, &["link", "del", "pass"]).map(|_| ())
    }

    /// Forgets every NAT mapping of `site`'s routers (both layers of a carrier-grade NAT): the
    /// conntrack table and the full-cone / address-restricted sets, as a router reboot would.
    /// Flows open through it must start again, with new mappings.
    pub fn flush_nat(&self, site: &str) -> Result<()> {
        let r = self.router(site).ok_or_else(|| unknown_site(site))?;
        for ns in std::iter::once(&r.ns).chain(r.carrier_ns.as_ref()) {
            flush_conntrack(ns)?;
            if matches!(r.applied, NatKind::FullCone | NatKind::AddressRestricted) && *ns == r.ns {
                sys::nft(ns, &["flush", "map", "ip", "netsim", "fc"])?;
                sys::nft(ns, &["flush", "set", "ip", "netsim", "seen"])?;
            }
        }
        Ok(())
    }

    /// Gives `site` a new public address (198.18.2.N, then back to 198.18.1.N on the next
    /// change), as an ISP's new lease would: the NAT rules are rebuilt for it and every mapping
    /// is forgotten, so every open flow breaks. Sites without NAT are refused (their hosts'
    /// addresses are routed by other sites).
    pub fn change_address(&mut self, site: &str) -> Result<Ipv4Addr> {
        let i = self
            .routers
            .iter()
            .position(|r| r.site == site)
            .ok_or_else(|| unknown_site(site))?;
        let r = &self.routers[i];
        if r.applied == NatKind::None {
            return Err(NetsimError::Unexpected {
                what: format!("change-address of site {site:?}"),
                expected: "a site behind NAT".into(),
                got: "a site without NAT".into(),
            });
        }
        let old = r.public;
        let o = old.octets();
        let new = Ipv4Addr::new(o[0], o[1], if o[2] == 1 { 2 } else { 1 }, o[3]);
        // The edge's rules: the site's own for a plain router, the carrier's for CGNAT.
        let kind = if r.carrier_ns.is_some() {
            NatKind::PortRestricted
        } else {
            r.applied
        };
        let edge = r.edge_ns.clone();
        // Without promotion, deleting the primary address takes the new (secondary) one and
        // every route through the subnet with it.
        sysctl(&edge, "net.ipv4.conf.wan.promote_secondaries", "1")?;
        sys::ip_in(&edge, &["addr", "add", &format!("{new}/16"), "dev", "wan"])?;
        sys::ip_in(&edge, &["addr", "del", &format!("{old}/16"), "dev", "wan"])?;
        sys::nft(&edge, &["delete", "table", "ip", "netsim"])?;
        sys::nft_load(&edge, &nat::ruleset(kind, new, "wan"))?;
        flush_conntrack(&edge)?;
        self.routers[i].public = new;
        Ok(new)
    }

    /// The router of `site`.
    pub fn router(&self, site: &str) -> Option<&Router> {
        self.routers.iter().find(|r| r.site == site)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&SiteHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Namespaces owned by this topology.
    pub fn namespaces(&self) -> &[String] {
        &self.owned
    }
}

fn unknown_site(site: &str) -> NetsimError {
    NetsimError::Unexpected {
        what: "site".into(),
        expected: "a site of the scenario".into(),
        got: site.to_owned(),
    }
}

/// Empties namespace `ns`'s connection-tracking table (`conntrack -F`).
fn flush_conntrack(ns: &str) -> Result<()> {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "conntrack", "-F"])
        .output()
        .map_err(|e| NetsimError::io("running conntrack", e))?;
    // conntrack prints its summary on stderr and exits 0; a missing tool fails the exec.
    if o.status.success() {
        Ok(())
    } else {
        Err(NetsimError::Environment(format!(
            "`conntrack -F` in {ns} failed (is Debian's conntrack package installed?): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let mine = std::mem::take(&mut self.owned);
        for ns in mine.iter().rev() {
            if let Err(e) = remove_namespace(ns) {
                eprintln!("netsim: cleanup of {ns}: {e}");
            }
        }
        let mut reg = match REGISTRY.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        reg.retain(|n| !mine.contains(n));
    }
}

fn veth(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<()> {
    sys::ip_in(
        ns_a,
        &[
            "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b,
        ],
    )?;
    sys::ip_in(ns_a, &["link", "set", name_a, "up"]).map(|_| ())
}

fn addr_up(ns: &str, dev: &str, addr: Ipv4Addr, len: u8) -> Result<()> {
    sys::ip_in(ns, &["addr", "add", &format!("{addr}/{len}"), "dev", dev])?;
    sys::ip_in(ns, &["link", "set", dev, "up"]).map(|_| ())
}

fn forwarding(ns: &str) -> Result<()> {
    sysctl(ns, "net.ipv4.ip_forward", "1")
}

/// Turns transmit checksum offload off on `dev` in `ns` (`ethtool -K dev tx off`).
fn no_checksum_offload(ns: &str, dev: &str) -> Result<()> {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
        .output()
        .map_err(|e| NetsimError::io("running ethtool", e))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(NetsimError::Environment(format!(
            "`ethtool -K {dev} tx off` in {ns} failed (is Debian's ethtool package installed?): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )))
    }
}

/// Sets a sysctl inside namespace `ns`.
fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    sys::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={value}"),
    ]))
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_recognised() {
        let p = new_prefix();
        assert!(is_netsim_namespace(&format!("{p}-inet")), "{p}");
        assert!(!is_netsim_namespace("scnzzzzzz-inet"));
        assert!(!is_netsim_namespace("scn123456"));
        assert!(!is_netsim_namespace("other-inet"));
    }
}
