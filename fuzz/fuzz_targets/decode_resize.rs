//! Fuzzes the whole pixel step: sniff format, decode (libjpeg-turbo / `png`), Pillow resize to 224x224,
//! convert to RGB. Any input must give `Ok` or `Err`: never a panic, a hang, or an unbounded allocation.
//! The small pixel limit keeps each input cheap (4 Mpx decoded at most) while still exercising the
//! `TooLarge` guard.

#![no_main]

use libfuzzer_sys::fuzz_target;
use verger_image::{load_rgb224, Limits, MODEL_SIDE};

fuzz_target!(|data: &[u8]| {
    if let Ok(rgb) = load_rgb224(data, &Limits { max_pixels: 4_000_000 }) {
        assert_eq!(rgb.len(), MODEL_SIDE * MODEL_SIDE * 3);
    }
});
