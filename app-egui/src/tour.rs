//! The screenshot tour: `securecomm --screenshots DIR` seeds a small community (three real
//! nodes on loopback, see [`crate::demo::seed_community`]), opens the real window on the
//! owner's data folder and walks through the main screens, saving each as a PNG via eframe's
//! own screenshot command (what the GPU drew, not a re-rendering). `scripts/screenshots.sh`
//! runs it under Xvfb.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egui::{ColorImage, ViewportCommand};

use crate::app::App;
use crate::backend::BackendConfig;
use crate::state::{Phase, View};

/// The passphrase of the seeded owner.
pub const PASSPHRASE: &str = "tour passphrase";

/// One stop of the tour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Unlock,
    Channel,
    Dm,
    Roles,
    Safety,
    Settings,
    Voice,
    Preview,
}

impl Stop {
    fn file(self) -> &'static str {
        match self {
            Self::Unlock => "01-unlock.png",
            Self::Channel => "02-channel.png",
            Self::Dm => "03-direct-message.png",
            Self::Roles => "04-guild-settings-roles.png",
            Self::Safety => "05-safety-number.png",
            Self::Settings => "06-settings.png",
            Self::Voice => "07-voice.png",
            Self::Preview => "08-image-preview.png",
        }
    }
}

const STOPS: [Stop; 8] = [
    Stop::Unlock,
    Stop::Channel,
    Stop::Dm,
    Stop::Roles,
    Stop::Safety,
    Stop::Settings,
    Stop::Voice,
    Stop::Preview,
];

/// The tour, wrapping the app.
pub struct Tour {
    app: App,
    out: PathBuf,
    bob: String,
    at: usize,
    /// When the current stop's screen was set up (frames settle before the shot).
    since: Instant,
    requested: bool,
    outcome: Arc<Mutex<Outcome>>,
}

/// What the tour did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Files written.
    pub saved: Vec<PathBuf>,
    /// The first failure.
    pub error: Option<String>,
}

impl std::fmt::Debug for Tour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tour")
            .field("out", &self.out)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl Tour {
    /// Opens the app on `cfg` (a seeded owner's folder); shots go to `out`.
    fn new(
        cfg: BackendConfig,
        out: &Path,
        bob: String,
        outcome: Arc<Mutex<Outcome>>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(out)?;
        Ok(Self {
            app: App::new(cfg)?,
            out: out.to_path_buf(),
            bob,
            at: 0,
            since: Instant::now(),
            requested: false,
            outcome,
        })
    }

    fn fail(&self, ctx: &egui::Context, why: String) {
        if let Ok(mut o) = self.outcome.lock() {
            o.error.get_or_insert(why);
        }
        ctx.send_viewport_cmd(ViewportCommand::Close);
    }

    /// Whether the current stop's screen is ready to be taken.
    fn ready(&self, stop: Stop) -> bool {
        let s = &self.app.state;
        let settled = self.since.elapsed() > Duration::from_millis(800);
        settled
            && match stop {
                Stop::Unlock => s.phase == Phase::Login,
                Stop::Channel => {
                    s.phase == Phase::Main
                        && matches!(s.view, View::Channel { .. })
                        && s.current_timeline()
                            .is_some_and(|t| t.entries().len() >= 10)
                        && s.guild.as_ref().is_some_and(|g| s.members.contains_key(g))
                }
                Stop::Dm => s
                    .current_timeline()
                    .is_some_and(|t| !t.entries().is_empty()),
                Stop::Roles => {
                    s.manage.settings.open
                        && s.manage.settings.tab == crate::state::manage::Tab::Roles
                        && s.manage.settings.role.role.is_some()
                }
                Stop::Safety => s.verify.safety.is_some(),
                Stop::Settings => s.settings.open && s.settings.data_size.is_some(),
                Stop::Voice => s.voice.status.in_call && s.voice.status.channel_name == "Lounge",
                // Bob's photo in #general, its preview decoded (previews are on by default).
                Stop::Preview => s
                    .current_timeline()
                    .and_then(|t| t.entries().iter().rev().find(|e| !e.files.is_empty()))
                    .and_then(|e| e.files.first())
                    .is_some_and(|f| matches!(s.files.previews.get(&f.root), Some(Some(_)))),
            }
    }

    /// Steers the app towards `stop`'s screen once what it needs has loaded.
    fn steer(&mut self, stop: Stop) {
        if stop == Stop::Roles {
            // Once the guild's roles arrived, show the Moderator role in the editor.
            let s = &mut self.app.state;
            let moderator = s
                .guild
                .as_ref()
                .and_then(|g| s.manage.data.get(g))
                .and_then(|d| d.roles.iter().find(|r| r.name == "Moderator"))
                .map(|r| r.id);
            if let Some(id) = moderator
                && s.manage.settings.role.role != Some(id)
            {
                s.manage.settings.tab = crate::state::manage::Tab::Roles;
                s.on_select_role(id);
            }
            return;
        }
        if stop != Stop::Channel && stop != Stop::Preview {
            return;
        }
        let s = &mut self.app.state;
        let Some(guild) = s.guild.clone() else {
            return;
        };
        let general = s
            .channels
            .get(&guild)
            .and_then(|cs| cs.iter().find(|c| c.name == "general"))
            .map(|c| c.id);
        if let Some(id) = general
            && !matches!(&s.view, View::Channel { channel, .. } if *channel == id)
        {
            let cmds = s.on_select_channel(&guild, id);
            self.app.dispatch(cmds);
        }
    }

    /// Sets up the screen after `done` was taken.
    fn next(&mut self, done: Stop) {
        let s = &mut self.app.state;
        let cmds = match done {
            Stop::Unlock => {
                s.login.passphrase = PASSPHRASE.to_owned();
                s.on_login()
            }
            Stop::Channel => s.on_select_dm(&self.bob.clone()),
            Stop::Dm => {
                // Back to the guild, and its settings window.
                let guild = s.guilds.first().map(|g| g.id.clone());
                let mut cmds = s.on_select_guild(guild);
                cmds.extend(s.on_open_settings());
                cmds
            }
            Stop::Roles => {
                s.manage.settings.open = false;
                s.verify.on_open(&self.bob.clone(), "Bob")
            }
            Stop::Safety => {
                s.verify.on_close();
                s.settings.tab = crate::settings::SettingsTab::Identity;
                s.settings.on_open()
            }
            Stop::Settings => {
                // Into the Lounge voice channel (null audio devices: the tour's config).
                s.settings.open = false;
                let lounge = s.guild.clone().and_then(|g| {
                    s.channels
                        .get(&g)
                        .and_then(|cs| cs.iter().find(|c| c.kind == "voice"))
                        .map(|c| (g, c.id))
                });
                match lounge {
                    Some((g, c)) => {
                        let prefs = s.settings.prefs.voice.clone();
                        s.voice.on_join(&g, c, &prefs)
                    }
                    None => Vec::new(),
                }
            }
            Stop::Voice | Stop::Preview => Vec::new(),
        };
        self.app.dispatch(cmds);
        self.since = Instant::now();
    }

    fn save(&mut self, stop: Stop, image: &ColorImage) -> Result<PathBuf, String> {
        let path = self.out.join(stop.file());
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let [w, h] = image.size;
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(file),
            u32::try_from(w).map_err(|e| e.to_string())?,
            u32::try_from(h).map_err(|e| e.to_string())?,
        );
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
        writer.write_image_data(&bytes).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
        Ok(path)
    }
}

