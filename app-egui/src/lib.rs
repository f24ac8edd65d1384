//! The SecureComm desktop app (egui/eframe).
//!
//! # Design
//!
//! * **Threads.** The window runs on the main thread. The node ([`securecomm_node`]) runs on a
//!   tokio runtime owned by a background thread ([`backend`]). They talk over two bounded
//!   channels: [`backend::Command`]s from the UI (never blocking: a full queue is an error shown
//!   to the user) and [`backend::Event`]s to it, each followed by `request_repaint`.
//! * **State.** [`state::AppState`] is plain data. It changes only in `apply(event)` and in the
//!   `on_*` user actions, which return the commands to send; drawing ([`app`]) reads it. Logic is
//!   therefore testable without a window, and the window is testable with `egui_kittest`
//!   without a GPU.
//! * **Errors.** Every failed command comes back as an event and is listed once in the status
//!   bar until dismissed; a wrong passphrase is shown on the login form and never touches the
//!   identity file (the node's `IdentityStore` guarantees it). Nothing panics.
//! * **Messages.** A channel's messages are turned into equal-height display rows (author
//!   header, one row per line, code lines) when they arrive, so the view lays out only the rows
//!   on screen (`ScrollArea::show_rows`): cost per frame does not grow with the channel.
//!   Rendering uses the pure [`markdown`] model; links are shown, never fetched.
//! * **Guild management.** [`backend::manage`] (commands and typed data from the node's
//!   management methods), [`state::manage`] (forms and actions; permission checks that decide
//!   which buttons are enabled) and [`ui`] (grouped channel list, member list, settings window).
//!   The crdt enforces every permission; the app only mirrors it to disable buttons.
//! * **Voice.** [`voice`] drives the node's `VoiceService`: a task polls the call's status a
//!   few times a second (never the UI thread) and sends snapshots as events; mute, deafen and
//!   push-to-talk are the user's choices, reconciled with the node once per frame; devices and
//!   the push-to-talk key are preferences. Drawing is in [`ui::voice`].

pub mod app;
pub mod backend;
pub mod demo;
pub use securecomm_node::markdown;
pub mod settings;
pub mod state;
pub mod tour;
pub mod ui;
pub mod verify;
pub mod voice;

pub use app::App;
pub use backend::{Backend, BackendConfig};

/// The default data folder: `$SECURECOMM_DATA`, else `$XDG_DATA_HOME/securecomm`, else
/// `$HOME/.local/share/securecomm`, else `./securecomm-data`.
pub fn default_data_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(d) = std::env::var_os("SECURECOMM_DATA") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("securecomm");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/securecomm");
    }
    PathBuf::from("securecomm-data")
}
