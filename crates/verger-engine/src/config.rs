//! What a run is asked to do ([`JobConfig`]), with every default declared here once: the command line, the
//! Python package and the examples start from [`JobConfig::new`] and change only what the user set.

use std::path::PathBuf;

use serde::Serialize;
use verger_model::{Device, ModelSpec, Precision, MOBILENET_V2_SHA256};
use verger_pca::Components;

use crate::featurize::FeaturizeSettings;
use crate::io::store::StoreOptions;
use crate::report::CostConfig;

/// Principal components kept when the user names neither a count nor a variance fraction.
pub const DEFAULT_K: usize = 50;
/// Images per manifest partition.
pub const DEFAULT_PARTITION_ROWS: usize = 256;
/// Cluster jobs kept in flight.
pub const DEFAULT_CLUSTER_JOBS: usize = 16;
/// Seconds an S3 output's lease lasts without renewal (see [`crate::io::claim`]).
pub const DEFAULT_LEASE_TTL_S: u64 = 60;

/// Worker threads when none are asked for: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Everything `verger run` was asked to do; saved verbatim in the report.
#[derive(Debug, Clone, Serialize)]
pub struct JobConfig {
    /// A folder or `s3://bucket/prefix`.
    pub input: String,
    /// A folder or `s3://bucket/prefix`.
    pub output: String,
    pub globs: Vec<String>,
    pub components: Components,
    pub center: bool,
    pub threads: usize,
    /// Images per manifest partition: the unit of parallel work and of output files.
    pub partition_rows: usize,
    pub overwrite: bool,
    /// Continue an unfinished run in `output`, reusing every partition it committed.
    pub resume: bool,
    /// Stop as soon as more inputs than this have failed.
    pub max_errors: Option<ErrorBudget>,
    /// Key file for pseudonymized paths in the shared outputs (result, errors, manifest).
    pub pseudonymize_key: Option<PathBuf>,
    pub featurize: FeaturizeSettings,
    /// What the run runs on, for the report's cost.
    pub cost: CostConfig,
    /// The cluster (`df://host:port`) that featurizes and writes, if any.
    pub cluster: Option<String>,
    /// The cluster's credentials (`verger cluster init`'s folder): mTLS and the API token.
    pub cluster_security: Option<PathBuf>,
    /// Cluster jobs kept in flight.
    pub cluster_jobs: usize,
    /// Seconds an S3 output's lease lasts unless renewed.
    pub lease_ttl_s: u64,
    /// Project with this saved PCA model (a path or `s3://`) instead of fitting one: new images projected into
    /// an existing basis, so classifiers trained on it stay valid.
    pub pca_model: Option<String>,
    /// A feature cache (a folder or `s3://bucket/prefix`): images it holds are not featurized again.
    pub cache: Option<String>,
    /// Hash every image's bytes instead of trusting unchanged listings (path, size, modification time).
    pub verify_cache: bool,
}

impl JobConfig {
    /// A run of `input` into `output` with `model` (a path or `s3://` URI) and every other setting at its
    /// default.
    pub fn new(input: impl Into<String>, output: impl Into<String>, model: impl Into<String>) -> Self {
        JobConfig {
            input: input.into(),
            output: output.into(),
            globs: vec![verger_listing::DEFAULT_GLOB.to_string()],
            components: Components::Count(DEFAULT_K),
            center: false,
            threads: default_threads(),
            partition_rows: DEFAULT_PARTITION_ROWS,
            overwrite: false,
            resume: false,
            max_errors: None,
            pseudonymize_key: None,
            featurize: FeaturizeSettings::new(model),
            cost: CostConfig::default(),
            cluster: None,
            cluster_security: None,
            cluster_jobs: DEFAULT_CLUSTER_JOBS,
            lease_ttl_s: DEFAULT_LEASE_TTL_S,
            pca_model: None,
            cache: None,
            verify_cache: false,
        }
    }
}

