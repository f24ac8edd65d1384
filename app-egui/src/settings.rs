//! The settings window's state and its node side: relays, theme, notifications, data folder,
//! identity backup, and restoring from a backup on the first-run screen.
//!
//! * **Where things are kept.** Theme and the notification toggle are [`Prefs`], a small JSON
//!   file `settings.json` in the data folder (read before unlock, so the login screen already
//!   has the user's theme; it holds nothing about the user). Relays the user adds live in the
//!   node's encrypted database ([`securecomm_node::store::settings`]) and are applied to the
//!   running node at once (`Client::add_relay` / `remove_relay` for the relay book, and
//!   `GuildService::set_relays` for the mailbox relays announced to guild members), and again
//!   at every start.
//! * **Relay health** is the relay book's own view (`Client::relays`), polled with the
//!   connection indicator: reserved, reserving or idle, and failures since the last success.
//! * **Notifications.** When enabled, a DM from someone else or a guild message that mentions
//!   `@<display name>` adds an in-app notice and asks for a desktop notification. Desktop
//!   notifications use `notify-rust` over D-Bus in pure Rust (zbus, no C library); without a
//!   notification service (a headless box, a test) the failure is reported once in the
//!   settings window and the in-app notice still appears.
//! * **Backup.** Export needs the current passphrase and a backup passphrase and never
//!   overwrites a file; restore takes a backup file and its passphrase, and seals the identity on
//!   this device under that same passphrase. Both are the node's `IdentityStore` operations
//!   (see `securecomm_node::store::backup` for what they guarantee).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use securecomm_node::guild::GuildService;
use securecomm_node::net::{Client, RelayInfo, RelayState};
use securecomm_node::store::{IdentityStore, StoreError, settings as node_settings};
use serde::{Deserialize, Serialize};

use crate::backend::{Command, Event, Passphrase};

/// The preferences file in the data folder.
pub const PREFS_FILE: &str = "settings.json";
/// Largest preferences file read.
const MAX_PREFS_FILE: u64 = 64 * 1024;
/// In-app notices kept.
pub const MAX_NOTICES: usize = 8;
/// Files counted when measuring the data folder.
pub const MAX_FILES_COUNTED: usize = 100_000;

/// Preferences kept in `settings.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// Dark theme (else light).
    pub dark: bool,
    /// Desktop notifications for mentions and DMs.
    pub notifications: bool,
    /// Send typing indicators and show others' (off: neither, as Signal does).
    pub typing_indicators: bool,
    /// Show image previews inline (the sender's thumbnail, decoded only when on screen; off:
    /// none is decoded).
    pub show_previews: bool,
    /// Audio devices and push-to-talk.
    pub voice: crate::voice::VoicePrefs,
}

impl Default for Prefs {
    fn default() -> Self {
        Self {
            dark: true,
            notifications: true,
            typing_indicators: true,
            show_previews: true,
            voice: crate::voice::VoicePrefs::default(),
        }
    }
}

impl Prefs {
    /// Reads the data folder's preferences; a missing, oversized or unreadable file gives the
    /// defaults (it holds only cosmetic choices).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(PREFS_FILE);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() <= MAX_PREFS_FILE => std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
            _ => Self::default(),
        }
    }

    /// Writes them (through a temporary file and a rename).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir).map_err(|e| format!("saving settings: {e}"))?;
        let tmp = dir.join(format!(".{PREFS_FILE}.tmp"));
        std::fs::write(&tmp, json).map_err(|e| format!("saving settings: {e}"))?;
        std::fs::rename(&tmp, dir.join(PREFS_FILE)).map_err(|e| format!("saving settings: {e}"))
    }
}

/// Writes the preferences file in the order the saves were asked for. Each save runs on its
/// own worker thread, so two quick changes (a mode, then a key) can finish in either order:
/// without this the older one could land last and leave stale settings on disk.
#[derive(Debug, Default)]
pub struct PrefsWriter {
    /// The number of the newest save written.
    written: std::sync::Mutex<u64>,
}

impl PrefsWriter {
    /// Writes save number `n` unless a newer one is already on disk (then it is dropped, and
    /// that is not an error).
    pub fn write(&self, n: u64, prefs: &Prefs, dir: &Path) -> Result<(), String> {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if n <= *written {
            return Ok(());
        }
        prefs.save(dir)?;
        *written = n;
        Ok(())
    }
}

