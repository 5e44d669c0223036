//! Pillow's `Image.resize(size)` with its default BICUBIC filter, ported from `libImaging/Resample.c`.
//!
//! Pillow resamples in two separable passes, in fixed point with 22 fractional bits, clipping to 0..=255
//! between passes. Every detail (rounding of the coefficients, the window bounds, the
//! pass order) changes some output bytes, so this follows Pillow step by step rather than any "equivalent"
//! formula. Modes are handled as `Image.resize` does: "1" and "P" use NEAREST, "LA" and "RGBA" are
//! resized premultiplied by alpha.

use std::cell::RefCell;
use std::rc::Rc;

use crate::convert;
use crate::pixels::{Mode, Pixels};

const PRECISION_BITS: u32 = 32 - 8 - 2;
const BICUBIC_SUPPORT: f64 = 2.0;

/// Resizes like Pillow's `image.resize((width, height))`.
pub fn pillow_resize(image: &Pixels, width: usize, height: usize) -> Pixels {
    if image.width == width && image.height == height {
        return image.clone();
    }
    match image.mode {
        Mode::Bilevel | Mode::P { .. } => nearest(image, width, height),
        Mode::LA | Mode::Rgba => {
            let premultiplied = convert::premultiply(image);
            let resized = bicubic(&premultiplied, width, height);
            convert::unpremultiply(&resized)
        }
        _ => bicubic(image, width, height),
    }
}

/// Bicubic resampling of every channel, 8-bit or 16-bit by mode.
pub fn bicubic(image: &Pixels, width: usize, height: usize) -> Pixels {
    let horizontal = Coefficients::bicubic(image.width, width);
    let vertical = Coefficients::bicubic(image.height, height);
    let data = match image.mode {
        Mode::I16 => resample_u16(image, &horizontal, &vertical),
        _ => resample_u8(image, &horizontal, &vertical),
    };
    Pixels::new(image.mode.clone(), width, height, data)
}

/// Pillow's cubic convolution kernel with a = -0.5, evaluated in the same operation order.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One resampling pass's filter windows: for output position i, `len[i]` input samples from `first[i]`,
/// weighted by `weights[i * window .. i * window + len[i]]` (`fixed` holds the same weights in fixed point).
struct Coefficients {
    in_size: usize,
    window: usize,
    first: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f64>,
    fixed: Vec<i32>,
}

/// How many (input size, output size) pairs each thread keeps coefficients for.
const CACHED_SIZES: usize = 8;

impl Coefficients {
    /// The coefficients for resampling `in_size` samples to `out_size`, cached per thread: a dataset's images
    /// share a few sizes, and computing the windows costs about as much as a pass over a small image.
    fn bicubic(in_size: usize, out_size: usize) -> Rc<Self> {
        thread_local! {
            static CACHE: RefCell<Vec<Rc<Coefficients>>> = const { RefCell::new(Vec::new()) };
        }
        CACHE.with_borrow_mut(|cache| {
            if let Some(c) = cache.iter().find(|c| (c.in_size, c.first.len()) == (in_size, out_size)) {
                return c.clone();
            }
            if cache.len() == CACHED_SIZES {
                cache.remove(0);
            }
            let c = Rc::new(Coefficients::compute(in_size, out_size));
            cache.push(c.clone());
            c
        })
    }

    /// `precompute_coeffs` of Resample.c for the whole input range (no box).
    fn compute(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filter_scale;
        let window = support.ceil() as usize * 2 + 1;
        let mut first = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut weights = vec![0.0; out_size * window];
        for (xx, k) in weights.chunks_exact_mut(window).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            let inverse_scale = 1.0 / filter_scale;
            // C casts truncate toward zero; the clamps then keep the window inside the image.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let mut total = 0.0;
            for (x, w) in k.iter_mut().take(xmax).enumerate() {
                *w = bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * inverse_scale);
                total += *w;
            }
            if total != 0.0 {
                for w in k.iter_mut().take(xmax) {
                    *w /= total;
                }
            }
            first.push(xmin);
            len.push(xmax);
        }
        let fixed = fixed_point(&weights);
        Coefficients {
            in_size,
            window,
            first,
            len,
            weights,
            fixed,
        }
    }

    fn window_of(&self, i: usize) -> (usize, usize) {
        (self.first[i], self.len[i])
    }
}

