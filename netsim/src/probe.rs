//! NAT self-test: UDP/TCP probes observed from two public probe hosts.
//!
//! Probe servers (`securecomm-netsim probe serve`) run in the two probe namespaces, each with
//! UDP ports 3478 and 3479 and TCP listeners on 443 and 4001. A probe client
//! (`probe client`) runs inside a site host and prints a [`Observation`] as JSON. Requests are
//! text datagrams `"<nonce> <cmd>"`; replies are `"<nonce> seen <ip:port>"`:
//!
//! - `echo`: answered from the socket that received it; the reply tells the mapped address.
//! - `alt-port`: answered from the server's other port (same address).
//! - `alt-ip`: the server asks the other probe host (`"<nonce> relay <ip:port>"`) to answer.
//!
//! Mapping: one socket sends `echo` to p1:3478, p1:3479 and p2:3478; the same mapped address
//! everywhere is endpoint-independent mapping. Filtering: two fresh sockets each send one request
//! to p1:3478 only; an `alt-port` answer arriving means the filter is not port-dependent, an
//! `alt-ip` answer that it is not address-dependent.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{NetsimError, Result};
use crate::scenario::NatKind;

/// The main UDP port of a probe server.
pub const PORT_A: u16 = 3478;
/// The alternative UDP port.
pub const PORT_B: u16 = 3479;
/// TCP ports a probe server accepts on.
pub const TCP_PORTS: [u16; 2] = [443, 4001];

/// Mapping behaviour (RFC 4787).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// Same public address for every destination.
    EndpointIndependent,
    /// A different public address per destination.
    Dependent,
}

/// Filtering behaviour (RFC 4787).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone may send to a mapping.
    EndpointIndependent,
    /// Only addresses contacted before.
    AddressDependent,
    /// Only address and port pairs contacted before.
    AddressAndPortDependent,
}

/// What a probe client saw from behind a router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Any UDP answer at all.
    pub udp: bool,
    /// Mapped addresses seen by p1:A, p1:B, p2:A.
    pub mapped: Vec<String>,
    /// Mapping behaviour (when UDP works).
    pub mapping: Option<Mapping>,
    /// Filtering behaviour (when UDP works).
    pub filtering: Option<Filtering>,
    /// TCP to port 443 connects.
    pub tcp443: bool,
    /// TCP to port 4001 connects.
    pub tcp_other: bool,
}

impl Observation {
    /// The public address the probes saw (if UDP works and mapping is stable).
    pub fn public_ip(&self) -> Option<Ipv4Addr> {
        self.mapped
            .first()
            .and_then(|a| a.parse::<SocketAddrV4>().ok())
            .map(|a| *a.ip())
    }
}

/// What a router labelled `kind` must show.
pub fn expected(kind: NatKind) -> Observation {
    let udp = |mapping, filtering| Observation {
        udp: true,
        mapped: Vec::new(),
        mapping: Some(mapping),
        filtering: Some(filtering),
        tcp443: true,
        tcp_other: true,
    };
    use Filtering as F;
    use Mapping as M;
    match kind {
        NatKind::None | NatKind::FullCone => udp(M::EndpointIndependent, F::EndpointIndependent),
        NatKind::AddressRestricted => udp(M::EndpointIndependent, F::AddressDependent),
        NatKind::PortRestricted | NatKind::Cgnat => {
            udp(M::EndpointIndependent, F::AddressAndPortDependent)
        }
        NatKind::Symmetric => udp(M::Dependent, F::AddressAndPortDependent),
        NatKind::UdpBlocked | NatKind::Tcp443Only => Observation {
            udp: false,
            mapped: Vec::new(),
            mapping: None,
            filtering: None,
            tcp443: true,
            tcp_other: kind == NatKind::UdpBlocked,
        },
    }
}

/// Compares an observation with a label; `Err` lists every difference.
pub fn check(site: &str, kind: NatKind, seen: &Observation) -> Result<()> {
    let want = expected(kind);
    let mut diffs = Vec::new();
    if want.udp != seen.udp {
        diffs.push(format!(
            "udp works: expected {}, got {}",
            want.udp, seen.udp
        ));
    }
    if want.mapping != seen.mapping {
        diffs.push(format!(
            "mapping: expected {:?}, got {:?}",
            want.mapping, seen.mapping
        ));
    }
    if want.filtering != seen.filtering {
        diffs.push(format!(
            "filtering: expected {:?}, got {:?}",
            want.filtering, seen.filtering
        ));
    }
    if want.tcp443 != seen.tcp443 {
        diffs.push(format!(
            "tcp 443: expected {}, got {}",
            want.tcp443, seen.tcp443
        ));
    }
    if want.tcp_other != seen.tcp_other {
        diffs.push(format!(
            "tcp 4001: expected {}, got {}",
            want.tcp_other, seen.tcp_other
        ));
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(NetsimError::SelfTest(format!(
            "site {site:?} is labelled {kind:?} but behaves differently: {} (observed {seen:?})",
            diffs.join("; ")
        )))
    }
}

fn bind_udp(addr: SocketAddr) -> Result<UdpSocket> {
    UdpSocket::bind(addr).map_err(|e| NetsimError::io(format!("binding UDP {addr}"), e))
}

