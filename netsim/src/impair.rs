//! Link impairment in user space (this kernel has no `netem`).
//!
//! An impaired site uplink runs through a small namespace of its own holding two interfaces,
//! `site` (towards the site's router) and `net` (towards the internet bridge). Until the run starts,
//! a kernel bridge joins them (so the NAT self-test sees a clean link); then the bridge is
//! removed and `securecomm-netsim impair` forwards every Ethernet frame between them through
//! packet sockets, deciding each frame's fate with a [`Model`] per direction:
//!
//! - **loss**: independent (Bernoulli) with `loss_pct`, or bursty with a two-state Gilbert model
//!   when `loss_burst` (mean burst length in packets) is set: every packet in the bad state is
//!   lost, the chain leaves it with probability `1 / loss_burst`, and enters it with the
//!   probability that makes the long-run loss `loss_pct`;
//! - **rate**: a frame is serialised at `rate_kbit` after the previous one left the queue (the
//!   queue holds at most [`MAX_QUEUE_DELAY`] of backlog; later frames are tail-dropped, like a
//!   router's buffer);
//! - **delay and jitter**: `delay_ms` plus a normal sample with standard deviation `jitter_ms`,
//!   truncated at zero extra delay; like netem, jitter may reorder frames.
//!
//! Both directions get the same parameters with independent random streams (seeded, so a run
//! can be repeated): `delay_ms` is one-way, so the round trip grows by twice that.
//!
//! Precision: a frame leaves when a writer thread wakes for it; `thread::park_timeout` and
//! the scheduler add tens of microseconds, more when the machine is loaded. The namespace test
//! measures the added round trip against the configured one and prints both.

use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{NetsimError, Result};
use crate::scenario::Impairment;

/// Most backlog the rate limiter queues before tail-dropping.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(300);
/// Most frames waiting for their departure time in one direction.
pub const MAX_IN_FLIGHT: usize = 8192;
/// Largest frame forwarded (the veths' MTU is 1500; room for VLAN tags).
const MAX_FRAME: usize = 2048;

/// A small seeded generator (xorshift64*), enough for loss and jitter decisions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (zero is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// One direction's impairment state.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: Impairment,
    rng: Rng,
    /// Gilbert chain: in the bad (losing) state.
    bad: bool,
    p_enter_bad: f64,
    p_leave_bad: f64,
    /// When the rate limiter's queue drains, as time since the start.
    busy_until: Duration,
}

impl Model {
    /// A model for `cfg` (validated by the scenario) with random stream `seed`.
    pub fn new(cfg: &Impairment, seed: u64) -> Self {
        let p = (cfg.loss_pct / 100.0).clamp(0.0, 1.0);
        let (p_enter_bad, p_leave_bad) = if cfg.loss_burst >= 1.0 && p > 0.0 && p < 1.0 {
            let leave = 1.0 / cfg.loss_burst;
            (p * leave / (1.0 - p), leave)
        } else {
            (0.0, 1.0)
        };
        Self {
            cfg: cfg.clone(),
            rng: Rng::new(seed),
            bad: false,
            p_enter_bad,
            p_leave_bad,
            busy_until: Duration::ZERO,
        }
    }

    /// The fate of a frame of `len` bytes arriving at `now` (since the start): when it leaves,
    /// or `None` if it is lost.
    pub fn admit(&mut self, now: Duration, len: usize) -> Option<Duration> {
        if self.lost() {
            return None;
        }
        let mut ready = now;
        if self.cfg.rate_kbit > 0.0 {
            let start = self.busy_until.max(now);
            if start - now > MAX_QUEUE_DELAY {
                return None;
            }
            let tx = Duration::from_secs_f64(len as f64 * 8.0 / (self.cfg.rate_kbit * 1000.0));
            self.busy_until = start + tx;
            ready = self.busy_until;
        }
        let mut extra_ms = self.cfg.delay_ms;
        if self.cfg.jitter_ms > 0.0 {
            extra_ms += self.cfg.jitter_ms * self.rng.normal();
        }
        Some(ready + Duration::from_secs_f64(extra_ms.max(0.0) / 1000.0))
    }

