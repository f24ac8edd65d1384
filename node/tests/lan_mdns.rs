//! Out of the box on a LAN: two nodes with the desktop app's network defaults (listen on every
//! interface, mDNS on, no relay) in two network namespaces joined by a virtual Ethernet link
//! find each other with mDNS before anyone shares anything, then chat after an invite, with no
//! relay anywhere. The namespaces are created by this test and removed when it ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod procs;

use std::process::Command;

use procs::*;

/// Two namespaces and a veth pair 10.77.0.1 <-> 10.77.0.2; removed on drop.
struct Lan {
    ns: [String; 2],
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl Lan {
    fn build() -> Result<Self, String> {
        let tag = std::process::id();
        let lan = Self {
            ns: [format!("sc-lan-{tag}-a"), format!("sc-lan-{tag}-b")],
        };
        for n in &lan.ns {
            ip(&["netns", "add", n])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        let (a, b) = (&lan.ns[0], &lan.ns[1]);
        ip(&[
            "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b,
        ])?;
        for (n, addr) in [(a, "10.77.0.1/24"), (b, "10.77.0.2/24")] {
            ip(&["-n", n, "addr", "add", addr, "dev", "eth0"])?;
            ip(&["-n", n, "link", "set", "eth0", "up", "multicast", "on"])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

fn peer_ids(n: &Node) -> Vec<String> {
    n.cli(&["peers"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn two_nodes_on_a_lan_find_each_other_with_mdns_and_chat_without_a_relay() {
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must run this test"
        );
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let lan = Lan::build().unwrap();
    let mut a = Node::new("ann");
    let mut b = Node::new("ben");
    a.netns = Some(lan.ns[0].clone());
    b.netns = Some(lan.ns[1].clone());
    // The desktop app's network defaults: every interface, mDNS, no relay. Both start at once,
    // as two machines switched on together would: each then finds the other in the same
    // instant and both dial at once (which once left them unconnected, one run in five).
    std::thread::scope(|s| {
        for n in [&mut a, &mut b] {
            s.spawn(move || n.start(&["--listen", "/ip4/0.0.0.0/tcp/0", "--mdns"]));
        }
    });
    let a_id = a.cli(&["whoami"])["peer_id"].as_str().unwrap().to_owned();
    let b_id = b.cli(&["whoami"])["peer_id"].as_str().unwrap().to_owned();
    // Found by mDNS alone: nobody has shared an address yet.
    until("mDNS to connect the two", || {
        (peer_ids(&a).contains(&b_id) && peer_ids(&b).contains(&a_id)).then_some(())
    });
    let peers = b.cli(&["peers"]);
    let ann = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == a_id.as_str())
        .unwrap();
    assert_eq!(ann["path"], "direct", "{ann}");
    assert!(
        ann["addrs"].to_string().contains("10.77.0.1"),
        "reached over the LAN: {ann}"
    );

    let (gid, code) = create_and_invite(&a, "Home", 1);
    let j = b.cli(&["guild", "join", &code]);
    assert_eq!(j["ready"], true, "{j}");
    wait_keyed(&a, &gid, 2);
    wait_keyed(&b, &gid, 2);
    b.send(&gid, "general", "hello over the LAN");
    until("ann to receive ben's message", || {
        a.texts(&gid, "general")
            .iter()
            .any(|(_, t)| t == "hello over the LAN")
            .then_some(())
    });
    a.send(&gid, "general", "hi ben");
    until("ben to receive ann's reply", || {
        b.texts(&gid, "general")
            .iter()
            .any(|(_, t)| t == "hi ben")
            .then_some(())
    });
    drop(a);
    drop(b);
    drop(lan);
}
