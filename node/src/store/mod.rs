//! On-disk state. Nothing is written in clear: the identity is sealed under the user's
//! passphrase (Argon2id + ChaCha20-Poly1305, see `securecomm_noise::keystore`).

pub mod backup;
pub mod contacts;
pub mod db;
pub mod identity;
pub mod search;
pub mod settings;

pub use db::{Db, DbError};
pub use identity::{IdentityStore, LocalProfile, StoreError};
