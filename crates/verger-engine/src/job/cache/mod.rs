//! The feature cache (`--cache DIR|s3://bucket/prefix`): featurized images kept across runs, keyed by the
//! SHA-256 of their bytes under a pipeline identity (model, preprocessing version, inference runtime,
//! execution provider, precision), so that a daily run featurizes only the images that are new or changed.
//!
//! A pseudonymised run (`--pseudonymize-paths`) keeps a cache that names and fingerprints no photo: its
//! identity carries the key's fingerprint (so it has a folder of its own), each listing key is one HMAC of
//! the path, size and stamp (size, time and ETag stored as zero and none), and content hashes are HMACs of
//! the bytes under the key, not their SHA-256.
//!
//! Layout: `verger-cache.json` marks the folder as a cache; each identity has its folder,
//! `features-<id>/identity.json` and parts `features-<id>/part-<sha256 of its rows>.parquet`. A part row maps
//! a listing key (path, size, modification time, entity tag) to the SHA-256 of the bytes found there, with
//! the features of those bytes, or none when another row holds them. Parts are only added, each committed
//! whole and named by its content, so several runs may read and add at once, and a torn or corrupt part
//! (unreadable, or rows that do not match its name) is ignored, its images featurized again.
//!
//! Next to the parts, `pca-stats-<sha256>.bin` holds the PCA statistics of the parts it names ([`stats`]), so
//! that a run merges them rather than re-reading every cached image's features.
//!
//! A run holds the parts' listings and content hashes in memory (a few hundred bytes per image), not
//! their features: those are read again, a few parts at a time, when partitions are assembled. It does not
//! evict or compact.

mod stats;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, FixedSizeBinaryArray, Int64Array, RecordBatch, StringArray, StructArray,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema, SchemaRef, UInt64Type};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use verger_listing::{ImageEntry, ImageList};
use verger_model::{Device, Precision};

use crate::error::JobError;
use crate::featurize::{features_type, field, result_type, FeaturizeSettings};
use crate::io::output::{decode_parquet, OutputStore};
use crate::io::store::StoreOptions;
use crate::io::StoreError;
use crate::pseudonym::Pseudonymizer;

/// The file that marks a folder as a verger feature cache.
pub const MARKER: &str = "verger-cache.json";
const FORMAT: &str = "verger-feature-cache";
const VERSION: u32 = 1;

/// The SHA-256 of an image's bytes.
pub type ContentHash = [u8; 32];

#[derive(Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
}

/// Everything that decides an image's features besides its bytes: a cache made under another identity is
/// not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub model_sha256: String,
    /// [`verger_image::PREPROCESS_VERSION`].
    pub preprocess_version: u32,
    /// The inference library's file name, which carries its version (ONNX Runtime's; OpenVINO's in bf16).
    pub runtime: String,
    pub provider: String,
    pub precision: String,
    /// The pseudonymisation key's fingerprint, in a pseudonymised run: its cache keys by pseudonyms and keyed
    /// hashes, which mean nothing under another key (or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudonym_key: Option<String>,
}

impl Identity {
    pub fn of(settings: &FeaturizeSettings) -> Result<Self, JobError> {
        let library = match settings.precision {
            Precision::Fp32 => verger_model::runtime::library_for(settings.device)?,
            Precision::Bf16 => verger_model::bf16::locate()?,
        };
        Ok(Identity {
            model_sha256: settings.model.sha256.clone(),
            preprocess_version: verger_image::PREPROCESS_VERSION,
            runtime: library
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            // The CPU's features keep the folder they always had.
            provider: match settings.device {
                Device::Cpu => "cpu".into(),
                gpu => gpu.provider().into(),
            },
            precision: settings.precision.to_string(),
            pseudonym_key: None,
        })
    }

    /// The identity's folder in the cache.
    pub fn folder(&self) -> String {
        let json = serde_json::to_vec(self).expect("identity serializes");
        format!("features-{}", &hex::encode(Sha256::digest(json))[..16])
    }
}

/// What the cache did for a run, for the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheSummary {
    pub location: String,
    /// This pipeline identity's folder.
    pub identity: String,
    /// Parts read.
    pub parts: u64,
    /// Parts that could not be used (torn, corrupt, unreadable), with why: their images were featurized again;
    /// and stored PCA statistics that could not be used: their rows were summarised again.
    pub ignored_parts: Vec<String>,
    /// Folders of other pipeline identities (another model, runtime or preprocessing), not used.
    pub other_identities: Vec<String>,
    /// Images recognised as unchanged from the listing alone: their bytes were not read.
    pub unread: u64,
    /// Images whose bytes were read and hashed (new or changed listing, or `--verify-cache`).
    pub hashed: u64,
    /// Images whose features came from the cache.
    pub hits: u64,
    /// Images with the same bytes as another image new in this run: featurized once.
    pub duplicates: u64,
    /// Images featurized by this run.
    pub featurized: u64,
    /// Rows this run added to the cache.
    pub added_rows: u64,
    /// Seconds the hits would have cost, at this run's featurization speed (none when nothing was featurized).
    pub saved_s: Option<f64>,
    /// Cached images whose PCA statistics came from the statistics stored in the cache: their features were
    /// not summarised again.
    #[serde(default)]
    pub pca_rows_merged: u64,
    /// Rows whose PCA statistics this run computed: new in the cache, removed from or repeated beyond the stored
    /// statistics, or summarised directly.
    #[serde(default)]
    pub pca_rows_computed: u64,
}

