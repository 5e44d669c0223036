//! `verger train`: a softmax classifier on a finished run's rows, written as a classifier folder.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use verger_classify::TrainOptions;

use super::folder::{Classifier, Input, Neighbours};
use super::{run_rows, ClassifyError};
use crate::io::output::{Admit, OutputStore};
use crate::io::store::StoreOptions;

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
}

/// Trains on `config.run` and writes the classifier folder `config.out`.
pub async fn train(config: &TrainConfig) -> Result<(Classifier, TrainReport), ClassifyError> {
    let started = Instant::now();
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
    let classes: Vec<String> = {
        let mut c = rows.labels.clone();
        c.sort();
        c.dedup();
        c
    };
    if classes.len() < 2 {
        return Err(failed(format!(
            "one class only ({}): a classifier needs at least two",
            classes[0]
        )));
    }
    let featurizer_sha256 = rows.pca_model.model_sha256.clone().ok_or_else(|| {
        failed("its PCA model does not record the featurizer's sha256 (made by an older verger): run it again".into())
    })?;
    let labels: Vec<usize> = rows
        .labels
        .iter()
        .map(|l| classes.binary_search(l).expect("a known class"))
        .collect();
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
    let trained = tokio::task::spawn_blocking(move || verger_classify::train(&x, dim, &labels, n_classes, &options))
        .await
        .map_err(|e| ClassifyError::Job(crate::error::JobError::task(e)))??;
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
    };
    classifier.save(&out, &report).await?;
    Ok((classifier, report))
}
