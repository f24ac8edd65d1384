//! Measures what an impaired link really does: a UDP echo from a site's first host to the first
//! probe host, through the site's uplink forwarder, compared with what the scenario asked for.
//! This is how the precision of the user-space impairment is documented (`securecomm-netsim
//! linktest`).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{NetsimError, Result};
use crate::scenario::Impairment;
use crate::sys;
use crate::topology::{PROBE1, Topology};

/// The echo port on the probe host.
pub const ECHO_PORT: u16 = 7777;
/// Echo payload: sequence number and send time.
const PAYLOAD: usize = 16;

/// Echoes every datagram back to its sender until killed.
pub fn serve(bind: SocketAddr) -> Result<()> {
    let s = UdpSocket::bind(bind).map_err(|e| NetsimError::io(format!("binding {bind}"), e))?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = s
            .recv_from(&mut buf)
            .map_err(|e| NetsimError::io("echo receive", e))?;
        let _ = s.send_to(&buf[..n], from);
    }
}

/// What a ping run saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingStats {
    /// Datagrams sent.
    pub sent: u64,
    /// Echoes received (each sequence number once).
    pub received: u64,
    /// Echoes that arrived after a later one.
    pub reordered: u64,
    /// Round-trip times in ms, sorted.
    pub rtt_ms: Vec<f64>,
}

impl PingStats {
    /// The nearest-rank percentile of the round trips (`p` in 0..=100).
    pub fn rtt_percentile(&self, p: f64) -> Option<f64> {
        if self.rtt_ms.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.rtt_ms.len() as f64).ceil() as usize;
        self.rtt_ms
            .get(rank.clamp(1, self.rtt_ms.len()) - 1)
            .copied()
    }

    /// Lost share of round trips.
    pub fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.sent.max(1) as f64
    }
}

/// Sends `count` datagrams `interval` apart to `to` and collects the echoes (waiting up to 2 s
/// after the last one).
pub fn ping(to: SocketAddr, count: u64, interval: Duration) -> Result<PingStats> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| NetsimError::io("binding ping socket", e))?;
    s.connect(to)
        .map_err(|e| NetsimError::io(format!("connecting to {to}"), e))?;
    let start = Instant::now();
    let rx = s
        .try_clone()
        .map_err(|e| NetsimError::io("cloning ping socket", e))?;
    let total = count.min(100_000);
    let sent_for = Duration::from_secs_f64(interval.as_secs_f64() * total as f64);
    let reader = std::thread::spawn(move || {
        let _ = rx.set_read_timeout(Some(Duration::from_millis(100)));
        let mut seen = vec![false; total as usize];
        let (mut received, mut reordered, mut highest) = (0u64, 0u64, 0u64);
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        while start.elapsed() < sent_for + Duration::from_secs(2) {
            let Ok(n) = rx.recv(&mut buf) else { continue };
            if n < PAYLOAD {
                continue;
            }
            let mut seq = [0u8; 8];
            let mut at = [0u8; 8];
            seq.copy_from_slice(&buf[..8]);
            at.copy_from_slice(&buf[8..16]);
            let (seq, at) = (u64::from_be_bytes(seq), u64::from_be_bytes(at));
            let Some(slot) = seen.get_mut(seq as usize) else {
                continue;
            };
            if std::mem::replace(slot, true) {
                continue;
            }
            received += 1;
            if seq < highest {
                reordered += 1;
            }
            highest = highest.max(seq);
            let now = start.elapsed().as_nanos() as u64;
            rtts.push(now.saturating_sub(at) as f64 / 1e6);
        }
        (received, reordered, rtts)
    });
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(interval.as_secs_f64() * seq as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut p = [0u8; PAYLOAD];
        p[..8].copy_from_slice(&seq.to_be_bytes());
        p[8..].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        let _ = s.send(&p);
    }
    let (received, reordered, mut rtt_ms) = reader.join().map_err(|_| NetsimError::Unexpected {
        what: "ping reader".into(),
        expected: "to finish".into(),
        got: "a panic".into(),
    })?;
    rtt_ms.sort_by(f64::total_cmp);
    Ok(PingStats {
        sent: total,
        received,
        reordered,
        rtt_ms,
    })
}

