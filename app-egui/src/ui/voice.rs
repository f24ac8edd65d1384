//! Voice drawing: who is in a voice channel (under it in the channel list), the voice panel
//! at the bottom of the channel column while in a call, and the settings window's Audio
//! section. State changes go through [`crate::voice::VoiceState`]'s `on_*` actions.

use egui::{Color32, RichText, Sense, Stroke};

use super::{ALARM, GOOD, NOTICE};
use crate::backend::Command;
use crate::state::AppState;
use crate::voice::{AudioDevice, InputMode, Quality, VoiceCommand, VoiceRow};

/// What a click in the channel list's voice rows asks for.
#[derive(Debug)]
pub enum VoiceAction {
    /// Join this voice channel.
    Join(u64),
    /// Set a participant's volume (peer, percent).
    Volume(String, u32),
}

/// The people in voice channel `channel` of `gid`, under its name: a green ring on whoever
/// speaks; right-click someone in our call for their volume.
pub fn channel_members_ui(
    ui: &mut egui::Ui,
    s: &AppState,
    gid: &str,
    channel: u64,
    indent: f32,
    actions: &mut Vec<VoiceAction>,
) {
    let me =
        s.me.as_ref()
            .map_or_else(|| "me".to_owned(), |m| m.display_name.clone());
    let in_call = s.voice.in_channel(gid, channel);
    for row in s.voice.rows(gid, channel, &me) {
        ui.horizontal(|ui| {
            ui.add_space(indent + 16.0);
            speaking_dot(ui, row.speaking);
            let mut text = RichText::new(&row.name);
            if row.speaking {
                text = text.color(GOOD);
            }
            let r = ui.add(egui::Label::new(text).sense(Sense::click()));
            if row.muted {
                ui.label(RichText::new("muted").small().weak());
            }
            if row.deafened {
                ui.label(RichText::new("deafened").small().weak());
            }
            if in_call && !row.me {
                let r = r.on_hover_text("Right-click for volume");
                volume_menu(&r, s, &row, actions);
            } else if !in_call {
                r.on_hover_text("In this voice channel");
            }
        });
    }
}

/// A dot, with a green ring while speaking.
fn speaking_dot(ui: &mut egui::Ui, speaking: bool) {
    let (rect, _) = ui.allocate_exact_size(egui::vec2(14.0, 14.0), Sense::hover());
    let c = rect.center();
    if speaking {
        ui.painter().circle_stroke(c, 6.0, Stroke::new(2.0, GOOD));
        ui.painter().circle_filled(c, 3.5, GOOD);
    } else {
        ui.painter().circle_filled(c, 3.5, Color32::GRAY);
    }
}

fn volume_menu(r: &egui::Response, s: &AppState, row: &VoiceRow, actions: &mut Vec<VoiceAction>) {
    r.context_menu(|ui| {
        ui.label(RichText::new(&row.name).strong());
        let mut v = s.voice.volumes.get(&row.peer).copied().unwrap_or(100);
        let slider = ui.add(
            egui::Slider::new(&mut v, 0..=200)
                .suffix("%")
                .text("Volume"),
        );
        if slider.changed() {
            actions.push(VoiceAction::Volume(row.peer.clone(), v));
        }
        if ui.button("Reset volume").clicked() {
            actions.push(VoiceAction::Volume(row.peer.clone(), 100));
            ui.close();
        }
    });
}

/// Applies the channel list's voice actions.
pub fn apply_actions(s: &mut AppState, gid: &str, actions: Vec<VoiceAction>) -> Vec<Command> {
    let mut cmds = Vec::new();
    for a in actions {
        match a {
            VoiceAction::Join(c) => {
                let prefs = s.settings.prefs.voice.clone();
                cmds.extend(s.voice.on_join(gid, c, &prefs));
            }
            VoiceAction::Volume(peer, p) => cmds.extend(s.voice.on_volume(&peer, p)),
        }
    }
    cmds
}

