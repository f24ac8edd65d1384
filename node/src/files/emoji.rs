//! Custom emoji images. The uploader's client turns whatever image it is given (PNG, JPEG,
//! GIF or WebP; an animation's first frame) into one canonical form: an RGBA PNG of at most
//! [`EMOJI_SIDE`] pixels per side, re-encoded from pixels so that no metadata of the original
//! (camera, location, comments) survives. Members decode a received image only as such a PNG,
//! with limits, so a hostile uploader's file is refused rather than allocated.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};
use thiserror::Error;

/// Largest side of an emoji image, in pixels (Discord shows emoji at up to 128 px).
pub const EMOJI_SIDE: u32 = 128;
/// Media type of an emoji image file.
pub const EMOJI_MIME: &str = "image/png";
/// Largest source file an upload accepts (it is scaled down and re-encoded).
pub const MAX_SOURCE_BYTES: usize = 8 * 1024 * 1024;
/// Largest source image, in pixels per side.
const MAX_SOURCE_SIDE: u32 = 8_192;
/// Most memory the decoder may allocate for a source image.
const MAX_SOURCE_ALLOC: u64 = 300 * 1024 * 1024;

/// Why an image cannot be an emoji.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EmojiImageError {
    /// Over [`MAX_SOURCE_BYTES`].
    #[error("the image file is {0} bytes; an emoji is made from at most 8 MiB")]
    TooLarge(usize),
    /// Not a PNG, JPEG, GIF or WebP this decoder reads within its limits.
    #[error(
        "not an image this client reads (PNG, JPEG, GIF or WebP, at most 8192 pixels a side): {0}"
    )]
    NotAnImage(String),
    /// A received image that is not the canonical form.
    #[error("not an emoji image (a PNG of at most 128 x 128 pixels)")]
    NotEmoji,
    /// Encoding failed (should not happen for pixels in memory).
    #[error("encoding the emoji image failed: {0}")]
    Encode(String),
}

/// Makes the canonical emoji image from an uploaded file.
pub fn normalize(src: &[u8]) -> Result<Vec<u8>, EmojiImageError> {
    if src.len() > MAX_SOURCE_BYTES {
        return Err(EmojiImageError::TooLarge(src.len()));
    }
    let mut reader = ImageReader::new(Cursor::new(src))
        .with_guessed_format()
        .map_err(|e| EmojiImageError::NotAnImage(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) => {}
        _ => return Err(EmojiImageError::NotAnImage("unknown format".into())),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    limits.max_alloc = Some(MAX_SOURCE_ALLOC);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| EmojiImageError::NotAnImage(e.to_string()))?;
    let img = if img.width() > EMOJI_SIDE || img.height() > EMOJI_SIDE {
        img.thumbnail(EMOJI_SIDE, EMOJI_SIDE)
    } else {
        img
    };
    let rgba = img.to_rgba8();
    let mut out = Cursor::new(Vec::new());
    rgba.write_to(&mut out, ImageFormat::Png)
        .map_err(|e| EmojiImageError::Encode(e.to_string()))?;
    Ok(out.into_inner())
}

/// Decodes a received emoji image to RGBA pixels (width, height, bytes), refusing anything but
/// a PNG within [`EMOJI_SIDE`].
pub fn decode(png: &[u8]) -> Result<(u32, u32, Vec<u8>), EmojiImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(png), ImageFormat::Png);
    let mut limits = Limits::default();
    limits.max_image_width = Some(EMOJI_SIDE);
    limits.max_image_height = Some(EMOJI_SIDE);
    limits.max_alloc = Some(4 * 1024 * 1024);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|_| EmojiImageError::NotEmoji)?
        .to_rgba8();
    Ok((img.width(), img.height(), img.into_raw()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn encoded(img: &image::RgbaImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn large_images_are_scaled_and_every_format_becomes_a_png() {
        let img = image::RgbaImage::from_fn(600, 300, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 7, 255])
        });
        for f in [ImageFormat::Png, ImageFormat::Gif, ImageFormat::WebP] {
            let png = normalize(&encoded(&img, f)).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            let (w, h, px) = decode(&png).unwrap();
            assert_eq!((w, h, px.len()), (128, 64, 128 * 64 * 4), "{f:?}");
        }
        let mut jpeg = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgba8(img)
            .to_rgb8()
            .write_to(&mut jpeg, ImageFormat::Jpeg)
            .unwrap();
        let jpeg = jpeg.into_inner();
        assert_eq!(decode(&normalize(&jpeg).unwrap()).unwrap().0, 128);
        // Small images keep their size.
        let small = image::RgbaImage::from_pixel(32, 20, image::Rgba([1, 2, 3, 4]));
        let (w, h, px) = decode(&normalize(&encoded(&small, ImageFormat::Png)).unwrap()).unwrap();
        assert_eq!((w, h), (32, 20));
        assert_eq!(&px[..4], &[1, 2, 3, 4]);
    }

    #[test]
    fn garbage_bombs_and_oversized_files_are_refused() {
        assert!(matches!(
            normalize(b"just some text"),
            Err(EmojiImageError::NotAnImage(_))
        ));
        let png = encoded(&image::RgbaImage::new(1, 1), ImageFormat::Png);
        assert!(matches!(
            normalize(&png[..png.len() / 2]),
            Err(EmojiImageError::NotAnImage(_))
        ));
        // A PNG header claiming 100,000 x 100,000 pixels.
        let mut bomb = png.clone();
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(matches!(
            normalize(&bomb),
            Err(EmojiImageError::NotAnImage(_))
        ));
        assert_eq!(
            normalize(&vec![0u8; MAX_SOURCE_BYTES + 1]),
            Err(EmojiImageError::TooLarge(MAX_SOURCE_BYTES + 1))
        );
        // Received: only a PNG within 128 pixels a side.
        let big = encoded(&image::RgbaImage::new(129, 10), ImageFormat::Png);
        assert_eq!(decode(&big), Err(EmojiImageError::NotEmoji));
        let gif = encoded(&image::RgbaImage::new(10, 10), ImageFormat::Gif);
        assert_eq!(decode(&gif), Err(EmojiImageError::NotEmoji));
        assert_eq!(decode(b""), Err(EmojiImageError::NotEmoji));
    }
}
