//! The list stage: the images under the input, committed as the run's manifest (with the partitioning it is
//! cut by), or read back when resuming a run that committed one.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde::{Deserialize, Serialize};
use verger_listing::{list_bucket, list_folder, ImageEntry, Location, NameFilter, LIST_CONCURRENCY};

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
    pub entries: Vec<ImageEntry>,
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
        let entries = read(out, &real).await?;
        tracing::info!(images = entries.len(), "resuming from the committed manifest");
        return Ok(Manifest {
            entries,
            partition_rows: plan.partition_rows,
        });
    }
    let entries = list_images(settings.input, settings.globs, settings.store, LIST_CONCURRENCY).await?;
    if entries.is_empty() {
        return Err(JobError::NoImages {
            input: settings.input.to_string(),
            globs: settings.globs.to_vec(),
        });
    }
    tracing::info!(images = entries.len(), "listed");
    fault::checkpoint("listed");
    let plan = Plan {
        partition_rows: settings.partition_rows.max(1),
    };
    out.put(layout::PLAN, serde_json::to_vec(&plan).expect("plan serializes"))
        .await?;
    out.write_batches(&real, schema(), &[batch(&entries)?]).await?;
    if let Some(p) = pseudonymizer {
        let shared: Vec<ImageEntry> = entries
            .iter()
            .map(|e| ImageEntry {
                uri: p.pseudonym(&e.uri),
                ..e.clone()
            })
            .collect();
        out.write_batches(&public, schema(), &[batch(&shared)?]).await?;
    }
    fault::checkpoint("manifest");
    Ok(Manifest {
        entries,
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
) -> Result<Vec<ImageEntry>, JobError> {
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

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("modified_ms", DataType::Int64, false),
    ]))
}

fn batch(entries: &[ImageEntry]) -> Result<RecordBatch, JobError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.uri.as_str()))),
        Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.label.as_str()))),
        Arc::new(UInt64Array::from_iter_values(entries.iter().map(|e| e.size))),
        Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.modified_ms))),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

async fn read(out: &OutputStore, name: &str) -> Result<Vec<ImageEntry>, JobError> {
    let ctx = SessionContext::new();
    out.register(&ctx);
    let batches = ctx.read_parquet(out.url(name), ParquetReadOptions::default()).await?;
    let mut entries = Vec::new();
    for batch in batches.collect().await? {
        let text = |i: usize| cast(batch.column(i), &DataType::Utf8);
        let (paths, labels) = (text(0)?, text(1)?);
        let (paths, labels) = (paths.as_string::<i32>(), labels.as_string::<i32>());
        let sizes = batch.column(2).as_primitive::<UInt64Type>();
        let modified = batch.column(3).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            entries.push(ImageEntry {
                uri: paths.value(i).to_string(),
                label: labels.value(i).to_string(),
                size: sizes.value(i),
                modified_ms: modified.value(i),
            });
        }
    }
    Ok(entries)
}
