//! The output location, a local folder or `s3://bucket/prefix`, written through `object_store` either way.
//!
//! Every file is one atomic put: object stores publish whole objects, and the local store writes a staging
//! file and renames it. So a reader, or a resumed run, never sees half a file, and `_SUCCESS` written last
//! marks a complete output on any store. The few local-only steps (removing folders and the staging files a
//! killed process left) live here too.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder};
use datafusion::parquet::basic::Compression;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use futures::FutureExt;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;
use verger_listing::Location;

use super::output_file::OutputFile;
use super::store::StoreOptions;
use super::StoreError;

/// A folder on the local disk or in a bucket; files are named relative to it (`result/part-00000.parquet`).
#[derive(Debug, Clone)]
pub struct OutputStore {
    store: Arc<dyn ObjectStore>,
    root: ObjectPath,
    /// `file:///` or `s3://bucket/`: the URL DataFusion finds `store` by.
    base: Url,
    /// The folder itself, when it is on the local disk.
    local: Option<PathBuf>,
    /// As the user wrote it, for messages.
    display: String,
    /// How it was opened, for other processes to open it the same way.
    options: StoreOptions,
}

impl OutputStore {
    pub fn open(location: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        match Location::parse(location) {
            Location::Local(path) => {
                let absolute = std::path::absolute(&path).map_err(|e| StoreError::io(&path, e))?;
                let root = ObjectPath::from_absolute_path(&absolute)
                    .map_err(|e| StoreError::Client(format!("{}: {e}", absolute.display())))?;
                Ok(OutputStore {
                    store: Arc::new(LocalFileSystem::new()),
                    root,
                    base: Url::parse("file:///").expect("valid URL"),
                    local: Some(absolute),
                    display: location.to_string(),
                    options: options.clone(),
                })
            }
            Location::S3 { bucket, prefix } => Ok(OutputStore {
                store: options.s3(&bucket)?,
                // The prefix as written (`Path::from` would percent-encode `%`, `#`, `~`…).
                root: ObjectPath::parse(&prefix).map_err(|e| StoreError::Client(format!("{location}: {e}")))?,
                base: Url::parse(&format!("s3://{bucket}/"))
                    .map_err(|e| StoreError::Client(format!("bucket name {bucket:?}: {e}")))?,
                local: None,
                display: location.to_string(),
                options: options.clone(),
            }),
        }
    }

    /// File `name` of this output as every process of a job reaches it: the absolute folder or
    /// `s3://bucket/prefix`, and the store options (written only while `guard` exists, if given).
    pub fn shared_file(&self, name: &str, guard: Option<String>) -> OutputFile {
        let output = match &self.local {
            Some(folder) => folder.display().to_string(),
            None => self.display.clone(),
        };
        OutputFile {
            output,
            store: self.options.clone(),
            name: name.to_string(),
            guard,
            metadata: Vec::new(),
        }
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    /// Lets DataFusion read this output's files by [`OutputStore::url`].
    pub fn register(&self, ctx: &SessionContext) {
        ctx.register_object_store(&self.base, self.store.clone());
    }

    fn path(&self, name: &str) -> ObjectPath {
        self.root
            .parts()
            .chain(name.split('/').filter(|p| !p.is_empty()).map(Into::into))
            .collect()
    }

    /// The URL of file `name`, for DataFusion.
    pub fn url(&self, name: &str) -> String {
        format!("{}{}", self.base, self.path(name))
    }

    fn error(&self, name: &str, source: object_store::Error) -> StoreError {
        StoreError::Object {
            location: format!("{}/{name}", self.display.trim_end_matches('/')),
            source,
        }
    }

    pub async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        match self.store.head(&self.path(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// Whether anything but the claim ([`super::claim`]) and its probes is stored under the output.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        let claim = self.path(super::claim::CLAIM);
        let probes = format!("{}.probe-", claim.as_ref());
        let mut listed = self.store.list(Some(&self.root));
        while let Some(item) = listed.next().await {
            match item {
                Ok(meta) if meta.location == claim || meta.location.as_ref().starts_with(&probes) => continue,
                Ok(_) => return Ok(false),
                // A local folder that does not exist yet is empty.
                Err(object_store::Error::NotFound { .. }) => return Ok(true),
                Err(e) => return Err(self.error("", e)),
            }
        }
        Ok(true)
    }

    /// The folder itself, when the output is on the local disk.
    pub fn local_folder(&self) -> Option<PathBuf> {
        self.local.clone()
    }

    /// The store client, for what this layer does itself (the claim's conditional puts).
    pub(super) fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub(super) fn object_path(&self, name: &str) -> ObjectPath {
        self.path(name)
    }

    pub async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        let object = self
            .store
            .get(&self.path(name))
            .await
            .map_err(|e| self.error(name, e))?;
        object.bytes().await.map_err(|e| self.error(name, e))
    }

    /// Writes a small file in one atomic put.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.store
            .put(&self.path(name), bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| self.error(name, e))
    }

