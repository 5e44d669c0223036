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

/// A small JPEG of the image for people to look at (never for the model): fitted into `side` × `side` with
/// its aspect kept, Pillow's resampling, RGB, quality 80.
pub fn thumbnail_jpeg(bytes: &[u8], side: usize, limits: &Limits) -> Result<Vec<u8>, ImageError> {
    let decoded = decode(bytes, limits)?;
    let longest = decoded.width.max(decoded.height).max(1) as f64;
    let fit = |n: usize| ((n as f64 * side as f64 / longest).round() as usize).max(1);
    let (width, height) = (fit(decoded.width), fit(decoded.height));
    let rgb = convert::into_rgb(resize::pillow_resize(&decoded, width, height));
    let image = turbojpeg::Image {
        pixels: &rgb.data[..],
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    let jpeg =
        turbojpeg::compress(image, 80, turbojpeg::Subsamp::Sub2x2).map_err(|e| ImageError::Jpeg(e.to_string()))?;
    Ok(jpeg.to_vec())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thumbnail_is_a_small_jpeg_with_the_aspect_kept() {
        // A 100x50 PNG: the thumbnail is 64x32.
        let rgb: Vec<u8> = (0..100 * 50 * 3).map(|i| (i % 251) as u8).collect();
        let png = encode_png(&rgb, 100, 50).unwrap();
        let jpeg = thumbnail_jpeg(&png, 64, &Limits::default()).unwrap();
        let back = decode(&jpeg, &Limits::default()).unwrap();
        assert_eq!((back.width, back.height, back.mode), (64, 32, Mode::Rgb));
        assert!(jpeg.len() < 64 * 32 * 3, "{} bytes", jpeg.len());
        assert_eq!(thumbnail_jpeg(b"", 64, &Limits::default()), Err(ImageError::Empty));
    }
}
