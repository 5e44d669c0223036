//! The verger job on Apache DataFusion: listing, featurization, PCA and Parquet output as one run, embedded or
//! with a Ballista cluster doing the featurizing and writing.
//!
//! Data flow, one module each: [`job`] runs the stages in order (its files are named for them: manifest,
//! featurize, staging, pca_fit, write, verify, and the cluster attempt/commit protocol); the `featurize`
//! scalar function ([`featurize`]) reads, decodes, resizes and runs the model per row; the `pca_stats`
//! aggregate and the `pca_project` function ([`pca`]) reduce the features; [`io`] is the one layer every byte
//! into or out of a store goes through; `codec` (the `codec` feature, which the cluster turns on) carries
//! verger's functions and plan nodes in serialized plans; [`report`] times the stages and writes the run report and its page, priced from a table;
//! [`estimate`] predicts a run's time and cost from a sample; [`context`] makes every DataFusion session;
//! [`classify`] trains, evaluates and applies classifiers on finished runs; [`quality`] audits a finished run's
//! images as a dataset (duplicates, leakage, outliers, likely wrong labels).
//!
//! It does not parse command lines, draw progress bars or know about clusters' processes: front ends (the
//! `verger` binary and library) and `verger-cluster` do.

pub mod classify;
#[cfg(feature = "codec")]
pub mod codec;
pub mod config;
pub mod context;
pub mod embed;
pub mod error;
pub mod estimate;
pub mod fault;
pub mod featurize;
pub mod io;
pub mod job;
pub mod layout;
pub mod pca;
pub mod progress;
pub mod pseudonym;
pub mod quality;
pub mod report;
pub mod saved_pca;

pub use config::{ErrorBudget, JobConfig};
pub use context::{register_functions, register_model};
pub use error::JobError;
pub use featurize::FeaturizeSettings;
pub use io::store::bucket_regions;
pub use io::{store, StoreError};
pub use job::{list_images, run_job, JobOutcome};
pub use progress::{NoProgress, Progress, Stop};
