//! The model on a GPU, fed uint8 pixels (the scaling in its graph), with TF32 off: the 14 reference inputs'
//! features within 1e-3 of tf.keras at batch sizes 14 and 1 (TF32 would be ~1e-2 off). Needs an NVIDIA GPU:
//! `cargo test --test gpu -- --ignored` on such a machine. Every session of this file is a GPU session, since
//! the ONNX Runtime loaded first serves the whole process.

mod common;

use common::{model, reference_pixels};
use verger_model::{Device, Featurizer, FEATURE_DIM, INPUT_LEN};
use verger_testdata::{model_dir, read_npy_f32};

#[test]
#[ignore = "needs an NVIDIA GPU, its driver and ONNX Runtime's GPU build (scripts/setup-gpu)"]
fn on_a_gpu_the_features_match_keras_at_batch_sizes_14_and_1() {
    let (_, keras) = read_npy_f32(&model_dir().join("reference/features_keras.npy"));
    let pixels = reference_pixels();
    let mut featurizer = Featurizer::new(&model(), Device::Cuda(0)).unwrap();

    let batched = featurizer.embed_pixels(&pixels).unwrap();
    assert_eq!(batched.len(), 14 * FEATURE_DIM);
    let one_by_one: Vec<f32> = pixels
        .chunks_exact(INPUT_LEN)
        .flat_map(|x| featurizer.embed_pixels(x).unwrap())
        .collect();
    for (features, batch) in [(&batched, 14), (&one_by_one, 1)] {
        let diff = features
            .iter()
            .zip(&keras)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!("GPU, batch of {batch}: max |Δ| vs tf.keras = {diff:.2e}");
        assert!(diff <= 1e-3, "batch of {batch}: max |Δ| = {diff}");
    }
}
