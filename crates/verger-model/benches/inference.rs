//! Inference time per image at batch sizes 1 and 16 (one session, one intra-op thread, as `verger run`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use verger_model::{read_local, Featurizer, ModelSpec, VerifiedModel, INPUT_LEN, MOBILENET_V2_SHA256};
use verger_testdata::{model_path, synthetic_pattern};

fn inference(c: &mut Criterion) {
    let model = VerifiedModel::load(
        &ModelSpec {
            location: model_path().to_string_lossy().into_owned(),
            sha256: MOBILENET_V2_SHA256.into(),
        },
        &read_local,
    )
    .unwrap();
    let mut featurizer = Featurizer::new(&model, verger_model::Device::Cpu).unwrap();
    let one: Vec<f32> = synthetic_pattern()
        .iter()
        .map(|&v| f32::from(v) / 127.5 - 1.0)
        .collect();
    let mut group = c.benchmark_group("inference");
    group.sample_size(10);
    for batch in [1usize, 4, 8, 16] {
        let inputs: Vec<f32> = one.iter().copied().cycle().take(batch * INPUT_LEN).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &inputs, |b, x| {
            b.iter(|| featurizer.embed(x).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, inference);
criterion_main!(benches);
