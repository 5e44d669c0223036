//! Listing the images of a job: recursive, filtered by glob patterns on the file name, sorted, each labelled
//! with the name of its parent folder (the Fruits-360 layout: `Training/<label>/<image>.jpg`).
//!
//! The listing is the job's manifest: it fixes the set and order of rows, so that partitions, retries and
//! resumed runs all agree on what "every image" means. Inputs are local folders or object-store prefixes
//! (`s3://bucket/prefix`, listed through `object_store`). Scope: names and metadata only, no image bytes.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

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
) -> Result<Vec<ImageEntry>, ListingError> {
    let root = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let objects = list_objects(store, root, concurrency.max(1))
        .await
        .map_err(|e| ListingError::Store {
            uri: format!("s3://{bucket}/{prefix}"),
            message: e.to_string(),
        })?;
    let mut entries: Vec<ImageEntry> = objects
        .into_iter()
        .filter(|meta| meta.location.filename().is_some_and(|name| filter.matches(name)))
        .map(|meta| {
            let key = meta.location.as_ref();
            ImageEntry {
                uri: format!("s3://{bucket}/{key}"),
                label: label_of(Path::new(key)),
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            }
        })
        .collect();
    entries.sort_by(|a, b| a.uri.cmp(&b.uri));
    Ok(entries)
}

/// Every object under `root`: folder levels are split (delimiter listings) until there are enough folders to
/// keep `concurrency` requests busy, then each folder is listed flat, `concurrency` at a time.
async fn list_objects(
    store: &dyn ObjectStore,
    root: Option<ObjectPath>,
    concurrency: usize,
) -> object_store::Result<Vec<ObjectMeta>> {
    let mut objects = Vec::new();
    let mut folders = vec![root];
    for _ in 0..MAX_SPLIT_DEPTH {
        if folders.len() >= concurrency {
            break;
        }
        let levels: Vec<ListResult> = futures::stream::iter(&folders)
            .map(|folder| store.list_with_delimiter(folder.as_ref()))
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        folders.clear();
        for level in levels {
            objects.extend(level.objects);
            folders.extend(level.common_prefixes.into_iter().map(Some));
        }
        if folders.is_empty() {
            return Ok(objects);
        }
    }
    let listed: Vec<Vec<ObjectMeta>> = futures::stream::iter(folders)
        .map(|folder| store.list(folder.as_ref()).try_collect::<Vec<_>>())
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    objects.extend(listed.into_iter().flatten());
    Ok(objects)
}

/// One listed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// `file://` followed by the absolute path, unescaped, as Spark shows file paths.
    pub uri: String,
    pub label: String,
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: i64,
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
pub fn list_folder(root: &Path, filter: &NameFilter) -> Result<Vec<ImageEntry>, ListingError> {
    let root = std::path::absolute(root).map_err(|e| ListingError::Io {
        path: root.into(),
        message: e.to_string(),
    })?;
    if !root.is_dir() {
        return Err(ListingError::NotAFolder { path: root });
    }
    let mut entries = Vec::new();
    for item in walkdir::WalkDir::new(&root).follow_links(true) {
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
        entries.push(ImageEntry {
            uri: format!("file://{}", path.display()),
            label: label_of(path),
            size: metadata.len(),
            modified_ms,
        });
    }
    entries.sort_by(|a, b| a.uri.cmp(&b.uri));
    Ok(entries)
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
        ] {
            std::fs::create_dir_all(dir.path().join("Training").join(folder)).unwrap();
            std::fs::write(dir.path().join("Training").join(folder).join(file), b"x").unwrap();
        }
        let found = list_folder(dir.path(), &NameFilter::new::<&str>(&[]).unwrap()).unwrap();
        let names: Vec<(&str, &str)> = found
            .iter()
            .map(|e| (e.label.as_str(), e.uri.rsplit('/').next().unwrap()))
            .collect();
        assert_eq!(
            names,
            [("Apple 10", "a.jpg"), ("Apple 10", "z.jpg"), ("Banana", "b.jpg")]
        );
        assert!(found[0].uri.starts_with("file:///"));
        assert_eq!(
            local_path(&found[0].uri)
                .unwrap()
                .parent()
                .unwrap()
                .file_name()
                .unwrap(),
            "Apple 10"
        );

        let both = list_folder(dir.path(), &NameFilter::new(&["*.jpg", "*.png"]).unwrap()).unwrap();
        assert_eq!(both.len(), 4);
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
        assert_eq!(one.len(), 1 + 20 * 8);
        assert_eq!(one[0].uri, "s3://b/data/c00/deeper/more/x0.jpg");
        assert_eq!(one[0].label, "more");
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
