//! Inputs from fuzzing (`scripts/fuzz`, target `fuzz/fuzz_targets/decode_resize.rs`) and hand-made malformed
//! files: `load_rgb224` must return `Ok` or `Err` for each, never panic. See `fuzz_regressions/README.md`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use verger_image::{load_rgb224, ImageError, Limits, MODEL_SIDE};

/// The limit the fuzz target uses.
const FUZZ_LIMITS: Limits = Limits { max_pixels: 4_000_000 };

#[derive(Debug)]
enum Expected {
    AnyErr,
    TooLarge,
}

/// Files with a specific expected outcome; every other file only has to not panic.
const EXPECTED: &[(&str, Expected)] = &[
    ("jpeg-truncated-in-sof.jpg", Expected::AnyErr),
    ("jpeg-sof-65000x65000.jpg", Expected::TooLarge),
    ("png-ihdr-100000x100000.png", Expected::TooLarge),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions")
}

fn inputs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/fuzz_regressions exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

#[test]
fn no_regression_input_panics() {
    let files = inputs();
    assert!(!files.is_empty());
    let mut panicked = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        for limits in [Limits::default(), FUZZ_LIMITS] {
            match catch_unwind(AssertUnwindSafe(|| load_rgb224(&bytes, &limits))) {
                Ok(Ok(rgb)) => assert_eq!(rgb.len(), MODEL_SIDE * MODEL_SIDE * 3, "{}", path.display()),
                Ok(Err(_)) => {}
                Err(_) => panicked.push(format!("{} (max_pixels {})", path.display(), limits.max_pixels)),
            }
        }
    }
    assert!(panicked.is_empty(), "load_rgb224 panicked on: {panicked:#?}");
}

#[test]
fn malformed_inputs_fail_cleanly() {
    for (name, expected) in EXPECTED {
        let bytes = std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        for limits in [Limits::default(), FUZZ_LIMITS] {
            let result = load_rgb224(&bytes, &limits);
            eprintln!(
                "{name} (max_pixels {}): {:?}",
                limits.max_pixels,
                result.as_ref().map(Vec::len)
            );
            match (expected, &result) {
                (Expected::AnyErr, Err(_)) | (Expected::TooLarge, Err(ImageError::TooLarge { .. })) => {}
                _ => panic!(
                    "{name} (max_pixels {}): expected {expected:?}, got {result:?}",
                    limits.max_pixels
                ),
            }
        }
    }
}
