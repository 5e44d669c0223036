//! The list stage: the images under the input, committed as the run's manifest (with the partitioning it is
//! cut by), or read back when resuming a run that committed one.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};
use verger_listing::{list_bucket, list_folder, ImageList, Location, NameFilter, LIST_CONCURRENCY};

use crate::error::JobError;
use crate::fault;
use crate::io::output::OutputStore;
use crate::io::store::StoreOptions;
use crate::layout;
use crate::pseudonym::Pseudonymizer;

/// The partitioning a run commits to with its manifest, so that a resumed run cuts the same partitions.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    partition_rows: usize,
}

/// What the list stage settled: the images, in URI order, and the partition size they are cut by.
pub struct Manifest {
    pub images: ImageList,
    pub partition_rows: usize,
}

/// What to list, and whether a committed manifest may be reused instead.
pub struct ListSettings<'a> {
    pub input: &'a str,
    pub globs: &'a [String],
    pub store: &'a StoreOptions,
    pub partition_rows: usize,
    pub resume: bool,
}

/// This run's manifest: read back when resuming one that committed it, else listed and committed.
pub async fn load_or_list(
    settings: &ListSettings<'_>,
    out: &OutputStore,
    pseudonymizer: Option<&Pseudonymizer>,
) -> Result<Manifest, JobError> {
    let public = layout::manifest();
    // With pseudonyms, the real paths a resumed run needs stay in staging, which is removed on success.
    let real = match pseudonymizer {
        Some(_) => layout::REAL_MANIFEST.to_string(),
        None => public.clone(),
    };
    if settings.resume && out.exists(&real).await? {
        let plan: Plan = serde_json::from_slice(&out.get(layout::PLAN).await?)
            .map_err(|e| JobError::Task(format!("{}: {e}", layout::PLAN)))?;
        let images = ImageList::from_batch(&out.read_batch(&real).await?)?;
        tracing::info!(images = images.len(), "resuming from the committed manifest");
        return Ok(Manifest {
            images,
            partition_rows: plan.partition_rows,
        });
    }
    let images = list_images(settings.input, settings.globs, settings.store, LIST_CONCURRENCY).await?;
    if images.is_empty() {
        return Err(JobError::NoImages {
            input: settings.input.to_string(),
            globs: settings.globs.to_vec(),
        });
    }
    tracing::info!(images = images.len(), "listed");
    fault::checkpoint("listed");
    let plan = Plan {
        partition_rows: settings.partition_rows.max(1),
    };
    out.put(layout::PLAN, serde_json::to_vec(&plan).expect("plan serializes"))
        .await?;
    out.write_batches(&real, ImageList::schema(), std::slice::from_ref(images.batch()))
        .await?;
    if let Some(p) = pseudonymizer {
        let shared = with_paths(images.batch(), pseudonyms(&images, p))?;
        out.write_batches(&public, ImageList::schema(), &[shared]).await?;
    }
    fault::checkpoint("manifest");
    Ok(Manifest {
        images,
        partition_rows: plan.partition_rows,
    })
}

/// The images under `input` (a folder or `s3://bucket/prefix`) whose names match `globs`, sorted by URI;
/// buckets are listed `concurrency` folders at a time.
pub async fn list_images(
    input: &str,
    globs: &[String],
    store: &StoreOptions,
    concurrency: usize,
) -> Result<ImageList, JobError> {
    let filter = NameFilter::new(globs)?;
    Ok(match Location::parse(input) {
        Location::Local(path) => tokio::task::spawn_blocking(move || list_folder(&path, &filter))
            .await
            .map_err(JobError::task)??,
        Location::S3 { bucket, prefix } => {
            let client = store.s3(&bucket)?;
            list_bucket(client.as_ref(), &bucket, &prefix, &filter, concurrency).await?
        }
    })
}

/// The images' paths as the shared outputs show them.
pub fn pseudonyms(images: &ImageList, pseudonymizer: &Pseudonymizer) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(
        images.uris().iter().flatten().map(|uri| pseudonymizer.pseudonym(uri)),
    ))
}

/// `batch` with its first column (the paths) replaced.
fn with_paths(batch: &RecordBatch, paths: ArrayRef) -> Result<RecordBatch, JobError> {
    let mut columns = batch.columns().to_vec();
    columns[0] = paths;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}
