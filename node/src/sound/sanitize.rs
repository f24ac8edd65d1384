//! Metadata the decoders never see.
//!
//! symphonia 0.5 sizes some metadata buffers from length fields before checking them against
//! the data that is there: a Vorbis comment claiming a 4 GB string in a 100-byte FLAC file made
//! it ask for a 4 GB allocation (found by the `sound_import` fuzz target; the input is
//! `testdata/regressions/flac-comment-4gb.flac`). A clip needs no tags, pictures or cue
//! sheets, so before probing:
//!
//! * a leading ID3v2 tag is cut off (its size checked against the input);
//! * in native FLAC, every metadata block but STREAMINFO and SEEKTABLE becomes PADDING (which
//!   symphonia skips without reading), and every block must fit in the input;
//! * in RIFF/WAVE, every chunk but `fmt ` and `data` is renamed `JUNK` (skipped), and every
//!   chunk before `data` must fit in the input (`data` itself may claim more: that is a
//!   truncated or streaming file, which the duration limit handles);
//! * in Ogg, the comment header of each logical stream (`\x03vorbis` or `OpusTags`) must have
//!   every length inside its packet; Ogg pages carry a CRC, so they are checked, not rewritten.

use std::borrow::Cow;

use super::import::ImportError;

/// Most Ogg pages looked at for comment headers (they come right after the first page).
const MAX_OGG_HEADER_PAGES: usize = 64;

fn corrupt(what: &str) -> ImportError {
    ImportError::Corrupt(what.to_owned())
}

/// The bytes to hand to the decoders: `bytes` with the metadata above neutralized.
///
/// The file must begin with its format's signature (after an ID3v2 tag): `fLaC`, `RIFF` ..
/// `WAVE`, `OggS`, or an MPEG audio frame sync. symphonia's probe would otherwise scan the
/// input for a signature anywhere, and start parsing at an offset this module never checked
/// (the fuzzer found a FLAC signature behind junk carrying the same 4 GB comment).
pub(super) fn sanitize<'a>(
    bytes: &'a [u8],
    hint: Option<&str>,
) -> Result<Cow<'a, [u8]>, ImportError> {
    let bytes = strip_id3v2(bytes)?;
    let mpeg_sync = bytes.len() >= 2 && bytes[0] == 0xff && bytes[1] & 0xe0 == 0xe0;
    let riff = bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE";
    if !(bytes.starts_with(b"fLaC") || bytes.starts_with(b"OggS") || riff || mpeg_sync) {
        return Err(ImportError::Unrecognized {
            claimed: hint.map(|h| h.trim_start_matches('.').to_ascii_lowercase()),
        });
    }
    if bytes.starts_with(b"fLaC") {
        return flac(bytes).map(Cow::Owned);
    }
    if riff {
        return riff_chunks(bytes).map(Cow::Owned);
    }
    if bytes.starts_with(b"OggS") {
        ogg_comments(bytes)?;
    }
    Ok(Cow::Borrowed(bytes))
}

fn strip_id3v2(bytes: &[u8]) -> Result<&[u8], ImportError> {
    if !bytes.starts_with(b"ID3") || bytes.len() < 10 {
        return Ok(bytes);
    }
    let size = bytes[6..10]
        .iter()
        .fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7f));
    let footer = if bytes[5] & 0x10 != 0 { 10 } else { 0 };
    bytes
        .get(10 + size + footer..)
        .ok_or_else(|| corrupt("the ID3 tag is longer than the file"))
}

fn flac(bytes: &[u8]) -> Result<Vec<u8>, ImportError> {
    let mut out = bytes.to_vec();
    let mut pos = 4;
    loop {
        let header = out
            .get(pos..pos + 4)
            .ok_or_else(|| corrupt("FLAC metadata ends early"))?;
        let (last, kind) = (header[0] & 0x80 != 0, header[0] & 0x7f);
        let len =
            (usize::from(header[1]) << 16) | (usize::from(header[2]) << 8) | usize::from(header[3]);
        if pos + 4 + len > out.len() {
            return Err(corrupt("a FLAC metadata block is longer than the file"));
        }
        // 0 STREAMINFO and 3 SEEKTABLE are kept; everything else is padding (1).
        if kind != 0 && kind != 3 {
            out[pos] = (header[0] & 0x80) | 1;
        }
        pos += 4 + len;
        if last {
            return Ok(out);
        }
    }
}