/// An image's listing, which identifies unchanged bytes without reading them: its path and size, with its
/// entity tag where the store gives one (so that the same bytes uploaded again are still known), else its
/// modification time.
#[derive(Debug, Clone)]
struct ListingKey {
    uri: String,
    size: u64,
    modified_ms: i64,
    etag: Option<String>,
}

impl ListingKey {
    /// `entry`'s key; under a pseudonymiser, one keyed hash of all of it, so that the cache holds no path and
    /// no size, time or ETag (the MD5 of a single-part upload) of a photo.
    fn of(entry: ImageEntry<'_>, pseudonymizer: Option<&Pseudonymizer>) -> Self {
        let key = ListingKey {
            uri: entry.uri.to_string(),
            size: entry.size,
            modified_ms: entry.modified_ms,
            etag: entry.etag.map(String::from),
        };
        match pseudonymizer {
            None => key,
            Some(p) => {
                let (etag, modified_ms) = key.stamp();
                let listing = format!("{}\0{}\0{}\0{modified_ms}", key.uri, key.size, etag.unwrap_or(""));
                ListingKey {
                    uri: p.pseudonym(&listing),
                    size: 0,
                    modified_ms: 0,
                    etag: None,
                }
            }
        }
    }

    /// What tells whether the bytes changed.
    fn stamp(&self) -> (Option<&str>, i64) {
        match &self.etag {
            Some(tag) => (Some(tag), 0),
            None => (None, self.modified_ms),
        }
    }
}

impl PartialEq for ListingKey {
    fn eq(&self, other: &Self) -> bool {
        (&self.uri, self.size, self.stamp()) == (&other.uri, other.size, other.stamp())
    }
}

impl Eq for ListingKey {}

impl std::hash::Hash for ListingKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.uri, self.size, self.stamp()).hash(state);
    }
}

/// A cache opened for one identity: its marker checked, then its parts loaded ([`FeatureCache::load`]).
pub struct FeatureCache {
    store: OutputStore,
    folder: String,
    identity: Identity,
    verify: bool,
    by_key: HashMap<ListingKey, ContentHash>,
    /// Where each content's features are: (part, row).
    by_hash: HashMap<ContentHash, (usize, usize)>,
    /// The parts read, in name order: [`Found::Cached`] points into them.
    parts: Vec<Part>,
    /// The features of parts read, as `featurize`'s result, the last used at the back: at most `kept_bytes`.
    loaded: VecDeque<(usize, ArrayRef)>,
    loaded_bytes: usize,
    kept_bytes: usize,
    /// The PCA statistics read from the cache, and every statistics file seen.
    stored: stats::Stored,
    /// The PCA statistics of the parts this run added.
    added: stats::Added,
    /// The statistics being written for the next run ([`FeatureCache::finish_stats`]).
    storing: Option<JoinHandle<Result<(), StoreError>>>,
    /// A pseudonymised run's key: listings and contents are known by keyed hashes.
    pseudonymizer: Option<Arc<Pseudonymizer>>,
    pub summary: CacheSummary,
}

/// Bytes of features a run keeps as read: a small cache is read once per run (its parts kept from loading,
/// 38 MB for the 7,392 Training images), a large one streams, each partition assembled from a few parts (parts
/// are written in manifest order, each about as large as a partition) kept as they are used. A constant, so
/// memory does not grow with the cache.
const KEPT_BYTES: usize = 64 << 20;

/// A part a run read: its file, its checksum (its name), and which of its rows hold features.
struct Part {
    file: String,
    checksum: String,
    featured: Vec<bool>,
}

/// Where an image's staged row comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found {
    /// The cache: (part, row) of [`FeatureCache::part`].
    Cached(usize, usize),
    /// The `n`-th image this run featurizes.
    Fresh(usize),
}

