//! Wire formats of the guild layer, each versioned (first byte) and decoded strictly.
//!
//! * [`LogPayload`]: the payload of a guild's causal-log entry (`sync::Entry`): a signed guild
//!   document change, or a DCGKA control message with the two-party messages that travel with it.
//! * [`AppPayload`]: the plaintext of a guild message, sealed by `Group::encrypt` before it is
//!   published on the guild topic.
//! * [`DirectRequest`] / [`DirectResponse`]: the join protocol on the direct request-response
//!   protocol. Their first byte, [`DIRECT_VERSION`], differs from the sync protocol's version
//!   byte, so both protocols share `/securecomm/direct/1` and each side ignores the other's.
//! * [`InviteLink`]: the copyable invite string (`sc1` + lowercase RFC 4648 base32).
//!
//! Derived values: the gossip topic ([`topic_for`]) and the rendezvous namespace
//! ([`rendezvous_namespace`]) are hashes, never a guild id or name in clear; the join proof
//! ([`join_proof`]) is an HMAC under a key derived from the invite's one-time secret.

use hmac::{Hmac, Mac};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::invite::InviteToken;
use securecomm_crdt::schema::{DeviceCert, GuildId, InviteCode};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::dcgka::{ControlMessage, DirectMessage, MemberKey};
use securecomm_noise::dm::PrekeyBundle;
use securecomm_noise::keys::DevicePublicKey;
use securecomm_noise::secret::{Secret32, hkdf_sha256};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Version byte of [`LogPayload`].
pub const LOG_VERSION: u8 = 1;
/// Version byte of [`AppPayload`]. Version 2 added the per-sender sequence number that history
/// sync uses; version 3 the [`Body`] kinds (replies, threads, reactions, edits, deletes, pins,
/// timers). Older payloads are refused.
pub const APP_VERSION: u8 = 3;
/// Version byte of the join protocol (distinct from the sync protocol's `1`).
pub const DIRECT_VERSION: u8 = 0x47;
/// Version byte inside an invite link.
pub const LINK_VERSION: u8 = 1;
/// Prefix of the invite link's text form.
pub const LINK_PREFIX: &str = "sc1";

/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 16 * 1024;
/// Largest encoded DM prekey bundle.
pub const MAX_BUNDLE: usize = 1024;
/// Most two-party messages with one control message (one per other member).
pub const MAX_DIRECTS: usize = 1024;
/// Largest encoded signed change inside a log entry.
pub const MAX_CHANGE: usize = securecomm_crdt::envelope::MAX_CHANGE_BYTES + 1024;
/// Largest encoded control or direct message.
pub const MAX_DCGKA_MESSAGE: usize = 256 * 1024;
/// Most guild changes in a join offer.
pub const MAX_OFFER_CHANGES: usize = 100_000;
/// Longest nickname (the guild's own bound).
pub const MAX_NICKNAME: usize = securecomm_crdt::schema::MAX_REASON;
/// Longest refusal reason.
pub const MAX_REASON: usize = 512;
/// Most addresses in an invite link.
pub const MAX_LINK_ADDRS: usize = 8;
/// Longest multiaddr in an invite link.
pub const MAX_ADDR: usize = 512;
/// Longest rendezvous namespace.
pub const MAX_NAMESPACE: usize = 64;

const TOPIC_LABEL: &[u8] = b"SecureComm/guild-topic v1";
const RENDEZVOUS_LABEL: &[u8] = b"SecureComm/guild/rendezvous v1";
const PROOF_KEY_LABEL: &[u8] = b"SecureComm/guild/join-proof v1";

fn strict<T>(
    what: &'static str,
    bytes: &[u8],
    f: impl Fn(&[u8]) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    f(bytes).map_err(|_| DecodeError::Invalid(what))
}

/// Writes a refusal reason, cut at a character boundary to at most `max` bytes.
pub(crate) fn put_reason(w: &mut Writer, reason: &str, max: usize) {
    let cut = reason
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&end| end <= max)
        .last()
        .unwrap_or(0);
    w.bytes16(reason.get(..cut).unwrap_or("").as_bytes());
}

/// Reads a refusal reason written by [`put_reason`] (UTF-8, at most `max` bytes).
pub(crate) fn get_reason(r: &mut Reader<'_>, max: usize) -> Result<String, DecodeError> {
    String::from_utf8(r.bytes16("refusal reason", max)?.to_vec())
        .map_err(|_| DecodeError::Invalid("refusal reason (not UTF-8)"))
}

// ---------------------------------------------------------------------------------- log

