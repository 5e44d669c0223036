//! `Precision::Bf16`: the graph cut that keeps MobileNetV2's first block in fp32 (checked with ONNX Runtime,
//! exactly), and OpenVINO's bf16 features against Keras's on the 14 reference inputs where the CPU supports
//! bf16, or its refusal where it does not (which of the two is decided from /proc/cpuinfo, not by OpenVINO).

mod common;

use common::{model, reference_inputs};
use ort::session::Session;
use ort::value::TensorRef;
use verger_model::bf16::HANDOVER;
use verger_model::{runtime, Device, Featurizer, ModelError, Precision, FEATURE_DIM, INPUT_LEN};
use verger_testdata::{cpu_has_bf16, model_dir, read_npy_f32};

fn session(bytes: &[u8]) -> Session {
    Session::builder(runtime::environment(Device::Cpu).unwrap())
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_memory(bytes)
        .unwrap()
}

fn run(session: &mut Session, input: &str, shape: Vec<i64>, data: &[f32], output: &str) -> (Vec<i64>, Vec<f32>) {
    let tensor = TensorRef::from_array_view((shape, data)).unwrap();
    let outputs = session.run(ort::inputs![input => tensor]).unwrap();
    let (shape, values) = outputs[output].try_extract_tensor::<f32>().unwrap();
    (shape.iter().copied().collect(), values.to_vec())
}

fn cosines(a: &[f32], b: &[f32]) -> Vec<f64> {
    a.chunks_exact(FEATURE_DIM)
        .zip(b.chunks_exact(FEATURE_DIM))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
            let norm = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            dot / (norm(x) * norm(y))
        })
        .collect()
}

/// Head then tail, in fp32 with ONNX Runtime, give the whole model's features: the cut loses nothing.
#[test]
fn the_two_parts_of_the_cut_compose_to_the_whole_model() {
    let model = model();
    let (head, tail) = verger_model::split::split(&model.bytes, HANDOVER, None).unwrap();
    assert!(
        head.len() + tail.len() < model.bytes.len() + 4096,
        "weights were copied into both parts"
    );
    let inputs = reference_inputs();
    let n = (inputs.len() / INPUT_LEN) as i64;
    let (shape, handed_over) = run(&mut session(&head), "input", vec![n, 224, 224, 3], &inputs, HANDOVER);
    assert_eq!(shape, [n, 16, 112, 112], "block 0's output, NCHW");
    let (_, features) = run(&mut session(&tail), HANDOVER, shape, &handed_over, "features");
    let whole = Featurizer::new(&model, Device::Cpu).unwrap().embed(&inputs).unwrap();
    assert_eq!(features.len(), whole.len());
    let diff = features
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-5, "max |Δ| = {diff}");
}

#[test]
fn a_cut_the_graph_cannot_make_is_refused() {
    let model = model();
    let e = verger_model::split::split(&model.bytes, "no/such/tensor:0", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no node of the graph produces it"), "{e}");
    // Inside block 2's residual: its add still reads block 1's output, which the head computes.
    let inside = "mobilenetv2_features/block_2_project_BN/FusedBatchNormV3:0";
    let e = verger_model::split::split(&model.bytes, inside, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the rest of the graph also reads") && e.contains("block_1_project"),
        "{e}"
    );
}

#[test]
fn bf16_on_a_gpu_is_refused() {
    let e = Featurizer::with_precision(&model(), Device::Cuda(0), Precision::Bf16)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("bf16 runs on the CPU"), "{e}");
}

/// Where the CPU supports bf16: the features stay close to Keras's (fp32) at batch sizes 14 and 1 (each its
/// own compiled shapes). Where it does not: refused, naming what is missing.
#[test]
fn bf16_features_stay_close_to_keras_or_the_cpu_is_refused() {
    let model = model();
    let featurizer = Featurizer::with_precision(&model, Device::Cpu, Precision::Bf16);
    if !cpu_has_bf16() {
        match featurizer {
            Err(e @ ModelError::Bf16Unsupported { .. }) => {
                let e = e.to_string();
                assert!(
                    e.contains("AVX512-BF16 or AMX") && e.contains("--precision fp32"),
                    "{e}"
                );
                eprintln!("this CPU has no bf16: checked the refusal only");
                return;
            }
            other => panic!("a CPU without bf16 flags was not refused: {:?}", other.err()),
        }
    }
    let mut featurizer = featurizer.unwrap();
    let (shape, keras) = read_npy_f32(&model_dir().join("reference/features_keras.npy"));
    assert_eq!(shape, [14, FEATURE_DIM]);
    let inputs = reference_inputs();
    let batched = featurizer.embed(&inputs).unwrap();
    let one_by_one: Vec<f32> = inputs
        .chunks_exact(INPUT_LEN)
        .flat_map(|x| featurizer.embed(x).unwrap())
        .collect();
    for (what, features) in [("batch of 14", &batched), ("batch of 1", &one_by_one)] {
        let c = cosines(features, &keras);
        let mean = c.iter().sum::<f64>() / c.len() as f64;
        let min = c.iter().copied().fold(1.0, f64::min);
        eprintln!("{what}: cosine to Keras mean {mean:.5}, min {min:.5}");
        // Measured on the shared Test split: mean 0.9983, min 0.9952 (bench/README.md).
        assert!(mean >= 0.995 && min >= 0.99, "{what}: cosine mean {mean}, min {min}");
        // Not fp32 in disguise: bf16 rounding shows.
        let diff = features
            .iter()
            .zip(&keras)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff > 1e-3, "{what}: max |Δ| {diff} is fp32's, not bf16's");
    }
    assert!(featurizer.embed(&[0.0; 100]).is_err());
    assert!(featurizer.embed(&[]).unwrap().is_empty());
}
