//! The list stage: the images under the input, committed as the run's manifest (with the partitioning it is
//! cut by), or read back when resuming a run that committed one. The listing is written as it goes (a local
//! walk a chunk at a time, a bucket a folder at a time). Featurization then reads the manifest a
//! partition at a time ([`ManifestRows`]): the listing is not held while images are featurized, except by a
//! run with a feature cache, whose lookups take it whole.

use std::ops::{ControlFlow, Range};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::DataType;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use verger_listing::{
    bucket_parts, list_bucket, list_folder, list_parts, walk_folder, ImageList, Location, NameFilter, LIST_CONCURRENCY,
};

use crate::error::JobError;
use crate::fault;
use crate::io::output::{OutputStore, ParquetObject, ParquetRanges, ROW_GROUP_ROWS};
use crate::io::store::StoreOptions;
use crate::layout;
use crate::pseudonym::Pseudonymizer;

use super::staging;

/// The partitioning a run commits to with its manifest, so that a resumed run cuts the same partitions, and
/// what made the run, so that a resumed run is the same run.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    partition_rows: usize,
    /// None in runs made before verger recorded it: such a run is not resumed, since it cannot be checked.
    #[serde(default)]
    identity: Option<RunIdentity>,
}

/// What decides a run's manifest and staged partitions besides the images: `--resume` continues only a run
/// that agrees on every field, else staged partitions of another input, model or device would be mixed in.
/// It lives in the shared output, so a pseudonymised run records its input's pseudonym, not the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub input: String,
    pub globs: Vec<String>,
    pub model_sha256: String,
    /// [`verger_image::PREPROCESS_VERSION`].
    pub preprocess_version: u32,
    pub device: String,
    pub precision: String,
    /// A fingerprint of the pseudonymisation key (none without one): another key gives other pseudonyms.
    pub key: Option<String>,
}

impl RunIdentity {
    pub fn of(
        input: &str,
        globs: &[String],
        featurize: &crate::featurize::FeaturizeSettings,
        pseudonymizer: Option<&Pseudonymizer>,
    ) -> RunIdentity {
        RunIdentity {
            input: match pseudonymizer {
                Some(p) => p.pseudonym(input),
                None => input.to_string(),
            },
            globs: globs.to_vec(),
            model_sha256: featurize.model.sha256.clone(),
            preprocess_version: verger_image::PREPROCESS_VERSION,
            device: featurize.device.to_string(),
            precision: featurize.precision.to_string(),
            key: pseudonymizer.map(Pseudonymizer::fingerprint),
        }
    }

    /// The first field in which `self` (this run) differs from `recorded` (the run being resumed), as a
    /// sentence naming it.
    fn mismatch(&self, recorded: &RunIdentity) -> Option<String> {
        let differs = |field: &str, was: &dyn std::fmt::Debug, now: &dyn std::fmt::Debug| {
            Some(format!("{field}: {was:?} when it started, {now:?} now"))
        };
        // The key first: with another key, the input's pseudonym differs too.
        if self.key != recorded.key {
            return Some(match (&recorded.key, &self.key) {
                (Some(_), Some(_)) => "it was pseudonymised with another key".into(),
                (Some(_), None) => "it was pseudonymised (--pseudonymize-paths), this run is not".into(),
                _ => "it was not pseudonymised, this run is".into(),
            });
        }
        if self.input != recorded.input {
            return differs("input", &recorded.input, &self.input);
        }
        if self.globs != recorded.globs {
            return differs("globs", &recorded.globs, &self.globs);
        }
        if self.model_sha256 != recorded.model_sha256 {
            return differs("model (sha256)", &recorded.model_sha256, &self.model_sha256);
        }
        if self.preprocess_version != recorded.preprocess_version {
            return differs(
                "preprocessing version",
                &recorded.preprocess_version,
                &self.preprocess_version,
            );
        }
        if self.device != recorded.device {
            return differs("device", &recorded.device, &self.device);
        }
        if self.precision != recorded.precision {
            return differs("precision", &recorded.precision, &self.precision);
        }
        None
    }
}

/// What the list stage settled: the committed manifest (images in URI order), the partition size it is cut
/// by, and, when asked for, the images themselves.
pub struct Manifest {
    pub rows: ManifestRows,
    pub partition_rows: usize,
    /// The whole listing, kept only for a run that needs it whole (a feature cache's lookups).
    pub images: Option<ImageList>,
}

