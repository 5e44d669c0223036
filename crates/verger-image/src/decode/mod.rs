//! Decoding into the mode Pillow's `Image.open` would give, refusing oversized images before allocating.

mod jpeg;
mod png;

use crate::error::ImageError;
use crate::pixels::Pixels;

/// Pillow's `Image.MAX_IMAGE_PIXELS`: `1024 * 1024 * 1024 // 4 // 3`.
pub const PILLOW_MAX_IMAGE_PIXELS: u64 = 1024 * 1024 * 1024 / 4 / 3;

/// Guards applied before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Images with more pixels than this are refused. The default is Pillow's: it raises
    /// `DecompressionBombError` above twice `MAX_IMAGE_PIXELS` (and only warns below).
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 2 * PILLOW_MAX_IMAGE_PIXELS,
        }
    }
}

impl Limits {
    fn check(&self, width: usize, height: usize) -> Result<(), ImageError> {
        let pixels = width as u64 * height as u64;
        if pixels > self.max_pixels {
            return Err(ImageError::TooLarge {
                width: width as u64,
                height: height as u64,
                pixels,
                limit: self.max_pixels,
            });
        }
        if pixels == 0 {
            return Err(ImageError::Unsupported(format!(
                "image has no pixels ({width}x{height})"
            )));
        }
        Ok(())
    }
}

/// What an image's header says before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u64,
    pub height: u64,
    /// An upper bound of the bytes decoding and resizing it hold at once: the decoder's own buffers, the
    /// decoded pixels, and a copy of them in conversion (premultiplied alpha or RGB). A service admits an
    /// image against its memory budget by this, before allocating anything.
    pub peak_bytes: u64,
}

/// Bytes per pixel beside the decoder's own: the decoded pixels (at most 4 per pixel in the modes decoding
/// gives) and one converted copy of them.
pub(crate) const CONVERSION_BYTES_PER_PIXEL: u64 = 8;

/// Reads the header of a JPEG or PNG (chosen as [`decode`] chooses): its size, and its decoding's peak memory.
pub fn header(bytes: &[u8]) -> Result<Header, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg::JpegDecoder::new()?.header(bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png::header(bytes)
    } else {
        Err(ImageError::UnknownFormat)
    }
}

/// Decodes a JPEG or PNG, chosen by its signature as Pillow does (the file name does not matter).
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Pixels, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg::JpegDecoder::new()?.decode(bytes, limits)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png::decode(bytes, limits)
    } else {
        Err(ImageError::UnknownFormat)
    }
}
