//! Listing the images of a job: recursive, filtered by glob patterns on the file name, sorted, each labelled
//! with the name of its parent folder (the Fruits-360 layout: `Training/<label>/<image>.jpg`).
//!
//! The listing is the job's manifest: it fixes the set and order of rows, so that partitions, retries and
//! resumed runs all agree on what "every image" means. Inputs are local folders or object-store prefixes
//! (`s3://bucket/prefix`, listed through `object_store`). Scope: names and metadata only, no image bytes.

use std::fmt::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arrow::array::{
    new_null_array, Array, ArrayBuilder, ArrayRef, AsArray, Int64Builder, RecordBatch, StringArray, StringBuilder,
    UInt64Builder,
};
use arrow::compute::{cast, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use arrow::error::ArrowError;
use futures::{StreamExt, TryStreamExt};
use globset::{Glob, GlobSet, GlobSetBuilder};
use object_store::path::Path as ObjectPath;
use object_store::{ListResult, ObjectMeta, ObjectStore};
use thiserror::Error;

/// The glob used when the user gives none, as in the original notebook.
pub const DEFAULT_GLOB: &str = "*.jpg";

#[derive(Debug, Error)]
pub enum ListingError {
    #[error("invalid glob pattern {pattern:?}: {message}")]
    Glob { pattern: String, message: String },
    #[error("input {path} does not exist or is not a folder")]
    NotAFolder { path: PathBuf },
    #[error("cannot list {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("cannot list {uri}: {message}")]
    Store { uri: String, message: String },
}

/// Where a job's images are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    /// `s3://bucket/prefix`; the prefix has no leading or trailing slash.
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl Location {
    /// `s3://bucket[/prefix]` or a local path (`file://` accepted).
    pub fn parse(text: &str) -> Location {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            };
        }
        Location::Local(PathBuf::from(text.strip_prefix("file://").unwrap_or(text)))
    }
}

/// Folders listed at once. An S3 listing pages through 1,000 keys per request, one request after another,
/// so a large listing is only fast when it is cut by folder and the folders are listed side by side.
pub const LIST_CONCURRENCY: usize = 16;

/// How many folder levels are split before listing each remaining folder flat.
const MAX_SPLIT_DEPTH: usize = 3;

/// Lists every object under `prefix` of an S3 bucket whose name matches, `concurrency` folders at a time;
/// entries sorted by URI. The label is the last "folder" of the key.
pub async fn list_bucket(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    filter: &NameFilter,
    concurrency: usize,
) -> Result<ImageList, ListingError> {
    let parts = bucket_parts(store, bucket, prefix, concurrency).await?;
    let mut lists = std::pin::pin!(list_parts(store, bucket, filter, parts, concurrency));
    // Copied into one list as each part comes, so that the parts are not held beside it.
    let mut images = Collector::default();
    while let Some(list) = lists.try_next().await? {
        for e in list.iter() {
            images.push(e.uri, e.label, e.size, e.modified_ms, e.etag);
        }
    }
    Ok(images.finish())
}

/// A bucket listing cut into parts whose listings, concatenated in order, are in URI order: the objects met
/// while splitting folder levels, and the folders left to list flat.
pub struct BucketParts {
    parts: Vec<Part>,
    /// `s3://bucket/prefix`, for messages.
    uri: String,
}

enum Part {
    /// Consecutive objects (in key order) of the split levels.
    Objects(Vec<ObjectMeta>),
    Folder(Option<ObjectPath>),
}