    /// Moves file `from` to `to` (replacing it): a rename on disk, a server-side copy then delete in buckets,
    /// so `to` appears whole either way.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.store
            .rename(&self.path(from), &self.path(to))
            .await
            .map_err(|e| self.error(from, e))
    }

    /// The number of rows in Parquet file `name`, from its footer (the only part read: a file's tail holds the
    /// metadata, its length, then `PAR1`).
    pub async fn parquet_rows(&self, name: &str) -> Result<u64, StoreError> {
        let path = self.path(name);
        let size = self.store.head(&path).await.map_err(|e| self.error(name, e))?.size;
        let tail = |len: u64| self.store.get_range(&path, size.saturating_sub(len)..size);
        let mut bytes = tail(64 * 1024).await.map_err(|e| self.error(name, e))?;
        let corrupt = || StoreError::Unreadable(format!("{name}: not a Parquet file"));
        if bytes.len() < 8 || &bytes[bytes.len() - 4..] != b"PAR1" {
            return Err(corrupt());
        }
        let footer: [u8; 4] = bytes[bytes.len() - 8..bytes.len() - 4].try_into().expect("4 bytes");
        let metadata_len = u32::from_le_bytes(footer) as usize;
        if metadata_len + 8 > bytes.len() {
            if metadata_len as u64 + 8 > size {
                return Err(corrupt());
            }
            bytes = tail(metadata_len as u64 + 8).await.map_err(|e| self.error(name, e))?;
        }
        let metadata = &bytes[bytes.len() - 8 - metadata_len..bytes.len() - 8];
        let decoded = ParquetMetaDataReader::decode_metadata(metadata)?;
        Ok(decoded.file_metadata().num_rows() as u64)
    }

    /// Removes everything under `name`.
    pub async fn remove_all(&self, name: &str) -> Result<(), StoreError> {
        assert!(
            !name.is_empty(),
            "remove_all takes a folder of the output; clear() empties the output"
        );
        if let Some(local) = &self.local {
            let dir = local.join(name);
            return match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(&dir, e)),
                _ => Ok(()),
            };
        }
        self.delete_under(self.path(name), name).await
    }

    /// Removes the file `name`; one already gone is not an error.
    pub async fn remove(&self, name: &str) -> Result<(), StoreError> {
        if let Some(local) = &self.local {
            let file = local.join(name);
            return match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(&file, e)),
                _ => Ok(()),
            };
        }
        match self.store.delete(&self.path(name)).await {
            Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// Whether this output may be written as `mode` asks: an empty output always; a non-empty one only if it
    /// carries one of `kind`'s marks (a file only verger writes there), so `--overwrite` or `--resume` pointed
    /// at a user's folder is refused before anything in it is touched. `--overwrite` of a bucket's root is
    /// refused whatever it holds.
    pub async fn admit(&self, kind: &OutputKind, mode: Admit) -> Result<(), StoreError> {
        let refused = |reason: String| StoreError::Refused {
            output: self.display.clone(),
            reason,
        };
        if mode == Admit::Replace && self.local.is_none() && self.root.as_ref().is_empty() {
            return Err(refused(
                "--overwrite would replace a whole bucket; name a prefix (s3://bucket/prefix)".into(),
            ));
        }
        if self.is_empty().await? {
            return Ok(());
        }
        if mode == Admit::Empty {
            return Err(refused(format!(
                "it already exists: {}",
                match kind.what {
                    "run" => "--resume continues an unfinished run there, --overwrite replaces it",
                    _ => "--overwrite replaces it",
                }
            )));
        }
        for mark in kind.marks {
            if self.exists(mark).await? {
                return Ok(());
            }
        }
        Err(refused(format!(
            "it holds files but no {} of verger's ({} missing), so they are not verger's to {}; choose an empty \
             or new folder",
            kind.what,
            kind.marks.join(", "),
            match mode {
                Admit::Replace => "replace",
                _ => "resume",
            }
        )))
    }

    /// Removes what `kind` writes (its names, nothing else) after [`OutputStore::admit`] allowed replacing
    /// it (`--overwrite`): files the user put beside verger's stay, and no link is followed.
    pub async fn replace(&self, kind: &OutputKind) -> Result<(), StoreError> {
        self.admit(kind, Admit::Replace).await?;
        for name in kind.names {
            if let Some(local) = &self.local {
                let path = local.join(name);
                // The entry's own type: a link is removed as a link, never followed.
                let removed = match std::fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
                    Ok(_) => std::fs::remove_file(&path),
                    Err(_) => continue,
                };
                removed.map_err(|e| StoreError::io(&path, e))?;
            } else {
                self.delete_under(self.path(name), name).await?;
                self.remove(name).await?;
            }
        }
        Ok(())
    }

    async fn delete_under(&self, prefix: ObjectPath, name: &str) -> Result<(), StoreError> {
        let claim = self.path(super::claim::CLAIM);
        let listed = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_filter(move |location| futures::future::ready(*location != claim))
            .boxed();
        self.store
            .delete_stream(listed)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.error(name, e))?;
        Ok(())
    }

    /// The names of the files under folder `name`, relative to the output, sorted.
    pub async fn files(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let prefix = self.path(name);
        let mut names: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| {
                let relative: Vec<_> = meta.location.prefix_match(&self.root).into_iter().flatten().collect();
                relative.iter().map(|p| p.as_ref()).collect::<Vec<_>>().join("/")
            })
            .try_collect()
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                e => Err(self.error(name, e)),
            })?;
        names.sort();
        Ok(names)
    }

    /// The URLs (for DataFusion, see [`OutputStore::register`]) of the Parquet files under folder `name`,
    /// sorted.
    pub async fn parquet_urls(&self, name: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .files(name)
            .await?
            .into_iter()
            .filter(|f| f.ends_with(".parquet"))
            .map(|f| self.url(&f))
            .collect())
    }

    /// Removes what a killed process left half-written. Object stores publish nothing until an upload
    /// completes; the local store leaves `NAME#N` staging files, which readers of the folder would trip on.
    pub fn remove_unfinished_files(&self) -> Result<(), StoreError> {
        match &self.local {
            Some(local) => remove_staging_files(local),
            None => Ok(()),
        }
    }

    /// A Parquet file that appears at `name` only when committed.
    pub fn parquet(&self, name: &str, schema: SchemaRef) -> Result<ParquetObject, StoreError> {
        self.parquet_with(name, schema, Compression::SNAPPY)
    }

    /// A Parquet file read back by this job only and removed at the end: not worth compressing features
    /// (float32 values hardly compress) on every write and read.
    pub fn staging_parquet(&self, name: &str, schema: SchemaRef) -> Result<ParquetObject, StoreError> {
        self.parquet_with(name, schema, Compression::UNCOMPRESSED)
    }

    fn parquet_with(
        &self,
        name: &str,
        schema: SchemaRef,
        compression: Compression,
    ) -> Result<ParquetObject, StoreError> {
        let sink = BufWriter::new(self.store.clone(), self.path(name));
        let writer = AsyncArrowWriter::try_new(sink, schema, Some(properties(compression)))?;
        Ok(ParquetObject { writer, rows: 0 })
    }

    /// Parquet file `name`, to read a range of rows at a time (its footer is read here, once).
    pub async fn parquet_ranges(&self, name: &str) -> Result<ParquetRanges, StoreError> {
        let path = self.path(name);
        let size = self.store.head(&path).await.map_err(|e| self.error(name, e))?.size;
        let mut reader = ObjectReader {
            store: self.store.clone(),
            path,
            size,
        };
        let metadata = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
            .await
            .map_err(|e| StoreError::Unreadable(format!("{}: {e}", self.url(name))))?;
        Ok(ParquetRanges { reader, metadata })
    }

    /// File `name`, read whole (a file of one partition: a few MB).
    pub async fn read_batch(&self, name: &str) -> Result<RecordBatch, StoreError> {
        decode_parquet(self.get(name).await?)
    }

    /// Writes a whole stream to `name`; returns the number of rows.
    pub async fn write_stream(&self, name: &str, stream: SendableRecordBatchStream) -> Result<u64, StoreError> {
        self.write_stream_with(name, stream, &[]).await
    }

    /// [`OutputStore::write_stream`], with key-value `metadata` in the file's schema.
    pub async fn write_stream_with(
        &self,
        name: &str,
        mut stream: SendableRecordBatchStream,
        metadata: &[(String, String)],
    ) -> Result<u64, StoreError> {
        let schema = with_metadata(&stream.schema(), metadata);
        let mut file = self.parquet(name, schema.clone())?;
        while let Some(batch) = stream.next().await {
            file.write(&batch?.with_schema(schema.clone())?).await?;
        }
        file.commit().await
    }

    /// Writes batches already in memory to `name`; returns the number of rows.
    pub async fn write_batches(
        &self,
        name: &str,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<u64, StoreError> {
        let mut file = self.parquet(name, schema)?;
        for batch in batches {
            file.write(batch).await?;
        }
        file.commit().await
    }
}