/// Whether the voice panel has anything to show.
pub fn panel_shown(s: &AppState) -> bool {
    s.voice.status.in_call || s.voice.joining.is_some() || !s.voice.status.ringing.is_empty()
}

/// The voice panel: connection and quality, the channel, mute, deafen, disconnect.
pub fn panel_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    ui.add_space(4.0);
    for r in s.voice.status.ringing.clone() {
        ui.horizontal(|ui| {
            ui.label(RichText::new(format!("📞 {} is calling", r.name())).strong());
            let who = r.user.clone().unwrap_or_else(|| r.name());
            if ui
                .button(format!("Answer {}", r.name()))
                .on_hover_text("Join the call (leaving any other)")
                .clicked()
            {
                cmds.extend(s.voice.on_call(&who, &s.settings.prefs.voice));
            }
        });
    }
    let v = &s.voice;
    if !v.status.in_call && v.joining.is_none() {
        return;
    }
    if !v.status.in_call {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("Connecting to voice…");
        });
        if ui.button("Cancel").clicked() {
            cmds.extend(s.voice.on_leave());
        }
        return;
    }
    let quality = v.quality();
    let colour = quality.colour();
    let summary = quality_summary(s);
    let breakdown = breakdown(s);
    ui.horizontal(|ui| {
        let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), Sense::hover());
        ui.painter().circle_filled(rect.center(), 4.5, colour);
        ui.label(RichText::new("Voice connected").strong().color(colour))
            .on_hover_text(breakdown.as_str());
    });
    ui.label(RichText::new(summary).small())
        .on_hover_text(breakdown.as_str());
    let guild = s
        .guilds
        .iter()
        .find(|g| g.id == s.voice.status.guild)
        .map_or_else(String::new, |g| format!(" / {}", g.name));
    ui.label(RichText::new(format!("🔊 {}{guild}", s.voice.status.channel_name)).small());
    if s.voice.status.may_speak == Some(false) {
        ui.colored_label(
            ALARM,
            RichText::new("You may not speak here (server-muted or no Speak permission)").small(),
        );
    }
    if let Some(e) = &s.voice.status.engine.error {
        ui.colored_label(ALARM, RichText::new(format!("audio stopped: {e}")).small());
    }
    if s.settings.prefs.voice.mode == InputMode::PushToTalk {
        let key = s.settings.prefs.voice.key().name();
        let text = if s.voice.ptt_held && !s.voice.muted {
            format!("Push to talk ({key}): talking")
        } else {
            format!("Push to talk: hold {key} (in this window)")
        };
        ui.label(RichText::new(text).small().weak());
    }
    ui.horizontal(|ui| {
        if ui
            .selectable_label(s.voice.muted, "Mute")
            .on_hover_text("Stop sending your microphone")
            .clicked()
        {
            s.voice.on_toggle_mute();
        }
        if ui
            .selectable_label(s.voice.deafened, "Deafen")
            .on_hover_text("Stop playing the others")
            .clicked()
        {
            s.voice.on_toggle_deafen();
        }
        if ui.button("Disconnect").clicked() {
            cmds.extend(s.voice.on_leave());
        }
    });
    let guild = s.voice.status.guild.clone();
    if ui
        .selectable_label(s.voice.soundboard.open, "🎵 Soundboard")
        .on_hover_text("Play a sound from this guild's library to everyone in the call")
        .clicked()
    {
        s.voice.soundboard.open = !s.voice.soundboard.open;
        if s.voice.soundboard.open {
            cmds.push(Command::Voice(VoiceCommand::Sounds {
                guild: guild.clone(),
            }));
        }
    }
    if s.voice.soundboard.open {
        soundboard_ui(ui, s, &guild, cmds);
    }
}