/// `normalize_coeffs_8bpc`: weights as fixed point with [`PRECISION_BITS`] fractional bits.
fn fixed_point(weights: &[f64]) -> Vec<i32> {
    let one = f64::from(1u32 << PRECISION_BITS);
    weights
        .iter()
        .map(|&w| {
            if w < 0.0 {
                (-0.5 + w * one) as i32
            } else {
                (0.5 + w * one) as i32
            }
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Samples that Pillow resamples, and how: one pass computes each output sample from weighted inputs.
/// The default passes are plain loops; 8-bit samples, the hot path, override them with row-wise kernels.
trait Sample: Copy + Default + Sized {
    type Weight: Copy;
    fn weights(c: &Coefficients) -> &[Self::Weight];
    fn convolve(samples: impl Iterator<Item = Self>, weights: &[Self::Weight]) -> Self;

    fn horizontal(plane: &Plane<Self>, c: &Coefficients, rows: std::ops::Range<usize>) -> Vec<Self> {
        let weights = Self::weights(c);
        let (channels, stride) = (plane.channels, plane.width * plane.channels);
        let mut data = Vec::with_capacity(rows.len() * c.first.len() * channels);
        for y in rows {
            let row = &plane.data[y * stride..(y + 1) * stride];
            for xx in 0..c.first.len() {
                let (xmin, len) = c.window_of(xx);
                let k = &weights[xx * c.window..][..len];
                for ch in 0..channels {
                    data.push(Self::convolve((xmin..xmin + len).map(|x| row[x * channels + ch]), k));
                }
            }
        }
        data
    }

    fn vertical(plane: &Plane<Self>, c: &Coefficients, row_offset: usize) -> Vec<Self> {
        let weights = Self::weights(c);
        let stride = plane.width * plane.channels;
        let mut data = Vec::with_capacity(c.first.len() * stride);
        for yy in 0..c.first.len() {
            let (ymin, len) = c.window_of(yy);
            let k = &weights[yy * c.window..][..len];
            let first = ymin - row_offset;
            for i in 0..stride {
                data.push(Self::convolve(
                    (first..first + len).map(|y| plane.data[y * stride + i]),
                    k,
                ));
            }
        }
        data
    }
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

impl Sample for u8 {
    type Weight = i32;
    fn weights(c: &Coefficients) -> &[i32] {
        &c.fixed
    }
    fn convolve(samples: impl Iterator<Item = u8>, weights: &[i32]) -> u8 {
        clip8(samples.zip(weights).fold(HALF, |acc, (v, &w)| acc + i32::from(v) * w))
    }

    /// The vertical pass of the transposed rows: the same integer sums as Pillow's horizontal loop, in the
    /// row-at-a-time order that vectorises; two transpositions cost less than the scalar loop saves.
    fn horizontal(plane: &Plane<u8>, c: &Coefficients, rows: std::ops::Range<usize>) -> Vec<u8> {
        let columns = transpose(plane, rows);
        let convolved = Plane {
            width: columns.width,
            height: c.first.len(),
            channels: columns.channels,
            data: Self::vertical(&columns, c, 0),
        };
        let height = convolved.height;
        transpose(&convolved, 0..height).data
    }

    fn vertical(plane: &Plane<u8>, c: &Coefficients, row_offset: usize) -> Vec<u8> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512bw") {
                // SAFETY: AVX-512 (F and BW) is available, checked just above.
                return unsafe { vertical_u8_avx512(plane, c, row_offset) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is available, checked just above.
                return unsafe { vertical_u8_avx2(plane, c, row_offset) };
            }
        }
        vertical_u8(plane, c, row_offset)
    }
}

/// [`vertical_u8`] compiled for AVX-512 (integer arithmetic: the same bytes as the portable build).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn vertical_u8_avx512(plane: &Plane<u8>, c: &Coefficients, row_offset: usize) -> Vec<u8> {
    vertical_u8(plane, c, row_offset)
}

/// [`vertical_u8`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_u8_avx2(plane: &Plane<u8>, c: &Coefficients, row_offset: usize) -> Vec<u8> {
    vertical_u8(plane, c, row_offset)
}

/// Samples of a row computed together in [`vertical_u8`], their sums held in registers across the window.
const LANES: usize = 32;

