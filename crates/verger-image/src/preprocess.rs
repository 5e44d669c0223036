//! Model input scaling: Keras `mobilenet_v2.preprocess_input`, computed in float32 as the original did.

use std::mem::MaybeUninit;

/// Writes `u8 / 127.5 - 1` for each sample of `rgb` into `out` (same length), NHWC order preserved, bit for bit
/// as float32 division would.
pub fn scale_into(rgb: &[u8], out: &mut [f32]) {
    assert_eq!(rgb.len(), out.len(), "input and output lengths differ");
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and only initialised values are written through the view.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    scale_uninit(rgb, out);
}

/// Appends the scaled samples of `rgb` to `out`, writing each float once: a batch assembled this way is never
/// zeroed first (zeroing a batch of 32 costs as much as scaling it).
pub fn scale_extend(rgb: &[u8], out: &mut Vec<f32>) {
    out.reserve(rgb.len());
    scale_uninit(rgb, &mut out.spare_capacity_mut()[..rgb.len()]);
    // SAFETY: the `rgb.len()` floats after the old length were all written just above.
    unsafe { out.set_len(out.len() + rgb.len()) };
}

fn scale_uninit(rgb: &[u8], out: &mut [MaybeUninit<f32>]) {
    assert_eq!(rgb.len(), out.len(), "input and output lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available, checked just above.
            return unsafe { scale_avx512(rgb, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available, checked just above.
            return unsafe { scale_avx2(rgb, out) };
        }
    }
    scale_portable(rgb, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scale_avx512(rgb: &[u8], out: &mut [MaybeUninit<f32>]) {
    scale_portable(rgb, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scale_avx2(rgb: &[u8], out: &mut [MaybeUninit<f32>]) {
    scale_portable(rgb, out)
}

/// Division is the slow part of `x / 127.5`; a product in float64 rounded to float32 gives the same quotient
/// for every byte (2x/255 repeats its 8 bits forever, so it never lies near a float32 rounding boundary), and
/// multiplies vectorise far better. The test below checks all 256 values.
#[inline(always)]
fn scale_portable(rgb: &[u8], out: &mut [MaybeUninit<f32>]) {
    const INVERSE: f64 = 1.0 / 127.5;
    for (o, &v) in out.iter_mut().zip(rgb) {
        o.write((f64::from(v) * INVERSE) as f32 - 1.0);
    }
}

/// Scales one image into a new buffer.
pub fn scale(rgb: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; rgb.len()];
    scale_into(rgb, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_scales_exactly_as_float32_division() {
        let bytes: Vec<u8> = (0..=255).collect();
        let divided: Vec<u32> = bytes.iter().map(|&v| (f32::from(v) / 127.5 - 1.0).to_bits()).collect();
        let mut out = vec![0f32; 256];
        scale_into(&bytes, &mut out);
        assert_eq!(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), divided);
        let mut portable = vec![MaybeUninit::new(0f32); 256];
        scale_portable(&bytes, &mut portable);
        // SAFETY: every element was written by `scale_portable`.
        let portable: Vec<f32> = portable.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_eq!(portable, out);
        let mut extended = vec![7.0f32];
        scale_extend(&bytes, &mut extended);
        assert_eq!((extended[0], &extended[1..]), (7.0, &out[..]));
    }
}
