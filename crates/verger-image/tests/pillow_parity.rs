//! Pixels bit-identical to Pillow 13.0.0's `Image.open(p).resize((224, 224)).convert("RGB")`.

use sha2::{Digest, Sha256};
use verger_image::preprocess::scale;
use verger_image::{load_rgb224, Limits};
use verger_testdata::{fixture, fruits360_dir, reference_entries, synthetic_pattern};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn reference_images_resize_exactly_like_pillow() {
    let entries = reference_entries();
    assert_eq!(entries.len(), 14);
    for entry in entries {
        let rgb = match &entry.image {
            Some(path) => load_rgb224(&std::fs::read(path).unwrap(), &Limits::default()).unwrap(),
            None => synthetic_pattern(),
        };
        assert_eq!(
            sha256_hex(&rgb),
            entry.resized_rgb_u8_sha256,
            "pixels of {}",
            entry.name
        );
        assert_eq!(
            sha256_hex(&f32_le_bytes(&scale(&rgb))),
            entry.input_f32_nhwc_sha256,
            "input of {}",
            entry.name
        );
    }
}

/// `tests/fixtures/pillow_fruits360.tsv` holds Pillow's sha256 for each of the 9,856 Fruits-360 images
/// (made by `scripts/pillow_fixture.py`).
#[test]
fn every_fruits360_image_resizes_exactly_like_pillow() {
    let text = std::fs::read_to_string(fixture("pillow_fruits360.tsv")).expect("fixture");
    let root = fruits360_dir();
    let (mut checked, mut mismatched) = (0, Vec::new());
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (path, status, expected) = (cols[0], cols[1], cols[5]);
        assert_eq!(status, "ok", "Pillow failed on {path}");
        let rgb = load_rgb224(&std::fs::read(root.join(path)).unwrap(), &Limits::default()).unwrap();
        checked += 1;
        if sha256_hex(&rgb) != expected {
            mismatched.push(path.to_string());
        }
    }
    assert_eq!(checked, 9856);
    assert!(
        mismatched.is_empty(),
        "{} images differ from Pillow, e.g. {:?}",
        mismatched.len(),
        &mismatched[..mismatched.len().min(5)]
    );
}

/// Pillow's own odd test images (`tests/fixtures/pillow_test_images.tsv`): where Pillow gives pixels, verger
/// gives the same pixels; where Pillow refuses the file, verger refuses it too.
#[test]
fn pillow_test_images_agree_with_pillow() {
    let text = std::fs::read_to_string(fixture("pillow_test_images.tsv")).expect("fixture");
    let root = verger_testdata::shared_dir().join("datasets/pillow-test-images");
    let mut disagreements = Vec::new();
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (path, status, expected) = (cols[0], cols[1], cols[5]);
        let ours = load_rgb224(&std::fs::read(root.join(path)).unwrap(), &Limits::default());
        checked += 1;
        match (status, &ours) {
            ("ok", Ok(rgb)) if sha256_hex(rgb) == expected => {}
            ("error", Err(_)) => {}
            _ => disagreements.push(format!(
                "{path}: Pillow {status} {expected}, verger {:?}",
                ours.map(|p| sha256_hex(&p))
            )),
        }
    }
    assert_eq!(checked, 70);
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
