//! The Opus encoder, decoder and DRED decoder called through libopus directly, for the
//! controls the `opus` crate lacks.
//!
//! Deep PLC (libopus 1.5+) runs only when the decoder's complexity is 5 or more
//! (`OPUS_SET_COMPLEXITY` on the *decoder*, see `src/opus_decoder.c`), and DRED needs
//! `OPUS_SET_DRED_DURATION` on the encoder and the `opus_dred_*` calls; the `opus` crate has
//! none of these. This module is the one place in the crate with `unsafe`: handles owned by
//! [`RawEncoder`], [`RawDecoder`] and [`RawDred`], created, controlled, used and destroyed only
//! through the functions below. Everything the callers pass is a Rust slice; lengths go to
//! libopus next to the pointers they describe. Variadic controls are called only with the
//! argument type their request takes.
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::ptr::NonNull;

use opusic_sys as ffi;

use super::codec::CodecError;

fn opus_error(what: &str, code: c_int) -> CodecError {
    CodecError::Opus(format!("{what}: libopus error {code}"))
}

/// An owned libopus decoder.
pub(crate) struct RawDecoder {
    st: NonNull<ffi::OpusDecoder>,
    channels: usize,
}

// SAFETY: the decoder state is plain memory owned by this value alone; libopus keeps no
// thread-local or global references to it, so it may move to another thread. It is not `Sync`:
// every call takes `&mut self`.
unsafe impl Send for RawDecoder {}

impl RawDecoder {
    /// A decoder at `sample_rate` Hz with `channels` channels and the given complexity (0..=10;
    /// 5 and above turn on deep PLC where libopus was built with it).
    pub(crate) fn new(sample_rate: u32, channels: u8, complexity: u8) -> Result<Self, CodecError> {
        let rate = c_int::try_from(sample_rate).map_err(|_| opus_error("sample rate", -1))?;
        let mut err: c_int = 0;
        // SAFETY: `err` is a valid out-pointer for the duration of the call.
        let raw = unsafe { ffi::opus_decoder_create(rate, c_int::from(channels), &mut err) };
        let st = NonNull::new(raw).ok_or_else(|| opus_error("opus_decoder_create", err))?;
        let dec = Self {
            st,
            channels: usize::from(channels.max(1)),
        };
        if err != ffi::OPUS_OK {
            return Err(opus_error("opus_decoder_create", err));
        }
        // SAFETY: `st` is a live decoder; OPUS_SET_COMPLEXITY takes one opus_int32 argument.
        let rc = unsafe {
            ffi::opus_decoder_ctl(
                dec.st.as_ptr(),
                ffi::OPUS_SET_COMPLEXITY_REQUEST,
                c_int::from(complexity.min(10)),
            )
        };
        if rc != ffi::OPUS_OK {
            return Err(opus_error("OPUS_SET_COMPLEXITY", rc));
        }
        Ok(dec)
    }

    /// Decodes `data` (empty: conceal a lost frame) into `out`, which holds one frame of
    /// interleaved samples for every channel. With `fec`, decodes the in-band FEC of `data` for
    /// the frame before it. Returns the samples written per channel.
    pub(crate) fn decode(
        &mut self,
        data: &[u8],
        out: &mut [i16],
        fec: bool,
    ) -> Result<usize, CodecError> {
        let len = i32::try_from(data.len()).map_err(|_| CodecError::PacketTooLong(data.len()))?;
        let frame =
            c_int::try_from(out.len() / self.channels).map_err(|_| opus_error("frame size", -1))?;
        let ptr = if data.is_empty() {
            std::ptr::null()
        } else {
            data.as_ptr()
        };
        // SAFETY: `st` is live; `ptr`/`len` describe `data` (or null/0 for loss); `out` holds
        // `frame` samples for each of the decoder's channels, the most libopus writes.
        let n = unsafe {
            ffi::opus_decode(
                self.st.as_ptr(),
                ptr,
                len,
                out.as_mut_ptr(),
                frame,
                c_int::from(fec),
            )
        };
        usize::try_from(n).map_err(|_| opus_error("opus_decode", n))
    }
}

