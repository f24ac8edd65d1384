//! Media frame encryption for a 160-byte Opus frame (20 ms at ~64 kbit/s).
//! Goal: encrypt + decrypt under 2 microseconds.
//!
//! `cargo bench -p securecomm-noise --bench frame -- --warm-up-time 1 --measurement-time 3`

// Benchmark setup failing is a bug in the benchmark; panicking is the right report.
#![allow(clippy::unwrap_used)]

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use securecomm_noise::frame::{BaseKey, FrameReceiver, FrameSender, frame_kid};
use securecomm_noise::secret::Secret32;

const OPUS_FRAME: usize = 160;

fn setup() -> (FrameSender, FrameReceiver) {
    let epoch_secret = Secret32::from_bytes([7; 32]);
    let (epoch, sender) = (42, 3);
    let tx = FrameSender::for_call(&epoch_secret, epoch, sender);
    let mut rx = FrameReceiver::default();
    rx.add_key(
        frame_kid(epoch, sender),
        &BaseKey::for_sender(&epoch_secret, epoch, sender),
    )
    .unwrap();
    (tx, rx)
}

fn bench_frames(c: &mut Criterion) {
    let pt = [0x5au8; OPUS_FRAME];
    let mut g = c.benchmark_group("frame_160B");
    g.throughput(Throughput::Bytes(OPUS_FRAME as u64));

    // The AEAD alone, as a floor for what the frame layer adds.
    let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
    let mut buf = pt;
    g.bench_function("raw_chacha20poly1305", |b| {
        b.iter(|| {
            cipher
                .encrypt_in_place_detached(&Nonce::from([1u8; 12]), b"hdr", &mut buf)
                .unwrap()
        })
    });

    let (mut tx, _) = setup();
    let mut out = Vec::with_capacity(256);
    g.bench_function("encrypt", |b| {
        b.iter(|| tx.encrypt_into(&pt, b"", &mut out).unwrap())
    });

    let (mut tx, mut rx) = setup();
    let mut plain = Vec::with_capacity(256);
    g.bench_function("decrypt", |b| {
        b.iter_batched(
            || tx.encrypt(&pt, b"").unwrap(),
            |frame| rx.decrypt_into(&frame, b"", &mut plain).unwrap(),
            BatchSize::SmallInput,
        )
    });

    let (mut tx, mut rx) = setup();
    let mut wire = Vec::with_capacity(256);
    let mut plain = Vec::with_capacity(256);
    g.bench_function("encrypt+decrypt", |b| {
        b.iter(|| {
            tx.encrypt_into(&pt, b"", &mut wire).unwrap();
            rx.decrypt_into(&wire, b"", &mut plain).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench_frames);
criterion_main!(benches);