impl FeaturizeSettings {
    /// The shared MobileNetV2 checksum, one image per inference call, Pillow's pixel limit, no object store.
    pub fn new(model: impl Into<String>) -> Self {
        FeaturizeSettings {
            model: ModelSpec {
                location: model.into(),
                sha256: MOBILENET_V2_SHA256.to_string(),
            },
            // 1 is fastest on CPUs (measured: larger batches lose cache locality).
            batch_size: 1,
            max_pixels: verger_image::Limits::default().max_pixels,
            store: StoreOptions::default(),
            device: Device::Cpu,
            precision: Precision::Fp32,
        }
    }

    /// These settings on `device`, with [`GPU_BATCH`] images per inference call on a GPU.
    pub fn on(mut self, device: Device) -> Self {
        if device.is_gpu() && !self.device.is_gpu() {
            self.batch_size = GPU_BATCH;
        }
        self.device = device;
        self
    }
}

/// Images per inference call on a GPU: one image per call leaves it idle between launches; several workers'
/// batches are in flight at once.
pub const GPU_BATCH: usize = 32;

/// How many bad inputs a run tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorBudget {
    Count(u64),
    /// A fraction of the listed images.
    Fraction(f64),
}

impl ErrorBudget {
    pub fn limit(&self, listed: u64) -> u64 {
        match *self {
            ErrorBudget::Count(n) => n,
            ErrorBudget::Fraction(f) => (f * listed as f64).floor() as u64,
        }
    }
}

impl std::str::FromStr for ErrorBudget {
    type Err = String;

    /// `10` (a count), `0.01` or `1%` (a fraction of the listed images).
    fn from_str(text: &str) -> Result<Self, String> {
        let fraction = |f: f64| {
            if (0.0..=1.0).contains(&f) {
                Ok(ErrorBudget::Fraction(f))
            } else {
                Err(format!("fraction {f} is not between 0 and 1"))
            }
        };
        if let Some(percent) = text.strip_suffix('%') {
            return fraction(percent.trim().parse::<f64>().map_err(|e| e.to_string())? / 100.0);
        }
        if let Ok(count) = text.parse::<u64>() {
            return Ok(ErrorBudget::Count(count));
        }
        fraction(
            text.parse::<f64>()
                .map_err(|_| format!("{text:?} is neither a count nor a fraction"))?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_budgets_parse_as_counts_fractions_and_percentages() {
        assert_eq!("10".parse(), Ok(ErrorBudget::Count(10)));
        assert_eq!("0.25".parse(), Ok(ErrorBudget::Fraction(0.25)));
        assert_eq!("1%".parse(), Ok(ErrorBudget::Fraction(0.01)));
        assert!("150%".parse::<ErrorBudget>().is_err());
        assert!("many".parse::<ErrorBudget>().is_err());
        assert_eq!(ErrorBudget::Fraction(0.1).limit(25), 2);
    }
}

/// Where a cluster executor finds its scheduler, where it listens and what it runs. Its credentials are not
/// here: they are loaded for the process's role where the cluster is built (`verger-cluster`), so this type is
/// the same in a build with the cluster and one without.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler_host: String,
    pub scheduler_port: u16,
    pub bind_host: String,
    /// Flight (data) port; the gRPC port is `port + 1`.
    pub port: u16,
    /// Tasks run at once.
    pub slots: usize,
    /// Where intermediate (shuffle) data goes (default: a temporary folder).
    pub work_dir: Option<String>,
    /// The folders and `s3://` prefixes this executor's plans may read and write (the model's included);
    /// empty: anywhere, which only an executor without security may be.
    pub allow_locations: Vec<String>,
    /// The S3-compatible endpoint plans may point the executor's store client at (none: AWS's own), and
    /// whether plain HTTP to it is allowed; a plan asking for another is refused.
    pub endpoint: Option<String>,
    pub allow_http: bool,
}
