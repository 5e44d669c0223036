//! Pillow's `convert("RGB")` and the alpha (un)premultiplication `resize` uses, from `libImaging/Convert.c`.

use crate::pixels::{Mode, Pixels};

/// Pillow's `MULDIV255`: `a * b / 255`, rounded, in integers.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// [`to_rgb`], without a copy when the image is RGB already.
pub fn into_rgb(image: Pixels) -> Pixels {
    match image.mode {
        Mode::Rgb => image,
        _ => to_rgb(&image),
    }
}

/// Converts to 8-bit RGB the way `Image.convert("RGB")` does.
pub fn to_rgb(image: &Pixels) -> Pixels {
    let n = image.width * image.height;
    let mut rgb = Vec::with_capacity(n * 3);
    match &image.mode {
        Mode::Rgb => rgb.extend_from_slice(&image.data),
        Mode::L | Mode::Bilevel => image.data.iter().for_each(|&v| rgb.extend_from_slice(&[v, v, v])),
        Mode::LA => image
            .data
            .chunks_exact(2)
            .for_each(|p| rgb.extend_from_slice(&[p[0], p[0], p[0]])),
        Mode::Rgba => image.data.chunks_exact(4).for_each(|p| rgb.extend_from_slice(&p[..3])),
        Mode::P { palette } => image.data.iter().for_each(|&i| {
            rgb.extend_from_slice(palette.get(usize::from(i)).unwrap_or(&[0, 0, 0]));
        }),
        Mode::Cmyk => image.data.chunks_exact(4).for_each(|p| {
            let nk = 255 - u32::from(p[3]);
            for &c in &p[..3] {
                rgb.push((nk - muldiv255(u32::from(c), nk)) as u8);
            }
        }),
        Mode::I16 => image.data.chunks_exact(2).for_each(|p| {
            let v = u16::from_ne_bytes([p[0], p[1]]).min(255) as u8;
            rgb.extend_from_slice(&[v, v, v]);
        }),
    }
    Pixels::new(Mode::Rgb, image.width, image.height, rgb)
}

/// "RGBA" → "RGBa" and "LA" → "La": colour channels multiplied by alpha.
pub fn premultiply(image: &Pixels) -> Pixels {
    let channels = image.mode.bytes_per_pixel();
    let mut data = image.data.clone();
    for p in data.chunks_exact_mut(channels) {
        let alpha = u32::from(p[channels - 1]);
        for c in &mut p[..channels - 1] {
            *c = muldiv255(u32::from(*c), alpha) as u8;
        }
    }
    Pixels::new(image.mode.clone(), image.width, image.height, data)
}

/// "RGBa" → "RGBA" and "La" → "LA": colour channels divided by alpha, clipped.
pub fn unpremultiply(image: &Pixels) -> Pixels {
    let channels = image.mode.bytes_per_pixel();
    let mut data = image.data.clone();
    for p in data.chunks_exact_mut(channels) {
        let alpha = u32::from(p[channels - 1]);
        if alpha != 0 && alpha != 255 {
            for c in &mut p[..channels - 1] {
                *c = ((255 * u32::from(*c)) / alpha).min(255) as u8;
            }
        }
    }
    Pixels::new(image.mode.clone(), image.width, image.height, data)
}