/// Splits the folder levels under `prefix` (delimiter listings) until there are enough folders to keep
/// `concurrency` requests busy; the result, in key order, is what [`list_parts`] lists.
pub async fn bucket_parts(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    concurrency: usize,
) -> Result<BucketParts, ListingError> {
    let uri = format!("s3://{bucket}/{prefix}");
    let error = |e: object_store::Error| ListingError::Store {
        uri: uri.clone(),
        message: e.to_string(),
    };
    // The level's entries in key order: a folder's keys all sort where its prefix does (a key outside it
    // compares with all of them as with the prefix itself), so each folder can be replaced by its listing.
    enum Entry {
        Object(ObjectMeta),
        Folder(Option<ObjectPath>),
    }
    // The prefix as written (`Path::from` would percent-encode `%`, `#`, `~`…), as every listed key is.
    let root = match prefix.is_empty() {
        true => None,
        false => Some(ObjectPath::parse(prefix).map_err(|e| error(e.into()))?),
    };
    let mut entries = vec![Entry::Folder(root)];
    let folders = |entries: &[Entry]| entries.iter().filter(|e| matches!(e, Entry::Folder(_))).count();
    for _ in 0..MAX_SPLIT_DEPTH {
        if folders(&entries) >= concurrency.max(1) || folders(&entries) == 0 {
            break;
        }
        let levels: Vec<Option<ListResult>> = futures::stream::iter(&entries)
            .map(|entry| async move {
                match entry {
                    Entry::Folder(folder) => store.list_with_delimiter(folder.as_ref()).await.map(Some),
                    Entry::Object(_) => Ok(None),
                }
            })
            .buffered(concurrency.max(1))
            .try_collect()
            .await
            .map_err(error)?;
        let mut next = Vec::new();
        for (entry, level) in entries.into_iter().zip(levels) {
            let Some(level) = level else {
                next.push(entry);
                continue;
            };
            let mut here: Vec<(String, Entry)> = level
                .objects
                .into_iter()
                .map(|o| (o.location.to_string(), Entry::Object(o)))
                .chain(
                    level
                        .common_prefixes
                        .into_iter()
                        .map(|p| (format!("{p}/"), Entry::Folder(Some(p)))),
                )
                .collect();
            here.sort_by(|a, b| a.0.cmp(&b.0));
            next.extend(here.into_iter().map(|(_, e)| e));
        }
        entries = next;
    }
    let mut parts: Vec<Part> = Vec::new();
    for entry in entries {
        match (entry, parts.last_mut()) {
            (Entry::Object(o), Some(Part::Objects(run))) => run.push(o),
            (Entry::Object(o), _) => parts.push(Part::Objects(vec![o])),
            (Entry::Folder(f), _) => parts.push(Part::Folder(f)),
        }
    }
    Ok(BucketParts { parts, uri })
}

/// The images of each part, in order (so in URI order), `concurrency` folders listed at once: only the
/// listings of the parts in flight are held, whatever the bucket's size (a part is one folder's images).
pub fn list_parts<'a>(
    store: &'a dyn ObjectStore,
    bucket: &'a str,
    filter: &'a NameFilter,
    parts: BucketParts,
    concurrency: usize,
) -> impl futures::Stream<Item = Result<ImageList, ListingError>> + 'a {
    let uri = parts.uri;
    futures::stream::iter(parts.parts)
        .map(move |part| {
            let uri = uri.clone();
            async move {
                let mut images = Collector::default();
                let mut uri_buf = String::new();
                match part {
                    Part::Objects(objects) => {
                        for meta in &objects {
                            push_object(&mut images, &mut uri_buf, bucket, filter, meta);
                        }
                    }
                    // Each page of the folder goes into the columns as it comes, not held as `ObjectMeta`s.
                    Part::Folder(folder) => {
                        let mut pages = store.list(folder.as_ref());
                        while let Some(meta) = pages.try_next().await.map_err(|e| ListingError::Store {
                            uri: uri.clone(),
                            message: e.to_string(),
                        })? {
                            push_object(&mut images, &mut uri_buf, bucket, filter, &meta);
                        }
                    }
                }
                Ok(images.finish())
            }
        })
        .buffered(concurrency.max(1))
}

/// Adds `meta` to `images` if its name matches; `uri` is a reused buffer.
fn push_object(images: &mut Collector, uri: &mut String, bucket: &str, filter: &NameFilter, meta: &ObjectMeta) {
    if !meta.location.filename().is_some_and(|name| filter.matches(name)) {
        return;
    }
    let key = meta.location.as_ref();
    uri.clear();
    write!(uri, "s3://{bucket}/{key}").expect("writing to a String");
    images.push(
        uri,
        &label_of(Path::new(key)),
        meta.size,
        meta.last_modified.timestamp_millis(),
        meta.e_tag.as_deref(),
    );
}

/// One listed image, borrowed from an [`ImageList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageEntry<'a> {
    /// `file://` followed by the absolute path, unescaped, as Spark shows file paths; or `s3://bucket/key`.
    pub uri: &'a str,
    pub label: &'a str,
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: i64,
    /// The object store's entity tag (none for local files).
    pub etag: Option<&'a str>,
}

/// Listed images in URI order, held as Arrow columns ([`ImageList::schema`]): a million images take their
/// paths' and labels' bytes and about 40 bytes more each, against several times that as one allocation per
/// string. The run's manifest is this batch as is.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageList {
    batch: RecordBatch,
}

