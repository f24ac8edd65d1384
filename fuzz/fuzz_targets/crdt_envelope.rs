//! Fuzzes the signed-change envelope decoder and opener (signature, Automerge parse, op decode)
//! and the sync-message decoder. Random input never carries a valid signature, so the Automerge
//! parser and the op decoder are also fed the raw bytes directly.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use securecomm_crdt::envelope::{SignedChange, parse_change};
use securecomm_crdt::guild::decode_sync;
use securecomm_crdt::ops::ops_of;
use securecomm_noise::codec::Decode;

static QUIET: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // Automerge 0.12 panics on some malformed input; the crate catches those panics
    // (`parse_change`). libfuzzer-sys's hook would abort even on a caught panic, so replace it
    // with a silent one: a panic that escapes the crate still unwinds into libfuzzer-sys's own
    // catch and is reported as a crash.
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    if let Ok(env) = SignedChange::from_bytes(data) {
        let guild = env.guild;
        let _ = env.open(&guild);
    }
    if let Ok((control, _)) = decode_sync(data) {
        // What `Guild::receive_sync_message` hands to Automerge (panics caught there too).
        let _ = std::panic::catch_unwind(|| automerge::sync::Message::decode(&control));
    }
    if let Ok(change) = parse_change(data) {
        let _ = ops_of(&change);
    }
});
