//! What the model's test files share: the shared MobileNetV2, sha256-checked, and the 14 reference inputs.
#![allow(dead_code)] // each test file uses its own part

use verger_image::preprocess::scale;
use verger_image::{load_rgb224, Limits};
use verger_model::{read_local, ModelSpec, VerifiedModel, INPUT_LEN, MOBILENET_V2_SHA256};
use verger_testdata::{model_path, reference_entries, synthetic_pattern};

pub fn model() -> std::sync::Arc<VerifiedModel> {
    let spec = ModelSpec {
        location: model_path().to_string_lossy().into_owned(),
        sha256: MOBILENET_V2_SHA256.into(),
    };
    VerifiedModel::load(&spec, &read_local).unwrap()
}

/// Pillow-exact uint8 224x224x3 pixels of the reference inputs, one after another.
pub fn reference_pixels() -> Vec<u8> {
    reference_entries()
        .iter()
        .flat_map(|e| match &e.image {
            Some(p) => load_rgb224(&std::fs::read(p).unwrap(), &Limits::default()).unwrap(),
            None => synthetic_pattern(),
        })
        .collect()
}

/// The reference pixels scaled to the model's input (`x/127.5 - 1`).
pub fn reference_inputs() -> Vec<f32> {
    reference_pixels().chunks_exact(INPUT_LEN).flat_map(scale).collect()
}