impl ImageList {
    /// `path`, `label`, `size`, `modified_ms`, and `etag` (null for local files).
    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("size", DataType::UInt64, false),
            Field::new("modified_ms", DataType::Int64, false),
            Field::new("etag", DataType::Utf8, true),
        ]))
    }

    /// A list from a batch of [`ImageList::schema`]'s columns, as written (string columns of any Arrow string
    /// type; a batch without `etag`, as manifests before it had one, has none), in URI order.
    pub fn from_batch(batch: &RecordBatch) -> Result<Self, ArrowError> {
        let schema = Self::schema();
        let columns = schema
            .fields()
            .iter()
            .map(|field| match batch.column_by_name(field.name()) {
                Some(column) => cast(column, field.data_type()),
                None if field.is_nullable() => Ok(new_null_array(field.data_type(), batch.num_rows())),
                None => Err(ArrowError::SchemaError(format!("no column {:?}", field.name()))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImageList {
            batch: RecordBatch::try_new(schema, columns)?,
        })
    }

    /// The columns, in URI order.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn uris(&self) -> &StringArray {
        self.batch.column(0).as_string()
    }

    pub fn labels(&self) -> &StringArray {
        self.batch.column(1).as_string()
    }

    pub fn get(&self, i: usize) -> ImageEntry<'_> {
        let etags = self.batch.column(4).as_string::<i32>();
        ImageEntry {
            uri: self.uris().value(i),
            label: self.labels().value(i),
            size: self.batch.column(2).as_primitive::<UInt64Type>().value(i),
            modified_ms: self.batch.column(3).as_primitive::<Int64Type>().value(i),
            etag: etags.is_valid(i).then(|| etags.value(i)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = ImageEntry<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Entries in any order, sorted by URI.
impl<'a> FromIterator<ImageEntry<'a>> for ImageList {
    fn from_iter<I: IntoIterator<Item = ImageEntry<'a>>>(entries: I) -> Self {
        let mut images = Collector::default();
        for e in entries {
            images.push(e.uri, e.label, e.size, e.modified_ms, e.etag);
        }
        images.finish()
    }
}

/// Builds an [`ImageList`] as entries are found, in any order.
#[derive(Default)]
struct Collector {
    uris: StringBuilder,
    labels: StringBuilder,
    sizes: UInt64Builder,
    modified: Int64Builder,
    etags: StringBuilder,
}

impl Collector {
    fn len(&self) -> usize {
        self.uris.len()
    }

    fn push(&mut self, uri: &str, label: &str, size: u64, modified_ms: i64, etag: Option<&str>) {
        self.uris.append_value(uri);
        self.labels.append_value(label);
        self.sizes.append_value(size);
        self.modified.append_value(modified_ms);
        self.etags.append_option(etag);
    }

    /// The entries sorted by URI (a listing that came in order is not copied).
    fn finish(mut self) -> ImageList {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.uris.finish()),
            Arc::new(self.labels.finish()),
            Arc::new(self.sizes.finish()),
            Arc::new(self.modified.finish()),
            Arc::new(self.etags.finish()),
        ];
        let batch = RecordBatch::try_new(ImageList::schema(), columns).expect("columns match the schema");
        let uris = batch.column(0).as_string::<i32>();
        let sorted = (1..uris.len()).all(|i| uris.value(i - 1) <= uris.value(i));
        let batch = match sorted {
            true => batch,
            false => {
                let order = sort_to_indices(uris, None, None).expect("strings sort");
                take_record_batch(&batch, &order).expect("indices in range")
            }
        };
        ImageList { batch }
    }
}

/// Which file names to keep.
#[derive(Debug, Clone)]
pub struct NameFilter {
    set: GlobSet,
}

impl NameFilter {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, ListingError> {
        let mut builder = GlobSetBuilder::new();
        let defaults = [DEFAULT_GLOB];
        let patterns: Vec<&str> = if patterns.is_empty() {
            defaults.to_vec()
        } else {
            patterns.iter().map(AsRef::as_ref).collect()
        };
        for pattern in patterns {
            let glob = Glob::new(pattern).map_err(|e| ListingError::Glob {
                pattern: pattern.to_string(),
                message: e.to_string(),
            })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| ListingError::Glob {
            pattern: String::new(),
            message: e.to_string(),
        })?;
        Ok(NameFilter { set })
    }

    pub fn matches(&self, file_name: &str) -> bool {
        self.set.is_match(file_name)
    }
}

