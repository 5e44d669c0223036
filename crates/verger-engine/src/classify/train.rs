//! `verger train`: a softmax classifier on a finished run's rows, written as a classifier folder.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use verger_classify::knn::{self, Method, Metric, Search};
use verger_classify::{ann, TrainOptions};

use super::folder::{Classifier, Input, Neighbours, UnknownRule};
use super::{run_rows, ClassifyError};
use crate::io::output::{Admit, OutputStore};
use crate::io::store::StoreOptions;

/// Photos further from every training image than this percentile of the training images' own
/// [`UNKNOWN_NEIGHBOUR`]-th nearest-neighbour distances are unknown (`identify`).
pub const DEFAULT_UNKNOWN_PERCENTILE: f64 = 99.0;
/// Which neighbour's distance a training image is measured by for the unknown rule: the 5th, not the 1st,
/// because photo collections hold near twins (bursts, video frames, Fruits-360's turning fruit) that make
/// the 1st tiny. On the shared splits, with the 99th percentile: the 1st called 23.3 % of the Test photos
/// unknown, the 3rd 3.4 %, the 5th 0.4 %, while every photo of Pillow's test images and of noise stayed
/// above it (docs/quality.md).
pub const UNKNOWN_NEIGHBOUR: usize = 5;

/// An unknown percentile in (0, 100], or why not.
pub fn check_unknown_percentile(percentile: f64) -> Result<f64, String> {
    match percentile > 0.0 && percentile <= 100.0 {
        true => Ok(percentile),
        false => Err(format!("--unknown-percentile must be in (0, 100], not {percentile}")),
    }
}

/// What to train on and where to write the classifier.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// A finished run (folder or `s3://`).
    pub run: String,
    /// The classifier folder to write (folder or `s3://`).
    pub out: String,
    pub input: Input,
    pub options: TrainOptions,
    pub store: StoreOptions,
    /// Replace an existing classifier folder.
    pub overwrite: bool,
    /// The percentile of the training images' [`UNKNOWN_NEIGHBOUR`]-th nearest-neighbour distances above which a
    /// photo is unknown, in (0, 100].
    pub unknown_percentile: f64,
    /// How the training images' neighbours are found: [`Search::Auto`] builds an HNSW index (saved with the
    /// classifier, for `identify`) beyond [`knn::EXACT_MAX_PAIRS`] pairs; `Approximate` always, `Exact` never.
    pub search: Search,
}

impl TrainConfig {
    /// Softmax on the run's `pca_features`, scikit-learn's default penalty (`C = 1`).
    pub fn new(run: impl Into<String>, out: impl Into<String>) -> Self {
        TrainConfig {
            run: run.into(),
            out: out.into(),
            input: Input::PcaFeatures,
            options: TrainOptions::default(),
            store: StoreOptions::default(),
            overwrite: false,
            unknown_percentile: DEFAULT_UNKNOWN_PERCENTILE,
            search: Search::Auto,
        }
    }
}

/// How training went, saved as `training.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub run: String,
    pub input: Input,
    pub rows: usize,
    pub classes: usize,
    /// Training rows per class.
    pub class_rows: BTreeMap<String, usize>,
    pub train_accuracy: f64,
    pub iterations: usize,
    pub loss: f64,
    pub seconds: f64,
    pub featurizer_sha256: String,
    pub options: TrainOptions,
    /// When `identify` calls a photo unknown.
    pub unknown: UnknownRule,
    /// How the training images' neighbours were found (for the unknown rule, and for `identify` through the
    /// saved index beyond [`verger_classify::knn::EXACT_MAX_PAIRS`] pairs): exactly, or by an index with its
    /// recall@10.
    pub search: Method,
}