/// `schema` with `metadata` added to its own (the Arrow schema's metadata, which Parquet readers show).
pub fn with_metadata(schema: &SchemaRef, metadata: &[(String, String)]) -> SchemaRef {
    if metadata.is_empty() {
        return schema.clone();
    }
    let mut all = schema.metadata().clone();
    all.extend(metadata.iter().cloned());
    Arc::new(schema.as_ref().clone().with_metadata(all))
}

/// A whole Parquet file already in memory, as one batch.
pub fn decode_parquet(bytes: Bytes) -> Result<RecordBatch, StoreError> {
    use datafusion::arrow::record_batch::RecordBatchReader;
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
}

/// Rows per row group of the files verger writes: what [`ParquetRanges`] decodes to read a few rows (16,384
/// manifest rows are about 2 MB), and what a writer holds before flushing.
pub const ROW_GROUP_ROWS: usize = 16 * 1024;

/// No dictionaries but for labels: feature values and paths hardly repeat, and trying to build a dictionary
/// for every float costs more CPU than the rest of the write.
fn properties(compression: Compression) -> WriterProperties {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_compression(compression)
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(ColumnPath::from("label"), true)
        .build()
}

/// A Parquet file read a range of rows at a time, decoding only the row groups ([`ROW_GROUP_ROWS`]) the range
/// touches: a file of millions of rows (the manifest) is never held whole.
pub struct ParquetRanges {
    reader: ObjectReader,
    metadata: ArrowReaderMetadata,
}