/// One relay row in the settings window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRow {
    /// The relay's peer id.
    pub peer: String,
    /// Its addresses.
    pub addrs: Vec<String>,
    /// `reserved`, `reserving` or `idle`.
    pub state: String,
    /// Configured (settings or command line) rather than discovered.
    pub configured: bool,
    /// Failures since the last accepted reservation.
    pub failures: u32,
}

impl From<RelayInfo> for RelayRow {
    fn from(r: RelayInfo) -> Self {
        Self {
            peer: r.peer.to_string(),
            addrs: r.addrs.iter().map(ToString::to_string).collect(),
            state: match r.state {
                RelayState::Reserved => "reserved",
                RelayState::Reserving => "reserving",
                RelayState::Idle => "idle",
            }
            .to_owned(),
            configured: r.configured,
            failures: r.failures,
        }
    }
}

/// What the settings window asks of the node.
#[derive(Debug)]
pub enum SettingsCommand {
    /// Save and apply a relay typed by the user.
    AddRelay(String),
    /// Remove a saved relay.
    RemoveRelay(String),
    /// Load the saved relays.
    LoadRelays,
    /// Measure the data folder.
    DataSize,
    /// Write the preferences file. The number orders saves: one older than a save already
    /// written is dropped.
    SavePrefs(Prefs, u64),
    /// Write an encrypted backup.
    ExportBackup {
        /// Destination file.
        path: String,
        /// The current passphrase.
        passphrase: Passphrase,
        /// The backup's passphrase.
        backup_passphrase: Passphrase,
    },
    /// Show a desktop notification.
    Notify {
        /// Title.
        title: String,
        /// Body.
        body: String,
    },
}

/// What the node answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsEvent {
    /// The saved relays.
    Saved(Vec<String>),
    /// A relay could not be added or removed (shown in the relays section).
    RelayRefused(String),
    /// The relay book's view.
    Health(Vec<RelayRow>),
    /// The data folder's size in bytes.
    DataSize(u64),
    /// The backup was written (`Ok(path)`) or not.
    Backup(Result<String, String>),
    /// A desktop notification could not be shown.
    NotifyFailed(String),
}

/// The backup export form; its `Debug` never shows the passphrases.
#[derive(Default)]
pub struct BackupForm {
    /// Destination file.
    pub path: String,
    /// Current passphrase.
    pub passphrase: String,
    /// Backup passphrase.
    pub backup_passphrase: String,
    /// Running.
    pub busy: bool,
    /// The last outcome.
    pub result: Option<Result<String, String>>,
}

impl std::fmt::Debug for BackupForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupForm")
            .field("path", &self.path)
            .field("busy", &self.busy)
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl Drop for BackupForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.passphrase);
        zeroize::Zeroize::zeroize(&mut self.backup_passphrase);
    }
}

/// The first-run "Restore from backup" form; its `Debug` never shows the passphrase.
#[derive(Default)]
pub struct RestoreForm {
    /// The form is shown instead of "create".
    pub active: bool,
    /// Backup file.
    pub path: String,
    /// Backup passphrase (cleared after each attempt).
    pub passphrase: String,
}

impl std::fmt::Debug for RestoreForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreForm")
            .field("active", &self.active)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for RestoreForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.passphrase);
    }
}

impl RestoreForm {
    /// The "Restore identity" button: the command, or the reason it cannot be sent.
    pub fn on_restore(&mut self) -> Result<Command, String> {
        let passphrase = Passphrase::new(std::mem::take(&mut self.passphrase));
        let path = self.path.trim().to_owned();
        if path.is_empty() {
            return Err("enter the backup file's path".into());
        }
        if passphrase.is_empty() {
            return Err("enter the backup's passphrase".into());
        }
        Ok(Command::Restore { path, passphrase })
    }
}

/// The settings window's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SettingsTab {
    /// Relays and their health.
    #[default]
    Relays,
    /// Dark or light.
    Theme,
    /// Mentions and DMs.
    Notifications,
    /// Where the data is, and its size.
    Data,
    /// Voice: devices and push-to-talk.
    Audio,
    /// Name, id, backup.
    Identity,
}

impl SettingsTab {
    /// Every tab, in order.
    pub const ALL: [Self; 6] = [
        Self::Relays,
        Self::Theme,
        Self::Notifications,
        Self::Data,
        Self::Audio,
        Self::Identity,
    ];