fn riff_chunks(bytes: &[u8]) -> Result<Vec<u8>, ImportError> {
    let mut out = bytes.to_vec();
    let mut pos = 12;
    while pos + 8 <= out.len() {
        let id: [u8; 4] = [out[pos], out[pos + 1], out[pos + 2], out[pos + 3]];
        let len =
            u32::from_le_bytes([out[pos + 4], out[pos + 5], out[pos + 6], out[pos + 7]]) as usize;
        if &id == b"data" {
            break;
        }
        if pos + 8 + len > out.len() {
            return Err(corrupt("a WAV chunk is longer than the file"));
        }
        if &id != b"fmt " {
            out[pos..pos + 4].copy_from_slice(b"JUNK");
        }
        // Chunks are padded to an even length.
        pos += 8 + len + (len & 1);
    }
    Ok(out)
}

/// Checks the comment header packet of every logical stream in the first pages.
fn ogg_comments(bytes: &[u8]) -> Result<(), ImportError> {
    // Per stream serial: (packets completed, bytes of the packet being assembled).
    let mut streams: Vec<(u32, usize, Vec<u8>)> = Vec::new();
    let mut pos = 0;
    for _ in 0..MAX_OGG_HEADER_PAGES {
        let Some(h) = bytes.get(pos..pos + 27) else {
            break;
        };
        if &h[..4] != b"OggS" {
            break;
        }
        let serial = u32::from_le_bytes([h[14], h[15], h[16], h[17]]);
        let nseg = usize::from(h[26]);
        let table = bytes
            .get(pos + 27..pos + 27 + nseg)
            .ok_or_else(|| corrupt("an Ogg page ends early"))?;
        let mut data = pos + 27 + nseg;
        let i = match streams.iter().position(|s| s.0 == serial) {
            Some(i) => i,
            None => {
                streams.push((serial, 0, Vec::new()));
                streams.len() - 1
            }
        };
        for &lace in table {
            let seg = bytes
                .get(data..data + usize::from(lace))
                .ok_or_else(|| corrupt("an Ogg page ends early"))?;
            data += usize::from(lace);
            let s = &mut streams[i];
            if s.1 == 1 {
                s.2.extend_from_slice(seg);
            }
            if lace < 255 {
                if s.1 == 1 {
                    check_comment_packet(&s.2)?;
                    s.2 = Vec::new();
                }
                s.1 += 1;
            }
        }
        pos = data;
        if streams.iter().all(|s| s.1 >= 2) {
            break;
        }
    }
    Ok(())
}

