//! The inference floor for benchmarks: the same sessions, threads and batch size as `verger run`, fed with
//! already-preprocessed images, so nothing but ONNX Runtime runs. Prints one JSON line.
//!
//! usage: inference_floor MODEL IMAGE_DIR IMAGES THREADS BATCH_SIZE [DEVICE [PRECISION]]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use verger_engine::report::Usage;
use verger_image::{load_rgb224, preprocess::scale, Limits};
use verger_model::{Featurizer, FeaturizerPool, ModelInput, ModelSpec, INPUT_LEN, MOBILENET_V2_SHA256};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, dir, images, threads, batch, rest @ ..] = &args[..] else {
        panic!("usage: inference_floor MODEL IMAGE_DIR IMAGES THREADS BATCH_SIZE [DEVICE [PRECISION]]")
    };
    let device: verger_model::Device = rest.first().map_or("cpu", String::as_str).parse().unwrap();
    let precision: verger_model::Precision = rest.get(1).map_or("fp32", String::as_str).parse().unwrap();
    let (images, threads, batch): (usize, usize, usize) = (
        images.parse().unwrap(),
        threads.parse().unwrap(),
        batch.parse().unwrap(),
    );
    let spec = ModelSpec {
        location: model.clone(),
        sha256: MOBILENET_V2_SHA256.into(),
    };
    let pool = FeaturizerPool::shared(&spec, device, precision, &verger_model::read_local).unwrap();

    // Up to 64 distinct real images, decoded before the clock starts (as the pool's sessions take them: scaled
    // floats on the CPU, pixels on a GPU); inference cost does not depend on content.
    let mut files: Vec<_> = walk(std::path::Path::new(dir));
    files.sort();
    let pixels: Vec<u8> = files
        .iter()
        .take(64)
        .flat_map(|f| load_rgb224(&std::fs::read(f).unwrap(), &Limits::default()).unwrap())
        .collect();
    let inputs = match pool.input() {
        ModelInput::Scaled => Inputs::Scaled(pixels.chunks_exact(INPUT_LEN).flat_map(scale).collect()),
        ModelInput::Pixels => Inputs::Pixels(pixels),
    };
    let distinct = inputs.len() / INPUT_LEN;
    // One session per thread (as many as the pool makes: a few on a GPU, as in `verger run`), each run once at
    // the batch size before the clock starts (a GPU session picks its kernels on its first run of a shape).
    let mut featurizers: Vec<_> = (0..threads.min(pool.max_sessions()))
        .map(|_| pool.get().unwrap())
        .collect();
    for featurizer in &mut featurizers {
        inputs.embed(featurizer, 0, batch, distinct);
    }

    let (start, cpu) = (Instant::now(), Usage::now().cpu_s);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for mut featurizer in featurizers {
            let (next, inputs) = (&next, &inputs);
            s.spawn(move || loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= images {
                    break;
                }
                inputs.embed(&mut featurizer, first, batch.min(images - first), distinct);
            });
        }
    });
    let (wall, cpu) = (start.elapsed().as_secs_f64(), Usage::now().cpu_s - cpu);
    println!(
        "{{\"images\": {images}, \"wall_s\": {wall:.3}, \"cpu_s\": {cpu:.3}, \"images_per_s\": {:.2}, \"cpu_ms_per_image\": {:.3}, \"peak_rss_mib\": {:.1}}}",
        images as f64 / wall,
        cpu * 1000.0 / images as f64,
        Usage::now().peak_rss_mib
    );
}

/// The decoded images, as the sessions take them.
enum Inputs {
    Scaled(Vec<f32>),
    Pixels(Vec<u8>),
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::Scaled(v) => v.len(),
            Inputs::Pixels(v) => v.len(),
        }
    }

    /// Runs `featurizer` on `n` images from image number `first` on (cycling through the `distinct` ones).
    fn embed(&self, featurizer: &mut Featurizer, first: usize, n: usize, distinct: usize) {
        fn batch<T: Copy>(all: &[T], first: usize, n: usize, distinct: usize) -> Vec<T> {
            (first..first + n)
                .flat_map(|i| &all[(i % distinct) * INPUT_LEN..(i % distinct + 1) * INPUT_LEN])
                .copied()
                .collect()
        }
        match self {
            Inputs::Scaled(all) => featurizer.embed(&batch(all, first, n, distinct)).unwrap(),
            Inputs::Pixels(all) => featurizer.embed_pixels(&batch(all, first, n, distinct)).unwrap(),
        };
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "jpg") {
            out.push(path);
        }
    }
    out
}
