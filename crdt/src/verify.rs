//! Ed25519 verification of every signature a version-2 guild envelope carries (the envelope's
//! own, and the device certificates and invite tokens inside its ops), one at a time or in
//! batches, with the guarantee that **a batch accepts exactly when every member verifies on
//! its own**. Acceptance therefore does not depend on how a replica happened to group the
//! changes it received, and every replica decides every signature the same way.
//!
//! # Why not `verify_strict`, and why not `ed25519-dalek`'s batch
//!
//! Version-1 envelopes were checked with `ed25519-dalek`'s `verify_strict`, which uses the
//! *cofactorless* equation `[S]B = R + [k]A`. Its batch verifier does not agree with it: a
//! signature whose error term is a small-order (torsion) point can pass in a batch and fail
//! alone, or the reverse, so two replicas that batch differently could disagree about a change.
//! That is why batching was refused for version 1.
//!
//! Version 2 uses the [ZIP-215] rules instead, which were designed so that single and batch
//! verification agree. The rules, for key bytes `A`, signature `R ‖ S` and message `M`:
//!
//! * `A` must decode to a curve point and, here, must **not** be of small order. Every key this
//!   crate verifies under is a [`DevicePublicKey`] or [`RootPublicKey`], whose decoding refuses
//!   small-order points, so this holds from the moment a key is registered in a change. (ZIP-215
//!   itself allows small-order keys; with one, `[8][k]A` vanishes and anyone could forge, which
//!   is exactly why we keep that check.)
//! * `R` must decode to a curve point (ZIP-215 allows non-canonical encodings and small order);
//!   `S` must be canonical (`S < ℓ`), so `S` is not malleable.
//! * `k = SHA-512(R ‖ A ‖ M) mod ℓ`, hashing the bytes exactly as received.
//! * Accept iff `[8]([S]B − R − [k]A)` is the identity (the *cofactored* equation).
//!
//! A batch of `n` checks `[8](−(Σ zᵢSᵢ)B + Σ zᵢRᵢ + Σ (zᵢkᵢ)Aᵢ) = identity` with 128-bit
//! coefficients `zᵢ` (terms of one key are coalesced). **Agreement:** if every item passes,
//! each error `eᵢ = [Sᵢ]B − Rᵢ − [kᵢ]Aᵢ` is a torsion point, so `[8]Σ zᵢeᵢ` is the identity and
//! the batch passes, whatever the `zᵢ`. If some item fails, `[8]eⱼ` is a non-zero point of prime
//! order ℓ, and for any fixed other terms at most one `zⱼ < 2¹²⁸ < ℓ` makes the sum vanish, so
//! the batch fails except with probability 2⁻¹²⁸. A failed batch is then checked item by item
//! ([`verify_each`]), so the final per-item answer is always the single-verification answer.
//!
//! # The coefficients are derived, not drawn
//!
//! The crate takes no RNG in [`crate::Guild::receive`] (no global RNG, deterministic replicas).
//! The `zᵢ` are derived from SHA-512 over a label and every item of the batch (key, `R`, `S`, and
//! `k`, which binds the message), as in derandomized signing. An attacker who wants a batch with
//! a bad signature to pass must find inputs whose derived coefficients satisfy one linear
//! relation modulo ℓ: each try (one new input, one hash) succeeds with probability about 2⁻¹²⁸,
//! the same security level as the signatures themselves. Changing a single byte of any item
//! changes every coefficient.
//!
//! # Cost and denial of service
//!
//! Batches are cut into chunks of at most [`BATCH_CHUNK`] items (measured on the benchmark
//! guild's joins: about 45 µs per signature alone, 16 µs per signature in batches of 256, 12.6 µs
//! in batches of 1024, 11.8 µs in batches of 4096; 4096 was chosen because a receive of the
//! 10,000-member benchmark guild verifies 20,000 signatures, and its signature share fell by
//! 2.6 % of the whole receive's instructions going from 1024). A chunk that fails is re-checked
//! one signature at a time, so a peer that mixes a bad signature into a chunk makes that chunk
//! cost about 1.3 times what verifying it one by one (the version-1 cost) would, never more,
//! and the bad change is still rejected, alone. (One bad signature now spoils a chunk of 4096
//! rather than 1024; the factor per signature is the same.)
//!
//! Per signature, a batch still pays one point decompression (of `R`, about 45 % of the batch
//! cost) and its share of the multiscalar multiplication (about 55 %): those two are the floor
//! of this scheme, whatever the batch size.
//!
//! Keys are passed as the points their [`DevicePublicKey`] / [`RootPublicKey`] already hold, so
//! a batch decompresses only the `R` values.
//!
//! [ZIP-215]: https://zips.z.cash/zip-0215

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use securecomm_noise::keys::{DevicePublicKey, RootPublicKey, SigLabel, Signature};
use sha2::{Digest, Sha512};

