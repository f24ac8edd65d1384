//! Verification in the app: safety numbers, the verified badge and key-change warnings.
//!
//! The node keeps the record ([`securecomm_node::store::contacts`]: who is verified, with which
//! key, name and devices, and what changed since). This module is the app's side of it:
//!
//! * [`VerifyCommand`]s the UI sends and [`VerifyEvent`]s the backend answers, run by
//!   [`execute`] on the node's runtime;
//! * [`VerifyState`], folded from those events: the contact list (for badges), the warnings (for
//!   the banner) and the open safety-number screen with its QR modules, encoded once when the
//!   number arrives so drawing only paints.
//!
//! The safety number is [`contacts::safety_number`] over the two root keys with their hex as
//! user ids: the same digits the other party's app and `securecomm-node safety-number` show.
//! The QR code carries `SafetyNumber::qr_payload` (version, our fingerprint, theirs), so a
//! scanner on the other side can compare both halves at once.

use std::collections::HashMap;

use securecomm_node::guild::GuildService;
use securecomm_node::store::contacts::{self, Warning};
use securecomm_noise::keys::RootPublicKey;

use crate::backend::{Command, Event, MemberInfo};

/// One contact as the app shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactInfo {
    /// User id (hex root key).
    pub user: String,
    /// Last seen name.
    pub name: String,
    /// Verified (for this key).
    pub verified: bool,
    /// When verified, ms since the Unix epoch.
    pub verified_at: Option<u64>,
}

/// A warning for the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarningInfo {
    /// Another key uses the name of a verified contact: an alarm.
    KeyChanged {
        /// The name.
        name: String,
        /// The verified user (hex).
        verified: String,
        /// The other key now using the name (hex).
        current: String,
    },
    /// A verified contact's devices changed: a notice.
    DevicesChanged {
        /// The contact (hex).
        user: String,
        /// Their name.
        name: String,
        /// New devices.
        added: usize,
        /// Devices gone.
        removed: usize,
    },
}

/// What the UI asks about verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyCommand {
    /// Compute the safety number with a user and open the screen.
    Open {
        /// User id (hex).
        user: String,
        /// The name to show.
        name: String,
    },
    /// Mark a user verified (`true`) or clear it.
    Mark {
        /// User id (hex).
        user: String,
        /// Verified or not.
        verified: bool,
    },
    /// Reload contacts and warnings.
    Load,
}

/// What the backend answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyEvent {
    /// A safety number to show.
    Safety {
        /// User id (hex).
        user: String,
        /// Their name.
        name: String,
        /// The 60 digits.
        digits: String,
        /// The QR payload.
        qr_payload: Vec<u8>,
    },
    /// Contacts and warnings.
    Contacts {
        /// Every contact.
        contacts: Vec<ContactInfo>,
        /// Current warnings.
        warnings: Vec<WarningInfo>,
    },
}

/// A QR code's modules, row by row (`true` is dark).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QrModules {
    /// Modules per side.
    pub width: usize,
    /// `width * width` modules.
    pub dark: Vec<bool>,
}

impl QrModules {
    /// Encodes `payload` (binary mode, error correction M).
    pub fn encode(payload: &[u8]) -> Result<Self, String> {
        let code = qrcode::QrCode::with_error_correction_level(payload, qrcode::EcLevel::M)
            .map_err(|e| format!("cannot draw the QR code: {e}"))?;
        Ok(Self {
            width: code.width(),
            dark: code
                .to_colors()
                .into_iter()
                .map(|c| c == qrcode::Color::Dark)
                .collect(),
        })
    }
}

/// The open safety-number screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyView {
    /// User id (hex).
    pub user: String,
    /// Their name.
    pub name: String,
    /// The 60 digits.
    pub digits: String,
    /// The QR code.
    pub qr: QrModules,
}

impl SafetyView {
    /// The digits as 12 groups of 5.
    pub fn groups(&self) -> Vec<String> {
        self.digits
            .as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }
}

