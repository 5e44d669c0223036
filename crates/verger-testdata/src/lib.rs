//! Where the shared sample data lives and how to read its reference outputs, for tests and benchmarks.
//!
//! The data is not copied into the repository: `shared/` sits beside the checkout (override with
//! `VERGER_SHARED`). A missing folder is a test failure, never a silent skip.

use std::path::{Path, PathBuf};

/// The `shared/` folder beside this checkout.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("VERGER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(
        dir.is_dir(),
        "shared data not found at {} (set VERGER_SHARED)",
        dir.display()
    );
    dir
}

/// Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), as the kernel reports its flags: what the
/// bf16 tests expect, decided independently of OpenVINO's own detection.
pub fn cpu_has_bf16() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    flags.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16")
}

pub fn model_dir() -> PathBuf {
    shared_dir().join("models/mobilenet_v2")
}

pub fn model_path() -> PathBuf {
    model_dir().join("mobilenet_v2_imagenet.onnx")
}

pub fn fruits360_dir() -> PathBuf {
    shared_dir().join("datasets/fruits360")
}

/// The fixtures committed with the repository (`tests/fixtures/`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// One entry of `reference/reference.json`.
pub struct ReferenceEntry {
    pub name: String,
    /// The source image, or `None` for the synthetic pattern.
    pub image: Option<PathBuf>,
    pub resized_rgb_u8_sha256: String,
    pub input_f32_nhwc_sha256: String,
}

pub fn reference_entries() -> Vec<ReferenceEntry> {
    let dir = model_dir().join("reference");
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let field = |e: &serde_json::Value, k: &str| e[k].as_str().map(str::to_string);
    json["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| ReferenceEntry {
            name: field(e, "name").expect("name"),
            image: field(e, "image_file").map(|f| dir.join(f)),
            resized_rgb_u8_sha256: field(e, "resized_rgb_u8_sha256").expect("sha"),
            input_f32_nhwc_sha256: field(e, "input_f32_nhwc_sha256").expect("sha"),
        })
        .collect()
}

/// The reference's synthetic input: `u8[h][w][c] = (h*7 + w*13 + c*29) % 256`.
pub fn synthetic_pattern() -> Vec<u8> {
    let mut out = Vec::with_capacity(224 * 224 * 3);
    for h in 0..224usize {
        for w in 0..224usize {
            for c in 0..3usize {
                out.push(((h * 7 + w * 13 + c * 29) % 256) as u8);
            }
        }
    }
    out
}

/// A little-endian float32 `.npy` file: (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("npy file");
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("ASCII header");
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape = shape_text.split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let values = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}
