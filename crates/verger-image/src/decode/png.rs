//! PNG through the `png` crate, with samples mapped to the mode and rawmode of Pillow's `PngImagePlugin`.
//! PNG is lossless, so matching Pillow only takes the same unpacking rules.

use std::io::Cursor;

use png::{BitDepth, ColorType, Transformations};

use super::{Header, Limits, CONVERSION_BYTES_PER_PIXEL};
use crate::error::ImageError;
use crate::pixels::{Mode, Pixels};

/// Reads the header (up to the first image data): the image's size, and what decoding it costs in memory at
/// its peak (the decoder's buffer of raw samples beside the unpacked pixels).
pub fn header(bytes: &[u8]) -> Result<Header, ImageError> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(Transformations::IDENTITY);
    let reader = decoder.read_info().map_err(png_error)?;
    let info = reader.info();
    let (width, height) = (u64::from(info.width), u64::from(info.height));
    let raw = info.bytes_per_pixel() as u64;
    Ok(Header {
        width,
        height,
        peak_bytes: width * height * (raw + CONVERSION_BYTES_PER_PIXEL) + height,
    })
}

pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Pixels, ImageError> {
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: usize::try_from(limits.max_pixels.saturating_mul(8)).unwrap_or(usize::MAX),
        },
    );
    decoder.set_transformations(Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(png_error)?;
    let (width, height, color, depth) = {
        let info = reader.info();
        (
            info.width as usize,
            info.height as usize,
            info.color_type,
            info.bit_depth,
        )
    };
    limits.check(width, height)?;
    let palette = reader
        .info()
        .palette
        .as_ref()
        .map(|p| p.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect());
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ImageError::Png("image too large".into()))?;
    let mut raw = vec![0u8; size];
    let frame = reader.next_frame(&mut raw).map_err(png_error)?;
    check_text_chunks(reader.info())?;
    check_trailing_chunks(bytes)?;
    let stride = frame.line_size;

    let rows = (0..height).map(|y| &raw[y * stride..(y + 1) * stride]);
    let mut data = Vec::with_capacity(width * height * 4);
    let mode = match (color, depth) {
        (ColorType::Grayscale, BitDepth::One) => {
            rows.for_each(|r| data.extend(unpack_bits(r, 1, width).map(|v| v * 255)));
            Mode::Bilevel
        }
        (ColorType::Grayscale, BitDepth::Two) => {
            rows.for_each(|r| data.extend(unpack_bits(r, 2, width).map(|v| v * 85)));
            Mode::L
        }
        (ColorType::Grayscale, BitDepth::Four) => {
            rows.for_each(|r| data.extend(unpack_bits(r, 4, width).map(|v| v * 17)));
            Mode::L
        }
        (ColorType::Grayscale, BitDepth::Sixteen) => {
            rows.for_each(|r| {
                r.chunks_exact(2)
                    .for_each(|s| data.extend(u16::from_be_bytes([s[0], s[1]]).to_ne_bytes()))
            });
            Mode::I16
        }
        (ColorType::Indexed, depth) => {
            let bits = depth as u8;
            rows.for_each(|r| data.extend(unpack_bits(r, bits, width)));
            let palette: Vec<[u8; 3]> = palette.ok_or_else(|| ImageError::Png("palette image without PLTE".into()))?;
            Mode::P {
                palette: full_palette(palette),
            }
        }
        (color, BitDepth::Eight) => {
            rows.for_each(|r| data.extend_from_slice(&r[..width * color.samples()]));
            eight_bit_mode(color)
        }
        (color, BitDepth::Sixteen) => {
            // Pillow's 16-bit colour rawmodes ("RGB;16B", "LA;16B", ...) keep the most significant byte.
            rows.for_each(|r| data.extend(r[..width * color.samples() * 2].iter().step_by(2)));
            eight_bit_mode(color)
        }
        (color, depth) => {
            return Err(ImageError::Png(format!(
                "invalid colour type {color:?} at depth {depth:?}"
            )))
        }
    };
    Ok(Pixels::new(mode, width, height, data))
}

fn eight_bit_mode(color: ColorType) -> Mode {
    match color {
        ColorType::Grayscale => Mode::L,
        ColorType::GrayscaleAlpha => Mode::LA,
        ColorType::Rgb => Mode::Rgb,
        ColorType::Rgba => Mode::Rgba,
        ColorType::Indexed => unreachable!("indexed images are unpacked separately"),
    }
}

/// Pillow's palettes have 256 entries; indices the file does not define map to black.
fn full_palette(mut palette: Vec<[u8; 3]>) -> Vec<[u8; 3]> {
    palette.resize(256, [0, 0, 0]);
    palette
}

/// Sub-byte samples, most significant bits first, as Pillow's "L;2", "P;4", ... unpackers read them.
fn unpack_bits(row: &[u8], bits: u8, width: usize) -> impl Iterator<Item = u8> + '_ {
    let per_byte = 8 / bits as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    (0..width).map(move |x| {
        let byte = row[x / per_byte];
        let shift = 8 - bits as usize * (x % per_byte + 1);
        (byte >> shift) & mask
    })
}

/// Pillow's `MAX_TEXT_CHUNK` (`ImageFile.SAFEBLOCK`): compressed text chunks that inflate beyond it make
/// Pillow refuse the file, a guard against decompression bombs hidden in metadata.
const MAX_TEXT_CHUNK: usize = 1024 * 1024;

fn check_text_chunks(info: &png::Info) -> Result<(), ImageError> {
    let too_large = || ImageError::Png("compressed text chunk inflates beyond Pillow's MAX_TEXT_CHUNK (1 MiB)".into());
    for chunk in &info.compressed_latin1_text {
        chunk
            .clone()
            .decompress_text_with_limit(MAX_TEXT_CHUNK)
            .map_err(|_| too_large())?;
    }
    for chunk in info.utf8_text.iter().filter(|c| c.compressed) {
        chunk
            .clone()
            .decompress_text_with_limit(MAX_TEXT_CHUNK)
            .map_err(|_| too_large())?;
    }
    Ok(())
}

/// After the image data Pillow reads chunk after chunk up to IEND (`PngImageFile.load_end`): a missing or
/// cut-off chunk header ends the file quietly, but a chunk whose body is cut off is "Truncated File Read".
/// An animated PNG stops at its second frame's `fcTL`.
fn check_trailing_chunks(bytes: &[u8]) -> Result<(), ImageError> {
    let chunk_at = |at: usize| -> Option<(usize, &[u8])> {
        let header = bytes.get(at..at + 8)?;
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        Some((length, &header[4..8]))
    };
    // Walk to the end of the first run of IDAT chunks.
    let (mut at, mut seen_idat, mut animated) = (8, false, false);
    while let Some((length, kind)) = chunk_at(at) {
        if kind == b"acTL" {
            animated = true;
        }
        if kind == b"IDAT" {
            seen_idat = true;
        } else if seen_idat {
            break;
        }
        at += 12 + length;
    }
    while let Some((length, kind)) = chunk_at(at) {
        if kind == b"IEND" || (animated && kind == b"fcTL") {
            return Ok(());
        }
        if bytes.len() < at + 8 + length {
            return Err(ImageError::Truncated);
        }
        at += 12 + length;
    }
    Ok(())
}

fn png_error(e: png::DecodingError) -> ImageError {
    match e {
        png::DecodingError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Truncated,
        other => ImageError::Png(other.to_string()),
    }
}
