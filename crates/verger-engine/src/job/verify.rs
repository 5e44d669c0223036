//! The commit check, a second line of defence before `_SUCCESS` whatever the cause (a bug, a second writer, a
//! staging file deleted or replaced by hand): every listed image must be accounted for exactly once, either
//! in `result/` or in `errors/`, and the report must give those very counts. On any mismatch the run fails
//! without `_SUCCESS`, saying what is missing; `--resume` then redoes it.

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::JoinType;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{col, ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

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

    // Streamed digests, a group of files at a time, so that the check's memory does not grow with the run;
    // only when they differ are the paths held (in hash tables) to say which rows are wrong.
    let errors = vec![out.url(&errors)];
    let manifest = vec![out.url(&layout::manifest())];
    let given = PathSum::of(ctx, &results)
        .await?
        .merge(PathSum::of(ctx, &errors).await?);
    if given == PathSum::of(ctx, &manifest).await? {
        return Ok(());
    }
    let paths = read(ctx, results)
        .await?
        .select(vec![col("path")])?
        .union(read(ctx, errors).await?.select(vec![col("path")])?)?;
    let manifest = read(ctx, manifest).await?.select(vec![col("path").alias("listed")])?;
    let distinct = paths.clone().distinct()?.count().await? as u64;
    if distinct != claimed.listed {
        return Err(JobError::Incomplete(format!(
            "{} rows name the same image as another row",
            claimed.listed - distinct
        )));
    }
    let unlisted = paths
        .join(manifest, JoinType::LeftAnti, &["path"], &["listed"], None)?
        .count()
        .await?;
    if unlisted != 0 {
        return Err(JobError::Incomplete(format!(
            "{unlisted} rows name images the manifest does not list"
        )));
    }
    Err(JobError::Incomplete(
        "the result and error rows do not name the manifest's images once each".into(),
    ))
}

/// An order-independent digest of a list of paths: how many, and the wrapping sum of each path's SHA-256
/// (its first 128 bits). Two lists with equal digests hold the same paths as often, but for a 2^-128 chance.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PathSum {
    rows: u64,
    sum: u128,
}

impl PathSum {
    fn add(&mut self, path: &str) {
        let digest = Sha256::digest(path.as_bytes());
        let head: [u8; 16] = digest[..16].try_into().expect("a SHA-256 has 32 bytes");
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(head));
        self.rows += 1;
    }

    /// Both lists' digest.
    fn merge(self, other: PathSum) -> PathSum {
        PathSum {
            rows: self.rows + other.rows,
            sum: self.sum.wrapping_add(other.sum),
        }
    }

    /// The digest of the `path` column of `files`, read a batch at a time.
    async fn of(ctx: &SessionContext, files: &[String]) -> Result<PathSum, JobError> {
        let batches = crate::context::grouped(files, |group| async move {
            Ok(read(ctx, group).await?.select(vec![col("path")])?)
        });
        let mut batches = std::pin::pin!(batches);
        let mut sum = PathSum::default();
        while let Some(batch) = batches.try_next().await? {
            let column = cast(batch.column(0), &DataType::Utf8)?;
            for path in column.as_string::<i32>().iter() {
                // A null path can only come from a damaged file: it counts, as a path no image has.
                sum.add(path.unwrap_or("\0"));
            }
        }
        Ok(sum)
    }
}

async fn read(ctx: &SessionContext, files: Vec<String>) -> Result<DataFrame, JobError> {
    Ok(ctx.read_parquet(files, ParquetReadOptions::default()).await?)
}

#[cfg(test)]
mod tests {
    use super::PathSum;

    fn sum(paths: &[&str]) -> PathSum {
        let mut sum = PathSum::default();
        paths.iter().for_each(|p| sum.add(p));
        sum
    }

    #[test]
    fn path_sums_ignore_order_and_catch_a_duplicate_that_replaces_a_lost_row() {
        let listed = ["s3://b/a/1.jpg", "s3://b/a/2.jpg", "s3://b/c/3.jpg"];
        assert_eq!(
            sum(&listed),
            sum(&["s3://b/c/3.jpg", "s3://b/a/1.jpg", "s3://b/a/2.jpg"])
        );
        // As many rows, but one image twice and another never: the counts alone would pass.
        assert_ne!(
            sum(&listed),
            sum(&["s3://b/a/1.jpg", "s3://b/a/1.jpg", "s3://b/c/3.jpg"])
        );
        assert_ne!(
            sum(&listed),
            sum(&["s3://b/a/1.jpg", "s3://b/a/2.jpg", "s3://b/c/4.jpg"])
        );
        assert_ne!(sum(&listed), sum(&listed[..2]));
        // Summed a group of files at a time: the same digest as the whole list's.
        assert_eq!(sum(&listed[..1]).merge(sum(&listed[1..])), sum(&listed));
        assert_ne!(sum(&listed[..1]).merge(sum(&listed[..2])), sum(&listed));
    }
}
