//! The verger job on Apache DataFusion.
//!
//! Data flow, one module each: [`verger_listing`] lists the images into a manifest; the `featurize` scalar
//! function ([`featurize`]) reads, decodes, resizes and runs the model per row; the `pca_stats` aggregate and the
//! `pca_project` function ([`pca`]) reduce the features; [`output`] writes Parquet atomically, one file per
//! partition; [`job`] wires the stages on a `SessionContext` and writes the run [`report`]. The functions are
//! registered in one place ([`register_functions`]) so that a local context and a cluster run the same plan.

pub mod codec;
pub mod embed;
pub mod fault;
pub mod featurize;
pub mod job;
pub mod output;
pub mod output_file;
pub mod pca;
pub mod progress;
pub mod pseudonym;
pub mod report;
mod source;
pub mod store;

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use featurize::FeaturizeSettings;
pub use job::{bucket_regions, list_images, run_job, ErrorBudget, JobConfig, JobError, JobOutcome};
pub use progress::{NoProgress, Progress};

/// A DataFusion context for `threads` workers with verger's functions registered.
pub fn new_context(threads: usize, settings: &FeaturizeSettings) -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(threads.max(1))
        .with_repartition_file_scans(false)
        .with_information_schema(false)
        // Plain Utf8 columns, so that the Parquet we write carries `string`, which every reader knows.
        .set_bool("datafusion.execution.parquet.schema_force_view_types", false);
    let ctx = SessionContext::new_with_config(config);
    register_functions(&ctx, settings);
    ctx
}

/// Registers `featurize` and `pca_stats` (`pca_project` is registered once a model is fitted).
pub fn register_functions(ctx: &SessionContext, settings: &FeaturizeSettings) {
    ctx.register_udf(ScalarUDF::new_from_impl(featurize::FeaturizeUdf::new(settings.clone())));
    ctx.register_udaf(AggregateUDF::new_from_impl(pca::PcaStatsUdaf::new()));
}

/// Registers `pca_project` for a fitted model.
pub fn register_model(ctx: &SessionContext, model: Arc<verger_pca::PcaModel>) {
    ctx.register_udf(ScalarUDF::new_from_impl(pca::PcaProjectUdf::new(model)));
}
