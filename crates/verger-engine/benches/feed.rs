//! The host pipeline of a run without its inference (issue 45): what `featurize` does with each batch of rows
//! (read, decode, Pillow-exact resize, put into the batch, hand the batch on, build the result column), the
//! model replaced by a sink that only takes the batch, against a plain loop that reads, decodes and resizes the
//! same files and nothing else. Batches as a GPU takes them (uint8 pixels, scaled in the graph) and as the CPU
//! takes them (scaled float32, four times the bytes). Both take partitions of 256 images from a shared counter
//! on T threads, as a run's DataFusion threads take its partitions. A quarter of the Test split (every 4th of
//! its 2,464 images). Prints criterion's figures, then (medians of 5 passes) images/s of each on one thread
//! and on every core, the pipeline's share of the plain loop's rate, and the scaling from one thread.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use datafusion::arrow::array::{Array, StringArray};
use verger_engine::featurize::{featurize_column, Batch, FeaturizeSettings, Infer, InferFailure};
use verger_image::Limits;
use verger_listing::{list_folder, NameFilter, DEFAULT_GLOB};
use verger_model::{ModelInput, FEATURE_DIM, INPUT_LEN};
use verger_testdata::{fruits360_dir, model_path};

/// Rows per partition, as a run's default.
const PARTITION_ROWS: usize = 256;

/// Takes each batch and answers zeros: everything of a run's featurize step but the model. Batches of the
/// GPU's input (pixels, scaled in the graph) or of the CPU's (scaled floats, four times the bytes).
struct Sink(ModelInput);

impl Infer for Sink {
    fn input(&self) -> ModelInput {
        self.0
    }

    fn infer(&self, batch: Batch<'_>) -> Result<Vec<f32>, InferFailure> {
        let images = match batch {
            Batch::Scaled(floats) => black_box(floats).len() / INPUT_LEN,
            Batch::Pixels(pixels) => black_box(pixels).len() / INPUT_LEN,
        };
        Ok(vec![0.0; images * FEATURE_DIM])
    }
}

/// The images as partitions of `file://` URIs, as the manifest gives them.
fn partitions() -> Vec<StringArray> {
    let filter = NameFilter::new(&[DEFAULT_GLOB.to_string()]).unwrap();
    let listed = list_folder(&fruits360_dir().join("Test"), &filter).unwrap();
    let uris: Vec<String> = listed.iter().step_by(4).map(|e| e.uri.to_string()).collect();
    uris.chunks(PARTITION_ROWS)
        .map(|chunk| StringArray::from_iter_values(chunk.iter()))
        .collect()
}

/// Runs `work` on every partition, `threads` at a time, each thread taking the next one left.
fn on_threads(threads: usize, partitions: &[StringArray], work: &(dyn Fn(&StringArray) + Sync)) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(partition) = partitions.get(i) else { break };
                work(partition);
            });
        }
    });
}

/// The peer: read, decode and resize each image, nothing else.
fn plain(partition: &StringArray) {
    for uri in partition.iter().flatten() {
        let bytes = std::fs::read(uri.strip_prefix("file://").unwrap()).unwrap();
        black_box(verger_image::load_rgb224(&bytes, &Limits::default()).unwrap());
    }
}

fn bench(c: &mut Criterion) {
    let partitions = partitions();
    let images: usize = partitions.iter().map(|p| p.len()).sum();
    let settings = FeaturizeSettings::new(model_path().to_str().unwrap());
    let feeds = [
        ("gpu_batches", Sink(ModelInput::Pixels)),
        ("cpu_batches", Sink(ModelInput::Scaled)),
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = vec![1];
    if cores > 1 {
        threads.push(cores);
    }

    let mut group = c.benchmark_group(format!("feed_{images}_test_images"));
    group.sample_size(10);
    for &t in &threads {
        group.bench_function(format!("plain_decode_resize_{t}_threads"), |b| {
            b.iter(|| on_threads(t, &partitions, &plain))
        });
        for (name, sink) in &feeds {
            let pipeline = |partition: &StringArray| {
                black_box(featurize_column(partition, &settings, sink).unwrap());
            };
            group.bench_function(format!("pipeline_{name}_no_inference_{t}_threads"), |b| {
                b.iter(|| on_threads(t, &partitions, &pipeline))
            });
        }
    }
    group.finish();

    let rate = |t: usize, work: &(dyn Fn(&StringArray) + Sync)| {
        let mut seconds: Vec<f64> = (0..5)
            .map(|_| {
                let started = Instant::now();
                on_threads(t, &partitions, work);
                started.elapsed().as_secs_f64()
            })
            .collect();
        seconds.sort_by(f64::total_cmp);
        images as f64 / seconds[2]
    };
    let mut first: Vec<f64> = Vec::new();
    for &t in &threads {
        let plain_rate = rate(t, &plain);
        let mut rates = vec![plain_rate];
        for (_, sink) in &feeds {
            let pipeline = |partition: &StringArray| {
                black_box(featurize_column(partition, &settings, sink).unwrap());
            };
            rates.push(rate(t, &pipeline));
        }
        if first.is_empty() {
            first = rates.clone();
        }
        println!(
            "feed, {t} thread(s): plain decode+resize {plain_rate:.0} images/s (x{:.2} of 1 thread); pipeline \
             without inference, GPU batches {:.0} images/s = {:.3} of the plain loop (x{:.2}), CPU batches {:.0} \
             images/s = {:.3} (x{:.2})",
            plain_rate / first[0],
            rates[1],
            rates[1] / plain_rate,
            rates[1] / first[1],
            rates[2],
            rates[2] / plain_rate,
            rates[2] / first[2],
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