impl FeatureCache {
    /// Opens the cache at `location`, making it if the folder is empty or new; refuses a folder that holds
    /// something else. With `pseudonymizer`, the identity's folder is the key's own and the report does not
    /// say where the cache is.
    pub async fn open(
        location: &str,
        store: &StoreOptions,
        mut identity: Identity,
        verify: bool,
        pseudonymizer: Option<Arc<Pseudonymizer>>,
    ) -> Result<Self, JobError> {
        identity.pseudonym_key = pseudonymizer.as_ref().map(|p| p.fingerprint());
        let out = OutputStore::open(location, store)?;
        if out.exists(MARKER).await? {
            let bytes = out.get(MARKER).await?;
            let marker: Marker = serde_json::from_slice(&bytes)
                .map_err(|e| JobError::NotACache(format!("{location}: {MARKER} is not a verger cache marker ({e})")))?;
            if marker.format != FORMAT {
                return Err(JobError::NotACache(format!(
                    "{location}: {MARKER} is not a verger cache marker"
                )));
            }
            if marker.version != VERSION {
                return Err(JobError::NotACache(format!(
                    "{location} is a verger cache of format version {}; this verger reads version {VERSION}",
                    marker.version
                )));
            }
        } else if !out.is_empty().await? {
            return Err(JobError::NotACache(format!(
                "{location} holds files but no {MARKER}: it is not a verger feature cache (--cache takes a new or \
                 empty folder, or one a verger run made)"
            )));
        } else {
            let marker = Marker {
                format: FORMAT.into(),
                version: VERSION,
            };
            out.put(MARKER, serde_json::to_vec_pretty(&marker).expect("marker serializes"))
                .await?;
        }
        let folder = identity.folder();
        Ok(FeatureCache {
            summary: CacheSummary {
                location: match pseudonymizer {
                    Some(_) => "(the feature cache: not named in a pseudonymised run)".into(),
                    None => location.to_string(),
                },
                identity: folder.clone(),
                ..Default::default()
            },
            store: out,
            folder,
            identity,
            verify,
            by_key: HashMap::new(),
            by_hash: HashMap::new(),
            parts: Vec::new(),
            loaded: VecDeque::new(),
            loaded_bytes: 0,
            kept_bytes: KEPT_BYTES,
            stored: stats::Stored::default(),
            storing: None,
            added: stats::Added::default(),
            pseudonymizer,
        })
    }

    /// Reads this identity's parts, `threads` at a time, ignoring (and reporting) any that cannot be trusted,
    /// and notes the other identities present.
    pub async fn load(&mut self, threads: usize) -> Result<(), JobError> {
        let identity_file = format!("{}/identity.json", self.folder);
        if !self.store.exists(&identity_file).await? {
            let json = serde_json::to_vec_pretty(&self.identity).expect("identity serializes");
            self.store.put(&identity_file, json).await?;
        }
        let files = self.store.files("").await?;
        let others: BTreeSet<&str> = files
            .iter()
            .filter_map(|f| f.split_once('/').map(|(folder, _)| folder))
            .filter(|folder| folder.starts_with("features-") && *folder != self.folder)
            .collect();
        self.summary.other_identities = others.into_iter().map(String::from).collect();
        if !self.summary.other_identities.is_empty() {
            tracing::info!(
                other = ?self.summary.other_identities,
                "the cache holds features of other pipeline identities; not used"
            );
        }
        // Read and checked `threads` at a time, indexed in name order; their features kept up to `kept_bytes`.
        let prefix = format!("{}/part-", self.folder);
        let names: Vec<String> = files
            .iter()
            .filter(|f| f.starts_with(&prefix) && f.ends_with(".parquet"))
            .cloned()
            .collect();
        let store = self.store.clone();
        let mut reads = futures::stream::iter(names)
            .map(move |name| {
                let store = store.clone();
                async move {
                    let checked = read_checked(&store, &name).await;
                    (name, checked)
                }
            })
            .buffered(threads.max(1));
        while let Some((name, checked)) = reads.next().await {
            match checked {
                Ok((part, checksum)) => {
                    self.index(&part, checksum, name);
                    let result = as_result(&part);
                    if self.loaded_bytes + result.get_array_memory_size() <= self.kept_bytes {
                        self.keep(self.parts.len() - 1, result);
                    }
                }
                Err(why) => {
                    tracing::warn!("cache part {name} ignored: {why}; its images are featurized again");
                    self.summary.ignored_parts.push(format!("{name}: {why}"));
                }
            }
        }
        self.summary.parts = self.parts.len() as u64;
        self.load_stats(&files).await;
        Ok(())
    }

    fn index(&mut self, part: &RecordBatch, checksum: String, file: String) {
        let index = self.parts.len();
        let (keys, hashes, features) = columns(part);
        for row in 0..part.num_rows() {
            let hash: ContentHash = hashes.value(row).try_into().expect("32-byte hashes");
            self.by_key.insert(keys(row), hash);
            if features.is_valid(row) {
                self.by_hash.entry(hash).or_insert((index, row));
            }
        }
        self.parts.push(Part {
            file,
            checksum,
            featured: (0..part.num_rows()).map(|r| features.is_valid(r)).collect(),
        });
    }

