//! File transfer throughput between two real nodes on loopback, against a plain TCP copy of
//! the same bytes measured in the same run, with the receiver's peak memory.
//!
//! Two `securecomm-node` processes (release build, SQLCipher stores, libp2p TCP + Noise +
//! Yamux, no relay) in one guild. Timed for SecureComm: from `files fetch` on the receiver to
//! its state `complete` (manifest, every chunk requested, hash-checked and written into the
//! part file, synced, renamed), seen on the receiver's `events` stream. Baseline: one
//! `std::net` TCP connection on loopback, the sender reading the same file from disk and the
//! receiver writing it to disk and syncing it at the end (the node syncs its part file too).
//! Also printed: the sender's encryption of the file into its store, the receiver's decryption
//! to a plaintext file, and the receiver's peak resident memory (`VmHWM` of its process).
//!
//! Run: `cargo bench -p securecomm-node --bench file_transfer` (env `MIB`, default 1024).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/procs/mod.rs"]
mod procs;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use procs::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn make_file(path: &Path, mib: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut block = vec![0u8; 1 << 20];
    for w in block.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    for i in 0..mib {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

/// Copies `src` over one loopback TCP connection into `dst` (synced); returns the time.
fn tcp_copy(src: &Path, dst: &Path) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dst = dst.to_path_buf();
    let started = Instant::now();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut out = std::fs::File::create(&dst).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).unwrap();
        }
        out.sync_all().unwrap();
    });
    let mut s = TcpStream::connect(addr).unwrap();
    let mut f = std::fs::File::open(src).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n]).unwrap();
    }
    drop(s);
    rx.join().unwrap();
    started.elapsed()
}

fn vm(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// CPU time (user + system, every thread) a process has used so far; with `children`, that of
/// its children that have ended instead (the CLI processes this bench runs).
fn cpu_of(pid: &str, children: bool) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = if children { 13 } else { 11 };
    let ticks: u64 = f[at].parse::<u64>().unwrap() + f[at + 1].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn cpu(pid: &str) -> Duration {
    cpu_of(pid, false)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let mib = env("MIB", 1024);
    let bytes = (mib as u64) << 20;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("payload.bin");
    make_file(&src, mib);

    let mut a = Node::new("sender");
    let mut b = Node::new("receiver");
    a.start(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
    b.start(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
    let (gid, code) = create_and_invite(&a, "Bench", 1);
    b.cli(&["guild", "join", &code]);
    wait_keyed(&a, &gid, 2);
    wait_keyed(&b, &gid, 2);

    // Warm the page cache for both runs alike.
    let _ = std::fs::read(&src).map(|v| v.len());
    let cpu_before = cpu("self");
    let tcp = tcp_copy(&src, &work.path().join("tcp-copy.bin"));
    let tcp_cpu = cpu("self") - cpu_before;
    let _ = std::fs::remove_file(work.path().join("tcp-copy.bin"));

    let started = Instant::now();
    let m = until("the post", || {
        let o = a.cli_raw(&[
            "send",
            &gid,
            "general",
            "bench",
            "--file",
            src.to_str().unwrap(),
        ]);
        o.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
    });
    let encrypt = started.elapsed();
    let root = m["files"][0]["root"].as_str().unwrap().to_owned();
    until("the announcement", || {
        b.cli(&["files", "list", &gid])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["file"]["root"] == root.as_str())
            .then_some(())
    });
    let pid = b.child.as_ref().unwrap().id();
    let sender = a.child.as_ref().unwrap().id().to_string();
    let rss_before = vm(pid, "VmRSS:");
    let (a_cpu, b_cpu) = (cpu(&sender), cpu(&pid.to_string()));
    // The end of the fetch comes from the receiver's `events` stream (its `file-done` line),
    // with a `files status` once a second in case the stream missed it: polling `files status`
    // every 20 ms took 0.4-0.5 s of CPU per fetch from the two cores the nodes share.
    let (mut watch, lines) = b.events();
    std::thread::sleep(Duration::from_millis(500));
    let polls_cpu = cpu_of("self", true);
    let started = Instant::now();
    b.cli(&["files", "fetch", &root]);
    let fetch = loop {
        match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["event"] == "file-done" && v["root"] == root.as_str() {
                    assert_eq!(v["ok"], true, "{v}");
                    break started.elapsed();
                }
            }
            Err(e) => {
                if e == std::sync::mpsc::RecvTimeoutError::Disconnected {
                    std::thread::sleep(Duration::from_secs(1));
                }
                let s = b.cli(&["files", "status", &root]);
                if s["state"] == "complete" {
                    break started.elapsed();
                }
                assert_ne!(s["state"], "paused", "{s}");
                assert!(started.elapsed() < Duration::from_secs(1800), "{s}");
            }
        }
    };
    let (a_cpu, b_cpu) = (cpu(&sender) - a_cpu, cpu(&pid.to_string()) - b_cpu);
    let _ = watch.kill();
    let _ = watch.wait();
    let polls_cpu = cpu_of("self", true) - polls_cpu;
    let peak = vm(pid, "VmHWM:");
    let out = work.path().join("saved.bin");
    let started = Instant::now();
    b.cli(&["files", "save", &root, out.to_str().unwrap()]);
    let save = started.elapsed();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), bytes);

    let mb = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!("file transfer, {mib} MiB, loopback, two node processes");
    println!(
        "  plain TCP copy (disk to disk)     {:>8.2} s  {:>8.1} MB/s",
        tcp.as_secs_f64(),
        mb(tcp)
    );
    println!(
        "  SecureComm fetch (1 source)       {:>8.2} s  {:>8.1} MB/s   {:.0}% of plain TCP",
        fetch.as_secs_f64(),
        mb(fetch),
        100.0 * tcp.as_secs_f64() / fetch.as_secs_f64()
    );
    let per_gb = |d: Duration| d.as_secs_f64() * 1e9 / bytes as f64;
    println!(
        "  CPU per GB: TCP copy (both ends) {:.2} s; fetch: sender {:.2} s, receiver {:.2} s",
        per_gb(tcp_cpu),
        per_gb(a_cpu),
        per_gb(b_cpu)
    );
    println!(
        "  (the bench's own `files fetch` and `events` processes used {:.2} s of CPU)",
        polls_cpu.as_secs_f64()
    );
    println!(
        "  sender: encrypt into store + post {:>8.2} s  {:>8.1} MB/s",
        encrypt.as_secs_f64(),
        mb(encrypt)
    );
    println!(
        "  receiver: decrypt + save          {:>8.2} s  {:>8.1} MB/s",
        save.as_secs_f64(),
        mb(save)
    );
    println!(
        "  receiver memory: {:.1} MB resident before the fetch, peak {:.1} MB (VmHWM)",
        rss_before as f64 / 1e6,
        peak as f64 / 1e6
    );
    a.stop();
    b.stop();
}
