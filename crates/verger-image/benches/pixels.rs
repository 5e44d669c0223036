//! Time per image of each pixel stage on a real Fruits-360 JPEG (100x100 → 224x224) and a larger reference
//! photo: decode, resize, RGB conversion plus scaling to model input.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use verger_image::{convert, decode, preprocess, resize, Limits, MODEL_SIDE};
use verger_testdata::{fruits360_dir, model_dir};

fn stages(c: &mut Criterion) {
    let limits = Limits::default();
    let images = [
        (
            "fruits360_100x100",
            fruits360_dir().join("Training/Apple 10/r0_103_100.jpg"),
        ),
        ("reference_photo", model_dir().join("reference/images/pineapple.jpg")),
    ];
    for (name, path) in images {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        c.bench_function(&format!("decode/{name}"), |b| {
            b.iter(|| decode(black_box(&bytes), &limits).unwrap())
        });
        let decoded = decode(&bytes, &limits).unwrap();
        c.bench_function(&format!("resize/{name}"), |b| {
            b.iter(|| resize::pillow_resize(black_box(&decoded), MODEL_SIDE, MODEL_SIDE))
        });
        let resized = resize::pillow_resize(&decoded, MODEL_SIDE, MODEL_SIDE);
        let mut input = vec![0f32; MODEL_SIDE * MODEL_SIDE * 3];
        c.bench_function(&format!("preprocess/{name}"), |b| {
            b.iter(|| preprocess::scale_into(&convert::to_rgb(black_box(&resized)).data, &mut input))
        });
    }
}

criterion_group!(benches, stages);
criterion_main!(benches);