/// Most signatures verified in one multiscalar multiplication.
pub const BATCH_CHUNK: usize = 4096;

/// Domain separation of the derived batch coefficients.
const COEFF_LABEL: &[u8] = b"SecureComm/crdt/batch-verify-coefficients v1";

/// One signature to check: the key's point and bytes, the signature, and `k`, which binds the
/// message.
#[derive(Clone, Debug)]
pub struct SigItem {
    a: EdwardsPoint,
    a_bytes: [u8; 32],
    sig: [u8; 64],
    k: Scalar,
}

impl SigItem {
    /// A signature by `key` under `label` over the concatenation of `parts` (the signed message
    /// is `label ‖ 0x00 ‖ parts…`, as [`securecomm_noise::keys`] signs).
    pub fn device(
        key: &DevicePublicKey,
        label: SigLabel,
        parts: &[&[u8]],
        sig: &Signature,
    ) -> Self {
        Self::new(key.to_edwards(), key.to_bytes(), label, parts, sig)
    }

    /// Like [`SigItem::device`] for a user's root key.
    pub fn root(key: &RootPublicKey, label: SigLabel, parts: &[&[u8]], sig: &Signature) -> Self {
        Self::new(key.to_edwards(), key.to_bytes(), label, parts, sig)
    }

    fn new(
        a: EdwardsPoint,
        a_bytes: [u8; 32],
        label: SigLabel,
        parts: &[&[u8]],
        sig: &Signature,
    ) -> Self {
        let mut h = Sha512::new();
        h.update(sig.0.get(..32).unwrap_or_default());
        h.update(a_bytes);
        h.update(label.0.as_bytes());
        h.update([0u8]);
        for p in parts {
            h.update(p);
        }
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        Self {
            a,
            a_bytes,
            sig: sig.0,
            k,
        }
    }

    fn r_and_s(&self) -> Option<(EdwardsPoint, Scalar)> {
        let (r, s) = self.sig.split_first_chunk::<32>()?;
        let s: [u8; 32] = s.try_into().ok()?;
        let r = CompressedEdwardsY(*r).decompress()?;
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s))?;
        Some((r, s))
    }

    /// Verifies this signature alone (the cofactored ZIP-215 equation).
    pub fn verify(&self) -> bool {
        let Some((r, s)) = self.r_and_s() else {
            return false;
        };
        // [k](−A) + [S]B = [S]B − [k]A; compare with R up to torsion.
        let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &-self.a, &s);
        (r - sb_minus_ka).mul_by_cofactor().is_identity()
    }
}

