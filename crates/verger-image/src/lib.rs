//! Image decoding and resizing that reproduce Pillow bit for bit.
//!
//! The original pipeline fed MobileNetV2 with `PIL.Image.open(path).resize((224, 224))`, converted to RGB
//! and scaled to `x / 127.5 - 1`. Features only match if the pixels match, so this crate ports exactly
//! that: decode into the mode Pillow would give ([`decode`]), Pillow's resampling in that mode
//! ([`resize`]), Pillow's conversion to RGB ([`convert`]) and the model's input scaling ([`preprocess`]).
//! JPEG goes through libjpeg-turbo, the decoder Pillow itself uses, so the decoded samples are identical.
//!
//! Scope: pure functions over byte buffers. No files, no object stores, no model, no Parquet.

pub mod convert;
pub mod decode;
mod error;
mod pixels;
pub mod preprocess;
pub mod resize;

pub use decode::{decode, header, Header, Limits};
pub use error::ImageError;
pub use pixels::{Mode, Pixels};

/// Side of the square the model sees.
pub const MODEL_SIDE: usize = 224;

/// The version of what decoding, resizing and scaling produce: part of a feature cache's key, so bump it
/// whenever a change here could change one pixel.
pub const PREPROCESS_VERSION: u32 = 1;

/// The original pipeline's pixel step: decode, `resize((224, 224))` in the decoded mode, then `convert("RGB")`.
///
/// Returns `224 * 224 * 3` bytes, row-major RGB.
pub fn load_rgb224(bytes: &[u8], limits: &Limits) -> Result<Vec<u8>, ImageError> {
    let decoded = decode(bytes, limits)?;
    let resized = resize::pillow_resize(&decoded, MODEL_SIDE, MODEL_SIDE);
    Ok(convert::into_rgb(resized).data)
}

/// Encodes 8-bit RGB pixels as PNG, to look at exactly what the model sees.
pub fn encode_png(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| ImageError::Png(e.to_string()))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| ImageError::Png(e.to_string()))?;
    writer.finish().map_err(|e| ImageError::Png(e.to_string()))?;
    Ok(out)
}