    /// The tab's title.
    pub fn title(self) -> &'static str {
        match self {
            Self::Relays => "Relays",
            Self::Theme => "Theme",
            Self::Notifications => "Notifications",
            Self::Data => "Data folder",
            Self::Audio => "Audio",
            Self::Identity => "Identity",
        }
    }
}

/// The settings window's state.
#[derive(Debug, Default)]
pub struct SettingsState {
    /// The window is open.
    pub open: bool,
    /// The section shown.
    pub tab: SettingsTab,
    /// Preferences (theme, notifications).
    pub prefs: Prefs,
    /// Saves of `prefs` asked for so far (numbers them, so the newest is the one kept).
    pub prefs_saves: u64,
    /// Relay address being typed.
    pub new_relay: String,
    /// Saved relays.
    pub saved: Vec<String>,
    /// The saved relays were loaded from the node at least once.
    pub saved_loaded: bool,
    /// The relay book.
    pub health: Vec<RelayRow>,
    /// Why the last add/remove failed (shown once, in the relays section).
    pub relay_error: Option<String>,
    /// Data folder size.
    pub data_size: Option<u64>,
    /// Backup export form.
    pub backup: BackupForm,
    /// In-app notices (mentions and DMs), newest last.
    pub notices: VecDeque<String>,
    /// Desktop notifications failed (shown in the window).
    pub notify_error: Option<String>,
}

impl SettingsState {
    /// Folds an event.
    pub fn apply(&mut self, ev: SettingsEvent) -> Vec<Command> {
        match ev {
            SettingsEvent::Saved(list) => {
                self.saved = list;
                self.saved_loaded = true;
                self.relay_error = None;
            }
            SettingsEvent::RelayRefused(why) => self.relay_error = Some(why),
            SettingsEvent::Health(rows) => self.health = rows,
            SettingsEvent::DataSize(n) => self.data_size = Some(n),
            SettingsEvent::Backup(r) => {
                self.backup.busy = false;
                self.backup.result = Some(r);
            }
            SettingsEvent::NotifyFailed(why) => {
                if self.notify_error.is_none() {
                    self.notify_error = Some(why);
                }
            }
        }
        Vec::new()
    }

    /// Opens the window (and measures the data folder).
    pub fn on_open(&mut self) -> Vec<Command> {
        self.open = true;
        vec![
            Command::Settings(SettingsCommand::DataSize),
            Command::Settings(SettingsCommand::LoadRelays),
        ]
    }

    /// "Add relay".
    pub fn on_add_relay(&mut self) -> Vec<Command> {
        let text = self.new_relay.trim().to_owned();
        if text.is_empty() {
            self.relay_error = Some("paste a relay address first".into());
            return Vec::new();
        }
        // Checked here for an immediate answer; the node checks again.
        if let Err(e) = node_settings::parse_relay(&text) {
            self.relay_error = Some(e.to_string());
            return Vec::new();
        }
        self.new_relay.clear();
        self.relay_error = None;
        vec![Command::Settings(SettingsCommand::AddRelay(text))]
    }

    /// "Remove" next to a saved relay.
    pub fn on_remove_relay(&mut self, addr: &str) -> Vec<Command> {
        vec![Command::Settings(SettingsCommand::RemoveRelay(
            addr.to_owned(),
        ))]
    }

    /// The theme or notification toggle changed.
    pub fn on_prefs_changed(&mut self) -> Vec<Command> {
        self.prefs_saves += 1;
        vec![Command::Settings(SettingsCommand::SavePrefs(
            self.prefs.clone(),
            self.prefs_saves,
        ))]
    }

    /// "Export backup".
    pub fn on_export(&mut self) -> Vec<Command> {
        let passphrase = Passphrase::new(std::mem::take(&mut self.backup.passphrase));
        let backup_passphrase = Passphrase::new(std::mem::take(&mut self.backup.backup_passphrase));
        let path = self.backup.path.trim().to_owned();
        let missing = if path.is_empty() {
            Some("enter a file to write the backup to")
        } else if passphrase.is_empty() {
            Some("enter your current passphrase")
        } else if backup_passphrase.is_empty() {
            Some("choose a passphrase for the backup")
        } else {
            None
        };
        if let Some(m) = missing {
            self.backup.result = Some(Err(m.into()));
            return Vec::new();
        }
        self.backup.busy = true;
        self.backup.result = None;
        vec![Command::Settings(SettingsCommand::ExportBackup {
            path,
            passphrase,
            backup_passphrase,
        })]
    }

