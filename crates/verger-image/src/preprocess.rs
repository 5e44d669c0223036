//! Model input scaling: Keras `mobilenet_v2.preprocess_input`, computed in float32 as the original did.

/// Writes `u8 / 127.5 - 1` for each sample of `rgb` into `out` (same length), NHWC order preserved.
pub fn scale_into(rgb: &[u8], out: &mut [f32]) {
    assert_eq!(rgb.len(), out.len(), "input and output lengths differ");
    for (o, &v) in out.iter_mut().zip(rgb) {
        *o = f32::from(v) / 127.5f32 - 1.0f32;
    }
}

/// Scales one image into a new buffer.
pub fn scale(rgb: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; rgb.len()];
    scale_into(rgb, &mut out);
    out
}
