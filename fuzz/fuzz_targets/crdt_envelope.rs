//! Fuzzes the signed-change envelope decoder and opener (signature, Automerge parse, op decode).
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::guild::decode_sync;
use securecomm_crdt::schema::GuildId;
use securecomm_noise::codec::Decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = SignedChange::from_bytes(data) {
        let guild = env.guild;
        let _ = env.open(&guild);
    }
    let _ = decode_sync(data);
    // Also push raw bytes through Automerge's change parser and our op decoder, bypassing the
    // signature (which random input never passes).
    if let Ok(change) = automerge::Change::from_bytes(data.to_vec()) {
        let _ = securecomm_crdt::ops::ops_of(&change);
    }
    let _ = GuildId([0; 32]);
});
