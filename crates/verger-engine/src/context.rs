//! DataFusion sessions with verger's functions: the one place a local context, a cluster client and the
//! cluster's own processes get their configuration and their functions from.

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::codec::Stateful;
use crate::featurize::{FeaturizeSettings, FeaturizeUdf};
use crate::pca::{PcaProjectUdf, PcaStatsUdaf};

/// verger's settings on top of `config`: plain Utf8 columns (so that the Parquet written carries `string`,
/// which every reader knows), one file per partition, no information schema.
pub fn configure(config: SessionConfig, threads: usize) -> SessionConfig {
    config
        .with_target_partitions(threads.max(1))
        .with_repartition_file_scans(false)
        .with_information_schema(false)
        .set_bool("datafusion.execution.parquet.schema_force_view_types", false)
}

/// A DataFusion context for `threads` workers with verger's functions registered.
pub fn local(threads: usize, settings: &FeaturizeSettings) -> SessionContext {
    let ctx = SessionContext::new_with_config(configure(SessionConfig::new(), threads));
    register_functions(&ctx, settings);
    ctx
}

/// Registers `featurize` and `pca_stats` (`pca_project` is registered once a model is fitted).
pub fn register_functions(ctx: &SessionContext, settings: &FeaturizeSettings) {
    ctx.register_udf(ScalarUDF::new_from_impl(FeaturizeUdf::new(settings.clone())));
    ctx.register_udaf(AggregateUDF::new_from_impl(PcaStatsUdaf::new()));
}

/// Registers `pca_project` for a fitted model.
pub fn register_model(ctx: &SessionContext, model: Arc<verger_pca::PcaModel>) {
    ctx.register_udf(ScalarUDF::new_from_impl(PcaProjectUdf::new(model)));
}

/// The functions whose state travels with plans ([`crate::codec::StatefulUdf`]): a new stateful function is
/// one more line here.
pub static STATEFUL: &[Stateful] = &[Stateful::of::<FeaturizeUdf>(), Stateful::of::<PcaProjectUdf>()];