/// The soundboard: a button per sound of the call's guild, the volume of clips others play,
/// and an upload row (Manage Guild; the node refuses otherwise and says why).
fn soundboard_ui(ui: &mut egui::Ui, s: &mut AppState, guild: &str, cmds: &mut Vec<Command>) {
    let b = &mut s.voice.soundboard;
    ui.group(|ui| {
        match &b.sounds {
            Some((g, sounds)) if g == guild => {
                if sounds.is_empty() {
                    ui.label(
                        RichText::new("No sounds yet: upload one below.")
                            .small()
                            .weak(),
                    );
                }
                ui.horizontal_wrapped(|ui| {
                    for snd in sounds {
                        let label = match &snd.emoji {
                            Some(e) => format!("{e} {}", snd.name),
                            None => format!("▶ {}", snd.name),
                        };
                        if ui
                            .button(label)
                            .on_hover_text(format!(
                                "Play {} ({:.1} s) to everyone in the call",
                                snd.name,
                                f64::from(snd.duration_ms) / 1000.0
                            ))
                            .clicked()
                        {
                            cmds.push(Command::Voice(VoiceCommand::PlaySound {
                                guild: guild.to_owned(),
                                sound: snd.id,
                            }));
                        }
                    }
                });
            }
            _ => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(RichText::new("Loading sounds…").small());
                });
            }
        }
        if let Some(p) = &b.last_played {
            ui.label(RichText::new(format!("Played {p}")).small().weak());
        }
        let mut vol = b.volume;
        if ui
            .add(
                egui::Slider::new(&mut vol, 0..=200)
                    .suffix("%")
                    .text("Soundboard volume"),
            )
            .changed()
        {
            b.volume = vol;
            cmds.push(Command::Voice(VoiceCommand::SoundboardVolume(vol)));
        }
        ui.label(RichText::new("Upload a sound (MP3, OGG, WAV, FLAC; up to 5.2 s)").small());
        ui.horizontal(|ui| {
            let l = ui.label(RichText::new("Sound file").small());
            ui.add(
                egui::TextEdit::singleline(&mut b.upload_path)
                    .hint_text("/path/to/sound.mp3")
                    .desired_width(170.0),
            )
            .labelled_by(l.id);
        });
        ui.horizontal(|ui| {
            let l = ui.label(RichText::new("Sound name").small());
            ui.add(egui::TextEdit::singleline(&mut b.upload_name).desired_width(90.0))
                .labelled_by(l.id);
            let ready = !b.uploading
                && !b.upload_path.trim().is_empty()
                && !b.upload_name.trim().is_empty();
            if ui.add_enabled(ready, egui::Button::new("Upload")).clicked() {
                b.uploading = true;
                cmds.push(Command::Voice(VoiceCommand::UploadSound {
                    guild: guild.to_owned(),
                    path: std::path::PathBuf::from(b.upload_path.trim()),
                    name: b.upload_name.trim().to_owned(),
                }));
                b.upload_path.clear();
                b.upload_name.clear();
            }
            if b.uploading {
                ui.spinner();
            }
        });
    });
}

/// The worst participant in a few words (path, round trip, loss).
fn quality_summary(s: &AppState) -> String {
    let worst = s
        .voice
        .status
        .participants
        .iter()
        .min_by_key(|p| Quality::of(p));
    match worst {
        None => "alone in the channel".to_owned(),
        Some(p) => {
            let path = if p.path.is_empty() {
                "connecting"
            } else {
                p.path.as_str()
            };
            let rtt = p
                .rtt_ms
                .map(|r| format!(" · {r:.0} ms"))
                .unwrap_or_default();
            format!("{path}{rtt} · {:.1}% loss", p.loss * 100.0)
        }
    }
}

/// Every participant's numbers, for the hover.
fn breakdown(s: &AppState) -> String {
    let st = &s.voice.status;
    let mut lines = vec![format!(
        "You: sending {:.0} kbit/s{}",
        st.engine.bitrate_kbps,
        if st.relay_only { " (relay only)" } else { "" }
    )];
    if st.participants.is_empty() {
        lines.push("Nobody else is here yet.".to_owned());
    }
    lines.extend(
        st.participants
            .iter()
            .map(crate::voice::Participant::breakdown),
    );
    lines.join("\n")
}