    fn lost(&mut self) -> bool {
        let p = self.cfg.loss_pct / 100.0;
        if p <= 0.0 {
            return false;
        }
        if self.p_enter_bad > 0.0 {
            // Step the chain, then the state decides.
            let u = self.rng.uniform();
            self.bad = if self.bad {
                u >= self.p_leave_bad
            } else {
                u < self.p_enter_bad
            };
            self.bad
        } else {
            self.rng.uniform() < p
        }
    }
}

/// A frame waiting for its departure.
struct Pending {
    at: Duration,
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    // Earliest first out of a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A raw packet socket bound to one interface.
///
/// The only unsafe code in netsim: the three libc calls a packet socket needs (bind with a
/// `sockaddr_ll`, `recvfrom` that reports the packet type, `send`). No safe crate exposes the
/// packet type, and without it the forwarder would receive its own output and loop.
#[derive(Debug)]
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
}

#[allow(unsafe_code)]
impl PacketSocket {
    fn bind(ifname: &str) -> Result<Self> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(ifname).map_err(|_| NetsimError::Unexpected {
            what: "interface name".into(),
            expected: "no NUL byte".into(),
            got: ifname.into(),
        })?;
        // SAFETY: plain libc calls with valid arguments; the fd is owned right after creation.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                return Err(NetsimError::io(
                    format!("interface {ifname}"),
                    std::io::Error::last_os_error(),
                ));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            if raw < 0 {
                return Err(NetsimError::io(
                    "packet socket",
                    std::io::Error::last_os_error(),
                ));
            }
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            let rc = libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc < 0 {
                return Err(NetsimError::io(
                    format!("binding a packet socket to {ifname}"),
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(Self { fd })
        }
    }

    /// Receives one frame that arrived on the interface (frames we sent are skipped).
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: buf and sll are valid for the lengths given.
            let (n, pkttype) = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                );
                (n, sll.sll_pkttype)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(n as usize);
        }
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: frame is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

type Queue = Arc<(Mutex<BinaryHeap<Pending>>, Condvar)>;

/// Forwards frames from `from` to `to` through `model`, until an I/O error.
fn direction(from: PacketSocket, to: Arc<PacketSocket>, mut model: Model, start: Instant) {
    let queue: Queue = Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));
    let q2 = queue.clone();
    std::thread::spawn(move || {
        let (lock, cv) = &*q2;
        loop {
            let Ok(mut heap) = lock.lock() else { return };
            let wait = match heap.peek() {
                None => None,
                Some(p) => {
                    let now = start.elapsed();
                    if p.at <= now {
                        let Some(p) = heap.pop() else { continue };
                        drop(heap);
                        let _ = to.send(&p.frame);
                        continue;
                    }
                    Some(p.at - now)
                }
            };
            let ok = match wait {
                None => cv.wait(heap).is_ok(),
                Some(d) => cv.wait_timeout(heap, d).is_ok(),
            };
            if !ok {
                return;
            }
        }
    });
    let mut buf = vec![0u8; MAX_FRAME];
    let mut seq = 0u64;
    let (lock, cv) = &*queue;
    loop {
        let Ok(n) = from.recv(&mut buf) else { return };
        let Some(at) = model.admit(start.elapsed(), n) else {
            continue;
        };
        seq += 1;
        let Ok(mut heap) = lock.lock() else { return };
        if heap.len() >= MAX_IN_FLIGHT {
            continue;
        }
        heap.push(Pending {
            at,
            seq,
            frame: buf[..n].to_vec(),
        });
        drop(heap);
        cv.notify_one();
    }
}

