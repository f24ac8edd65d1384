//! File sharing in the app: files attached to the composer (picked by path or dropped on the
//! window), the transfers of files attached to messages (download, progress, save) and image
//! previews.
//!
//! # Previews
//! The sender makes a small JPEG of an image and it travels inside the encrypted message, so
//! showing it fetches nothing. It is still decoded only when the user's client decides to:
//! with "Show image previews" on (the default) and only once its row is on screen. The row
//! asks ([`AppState::on_preview_visible`]); the texture is then cached per file root
//! ([`Previews`]), and a thumbnail that does not decode is remembered as such, not retried.
//! With previews off nothing is decoded and no preview rows are laid out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{AppState, View};
use crate::backend::{Command, Transfer};

/// Files one message carries (the node's limit).
pub const MAX_ATTACHMENTS: usize = securecomm_node::files::wire::MAX_ATTACHMENTS;
/// Largest file the node accepts when the guild sets no smaller limit.
pub const MAX_FILE_SIZE: u64 = securecomm_node::guild::service::files::MAX_FILE_SIZE;
/// Transfers remembered; beyond it finished ones are forgotten first.
pub const MAX_TRANSFERS: usize = 4096;
/// Decoded previews kept as textures (each at most 320 x 320 pixels); beyond it the cache is
/// cleared and visible rows decode again.
pub const MAX_PREVIEWS: usize = 512;
/// Previews decoded per frame at most (the others wait a frame: scrolling stays smooth).
pub const DECODES_PER_FRAME: usize = 4;

/// A file attached to the composer, waiting for Send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Where it is read from.
    pub path: PathBuf,
    /// Its file name.
    pub name: String,
    /// Its size when attached.
    pub size: u64,
}

/// A decoded preview: the texture, or `None` when the thumbnail did not decode.
#[derive(Clone, Default)]
pub struct Previews {
    map: HashMap<String, Option<egui::TextureHandle>>,
    /// Thumbnails decoded so far (tests check that none are when previews are off).
    pub decoded: u64,
}

impl std::fmt::Debug for Previews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Previews")
            .field("cached", &self.map.len())
            .field("decoded", &self.decoded)
            .finish()
    }
}

impl Previews {
    /// The cached preview of `root`: `None` if not decoded yet, `Some(None)` if it failed.
    pub fn get(&self, root: &str) -> Option<Option<&egui::TextureHandle>> {
        self.map.get(root).map(Option::as_ref)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn insert(&mut self, root: String, t: Option<egui::TextureHandle>) {
        if self.map.len() >= MAX_PREVIEWS {
            self.map.clear();
        }
        self.map.insert(root, t);
    }
}

/// The "Save as" dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveDialog {
    /// The file (hex root).
    pub root: String,
    /// Its name.
    pub name: String,
    /// The path typed (a free name in the downloads folder to start with).
    pub path: String,
}

/// Everything about files the window shows.
#[derive(Debug, Clone, Default)]
pub struct FilesState {
    /// Files attached to the composer (at most [`MAX_ATTACHMENTS`]).
    pub attached: Vec<Attached>,
    /// The "Attach a file" dialog is open.
    pub attach_open: bool,
    /// The path typed in it.
    pub attach_path: String,
    /// Live transfer state per file root (from the node's progress events).
    pub transfers: HashMap<String, Transfer>,
    /// Where files were saved this session, per root.
    pub saved: HashMap<String, String>,
    /// The "Save as" dialog, when open.
    pub save: Option<SaveDialog>,
    /// Decoded previews.
    pub previews: Previews,
    /// Files are being dragged over the window.
    pub drop_hover: bool,
}

/// How a file card shows its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardState {
    /// Not here: "Download".
    Remote,
    /// Being fetched (queued, waiting for a member, or receiving).
    Fetching,
    /// Stopped (no member had it, or an error): "Download" again.
    Paused,
    /// Here, encrypted: "Save as".
    Complete,
}

impl CardState {
    fn of(s: &str) -> Self {
        match s {
            "complete" => Self::Complete,
            "paused" => Self::Paused,
            "queued" | "waiting" | "fetching" => Self::Fetching,
            _ => Self::Remote,
        }
    }
}

impl AppState {
    /// "Attach" dialog's "Add", or a file dropped on the window: checks the file and adds it
    /// to the composer's attachments. Errors go to the error list.
    pub fn on_attach_path(&mut self, path: &Path) {
        if let Err(e) = self.try_attach(path) {
            self.error(e);
        }
    }