fn check_comment_packet(p: &[u8]) -> Result<(), ImportError> {
    let body = if let Some(rest) = p.strip_prefix(b"\x03vorbis") {
        rest
    } else if let Some(rest) = p.strip_prefix(b"OpusTags") {
        rest
    } else {
        // Not a comment header this build would parse (FLAC-in-Ogg and others).
        return Ok(());
    };
    let bad = || corrupt("malformed comment header");
    let mut r = body;
    let take_len = |r: &mut &[u8]| -> Result<usize, ImportError> {
        let (n, rest) = r.split_first_chunk::<4>().ok_or_else(bad)?;
        *r = rest;
        Ok(u32::from_le_bytes(*n) as usize)
    };
    let vendor = take_len(&mut r)?;
    r = r.get(vendor..).ok_or_else(bad)?;
    let count = take_len(&mut r)?;
    // Each comment needs at least its 4-byte length.
    if count > r.len() / 4 {
        return Err(bad());
    }
    for _ in 0..count {
        let n = take_len(&mut r)?;
        r = r.get(n..).ok_or_else(bad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAC: &[u8] = include_bytes!("testdata/clip.flac");
    const VORBIS: &[u8] = include_bytes!("testdata/clip.ogg");
    const OPUS: &[u8] = include_bytes!("testdata/clip.opus");
    const WAV: &[u8] = include_bytes!("testdata/clip.wav");
    const FLAC_BOMB: &[u8] = include_bytes!("testdata/regressions/flac-comment-4gb.flac");
    const FLAC_BEHIND_JUNK: &[u8] =
        include_bytes!("testdata/regressions/flac-comment-4gb-behind-junk.bin");

    /// Regression (fuzz target `sound_import`): the same comment, behind junk that symphonia's
    /// probe would have skipped to find the FLAC signature.
    #[test]
    fn a_file_must_begin_with_its_signature() {
        assert_eq!(
            sanitize(FLAC_BEHIND_JUNK, Some("flac")).unwrap_err(),
            ImportError::Unrecognized {
                claimed: Some("flac".into())
            }
        );
        let mut junk_then_wav = b"junk".to_vec();
        junk_then_wav.extend_from_slice(WAV);
        assert!(sanitize(&junk_then_wav, None).is_err());
    }

    /// Regression (fuzz target `sound_import`): a Vorbis comment in FLAC claiming 4 GB made
    /// symphonia ask for a 4 GB buffer. The comment block is padding before symphonia sees it.
    #[test]
    fn flac_comment_blocks_become_padding() {
        let s = sanitize(FLAC_BOMB, None).unwrap();
        let mut pos = 4;
        let mut kinds = Vec::new();
        loop {
            let h = &s[pos..pos + 4];
            kinds.push(h[0] & 0x7f);
            let len = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
            pos += 4 + len;
            if h[0] & 0x80 != 0 {
                break;
            }
        }
        assert_eq!(kinds[0], 0);
        assert!(kinds.iter().all(|k| [0, 1, 3].contains(k)), "{kinds:?}");
        assert!(kinds.contains(&1), "{kinds:?}");
        // And the import of it is a clean error or a clip, never a crash.
        let _ = crate::sound::import(FLAC_BOMB, Some("flac"));
    }

    #[test]
    fn fixtures_pass_unchanged_where_nothing_is_rewritten() {
        assert!(matches!(sanitize(VORBIS, None).unwrap(), Cow::Borrowed(_)));
        assert!(matches!(sanitize(OPUS, None).unwrap(), Cow::Borrowed(_)));
        assert_eq!(&sanitize(WAV, None).unwrap()[..], WAV);
        // FLAC is rewritten in place (block types only): same length, same audio.
        assert_eq!(sanitize(FLAC, None).unwrap().len(), FLAC.len());
    }

    #[test]
    fn an_ogg_comment_longer_than_its_packet_is_refused() {
        // Find the Vorbis comment header and make its vendor length huge. The page CRC is not
        // fixed: the check runs before any CRC is looked at.
        let at = VORBIS.windows(7).position(|w| w == b"\x03vorbis").unwrap();
        let mut evil = VORBIS.to_vec();
        evil[at + 7..at + 11].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(
            sanitize(&evil, None).unwrap_err(),
            ImportError::Corrupt("malformed comment header".into())
        );
    }

    #[test]
    fn an_id3_tag_is_cut_and_its_size_checked() {
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x05hello".to_vec();
        tagged.extend_from_slice(WAV);
        assert_eq!(&sanitize(&tagged, None).unwrap()[..], WAV);
        assert!(sanitize(b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f", None).is_err());
    }

    #[test]
    fn a_wav_chunk_longer_than_the_file_is_refused() {
        let mut evil = WAV[..12].to_vec();
        evil.extend_from_slice(b"LIST");
        evil.extend_from_slice(&0xffff_0000u32.to_le_bytes());
        evil.extend_from_slice(&WAV[12..]);
        assert!(sanitize(&evil, None).is_err());
    }
}
