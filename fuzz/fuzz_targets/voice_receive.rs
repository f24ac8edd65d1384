//! Feeds a voice receiver (`securecomm-node::voice::pipeline`) arbitrary traffic: raw packets
//! (forgeries, garbage, truncations) and arbitrary Opus payloads that pass frame decryption
//! (encrypted with the stream's real key, so libopus, the FEC/PLC paths and the jitter buffer
//! see them), arbitrary redundancy plaintexts (`MEDIA_RED`: copy tables and copies) under the
//! real key, interleaved with playout ticks at arbitrary times. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::voice::jitter::JitterConfig;
use securecomm_node::voice::pipeline::{Concealment, VoiceReceiver};
use securecomm_node::voice::wire::MEDIA_RED;
use securecomm_node::voice::{FRAME_SAMPLES, FRAME_US};
use securecomm_noise::frame::{BaseKey, FrameReceiver, FrameSender, frame_kid};
use securecomm_noise::secret::Secret32;

fuzz_target!(|data: &[u8]| {
    let secret = Secret32::from_bytes([0x42; 32]);
    let mut tx = FrameSender::for_call(&secret, 1, 3);
    let mut keys = FrameReceiver::default();
    if keys
        .add_key(frame_kid(1, 3), &BaseKey::for_sender(&secret, 1, 3))
        .is_err()
    {
        return;
    }
    let Ok(mut rx) = VoiceReceiver::new(keys, JitterConfig::default(), Concealment::default())
    else {
        return;
    };
    let mut now = 0u64;
    let mut out = [0i16; FRAME_SAMPLES];
    let mut rest = data;
    // Records: [op][len][bytes...]; op decides what the bytes are.
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        match op % 5 {
            0 => {
                let _ = rx.receive(chunk, now);
            }
            1 => {
                if let Ok(packet) = tx.encrypt(chunk, b"") {
                    let _ = rx.receive(&packet, now);
                }
            }
            4 => {
                if let Ok(packet) = tx.encrypt(chunk, &[MEDIA_RED]) {
                    let _ = rx.receive_typed(&packet, now, MEDIA_RED);
                }
            }
            2 => {
                now = now.saturating_add(u64::from(*len) * 1000);
                let _ = rx.play(now, &mut out);
            }
            _ => {
                now = now.saturating_add(FRAME_US);
                let _ = rx.play(now, &mut out);
            }
        }
    }
});