/// What to list, and whether a committed manifest may be reused instead.
pub struct ListSettings<'a> {
    pub input: &'a str,
    pub globs: &'a [String],
    pub store: &'a StoreOptions,
    pub partition_rows: usize,
    pub resume: bool,
    /// What made this run; a resumed run must have been made the same way.
    pub identity: RunIdentity,
    /// Keep the listing in memory ([`Manifest::images`]) rather than only in the committed file.
    pub keep_images: bool,
}

/// This run's manifest: read back when resuming one that committed it, else listed and committed.
pub async fn load_or_list(
    settings: &ListSettings<'_>,
    out: &OutputStore,
    pseudonymizer: Option<Arc<Pseudonymizer>>,
) -> Result<Manifest, JobError> {
    let public = layout::manifest();
    // With pseudonyms, the real paths a resumed run needs stay in staging, which is removed on success.
    let real = match pseudonymizer {
        Some(_) => layout::REAL_MANIFEST.to_string(),
        None => public.clone(),
    };
    // The plan is committed before the manifest: whatever a resumed run finds, it checks it first.
    let plan = match settings.resume && out.exists(layout::PLAN).await? {
        true => {
            let plan: Plan = serde_json::from_slice(&out.get(layout::PLAN).await?)
                .map_err(|e| JobError::Task(format!("{}: {e}", layout::PLAN)))?;
            check_resumable(settings, out, &plan)?;
            Some(plan)
        }
        false => None,
    };
    let partition_rows = match plan {
        Some(plan) if out.exists(&real).await? => {
            tracing::info!("resuming from the committed manifest");
            plan.partition_rows
        }
        _ => list_and_commit(settings, out, &real, &public, pseudonymizer.clone()).await?,
    };
    let rows = ManifestRows::open(out, &real, pseudonymizer).await?;
    let images = match settings.keep_images {
        true => Some(ImageList::from_batch(&rows.file.read(0..rows.count()).await?)?),
        false => None,
    };
    Ok(Manifest {
        rows,
        partition_rows,
        images,
    })
}

/// Refuses to resume a run that was made otherwise than this one, naming the first field that differs.
fn check_resumable(settings: &ListSettings<'_>, out: &OutputStore, plan: &Plan) -> Result<(), JobError> {
    let refuse = |why: String| {
        JobError::Config(format!(
            "--resume refused: {} holds another run ({why}); resume it with the command that started it, or \
             replace it with --overwrite",
            out.display()
        ))
    };
    let Some(recorded) = &plan.identity else {
        return Err(refuse(
            "made by an older verger, which recorded nothing to check".into(),
        ));
    };
    if let Some(why) = settings.identity.mismatch(recorded) {
        return Err(refuse(why));
    }
    if settings.partition_rows.max(1) != plan.partition_rows {
        return Err(refuse(format!(
            "--partition-rows: {} when it started, {} now",
            plan.partition_rows, settings.partition_rows
        )));
    }
    Ok(())
}

/// Lists the input into a new manifest and commits it with its plan; returns the plan's partition size.
async fn list_and_commit(
    settings: &ListSettings<'_>,
    out: &OutputStore,
    real: &str,
    public: &str,
    pseudonymizer: Option<Arc<Pseudonymizer>>,
) -> Result<usize, JobError> {
    let plan = Plan {
        partition_rows: settings.partition_rows.max(1),
        identity: Some(settings.identity.clone()),
    };
    let mut manifest = ManifestWriter::new(out, real, public, pseudonymizer)?;
    list_into(settings, &mut manifest).await?;
    if manifest.rows == 0 {
        return Err(JobError::NoImages {
            input: settings.input.to_string(),
            globs: settings.globs.to_vec(),
        });
    }
    tracing::info!(images = manifest.rows, "listed");
    fault::checkpoint("listed");
    out.put(layout::PLAN, serde_json::to_vec(&plan).expect("plan serializes"))
        .await?;
    manifest.commit().await?;
    fault::checkpoint("manifest");
    Ok(plan.partition_rows)
}

/// Rows per chunk a local listing is written in.
const LIST_CHUNK_ROWS: usize = ROW_GROUP_ROWS;