/// One entry of a guild's causal log.
#[allow(clippy::large_enum_variant)] // decoded once per entry, never stored in bulk
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogPayload {
    /// A guild document change (signed by its author device inside; any member may carry it,
    /// for example the inviter carries a joiner's redemption).
    CrdtChange(SignedChange),
    /// A DCGKA control message and the two-party messages that go with it, one per recipient.
    /// Embedding them here means every member stores every member's 2SM ciphertexts; they are
    /// encrypted to their recipient and signed, so this costs space, not secrecy.
    Dcgka {
        /// The control message (signed by its sender, who must be the entry's author).
        control: ControlMessage,
        /// Per-recipient direct messages.
        directs: Vec<DirectMessage>,
    },
    /// The author device's DM prekey bundle (signed prekey, no one-time prekey), so members
    /// can start a DM session with it while it is offline. Accepted only from the device the
    /// bundle belongs to.
    DmBundle(PrekeyBundle),
    /// The author device's mailbox: its tag on relays and the relays it picks up from.
    /// Accepted only from the device itself.
    Mailbox(super::mailbox::Announcement),
}

impl Encode for LogPayload {
    fn encode(&self, w: &mut Writer) {
        w.u8(LOG_VERSION);
        match self {
            Self::CrdtChange(c) => {
                w.u8(1);
                w.bytes32(&c.to_bytes());
            }
            Self::Dcgka { control, directs } => {
                w.u8(2);
                w.bytes32(&control.to_bytes());
                w.u16(u16::try_from(directs.len()).unwrap_or(u16::MAX));
                for d in directs.iter().take(usize::from(u16::MAX)) {
                    w.bytes32(&d.to_bytes());
                }
            }
            Self::DmBundle(b) => {
                w.u8(3);
                w.bytes16(&b.to_bytes());
            }
            Self::Mailbox(a) => {
                w.u8(4);
                w.bytes16(&a.to_bytes());
            }
        }
    }
}

impl Decode for LogPayload {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("guild log payload", LOG_VERSION)?;
        match r.u8()? {
            1 => {
                let b = r.bytes32("signed change", MAX_CHANGE)?;
                Ok(Self::CrdtChange(strict(
                    "signed change",
                    b,
                    SignedChange::from_bytes,
                )?))
            }
            2 => {
                let b = r.bytes32("control message", MAX_DCGKA_MESSAGE)?;
                let control = strict("control message", b, ControlMessage::from_bytes)?;
                let n = r.count16("direct messages", MAX_DIRECTS)?;
                let mut directs = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    let b = r.bytes32("direct message", MAX_DCGKA_MESSAGE)?;
                    directs.push(strict("direct message", b, DirectMessage::from_bytes)?);
                }
                Ok(Self::Dcgka { control, directs })
            }
            3 => {
                let b = r.bytes16("prekey bundle", MAX_BUNDLE)?;
                Ok(Self::DmBundle(strict(
                    "prekey bundle",
                    b,
                    PrekeyBundle::from_bytes,
                )?))
            }
            4 => {
                let b = r.bytes16("mailbox announcement", MAX_BUNDLE * 4)?;
                Ok(Self::Mailbox(strict(
                    "mailbox announcement",
                    b,
                    super::mailbox::Announcement::from_bytes,
                )?))
            }
            got => Err(DecodeError::UnknownTag {
                what: "guild log payload",
                got: u64::from(got),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------- messages

/// The plaintext of a guild message: where and when, and what ([`Body`]).
///
/// Every kind of content travels this way, reactions, edits, deletes, pins and thread names
/// included: all of it is sealed by the guild's group encryption, carries the sender's
/// sequence number (so history sync delivers it to members who were offline), and relays see
/// only ciphertext of similar sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPayload {
    /// The channel it was posted in (for a thread: the thread's parent channel).
    pub channel: u64,
    /// A random id, unique per guild (duplicates are stored once).
    pub msg_id: [u8; 16],
    /// The sending device's sequence number in this guild: 1, 2, 3, ... without gaps. History
    /// sync ([`super::history`]) asks for what it lacks by these numbers.
    pub seq: u64,
    /// The sender's clock when sending, in milliseconds since the Unix epoch.
    pub sent_at: u64,
    /// What it is.
    pub body: Body,
}

/// A message id ([`AppPayload::msg_id`]) that an operation targets.
pub type MsgId = [u8; 16];

/// What a guild message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A message a member posts.
    Post(Post),
    /// Adds or removes the sender's reaction to a message (last writer wins per user and emoji).
    React {
        /// The message reacted to.
        target: MsgId,
        /// A Unicode emoji (one grapheme cluster, at most [`MAX_EMOJI`] bytes) or a guild custom
        /// emoji reference `:name:` (at most [`MAX_EMOJI`] bytes).
        emoji: String,
        /// Added (true) or removed (false).
        add: bool,
    },
    /// Replaces the text of one of the sender's own messages.
    Edit {
        /// The message edited (must be the sender's user's).
        target: MsgId,
        /// The new text.
        text: String,
    },
    /// Deletes a message: the author's, or anyone's with Manage Messages.
    Delete {
        /// The message deleted.
        target: MsgId,
    },
    /// Pins or unpins a message (Manage Messages).
    Pin {
        /// The message.
        target: MsgId,
        /// Pinned (true) or unpinned (false).
        pinned: bool,
    },
    /// Creates a thread (its id is this message's id) or updates one.
    Thread {
        /// `None`: create a thread whose id is this message's id; `Some`: update that thread.
        thread: Option<MsgId>,
        /// The message it starts from (create only; `None`: a thread started in the channel).
        starter: Option<MsgId>,
        /// The thread's name (required on create; on update, `None` keeps it).
        name: Option<String>,
        /// Archive or unarchive (update; `None` keeps it).
        archived: Option<bool>,
    },
}

/// A posted message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Post {
    /// The text (UTF-8, at most [`MAX_TEXT_CHARS`] characters).
    pub text: String,
    /// The message this replies to.
    pub reply_to: Option<MsgId>,
    /// The thread it is posted in (a thread of [`AppPayload::channel`]).
    pub thread: Option<MsgId>,
    /// Disappearing-message timer in seconds from `sent_at` (0: none). Members also apply the
    /// channel's and the guild's default timers: the shortest non-zero one wins.
    pub ttl_secs: u32,
    /// Attached files (at most [`crate::files::wire::MAX_ATTACHMENTS`]). A post with files
    /// encodes under its own body tag, so posts without files encode exactly as before.
    pub files: Vec<crate::files::wire::Attachment>,
}