impl eframe::App for Tour {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.app.frame(ctx);
        // Keep drawing: the tour advances on time, not only on events.
        ctx.request_repaint_after(Duration::from_millis(50));
        let Some(stop) = STOPS.get(self.at).copied() else {
            ctx.send_viewport_cmd(ViewportCommand::Close);
            return;
        };
        if self.since.elapsed() > Duration::from_secs(120) {
            self.fail(
                ctx,
                format!(
                    "the {stop:?} screen never became ready (errors: {:?})",
                    self.app.state.errors
                ),
            );
            return;
        }
        let shot = ctx.input(|i| {
            i.events.iter().find_map(|e| match e {
                egui::Event::Screenshot { image, .. } => Some(image.clone()),
                _ => None,
            })
        });
        if let Some(image) = shot {
            match self.save(stop, &image) {
                Ok(p) => {
                    if let Ok(mut o) = self.outcome.lock() {
                        o.saved.push(p);
                    }
                }
                Err(e) => {
                    self.fail(ctx, e);
                    return;
                }
            }
            self.requested = false;
            self.at += 1;
            self.next(stop);
        } else if !self.requested && {
            self.steer(stop);
            self.ready(stop)
        } {
            self.requested = true;
            ctx.send_viewport_cmd(ViewportCommand::Screenshot(egui::UserData::default()));
        }
    }
}

/// Seeds a community in a fresh temporary folder, opens the window on it and saves the
/// screenshots into `out`. Needs a display (`scripts/screenshots.sh` starts Xvfb).
pub fn run(out: &Path) -> Result<Vec<PathBuf>, String> {
    let base = std::env::temp_dir().join(format!("securecomm-tour-{}", std::process::id()));
    let result = run_in(&base, out);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn run_in(base: &Path, out: &Path) -> Result<Vec<PathBuf>, String> {
    let cfg = BackendConfig::loopback_for_tests(base.join("owner"));
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let community = rt.block_on(crate::demo::seed_community(
        &cfg.data_dir,
        &base.join("others"),
        PASSPHRASE,
        cfg.kdf,
    ))?;
    drop(rt);
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let tour = Tour::new(cfg, out, community.bob, outcome.clone()).map_err(|e| e.to_string())?;
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("SecureComm")
            .with_inner_size([1100.0, 700.0]),
        ..Default::default()
    };
    eframe::run_native(
        "SecureComm",
        options,
        Box::new(move |_cc| Ok(Box::new(tour) as Box<dyn eframe::App>)),
    )
    .map_err(|e| e.to_string())?;
    let mut o = outcome
        .lock()
        .map_err(|_| "tour state poisoned".to_owned())?;
    if let Some(e) = o.error.take() {
        return Err(e);
    }
    if o.saved.len() != STOPS.len() {
        return Err(format!(
            "the window closed after {} of {} screenshots",
            o.saved.len(),
            STOPS.len()
        ));
    }
    Ok(std::mem::take(&mut o.saved))
}