impl ParquetRanges {
    pub fn rows(&self) -> usize {
        self.metadata.metadata().file_metadata().num_rows() as usize
    }

    /// Rows `range` (within [`ParquetRanges::rows`]) as one batch.
    pub async fn read(&self, range: Range<usize>) -> Result<RecordBatch, StoreError> {
        assert!(
            range.end <= self.rows(),
            "rows {range:?} beyond the file's {}",
            self.rows()
        );
        let schema = self.metadata.schema().clone();
        if range.is_empty() {
            return Ok(RecordBatch::new_empty(schema));
        }
        // The row groups that hold the range, and where the range starts in the first of them.
        let (mut groups, mut first_row, mut start) = (Vec::new(), None, 0);
        for (i, group) in self.metadata.metadata().row_groups().iter().enumerate() {
            let end = start + group.num_rows() as usize;
            if start < range.end && range.start < end {
                groups.push(i);
                first_row.get_or_insert(start);
            }
            start = end;
        }
        let skip = range.start - first_row.unwrap_or(range.start);
        let selection = RowSelection::from(vec![RowSelector::skip(skip), RowSelector::select(range.len())]);
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(self.reader.clone(), self.metadata.clone())
            .with_row_groups(groups)
            .with_row_selection(selection)
            .build()?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
    }
}

/// A Parquet file in a store, for the Parquet reader: byte ranges on request, the footer from its tail.
#[derive(Clone)]
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            Ok(Arc::new(
                ParquetMetaDataReader::new().load_and_finish(self, size).await?,
            ))
        }
        .boxed()
    }
}

/// An open Parquet file, invisible until [`ParquetObject::commit`].
pub struct ParquetObject {
    writer: AsyncArrowWriter<BufWriter>,
    rows: u64,
}

impl ParquetObject {
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).await?;
        Ok(())
    }

    /// Finishes the file and publishes it. Returns the number of rows.
    pub async fn commit(self) -> Result<u64, StoreError> {
        self.writer.close().await?;
        Ok(self.rows)
    }
}

/// What writes an output folder: the names it writes there (only these are ever replaced), and the files by
/// which a folder is known to be its own.
#[derive(Debug, Clone, Copy)]
pub struct OutputKind {
    /// For messages: "run", "classifier".
    pub what: &'static str,
    /// Top-level files and folders it writes.
    pub names: &'static [&'static str],
    /// Files only it writes; one present makes a folder its own.
    pub marks: &'static [&'static str],
}