    /// A message arrived: a notice (and a desktop notification) if it is for us and enabled.
    pub fn on_incoming(&mut self, title: String, body: &str) -> Vec<Command> {
        if !self.prefs.notifications {
            return Vec::new();
        }
        let body: String = body.chars().take(140).collect();
        self.notices.push_back(format!("{title}: {body}"));
        while self.notices.len() > MAX_NOTICES {
            self.notices.pop_front();
        }
        vec![Command::Settings(SettingsCommand::Notify { title, body })]
    }
}

/// Whether `text` mentions `@name` (case-insensitive, not inside a longer word).
pub fn mentions(text: &str, name: &str) -> bool {
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        return false;
    }
    let needle = format!("@{name}");
    let hay = text.to_lowercase();
    hay.match_indices(&needle).any(|(i, _)| {
        hay.get(i + needle.len()..)
            .and_then(|rest| rest.chars().next())
            .is_none_or(|c| !c.is_alphanumeric())
    })
}

/// The user-facing reason a restore failed; the data folder is unchanged in every case.
pub fn restore_error(e: &StoreError) -> String {
    match e {
        StoreError::WrongPassphrase => {
            "Wrong backup passphrase (or the backup was altered). Nothing was restored.".into()
        }
        StoreError::Corrupt(why) => {
            format!("That file is not a SecureComm backup ({why}). Nothing was restored.")
        }
        StoreError::NotFound(p) => format!("No file at {}. Nothing was restored.", p.display()),
        StoreError::AlreadyExists(_) => {
            "This data folder already has an identity; restore into an empty one.".into()
        }
        other => format!("Restore failed: {other}. Nothing was restored."),
    }
}

/// What the node side of settings needs.
#[derive(Debug, Clone)]
pub struct NodeCtx {
    /// The data folder.
    pub data_dir: PathBuf,
    /// The identity file (for backups).
    pub store: IdentityStore,
    /// Relays from the configuration (always announced).
    pub base_relays: Vec<String>,
    /// The guild layer.
    pub guilds: GuildService,
    /// The network.
    pub net: Client,
    /// Orders preference saves.
    pub prefs: std::sync::Arc<PrefsWriter>,
}

fn saved(ctx: &NodeCtx) -> Result<Vec<String>, String> {
    ctx.guilds
        .sync()
        .with_db(|db| node_settings::saved_relays(db))
        .map_err(|e| e.to_string())?
        .map(|v| v.iter().map(ToString::to_string).collect())
        .map_err(|e| e.to_string())
}

/// Announces the configured and saved relays as this node's mailbox relays.
async fn announce(ctx: &NodeCtx, saved: &[String]) {
    let all = ctx
        .base_relays
        .iter()
        .chain(saved)
        .filter_map(|r| node_settings::parse_relay(r).ok())
        .collect();
    ctx.guilds.set_relays(all).await;
}

/// At start: applies the saved relays to the running node; returns the events to show them.
pub async fn on_started(ctx: &NodeCtx) -> Vec<Event> {
    match saved(ctx) {
        Ok(list) => {
            for r in &list {
                if let Ok(a) = node_settings::parse_relay(r) {
                    let _ = ctx.net.add_relay(a).await;
                }
            }
            if !list.is_empty() {
                announce(ctx, &list).await;
            }
            vec![Event::Settings(SettingsEvent::Saved(list))]
        }
        Err(e) => vec![Event::Error(format!("saved relays: {e}"))],
    }
}

/// Parses `text` as a relay address and applies `change` to the saved relay list in the node's
/// database; returns the address and the list as saved, or why not.
fn update_relays(
    ctx: &NodeCtx,
    text: &str,
    change: fn(
        &securecomm_node::store::Db,
        &Multiaddr,
    ) -> Result<Vec<Multiaddr>, node_settings::SettingsError>,
) -> Result<(Multiaddr, Vec<String>), String> {
    let addr = node_settings::parse_relay(text).map_err(|e| e.to_string())?;
    let list = ctx
        .guilds
        .sync()
        .with_db(|db| change(db, &addr))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((addr, list.iter().map(ToString::to_string).collect()))
}

