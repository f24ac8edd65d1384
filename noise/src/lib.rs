//! SecureComm's cryptography. Pure functions and state machines only: no I/O, no clock reads,
//! no global RNG; randomness and time are passed in by the caller.

pub mod codec;
pub mod dcgka;
pub mod dm;
pub mod envelope;
pub mod file;
pub mod fingerprint;
pub mod frame;
pub mod identity;
pub mod keys;
pub mod keystore;
pub mod link;
pub mod oneshot;
pub mod secret;

pub use codec::{Decode, DecodeError, Encode};