impl Drop for RawDecoder {
    fn drop(&mut self) {
        // SAFETY: `st` came from opus_decoder_create and is destroyed exactly once, here.
        unsafe { ffi::opus_decoder_destroy(self.st.as_ptr()) }
    }
}

impl std::fmt::Debug for RawDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDecoder").finish_non_exhaustive()
    }
}

/// An owned libopus encoder (the `opus` crate's hides its handle, and DRED needs a control).
pub(crate) struct RawEncoder {
    st: NonNull<ffi::OpusEncoder>,
}

// SAFETY: as for `RawDecoder`: plain memory owned by this value alone, used through `&mut`.
unsafe impl Send for RawEncoder {}

impl RawEncoder {
    /// A VoIP encoder at `sample_rate` Hz, mono.
    pub(crate) fn new_voip_mono(sample_rate: u32) -> Result<Self, CodecError> {
        let rate = c_int::try_from(sample_rate).map_err(|_| opus_error("sample rate", -1))?;
        let mut err: c_int = 0;
        // SAFETY: `err` is a valid out-pointer for the duration of the call.
        let raw =
            unsafe { ffi::opus_encoder_create(rate, 1, ffi::OPUS_APPLICATION_VOIP, &mut err) };
        let st = NonNull::new(raw).ok_or_else(|| opus_error("opus_encoder_create", err))?;
        let enc = Self { st };
        if err != ffi::OPUS_OK {
            return Err(opus_error("opus_encoder_create", err));
        }
        Ok(enc)
    }

    /// An `OPUS_SET_*` control that takes one `opus_int32`.
    pub(crate) fn set(&mut self, request: c_int, value: i32, what: &str) -> Result<(), CodecError> {
        // SAFETY: `st` is live; every request passed here (the SET_* constants used in
        // `codec.rs`) takes exactly one opus_int32 argument.
        let rc = unsafe { ffi::opus_encoder_ctl(self.st.as_ptr(), request, value) };
        if rc == ffi::OPUS_OK {
            Ok(())
        } else {
            Err(opus_error(what, rc))
        }
    }

    /// The encoder's lookahead in samples.
    pub(crate) fn lookahead(&mut self) -> Result<i32, CodecError> {
        let mut v: i32 = 0;
        // SAFETY: `st` is live; OPUS_GET_LOOKAHEAD takes one opus_int32 out-pointer, `v` here.
        let rc = unsafe {
            ffi::opus_encoder_ctl(
                self.st.as_ptr(),
                ffi::OPUS_GET_LOOKAHEAD_REQUEST,
                &mut v as *mut i32,
            )
        };
        if rc == ffi::OPUS_OK {
            Ok(v)
        } else {
            Err(opus_error("OPUS_GET_LOOKAHEAD", rc))
        }
    }

    /// Encodes one frame of `pcm` (its length is the frame size) into `out`; returns the
    /// packet's length.
    pub(crate) fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        let frame = c_int::try_from(pcm.len()).map_err(|_| opus_error("frame size", -1))?;
        let max = i32::try_from(out.len()).map_err(|_| opus_error("output size", -1))?;
        // SAFETY: `st` is live; `pcm` holds `frame` samples (mono) and `out` `max` bytes, the
        // most libopus reads and writes.
        let n = unsafe {
            ffi::opus_encode(self.st.as_ptr(), pcm.as_ptr(), frame, out.as_mut_ptr(), max)
        };
        usize::try_from(n).map_err(|_| opus_error("opus_encode", n))
    }
}

impl Drop for RawEncoder {
    fn drop(&mut self) {
        // SAFETY: `st` came from opus_encoder_create and is destroyed exactly once, here.
        unsafe { ffi::opus_encoder_destroy(self.st.as_ptr()) }
    }
}