/// Verification state of the window.
#[derive(Debug, Clone, Default)]
pub struct VerifyState {
    /// Contacts by user id (hex).
    pub contacts: HashMap<String, ContactInfo>,
    /// Warnings for the banner.
    pub warnings: Vec<WarningInfo>,
    /// Notices the user dismissed (device changes acknowledged for this session).
    pub dismissed: Vec<WarningInfo>,
    /// The safety-number screen, when open.
    pub safety: Option<SafetyView>,
    /// Asked for, not answered yet.
    pub pending: Option<String>,
}

impl VerifyState {
    /// Whether `user` is verified.
    pub fn is_verified(&self, user: &str) -> bool {
        self.contacts.get(user).is_some_and(|c| c.verified)
    }

    /// Key-change alarms (never dismissible: they end by verifying or clearing).
    pub fn alarms(&self) -> impl Iterator<Item = &WarningInfo> {
        self.warnings
            .iter()
            .filter(|w| matches!(w, WarningInfo::KeyChanged { .. }))
    }

    /// Device notices not dismissed.
    pub fn notices(&self) -> impl Iterator<Item = &WarningInfo> {
        self.warnings.iter().filter(|w| {
            matches!(w, WarningInfo::DevicesChanged { .. }) && !self.dismissed.contains(w)
        })
    }

    /// Folds an event; returns follow-up commands.
    pub fn apply(&mut self, ev: VerifyEvent) -> Vec<Command> {
        match ev {
            VerifyEvent::Safety {
                user,
                name,
                digits,
                qr_payload,
            } => {
                self.pending = None;
                let qr = QrModules::encode(&qr_payload).unwrap_or_default();
                self.safety = Some(SafetyView {
                    user,
                    name,
                    digits,
                    qr,
                });
            }
            VerifyEvent::Contacts { contacts, warnings } => {
                self.contacts = contacts.into_iter().map(|c| (c.user.clone(), c)).collect();
                self.dismissed.retain(|d| warnings.contains(d));
                self.warnings = warnings;
            }
        }
        Vec::new()
    }

    /// Opens the safety-number screen for `user`.
    pub fn on_open(&mut self, user: &str, name: &str) -> Vec<Command> {
        self.pending = Some(user.to_owned());
        vec![Command::Verify(VerifyCommand::Open {
            user: user.to_owned(),
            name: name.to_owned(),
        })]
    }

    /// "Mark as verified" / "Clear verification" on the open screen.
    pub fn on_mark(&mut self, verified: bool) -> Vec<Command> {
        match &self.safety {
            Some(v) => vec![Command::Verify(VerifyCommand::Mark {
                user: v.user.clone(),
                verified,
            })],
            None => Vec::new(),
        }
    }

    /// Closes the screen.
    pub fn on_close(&mut self) {
        self.safety = None;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn root(hex_id: &str) -> Result<RootPublicKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_id.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("expected a 64-digit user id, got {hex_id:?}"))?;
    RootPublicKey::from_bytes(&bytes).map_err(|e| format!("not a user key: {e}"))
}

fn key32(h: &str) -> Option<[u8; 32]> {
    hex::decode(h).ok().and_then(|b| b.try_into().ok())
}

