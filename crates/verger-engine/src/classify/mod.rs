//! What comes after the features: a classifier trained on a finished run ([`train`]), evaluated on another
//! ([`evaluate`]), used to identify new photos ([`identify`], [`identify_bytes`] for uploads), and exported
//! with the featurizer as one ONNX file for apps ([`export`]). The numbers are `verger-classify`'s; this
//! module reads runs and writes classifier folders through the I/O layer.
//!
//! A classifier folder holds `classifier.json` (classes, weights, what it is trained on and the sha256s of the
//! featurizer and PCA model it expects), `pca_model.json` (the PCA model, as the run saved it),
//! `neighbours.parquet` (each training image's path, label and PCA features, for nearest neighbours) and
//! `training.json`; evaluation adds `evaluation.json` and `confusion.parquet`.

mod evaluate;
mod export;
mod folder;
mod identify;
pub mod run_rows;
mod train;

pub use evaluate::{evaluate, Evaluation, NovelScores, Novelty};
pub use export::{export, Exported};
pub use folder::{Classifier, Input, UnknownRule};
pub use identify::{identify, identify_bytes, Identification, Identified, Label, Neighbour, PhotoError};
pub use train::{
    check_unknown_percentile, train, TrainConfig, TrainReport, DEFAULT_UNKNOWN_PERCENTILE, UNKNOWN_NEIGHBOUR,
};

use thiserror::Error;

use crate::error::JobError;
use crate::io::StoreError;

#[derive(Debug, Error)]
pub enum ClassifyError {
    /// A run that is not a finished verger output, or lacks what is asked of it.
    #[error("{run}: {reason}")]
    Run { run: String, reason: String },
    /// A classifier folder that is missing, truncated or inconsistent.
    #[error("classifier {folder}: {reason}")]
    Folder { folder: String, reason: String },
    /// A classifier and a run (or featurizer) that do not belong together.
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Train(#[from] verger_classify::ClassifyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Job(#[from] JobError),
}

impl From<datafusion::error::DataFusionError> for ClassifyError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        ClassifyError::Job(e.into())
    }
}

impl From<datafusion::arrow::error::ArrowError> for ClassifyError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        ClassifyError::Job(e.into())
    }
}