    /// The features of part `part` as `featurize`'s result (no errors): kept from loading or its last use
    /// (checked then), else read again and checked against its name again, so that a part changed since the run indexed it fails the
    /// run rather than give it wrong rows.
    pub async fn part(&mut self, part: usize) -> Result<ArrayRef, JobError> {
        if let Some(at) = self.loaded.iter().position(|(p, _)| *p == part) {
            let used = self.loaded.remove(at).expect("found");
            let result = used.1.clone();
            self.loaded.push_back(used);
            return Ok(result);
        }
        let file = &self.parts[part].file;
        tracing::debug!(part, "cache part read again");
        let (batch, _) = read_checked(&self.store, file).await.map_err(|why| {
            JobError::Task(format!(
                "cache part {file} changed while this run used it ({why}); run again"
            ))
        })?;
        let result = as_result(&batch);
        self.keep(part, result.clone());
        Ok(result)
    }

    /// Keeps `part`'s features as the last used, letting go of the least recently used beyond `kept_bytes`
    /// (the one in use is kept even alone beyond it).
    fn keep(&mut self, part: usize, result: ArrayRef) {
        let size = result.get_array_memory_size();
        while self.loaded_bytes + size > self.kept_bytes {
            let Some((_, old)) = self.loaded.pop_front() else { break };
            self.loaded_bytes -= old.get_array_memory_size();
        }
        self.loaded_bytes += size;
        self.loaded.push_back((part, result));
    }

    /// Waits for the statistics this run stores for the next one ([`FeatureCache::finish_stats`]).
    async fn stored_stats(&mut self) -> Result<(), JobError> {
        match self.storing.take() {
            Some(task) => Ok(task.await.map_err(JobError::task)??),
            None => Ok(()),
        }
    }

    /// What the run did with the cache, once the statistics it stores are written.
    pub async fn finish(mut self) -> Result<CacheSummary, JobError> {
        self.stored_stats().await?;
        Ok(self.summary)
    }

    /// Where the cache holds the features of `hash`: (part, row) of [`FeatureCache::part`].
    pub fn position(&self, hash: &ContentHash) -> Option<(usize, usize)> {
        self.by_hash.get(hash).copied()
    }

    /// The content hashes of the images at `rows`: from the listing when unchanged (unless verifying), else
    /// read and hashed, `threads` at a time. An unreadable image has none (featurizing it reports why).
    pub async fn hashes(
        &mut self,
        images: &ImageList,
        rows: &[usize],
        store: &StoreOptions,
        threads: usize,
    ) -> Result<Vec<Option<ContentHash>>, JobError> {
        let known: Vec<Option<ContentHash>> = rows
            .iter()
            .map(|&i| match self.verify {
                true => None,
                false => self
                    .by_key
                    .get(&ListingKey::of(images.get(i), self.pseudonymizer.as_deref()))
                    .copied(),
            })
            .collect();
        self.summary.unread += known.iter().filter(|h| h.is_some()).count() as u64;
        let to_read: Vec<(usize, String)> = rows
            .iter()
            .zip(&known)
            .enumerate()
            .filter(|(_, (_, hash))| hash.is_none())
            .map(|(at, (&i, _))| (at, images.get(i).uri.to_string()))
            .collect();
        self.summary.hashed += to_read.len() as u64;
        let read: Vec<(usize, Option<ContentHash>)> = futures::stream::iter(to_read)
            .map(|(at, uri)| {
                let (store, pseudonymizer) = (store.clone(), self.pseudonymizer.clone());
                async move {
                    let hash = tokio::task::spawn_blocking(move || {
                        crate::io::source::read(&uri, &store)
                            .ok()
                            .map(|bytes| match pseudonymizer {
                                Some(p) => p.keyed_hash(&bytes),
                                None => ContentHash::from(Sha256::digest(bytes)),
                            })
                    })
                    .await
                    .map_err(JobError::task)?;
                    Ok::<_, JobError>((at, hash))
                }
            })
            .buffer_unordered(threads.max(1) * 2)
            .try_collect()
            .await?;
        let mut hashes = known;
        for (at, hash) in read {
            hashes[at] = hash;
        }
        Ok(hashes)
    }

