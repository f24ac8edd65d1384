//! Differential fuzzing of the crdt crate's ZIP-215 batch verifier: for any list of signature
//! items (valid signatures by a few fixed keys, then mutated by the input: bit flips, replaced
//! `R` or `S`, wrong messages), batch verification must give exactly the single-verification
//! answer for every item. A mismatch panics, which the fuzzer reports.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use securecomm_crdt::verify::{SigItem, verify_batch, verify_each};
use securecomm_noise::keys::{DeviceSigningKey, SigLabel};

const L: SigLabel = SigLabel("SecureComm/fuzz/batch v1");

fn keys() -> &'static [DeviceSigningKey] {
    static KEYS: OnceLock<Vec<DeviceSigningKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (1u8..=4)
            .map(|i| DeviceSigningKey::from_seed(&[i; 32]))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut items = Vec::new();
    // Each item: key index, mode, 8 message bytes, mutation position, 32 replacement bytes.
    for chunk in data.chunks_exact(44).take(24) {
        let (head, rest) = chunk.split_at(11);
        let (pos, repl) = rest.split_at(1);
        let key = &keys()[usize::from(head[0]) % keys().len()];
        let mode = if head[1] & 0x80 == 0 { 0 } else { head[1] };
        let msg = &head[3..11];
        let mut sig = key.sign(L, msg);
        if mode & 1 != 0 {
            sig.0[usize::from(pos[0]) % 64] ^= head[2] | 1;
        }
        if mode & 2 != 0 {
            sig.0[..32].copy_from_slice(repl);
        }
        if mode & 4 != 0 {
            sig.0[32..].copy_from_slice(repl);
        }
        let signed_msg: &[u8] = if mode & 8 != 0 { &head[2..10] } else { msg };
        let public = if mode & 16 != 0 {
            keys()[(usize::from(head[0]) + 1) % keys().len()].public()
        } else {
            key.public()
        };
        items.push(SigItem::device(&public, L, &[signed_msg], &sig));
    }
    let single: Vec<bool> = items.iter().map(SigItem::verify).collect();
    assert_eq!(verify_each(&items), single);
    assert_eq!(verify_batch(&items), single.iter().all(|b| *b));
});
