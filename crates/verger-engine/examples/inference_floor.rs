//! The inference floor for benchmarks: the same sessions, threads and batch size as `verger run`, fed with
//! already-preprocessed images, so nothing but ONNX Runtime runs. Prints one JSON line.
//!
//! usage: inference_floor MODEL IMAGE_DIR IMAGES THREADS BATCH_SIZE [DEVICE [PRECISION]]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use verger_engine::report::Usage;
use verger_image::{load_rgb224, preprocess::scale, Limits};
use verger_model::{FeaturizerPool, ModelSpec, INPUT_LEN, MOBILENET_V2_SHA256};

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

    // Up to 64 distinct real images, decoded before the clock starts; inference cost does not depend on content.
    let mut files: Vec<_> = walk(std::path::Path::new(dir));
    files.sort();
    let inputs: Vec<f32> = files
        .iter()
        .take(64)
        .flat_map(|f| scale(&load_rgb224(&std::fs::read(f).unwrap(), &Limits::default()).unwrap()))
        .collect();
    let distinct = inputs.len() / INPUT_LEN;
    drop(pool.get().unwrap());

    let (start, cpu) = (Instant::now(), Usage::now().cpu_s);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut featurizer = pool.get().unwrap();
                let mut buffer = vec![0f32; batch * INPUT_LEN];
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= images {
                        break;
                    }
                    let n = batch.min(images - first);
                    for j in 0..n {
                        let src = (first + j) % distinct;
                        buffer[j * INPUT_LEN..(j + 1) * INPUT_LEN]
                            .copy_from_slice(&inputs[src * INPUT_LEN..(src + 1) * INPUT_LEN]);
                    }
                    featurizer.embed(&buffer[..n * INPUT_LEN]).unwrap();
                }
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