/// Lists a local folder recursively; entries sorted by URI.
pub fn list_folder(root: &Path, filter: &NameFilter) -> Result<ImageList, ListingError> {
    let mut list = None;
    walk_folder(root, filter, usize::MAX, |chunk| {
        list = Some(chunk);
        ControlFlow::Continue(())
    })?;
    Ok(list.unwrap_or_else(|| Collector::default().finish()))
}

/// Lists a local folder recursively, handing the entries to `each` in URI order, `chunk_rows` at a time (the
/// last chunk may be shorter; none for an empty folder), so that a listing of any size is written out as it
/// goes. `each` may stop the walk.
pub fn walk_folder(
    root: &Path,
    filter: &NameFilter,
    chunk_rows: usize,
    mut each: impl FnMut(ImageList) -> ControlFlow<()>,
) -> Result<(), ListingError> {
    let root = std::path::absolute(root).map_err(|e| ListingError::Io {
        path: root.into(),
        message: e.to_string(),
    })?;
    if !root.is_dir() {
        return Err(ListingError::NotAFolder { path: root });
    }
    let mut images = Collector::default();
    let mut uri = String::new();
    // Each folder's entries in the order of the URIs they lead to (a folder's name as if followed by '/'),
    // so that the walk comes out sorted and the listing needs no sorted copy.
    let walk = walkdir::WalkDir::new(&root)
        .follow_links(true)
        .sort_by(|a, b| uri_order(a).cmp(uri_order(b)));
    for item in walk {
        let item = item.map_err(|e| ListingError::Io {
            path: e.path().map_or_else(|| root.clone(), Path::to_path_buf),
            message: e.to_string(),
        })?;
        if !item.file_type().is_file() {
            continue;
        }
        let Some(name) = item.file_name().to_str() else {
            continue;
        };
        if !filter.matches(name) {
            continue;
        }
        let path = item.path();
        let metadata = item.metadata().map_err(|e| ListingError::Io {
            path: path.into(),
            message: e.to_string(),
        })?;
        let modified_ms = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        uri.clear();
        write!(uri, "file://{}", path.display()).expect("writing to a String");
        images.push(&uri, &label_of(path), metadata.len(), modified_ms, None);
        if images.len() >= chunk_rows && each(std::mem::take(&mut images).finish()).is_break() {
            return Ok(());
        }
    }
    if images.len() > 0 {
        let _ = each(images.finish());
    }
    Ok(())
}

/// The bytes an entry adds to the URIs under it.
fn uri_order(entry: &walkdir::DirEntry) -> impl Iterator<Item = u8> + '_ {
    let slash = entry.file_type().is_dir().then_some(b'/');
    entry.file_name().as_encoded_bytes().iter().copied().chain(slash)
}

