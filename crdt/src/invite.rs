//! Invites as signed capabilities.
//!
//! A member allowed to invite (`CREATE_INSTANT_INVITE`) records the invite in the guild with a
//! [`crate::ops::GuildOp::CreateInvite`] change and hands the invitee an [`InviteToken`] out of
//! band: the invite's terms signed by the creator's device. The invitee joins by authoring a
//! [`crate::ops::GuildOp::Redeem`] change that carries the token and a certificate for its own
//! device. The guild accepts the redemption only if, in the redemption's causal past, the invite
//! exists, is not revoked, has uses left, and the redemption's time is before the expiry; the
//! token's signature must come from a device of the invite's creator; and the invitee is not
//! banned. A redemption concurrent with the invite's revocation, or with a ban of the invitee,
//! is void (see the crate docs); redemptions beyond `max_uses` in the canonical order are void.

use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::keys::{DevicePublicKey, DeviceSigningKey, SigLabel, Signature};

use crate::schema::{GuildId, Invite, InviteCode, KeySource, NoCache};

/// Signature label for invite tokens.
pub const INVITE_LABEL: SigLabel = SigLabel("SecureComm/crdt/invite v1");

const TOKEN_VERSION: u8 = 1;

/// An invite handed to an invitee: the terms, signed by the creator's device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteToken {
    /// The guild it admits to.
    pub guild: GuildId,
    /// Which recorded invite it is.
    pub code: InviteCode,
    /// Its terms, equal to what the guild records.
    pub invite: Invite,
    /// The creator's device that signed it.
    pub issuer: DevicePublicKey,
    /// Signature by `issuer` under [`INVITE_LABEL`].
    pub sig: Signature,
}

impl InviteToken {
    fn signed_bytes(
        guild: &GuildId,
        code: &InviteCode,
        invite: &Invite,
        issuer: &DevicePublicKey,
    ) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(TOKEN_VERSION);
        guild.encode(&mut w);
        code.encode(&mut w);
        invite.encode(&mut w);
        issuer.encode(&mut w);
        w.into_bytes()
    }

    /// Signs the invite's terms with the creator's device key.
    pub fn issue(
        device: &DeviceSigningKey,
        guild: GuildId,
        code: InviteCode,
        invite: Invite,
    ) -> Self {
        let issuer = device.public();
        let sig = device.sign(
            INVITE_LABEL,
            &Self::signed_bytes(&guild, &code, &invite, &issuer),
        );
        Self {
            guild,
            code,
            invite,
            issuer,
            sig,
        }
    }

    /// Whether the signature verifies under `issuer`, under the ZIP-215 rules of
    /// [`crate::verify`] (the rules of version-2 envelopes, which carry tokens inside their ops).
    pub fn verify(&self) -> bool {
        crate::verify::SigItem::device(
            &self.issuer,
            INVITE_LABEL,
            &[&Self::signed_bytes(
                &self.guild,
                &self.code,
                &self.invite,
                &self.issuer,
            )],
            &self.sig,
        )
        .verify()
    }
}

impl Encode for InviteToken {
    fn encode(&self, w: &mut Writer) {
        w.u8(TOKEN_VERSION);
        self.guild.encode(w);
        self.code.encode(w);
        self.invite.encode(w);
        self.issuer.encode(w);
        self.sig.encode(w);
    }
}

impl Decode for InviteToken {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_with(r, &mut NoCache)
    }
}

impl InviteToken {
    pub(crate) fn decode_with(
        r: &mut Reader<'_>,
        keys: &mut impl KeySource,
    ) -> Result<Self, DecodeError> {
        r.version("invite token", TOKEN_VERSION)?;
        Ok(Self {
            guild: GuildId::decode(r)?,
            code: InviteCode::decode(r)?,
            invite: Invite::decode_with(r, keys)?,
            issuer: keys.device(r)?,
            sig: Signature::decode(r)?,
        })
    }
}