/// Runs a settings command.
pub async fn execute(ctx: &NodeCtx, cmd: SettingsCommand) -> Vec<Event> {
    let ev = |e| vec![Event::Settings(e)];
    match cmd {
        SettingsCommand::AddRelay(text) => {
            match update_relays(ctx, &text, node_settings::add_relay) {
                Ok((addr, list)) => {
                    match ctx.net.add_relay(addr).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(%text, "relay book full; saved for later"),
                        Err(e) => tracing::warn!(error = %e, "relay not applied"),
                    }
                    announce(ctx, &list).await;
                    ev(SettingsEvent::Saved(list))
                }
                Err(e) => ev(SettingsEvent::RelayRefused(e)),
            }
        }
        SettingsCommand::RemoveRelay(text) => {
            match update_relays(ctx, &text, node_settings::remove_relay) {
                Ok((addr, list)) => {
                    let still_used = ctx.base_relays.contains(&text);
                    if !still_used
                        && let Some(peer) = securecomm_node::net::relays::relay_peer(&addr)
                    {
                        let _ = ctx.net.remove_relay(peer).await;
                    }
                    announce(ctx, &list).await;
                    ev(SettingsEvent::Saved(list))
                }
                Err(e) => ev(SettingsEvent::RelayRefused(e)),
            }
        }
        SettingsCommand::LoadRelays => match saved(ctx) {
            Ok(list) => ev(SettingsEvent::Saved(list)),
            Err(e) => ev(SettingsEvent::RelayRefused(e)),
        },
        SettingsCommand::DataSize => {
            let dir = ctx.data_dir.clone();
            match tokio::task::spawn_blocking(move || dir_size(&dir)).await {
                Ok(n) => ev(SettingsEvent::DataSize(n)),
                Err(e) => vec![Event::Error(format!("measuring the data folder: {e}"))],
            }
        }
        SettingsCommand::SavePrefs(p, n) => {
            let dir = ctx.data_dir.clone();
            let writer = ctx.prefs.clone();
            match tokio::task::spawn_blocking(move || writer.write(n, &p, &dir)).await {
                Ok(Ok(())) => Vec::new(),
                Ok(Err(e)) => vec![Event::Error(e)],
                Err(e) => vec![Event::Error(format!("saving settings: {e}"))],
            }
        }
        SettingsCommand::ExportBackup {
            path,
            passphrase,
            backup_passphrase,
        } => {
            let store = ctx.store.clone();
            let dest = PathBuf::from(&path);
            let done = tokio::task::spawn_blocking(move || {
                store.export_backup(
                    &mut rand_core::OsRng,
                    passphrase.expose().as_bytes(),
                    backup_passphrase.expose().as_bytes(),
                    &dest,
                )
            })
            .await;
            let r = match done {
                Ok(Ok(())) => Ok(path),
                Ok(Err(StoreError::WrongPassphrase)) => {
                    Err("Wrong current passphrase. No backup was written.".to_owned())
                }
                Ok(Err(StoreError::AlreadyExists(p))) => Err(format!(
                    "{} already exists; choose another file (backups never overwrite).",
                    p.display()
                )),
                Ok(Err(e)) => Err(format!("Backup failed: {e}")),
                Err(e) => Err(format!("Backup failed: {e}")),
            };
            ev(SettingsEvent::Backup(r))
        }
        SettingsCommand::Notify { title, body } => {
            let shown = tokio::task::spawn_blocking(move || {
                notify_rust::Notification::new()
                    .appname("SecureComm")
                    .summary(&title)
                    .body(&body)
                    .show()
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await;
            match shown {
                Ok(Ok(())) => Vec::new(),
                Ok(Err(e)) => ev(SettingsEvent::NotifyFailed(format!(
                    "desktop notifications are unavailable ({e}); notices show in the window"
                ))),
                Err(e) => ev(SettingsEvent::NotifyFailed(e.to_string())),
            }
        }
    }
}

/// Total size of the files under `dir` (at most [`MAX_FILES_COUNTED`] files, no symlinks).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_FILES_COUNTED {
                return total;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                total = total.saturating_add(e.metadata().map_or(0, |m| m.len()));
            }
        }
    }
    total
}