/// Settings > Audio: devices, input mode, push-to-talk key.
pub fn audio_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    cmds.extend(s.voice.on_audio_shown());
    let before = s.settings.prefs.voice.clone();
    let inputs = s.voice.inputs.clone();
    let outputs = s.voice.outputs.clone();
    device_combo(
        ui,
        "Input device",
        &mut s.settings.prefs.voice.input,
        inputs.as_ref(),
    );
    device_combo(
        ui,
        "Output device",
        &mut s.settings.prefs.voice.output,
        outputs.as_ref(),
    );
    ui.horizontal(|ui| {
        if ui.small_button("Refresh devices").clicked() {
            cmds.extend(s.voice.on_refresh_devices());
        }
        ui.label(
            RichText::new("Device changes apply at the next join.")
                .small()
                .weak(),
        );
        if s.voice.status.in_call && ui.small_button("Rejoin now").clicked() {
            let prefs = s.settings.prefs.voice.clone();
            cmds.extend(s.voice.on_rejoin(&prefs));
        }
    });
    ui.separator();
    ui.label(RichText::new("Input mode").strong());
    ui.horizontal(|ui| {
        let m = &mut s.settings.prefs.voice.mode;
        ui.radio_value(m, InputMode::VoiceActivity, "Voice activity");
        ui.radio_value(m, InputMode::PushToTalk, "Push to talk");
    });
    if s.settings.prefs.voice.mode == InputMode::PushToTalk {
        key_binding_ui(ui, s);
        ui.label(
            RichText::new(
                "Push to talk works only while the SecureComm window has focus: the app does \
                 not see keys pressed in other windows.",
            )
            .small()
            .color(NOTICE),
        );
    }
    if s.settings.prefs.voice != before {
        cmds.extend(s.settings.on_prefs_changed());
    }
}

fn key_binding_ui(ui: &mut egui::Ui, s: &mut AppState) {
    let v = &mut s.voice;
    if v.capturing_key {
        let pressed = ui.input(|i| {
            i.events.iter().find_map(|e| match e {
                egui::Event::Key {
                    key, pressed: true, ..
                } => Some(*key),
                _ => None,
            })
        });
        match pressed {
            Some(egui::Key::Escape) => v.capturing_key = false,
            Some(k) => {
                s.settings.prefs.voice.ptt_key = k.name().to_owned();
                v.capturing_key = false;
            }
            None => {}
        }
    }
    let key = s.settings.prefs.voice.key().name();
    ui.horizontal(|ui| {
        ui.label(format!("Push-to-talk key: {key}"));
        if s.voice.capturing_key {
            ui.label(RichText::new("Press a key… (Esc cancels)").color(NOTICE));
        } else if ui.button("Change key").clicked() {
            s.voice.capturing_key = true;
        }
    });
}

fn device_combo(
    ui: &mut egui::Ui,
    label: &str,
    choice: &mut AudioDevice,
    listed: Option<&Result<Vec<String>, String>>,
) {
    let selected = choice.label().to_owned();
    egui::ComboBox::from_label(label)
        .selected_text(selected)
        .show_ui(ui, |ui| {
            ui.selectable_value(choice, AudioDevice::Default, "Default");
            ui.selectable_value(choice, AudioDevice::None, "None (no sound card)");
            if let Some(Ok(names)) = listed {
                for n in names {
                    ui.selectable_value(choice, AudioDevice::Named(n.clone()), n.as_str());
                }
            }
        });
    match listed {
        None => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(RichText::new("Listing devices…").small());
            });
        }
        Some(Ok(names)) if names.is_empty() => {
            ui.label(
                RichText::new("No device found (choose None to join without a sound card).")
                    .small()
                    .color(NOTICE),
            );
        }
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            ui.label(
                RichText::new(format!("Could not list devices: {e}"))
                    .small()
                    .color(NOTICE),
            );
        }
    }
}