/// Longest reaction emoji, in bytes.
pub const MAX_EMOJI: usize = 64;
/// Longest thread name, in characters (Discord's limit).
pub const MAX_THREAD_NAME: usize = 100;
/// Longest message, in characters (Unicode scalar values), as Discord counts for Nitro-less
/// users: 4,000. [`MAX_TEXT`] bounds the bytes.
pub const MAX_TEXT_CHARS: usize = 4_000;

fn put_id_opt(w: &mut Writer, id: Option<&MsgId>) {
    match id {
        None => w.u8(0),
        Some(id) => {
            w.u8(1);
            w.put(id);
        }
    }
}

fn get_id_opt(r: &mut Reader<'_>, what: &'static str) -> Result<Option<MsgId>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.array()?)),
        got => Err(DecodeError::UnknownTag {
            what,
            got: u64::from(got),
        }),
    }
}

fn get_bool_opt(r: &mut Reader<'_>, what: &'static str) -> Result<Option<bool>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(false)),
        2 => Ok(Some(true)),
        got => Err(DecodeError::UnknownTag {
            what,
            got: u64::from(got),
        }),
    }
}

/// Checks a message text: at most [`MAX_TEXT_CHARS`] characters.
pub fn check_text(text: &str) -> Result<(), String> {
    let n = text.chars().count();
    if n > MAX_TEXT_CHARS {
        return Err(format!(
            "a message is at most {MAX_TEXT_CHARS} characters; this one has {n}"
        ));
    }
    Ok(())
}

/// Checks a thread name: 1 to [`MAX_THREAD_NAME`] characters, not blank, no control characters.
pub fn check_thread_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if name.trim().is_empty() || n > MAX_THREAD_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "a thread name is 1 to {MAX_THREAD_NAME} characters, not blank, without control characters"
        ));
    }
    Ok(())
}

/// Checks a reaction: a short emoji with no whitespace or control characters, or a custom
/// emoji reference `:name:` (a name as [`securecomm_crdt::schema::check_emoji_name`] allows).
pub fn check_emoji(emoji: &str) -> Result<(), String> {
    if let Some(name) = emoji.strip_prefix(':').and_then(|e| e.strip_suffix(':'))
        && securecomm_crdt::schema::check_emoji_name(name).is_ok()
    {
        return Ok(());
    }
    if emoji.is_empty()
        || emoji.len() > MAX_EMOJI
        || emoji.chars().any(|c| c.is_whitespace() || c.is_control())
        || emoji.chars().count() > 16
    {
        return Err(format!(
            "a reaction is one emoji (at most {MAX_EMOJI} bytes, no spaces)"
        ));
    }
    Ok(())
}

fn get_text(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let text = String::from_utf8(r.bytes32("message text", MAX_TEXT)?.to_vec())
        .map_err(|_| DecodeError::Invalid("message text (not UTF-8)"))?;
    check_text(&text).map_err(|_| DecodeError::Invalid("message text (too long)"))?;
    Ok(text)
}

impl Encode for AppPayload {
    fn encode(&self, w: &mut Writer) {
        w.u8(APP_VERSION);
        w.u64(self.channel);
        w.put(&self.msg_id);
        w.u64(self.seq);
        w.u64(self.sent_at);
        match &self.body {
            Body::Post(p) => {
                w.u8(if p.files.is_empty() { 0 } else { 6 });
                w.bytes32(p.text.as_bytes());
                put_id_opt(w, p.reply_to.as_ref());
                put_id_opt(w, p.thread.as_ref());
                w.u32(p.ttl_secs);
                if !p.files.is_empty() {
                    crate::files::wire::put_attachments(w, &p.files);
                }
            }
            Body::React { target, emoji, add } => {
                w.u8(1);
                w.put(target);
                w.bytes16(emoji.as_bytes());
                w.bool(*add);
            }
            Body::Edit { target, text } => {
                w.u8(2);
                w.put(target);
                w.bytes32(text.as_bytes());
            }
            Body::Delete { target } => {
                w.u8(3);
                w.put(target);
            }
            Body::Pin { target, pinned } => {
                w.u8(4);
                w.put(target);
                w.bool(*pinned);
            }
            Body::Thread {
                thread,
                starter,
                name,
                archived,
            } => {
                w.u8(5);
                put_id_opt(w, thread.as_ref());
                put_id_opt(w, starter.as_ref());
                match name {
                    None => w.u8(0),
                    Some(n) => {
                        w.u8(1);
                        w.bytes16(n.as_bytes());
                    }
                }
                w.u8(match archived {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                });
            }
        }
    }
}

