//! Fuzzes the guild message envelope opener, with and without a known sender
//! (`envelope::open`, `envelope::open_from`). Random bytes never pass the AEAD, so the input is
//! also used as a payload: sealed under a fixed key, then one byte chosen by the input is
//! altered; the altered envelope must never open, the genuine one must open to the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::envelope::{self, EnvelopeHeader};
use securecomm_noise::keys::DeviceSigningKey;
use securecomm_noise::secret::Secret32;

fuzz_target!(|data: &[u8]| {
    let key = Secret32::from_bytes([7; 32]);
    let signer = DeviceSigningKey::from_seed(&[1; 32]);
    let other = DeviceSigningKey::from_seed(&[2; 32]).public();
    let _ = envelope::open(&key, b"ctx", data);
    let _ = envelope::open_from(&key, b"ctx", data, &signer.public());

    let header = EnvelopeHeader {
        epoch: 1,
        sender_tag: [3; 16],
        generation: data.len() as u32,
    };
    let Ok(sealed) = envelope::seal(&key, &header, b"ctx", &signer, data) else {
        return;
    };
    let opened = envelope::open_from(&key, b"ctx", &sealed, &signer.public());
    assert!(opened.is_ok_and(|o| &o.payload[..] == data));
    assert!(envelope::open_from(&key, b"ctx", &sealed, &other).is_err());
    if let (Some(&pos), Some(&flip)) = (data.first(), data.get(1)) {
        let mut bad = sealed.clone();
        let i = usize::from(pos) * 7 % bad.len();
        if let Some(b) = bad.get_mut(i) {
            *b ^= flip | 1;
        }
        assert!(envelope::open(&key, b"ctx", &bad).is_err());
        assert!(envelope::open_from(&key, b"ctx", &bad, &signer.public()).is_err());
    }
});
