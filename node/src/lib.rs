//! The SecureComm client node.
//!
//! `node/` owns everything that touches the outside world: the disk today (the passphrase-sealed
//! identity in [`store`]), the network and the message store as the node grows. The cryptography
//! it calls lives in `securecomm-noise`, which does no I/O.

pub mod control;
pub mod files;
pub mod guild;
pub mod markdown;
pub mod net;
pub mod runtime;
pub mod sound;
pub mod store;
pub mod sync;
pub mod voice;