    /// Where each image's row comes from, and which images to featurize (positions in `hashes`, first
    /// occurrence of each content).
    pub fn resolve(&mut self, hashes: &[Option<ContentHash>]) -> (Vec<Found>, Vec<usize>) {
        let mut found = Vec::with_capacity(hashes.len());
        let mut fresh = Vec::new();
        let mut fresh_by_hash: HashMap<ContentHash, usize> = HashMap::new();
        for (at, hash) in hashes.iter().enumerate() {
            let cached = hash.and_then(|h| self.by_hash.get(&h).copied());
            found.push(match (cached, hash) {
                (Some((part, row)), _) => {
                    self.summary.hits += 1;
                    Found::Cached(part, row)
                }
                (None, Some(h)) if fresh_by_hash.contains_key(h) => {
                    self.summary.duplicates += 1;
                    Found::Fresh(fresh_by_hash[h])
                }
                (None, hash) => {
                    if let Some(h) = hash {
                        fresh_by_hash.insert(*h, fresh.len());
                    }
                    fresh.push(at);
                    Found::Fresh(fresh.len() - 1)
                }
            });
        }
        self.summary.featurized += fresh.len() as u64;
        (found, fresh)
    }

    /// Adds a part: each row is an image's listing, its content hash and, when featurized by this run, its
    /// `featurize` result (rows that failed are not cached). Only what the cache lacks is added (features once
    /// per content, listings that point to them); returns the rows added.
    pub async fn add(
        &mut self,
        rows: impl IntoIterator<Item = (ImageEntry<'_>, ContentHash, Option<(&StructArray, usize)>)>,
    ) -> Result<u64, JobError> {
        let mut keys = Vec::new();
        let mut hashes = Vec::new();
        let mut features = Vec::new();
        for (entry, hash, result) in rows {
            let key = ListingKey::of(entry, self.pseudonymizer.as_deref());
            let values = match result {
                Some((result, row)) => match featurized(result, row) {
                    Some(values) => Some(values),
                    None => continue, // failed: featurized again next time, and reported again
                },
                None => None,
            };
            let known = self.by_hash.contains_key(&hash);
            let listed = self.by_key.get(&key) == Some(&hash);
            // Features are stored once per content; other listings of it only point to them.
            let values = if known { None } else { values };
            if values.is_none() && (listed || !known) {
                continue;
            }
            keys.push(key);
            hashes.push(hash);
            features.push(values.map(|v| v.as_primitive::<Float32Type>().values().to_vec()));
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let batch = part_batch(&keys, &hashes, &features)?;
        let checksum = checksum(&batch);
        let name = format!("{}/part-{checksum}.parquet", self.folder);
        let rows = self
            .store
            .write_batches(&name, part_schema(), std::slice::from_ref(&batch))
            .await?;
        self.summary.added_rows += rows;
        self.index(&batch, checksum, name);
        let part = self.parts.len() - 1;
        let result = as_result(&batch);
        self.add_stats(part, &result);
        self.keep(part, result);
        Ok(rows)
    }
}

/// The features of row `row` of a `featurize` result, none when that image failed.
pub fn featurized(result: &StructArray, row: usize) -> Option<ArrayRef> {
    let values = result.column(0).as_list::<i32>();
    (result.column(1).is_null(row) && values.is_valid(row)).then(|| values.value(row))
}

fn part_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("modified_ms", DataType::Int64, false),
        Field::new("sha256", DataType::FixedSizeBinary(32), false),
        Field::new(field::FEATURES, features_type(), true),
        // Added after the first parts were written: a part without it has no entity tags.
        Field::new("etag", DataType::Utf8, true),
    ]))
}

fn part_batch(
    keys: &[ListingKey],
    hashes: &[ContentHash],
    features: &[Option<Vec<f32>>],
) -> Result<RecordBatch, JobError> {
    use datafusion::arrow::array::{Float32Builder, ListBuilder};
    let mut values = ListBuilder::new(Float32Builder::new()).with_field(match features_type() {
        DataType::List(item) => item,
        _ => unreachable!("features are a list"),
    });
    for row in features {
        match row {
            Some(row) => {
                values.values().append_slice(row);
                values.append(true);
            }
            None => values.append(false),
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(keys.iter().map(|k| k.uri.as_str()))),
        Arc::new(UInt64Array::from_iter_values(keys.iter().map(|k| k.size))),
        Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| k.modified_ms))),
        Arc::new(FixedSizeBinaryArray::try_from_iter(hashes.iter())?),
        Arc::new(values.finish()),
        Arc::new(StringArray::from_iter(keys.iter().map(|k| k.etag.as_deref()))),
    ];
    Ok(RecordBatch::try_new(part_schema(), columns)?)
}

/// A part's columns: listing key by row, content hashes, features.
fn columns(part: &RecordBatch) -> (impl Fn(usize) -> ListingKey + '_, &FixedSizeBinaryArray, &dyn Array) {
    let uris = part.column(0).as_string::<i32>();
    let sizes = part.column(1).as_primitive::<UInt64Type>();
    let modified = part.column(2).as_primitive::<Int64Type>();
    let etags = part.column(5).as_string::<i32>();
    let keys = move |row: usize| ListingKey {
        uri: uris.value(row).to_string(),
        size: sizes.value(row),
        modified_ms: modified.value(row),
        etag: etags.is_valid(row).then(|| etags.value(row).to_string()),
    };
    (keys, part.column(3).as_fixed_size_binary(), part.column(4).as_ref())
}