/// Forwards between interfaces `a` (site side) and `b` (internet side) with `up` applied to
/// frames from `a` and `down` to frames from `b`. Runs until an I/O error (the namespace or
/// an interface disappearing).
pub fn forward(a: &str, b: &str, up: &Impairment, down: &Impairment, seed: u64) -> Result<()> {
    let start = Instant::now();
    let sa = Arc::new(PacketSocket::bind(a)?);
    let sb = Arc::new(PacketSocket::bind(b)?);
    let ra = PacketSocket {
        fd: sa
            .fd
            .try_clone()
            .map_err(|e| NetsimError::io("dup packet socket", e))?,
    };
    let rb = PacketSocket {
        fd: sb
            .fd
            .try_clone()
            .map_err(|e| NetsimError::io("dup packet socket", e))?,
    };
    let up_model = Model::new(up, seed);
    let down_model = Model::new(down, seed.wrapping_mul(0x9E37_79B9).wrapping_add(1));
    let t = std::thread::spawn(move || direction(rb, sa, down_model, start));
    direction(ra, sb, up_model, start);
    let _ = t.join();
    Err(NetsimError::Environment(format!(
        "forwarding between {a} and {b} stopped"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(delay: f64, jitter: f64, loss: f64, burst: f64, rate: f64) -> Impairment {
        Impairment {
            delay_ms: delay,
            jitter_ms: jitter,
            loss_pct: loss,
            loss_burst: burst,
            rate_kbit: rate,
        }
    }

    /// Loss rate and mean burst length over `n` packets 20 ms apart.
    fn losses(m: &mut Model, n: usize) -> (f64, f64) {
        let (mut lost, mut bursts, mut in_burst) = (0usize, 0usize, false);
        for i in 0..n {
            let gone = m.admit(Duration::from_millis(20 * i as u64), 100).is_none();
            if gone {
                lost += 1;
                if !in_burst {
                    bursts += 1;
                }
            }
            in_burst = gone;
        }
        (lost as f64 / n as f64, lost as f64 / bursts.max(1) as f64)
    }

    #[test]
    fn random_loss_matches_its_rate_with_short_bursts() {
        let mut m = Model::new(&cfg(0.0, 0.0, 10.0, 0.0, 0.0), 7);
        let (rate, burst) = losses(&mut m, 200_000);
        assert!((rate - 0.10).abs() < 0.005, "{rate}");
        assert!(burst < 1.2, "{burst}");
    }

    #[test]
    fn bursty_loss_matches_rate_and_mean_burst() {
        // 20% loss in bursts of 3 packets (60 ms of 20 ms frames).
        let mut m = Model::new(&cfg(0.0, 0.0, 20.0, 3.0, 0.0), 9);
        let (rate, burst) = losses(&mut m, 200_000);
        assert!((rate - 0.20).abs() < 0.01, "{rate}");
        assert!((burst - 3.0).abs() < 0.15, "{burst}");
    }

    #[test]
    fn delay_and_jitter_have_the_configured_mean_and_spread() {
        let mut m = Model::new(&cfg(40.0, 5.0, 0.0, 0.0, 0.0), 3);
        let now = Duration::from_secs(1);
        let d: Vec<f64> = (0..50_000)
            .map(|_| (m.admit(now, 100).unwrap() - now).as_secs_f64() * 1000.0)
            .collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        assert!((mean - 40.0).abs() < 0.2, "{mean}");
        assert!((sd - 5.0).abs() < 0.2, "{sd}");
        assert!(d.iter().all(|x| *x >= 0.0));
        // No impairment: leaves at once.
        let mut clean = Model::new(&Impairment::default(), 1);
        assert_eq!(clean.admit(now, 1500), Some(now));
    }

    #[test]
    fn rate_limit_serialises_and_tail_drops_beyond_the_queue() {
        // 1 Mbit/s: a 1250-byte frame takes 10 ms.
        let mut m = Model::new(&cfg(0.0, 0.0, 0.0, 0.0, 1000.0), 5);
        let t0 = Duration::from_secs(1);
        let first = m.admit(t0, 1250).unwrap();
        let second = m.admit(t0, 1250).unwrap();
        assert_eq!(first - t0, Duration::from_millis(10));
        assert_eq!(second - first, Duration::from_millis(10));
        // A burst of 100 frames at once: the queue holds 300 ms (30 frames), the rest drop.
        let mut m = Model::new(&cfg(0.0, 0.0, 0.0, 0.0, 1000.0), 5);
        let kept = (0..100).filter(|_| m.admit(t0, 1250).is_some()).count();
        assert!((30..=32).contains(&kept), "{kept}");
    }

    #[test]
    fn seeds_make_runs_repeatable() {
        let c = cfg(20.0, 8.0, 15.0, 4.0, 0.0);
        let run = |seed| {
            let mut m = Model::new(&c, seed);
            (0..1000)
                .map(|i| m.admit(Duration::from_millis(i), 200))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
