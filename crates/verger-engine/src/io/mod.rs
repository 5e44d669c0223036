//! Every byte into or out of a store goes through here: locations (`file://`, `s3://`), store clients and
//! credentials ([`store`]), region look-ups and residency checks, image and model reads ([`source`]), the
//! atomic output folder and its one Parquet writer ([`output`]), output files as DataFusion tables for
//! cluster executors ([`output_file`]), and the one-writer claim on an output ([`claim`]).
//!
//! It knows nothing of images, models or PCA: callers hand it bytes and record batches.

pub mod claim;
pub mod output;
pub mod output_file;
pub mod source;
pub mod store;

use std::path::PathBuf;

use thiserror::Error;

/// What went wrong reaching a store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A request about one object or folder failed (after the retries transient failures get).
    #[error("object store: {location}: {source}")]
    Object {
        location: String,
        source: object_store::Error,
    },
    /// The store could not be set up: a bad endpoint, transport, bucket name or shared credentials file.
    #[error("object store: {0}")]
    Client(String),
    /// An object or file that could not be read; the text names the cause only, since it goes into the errors
    /// output, where paths may be pseudonymized.
    #[error("{0}")]
    Unreadable(String),
    #[error("data residency: {0}")]
    Residency(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// The rows being written could not be computed.
    #[error(transparent)]
    Rows(#[from] datafusion::error::DataFusionError),
    /// An output that must not be written or replaced: it holds what verger did not write, or what the
    /// command reads ([`output::refuse_overlap`], [`output::OutputStore::admit`]).
    #[error("output {output} refused: {reason}")]
    Refused { output: String, reason: String },
    /// Another run holds the output ([`claim`]).
    #[error("output {output} is being written by another verger run ({holder}); wait for it to finish or stop it")]
    Busy { output: String, holder: String },
    /// This run's lease on an S3 output was lost (expired or taken over); it must not commit.
    #[error("lost the claim on output {output}: {reason}")]
    ClaimLost { output: String, reason: String },
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Reads a secret (a key, a token) from a file only its owner may read or write (mode 0600 or stricter):
/// anyone else who could read it could use it. The error names the file and, for a loose one, the fix.
pub fn read_private(path: &std::path::Path) -> Result<Vec<u8>, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} can be read by other users (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}