/// One impaired uplink, as configured and as measured.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    /// Site.
    pub site: String,
    /// What the scenario asked for (each direction).
    pub configured: Impairment,
    /// Round-trip loss the configuration implies (both directions).
    pub expected_loss: f64,
    /// Round trip the configuration adds, ms.
    pub expected_rtt_ms: f64,
    /// The same path's round trip without the impairment's delay: measured before the
    /// forwarder started, ms (p50).
    pub base_rtt_ms: f64,
    /// What the echo saw.
    pub measured: PingStats,
}

impl LinkReport {
    /// A readable line.
    pub fn line(&self) -> String {
        let p = |q| {
            self.measured
                .rtt_percentile(q)
                .map_or("-".into(), |v| format!("{v:.2}"))
        };
        format!(
            "{:<10} delay {:>6.1} ms, jitter {:>5.1} ms, loss {:>5.1}% (burst {:.1})  | rtt expected {:>6.2} + base {:.2} ms, measured p50 {} p95 {} max {} ms | loss expected {:.1}%, measured {:.1}% | reordered {}",
            self.site,
            self.configured.delay_ms,
            self.configured.jitter_ms,
            self.configured.loss_pct,
            self.configured.loss_burst,
            self.expected_rtt_ms,
            self.base_rtt_ms,
            p(50.0),
            p(95.0),
            p(100.0),
            self.expected_loss * 100.0,
            self.measured.loss() * 100.0,
            self.measured.reordered,
        )
    }
}

fn run_ping(self_bin: &Path, host_ns: &str, count: u64, interval_ms: u64) -> Result<PingStats> {
    let o = sys::output(
        sys::in_ns(host_ns, self_bin)
            .args(["udp-echo", "ping", "--to"])
            .arg(format!("{PROBE1}:{ECHO_PORT}"))
            .args(["--count", &count.to_string()])
            .args(["--interval-ms", &interval_ms.to_string()])
            .stdin(Stdio::null()),
    )?;
    serde_json::from_slice(&o.stdout).map_err(|_| NetsimError::Unexpected {
        what: "udp-echo ping output".into(),
        expected: "ping statistics in JSON".into(),
        got: format!(
            "{} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    })
}

/// Measures every impaired uplink of `topo`: first the clean path (kernel bridge), then starts
/// the forwarders with `start` and measures again.
pub fn measure(
    topo: &Topology,
    self_bin: &Path,
    count: u64,
    interval_ms: u64,
    start: impl FnOnce() -> Result<Vec<crate::runner::Proc>>,
) -> Result<Vec<LinkReport>> {
    let mut server = sys::in_ns(&topo.probes[0].ns, self_bin);
    server
        .args(["udp-echo", "serve", "--bind"])
        .arg(format!("{PROBE1}:{ECHO_PORT}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let _server = crate::runner::Proc::spawn(server)?;
    std::thread::sleep(Duration::from_millis(200));
    let impaired: Vec<_> = topo
        .routers
        .iter()
        .filter(|r| r.link_ns.is_some())
        .filter_map(|r| {
            let host = topo.hosts.iter().find(|h| h.site == r.site)?;
            Some((r, host))
        })
        .collect();
    let mut base = Vec::new();
    for (_, h) in &impaired {
        let s = run_ping(self_bin, &h.ns, 50, 10)?;
        base.push(s.rtt_percentile(50.0).unwrap_or(0.0));
    }
    let _forwarders = start()?;
    let mut out = Vec::new();
    for ((r, h), base_rtt_ms) in impaired.into_iter().zip(base) {
        let measured = run_ping(self_bin, &h.ns, count, interval_ms)?;
        let p = (r.uplink.loss_pct / 100.0).clamp(0.0, 1.0);
        out.push(LinkReport {
            site: r.site.clone(),
            configured: r.uplink.clone(),
            expected_loss: 1.0 - (1.0 - p) * (1.0 - p),
            expected_rtt_ms: 2.0 * r.uplink.delay_ms,
            base_rtt_ms,
            measured,
        });
    }
    Ok(out)
}