/// The parent folder's name, or an empty label for a file at the root of the file system.
pub fn label_of(path: &Path) -> String {
    path.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The local path of a `file://` URI, if it is one.
pub fn local_path(uri: &str) -> Option<&Path> {
    uri.strip_prefix("file://").map(Path::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_recursively_with_labels_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for (folder, file) in [
            ("Banana", "b.jpg"),
            ("Apple 10", "z.jpg"),
            ("Apple 10", "a.jpg"),
            ("Apple 10", "n.png"),
            ("Apple", "c.jpg"),
        ] {
            std::fs::create_dir_all(dir.path().join("Training").join(folder)).unwrap();
            std::fs::write(dir.path().join("Training").join(folder).join(file), b"x").unwrap();
        }
        let found = list_folder(dir.path(), &NameFilter::new::<&str>(&[]).unwrap()).unwrap();
        let names: Vec<(&str, &str)> = found
            .iter()
            .map(|e| (e.label, e.uri.rsplit('/').next().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("Apple 10", "a.jpg"),
                ("Apple 10", "z.jpg"),
                ("Apple", "c.jpg"),
                ("Banana", "b.jpg")
            ]
        );
        // Written and read back as columns (a manifest), the list is the same.
        assert_eq!(ImageList::from_batch(found.batch()).unwrap(), found);
        assert!(found.get(0).uri.starts_with("file:///"));
        assert_eq!(found.get(0).etag, None);
        assert_eq!(
            local_path(found.get(0).uri)
                .unwrap()
                .parent()
                .unwrap()
                .file_name()
                .unwrap(),
            "Apple 10"
        );

        let both = list_folder(dir.path(), &NameFilter::new(&["*.jpg", "*.png"]).unwrap()).unwrap();
        assert_eq!(both.len(), 5);
    }

    #[test]
    fn a_walk_in_chunks_gives_the_listing_in_order_and_can_be_stopped() {
        let dir = tempfile::tempdir().unwrap();
        for folder in 0..7 {
            for file in 0..3 {
                let folder = dir.path().join(format!("f{folder}"));
                std::fs::create_dir_all(&folder).unwrap();
                std::fs::write(folder.join(format!("{file}.jpg")), b"x").unwrap();
            }
        }
        let all = NameFilter::new::<&str>(&[]).unwrap();
        let whole = list_folder(dir.path(), &all).unwrap();
        let mut chunks = Vec::new();
        walk_folder(dir.path(), &all, 4, |chunk| {
            chunks.push(chunk);
            ControlFlow::Continue(())
        })
        .unwrap();
        let sizes: Vec<usize> = chunks.iter().map(ImageList::len).collect();
        assert_eq!(sizes, [4, 4, 4, 4, 4, 1]);
        let uris: Vec<String> = chunks
            .iter()
            .flat_map(|c| c.iter().map(|e| e.uri.to_string()))
            .collect();
        assert_eq!(uris, whole.iter().map(|e| e.uri.to_string()).collect::<Vec<_>>());

        let mut seen = 0;
        walk_folder(dir.path(), &all, 4, |chunk| {
            seen += chunk.len();
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(seen, 4, "the walk stops when asked");
        let empty = tempfile::tempdir().unwrap();
        let mut calls = 0;
        walk_folder(empty.path(), &all, 4, |_| {
            calls += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(calls, 0, "an empty folder has no chunk");
    }

    #[tokio::test]
    async fn bucket_listing_is_the_same_at_any_concurrency() {
        use object_store::memory::InMemory;
        use object_store::ObjectStoreExt;
        let store = InMemory::new();
        let mut keys = vec!["data/top.jpg".to_string(), "data/notes.txt".to_string()];
        for class in 0..20 {
            for i in 0..7 {
                keys.push(format!("data/c{class:02}/img{i}.jpg"));
            }
            keys.push(format!("data/c{class:02}/deeper/more/x{class}.jpg"));
        }
        keys.push("other/outside.jpg".into());
        for key in &keys {
            store
                .put(&ObjectPath::from(key.as_str()), vec![1u8].into())
                .await
                .unwrap();
        }
        let filter = NameFilter::new(&["*.jpg"]).unwrap();
        let one = list_bucket(&store, "b", "data", &filter, 1).await.unwrap();
        let many = list_bucket(&store, "b", "data", &filter, 16).await.unwrap();
        assert_eq!(one, many);
        // The parts, listed side by side, come in URI order as they are (a manifest is written as they come).
        let parts = bucket_parts(&store, "b", "data", 16).await.unwrap();
        assert!(parts.parts.len() > 16, "split into folders: {}", parts.parts.len());
        let lists: Vec<ImageList> = list_parts(&store, "b", &filter, parts, 16).try_collect().await.unwrap();
        let uris: Vec<&str> = lists.iter().flat_map(|l| l.uris().iter().flatten()).collect();
        assert!(uris.is_sorted(), "{uris:?}");
        assert_eq!(uris, many.iter().map(|e| e.uri).collect::<Vec<_>>());
        assert!(
            uris.is_sorted(),
            "parts listed side by side come out in URI order: {uris:?}"
        );
        assert_eq!(one.len(), 1 + 20 * 8);
        assert_eq!(one.get(0).uri, "s3://b/data/c00/deeper/more/x0.jpg");
        assert_eq!(one.get(0).label, "more");
        assert!(one.get(0).etag.is_some(), "object stores tag their objects");
        assert!(one.iter().any(|e| e.uri == "s3://b/data/top.jpg" && e.label == "data"));
        let everything = list_bucket(&store, "b", "", &filter, 4).await.unwrap();
        assert_eq!(everything.len(), one.len() + 1);
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://bucket/some/prefix/"),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket"),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("file:///data/x"),
            Location::Local(PathBuf::from("/data/x"))
        );
        assert_eq!(Location::parse("rel/dir"), Location::Local(PathBuf::from("rel/dir")));
    }

    #[test]
    fn refuses_missing_input_and_bad_globs() {
        assert!(matches!(
            list_folder(Path::new("/no/such/folder"), &NameFilter::new(&["*"]).unwrap()),
            Err(ListingError::NotAFolder { .. })
        ));
        assert!(matches!(NameFilter::new(&["a[b"]), Err(ListingError::Glob { .. })));
    }
}