/// What a command may do with an output that already holds files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Nothing: only an empty or missing output is written.
    Empty,
    /// Continue what verger left there (`--resume`).
    Resume,
    /// Replace what verger wrote there (`--overwrite`).
    Replace,
}

/// Refuses an output that contains (or is) a location the command reads, `reads` as (what, location): its
/// cleanup or replacement could delete what is being read. Spark refuses to overwrite a path it reads from for
/// the same reason. Local paths are compared after resolving links in the part that exists, so a link or
/// `..` does not hide an overlap.
pub fn refuse_overlap(output: &str, reads: &[(&str, &str)]) -> Result<(), StoreError> {
    let out = Resolved::of(output);
    for (what, location) in reads {
        if out.contains(&Resolved::of(location)) {
            return Err(StoreError::Refused {
                output: output.to_string(),
                reason: format!("it contains {what} {location}, which this command reads; choose an output outside it"),
            });
        }
    }
    Ok(())
}

/// A location in a form where containment is a prefix test: local paths with links and `..` resolved
/// ([`resolve_local`]), S3 keys by segment.
#[derive(Debug, PartialEq)]
pub enum Resolved {
    Local(PathBuf),
    S3 { bucket: String, segments: Vec<String> },
}

impl Resolved {
    pub fn of(location: &str) -> Resolved {
        match Location::parse(location) {
            Location::Local(path) => Resolved::Local(resolve_local(&path)),
            Location::S3 { bucket, prefix } => Resolved::S3 {
                bucket,
                segments: prefix.split('/').filter(|s| !s.is_empty()).map(String::from).collect(),
            },
        }
    }

    /// Whether `other` is this location or inside it.
    pub fn contains(&self, other: &Resolved) -> bool {
        match (self, other) {
            (Resolved::Local(outer), Resolved::Local(inner)) => inner.starts_with(outer),
            (
                Resolved::S3 { bucket, segments },
                Resolved::S3 {
                    bucket: other_bucket,
                    segments: other_segments,
                },
            ) => bucket == other_bucket && other_segments.starts_with(segments),
            _ => false,
        }
    }
}

/// `path` made absolute, its longest existing ancestor with links resolved, and `.`/`..` taken lexically in
/// the rest.
fn resolve_local(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for ancestor in absolute.ancestors() {
        if let Ok(real) = std::fs::canonicalize(ancestor) {
            let rest = absolute.strip_prefix(ancestor).expect("an ancestor");
            let mut resolved = real;
            for part in rest.components() {
                match part {
                    std::path::Component::ParentDir => {
                        resolved.pop();
                    }
                    std::path::Component::Normal(name) => resolved.push(name),
                    _ => {}
                }
            }
            return resolved;
        }
    }
    absolute
}

/// Deletes, under `dir`, the `NAME#N` files `object_store`'s local store writes before renaming into place.
/// Links are never followed nor removed (verger writes none): a link inside the output to a folder elsewhere,
/// or a link loop, leaves the output untouched beyond itself.
fn remove_staging_files(dir: &Path) -> Result<(), StoreError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let path = entry.path();
        // The entry's own type: `Path::is_dir` would follow a link.
        let kind = entry.file_type().map_err(|e| StoreError::io(&path, e))?;
        if kind.is_dir() {
            remove_staging_files(&path)?;
        } else if kind.is_file() && is_staging_file(&path) {
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        }
    }
    Ok(())
}