/// The derived 128-bit coefficients of a batch (see the module docs).
fn coefficients(items: &[SigItem]) -> Vec<Scalar> {
    let mut h = Sha512::new();
    h.update(COEFF_LABEL);
    h.update((items.len() as u64).to_be_bytes());
    for it in items {
        h.update(it.a_bytes);
        h.update(it.sig);
        h.update(it.k.as_bytes());
    }
    let seed = h.finalize();
    let mut out = Vec::with_capacity(items.len());
    let mut block: u64 = 0;
    while out.len() < items.len() {
        let bytes = Sha512::new()
            .chain_update(seed)
            .chain_update(block.to_be_bytes())
            .finalize();
        for c in bytes.chunks_exact(16) {
            if out.len() == items.len() {
                break;
            }
            let mut z = [0u8; 16];
            z.copy_from_slice(c);
            // A zero coefficient would drop its item from the equation.
            let z = u128::from_le_bytes(z).max(1);
            out.push(Scalar::from(z));
        }
        block += 1;
    }
    out
}

/// Whether every signature in `items` verifies, in one multiscalar multiplication. Agrees with
/// verifying each item alone (module docs); an empty batch is valid.
pub fn verify_batch(items: &[SigItem]) -> bool {
    if items.is_empty() {
        return true;
    }
    let z = coefficients(items);
    let mut b_coeff = Scalar::ZERO;
    let mut key_slot: HashMap<[u8; 32], usize> = HashMap::with_capacity(items.len());
    let mut a_points: Vec<EdwardsPoint> = Vec::with_capacity(items.len());
    let mut a_coeffs: Vec<Scalar> = Vec::with_capacity(items.len());
    let mut r_points: Vec<EdwardsPoint> = Vec::with_capacity(items.len());
    for (it, zi) in items.iter().zip(&z) {
        let Some((r, s)) = it.r_and_s() else {
            return false;
        };
        b_coeff -= zi * s;
        r_points.push(r);
        let slot = *key_slot.entry(it.a_bytes).or_insert_with(|| {
            a_points.push(it.a);
            a_coeffs.push(Scalar::ZERO);
            a_points.len() - 1
        });
        if let Some(c) = a_coeffs.get_mut(slot) {
            *c += zi * it.k;
        }
    }
    let check = EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(&b_coeff).chain(&a_coeffs).chain(&z),
        std::iter::once(&ED25519_BASEPOINT_POINT)
            .chain(&a_points)
            .chain(&r_points),
    );
    check.mul_by_cofactor().is_identity()
}

/// Most threads [`verify_each_threads`] uses.
pub const MAX_VERIFY_THREADS: usize = 16;

/// [`verify_each`] spread over up to `threads` scoped threads (each takes a contiguous run of
/// whole chunks). The answer is the same whatever the thread count; a thread that cannot be
/// started, or fails, leaves its run to be verified on the calling thread.
pub fn verify_each_threads(items: &[SigItem], threads: usize) -> Vec<bool> {
    let threads = threads.clamp(1, MAX_VERIFY_THREADS);
    let chunks = items.len().div_ceil(BATCH_CHUNK);
    if threads == 1 || chunks < 2 {
        return verify_each(items);
    }
    let per = chunks.div_ceil(threads.min(chunks)) * BATCH_CHUNK;
    let parts: Vec<&[SigItem]> = items.chunks(per).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .skip(1)
            .map(|part| {
                std::thread::Builder::new()
                    .name("crdt-verify".into())
                    .spawn_scoped(scope, move || verify_each(part))
                    .ok()
            })
            .collect();
        let mut out = verify_each(parts.first().copied().unwrap_or_default());
        for (part, h) in parts.iter().skip(1).zip(handles) {
            match h.and_then(|h| h.join().ok()) {
                Some(r) => out.extend(r),
                None => out.extend(verify_each(part)),
            }
        }
        out
    })
}

/// Verifies each item: chunks of at most [`BATCH_CHUNK`] are batch-verified, and a chunk that
/// fails is checked one item at a time, so the answer for each item is exactly its
/// single-verification answer.
pub fn verify_each(items: &[SigItem]) -> Vec<bool> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(BATCH_CHUNK) {
        if chunk.len() > 1 && verify_batch(chunk) {
            out.extend(std::iter::repeat_n(true, chunk.len()));
        } else {
            out.extend(chunk.iter().map(SigItem::verify));
        }
    }
    out
}
