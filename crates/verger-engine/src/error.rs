//! The one error type of a run: every stage returns it, and front ends map it to their own (an exit status, a
//! Python exception) by variant.

use std::path::{Path, PathBuf};

use datafusion::common::DataFusionError;
use thiserror::Error;
use verger_listing::ListingError;
use verger_pca::PcaError;

use crate::io::StoreError;

#[derive(Debug, Error)]
pub enum JobError {
    #[error("output {0} is already complete (_SUCCESS present); nothing to resume")]
    AlreadyComplete(String),
    #[error("{failed} inputs failed, more than the {limit} that --max-errors allows; stopped")]
    TooManyErrors { failed: u64, limit: u64 },
    #[error("no file under {input} matches {globs:?}")]
    NoImages { input: String, globs: Vec<String> },
    #[error("no image could be featurized; {0}/report.html and errors/ say why")]
    NothingFeaturized(String),
    #[error(transparent)]
    Prices(#[from] crate::report::PriceError),
    /// The commit check found the output not accounting for every listed image; nothing was committed.
    #[error("commit check failed, _SUCCESS not written: {0}; --resume redoes what is missing")]
    Incomplete(String),
    /// A PCA model that cannot be used for this run (`--pca-model`).
    #[error("{0}")]
    PcaModel(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Listing(#[from] ListingError),
    #[error(transparent)]
    Pca(#[from] PcaError),
    #[error(transparent)]
    Model(#[from] verger_model::ModelError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("{0}")]
    Pseudonymize(String),
    /// A report that cannot be read or rendered.
    #[error("{0}")]
    Report(String),
    /// A cluster job failed on every submission; what the run committed is kept.
    #[error(
        "{file}: the cluster job failed {attempts} times (last: {message}); what the run committed is kept: \
         the same command with --resume continues it once the cluster is back"
    )]
    ClusterJob {
        file: String,
        attempts: usize,
        message: String,
    },
    /// `--cache` names a folder that is not a verger feature cache.
    #[error("{0}")]
    NotACache(String),
    /// Settings that cannot work, found before anything ran.
    #[error("{0}")]
    Config(String),
    #[error("worker task failed: {0}")]
    Task(String),
    /// Stopped on request ([`crate::progress::Stop`]); the output's claim was released.
    #[error("interrupted; what was staged in {0} is kept: resume continues the run")]
    Interrupted(String),
}

impl JobError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        JobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A spawned task that panicked or was cancelled.
    pub fn task(e: tokio::task::JoinError) -> Self {
        JobError::Task(e.to_string())
    }
}