/// Runs a probe server on `ip` (forever); `peer` is the other probe host.
pub fn serve(ip: Ipv4Addr, peer: Ipv4Addr) -> Result<()> {
    let a = bind_udp(SocketAddr::from((ip, PORT_A)))?;
    let b = bind_udp(SocketAddr::from((ip, PORT_B)))?;
    for port in TCP_PORTS {
        let l = TcpListener::bind((ip, port))
            .map_err(|e| NetsimError::io(format!("binding TCP {ip}:{port}"), e))?;
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
    }
    let (a2, b2) = (
        a.try_clone()
            .map_err(|e| NetsimError::io("cloning a socket", e))?,
        b.try_clone()
            .map_err(|e| NetsimError::io("cloning a socket", e))?,
    );
    let peer = SocketAddr::from((peer, PORT_A));
    let t = std::thread::spawn(move || serve_socket(&b2, &a2, peer));
    serve_socket(&a, &b, peer);
    let _ = t.join();
    Ok(())
}

/// Answers requests arriving on `sock`; `other` is the server's other port.
fn serve_socket(sock: &UdpSocket, other: &UdpSocket, peer: SocketAddr) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        let mut parts = text.split_whitespace();
        let (Some(nonce), Some(cmd)) = (parts.next(), parts.next()) else {
            continue;
        };
        let reply = format!("{nonce} seen {from}");
        let _ = match cmd {
            "echo" => sock.send_to(reply.as_bytes(), from),
            "alt-port" => other.send_to(reply.as_bytes(), from),
            "alt-ip" => sock.send_to(format!("{nonce} relay {from}").as_bytes(), peer),
            "relay" => match parts.next().and_then(|a| a.parse::<SocketAddr>().ok()) {
                Some(to) => sock.send_to(format!("{nonce} seen {to}").as_bytes(), to),
                None => continue,
            },
            _ => continue,
        };
    }
}

/// Sends `cmd` to `to` (a few times) and returns the source and text of the first reply.
fn ask(sock: &UdpSocket, to: SocketAddr, cmd: &str, nonce: u32) -> Option<(SocketAddr, String)> {
    let mut buf = [0u8; 512];
    let _ = sock.set_read_timeout(Some(Duration::from_millis(300)));
    for _ in 0..4 {
        let _ = sock.send_to(format!("{nonce} {cmd}").as_bytes(), to);
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
            let mut parts = text.split_whitespace();
            if parts.next() == Some(nonce.to_string().as_str()) && parts.next() == Some("seen") {
                return parts.next().map(|a| (from, a.to_owned()));
            }
        }
    }
    None
}

fn tcp_ok(ip: Ipv4Addr, port: u16) -> bool {
    match TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(1)) {
        Ok(mut s) => {
            let _ = s.write_all(b"x");
            let _ = s.read(&mut [0u8; 1]);
            true
        }
        Err(_) => false,
    }
}

/// Observes the NAT in front of this host (run inside a site host's namespace).
pub fn observe(p1: Ipv4Addr, p2: Ipv4Addr) -> Result<Observation> {
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let p1a = SocketAddr::from((p1, PORT_A));
    let p1b = SocketAddr::from((p1, PORT_B));
    let p2a = SocketAddr::from((p2, PORT_A));
    let s = bind_udp(any)?;
    let mapped: Vec<String> = [(p1a, 1), (p1b, 2), (p2a, 3)]
        .into_iter()
        .filter_map(|(to, nonce)| ask(&s, to, "echo", nonce).map(|(_, m)| m))
        .collect();
    let udp = !mapped.is_empty();
    let (mapping, filtering) = if udp {
        let mapping = if mapped.len() == 3 && mapped.iter().all(|m| Some(m) == mapped.first()) {
            Mapping::EndpointIndependent
        } else {
            Mapping::Dependent
        };
        let alt_port = ask(&bind_udp(any)?, p1a, "alt-port", 4).is_some();
        let alt_ip = ask(&bind_udp(any)?, p1a, "alt-ip", 5).is_some();
        let filtering = match (alt_ip, alt_port) {
            (true, _) => Filtering::EndpointIndependent,
            (false, true) => Filtering::AddressDependent,
            (false, false) => Filtering::AddressAndPortDependent,
        };
        (Some(mapping), Some(filtering))
    } else {
        (None, None)
    };
    Ok(Observation {
        udp,
        mapped,
        mapping,
        filtering,
        tcp443: tcp_ok(p1, 443),
        tcp_other: tcp_ok(p1, 4001),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_every_difference() {
        let mut seen = expected(NatKind::PortRestricted);
        assert!(check("a", NatKind::PortRestricted, &seen).is_ok());
        assert!(check("a", NatKind::Cgnat, &seen).is_ok());
        let err = check("a", NatKind::FullCone, &seen)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("filtering: expected Some(EndpointIndependent)"),
            "{err}"
        );
        seen.udp = false;
        let err = check("a", NatKind::Symmetric, &seen)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("udp works") && err.contains("mapping"),
            "{err}"
        );
    }

    /// On loopback (no NAT) the probes see endpoint-independent mapping and filtering.
    #[test]
    fn loopback_probe_without_nat() {
        // Two probe servers on 127.0.0.2 and 127.0.0.3 would need their own ports; 127.x all
        // route to lo, so this works unprivileged only if those ports are free.
        let (p1, p2) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
        if TcpListener::bind((p1, 4001)).is_err() || TcpListener::bind((p1, 443)).is_err() {
            eprintln!("skipping: cannot bind 127.0.0.2:443/4001 (not root or in use)");
            return;
        }
        std::thread::spawn(move || serve(p1, p2));
        std::thread::spawn(move || serve(p2, p1));
        std::thread::sleep(Duration::from_millis(200));
        let o = observe(p1, p2).unwrap();
        assert!(o.udp, "{o:?}");
        assert_eq!(o.mapping, Some(Mapping::EndpointIndependent), "{o:?}");
        assert_eq!(o.filtering, Some(Filtering::EndpointIndependent), "{o:?}");
        assert!(o.tcp443 && o.tcp_other, "{o:?}");
    }
}