    fn try_attach(&mut self, path: &Path) -> Result<(), String> {
        if !matches!(self.view, View::Channel { .. }) {
            return Err("files can be attached in guild channels only".into());
        }
        let shown = path.display().to_string();
        if shown.trim().is_empty() {
            return Err("type the path of a file to attach".into());
        }
        if self.files.attached.iter().any(|a| a.path == path) {
            return Ok(());
        }
        if self.files.attached.len() >= MAX_ATTACHMENTS {
            return Err(format!("a message carries at most {MAX_ATTACHMENTS} files"));
        }
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot attach {shown}: {e}"))?;
        if meta.is_dir() {
            return Err(format!(
                "{shown} is a folder; attach the files in it instead"
            ));
        }
        if meta.len() > MAX_FILE_SIZE {
            return Err(format!(
                "{shown} is {}; files are at most {}",
                human_size(meta.len()),
                human_size(MAX_FILE_SIZE)
            ));
        }
        std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{shown} has no file name"))?;
        securecomm_node::files::wire::check_file_name(&name)
            .map_err(|e| format!("cannot attach {shown}: {e}"))?;
        self.files.attached.push(Attached {
            path: path.to_path_buf(),
            name,
            size: meta.len(),
        });
        Ok(())
    }

    /// "Add" in the attach dialog.
    pub fn on_attach_typed(&mut self) {
        let typed = self.files.attach_path.trim().to_owned();
        let before = self.errors.len();
        self.on_attach_path(Path::new(&typed));
        if self.errors.len() == before {
            self.files.attach_path.clear();
            self.files.attach_open = false;
        }
    }

    /// Files dropped on the window.
    pub fn on_dropped(&mut self, paths: Vec<PathBuf>) {
        for p in paths {
            self.on_attach_path(&p);
        }
    }

    /// The "x" on an attachment chip.
    pub fn on_remove_attachment(&mut self, i: usize) {
        if i < self.files.attached.len() {
            self.files.attached.remove(i);
        }
    }

    /// "Download" on a card (or a click on a preview): starts or resumes the fetch.
    pub fn on_download(&mut self, root: &str) -> Vec<Command> {
        if self.card_state(root, "remote") == CardState::Fetching {
            return Vec::new();
        }
        let t = self
            .files
            .transfers
            .entry(root.to_owned())
            .or_insert_with(|| Transfer {
                root: root.to_owned(),
                ..Transfer::default()
            });
        "queued".clone_into(&mut t.state);
        t.error = None;
        vec![Command::FetchFile {
            root: root.to_owned(),
        }]
    }

    /// "Save as" on a complete file: opens the dialog on a free name in the downloads folder.
    pub fn on_open_save(&mut self, root: &str, name: &str) {
        self.files.save = Some(SaveDialog {
            root: root.to_owned(),
            name: name.to_owned(),
            path: free_path(&downloads_dir(), name).display().to_string(),
        });
    }

    /// "Save" in the dialog: never over an existing file.
    pub fn on_save(&mut self) -> Vec<Command> {
        let Some(d) = self.files.save.clone() else {
            return Vec::new();
        };
        let path = PathBuf::from(d.path.trim());
        if d.path.trim().is_empty() {
            self.error("type where to save the file");
            return Vec::new();
        }
        if path.exists() {
            self.error(format!(
                "{} already exists: files are never overwritten; choose another name",
                path.display()
            ));
            return Vec::new();
        }
        self.files.save = None;
        vec![Command::SaveFile {
            root: d.root,
            name: d.name,
            path,
        }]
    }

    /// A transfer moved on: merged into what is known (a bare "done" keeps the sizes).
    pub(super) fn on_transfer(&mut self, t: Transfer) {
        let map = &mut self.files.transfers;
        if map.len() >= MAX_TRANSFERS && !map.contains_key(&t.root) {
            map.retain(|_, x| CardState::of(&x.state) == CardState::Fetching);
            if map.len() >= MAX_TRANSFERS {
                return;
            }
        }
        let e = map.entry(t.root.clone()).or_default();
        let (size, have) = (e.size, e.have);
        *e = t;
        if e.size == 0 {
            e.size = size;
        }
        match e.state.as_str() {
            "complete" => e.have = e.size,
            "paused" if e.have == 0 => e.have = have,
            _ => {}
        }
    }

    /// How a card shows: the live transfer if any, else the state the message came with.
    pub fn card_state(&self, root: &str, loaded: &str) -> CardState {
        CardState::of(
            self.files
                .transfers
                .get(root)
                .map_or(loaded, |t| t.state.as_str()),
        )
    }

