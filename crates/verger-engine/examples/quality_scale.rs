//! bench/quality.py's measurements at sizes no test run reaches. Prints one JSON line.
//!
//! usage:
//!   quality_scale synthetic ROWS DIM CLASSES SEARCH   `verger quality`'s numbers ([`quality::audit`]: the
//!       neighbours, outlier scores, out-of-fold probabilities and confident learning) on ROWS synthetic rows
//!       of DIM values around CLASSES centres, as the run's features and its PCA rows
//!   quality_scale copies RUN ROWS SEARCH              the same on a finished run's rows repeated to ROWS, each
//!       copy moved by a little noise
//!   quality_scale lookup ROWS DIM QUERIES             identify's nearest-training-image lookup among ROWS
//!       synthetic rows: through the HNSW index, and by brute force (the peer), p50 and p99 per query
//!
//! SEARCH is auto, exact or approximate. Synthetic rows: class centres and noise drawn per component with a
//! variance falling as 1/(component + 1), as a PCA's components do.

use std::time::Instant;

use verger_classify::knn::Metric;
use verger_classify::{ann, nearest};
use verger_engine::classify::run_rows::RunRows;
use verger_engine::quality::{self, QualityConfig};
use verger_engine::saved_pca::SavedPca;

/// A small deterministic generator (SplitMix64) with Gaussian draws (Box-Muller).
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.next().max(f64::MIN_POSITIVE), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn synthetic(rows: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
    let mut d = Draws(seed);
    let sd: Vec<f64> = (0..dim).map(|j| 1.0 / ((j + 1) as f64).sqrt()).collect();
    let centres: Vec<f64> = (0..classes * dim).map(|v| 2.0 * d.gaussian() * sd[v % dim]).collect();
    let labels: Vec<usize> = (0..rows).map(|i| i % classes).collect();
    let values = (0..rows * dim)
        .map(|v| centres[labels[v / dim] * dim + v % dim] + d.gaussian() * sd[v % dim])
        .collect();
    (values, labels)
}

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn audit(rows: RunRows, search: &str, what: serde_json::Value) {
    let mut config = QualityConfig::new("in memory");
    config.search = search.parse().unwrap();
    let started = Instant::now();
    let summary = quality::audit(&config, &rows).unwrap();
    let mut out = what;
    out["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    out["peak_mib"] = serde_json::json!(peak_mib());
    out["search"] = serde_json::to_value(summary.search).unwrap();
    out["parts"] = serde_json::to_value(summary.seconds).unwrap();
    out["near_duplicate_images"] = serde_json::json!(summary.near_duplicate_images);
    out["label_issues"] = serde_json::json!(summary.label_issues);
    println!("{out}");
}

fn saved_pca(dim: usize) -> SavedPca {
    SavedPca {
        model: verger_pca::PcaModel {
            dim,
            k: dim,
            count: 0,
            center: false,
            mean: vec![0.0; dim],
            components: Vec::new(),
            eigenvalues: Vec::new(),
            explained_variance_ratio: Vec::new(),
        },
        model_sha256: None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> usize { args[i].parse().unwrap() };
    match args.get(1).map(String::as_str) {
        Some("synthetic") => {
            let (n, dim, classes) = (arg(2), arg(3), arg(4));
            let (values, labels) = synthetic(n, dim, classes, 1);
            let rows = RunRows {
                paths: (0..n).map(|i| format!("synthetic/{i}.jpg")).collect(),
                labels: labels.iter().map(|l| format!("class {l}")).collect(),
                pca: values.clone(),
                k: dim,
                features: Some(values),
                pca_model: saved_pca(dim),
                pca_bytes: Vec::new(),
            };
            let what = serde_json::json!({"rows": n, "dim": dim, "classes": classes});
            audit(rows, &args[5], what);
        }
        Some("copies") => {
            let (run, n) = (&args[2], arg(3));
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let store = verger_engine::store::StoreOptions::default();
            let one = runtime
                .block_on(verger_engine::classify::run_rows::read(run, &store, true))
                .unwrap();
            let features = one.features.as_deref().unwrap();
            let (m, dim) = (one.len(), features.len() / one.len());
            let mut d = Draws(2);
            // Each copy after the first moved by noise of 2 % of the feature values' spread: near duplicates.
            let spread = (features.iter().map(|v| v * v).sum::<f64>() / features.len() as f64).sqrt();
            let copy = |rows: &[f64], width: usize, d: &mut Draws| -> Vec<f64> {
                (0..n * width)
                    .map(|v| {
                        let (i, j) = (v / width, v % width);
                        let value = rows[(i % m) * width + j];
                        match i < m {
                            true => value,
                            false => value + 0.02 * spread * d.gaussian(),
                        }
                    })
                    .collect()
            };
            let rows = RunRows {
                paths: (0..n).map(|i| format!("copy {}/{}", i / m, one.paths[i % m])).collect(),
                labels: (0..n).map(|i| one.labels[i % m].clone()).collect(),
                pca: copy(&one.pca, one.k, &mut d),
                k: one.k,
                features: Some(copy(features, dim, &mut d)),
                pca_model: one.pca_model.clone(),
                pca_bytes: Vec::new(),
            };
            drop(one);
            let what = serde_json::json!({"rows": n, "dim": dim, "copies_of": m});
            audit(rows, &args[4], what);
        }
        Some("lookup") => {
            let (n, dim, queries) = (arg(2), arg(3), arg(4));
            // Probes from the same classes as the training rows (the last `queries` rows drawn), as photos of
            // the same fruit.
            let (mut values, _) = synthetic(n + queries, dim, 100, 1);
            let probes = values.split_off(n * dim);
            let started = Instant::now();
            let index = ann::Index::build(&values, dim, Metric::Euclidean).unwrap();
            let build = started.elapsed().as_secs_f64();
            let recall = verger_classify::knn::search_with(&index, &probes, &values, dim, 10, false)
                .unwrap()
                .method();
            let time = |f: &dyn Fn(&[f64])| -> (f64, f64) {
                let mut ms: Vec<f64> = probes
                    .chunks_exact(dim)
                    .map(|q| {
                        let t = Instant::now();
                        f(q);
                        t.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                ms.sort_by(f64::total_cmp);
                let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
                (at(0.5), at(0.99))
            };
            let (p50, p99) = time(&|q| {
                index.nearest(&values, q, 5, None).unwrap();
            });
            let (b50, b99) = time(&|q| {
                nearest(&values, dim, q, 5);
            });
            let out = serde_json::json!({
                "rows": n, "dim": dim, "queries": queries, "build_seconds": build, "search": recall,
                "index_ms": {"p50": p50, "p99": p99}, "brute_force_ms": {"p50": b50, "p99": b99},
                "peak_mib": peak_mib(),
            });
            println!("{out}");
        }
        _ => panic!(
            "usage: quality_scale synthetic ROWS DIM CLASSES SEARCH | copies RUN ROWS SEARCH | lookup ROWS DIM QUERIES"
        ),
    }
}
