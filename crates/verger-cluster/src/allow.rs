//! Executors run only verger's plans: before a task runs, its plan is checked against the shapes verger's
//! client submits (images as VALUES, `featurize`/`pca_project` projections, a scan of one of the output's
//! files, and a write of one output file), and anything else (a CSV, Parquet or JSON table, a listing, an
//! arbitrary operator) is refused with the operator named. So even a holder of a client certificate and the
//! token cannot turn executors into a general reader of their files and buckets.
//!
//! It checks operators, not the locations in verger's own scans and sinks: those are the job's output, which
//! the client chooses (see docs/cluster.md's threat model).

use std::sync::Arc;

use ballista_core::execution_plans::{ShuffleWriterExec, SortShuffleWriterExec};
use ballista_core::JobId;
use ballista_executor::execution_engine::{DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use verger_engine::io::output_file::{OutputFileScanExec, OutputFileSink};

/// Why `plan` is not one of verger's, naming the first operator that is not allowed; `None` when it is.
pub fn refusal(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    let allowed = plan.is::<ShuffleWriterExec>()
        || plan.is::<SortShuffleWriterExec>()
        || plan.is::<ProjectionExec>()
        || plan.is::<FilterExec>()
        || plan.is::<CoalescePartitionsExec>()
        || plan.is::<RepartitionExec>()
        || plan.is::<OutputFileScanExec>()
        || plan
            .downcast_ref::<DataSinkExec>()
            .is_some_and(|sink| sink.sink().is::<OutputFileSink>())
        || plan
            .downcast_ref::<DataSourceExec>()
            .is_some_and(|source| source.data_source().is::<MemorySourceConfig>());
    if !allowed {
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .one_line()
            .to_string();
        return Some(format!("{} ({})", plan.name(), shown.trim()));
    }
    plan.children().into_iter().find_map(refusal)
}

/// Ballista's own engine behind [`refusal`]'s check.
pub struct VergerPlansOnly {
    inner: DefaultExecutionEngine,
}

impl VergerPlansOnly {
    pub fn new() -> Self {
        VergerPlansOnly {
            inner: DefaultExecutionEngine::new(),
        }
    }
}

impl Default for VergerPlansOnly {
    fn default() -> Self {
        Self::new()
    }
}

impl ExecutionEngine for VergerPlansOnly {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        if let Some(operator) = refusal(&plan) {
            tracing::warn!("refused a plan of job {job_id}: {operator}");
            return Err(DataFusionError::Plan(format!(
                "this verger executor runs only verger's featurize and write plans; refused {operator}"
            )));
        }
        self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )
    }
}