/// The SHA-256 of a part's rows, which names it: a part whose rows do not hash to its name is corrupt.
fn checksum(part: &RecordBatch) -> String {
    let (keys, hashes, features) = columns(part);
    let features = features.as_list::<i32>();
    let offsets = features.value_offsets();
    let values = features.values().as_primitive::<Float32Type>().values();
    let value_bytes = values.inner().as_slice();
    let mut hasher = Sha256::new();
    for row in 0..part.num_rows() {
        let key = keys(row);
        hasher.update((key.uri.len() as u64).to_le_bytes());
        hasher.update(key.uri.as_bytes());
        hasher.update(key.size.to_le_bytes());
        hasher.update(key.modified_ms.to_le_bytes());
        // Parts written before entity tags hash as they did.
        if let Some(tag) = &key.etag {
            hasher.update(b"etag");
            hasher.update((tag.len() as u64).to_le_bytes());
            hasher.update(tag.as_bytes());
        }
        hasher.update(hashes.value(row));
        if features.is_valid(row) {
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            hasher.update(((end - start) as u64).to_le_bytes());
            // The values' little-endian bytes, in one update where memory holds them so.
            match cfg!(target_endian = "little") {
                true => hasher.update(&value_bytes[start * 4..end * 4]),
                false => values[start..end].iter().for_each(|v| hasher.update(v.to_le_bytes())),
            }
        } else {
            hasher.update(u64::MAX.to_le_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

/// A part's rows and its checksum (its name).
type Checked = (RecordBatch, String);

/// The part `name` read and checked against its name (in a blocking task: decoding and hashing take a while).
async fn read_checked(store: &OutputStore, name: &str) -> Result<Checked, String> {
    let bytes = store.get(name).await.map_err(|e| e.to_string())?;
    let owned = name.to_string();
    tokio::task::spawn_blocking(move || read_part(&owned, bytes))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// A part's features as `featurize`'s result (no errors).
fn as_result(part: &RecordBatch) -> ArrayRef {
    let DataType::Struct(fields) = result_type() else {
        unreachable!("featurize returns a struct")
    };
    let rows = part.num_rows();
    Arc::new(StructArray::new(
        fields,
        vec![
            part.column(4).clone(),
            new_null_array(&DataType::Utf8, rows),
            new_null_array(&DataType::Utf8, rows),
        ],
        None,
    ))
}

/// A part read whole and checked against its name.
fn read_part(name: &str, bytes: Bytes) -> Result<Checked, String> {
    let batch = decode_parquet(bytes).map_err(|e| format!("unreadable ({e})"))?;
    let mut columns = batch.columns().to_vec();
    if columns.len() == part_schema().fields().len() - 1 {
        columns.push(new_null_array(&DataType::Utf8, batch.num_rows()));
    }
    let batch = RecordBatch::try_new(part_schema(), columns).map_err(|e| format!("not a cache part ({e})"))?;
    let expected = name
        .rsplit_once("part-")
        .and_then(|(_, rest)| rest.strip_suffix(".parquet"))
        .unwrap_or_default();
    match checksum(&batch) == expected {
        true => Ok((batch, expected.to_string())),
        false => Err("its rows do not match its name (corrupt)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn entry(uri: &str, size: u64) -> ImageEntry<'_> {
        ImageEntry {
            uri,
            label: "l",
            size,
            modified_ms: 7,
            etag: None,
        }
    }

    pub(super) fn identity() -> Identity {
        Identity {
            model_sha256: "ab".into(),
            preprocess_version: 1,
            runtime: "libonnxruntime.so.1".into(),
            provider: "cpu".into(),
            precision: "fp32".into(),
            pseudonym_key: None,
        }
    }

    /// The cache at `location`, opened and loaded keeping at most `kept_bytes` of features.
    async fn loaded(location: &str, kept_bytes: usize) -> FeatureCache {
        let mut cache = FeatureCache::open(location, &StoreOptions::default(), identity(), false, None)
            .await
            .unwrap();
        cache.kept_bytes = kept_bytes;
        cache.load(1).await.unwrap();
        cache
    }

    pub(super) fn result(features: &[Option<Vec<f32>>]) -> StructArray {
        let keys: Vec<ListingKey> = (0..features.len())
            .map(|i| ListingKey::of(entry(&i.to_string(), 1), None))
            .collect();
        let hashes = vec![[0u8; 32]; features.len()];
        as_result(&part_batch(&keys, &hashes, features).unwrap())
            .as_struct()
            .clone()
    }

    #[tokio::test]
    async fn parts_round_trip_and_torn_or_foreign_ones_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let location = tmp.path().join("cache");
        let location = location.to_str().unwrap();
        let store = StoreOptions::default();
        let mut cache = FeatureCache::open(location, &store, identity(), false, None)
            .await
            .unwrap();
        cache.load(1).await.unwrap();
        let features = result(&[Some(vec![1.0, 2.5]), Some(vec![-0.0, 3.0])]);
        let (a, b) = (entry("file:///a.jpg", 10), entry("file:///b.jpg", 20));
        let added = cache
            .add([(a, [1; 32], Some((&features, 0))), (b, [2; 32], Some((&features, 1)))])
            .await
            .unwrap();
        assert_eq!(added, 2);

        let reopen = |identity: Identity| async move {
            let mut cache = FeatureCache::open(location, &StoreOptions::default(), identity, false, None)
                .await
                .unwrap();
            cache.load(1).await.unwrap();
            cache
        };
        let mut again = reopen(identity()).await;
        assert_eq!(again.summary.parts, 1);
        let images = ImageList::from_iter([a, b]);
        let hashes = again.hashes(&images, &[1, 0], &store, 1).await.unwrap();
        assert_eq!(hashes, vec![Some([2; 32]), Some([1; 32])]);
        assert_eq!(again.summary.unread, 2);
        let (found, fresh) = again.resolve(&[Some([2; 32]), Some([9; 32]), Some([9; 32]), None]);
        assert_eq!(
            found,
            vec![Found::Cached(0, 1), Found::Fresh(0), Found::Fresh(0), Found::Fresh(1)]
        );
        assert_eq!(fresh, vec![1, 3]);
        let cached = again.part(0).await.unwrap();
        let cached = cached.as_struct().column(0).as_list::<i32>().value(1);
        assert_eq!(
            cached.as_primitive::<Float32Type>().values().to_vec(),
            vec![-0.0f32, 3.0]
        );

        // Another identity sees none of it, and is told the other is there.
        let mut other = identity();
        other.preprocess_version = 2;
        let other = reopen(other).await;
        assert_eq!((other.summary.parts, other.summary.other_identities.len()), (0, 1));

        // A torn part and one whose rows were changed are ignored.
        let part = std::fs::read_dir(tmp.path().join("cache").join(identity().folder()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "parquet"))
            .unwrap();
        let bytes = std::fs::read(&part).unwrap();
        std::fs::write(&part, &bytes[..bytes.len() / 2]).unwrap();
        let torn = reopen(identity()).await;
        assert_eq!(torn.summary.parts, 0);
        assert!(
            torn.summary.ignored_parts[0].contains("unreadable"),
            "{:?}",
            torn.summary.ignored_parts
        );
        let renamed = part.with_file_name(format!("part-{}.parquet", "0".repeat(64)));
        std::fs::write(&part, &bytes).unwrap();
        std::fs::rename(&part, &renamed).unwrap();
        let corrupt = reopen(identity()).await;
        assert!(
            corrupt.summary.ignored_parts[0].contains("corrupt"),
            "{:?}",
            corrupt.summary.ignored_parts
        );
    }

    #[tokio::test]
    async fn an_entity_tag_recognises_the_same_bytes_uploaded_again() {
        let tmp = tempfile::tempdir().unwrap();
        let location = tmp.path().to_str().unwrap();
        let store = StoreOptions::default();
        let mut cache = FeatureCache::open(location, &store, identity(), false, None)
            .await
            .unwrap();
        cache.load(1).await.unwrap();
        let features = result(&[Some(vec![1.0])]);
        let tagged = |modified_ms, etag| ImageEntry {
            modified_ms,
            etag: Some(etag),
            ..entry("s3://b/a.jpg", 10)
        };
        cache
            .add([(tagged(1, "\"e1\""), [1; 32], Some((&features, 0)))])
            .await
            .unwrap();
        let mut again = FeatureCache::open(location, &store, identity(), false, None)
            .await
            .unwrap();
        again.load(2).await.unwrap();
        // Uploaded again (a new modification time, the same tag): known without reading; a new tag is not.
        let images = ImageList::from_iter([tagged(99, "\"e1\"")]);
        assert_eq!(
            again.hashes(&images, &[0], &store, 1).await.unwrap(),
            vec![Some([1; 32])]
        );
        let images = ImageList::from_iter([tagged(1, "\"e2\"")]);
        assert_eq!(again.hashes(&images, &[0], &store, 1).await.unwrap(), vec![None]);
        // Without tags, the modification time decides.
        let features = result(&[Some(vec![2.0])]);
        again
            .add([(entry("file:///x.jpg", 10), [2; 32], Some((&features, 0)))])
            .await
            .unwrap();
        let at = |modified_ms| {
            ImageList::from_iter([ImageEntry {
                modified_ms,
                ..entry("file:///x.jpg", 10)
            }])
        };
        assert_eq!(
            again.hashes(&at(7), &[0], &store, 1).await.unwrap(),
            vec![Some([2; 32])]
        );
        assert_eq!(again.hashes(&at(99), &[0], &store, 1).await.unwrap(), vec![None]);
        assert_eq!((again.summary.unread, again.summary.hashed), (2, 2));
    }

    /// Part names stay what they were when each value was hashed on its own: caches written before keep
    /// their names.
    #[test]
    fn a_part_s_checksum_is_its_rows_hashed_value_by_value() {
        let keys = [
            ListingKey::of(entry("file:///a.jpg", 3), None),
            ListingKey::of(entry("file:///b.jpg", 4), None),
        ];
        let features = [Some(vec![1.5f32, -0.0, 7.25]), None];
        let batch = part_batch(&keys, &[[5; 32], [6; 32]], &features).unwrap();
        // A slice of the batch, so that the features' offsets do not start at zero.
        let both = datafusion::arrow::compute::concat_batches(&batch.schema(), [&batch, &batch]).unwrap();
        let second = both.slice(2, 2);
        let mut expected = Sha256::new();
        for (key, (hash, values)) in keys.iter().zip([[5u8; 32], [6; 32]].iter().zip(&features)) {
            expected.update((key.uri.len() as u64).to_le_bytes());
            expected.update(key.uri.as_bytes());
            expected.update(key.size.to_le_bytes());
            expected.update(key.modified_ms.to_le_bytes());
            expected.update(hash);
            match values {
                Some(values) => {
                    expected.update((values.len() as u64).to_le_bytes());
                    values.iter().for_each(|v| expected.update(v.to_le_bytes()));
                }
                None => expected.update(u64::MAX.to_le_bytes()),
            }
        }
        let expected = hex::encode(expected.finalize());
        assert_eq!(checksum(&batch), expected);
        assert_eq!(checksum(&second), expected);
    }

    /// Features are read again when used: a part whose bytes changed since the run indexed it fails the run,
    /// never gives it other rows.
    #[tokio::test]
    async fn a_part_changed_while_a_run_uses_it_fails_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let location = tmp.path().to_str().unwrap();
        let mut cache = loaded(location, KEPT_BYTES).await;
        let features = result(&[Some(vec![1.0, 2.0])]);
        cache
            .add([(entry("file:///a.jpg", 1), [1; 32], Some((&features, 0)))])
            .await
            .unwrap();
        let mut again = loaded(location, 0).await;
        assert!(
            again.loaded.is_empty(),
            "features beyond the budget are not kept from loading"
        );
        let file = tmp.path().join(&again.parts[0].file);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
        let refused = again.part(0).await.err().unwrap().to_string();
        assert!(refused.contains("changed while this run used it"), "{refused}");
        std::fs::write(&file, &bytes).unwrap();
        let features = again.part(0).await.unwrap();
        assert_eq!(features.len(), 1);
    }

    /// A small cache is read once per run: its parts, checked when loaded, serve the run without being read
    /// again; beyond the budget, the least recently used are let go.
    #[tokio::test]
    async fn a_small_cache_is_read_once_and_a_large_one_streams() {
        let tmp = tempfile::tempdir().unwrap();
        let location = tmp.path().to_str().unwrap();
        let mut cache = loaded(location, KEPT_BYTES).await;
        for seed in 1..=3u8 {
            let features = result(&[Some(vec![f32::from(seed); 2])]);
            let uri = format!("file:///{seed}.jpg");
            cache
                .add([(entry(&uri, 1), [seed; 32], Some((&features, 0)))])
                .await
                .unwrap();
        }
        let mut again = loaded(location, KEPT_BYTES).await;
        assert_eq!(again.loaded.len(), 3, "a small cache is kept from loading");
        for part in &again.parts {
            std::fs::remove_file(tmp.path().join(&part.file)).unwrap();
        }
        for part in 0..3 {
            assert_eq!(again.part(part).await.unwrap().len(), 1, "part {part} read again");
        }

        let one = again.loaded[0].1.get_array_memory_size();
        again.kept_bytes = 2 * one;
        let extra = again.loaded[0].1.clone();
        again.keep(7, extra);
        let kept: Vec<usize> = again.loaded.iter().map(|(p, _)| *p).collect();
        assert_eq!(kept, [2, 7], "the least recently used let go");
        assert_eq!(again.loaded_bytes, 2 * one);
    }

    #[tokio::test]
    async fn a_folder_of_other_files_is_not_a_cache() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("holiday.jpg"), b"x").unwrap();
        let refused = FeatureCache::open(
            tmp.path().to_str().unwrap(),
            &StoreOptions::default(),
            identity(),
            false,
            None,
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(refused.contains("not a verger feature cache"), "{refused}");
    }
}
