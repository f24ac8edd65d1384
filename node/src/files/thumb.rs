//! Image thumbnails, made by the sender: decoded with strict limits (a decompression bomb is
//! refused, not allocated), scaled to fit [`MAX_THUMBNAIL_SIDE`], encoded as JPEG at falling
//! quality until it fits [`MAX_THUMBNAIL`]. A file that is not a decodable PNG, JPEG or GIF
//! simply gets no thumbnail.

use std::io::{BufRead, Seek};

use image::{ImageReader, Limits};

use super::wire::{MAX_THUMBNAIL, MAX_THUMBNAIL_SIDE, Thumbnail};

/// Largest image (in pixels per side) a thumbnail is made from.
pub const MAX_SOURCE_SIDE: u32 = 16_384;
/// Most memory the decoder may allocate for the source image.
pub const MAX_SOURCE_ALLOC: u64 = 256 * 1024 * 1024;

/// A thumbnail for the image in `src`, or `None` if it is not a decodable image within limits.
pub fn make(src: impl BufRead + Seek) -> Option<Thumbnail> {
    let mut reader = ImageReader::new(src).with_guessed_format().ok()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    limits.max_alloc = Some(MAX_SOURCE_ALLOC);
    reader.limits(limits);
    let img = reader.decode().ok()?;
    let side = u32::from(MAX_THUMBNAIL_SIDE);
    let small = img.thumbnail(side, side).to_rgb8();
    let (w, h) = (small.width(), small.height());
    for quality in [80u8, 65, 50, 35, 20] {
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
        if small.write_with_encoder(enc).is_err() {
            return None;
        }
        if out.len() <= MAX_THUMBNAIL {
            return Some(Thumbnail {
                width: u16::try_from(w).ok()?,
                height: u16::try_from(h).ok()?,
                jpeg: out,
            });
        }
    }
    None
}

/// Decodes a received thumbnail to RGBA pixels (width, height, bytes), refusing anything that
/// is not a JPEG within the announced bounds.
pub fn decode(t: &Thumbnail) -> Option<(u32, u32, Vec<u8>)> {
    let mut reader =
        ImageReader::with_format(std::io::Cursor::new(&t.jpeg), image::ImageFormat::Jpeg);
    let mut limits = Limits::default();
    limits.max_image_width = Some(u32::from(MAX_THUMBNAIL_SIDE));
    limits.max_image_height = Some(u32::from(MAX_THUMBNAIL_SIDE));
    limits.max_alloc = Some(16 * 1024 * 1024);
    reader.limits(limits);
    let img = reader.decode().ok()?.to_rgba8();
    Some((img.width(), img.height(), img.into_raw()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_large_png_gets_a_small_jpeg_and_garbage_gets_none() {
        let img = image::RgbImage::from_fn(1200, 800, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        png.set_position(0);
        let t = make(png).unwrap();
        assert_eq!((t.width, t.height), (320, 213));
        assert!(t.jpeg.len() <= MAX_THUMBNAIL);
        let (w, h, px) = decode(&t).unwrap();
        assert_eq!((w, h, px.len()), (320, 213, 320 * 213 * 4));

        assert!(make(std::io::Cursor::new(vec![0x89, b'P', b'N', b'G', 0, 1, 2])).is_none());
        assert!(make(std::io::Cursor::new(b"just text".to_vec())).is_none());
        // A PNG header claiming 100,000 x 100,000 pixels is refused by the limits.
        let mut bomb = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(1, 1)
            .write_to(&mut bomb, image::ImageFormat::Png)
            .unwrap();
        let mut b = bomb.into_inner();
        b[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        b[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(make(std::io::Cursor::new(b)).is_none());
    }
}
