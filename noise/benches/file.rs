//! File encryption throughput: `FileEncryptor` writing 16 MiB into a `Vec` and into a sink, against raw
//! ChaCha20-Poly1305 `encrypt_in_place_detached` over the same data in the same 64 KiB chunks,
//! in the same run. Goal: the encryptor (without chunk hashing) at >= 90% of raw. The variant
//! with SHA-256 chunk hashes is reported separately.
//!
//! `cargo bench -p securecomm-noise --bench file -- --warm-up-time 1 --measurement-time 3`

// Benchmark setup failing is a bug in the benchmark; panicking is the right report.
#![allow(clippy::unwrap_used)]

use std::io::Write;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use securecomm_noise::file::{DEFAULT_CHUNK_SIZE, FileEncryptor, FileKey, FileParams};

const SIZE: usize = 16 * 1024 * 1024;

fn bench_file(c: &mut Criterion) {
    let data: Vec<u8> = (0..SIZE).map(|i| i as u8).collect();
    let key = FileKey::from_bytes([9; 32]);
    let mut rng = StdRng::seed_from_u64(1);
    let mut g = c.benchmark_group("file_16MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(20);

    let cipher = ChaCha20Poly1305::new(&[9u8; 32].into());
    let mut raw = data.clone();
    g.bench_function("raw_chacha20poly1305_in_place", |b| {
        b.iter(|| {
            for (i, chunk) in raw.chunks_mut(DEFAULT_CHUNK_SIZE as usize).enumerate() {
                let mut n = [0u8; 12];
                n[7..11].copy_from_slice(&(i as u32).to_be_bytes());
                let tag = cipher
                    .encrypt_in_place_detached(&Nonce::from(n), b"", chunk)
                    .unwrap();
                std::hint::black_box(tag);
            }
        })
    });

    let mut out: Vec<u8> = Vec::with_capacity(SIZE + SIZE / 1024 + 64);
    for (name, hashes) in [
        ("file_encryptor", false),
        ("file_encryptor_with_hashes", true),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let params = FileParams {
                    chunk_size: DEFAULT_CHUNK_SIZE,
                    chunk_hashes: hashes,
                };
                let mut enc = FileEncryptor::new(&key, &mut out, params, &mut rng).unwrap();
                enc.write_all(&data).unwrap();
                enc.finish().unwrap().chunk_count
            })
        });
    }
    // The same encryptor handing each chunk to a writer that discards it, as a socket or a file
    // writer that consumes chunks would: measures the encryptor's own cost, without the extra
    // 16 MiB of memory traffic a `Vec` destination adds (the raw baseline encrypts in place).
    g.bench_function("file_encryptor_to_sink", |b| {
        b.iter(|| {
            let params = FileParams {
                chunk_size: DEFAULT_CHUNK_SIZE,
                chunk_hashes: false,
            };
            let mut enc = FileEncryptor::new(&key, std::io::sink(), params, &mut rng).unwrap();
            enc.write_all(&data).unwrap();
            enc.finish().unwrap().chunk_count
        })
    });
    g.finish();
}

criterion_group!(benches, bench_file);
criterion_main!(benches);
