//! NAT behaviours as nftables rulesets (RFC 4787 terms).
//!
//! Linux conntrack NAT (`snat`) preserves the source port when it can and reuses a mapping for
//! every destination: endpoint-independent mapping. Without further rules, inbound packets are
//! let in only as replies of a tracked flow: address-and-port-dependent filtering. So:
//!
//! - port-restricted cone: plain `snat`.
//! - symmetric: `snat ... random`: a fresh random port per flow (address-and-port-dependent
//!   mapping).
//! - address-restricted / full cone: `snat` plus two dynamic sets filled from the packet path
//!   after NAT (postrouting, priority 300, so the translated port is visible): `fc` maps each
//!   public port to the internal host, `seen` records (public port, remote address). A new
//!   inbound flow to a public port is DNATed to its host if the port is in `fc` (full cone) or
//!   the pair (port, source address) is in `seen` (address-restricted). DNAT keeps the port, so
//!   this relies on snat's port preservation; the self-test checks it.
//! - UDP-blocked: port-restricted NAT for TCP, every UDP packet dropped in forward.
//! - TCP-443-only: only outbound TCP to port 443 (and its replies) is forwarded.
//! - CGNAT: port-restricted cone twice (the site router and a carrier router in front).
//!
//! Entries of the dynamic sets expire after 120 s without outbound traffic, like a mapping.
//!
//! Every router drops new inbound flows addressed to itself on its WAN side (in `input`, as a
//! home router's firewall does). Without that, an unsolicited packet to the public port (the
//! peer's first hole-punching packet arriving before our own went out) was accepted for local
//! delivery and left a conntrack entry; our own outbound flow to that peer then clashed with
//! it and `snat` moved it to another port, breaking endpoint-independent mapping exactly when
//! hole punching needs it (the NAT matrix showed port-restricted pairs failing). A dropped
//! packet's entry is never confirmed, so the mapping keeps its port.

use std::net::Ipv4Addr;

use crate::scenario::NatKind;

/// The nftables ruleset (table `ip netsim`) of a router with the given behaviour, whose
/// internet-facing interface is `wan` with address `public`.
pub fn ruleset(kind: NatKind, public: Ipv4Addr, wan: &str) -> String {
    let snat = match kind {
        NatKind::None => String::new(),
        NatKind::Symmetric => format!("oifname \"{wan}\" snat to {public} random"),
        _ => format!("oifname \"{wan}\" snat to {public}"),
    };
    let (sets, pre, record) = match kind {
        NatKind::FullCone | NatKind::AddressRestricted => {
            let cond = if kind == NatKind::FullCone {
                "udp dport @fc"
            } else {
                "udp dport . ip saddr @seen"
            };
            (
                "  map fc { type inet_service : ipv4_addr; flags dynamic,timeout; timeout 120s; }\n  \
                 set seen { type inet_service . ipv4_addr; flags dynamic,timeout; timeout 120s; }\n"
                    .to_owned(),
                format!("    iifname \"{wan}\" {cond} dnat to udp dport map @fc\n"),
                format!(
                    "    oifname \"{wan}\" meta l4proto udp ct direction original update @fc {{ udp sport : ct original ip saddr }}\n    \
                     oifname \"{wan}\" meta l4proto udp ct direction original update @seen {{ udp sport . ip daddr }}\n"
                ),
            )
        }
        _ => (String::new(), String::new(), String::new()),
    };
    let forward = match kind {
        // Only what crosses the WAN is filtered: hosts on the site's LAN reach each other
        // freely, as behind a real firewall (the LAN bridge's frames pass this hook too).
        NatKind::UdpBlocked => format!(
            "    oifname \"{wan}\" meta l4proto udp drop\n    iifname \"{wan}\" meta l4proto udp drop\n"
        ),
        NatKind::Tcp443Only => format!(
            "    ct state established,related accept\n    \
             oifname \"{wan}\" tcp dport 443 accept\n    \
             oifname \"{wan}\" drop\n    iifname \"{wan}\" drop\n"
        ),
        _ => String::new(),
    };
    format!(
        "table ip netsim {{\n{sets}  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  \
         chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    {snat}\n  }}\n  \
         chain record {{\n    type filter hook postrouting priority 300; policy accept;\n{record}  }}\n  \
         chain fwdfilter {{\n    type filter hook forward priority filter; policy accept;\n{forward}  }}\n  \
         chain input {{\n    type filter hook input priority filter; policy accept;\n    \
         iifname \"{wan}\" ct state new drop\n  }}\n}}\n"
    )
}

/// The ruleset that cuts a router off the internet (table `ip netsim_partition`).
pub fn partition_ruleset(wan: &str) -> String {
    format!(
        "table ip netsim_partition {{\n  chain fwdfilter {{\n    type filter hook forward priority -10; policy accept;\n    \
         iifname \"{wan}\" drop\n    oifname \"{wan}\" drop\n  }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_differ_where_behaviour_does() {
        let ip = Ipv4Addr::new(198, 18, 1, 1);
        let pr = ruleset(NatKind::PortRestricted, ip, "wan");
        assert!(pr.contains("snat to 198.18.1.1\n"), "{pr}");
        assert!(!pr.contains("dnat"));
        assert!(ruleset(NatKind::Symmetric, ip, "wan").contains("random"));
        assert!(ruleset(NatKind::FullCone, ip, "wan").contains("udp dport @fc dnat"));
        assert!(ruleset(NatKind::AddressRestricted, ip, "wan").contains("ip saddr @seen dnat"));
        assert!(ruleset(NatKind::UdpBlocked, ip, "wan").contains("udp drop"));
        let t = ruleset(NatKind::Tcp443Only, ip, "wan");
        assert!(t.contains("tcp dport 443 accept"), "{t}");
        // Filtering applies to the WAN only: LAN hosts reach each other.
        for r in [t, ruleset(NatKind::UdpBlocked, ip, "wan")] {
            let forward = r.split("chain fwdfilter").nth(1).unwrap_or_default();
            let forward = forward.split("chain input").next().unwrap_or_default();
            assert!(
                forward
                    .lines()
                    .filter(|l| l.contains("drop"))
                    .all(|l| l.contains("\"wan\"")),
                "{forward}"
            );
        }
        assert!(!ruleset(NatKind::None, ip, "wan").contains("snat"));
    }
}
