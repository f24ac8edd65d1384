//! Decrypts an arbitrary byte stream as an encrypted file under a fixed key, with reads of
//! varying sizes. Must never panic; forged input must end in an error.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use securecomm_noise::file::FileDecryptor;
use securecomm_noise::file::FileKey;

fuzz_target!(|data: &[u8]| {
    let key = FileKey::from_bytes([0x29; 32]);
    let step = data.first().map_or(1, |b| usize::from(*b) + 1);
    if let Ok(mut dec) = FileDecryptor::new(&key, data) {
        let mut buf = vec![0u8; step];
        let mut total = 0usize;
        loop {
            match dec.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(total <= data.len());
    }
});