impl Decode for AppPayload {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("guild message", APP_VERSION)?;
        let channel = r.u64()?;
        let msg_id = r.array()?;
        let seq = r.u64()?;
        if seq == 0 {
            return Err(DecodeError::Invalid("message sequence number 0"));
        }
        let sent_at = r.u64()?;
        let body = match r.u8()? {
            tag @ (0 | 6) => {
                let text = get_text(r)?;
                let reply_to = get_id_opt(r, "reply")?;
                let thread = get_id_opt(r, "thread")?;
                let ttl_secs = r.u32()?;
                let files = if tag == 6 {
                    let f = crate::files::wire::get_attachments(r)?;
                    if f.is_empty() {
                        return Err(DecodeError::Invalid("a post with files but none listed"));
                    }
                    f
                } else {
                    Vec::new()
                };
                Body::Post(Post {
                    text,
                    reply_to,
                    thread,
                    ttl_secs,
                    files,
                })
            }
            1 => {
                let target = r.array()?;
                let emoji = String::from_utf8(r.bytes16("reaction", MAX_EMOJI)?.to_vec())
                    .map_err(|_| DecodeError::Invalid("reaction (not UTF-8)"))?;
                check_emoji(&emoji).map_err(|_| DecodeError::Invalid("reaction"))?;
                Body::React {
                    target,
                    emoji,
                    add: r.bool()?,
                }
            }
            2 => Body::Edit {
                target: r.array()?,
                text: get_text(r)?,
            },
            3 => Body::Delete { target: r.array()? },
            4 => Body::Pin {
                target: r.array()?,
                pinned: r.bool()?,
            },
            5 => {
                let thread = get_id_opt(r, "thread")?;
                let starter = get_id_opt(r, "thread starter")?;
                let name = match r.u8()? {
                    0 => None,
                    1 => {
                        let n = String::from_utf8(
                            r.bytes16("thread name", MAX_THREAD_NAME * 4)?.to_vec(),
                        )
                        .map_err(|_| DecodeError::Invalid("thread name (not UTF-8)"))?;
                        check_thread_name(&n).map_err(|_| DecodeError::Invalid("thread name"))?;
                        Some(n)
                    }
                    got => {
                        return Err(DecodeError::UnknownTag {
                            what: "thread name",
                            got: u64::from(got),
                        });
                    }
                };
                let archived = get_bool_opt(r, "thread archived")?;
                // A create names the thread and says nothing else; an update names a thread and
                // changes something.
                let ok = match thread {
                    None => name.is_some() && archived.is_none(),
                    Some(_) => starter.is_none() && (name.is_some() || archived.is_some()),
                };
                if !ok {
                    return Err(DecodeError::Invalid("thread operation"));
                }
                Body::Thread {
                    thread,
                    starter,
                    name,
                    archived,
                }
            }
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "guild message body",
                    got: u64::from(got),
                });
            }
        };
        Ok(Self {
            channel,
            msg_id,
            seq,
            sent_at,
            body,
        })
    }
}

// ---------------------------------------------------------------------------------- join

/// A join-protocol request (joiner to inviter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectRequest {
    /// "I hold this invite": asks for the guild document, the invite token and the guild
    /// secret.
    Hello {
        /// The guild.
        guild: GuildId,
        /// Which invite.
        invite: InviteCode,
        /// The joiner's certificate for its device (which must be the requesting peer).
        cert: DeviceCert,
        /// The joiner's DCGKA member key (device and signed prekey).
        member_key: MemberKey,
        /// [`join_proof`] over the above.
        proof: [u8; 32],
    },
    /// The joiner's redemption change, authored by its device on the offered document.
    Redeem {
        /// The guild.
        guild: GuildId,
        /// Which invite.
        invite: InviteCode,
        /// The joiner's DCGKA member key (the inviter adds it to key agreement).
        member_key: MemberKey,
        /// The signed redemption change.
        change: SignedChange,
        /// [`join_proof`] over guild, invite, device and member key.
        proof: [u8; 32],
    },
}