impl std::fmt::Debug for RawEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEncoder").finish_non_exhaustive()
    }
}

/// DRED (deep redundancy) state for one stream: the DRED decoder and one parsed DRED payload.
pub(crate) struct RawDred {
    dec: NonNull<ffi::OpusDREDDecoder>,
    dred: NonNull<ffi::OpusDRED>,
}

// SAFETY: as for `RawDecoder`.
unsafe impl Send for RawDred {}

impl RawDred {
    pub(crate) fn new() -> Result<Self, CodecError> {
        let mut err: c_int = 0;
        // SAFETY: `err` is a valid out-pointer.
        let dec = unsafe { ffi::opus_dred_decoder_create(&mut err) };
        let dec = NonNull::new(dec).ok_or_else(|| opus_error("opus_dred_decoder_create", err))?;
        // SAFETY: `err` is a valid out-pointer.
        let dred = unsafe { ffi::opus_dred_alloc(&mut err) };
        let Some(dred) = NonNull::new(dred) else {
            // SAFETY: `dec` is live and not stored anywhere else.
            unsafe { ffi::opus_dred_decoder_destroy(dec.as_ptr()) };
            return Err(opus_error("opus_dred_alloc", err));
        };
        Ok(Self { dec, dred })
    }

    /// Parses the DRED data of `packet`; returns how many samples (at `sample_rate`) before the
    /// packet's own audio it covers (0 when the packet carries none).
    pub(crate) fn parse(
        &mut self,
        packet: &[u8],
        max_samples: u32,
        sample_rate: u32,
    ) -> Result<usize, CodecError> {
        let len =
            i32::try_from(packet.len()).map_err(|_| CodecError::PacketTooLong(packet.len()))?;
        let max = i32::try_from(max_samples).map_err(|_| opus_error("DRED samples", -1))?;
        let rate = i32::try_from(sample_rate).map_err(|_| opus_error("sample rate", -1))?;
        let mut end: c_int = 0;
        // SAFETY: `dec` and `dred` are live and owned here; `packet`/`len` describe the input;
        // `end` is a valid out-pointer.
        let n = unsafe {
            ffi::opus_dred_parse(
                self.dec.as_ptr(),
                self.dred.as_ptr(),
                packet.as_ptr(),
                len,
                max,
                rate,
                &mut end,
                0,
            )
        };
        usize::try_from(n).map_err(|_| opus_error("opus_dred_parse", n))
    }
}

impl Drop for RawDred {
    fn drop(&mut self) {
        // SAFETY: both came from their create/alloc calls and are released exactly once, here.
        unsafe {
            ffi::opus_dred_free(self.dred.as_ptr());
            ffi::opus_dred_decoder_destroy(self.dec.as_ptr());
        }
    }
}

impl std::fmt::Debug for RawDred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDred").finish_non_exhaustive()
    }
}

impl RawDecoder {
    /// Decodes the audio `offset` samples before the start of the packet `dred` was parsed
    /// from, `out.len()` samples long.
    pub(crate) fn dred_decode(
        &mut self,
        dred: &RawDred,
        offset: usize,
        out: &mut [i16],
    ) -> Result<usize, CodecError> {
        let off = i32::try_from(offset).map_err(|_| opus_error("DRED offset", -1))?;
        let frame =
            i32::try_from(out.len() / self.channels).map_err(|_| opus_error("frame size", -1))?;
        // SAFETY: `st` and `dred.dred` are live; `out` holds `frame` samples for each of the
        // decoder's channels.
        let n = unsafe {
            ffi::opus_decoder_dred_decode(
                self.st.as_ptr(),
                dred.dred.as_ptr(),
                off,
                out.as_mut_ptr(),
                frame,
            )
        };
        usize::try_from(n).map_err(|_| opus_error("opus_decoder_dred_decode", n))
    }
}