fn is_staging_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `folder/name` → (`folder`, `name`), for a local path or an `s3://bucket/key`.
pub fn split_file(file: &str) -> (String, String) {
    match file.rsplit_once('/') {
        Some((folder, name)) if !folder.is_empty() && !folder.ends_with(':') && !folder.ends_with("//") => {
            (folder.to_string(), name.to_string())
        }
        Some((_, name)) if file.starts_with('/') => ("/".to_string(), name.to_string()),
        _ => (".".to_string(), file.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int32Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};

    #[tokio::test]
    async fn ranges_of_rows_are_read_across_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputStore::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
        let n = 2 * ROW_GROUP_ROWS + 100;
        let mut file = out.parquet("many.parquet", schema.clone()).unwrap();
        // Written in uneven batches: row groups are cut by rows, not by the batches written.
        for chunk in (0..n as i32).collect::<Vec<_>>().chunks(5000) {
            let column = Arc::new(Int32Array::from(chunk.to_vec()));
            file.write(&RecordBatch::try_new(schema.clone(), vec![column]).unwrap())
                .await
                .unwrap();
        }
        file.commit().await.unwrap();

        let ranges = out.parquet_ranges("many.parquet").await.unwrap();
        assert_eq!(ranges.rows(), n);
        assert_eq!(ranges.metadata.metadata().num_row_groups(), 3);
        let g = ROW_GROUP_ROWS;
        for range in [0..1, 0..n, 5..300, g - 3..g + 3, g..2 * g, 2 * g - 1..n, n - 1..n, 7..7] {
            let batch = ranges.read(range.clone()).await.unwrap();
            let read: Vec<i32> = batch.column(0).as_primitive::<Int32Type>().values().to_vec();
            let expected: Vec<i32> = range.clone().map(|i| i as i32).collect();
            assert_eq!(read, expected, "rows {range:?}");
        }
        assert!(out.parquet_ranges("missing.parquet").await.is_err());
    }

    #[tokio::test]
    async fn local_files_appear_whole_and_are_read_back_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputStore::open(dir.path().join("out").to_str().unwrap(), &StoreOptions::default()).unwrap();
        assert!(out.is_empty().await.unwrap(), "a folder that does not exist is empty");

        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![1, 2, 3]))]).unwrap();
        let mut file = out.parquet("result/part-00000.parquet", schema).unwrap();
        file.write(&batch).await.unwrap();
        assert!(
            !out.exists("result/part-00000.parquet").await.unwrap(),
            "not visible before commit"
        );
        assert_eq!(file.commit().await.unwrap(), 3);
        assert!(out.exists("result/part-00000.parquet").await.unwrap());
        assert!(!out.is_empty().await.unwrap());

        let ctx = SessionContext::new();
        out.register(&ctx);
        let url = out.url("result/part-00000.parquet");
        assert!(url.starts_with("file:///"), "{url}");
        let rows = ctx
            .read_parquet(url, Default::default())
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(rows, 3);

        out.put("_SUCCESS", Vec::new()).await.unwrap();
        assert!(dir.path().join("out/_SUCCESS").is_file());
        out.remove_all("result").await.unwrap();
        assert!(!dir.path().join("out/result").exists());
    }

    #[test]
    fn staging_files_of_a_killed_process_are_recognised() {
        assert!(is_staging_file(Path::new("/o/result/part-00001.parquet#3")));
        assert!(!is_staging_file(Path::new("/o/result/part-00001.parquet")));
        assert!(!is_staging_file(Path::new("/o/photos/#1 favourite.jpg")));
        assert!(!is_staging_file(Path::new("/o/x#")));
    }

    /// Issue 41, point 2: a link inside the output to a folder elsewhere keeps that folder's `NAME#N` files, a
    /// link named like a staging file stays, and a link loop ends; the output's own staging files go.
    #[test]
    fn cleanup_never_follows_links_out_of_the_output() {
        let root = tempfile::tempdir().unwrap();
        let (output, home) = (root.path().join("out"), root.path().join("home"));
        std::fs::create_dir_all(output.join("result")).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("notes#1"), b"a user's file").unwrap();
        std::fs::write(output.join("result/part-00000.parquet#2"), b"staged").unwrap();
        std::os::unix::fs::symlink(&home, output.join("result/home")).unwrap();
        std::os::unix::fs::symlink(home.join("notes#1"), output.join("result/link#3")).unwrap();
        std::os::unix::fs::symlink(&output, output.join("result/loop")).unwrap();

        remove_staging_files(&output).unwrap();

        assert!(
            !output.join("result/part-00000.parquet#2").exists(),
            "the output's staging file goes"
        );
        assert_eq!(std::fs::read(home.join("notes#1")).unwrap(), b"a user's file");
        assert!(
            output.join("result/link#3").symlink_metadata().is_ok(),
            "a link is not verger's to remove"
        );
        assert!(output.join("result/loop").symlink_metadata().is_ok());
    }

    #[test]
    fn output_files_split_into_folder_and_name() {
        let split = split_file;
        assert_eq!(split("out/f.parquet"), ("out".into(), "f.parquet".into()));
        assert_eq!(split("/f.parquet"), ("/".into(), "f.parquet".into()));
        assert_eq!(split("f.parquet"), (".".into(), "f.parquet".into()));
        assert_eq!(split("s3://b/k/f.parquet"), ("s3://b/k".into(), "f.parquet".into()));
    }
}