/// A join-protocol answer. `Debug` leaves the secret out.
#[allow(clippy::large_enum_variant)] // one per join
#[derive(Clone, PartialEq, Eq)]
pub enum DirectResponse {
    /// The guild as the inviter has it, and what the joiner needs to redeem.
    Offer {
        /// The signed invite token for the redemption.
        token: InviteToken,
        /// The guild secret (topic key); travels only inside the encrypted connection.
        secret: Secret32,
        /// Every accepted change of the guild document, dependencies first.
        changes: Vec<SignedChange>,
    },
    /// The redemption is in the guild's log; key agreement follows through the log.
    Welcome,
    /// Refused, and why.
    Refused(String),
}

impl std::fmt::Debug for DirectResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Offer { token, changes, .. } => f
                .debug_struct("Offer")
                .field("token", token)
                .field("changes", &changes.len())
                .finish_non_exhaustive(),
            Self::Welcome => f.write_str("Welcome"),
            Self::Refused(r) => f.debug_tuple("Refused").field(r).finish(),
        }
    }
}

impl Encode for DirectRequest {
    fn encode(&self, w: &mut Writer) {
        w.u8(DIRECT_VERSION);
        match self {
            Self::Hello {
                guild,
                invite,
                cert,
                member_key,
                proof,
            } => {
                w.u8(1);
                guild.encode(w);
                invite.encode(w);
                cert.encode(w);
                member_key.encode(w);
                w.put(proof);
            }
            Self::Redeem {
                guild,
                invite,
                member_key,
                change,
                proof,
            } => {
                w.u8(2);
                guild.encode(w);
                invite.encode(w);
                member_key.encode(w);
                w.bytes32(&change.to_bytes());
                w.put(proof);
            }
        }
    }
}

impl Decode for DirectRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("guild direct request", DIRECT_VERSION)?;
        match r.u8()? {
            1 => Ok(Self::Hello {
                guild: GuildId::decode(r)?,
                invite: InviteCode::decode(r)?,
                cert: DeviceCert::decode(r)?,
                member_key: MemberKey::decode(r)?,
                proof: r.array()?,
            }),
            2 => {
                let guild = GuildId::decode(r)?;
                let invite = InviteCode::decode(r)?;
                let member_key = MemberKey::decode(r)?;
                let b = r.bytes32("signed change", MAX_CHANGE)?;
                let change = strict("signed change", b, SignedChange::from_bytes)?;
                Ok(Self::Redeem {
                    guild,
                    invite,
                    member_key,
                    change,
                    proof: r.array()?,
                })
            }
            got => Err(DecodeError::UnknownTag {
                what: "guild direct request",
                got: u64::from(got),
            }),
        }
    }
}

impl Encode for DirectResponse {
    fn encode(&self, w: &mut Writer) {
        w.u8(DIRECT_VERSION);
        match self {
            Self::Offer {
                token,
                secret,
                changes,
            } => {
                w.u8(1);
                token.encode(w);
                w.put(secret.expose());
                w.u32(u32::try_from(changes.len()).unwrap_or(u32::MAX));
                for c in changes {
                    w.bytes32(&c.to_bytes());
                }
            }
            Self::Welcome => w.u8(2),
            Self::Refused(reason) => {
                w.u8(3);
                put_reason(w, reason, MAX_REASON);
            }
        }
    }
}

impl Decode for DirectResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("guild direct response", DIRECT_VERSION)?;
        match r.u8()? {
            1 => {
                let token = InviteToken::decode(r)?;
                let secret = Secret32::from_bytes(r.array()?);
                let n = r.u32()? as usize;
                if n > MAX_OFFER_CHANGES {
                    return Err(DecodeError::TooLong {
                        what: "offered changes",
                        max: MAX_OFFER_CHANGES,
                        got: n,
                    });
                }
                let mut changes = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let b = r.bytes32("signed change", MAX_CHANGE)?;
                    changes.push(strict("signed change", b, SignedChange::from_bytes)?);
                }
                Ok(Self::Offer {
                    token,
                    secret,
                    changes,
                })
            }
            2 => Ok(Self::Welcome),
            3 => Ok(Self::Refused(get_reason(r, MAX_REASON)?)),
            got => Err(DecodeError::UnknownTag {
                what: "guild direct response",
                got: u64::from(got),
            }),
        }
    }
}

/// The HMAC a joiner sends to prove it holds the invite's one-time secret, bound to the guild,
/// the invite, the joiner's device and its DCGKA member key:
/// `HMAC-SHA256(HKDF(secret, "SecureComm/guild/join-proof v1"), guild | invite | device | member key)`.
pub fn join_proof(
    secret: &Secret32,
    guild: &GuildId,
    invite: &InviteCode,
    device: &DevicePublicKey,
    member_key: &MemberKey,
) -> [u8; 32] {
    let key = zeroize::Zeroizing::new(hkdf_sha256::<32>(None, secret.expose(), PROOF_KEY_LABEL));
    let mut w = Writer::new();
    guild.encode(&mut w);
    invite.encode(&mut w);
    device.encode(&mut w);
    member_key.encode(&mut w);
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key.as_slice()) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(&w.into_bytes());
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a [`join_proof`].
pub fn check_proof(expected: &[u8; 32], got: &[u8; 32]) -> bool {
    bool::from(expected.ct_eq(got))
}