/// Lists the input into `manifest` as the listing goes, never held whole: a local folder a chunk at a time,
/// a bucket a folder at a time (folders listed side by side, written in order).
async fn list_into(settings: &ListSettings<'_>, manifest: &mut ManifestWriter) -> Result<(), JobError> {
    let filter = NameFilter::new(settings.globs)?;
    match Location::parse(settings.input) {
        Location::Local(path) => {
            let (chunks, mut listed) = tokio::sync::mpsc::channel(2);
            let walk = tokio::task::spawn_blocking(move || {
                walk_folder(&path, &filter, LIST_CHUNK_ROWS, |chunk| {
                    match chunks.blocking_send(chunk) {
                        Ok(()) => ControlFlow::Continue(()),
                        // The writer failed: its error is the run's.
                        Err(_) => ControlFlow::Break(()),
                    }
                })
            });
            let mut written = Ok(());
            while let Some(chunk) = listed.recv().await {
                written = manifest.write(&chunk).await;
                if written.is_err() {
                    // Stops the walk (its next send fails).
                    break;
                }
            }
            drop(listed);
            walk.await.map_err(JobError::task)??;
            written
        }
        Location::S3 { bucket, prefix } => {
            let client = settings.store.s3(&bucket)?;
            let parts = bucket_parts(client.as_ref(), &bucket, &prefix, LIST_CONCURRENCY).await?;
            let mut lists = std::pin::pin!(list_parts(client.as_ref(), &bucket, &filter, parts, LIST_CONCURRENCY));
            while let Some(images) = lists.try_next().await? {
                manifest.write(&images).await?;
            }
            Ok(())
        }
    }
}

/// The manifest being written: the listing as it comes, and, with pseudonyms, the shared copy showing those.
struct ManifestWriter {
    real: ParquetObject,
    shared: Option<(ParquetObject, Arc<Pseudonymizer>)>,
    rows: usize,
}

impl ManifestWriter {
    fn new(
        out: &OutputStore,
        real: &str,
        public: &str,
        pseudonymizer: Option<Arc<Pseudonymizer>>,
    ) -> Result<Self, JobError> {
        let shared = match pseudonymizer {
            Some(p) => Some((out.parquet(public, ImageList::schema())?, p)),
            None => None,
        };
        Ok(ManifestWriter {
            real: out.parquet(real, ImageList::schema())?,
            shared,
            rows: 0,
        })
    }

    async fn write(&mut self, images: &ImageList) -> Result<(), JobError> {
        self.real.write(images.batch()).await?;
        if let Some((file, p)) = &mut self.shared {
            file.write(&pseudonymised(images, p)?).await?;
        }
        self.rows += images.len();
        Ok(())
    }

    /// The real manifest first: a resumed run goes by it.
    async fn commit(self) -> Result<(), JobError> {
        self.real.commit().await?;
        if let Some((file, _)) = self.shared {
            file.commit().await?;
        }
        Ok(())
    }
}

/// The committed manifest, read a partition at a time: featurization holds the rows it works on, never the
/// whole listing.
pub struct ManifestRows {
    file: ParquetRanges,
    pseudonymizer: Option<Arc<Pseudonymizer>>,
}

impl ManifestRows {
    async fn open(out: &OutputStore, name: &str, pseudonymizer: Option<Arc<Pseudonymizer>>) -> Result<Self, JobError> {
        Ok(ManifestRows {
            file: out.parquet_ranges(name).await?,
            pseudonymizer,
        })
    }

    /// Rows in the manifest: the images listed.
    pub fn count(&self) -> usize {
        self.file.rows()
    }

    /// Manifest rows `range` as featurization's input.
    pub async fn input(&self, range: Range<usize>) -> Result<RecordBatch, JobError> {
        self.input_of(&ImageList::from_batch(&self.file.read(range).await?)?)
    }

    /// Manifest rows already read (`images`) as featurization's input ([`staging::input`]).
    pub fn input_of(&self, images: &ImageList) -> Result<RecordBatch, JobError> {
        staging::input(images, self.pseudonymizer.as_deref())
    }
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

/// The manifest as a pseudonymised run shares it: each path's pseudonym and label, and nothing that
/// fingerprints a photo (its size, time and ETag, the MD5 of a single-part upload): zero sizes and times, no
/// ETags, in the manifest's own schema.
fn pseudonymised(images: &ImageList, pseudonymizer: &Pseudonymizer) -> Result<RecordBatch, JobError> {
    let batch = images.batch();
    let n = batch.num_rows();
    let columns: Vec<ArrayRef> = vec![
        pseudonyms(images, pseudonymizer),
        batch.column(1).clone(),
        Arc::new(UInt64Array::from(vec![0u64; n])),
        Arc::new(Int64Array::from(vec![0i64; n])),
        datafusion::arrow::array::new_null_array(&DataType::Utf8, n),
    ];
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}
