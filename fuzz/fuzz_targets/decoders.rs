//! Every remaining strict decoder in `securecomm-noise` that has no target of its own: the first
//! byte picks the decoder, the rest is its input. None may panic; each must reject trailing bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::codec::Decode;
use securecomm_noise::dm::{InitialHeader, PublicIdentity, RatchetHeader, RatchetMessage};
use securecomm_noise::file::FileHeader;
use securecomm_noise::keys::{DevicePublicKey, DhPublic, RootPublicKey, Signature};
use securecomm_noise::oneshot::{PrekeyStore, SignedPrekey};

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else { return };
    match which % 11 {
        0 => drop(PublicIdentity::from_bytes(input)),
        1 => drop(InitialHeader::from_bytes(input)),
        2 => drop(RatchetHeader::from_bytes(input)),
        3 => drop(RatchetMessage::from_bytes(input)),
        4 => drop(FileHeader::from_bytes(input)),
        5 => drop(SignedPrekey::from_bytes(input)),
        6 => drop(PrekeyStore::from_bytes(input)),
        7 => drop(securecomm_noise::dm::PrekeyStore::from_bytes(input)),
        8 => drop(<RootPublicKey as Decode>::from_bytes(input)),
        9 => drop(<DevicePublicKey as Decode>::from_bytes(input)),
        _ => {
            drop(DhPublic::from_bytes(input));
            drop(Signature::from_bytes(input));
        }
    }
});