/// The same integer sums as Pillow's per-pixel loop, computed [`LANES`] samples of an output row at a time so
/// that they vectorise. A row whose width is not a multiple of [`LANES`] ends with a block that overlaps the
/// previous one: recomputing a few samples costs less than a scalar tail.
#[inline(always)]
fn vertical_u8(plane: &Plane<u8>, c: &Coefficients, row_offset: usize) -> Vec<u8> {
    let stride = plane.width * plane.channels;
    let mut data = vec![0u8; c.first.len() * stride];
    for (yy, out) in data.chunks_exact_mut(stride).enumerate() {
        let (ymin, len) = c.window_of(yy);
        let weights = &c.fixed[yy * c.window..][..len];
        let rows = &plane.data[(ymin - row_offset) * stride..][..len * stride];
        if stride < LANES {
            for (x, o) in out.iter_mut().enumerate() {
                *o = u8::convolve((0..len).map(|y| rows[y * stride + x]), weights);
            }
            continue;
        }
        let mut x0 = 0;
        loop {
            let mut acc = [HALF; LANES];
            for (y, &w) in weights.iter().enumerate() {
                let row = &rows[y * stride + x0..][..LANES];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += i32::from(v) * w;
                }
            }
            for (o, &a) in out[x0..x0 + LANES].iter_mut().zip(&acc) {
                *o = clip8(a);
            }
            if x0 + LANES == stride {
                break;
            }
            x0 = (x0 + LANES).min(stride - LANES);
        }
    }
    data
}

/// Rows `rows` of `plane` turned into columns: pixel (x, y) moves to (y - rows.start, x).
fn transpose(plane: &Plane<u8>, rows: std::ops::Range<usize>) -> Plane<u8> {
    match plane.channels {
        1 => transpose_pixels::<1>(plane, rows),
        2 => transpose_pixels::<2>(plane, rows),
        3 => transpose_pixels::<3>(plane, rows),
        _ => transpose_pixels::<4>(plane, rows),
    }
}

fn transpose_pixels<const C: usize>(plane: &Plane<u8>, rows: std::ops::Range<usize>) -> Plane<u8> {
    let (width, height) = (plane.width, rows.len());
    let mut data = vec![0u8; width * height * C];
    for (y, row) in plane.data[rows.start * width * C..rows.end * width * C]
        .chunks_exact(width * C)
        .enumerate()
    {
        for (x, pixel) in row.chunks_exact(C).enumerate() {
            data[(x * height + y) * C..][..C].copy_from_slice(pixel);
        }
    }
    Plane {
        width: height,
        height: width,
        channels: C,
        data,
    }
}

impl Sample for u16 {
    type Weight = f64;
    fn weights(c: &Coefficients) -> &[f64] {
        &c.weights
    }
    /// `_ImagingResample*_16bpc`: double accumulation, `CLIP16(ROUND_UP(ss))`.
    fn convolve(samples: impl Iterator<Item = u16>, weights: &[f64]) -> u16 {
        let ss = samples.zip(weights).fold(0.0f64, |acc, (v, &w)| acc + f64::from(v) * w);
        let rounded = if ss >= 0.0 {
            (ss + 0.5) as i32
        } else {
            (ss - 0.5) as i32
        };
        rounded.clamp(0, 65535) as u16
    }
}

/// Interleaved samples: `height` rows of `width * channels`.
struct Plane<T> {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<T>,
}

impl<T: Sample> Plane<T> {
    fn horizontal(&self, c: &Coefficients, rows: std::ops::Range<usize>) -> Plane<T> {
        let height = rows.len();
        Plane {
            width: c.first.len(),
            height,
            channels: self.channels,
            data: T::horizontal(self, c, rows),
        }
    }

    /// Vertical pass; `row_offset` is the input row that this plane's first row stands for.
    fn vertical(&self, c: &Coefficients, row_offset: usize) -> Plane<T> {
        Plane {
            width: self.width,
            height: c.first.len(),
            channels: self.channels,
            data: T::vertical(self, c, row_offset),
        }
    }

    /// `ImagingResampleInner`: both passes, in Pillow 13's order. The horizontal pass goes first and reads
    /// only the rows the vertical pass needs, unless the height shrinks more than twice as much as the width.
    fn resample(self, horizontal: &Coefficients, vertical: &Coefficients) -> Plane<T> {
        let (out_width, out_height) = (horizontal.first.len(), vertical.first.len());
        let need_horizontal = out_width != self.width;
        let need_vertical = out_height != self.height;
        let shrink_y = self.height as i64 - out_height as i64;
        let shrink_x = self.width as i64 - out_width as i64;
        let horizontal_first = !(shrink_y > 0 && shrink_y > shrink_x * 2);
        if horizontal_first {
            let (plane, offset) = if need_horizontal {
                let first = vertical.first[0];
                let last = vertical.first[out_height - 1] + vertical.len[out_height - 1];
                (self.horizontal(horizontal, first..last), first)
            } else {
                (self, 0)
            };
            if need_vertical {
                plane.vertical(vertical, offset)
            } else {
                plane
            }
        } else {
            let plane = if need_vertical {
                self.vertical(vertical, 0)
            } else {
                self
            };
            if need_horizontal {
                plane.horizontal(horizontal, 0..plane.height)
            } else {
                plane
            }
        }
    }
}

