//! `train` on one thread against every core: the fit's time is its two matrix products per L-BFGS step.
//! Shape of a quarter of the Fruits-360 Training split on the 1280-d features (1,848 rows, 88 classes),
//! synthetic rows, a fixed 10 iterations (tolerance 0) so both contenders do the same work. Prints criterion's
//! figures, then the ratio of medians over 5 more fits each.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use verger_classify::{train, TrainOptions};

const ROWS: usize = 1848;
const DIM: usize = 1280;
const CLASSES: usize = 88;

/// Rows around one centre per class, deterministic.
fn data() -> (Vec<f64>, Vec<usize>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let centres: Vec<f64> = (0..CLASSES * DIM).map(|_| next() * 2.0).collect();
    let labels: Vec<usize> = (0..ROWS).map(|i| i % CLASSES).collect();
    let mut rows = Vec::with_capacity(ROWS * DIM);
    for &label in &labels {
        for j in 0..DIM {
            rows.push(centres[label * DIM + j] + next() - 0.5);
        }
    }
    (rows, labels)
}

/// A fixed 10 iterations in `pool`.
fn fit_in(pool: &rayon::ThreadPool, rows: &[f64], labels: &[usize]) -> usize {
    let options = TrainOptions {
        max_iter: 10,
        tol: 0.0,
        ..TrainOptions::default()
    };
    pool.install(|| {
        train(black_box(rows), DIM, labels, CLASSES, &options)
            .unwrap()
            .iterations
    })
}

fn bench(c: &mut Criterion) {
    let (rows, labels) = data();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let (one_thread, every_core) = (pool(1), pool(cores));
    let mut group = c.benchmark_group("train_1848x1280_88_classes_10_iterations");
    group.sample_size(10);
    group.bench_function("one_thread", |b| b.iter(|| fit_in(&one_thread, &rows, &labels)));
    group.bench_function(format!("{cores}_threads"), |b| {
        b.iter(|| fit_in(&every_core, &rows, &labels))
    });
    group.finish();

    let median = |pool: &rayon::ThreadPool| {
        let mut seconds: Vec<f64> = (0..5)
            .map(|_| {
                let started = Instant::now();
                fit_in(pool, &rows, &labels);
                started.elapsed().as_secs_f64()
            })
            .collect();
        seconds.sort_by(f64::total_cmp);
        seconds[2]
    };
    let (one, all) = (median(&one_thread), median(&every_core));
    println!(
        "train: one thread {one:.3} s, {cores} threads {all:.3} s: {:.2}x faster",
        one / all
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