/// Records a guild's members as contacts (names and device sets), in the node's database.
pub fn observe_members(g: &GuildService, members: &[MemberInfo]) -> Result<(), String> {
    let now = now_ms();
    g.sync()
        .with_db(|db| -> Result<(), String> {
            // One transaction for the whole list (one synchronous commit, if anything changed).
            let tx = db.conn_mut().transaction().map_err(|e| e.to_string())?;
            for m in members.iter().take(contacts::MAX_CONTACTS) {
                let Some(user) = key32(&m.user) else { continue };
                let devices: Vec<[u8; 32]> = m.devices.iter().filter_map(|d| key32(d)).collect();
                contacts::observe(&tx, &user, &m.nickname, Some(&devices), now)
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())?
}

/// The contacts and warnings event.
pub fn load(g: &GuildService) -> Result<Event, String> {
    let (list, warns) = g
        .sync()
        .with_db(|db| {
            let list = contacts::list(db.conn())?;
            let warns = contacts::warnings(db.conn())?;
            Ok::<_, contacts::ContactError>((list, warns))
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let contacts = list
        .into_iter()
        .map(|c| ContactInfo {
            user: hex::encode(c.user),
            name: c.name.clone(),
            verified: c.is_verified(),
            verified_at: c.verified.as_ref().map(|v| v.at),
        })
        .collect();
    let warnings = warns
        .into_iter()
        .map(|w| match w {
            Warning::KeyChanged {
                name,
                verified,
                current,
            } => WarningInfo::KeyChanged {
                name,
                verified: hex::encode(verified),
                current: hex::encode(current),
            },
            Warning::DevicesChanged {
                user,
                name,
                added,
                removed,
            } => WarningInfo::DevicesChanged {
                user: hex::encode(user),
                name,
                added,
                removed,
            },
        })
        .collect();
    Ok(Event::Verify(VerifyEvent::Contacts { contacts, warnings }))
}

/// Runs a verification command for the node whose root key is `me`.
pub fn execute(
    g: &GuildService,
    me: &RootPublicKey,
    cmd: VerifyCommand,
) -> Result<Vec<Event>, String> {
    match cmd {
        VerifyCommand::Open { user, name } => {
            let theirs = root(&user)?;
            if theirs == *me {
                return Err("that is you: a safety number is between two people".into());
            }
            let sn = contacts::safety_number(me, &theirs).map_err(|e| e.to_string())?;
            // Remember whom we looked at (a DM peer may not be in any guild).
            let key = *theirs.as_bytes();
            g.sync()
                .with_db(|db| contacts::observe(db.conn(), &key, &name, None, now_ms()))
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Ok(vec![
                Event::Verify(VerifyEvent::Safety {
                    user,
                    name,
                    digits: sn.digits().to_owned(),
                    qr_payload: sn.qr_payload(),
                }),
                load(g)?,
            ])
        }
        VerifyCommand::Mark { user, verified } => {
            let key = *root(&user)?.as_bytes();
            g.sync()
                .with_db(|db| {
                    if verified {
                        contacts::mark_verified(db.conn(), &key, now_ms())
                    } else {
                        contacts::clear_verified(db.conn(), &key)
                    }
                })
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Ok(vec![load(g)?])
        }
        VerifyCommand::Load => Ok(vec![load(g)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_event_opens_the_screen_with_groups_and_qr() {
        let mut s = VerifyState::default();
        let cmds = s.on_open("ab", "Ann");
        assert!(matches!(
            cmds.as_slice(),
            [Command::Verify(VerifyCommand::Open { .. })]
        ));
        let digits: String = (0..60).map(|i| char::from(b'0' + (i % 10) as u8)).collect();
        s.apply(VerifyEvent::Safety {
            user: "ab".into(),
            name: "Ann".into(),
            digits: digits.clone(),
            qr_payload: vec![1; 65],
        });
        let v = s.safety.clone().unwrap();
        assert_eq!(v.groups().len(), 12);
        assert!(v.groups().iter().all(|g| g.len() == 5));
        assert_eq!(v.groups().concat(), digits);
        assert!(v.qr.width >= 21);
        assert_eq!(v.qr.dark.len(), v.qr.width * v.qr.width);
        assert!(s.pending.is_none());
        assert!(matches!(
            s.on_mark(true).as_slice(),
            [Command::Verify(VerifyCommand::Mark { verified: true, .. })]
        ));
    }

    #[test]
    fn alarms_stay_and_notices_can_be_dismissed() {
        let mut s = VerifyState::default();
        let alarm = WarningInfo::KeyChanged {
            name: "Ann".into(),
            verified: "aa".into(),
            current: "bb".into(),
        };
        let notice = WarningInfo::DevicesChanged {
            user: "aa".into(),
            name: "Ann".into(),
            added: 1,
            removed: 0,
        };
        s.apply(VerifyEvent::Contacts {
            contacts: vec![ContactInfo {
                user: "aa".into(),
                name: "Ann".into(),
                verified: true,
                verified_at: Some(1),
            }],
            warnings: vec![alarm.clone(), notice.clone()],
        });
        assert!(s.is_verified("aa"));
        assert!(!s.is_verified("bb"));
        assert_eq!(s.alarms().count(), 1);
        s.dismissed.push(notice.clone());
        assert_eq!(s.notices().count(), 0);
        assert_eq!(s.alarms().count(), 1);
    }
}
