//! The SecureComm desktop app. Drawing lives in `*_ui` functions; everything they draw is computed
//! from state updated in one place. The message formatting model ([`markdown`]) is pure so it can
//! be tested without a window.

pub mod markdown;