/// `1.2 MB`-style size.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    let unit = UNITS.get(u).copied().unwrap_or("B");
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {unit}")
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    #[test]
    fn prefs_round_trip_and_bad_files_give_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Prefs::load(dir.path()), Prefs::default());
        let p = Prefs {
            dark: false,
            notifications: false,
            typing_indicators: false,
            show_previews: false,
            voice: crate::voice::VoicePrefs {
                mode: crate::voice::InputMode::PushToTalk,
                ..crate::voice::VoicePrefs::default()
            },
        };
        p.save(dir.path()).unwrap();
        assert_eq!(Prefs::load(dir.path()), p);
        std::fs::write(dir.path().join(PREFS_FILE), b"{not json").unwrap();
        assert_eq!(Prefs::load(dir.path()), Prefs::default());
    }

    #[test]
    fn an_older_save_finishing_last_does_not_overwrite_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SettingsState::default();
        s.prefs.voice.mode = crate::voice::InputMode::PushToTalk;
        let first = s.on_prefs_changed();
        s.prefs.voice.ptt_key = "F".into();
        let second = s.on_prefs_changed();
        let unpack = |c: Vec<Command>| match c.into_iter().next() {
            Some(Command::Settings(SettingsCommand::SavePrefs(p, n))) => (p, n),
            other => panic!("not a save: {other:?}"),
        };
        let ((p1, n1), (p2, n2)) = (unpack(first), unpack(second));
        assert!(n2 > n1);
        // The worker threads finish in the wrong order.
        let w = PrefsWriter::default();
        w.write(n2, &p2, dir.path()).unwrap();
        w.write(n1, &p1, dir.path()).unwrap();
        assert_eq!(Prefs::load(dir.path()).voice.ptt_key, "F");
        // Many racing saves: the newest is what stays.
        let w = std::sync::Arc::new(PrefsWriter::default());
        std::thread::scope(|sc| {
            for n in 1..=16u64 {
                let (w, dir) = (w.clone(), dir.path());
                sc.spawn(move || {
                    let mut p = Prefs::default();
                    p.voice.ptt_key = format!("F{n}");
                    w.write(n, &p, dir).unwrap();
                });
            }
        });
        assert_eq!(Prefs::load(dir.path()).voice.ptt_key, "F16");
    }

    #[test]
    fn relay_input_is_validated_before_sending() {
        let mut s = SettingsState::default();
        s.new_relay = "not an address".into();
        assert!(s.on_add_relay().is_empty());
        assert!(s.relay_error.as_deref().unwrap().contains("multiaddr"));
        s.new_relay = "/ip4/127.0.0.1/tcp/4001".into();
        assert!(s.on_add_relay().is_empty());
        assert!(s.relay_error.as_deref().unwrap().contains("/p2p/"));
        s.new_relay =
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
                .into();
        assert!(matches!(
            s.on_add_relay().as_slice(),
            [Command::Settings(SettingsCommand::AddRelay(_))]
        ));
        assert!(s.relay_error.is_none());
        assert!(s.new_relay.is_empty());
    }

    #[test]
    fn mentions_match_whole_names_only() {
        assert!(mentions("hey @Ann, look", "ann"));
        assert!(mentions("@ann", "Ann"));
        assert!(!mentions("hey @Annabel", "Ann"));
        assert!(!mentions("hey Ann", "Ann"));
        assert!(!mentions("@", ""));
    }

    #[test]
    fn notices_respect_the_toggle_and_are_bounded() {
        let mut s = SettingsState::default();
        for i in 0..20 {
            assert_eq!(s.on_incoming(format!("t{i}"), "body").len(), 1);
        }
        assert_eq!(s.notices.len(), MAX_NOTICES);
        s.prefs.notifications = false;
        assert!(s.on_incoming("x".into(), "y").is_empty());
    }

    #[test]
    fn forms_redact_passphrases() {
        let mut b = BackupForm::default();
        b.passphrase = "hunter2-secret".into();
        b.backup_passphrase = "swordfish-secret".into();
        let d = format!("{b:?}");
        assert!(!d.contains("hunter2") && !d.contains("swordfish"), "{d}");
        let mut r = RestoreForm::default();
        r.passphrase = "hunter2-secret".into();
        assert!(!format!("{r:?}").contains("hunter2"));
    }

    #[test]
    fn export_form_checks_fields_and_clears_passphrases() {
        let mut s = SettingsState::default();
        s.backup.path = "/tmp/x".into();
        s.backup.passphrase = "a".into();
        assert!(s.on_export().is_empty());
        assert!(s.backup.result.as_ref().unwrap().is_err());
        assert!(s.backup.passphrase.is_empty());
        s.backup.passphrase = "a".into();
        s.backup.backup_passphrase = "b".into();
        assert_eq!(s.on_export().len(), 1);
        assert!(s.backup.busy);
        assert!(s.backup.passphrase.is_empty() && s.backup.backup_passphrase.is_empty());
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(1_500), "1.5 KB");
        assert_eq!(human_size(2_000_000), "2.0 MB");
    }
}