fn resample_u8(image: &Pixels, horizontal: &Coefficients, vertical: &Coefficients) -> Vec<u8> {
    let plane = Plane {
        width: image.width,
        height: image.height,
        channels: image.mode.bytes_per_pixel(),
        data: image.data.clone(),
    };
    plane.resample(horizontal, vertical).data
}

/// "I;16" samples are native-endian `u16` pairs in [`Pixels::data`].
fn resample_u16(image: &Pixels, horizontal: &Coefficients, vertical: &Coefficients) -> Vec<u8> {
    let data = image
        .data
        .chunks_exact(2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .collect();
    let plane = Plane {
        width: image.width,
        height: image.height,
        channels: 1,
        data,
    };
    plane
        .resample(horizontal, vertical)
        .data
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

/// NEAREST as Pillow applies it to "1" and "P" images (`ImagingScaleAffine`): source positions accumulate
/// the scale step by step from half a step in, and truncate.
pub fn nearest(image: &Pixels, width: usize, height: usize) -> Pixels {
    let bpp = image.mode.bytes_per_pixel();
    let positions = |in_size: usize, out_size: usize| -> Vec<Option<usize>> {
        let step = in_size as f64 / out_size as f64;
        let mut at = step * 0.5;
        (0..out_size)
            .map(|_| {
                let index = if at < 0.0 { None } else { Some(at as usize) }.filter(|&i| i < in_size);
                at += step;
                index
            })
            .collect()
    };
    let columns = positions(image.width, width);
    let rows = positions(image.height, height);
    let mut data = vec![0u8; width * height * bpp];
    for (y, source_row) in rows.iter().enumerate() {
        let Some(sy) = source_row else { continue };
        for (x, source_col) in columns.iter().enumerate() {
            let Some(sx) = source_col else { continue };
            let from = (sy * image.width + sx) * bpp;
            data[(y * width + x) * bpp..][..bpp].copy_from_slice(&image.data[from..from + bpp]);
        }
    }
    Pixels::new(image.mode.clone(), width, height, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_interpolating() {
        assert_eq!(bicubic_filter(0.0), 1.0);
        assert_eq!(bicubic_filter(1.0), 0.0);
        assert_eq!(bicubic_filter(2.5), 0.0);
        assert!(bicubic_filter(1.5) < 0.0);
    }

    #[test]
    fn upscaling_windows_stay_inside_the_image() {
        let c = Coefficients::compute(100, 224);
        for i in 0..224 {
            let (first, len) = c.window_of(i);
            assert!(first + len <= 100 && len > 0);
            let sum: f64 = c.weights[i * c.window..][..len].iter().sum();
            assert!((sum - 1.0).abs() < 1e-12);
        }
    }

    /// The row-at-a-time kernel (blocks of [`LANES`], an overlapping last block, a plain loop for narrow rows)
    /// gives Pillow's per-sample sums for every width.
    #[test]
    fn vertical_pass_equals_the_per_sample_sums() {
        let mut seed = 7u32;
        let mut byte = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as u8
        };
        for (in_height, out_height) in [(100, 224), (224, 100), (7, 3), (3, 9)] {
            let c = Coefficients::compute(in_height, out_height);
            for channels in 1..=4 {
                for width in [1, 5, 10, 11, 32, 33, 100] {
                    let stride = width * channels;
                    let plane = Plane {
                        width,
                        height: in_height,
                        channels,
                        data: (0..in_height * stride).map(|_| byte()).collect(),
                    };
                    let expected: Vec<u8> = (0..out_height)
                        .flat_map(|yy| {
                            let (ymin, len) = c.window_of(yy);
                            let weights = &c.fixed[yy * c.window..][..len];
                            let rows = &plane.data;
                            (0..stride)
                                .map(move |x| u8::convolve((ymin..ymin + len).map(|y| rows[y * stride + x]), weights))
                        })
                        .collect();
                    assert_eq!(
                        u8::vertical(&plane, &c, 0),
                        expected,
                        "{width}x{channels}, {in_height}->{out_height}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let image = Pixels::new(Mode::Rgb, 37, 53, vec![77; 37 * 53 * 3]);
        let out = pillow_resize(&image, 224, 224);
        assert!(out.data.iter().all(|&v| v == 77));
    }
}
