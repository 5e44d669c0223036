//! The cluster attempt/commit protocol: each cluster job writes one output file as an attempt of its own,
//! which this driver commits by renaming, so retried, slow or lost tasks never replace a committed file.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::{col, lit, SessionContext};

use crate::error::JobError;
use crate::io::output::OutputStore;
use crate::io::output_file::OutputFileTable;
use crate::layout;

/// `rows` (string columns) as a VALUES plan with the same column names, so that they travel inside the plan.
pub fn values(ctx: &SessionContext, rows: &RecordBatch) -> Result<DataFrame, JobError> {
    let columns: Vec<&StringArray> = rows.columns().iter().map(|c| c.as_string::<i32>()).collect();
    let values = (0..rows.num_rows())
        .map(|r| columns.iter().map(|c| lit(c.value(r))).collect())
        .collect();
    let schema = rows.schema();
    let names = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| col(format!("column{}", i + 1)).alias(f.name()));
    let plan = LogicalPlanBuilder::values(values)?.project(names)?.build()?;
    Ok(DataFrame::new(ctx.state(), plan))
}

/// Submissions of one cluster job before the run fails: a job that fails on the cluster as a whole (cancelled
/// by an operator, its executor lost past Ballista's own task retries) is submitted again.
pub const JOB_ATTEMPTS: usize = 3;

/// Runs `rows` on the cluster into the output file `name`; returns the rows written. A job the cluster
/// fails is submitted again, up to [`JOB_ATTEMPTS`] times, each submission into an attempt of its own, so
/// the committed file is always one whole submission's.
pub async fn write(
    remote: &SessionContext,
    out: &OutputStore,
    rows: DataFrame,
    name: &str,
    metadata: &[(String, String)],
) -> Result<u64, JobError> {
    let mut submission = 1;
    loop {
        match submit(remote, out, rows.clone(), name, metadata).await {
            Err(JobError::DataFusion(e)) if submission < JOB_ATTEMPTS => {
                tracing::warn!("{name}: the cluster job failed (submission {submission} of {JOB_ATTEMPTS}), submitting it again: {e}");
                submission += 1;
                // A moment for the cluster to recover (a scheduler restarting, an executor rejoining).
                tokio::time::sleep(std::time::Duration::from_secs(submission as u64)).await;
            }
            Err(JobError::DataFusion(e)) => {
                return Err(JobError::ClusterJob {
                    file: name.to_string(),
                    attempts: JOB_ATTEMPTS,
                    message: e.to_string(),
                })
            }
            done => return done,
        }
    }
}

/// One submission of [`write`]. Executors write an attempt named for this submission only, and this driver
/// commits it by renaming: a retried task rewrites its own attempt, and a slow or lost one can never replace
/// a committed file. Closing the submission (removing its guard) stops late tasks from writing at all.
async fn submit(
    remote: &SessionContext,
    out: &OutputStore,
    rows: DataFrame,
    name: &str,
    metadata: &[(String, String)],
) -> Result<u64, JobError> {
    let folder = layout::attempt();
    let (attempt, guard) = (layout::file(&folder, name), layout::file(&folder, layout::OPEN));
    out.put(&guard, Vec::new()).await?;
    let mut file = out.shared_file(&attempt, Some(guard));
    file.metadata = metadata.to_vec();
    let table = OutputFileTable {
        file,
        schema: Arc::new(rows.schema().as_arrow().clone()),
    };
    let insert = LogicalPlanBuilder::insert_into(
        rows.into_unoptimized_plan(),
        "verger_output",
        provider_as_source(Arc::new(table)),
        InsertOp::Append,
    )?
    .build()?;
    let committed = match DataFrame::new(remote.state(), insert).collect().await {
        Ok(counts) => out.rename(&attempt, name).await.map_err(JobError::from).map(|()| {
            counts
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().iter().flatten())
                .sum()
        }),
        // A job can write its file and then fail to deliver the count (the executor holding it was lost
        // in between): a published attempt is whole, so it is the result.
        Err(e) => match out.exists(&attempt).await? {
            true => {
                tracing::warn!("{name}: committing the written file of a job that then failed: {e}");
                out.rename(&attempt, name).await?;
                Ok(out.parquet_rows(name).await?)
            }
            false => Err(e.into()),
        },
    };
    out.remove_all(&folder).await?;
    committed
}
