//! The Opus decoder called through libopus directly, for the controls the `opus` crate lacks.
//!
//! Deep PLC (libopus 1.5+) runs only when the decoder's complexity is 5 or more
//! (`OPUS_SET_COMPLEXITY` on the *decoder*, see `src/opus_decoder.c`), and the `opus` crate
//! has no way to set it. This module is the one place in the crate with `unsafe`: a decoder
//! handle owned by [`RawDecoder`], created, controlled, used and destroyed only through the
//! functions below. Everything the callers pass is a Rust slice; lengths go to libopus next to
//! the pointers they describe.
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
        let dec = Self { st };
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

    /// Decodes `data` (empty: conceal a lost frame) into `out`, whose length is the frame size
    /// in samples (mono). With `fec`, decodes the in-band FEC of `data` for the frame before it.
    /// Returns the samples written.
    pub(crate) fn decode(
        &mut self,
        data: &[u8],
        out: &mut [i16],
        fec: bool,
    ) -> Result<usize, CodecError> {
        let len = i32::try_from(data.len()).map_err(|_| CodecError::PacketTooLong(data.len()))?;
        let frame = c_int::try_from(out.len()).map_err(|_| opus_error("frame size", -1))?;
        let ptr = if data.is_empty() {
            std::ptr::null()
        } else {
            data.as_ptr()
        };
        // SAFETY: `st` is live; `ptr`/`len` describe `data` (or null/0 for loss); `out` holds
        // `frame` samples of one channel, the most libopus writes.
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
