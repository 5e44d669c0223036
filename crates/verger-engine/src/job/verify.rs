//! The commit check, a second line of defence before `_SUCCESS` whatever the cause (a bug, a second writer, a
//! staging file deleted or replaced by hand): every listed image must be accounted for exactly once, either
//! in `result/` or in `errors/`, and the report must give those very counts. On any mismatch the run fails
//! without `_SUCCESS`, saying what is missing; `--resume` then redoes it.

use datafusion::common::JoinType;
use datafusion::prelude::{col, ParquetReadOptions, SessionContext};

use super::partitions::Partitions;
use crate::error::JobError;
use crate::layout;
use crate::report::Counts;

/// Each partition's staged file exists and holds exactly its manifest partition's rows.
pub async fn staged(parts: &Partitions<'_>) -> Result<(), JobError> {
    for i in 0..parts.count() {
        let (name, want) = (parts.staged(i), parts.ranges[i].len() as u64);
        if !parts.out.exists(&name).await? {
            return Err(JobError::Incomplete(format!(
                "staged partition {name} is missing: {want} listed images are unaccounted for"
            )));
        }
        let rows = parts.out.parquet_rows(&name).await?;
        if rows != want {
            return Err(JobError::Incomplete(format!(
                "staged partition {name} holds {rows} rows where its manifest partition has {want}"
            )));
        }
    }
    Ok(())
}

/// `result/` and `errors/` hold every path of the manifest once, and as many rows as the report is about to state.
pub async fn committed(ctx: &SessionContext, parts: &Partitions<'_>, claimed: &Counts) -> Result<(), JobError> {
    let out = parts.out;
    let mut results = Vec::with_capacity(parts.count());
    let mut result_rows = 0;
    for i in 0..parts.count() {
        let name = parts.result(i);
        if !out.exists(&name).await? {
            return Err(JobError::Incomplete(format!(
                "result file {name} is missing (partition of {} listed images)",
                parts.ranges[i].len()
            )));
        }
        result_rows += out.parquet_rows(&name).await?;
        results.push(out.url(&name));
    }
    let errors = layout::file(layout::ERRORS, &layout::part_name(0));
    let error_rows = match out.exists(&errors).await? {
        true => out.parquet_rows(&errors).await?,
        false => return Err(JobError::Incomplete(format!("{errors} is missing"))),
    };
    if result_rows != claimed.featurized || error_rows != claimed.failed {
        return Err(JobError::Incomplete(format!(
            "the files hold {result_rows} result and {error_rows} error rows, the run counted {} and {}",
            claimed.featurized, claimed.failed
        )));
    }
    if result_rows + error_rows != claimed.listed {
        return Err(JobError::Incomplete(format!(
            "{result_rows} result and {error_rows} error rows account for {} of the {} listed images",
            result_rows + error_rows,
            claimed.listed
        )));
    }

    let paths = read(ctx, results)
        .await?
        .select(vec![col("path")])?
        .union(read(ctx, vec![out.url(&errors)]).await?.select(vec![col("path")])?)?;
    let distinct = paths.clone().distinct()?.count().await? as u64;
    if distinct != claimed.listed {
        return Err(JobError::Incomplete(format!(
            "{} rows name the same image as another row",
            claimed.listed - distinct
        )));
    }
    let manifest = read(ctx, vec![out.url(&layout::manifest())])
        .await?
        .select(vec![col("path").alias("listed")])?;
    let unlisted = paths
        .join(manifest, JoinType::LeftAnti, &["path"], &["listed"], None)?
        .count()
        .await?;
    if unlisted != 0 {
        return Err(JobError::Incomplete(format!(
            "{unlisted} rows name images the manifest does not list"
        )));
    }
    Ok(())
}

async fn read(ctx: &SessionContext, files: Vec<String>) -> Result<datafusion::dataframe::DataFrame, JobError> {
    Ok(ctx.read_parquet(files, ParquetReadOptions::default()).await?)
}