    /// A preview row of `root` in message `msg` is on screen: decode its thumbnail once (only
    /// with previews on), into a texture cached per root. Returns whether it decoded one.
    pub fn on_preview_visible(&mut self, ctx: &egui::Context, msg: &str, root: &str) -> bool {
        if !self.settings.prefs.show_previews || self.files.previews.get(root).is_some() {
            return false;
        }
        let thumb = self
            .current_timeline()
            .and_then(|t| t.find(msg))
            .and_then(|e| e.files.iter().find(|f| f.root == root))
            .and_then(|f| f.thumb.clone());
        let Some(thumb) = thumb else {
            return false;
        };
        let texture = securecomm_node::files::thumb::decode(&thumb).and_then(|(w, h, rgba)| {
            let size = [usize::try_from(w).ok()?, usize::try_from(h).ok()?];
            let image = egui::ColorImage::from_rgba_unmultiplied(size, &rgba);
            Some(ctx.load_texture(
                format!("preview {root}"),
                image,
                egui::TextureOptions::LINEAR,
            ))
        });
        self.files.previews.decoded += 1;
        self.files.previews.insert(root.to_owned(), texture);
        true
    }
}

/// Where "Save as" proposes to save: `~/Downloads` if it exists, else the home folder, else
/// the current folder.
fn downloads_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home {
        Some(h) if h.join("Downloads").is_dir() => h.join("Downloads"),
        Some(h) if h.is_dir() => h,
        _ => PathBuf::from("."),
    }
}

/// `dir/name`, or `dir/stem (2).ext` and so on when taken.
pub fn free_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    (2..1000)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// `1.5 MB`, `320 B`: sizes as people read them (powers of 1000, as file managers show).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    #[allow(clippy::cast_precision_loss)] // shown with one decimal
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `3 s`, `2 min 5 s`, `1 h 4 min`: time left.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// An icon for a media type.
pub fn type_icon(mime: &str) -> &'static str {
    match mime.split('/').next().unwrap_or("") {
        "image" => "🖼",
        "audio" => "🎵",
        "video" => "🎞",
        "text" => "📄",
        _ if mime.contains("zip") => "🗜",
        _ => "📎",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_channel() -> AppState {
        let mut s = AppState::new("/tmp/x".into(), true);
        s.view = View::Channel {
            guild: "g".into(),
            channel: 1,
        };
        s
    }

    #[test]
    fn attaching_checks_the_file_and_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = in_channel();
        s.on_attach_path(&dir.path().join("missing.txt"));
        assert!(s.errors.back().is_some_and(|e| e.contains("cannot attach")));
        s.on_attach_path(dir.path());
        assert!(s.errors.back().is_some_and(|e| e.contains("folder")));
        for i in 0..=MAX_ATTACHMENTS {
            let p = dir.path().join(format!("f{i}.txt"));
            std::fs::write(&p, b"x").unwrap();
            s.on_attach_path(&p);
        }
        assert_eq!(s.files.attached.len(), MAX_ATTACHMENTS);
        assert!(s.errors.back().is_some_and(|e| e.contains("at most 10")));
        s.on_remove_attachment(0);
        s.on_remove_attachment(99);
        assert_eq!(s.files.attached.len(), MAX_ATTACHMENTS - 1);

        let mut dm = AppState::new("/tmp/x".into(), true);
        dm.view = View::Dm { user: "u".into() };
        dm.on_attach_path(&dir.path().join("f0.txt"));
        assert!(dm.files.attached.is_empty());
    }

    #[test]
    fn transfers_merge_and_save_never_overwrites() {
        let mut s = in_channel();
        assert_eq!(s.card_state("r", "remote"), CardState::Remote);
        assert_eq!(s.on_download("r").len(), 1);
        assert_eq!(s.card_state("r", "remote"), CardState::Fetching);
        assert!(s.on_download("r").is_empty(), "one fetch at a time");
        s.on_transfer(Transfer {
            root: "r".into(),
            size: 1000,
            have: 400,
            percent: 40.0,
            state: "fetching".into(),
            ..Transfer::default()
        });
        s.on_transfer(Transfer {
            root: "r".into(),
            state: "complete".into(),
            ..Transfer::default()
        });
        let t = &s.files.transfers["r"];
        assert_eq!((t.size, t.have), (1000, 1000));
        assert_eq!(s.card_state("r", "remote"), CardState::Complete);

        let dir = tempfile::tempdir().unwrap();
        let taken = dir.path().join("a.txt");
        std::fs::write(&taken, b"x").unwrap();
        assert_eq!(free_path(dir.path(), "a.txt"), dir.path().join("a (2).txt"));
        s.on_open_save("r", "a.txt");
        if let Some(d) = s.files.save.as_mut() {
            d.path = taken.display().to_string();
        }
        assert!(s.on_save().is_empty());
        assert!(
            s.errors
                .back()
                .is_some_and(|e| e.contains("never overwritten"))
        );
        assert!(s.files.save.is_some(), "the dialog stays for another name");
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(human_duration(125), "2 min 5 s");
    }
}