// ---------------------------------------------------------------------------------- topic

/// The guild's gossip topic: `hex(SHA-256("SecureComm/guild-topic v1" | guild secret))`.
pub fn topic_for(secret: &Secret32) -> String {
    let mut h = Sha256::new();
    h.update(TOPIC_LABEL);
    h.update(secret.expose());
    hex::encode(h.finalize())
}

/// The guild's rendezvous namespace: 32 hex digits of
/// `SHA-256("SecureComm/guild/rendezvous v1" | guild id)`. Opaque to the relay.
pub fn rendezvous_namespace(guild: &GuildId) -> String {
    let mut h = Sha256::new();
    h.update(RENDEZVOUS_LABEL);
    h.update(guild.0);
    hex::encode(&h.finalize()[..16])
}

// ---------------------------------------------------------------------------------- invite link

/// Everything a joiner needs, as one copyable string.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteLink {
    /// The guild.
    pub guild: GuildId,
    /// The invite recorded in the guild.
    pub invite: InviteCode,
    /// The one-time secret the joiner proves (never sent on the wire by the joiner).
    pub secret: Secret32,
    /// Unix seconds after which the invite is void; 0 for never.
    pub expires_at: u64,
    /// The guild's rendezvous namespace.
    pub namespace: String,
    /// The inviter's addresses, each ending in `/p2p/<inviter>`.
    pub addrs: Vec<Multiaddr>,
}

impl std::fmt::Debug for InviteLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteLink")
            .field("guild", &self.guild)
            .field("invite", &self.invite)
            .field("expires_at", &self.expires_at)
            .field("addrs", &self.addrs.len())
            .finish_non_exhaustive()
    }
}

impl InviteLink {
    /// The inviter's peer id (from the first address's `/p2p/` component).
    pub fn inviter(&self) -> Option<PeerId> {
        self.addrs.iter().find_map(|a| {
            a.iter().last().and_then(|p| match p {
                Protocol::P2p(id) => Some(id),
                _ => None,
            })
        })
    }

    /// The text form: `sc1` followed by base32.
    pub fn to_text(&self) -> String {
        format!("{LINK_PREFIX}{}", base32_encode(&self.to_bytes()))
    }

    /// Parses the text form (whitespace around it is ignored).
    pub fn from_text(s: &str) -> Result<Self, DecodeError> {
        let s = s.trim();
        let body = s.strip_prefix(LINK_PREFIX).ok_or(DecodeError::Invalid(
            "invite code (expected it to start with sc1)",
        ))?;
        let bytes = base32_decode(body).ok_or(DecodeError::Invalid("invite code (not base32)"))?;
        Self::from_bytes(&bytes)
    }
}

impl Encode for InviteLink {
    fn encode(&self, w: &mut Writer) {
        w.u8(LINK_VERSION);
        self.guild.encode(w);
        self.invite.encode(w);
        w.put(self.secret.expose());
        w.u64(self.expires_at);
        w.bytes16(self.namespace.as_bytes());
        let n = self.addrs.len().min(MAX_LINK_ADDRS);
        w.u8(u8::try_from(n).unwrap_or(0));
        for a in self.addrs.iter().take(n) {
            w.bytes16(&a.to_vec());
        }
    }
}

impl Decode for InviteLink {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("invite link", LINK_VERSION)?;
        let guild = GuildId::decode(r)?;
        let invite = InviteCode::decode(r)?;
        let secret = Secret32::from_bytes(r.array()?);
        let expires_at = r.u64()?;
        let namespace = String::from_utf8(r.bytes16("namespace", MAX_NAMESPACE)?.to_vec())
            .map_err(|_| DecodeError::Invalid("namespace (not UTF-8)"))?;
        let n = usize::from(r.u8()?);
        if n > MAX_LINK_ADDRS {
            return Err(DecodeError::TooLong {
                what: "invite addresses",
                max: MAX_LINK_ADDRS,
                got: n,
            });
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let b = r.bytes16("invite address", MAX_ADDR)?;
            let a = Multiaddr::try_from(b.to_vec())
                .map_err(|_| DecodeError::Invalid("invite address"))?;
            addrs.push(a);
        }
        Ok(Self {
            guild,
            invite,
            secret,
            expires_at,
            namespace,
            addrs,
        })
    }
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 base32, lowercase, no padding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            let i = ((acc >> bits) & 31) as usize;
            out.push(char::from(B32.get(i).copied().unwrap_or(b'a')));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        let i = ((acc << (5 - bits)) & 31) as usize;
        out.push(char::from(B32.get(i).copied().unwrap_or(b'a')));
    }
    out
}