/// Trains on `config.run` and writes the classifier folder `config.out`.
pub async fn train(config: &TrainConfig) -> Result<(Classifier, TrainReport), ClassifyError> {
    let started = Instant::now();
    let percentile = check_unknown_percentile(config.unknown_percentile).map_err(ClassifyError::Mismatch)?;
    // Replacing a folder that holds the run would delete what is being trained on.
    crate::io::output::refuse_overlap(&config.out, &[("the run", &config.run)])?;
    let out = OutputStore::open(&config.out, &config.store)?;
    match config.overwrite {
        true => out.replace(&super::folder::KIND).await?,
        false => out.admit(&super::folder::KIND, Admit::Empty).await?,
    }
    let rows = run_rows::read(&config.run, &config.store, config.input == Input::Features).await?;
    let failed = |reason: String| ClassifyError::Run {
        run: config.run.clone(),
        reason,
    };
    if rows.is_empty() {
        return Err(failed("no rows to train on".into()));
    }
    let classes = rows.classes();
    if classes.len() < 2 {
        return Err(failed(format!(
            "one class only ({}): a classifier needs at least two",
            classes[0]
        )));
    }
    let featurizer_sha256 = rows.pca_model.model_sha256.clone().ok_or_else(|| {
        failed("its PCA model does not record the featurizer's sha256 (made by an older verger): run it again".into())
    })?;
    let labels = rows.label_indices(&classes);
    let mut class_rows = BTreeMap::new();
    for l in &rows.labels {
        *class_rows.entry(l.clone()).or_default() += 1;
    }
    let (x, dim) = match config.input {
        Input::PcaFeatures => (rows.pca.clone(), rows.k),
        Input::Features => (
            rows.features.clone().expect("read with features"),
            verger_model::FEATURE_DIM,
        ),
    };
    let (options, n_classes) = (config.options, classes.len());
    let (pca, k, search) = (rows.pca.clone(), rows.k, config.search);
    let (trained, unknown) = tokio::task::spawn_blocking(move || {
        let trained = verger_classify::train(&x, dim, &labels, n_classes, &options);
        (trained, unknown_rule(&pca, k, percentile, UNKNOWN_NEIGHBOUR, search))
    })
    .await
    .map_err(|e| ClassifyError::Job(crate::error::JobError::task(e)))?;
    let trained = trained?;
    let (unknown, index, search) = unknown?;
    tracing::info!(
        iterations = trained.iterations,
        loss = trained.loss,
        train_accuracy = trained.train_accuracy,
        "trained"
    );
    let classifier = Classifier {
        input: config.input,
        classes,
        model: trained.model,
        options: config.options,
        featurizer_sha256: featurizer_sha256.clone(),
        pca: rows.pca_model.clone(),
        pca_bytes: rows.pca_bytes.clone(),
        neighbours: Neighbours {
            paths: rows.paths.clone(),
            labels: rows.labels.clone(),
            pca: rows.pca.clone(),
        },
        unknown: Some(unknown),
        index: index.map(Arc::new),
    };
    let report = TrainReport {
        run: config.run.clone(),
        input: config.input,
        rows: rows.len(),
        classes: classifier.classes.len(),
        class_rows,
        train_accuracy: trained.train_accuracy,
        iterations: trained.iterations,
        loss: trained.loss,
        seconds: started.elapsed().as_secs_f64(),
        featurizer_sha256,
        options: config.options,
        unknown,
        search,
    };
    classifier.save(&out, &report).await?;
    Ok((classifier, report))
}

/// The distance at the `percentile`-th percentile (numpy's linear interpolation) of each training row's
/// Euclidean distance to its `neighbour`-th nearest other row (the furthest there is, with fewer rows), in PCA
/// space (`k` values a row). Beyond [`knn::EXACT_MAX_PAIRS`] pairs, through an index over the rows, which
/// `identify` then uses too.
fn unknown_rule(
    pca: &[f64],
    k: usize,
    percentile: f64,
    neighbour: usize,
    search: Search,
) -> Result<(UnknownRule, Option<ann::Index>, Method), ClassifyError> {
    let (dim, rows) = (k.max(1), (pca.len() / k.max(1)) as u64);
    let indexed = match search {
        Search::Auto => rows * rows > knn::EXACT_MAX_PAIRS,
        Search::Approximate => true,
        Search::Exact => false,
    };
    let index = match indexed {
        true => Some(ann::Index::build(pca, dim, Metric::Euclidean).map_err(ClassifyError::Train)?),
        false => None,
    };
    let found = match &index {
        Some(index) => knn::search_with(index, pca, pca, dim, neighbour.max(1), true).map_err(ClassifyError::Train)?,
        None => knn::euclidean_knn(pca, pca, dim, neighbour.max(1), true),
    };
    let mut distances: Vec<f64> = (0..found.queries())
        .filter_map(|i| found.of(i).last())
        .map(|(_, d)| d)
        .collect();
    distances.sort_by(f64::total_cmp);
    let distance = match distances.len() {
        0 => f64::INFINITY,
        n => {
            let at = percentile / 100.0 * (n - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            distances[lo] + (distances[hi] - distances[lo]) * (at - lo as f64)
        }
    };
    let rule = UnknownRule {
        percentile,
        neighbour,
        distance,
    };
    Ok((rule, index, found.method()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unknown_distance_is_numpys_linear_percentile_of_the_nearest_other_distances() {
        // Points on a line at 0, 1, 3, 7: nearest other distances 1, 1, 2, 4.
        let line = [0.0, 1.0, 3.0, 7.0];
        let rule = unknown_rule(&line, 1, 50.0, 1, Search::Exact).unwrap().0;
        assert_eq!((rule.distance, rule.neighbour), (1.5, 1));
        assert_eq!(unknown_rule(&line, 1, 100.0, 1, Search::Exact).unwrap().0.distance, 4.0);
        // np.percentile([1, 1, 2, 4], 90) = 2 + 0.7 * 2.
        assert!((unknown_rule(&line, 1, 90.0, 1, Search::Exact).unwrap().0.distance - 3.4).abs() < 1e-12);
        // 2nd nearest other: 3, 2, 3, 6; with more neighbours than rows, the furthest: 7, 6, 4, 7.
        assert_eq!(unknown_rule(&line, 1, 50.0, 2, Search::Exact).unwrap().0.distance, 3.0);
        assert_eq!(unknown_rule(&line, 1, 0.0, 9, Search::Exact).unwrap().0.distance, 4.0);
    }
}
