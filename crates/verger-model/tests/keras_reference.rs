//! Features within 1e-4 of tf.keras on the 14 reference inputs, at batch sizes 1 and 14.

use verger_image::preprocess::scale;
use verger_image::{load_rgb224, Limits};
use verger_model::{read_local, Featurizer, ModelSpec, VerifiedModel, FEATURE_DIM, MOBILENET_V2_SHA256};
use verger_testdata::{model_dir, model_path, read_npy_f32, reference_entries, synthetic_pattern};

fn model() -> std::sync::Arc<VerifiedModel> {
    VerifiedModel::load(
        &ModelSpec {
            location: model_path().to_string_lossy().into_owned(),
            sha256: MOBILENET_V2_SHA256.into(),
        },
        &read_local,
    )
    .unwrap()
}

fn reference_inputs() -> Vec<f32> {
    reference_entries()
        .iter()
        .flat_map(|e| {
            let rgb = match &e.image {
                Some(p) => load_rgb224(&std::fs::read(p).unwrap(), &Limits::default()).unwrap(),
                None => synthetic_pattern(),
            };
            scale(&rgb)
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn features_match_keras_at_batch_sizes_1_and_14() {
    let (shape, keras) = read_npy_f32(&model_dir().join("reference/features_keras.npy"));
    assert_eq!(shape, [14, FEATURE_DIM]);
    let inputs = reference_inputs();
    let mut featurizer = Featurizer::new(&model()).unwrap();

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
    let mut featurizer = Featurizer::new(&model()).unwrap();
    assert!(featurizer.embed(&[0.0; 100]).is_err());
    assert!(featurizer.embed(&[]).unwrap().is_empty());
}