/// Decodes [`base32_encode`]'s output (case-insensitive); `None` on any other character or on
/// non-zero trailing bits.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let c = c.to_ascii_lowercase();
        let v = B32.iter().position(|&x| x == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    // Leftover bits must be fewer than 5 and zero (canonical encoding).
    if bits >= 5 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base32_known_answers() {
        // RFC 4648 section 10, lowercased, without padding.
        for (plain, enc) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        }
        assert!(base32_decode("my1").is_none());
        // Non-canonical trailing bits.
        assert!(base32_decode("mz").is_none());
    }

    proptest! {
        #[test]
        fn base32_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(base32_decode(&base32_encode(&data)).unwrap(), data);
        }

        #[test]
        fn app_payload_round_trips(channel in any::<u64>(), id in any::<[u8; 16]>(), seq in 1..u64::MAX, at in any::<u64>(), body in body_strategy()) {
            let p = AppPayload { channel, msg_id: id, seq, sent_at: at, body };
            let bytes = p.to_bytes();
            prop_assert_eq!(AppPayload::from_bytes(&bytes).unwrap(), p);
            // Canonical: any other length of the same prefix is refused.
            prop_assert!(AppPayload::from_bytes(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(AppPayload::from_bytes(&longer).is_err());
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = LogPayload::from_bytes(&bytes);
            let _ = AppPayload::from_bytes(&bytes);
            let _ = DirectRequest::from_bytes(&bytes);
            let _ = DirectResponse::from_bytes(&bytes);
            let _ = InviteLink::from_bytes(&bytes);
        }
    }

    fn body_strategy() -> impl Strategy<Value = Body> {
        let id = proptest::option::of(any::<[u8; 16]>());
        prop_oneof![
            (
                ".{0,200}",
                id.clone(),
                id.clone(),
                any::<u32>(),
                0usize..3,
                any::<[u8; 32]>()
            )
                .prop_map(|(text, reply_to, thread, ttl_secs, n, root)| {
                    let files = (0..n)
                        .map(|i| crate::files::wire::Attachment {
                            name: format!("f{i}.bin"),
                            mime: "application/octet-stream".into(),
                            size: (u64::from(ttl_secs) * 1000 + i as u64)
                                % crate::files::wire::MAX_FILE_SIZE,
                            sha256: root,
                            root,
                            header: securecomm_noise::file::FileHeader::new(
                                128 * 1024,
                                &mut rand_core::OsRng,
                            )
                            .unwrap_or_else(|_| unreachable!()),
                            key: securecomm_noise::file::FileKey::from_bytes(root),
                            thumbnail: None,
                        })
                        .collect();
                    Body::Post(Post {
                        text,
                        reply_to,
                        thread,
                        ttl_secs,
                        files,
                    })
                }),
            (any::<[u8; 16]>(), "[\\p{So}a-z:]{1,8}", any::<bool>())
                .prop_map(|(target, emoji, add)| Body::React { target, emoji, add }),
            (any::<[u8; 16]>(), ".{0,100}").prop_map(|(target, text)| Body::Edit { target, text }),
            any::<[u8; 16]>().prop_map(|target| Body::Delete { target }),
            (any::<[u8; 16]>(), any::<bool>())
                .prop_map(|(target, pinned)| Body::Pin { target, pinned }),
            (id.clone(), "[a-z][a-z ]{0,30}").prop_map(|(starter, name)| Body::Thread {
                thread: None,
                starter,
                name: Some(name),
                archived: None
            }),
            (
                any::<[u8; 16]>(),
                proptest::option::of("[a-z][a-z ]{0,30}"),
                any::<bool>()
            )
                .prop_map(|(t, name, archived)| Body::Thread {
                    thread: Some(t),
                    starter: None,
                    name,
                    archived: Some(archived)
                }),
        ]
    }

    #[test]
    fn text_limit_is_characters_and_clear() {
        assert!(check_text(&"é".repeat(4_000)).is_ok());
        let err = check_text(&"a".repeat(4_001)).unwrap_err();
        assert!(err.contains("4000") && err.contains("4001"), "{err}");
        let p = AppPayload {
            channel: 1,
            msg_id: [1; 16],
            seq: 1,
            sent_at: 1,
            body: Body::Post(Post {
                text: "a".repeat(4_001),
                ..Post::default()
            }),
        };
        assert!(AppPayload::from_bytes(&p.to_bytes()).is_err());
    }

    #[test]
    fn hostile_bodies_are_refused() {
        for e in ["", " ", "a b", "\u{0}", &"x".repeat(65)] {
            assert!(check_emoji(e).is_err(), "{e:?}");
        }
        for n in ["", "   ", "a\nb", &"n".repeat(101)] {
            assert!(check_thread_name(n).is_err(), "{n:?}");
        }
        // A thread update that changes nothing, and a create with no name.
        for body in [
            Body::Thread {
                thread: Some([1; 16]),
                starter: None,
                name: None,
                archived: None,
            },
            Body::Thread {
                thread: None,
                starter: None,
                name: None,
                archived: None,
            },
            Body::Thread {
                thread: None,
                starter: None,
                name: Some("x".into()),
                archived: Some(true),
            },
        ] {
            let p = AppPayload {
                channel: 1,
                msg_id: [1; 16],
                seq: 1,
                sent_at: 1,
                body,
            };
            assert!(AppPayload::from_bytes(&p.to_bytes()).is_err());
        }
    }

    fn link() -> InviteLink {
        InviteLink {
            guild: GuildId([3; 32]),
            invite: InviteCode([4; 16]),
            secret: Secret32::from_bytes([5; 32]),
            expires_at: 1_700_000_000,
            namespace: rendezvous_namespace(&GuildId([3; 32])),
            addrs: vec![
                "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                    .parse()
                    .unwrap(),
            ],
        }
    }

    #[test]
    fn invite_link_round_trips_and_is_strict() {
        let l = link();
        let text = l.to_text();
        assert!(text.starts_with("sc1"));
        let back = InviteLink::from_text(&format!("  {text}\n")).unwrap();
        assert_eq!(back, l);
        assert_eq!(
            back.inviter().unwrap().to_string(),
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
        );
        // Debug never shows the secret.
        let dbg = format!("{l:?}");
        assert!(!dbg.contains("5, 5") && !dbg.contains("0505"));
        // Truncated, trailing, wrong version, wrong prefix.
        let bytes = l.to_bytes();
        assert!(InviteLink::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(InviteLink::from_bytes(&extra).is_err());
        let mut v = bytes.clone();
        v[0] = 2;
        assert!(InviteLink::from_bytes(&v).is_err());
        assert!(InviteLink::from_text(&text.replacen("sc1", "sc2", 1)).is_err());
    }

    #[test]
    fn topic_is_opaque_and_keyed() {
        let a = topic_for(&Secret32::from_bytes([1; 32]));
        let b = topic_for(&Secret32::from_bytes([2; 32]));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn log_payloads_round_trip_and_refuse_damage() {
        use securecomm_noise::dcgka::Group;
        use securecomm_noise::keys::{DeviceSigningKey, RootSigningKey};
        use securecomm_noise::oneshot::PrekeyStore;
        let mut rng = rand_core::OsRng;
        let device = DeviceSigningKey::from_seed(&[7; 32]);
        let root = RootSigningKey::from_seed(&[8; 32]);
        let (guild, genesis) =
            securecomm_crdt::Guild::create(&root, &device, "g", 1000, [1; 16]).unwrap();
        let mut g = Group::new(guild.id().0, device.public(), PrekeyStore::new(&mut rng, 0));
        let mk = g.member_key(&device);
        let other = DeviceSigningKey::from_seed(&[9; 32]);
        let other_mk = MemberKey::new(&other, &PrekeyStore::new(&mut rng, 0));
        let out = g.create(&device, &mut rng, mk, &[other_mk]).unwrap();
        let dcgka = LogPayload::Dcgka {
            control: out.broadcast.unwrap(),
            directs: out.direct.into_iter().map(|(_, d)| d).collect(),
        };
        assert!(dcgka.to_bytes().len() > 100);
        for p in [LogPayload::CrdtChange(genesis), dcgka] {
            let bytes = p.to_bytes();
            assert_eq!(LogPayload::from_bytes(&bytes).unwrap(), p);
            assert!(LogPayload::from_bytes(&bytes[..bytes.len() - 1]).is_err());
            let mut extra = bytes.clone();
            extra.push(0);
            assert!(LogPayload::from_bytes(&extra).is_err());
            let mut v = bytes.clone();
            v[0] = 9;
            assert!(LogPayload::from_bytes(&v).is_err());
            let mut t = bytes.clone();
            t[1] = 7;
            assert!(LogPayload::from_bytes(&t).is_err());
        }
    }

    #[test]
    fn offer_debug_hides_the_guild_secret() {
        let offer = DirectResponse::Offer {
            token: securecomm_crdt::invite::InviteToken::issue(
                &securecomm_noise::keys::DeviceSigningKey::from_seed(&[1; 32]),
                GuildId([2; 32]),
                InviteCode([3; 16]),
                securecomm_crdt::schema::Invite {
                    creator: securecomm_noise::keys::RootSigningKey::from_seed(&[4; 32]).public(),
                    expires_at: 0,
                    max_uses: 0,
                },
            ),
            secret: Secret32::from_bytes([0xab; 32]),
            changes: Vec::new(),
        };
        let dbg = format!("{offer:?}");
        assert!(
            !dbg.to_lowercase().contains("abab") && !dbg.contains("171, 171"),
            "{dbg}"
        );
        let back = DirectResponse::from_bytes(&offer.to_bytes()).unwrap();
        assert_eq!(back, offer);
    }

    #[test]
    fn direct_messages_do_not_parse_as_sync_requests() {
        let r = DirectResponse::Refused("no".into()).to_bytes();
        assert!(crate::sync::SyncRequest::from_bytes(&r).is_err());
        assert_eq!(
            DirectResponse::from_bytes(&r).unwrap(),
            DirectResponse::Refused("no".into())
        );
        assert_eq!(
            DirectResponse::from_bytes(&DirectResponse::Welcome.to_bytes()).unwrap(),
            DirectResponse::Welcome
        );
    }
}
