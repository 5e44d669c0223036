//! Features within 1e-4 of tf.keras on the 14 reference inputs, at batch sizes 1 and 14.

mod common;

use common::{model, reference_inputs, reference_pixels};
use verger_model::{read_local, Featurizer, ModelSpec, VerifiedModel, FEATURE_DIM};
use verger_testdata::{model_dir, model_path, read_npy_f32};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn features_match_keras_at_batch_sizes_1_and_14() {
    let (shape, keras) = read_npy_f32(&model_dir().join("reference/features_keras.npy"));
    assert_eq!(shape, [14, FEATURE_DIM]);
    let inputs = reference_inputs();
    let mut featurizer = Featurizer::new(&model(), verger_model::Device::Cpu).unwrap();

    let batched = featurizer.embed(&inputs).unwrap();
    let diff = max_abs_diff(&batched, &keras);
    assert!(diff <= 1e-4, "batch of 14: max |Δ| = {diff}");

    let one_by_one: Vec<f32> = inputs
        .chunks_exact(verger_model::INPUT_LEN)
        .flat_map(|x| featurizer.embed(x).unwrap())
        .collect();
    let diff = max_abs_diff(&one_by_one, &keras);
    assert!(diff <= 1e-4, "batch of 1: max |Δ| = {diff}");
}

#[test]
fn a_model_with_the_wrong_checksum_is_refused() {
    let spec = ModelSpec {
        location: model_path().to_string_lossy().into_owned(),
        sha256: "00".repeat(32),
    };
    let err = VerifiedModel::load(&spec, &read_local).unwrap_err().to_string();
    assert!(err.contains("refusing"), "{err}");
}

#[test]
fn a_partial_image_is_refused() {
    let mut featurizer = Featurizer::new(&model(), verger_model::Device::Cpu).unwrap();
    assert!(featurizer.embed(&[0.0; 100]).is_err());
    assert!(featurizer.embed(&[]).unwrap().is_empty());
}

/// The pixel-fed model a GPU runs (the scaling in its graph), run here on the CPU: the scaled model's features
/// bit for bit, so the GPU's input path adds no difference of its own.
#[test]
fn the_pixel_fed_model_gives_the_scaled_model_s_features_bit_for_bit() {
    use verger_model::{Device, ModelInput};
    let model = model();
    let mut scaled = Featurizer::with_input(&model, Device::Cpu, ModelInput::Scaled).unwrap();
    let mut pixel_fed = Featurizer::with_input(&model, Device::Cpu, ModelInput::Pixels).unwrap();
    let expected = scaled.embed(&reference_inputs()).unwrap();
    let got = pixel_fed.embed_pixels(&reference_pixels()).unwrap();
    assert_eq!(got.len(), 14 * FEATURE_DIM);
    assert!(
        got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
        "max |Δ| = {}",
        max_abs_diff(&got, &expected)
    );
    // Each session takes only its own input.
    assert!(pixel_fed.embed(&reference_inputs()).is_err());
    assert!(scaled.embed_pixels(&reference_pixels()).is_err());
}
