//! `verger quality`: what a finished run's images are like as a dataset, before a classifier is trusted on
//! them: exact duplicates (same bytes), near duplicates (cosine similarity of the 1280-d features above a
//! threshold), leakage into other runs (`--against`: which of this run's images have a near twin there),
//! outliers (a kNN-distance score) and likely wrong labels (confident learning on out-of-fold probabilities of
//! verger's softmax on the PCA features, and the neighbours' labels).
//!
//! Written into the run: `quality/images.parquet` (a row per image), `quality/leakage.parquet` (a row per
//! image and other run), `quality/summary.json`, and a section of `report.json` and `report.html`. The numbers
//! are `verger-classify`'s ([`verger_classify::knn`], [`verger_classify::label_issues`]): exact kNN while the
//! pairs of images stay within [`knn::EXACT_MAX_PAIRS`] (28 s for 7,432 images on two cores, hashing and
//! folds included), an HNSW index beyond, whose recall@10 the summary reports (docs/quality.md). It runs in
//! the calling process, also for runs a cluster made: see docs/quality.md for why.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use verger_classify::knn::{self, Method, Metric, Neighbours, Search};
use verger_classify::{label_issues, TrainOptions};

use crate::classify::run_rows::{self, RunRows};
use crate::classify::ClassifyError;
use crate::io::claim::OutputClaim;
use crate::io::output::{with_metadata, OutputStore};
use crate::io::source;
use crate::io::store::StoreOptions;
use crate::layout;
use crate::report::{page, Report};
use crate::saved_pca::sha256_hex;

/// Near duplicates: cosine similarity of the features at or above this. Chosen from the curve measured on
/// the shared Fruits-360 splits (docs/quality.md): JPEG re-encodings (quality 90) of Training photos keep
/// 0.930 to 0.983 of their original's features, so 0.93 finds 19 of 20 of them, 0.95 only 13.
pub const DEFAULT_THRESHOLD: f64 = 0.93;
pub const DEFAULT_NEIGHBOURS: usize = 10;
pub const DEFAULT_FOLDS: usize = 5;
/// Suspects and outliers listed in the summary (every image's scores are in `images.parquet`).
pub const DEFAULT_TOP: usize = 100;
/// Below this probability of its own label, an image whose neighbours mostly carry another label is a
/// suspect too.
const SUSPECT_PROBABILITY: f64 = 0.5;
/// Groups of duplicates listed in the summary.
const EXAMPLES: usize = 20;
/// The nearest-similarity histogram's bins: coarse below 0.9, by hundredths above, where near twins and
/// thresholds are.
const BIN_EDGES: [f64; 20] = [
    -1.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0,
];
/// Suspects, outliers and duplicate groups the report page lists.
pub const PAGE_ROWS: usize = 20;
/// The longest side of a thumbnail on the page, in pixels.
const THUMBNAIL_SIDE: usize = 64;

pub const IMAGES: &str = "quality/images.parquet";
pub const LEAKAGE: &str = "quality/leakage.parquet";
pub const SUMMARY: &str = "quality/summary.json";
/// With `--thumbnails`: the page's images as `data:` URIs, by path.
pub const THUMBNAILS: &str = "quality/thumbnails.json";

/// What to check and how.
#[derive(Debug, Clone)]
pub struct QualityConfig {
    /// The finished run to check (folder or `s3://`); its output receives `quality/`.
    pub run: String,
    /// Other finished runs of the same model and PCA basis, to find this run's near twins in (leakage).
    pub against: Vec<String>,
    /// Cosine similarity at or above which two images are near duplicates, in (0, 1].
    pub threshold: f64,
    /// Neighbours each image is compared with (outlier score, label disagreement, near-duplicate groups).
    pub neighbours: usize,
    /// Folds of the out-of-fold probabilities, at least 2.
    pub folds: usize,
    /// Suspects and outliers listed in the summary.
    pub top: usize,
    /// Embed small JPEGs of the images the page lists in the page. Off by default: photos may be personal
    /// data, and the page travels further than the images.
    pub thumbnails: bool,
    /// Exact or approximate neighbours; by default exact up to [`knn::EXACT_MAX_PAIRS`] pairs of images.
    pub search: Search,
    pub store: StoreOptions,
}

impl QualityConfig {
    pub fn new(run: impl Into<String>) -> Self {
        QualityConfig {
            run: run.into(),
            against: Vec::new(),
            threshold: DEFAULT_THRESHOLD,
            neighbours: DEFAULT_NEIGHBOURS,
            folds: DEFAULT_FOLDS,
            top: DEFAULT_TOP,
            thumbnails: false,
            search: Search::Auto,
            store: StoreOptions::default(),
        }
    }

    /// Refuses options outside their ranges, saying which.
    pub fn check(&self) -> Result<(), QualityError> {
        check_threshold(self.threshold).map_err(QualityError::Options)?;
        if self.neighbours == 0 {
            return Err(QualityError::Options("--neighbours must be at least 1".into()));
        }
        if self.folds < 2 {
            return Err(QualityError::Options(format!(
                "--folds must be at least 2 (out-of-fold probabilities need a fold to hold out), not {}",
                self.folds
            )));
        }
        Ok(())
    }
}

/// A similarity threshold in (0, 1], or why not.
pub fn check_threshold(threshold: f64) -> Result<f64, String> {
    match threshold > 0.0 && threshold <= 1.0 {
        true => Ok(threshold),
        false => Err(format!(
            "a similarity threshold must be in (0, 1] (cosine similarity of the features), not {threshold}"
        )),
    }
}

#[derive(Debug, Error)]
pub enum QualityError {
    /// Options outside their ranges.
    #[error("{0}")]
    Options(String),
    /// A run that cannot be read or checked, or runs that do not belong together.
    #[error(transparent)]
    Run(#[from] ClassifyError),
}

impl From<crate::io::StoreError> for QualityError {
    fn from(e: crate::io::StoreError) -> Self {
        QualityError::Run(e.into())
    }
}

impl From<datafusion::arrow::error::ArrowError> for QualityError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        QualityError::Run(e.into())
    }
}

/// An image, by path and label.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    pub path: String,
    pub label: String,
}

/// Images with the same bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Duplicates {
    /// Groups of two or more images with the same bytes.
    pub groups: u64,
    /// Images in those groups beyond the first of each: what removing the copies would remove.
    pub copies: u64,
    /// Groups whose images carry more than one label.
    pub conflicting_labels: u64,
    /// The first groups, largest first.
    pub examples: Vec<Vec<Image>>,
}

/// How this run's images relate to another run's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leakage {
    pub against: String,
    /// This run's images.
    pub rows: u64,
    /// Those with an image of the other run at or above the threshold.
    pub leaked: u64,
    pub share: f64,
    /// Of the leaked, those whose twin carries the same label.
    pub same_label: u64,
    /// How the nearest images there were found.
    #[serde(default = "exact")]
    pub search: Method,
}

fn exact() -> Method {
    Method::Exact
}

/// An image that is far from the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outlier {
    pub path: String,
    pub label: String,
    /// 1 − the mean cosine similarity to its nearest neighbours: higher is further.
    pub score: f64,
}

/// An image whose label is likely wrong.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suspect {
    pub path: String,
    pub label: String,
    /// The most probable label out of fold.
    pub suggested: String,
    /// The out-of-fold probability of its given label: lower is more suspect.
    pub score: f64,
    /// Confident learning counts it off the diagonal.
    pub confident_learning: bool,
    /// The share of its nearest neighbours labelled otherwise.
    pub neighbours_disagree: f64,
}

/// Seconds a check's numbers took (the hashes and the files aside).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Seconds {
    /// The neighbours within the run (and building the index, where there is one).
    pub neighbours: f64,
    /// The nearest images in the `--against` runs.
    pub leakage: f64,
    /// The out-of-fold probabilities (`--folds` softmax fits).
    pub probabilities: f64,
}

/// Images whose nearest neighbour's similarity falls in `[from, to)` (the last bin includes 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bin {
    pub from: f64,
    pub to: f64,
    pub images: u64,
}

/// What `verger quality` found, as `quality/summary.json` and the report's `quality`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QualitySummary {
    pub rows: u64,
    pub threshold: f64,
    pub neighbours: usize,
    /// How the neighbours within the run were found: exactly, or by an index with its recall@10.
    #[serde(default = "exact")]
    pub search: Method,
    /// Seconds the numbers took, by part.
    #[serde(default)]
    pub seconds: Seconds,
    /// None when the run's paths are pseudonymised: its images cannot be read back.
    pub exact_duplicates: Option<Duplicates>,
    /// Images whose bytes could not be read again for their hash (moved or deleted since the run).
    pub unreadable: u64,
    /// Groups of images linked by similarities at or above the threshold.
    pub near_duplicate_groups: u64,
    /// Images with another image of this run at or above the threshold.
    pub near_duplicate_images: u64,
    /// Near-duplicate groups whose images carry more than one label.
    pub near_duplicate_conflicts: u64,
    /// The distribution of each image's nearest-neighbour similarity.
    pub nearest_similarity: Vec<Bin>,
    pub leakage: Vec<Leakage>,
    /// The images furthest from their neighbours, furthest first.
    pub outliers: Vec<Outlier>,
    /// Images confident learning calls label issues.
    pub label_issues: u64,
    /// Images whose label is likely wrong: the label issues first, then images the classifier and the
    /// neighbours both doubt; lowest probability of the given label first.
    pub suspects: Vec<Suspect>,
    /// Images among the suspects in `images.parquet` (the list above is cut at `--top`).
    pub label_suspects: u64,
    pub folds: usize,
    /// Where every image's scores are, relative to the run.
    pub details: String,
    /// The page shows thumbnails (`--thumbnails`).
    #[serde(default)]
    pub thumbnails: bool,
}

/// Checks `config.run` and writes what it found into it.
pub async fn check(config: &QualityConfig) -> Result<QualitySummary, QualityError> {
    config.check()?;
    let run = &config.run;
    let nothing = || -> QualityError {
        ClassifyError::Run {
            run: run.clone(),
            reason: "has no featurized images to check (every image failed: see its report)".into(),
        }
        .into()
    };
    let out = OutputStore::open(run, &config.store)?;
    // A run in which every image failed has a report saying so, and no result to read; a folder without a
    // report is refused by reading its rows (not a finished run).
    let report = match out.exists(layout::REPORT).await? {
        true => Some(run_report(&out, run).await?),
        false => None,
    };
    if report.as_ref().is_some_and(|r| r.counts.featurized == 0) {
        return Err(nothing());
    }
    let rows = Arc::new(run_rows::read(run, &config.store, true).await?);
    let report = match report {
        Some(report) => report,
        None => run_report(&out, run).await?,
    };
    if rows.is_empty() {
        return Err(nothing());
    }
    if config.thumbnails && report.pseudonymized {
        return Err(QualityError::Options(format!(
            "--thumbnails: {run} holds pseudonymised paths, so its images cannot be shown (nor should they be)"
        )));
    }
    let mut others = Vec::new();
    for other in &config.against {
        let o = run_rows::read(other, &config.store, true).await?;
        belongs_with(run, &rows, other, &o)?;
        others.push(Arc::new(o));
    }
    let classes = rows.classes();

    // Hashes first (I/O), while nothing large is held yet besides the rows.
    let hashes = match report.pseudonymized {
        true => None,
        false => Some(hash_images(&rows.paths, &config.store).await?),
    };
    let (c, mine, theirs) = (config.clone(), rows.clone(), others.clone());
    let (found, summary, leaks) = tokio::task::spawn_blocking(move || numbers(&c, &mine, &theirs, hashes))
        .await
        .map_err(task)??;
    let thumbnails = match config.thumbnails {
        true => Some(thumbnails(&summary, &config.store).await?),
        false => None,
    };

    let claim = OutputClaim::take(&out, crate::config::DEFAULT_LEASE_TTL_S).await?;
    let written = async {
        let images = found.images(&rows, &classes)?;
        out.write_batches(IMAGES, images.schema(), &[images]).await?;
        let leakage = leakage_rows(&rows, &config.against, &others, &leaks, config.threshold)?;
        out.write_batches(LEAKAGE, leakage.schema(), &[leakage]).await?;
        out.put(
            SUMMARY,
            serde_json::to_vec_pretty(&summary).expect("a summary serializes"),
        )
        .await?;
        match &thumbnails {
            Some(t) => {
                out.put(THUMBNAILS, serde_json::to_vec(t).expect("strings serialize"))
                    .await?
            }
            // An earlier check's thumbnails go with the opt-in.
            None if out.exists(THUMBNAILS).await? => out.remove(THUMBNAILS).await?,
            None => {}
        }
        // Read again under the claim: an evaluation may have added to it meanwhile.
        let mut report = run_report(&out, run).await?;
        report.quality = Some(summary.clone());
        claim.confirm().await?;
        out.put(layout::REPORT, report.to_json()).await?;
        page::write(&out, &report).await.map_err(ClassifyError::Job)?;
        Ok::<_, QualityError>(())
    }
    .await;
    claim.release().await;
    written?;
    Ok(summary)
}

/// What a check finds in rows in memory (no I/O: the hashes are read before): the neighbours within the run
/// and in the other runs, the out-of-fold probabilities, and what they show.
fn numbers(
    config: &QualityConfig,
    rows: &RunRows,
    others: &[Arc<RunRows>],
    hashes: Option<Vec<Option<String>>>,
) -> Result<(Found, QualitySummary, Vec<Neighbours>), QualityError> {
    let classes = rows.classes();
    let features = rows.features.as_deref().expect("read with features");
    let dim = features.len() / rows.len().max(1);
    let clock = std::time::Instant::now();
    let within = knn::search(
        features,
        features,
        dim,
        config.neighbours,
        true,
        Metric::Cosine,
        config.search,
    )
    .map_err(ClassifyError::Train)?;
    let neighbours = clock.elapsed().as_secs_f64();
    let leaks = others
        .iter()
        .map(|o| nearest_in(rows, o, config.search))
        .collect::<Result<Vec<_>, _>>()?;
    let leakage_seconds = clock.elapsed().as_secs_f64() - neighbours;
    let labels = rows.label_indices(&classes);
    let probabilities = match classes.len() {
        0 | 1 => None,
        n => Some(
            label_issues::out_of_fold(&rows.pca, rows.k, &labels, n, config.folds, &TrainOptions::default())
                .map_err(ClassifyError::Train)?,
        ),
    };
    let seconds = Seconds {
        neighbours,
        leakage: leakage_seconds,
        probabilities: clock.elapsed().as_secs_f64() - neighbours - leakage_seconds,
    };
    let found = Found::new(config, rows, &classes, labels, hashes, &within, probabilities);
    let mut summary = found.summary(config, rows, &classes);
    summary.search = within.method();
    summary.seconds = seconds;
    for (name, (other, nearest)) in config.against.iter().zip(others.iter().zip(&leaks)) {
        summary
            .leakage
            .push(leakage(rows, name, other, nearest, config.threshold));
    }
    Ok((found, summary, leaks))
}

/// The summary of a check of rows already in memory, without hashes or other runs, writing nothing: the
/// numbers alone, for benchmarks at sizes no test run reaches (bench/quality.py).
pub fn audit(config: &QualityConfig, rows: &RunRows) -> Result<QualitySummary, QualityError> {
    config.check()?;
    Ok(numbers(config, rows, &[], None)?.1)
}

fn task(e: tokio::task::JoinError) -> QualityError {
    QualityError::Run(ClassifyError::Job(crate::error::JobError::task(e)))
}

async fn run_report(out: &OutputStore, run: &str) -> Result<Report, QualityError> {
    Report::from_json(&out.get(layout::REPORT).await?, layout::REPORT).map_err(|reason| {
        ClassifyError::Run {
            run: run.to_string(),
            reason,
        }
        .into()
    })
}

/// Refuses another run whose features another featurizer made: their similarities compare nothing.
pub(crate) fn same_featurizer(run: &str, rows: &RunRows, other: &str, o: &RunRows) -> Result<(), ClassifyError> {
    if rows.pca_model.model_sha256 == o.pca_model.model_sha256 {
        return Ok(());
    }
    Err(ClassifyError::Mismatch(format!(
        "{run} and {other} hold features of different models (sha256 {} and {}): their similarities compare \
         nothing",
        rows.pca_model.model_sha256.as_deref().unwrap_or("unknown"),
        o.pca_model.model_sha256.as_deref().unwrap_or("unknown"),
    )))
}

/// Refuses another run whose features are not comparable with this run's: another featurizer, or another
/// PCA basis (the runs of one dataset share one: `--pca-model`).
fn belongs_with(run: &str, rows: &RunRows, other: &str, o: &RunRows) -> Result<(), ClassifyError> {
    same_featurizer(run, rows, other, o)?;
    if rows.pca_model.model != o.pca_model.model {
        return Err(ClassifyError::Mismatch(format!(
            "{run} and {other} were projected with different PCA models (pca/model.json sha256 {} and {}): \
             project one with the other's (--pca-model {other}/pca/model.json)",
            sha256_hex(&rows.pca_bytes),
            sha256_hex(&o.pca_bytes),
        )));
    }
    Ok(())
}

/// The SHA-256 of each image's bytes, None where they cannot be read now; on every core, since each read
/// blocks (a file, or an object fetched by its own request).
async fn hash_images(paths: &[String], store: &StoreOptions) -> Result<Vec<Option<String>>, QualityError> {
    // The images are read again: their buckets are held to the allowed regions as the run's were.
    if !store.allowed_regions.is_empty() {
        let locations: Vec<&str> = paths.iter().map(String::as_str).collect();
        crate::io::store::bucket_regions(&locations, store).await?;
    }
    let (paths, store) = (paths.to_vec(), store.clone());
    tokio::task::spawn_blocking(move || {
        paths
            .par_iter()
            .map(|p| match source::read(p, &store) {
                Ok(bytes) => Some(sha256_hex(&bytes)),
                Err(e) => {
                    tracing::warn!(path = p.as_str(), "not hashed: {e}");
                    None
                }
            })
            .collect()
    })
    .await
    .map_err(task)
}

/// Thumbnails of the images the page lists, as `data:` URIs by path; an image that cannot be read or decoded
/// now has none (a warning says why).
async fn thumbnails(summary: &QualitySummary, store: &StoreOptions) -> Result<BTreeMap<String, String>, QualityError> {
    use base64::Engine;
    let mut paths: Vec<String> = summary
        .suspects
        .iter()
        .take(PAGE_ROWS)
        .map(|s| s.path.clone())
        .chain(summary.outliers.iter().take(PAGE_ROWS).map(|o| o.path.clone()))
        .chain(
            summary
                .exact_duplicates
                .iter()
                .flat_map(|d| d.examples.iter().take(PAGE_ROWS).flatten().map(|i| i.path.clone())),
        )
        .collect();
    paths.sort();
    paths.dedup();
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        paths
            .par_iter()
            .filter_map(|p| {
                let made = source::read(p, &store).map_err(|e| e.to_string()).and_then(|bytes| {
                    verger_image::thumbnail_jpeg(&bytes, THUMBNAIL_SIDE, &verger_image::Limits::default())
                        .map_err(|e| e.to_string())
                });
                match made {
                    Ok(jpeg) => Some((
                        p.clone(),
                        format!(
                            "data:image/jpeg;base64,{}",
                            base64::engine::general_purpose::STANDARD.encode(jpeg)
                        ),
                    )),
                    Err(e) => {
                        tracing::warn!(path = p.as_str(), "no thumbnail: {e}");
                        None
                    }
                }
            })
            .collect()
    })
    .await
    .map_err(task)
}

/// Every image's findings.
struct Found {
    hashes: Option<Vec<Option<String>>>,
    /// Group number (from 0) of images whose bytes another image shares.
    exact_group: Vec<Option<u64>>,
    near_group: Vec<Option<u64>>,
    nearest: Vec<Option<(usize, f64)>>,
    /// Each row's label, as its index in the classes.
    labels: Vec<usize>,
    outlier: Vec<f64>,
    disagree: Vec<f64>,
    /// `classes` a row.
    probabilities: Option<Vec<f64>>,
    issue: Vec<bool>,
    suspect: Vec<bool>,
}

impl Found {
    fn new(
        config: &QualityConfig,
        rows: &RunRows,
        classes: &[String],
        labels: Vec<usize>,
        hashes: Option<Vec<Option<String>>>,
        within: &Neighbours,
        probabilities: Option<Vec<f64>>,
    ) -> Found {
        let n = rows.len();
        let exact_group = match &hashes {
            None => vec![None; n],
            Some(h) => {
                let mut by_hash: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
                for (i, hash) in h.iter().enumerate() {
                    if let Some(hash) = hash {
                        by_hash.entry(hash).or_default().push(i);
                    }
                }
                groups(n, by_hash.into_values().filter(|g| g.len() > 1))
            }
        };
        // Near-duplicate groups: the components of the graph of similarities at or above the threshold.
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for i in 0..n {
            for (j, s) in within.of(i) {
                if s >= config.threshold {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
        let mut components: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..n {
            let r = root(&mut parent, i);
            components.entry(r).or_default().push(i);
        }
        let near_group = groups(n, components.into_values().filter(|g| g.len() > 1));
        let outlier = (0..n)
            .map(|i| {
                let s: Vec<f64> = within.of(i).map(|(_, s)| s).collect();
                match s.len() {
                    0 => 0.0,
                    m => 1.0 - s.iter().sum::<f64>() / m as f64,
                }
            })
            .collect();
        let disagree: Vec<f64> = (0..n)
            .map(|i| {
                let (mut other, mut all) = (0, 0);
                for (j, _) in within.of(i) {
                    all += 1;
                    other += usize::from(rows.labels[j] != rows.labels[i]);
                }
                other as f64 / all.max(1) as f64
            })
            .collect();
        let c = classes.len();
        let issue = match &probabilities {
            Some(p) => label_issues::confident_learning(p, &labels, c),
            None => vec![false; n],
        };
        // Besides confident learning's issues: rows whose label the classifier doubts, whose best guess is
        // another label, and whose neighbours mostly carry another label.
        let suspect = (0..n)
            .map(|i| {
                issue[i]
                    || probabilities.as_ref().is_some_and(|p| {
                        let row = &p[i * c..(i + 1) * c];
                        row[labels[i]] < SUSPECT_PROBABILITY
                            && verger_classify::metrics::argmax(row) != labels[i]
                            && disagree[i] >= SUSPECT_PROBABILITY
                    })
            })
            .collect();
        Found {
            hashes,
            exact_group,
            near_group,
            nearest: (0..n).map(|i| within.nearest(i)).collect(),
            labels,
            outlier,
            disagree,
            probabilities,
            issue,
            suspect,
        }
    }

    /// The out-of-fold probability of row `i`'s own label (`classes` probabilities a row).
    fn given(&self, i: usize, classes: usize) -> Option<f64> {
        self.probabilities.as_ref().map(|p| p[i * classes + self.labels[i]])
    }

    fn suggested<'a>(&self, i: usize, classes: &'a [String]) -> Option<&'a str> {
        let c = classes.len();
        self.probabilities
            .as_ref()
            .map(|p| classes[verger_classify::metrics::argmax(&p[i * c..(i + 1) * c])].as_str())
    }

    fn summary(&self, config: &QualityConfig, rows: &RunRows, classes: &[String]) -> QualitySummary {
        let n = rows.len();
        let c = classes.len();
        let image = |i: usize| Image {
            path: rows.paths[i].clone(),
            label: rows.labels[i].clone(),
        };
        let members = |group: &[Option<u64>]| -> BTreeMap<u64, Vec<usize>> {
            let mut m: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (i, g) in group.iter().enumerate() {
                if let Some(g) = g {
                    m.entry(*g).or_default().push(i);
                }
            }
            m
        };
        let conflicts = |m: &BTreeMap<u64, Vec<usize>>| {
            m.values()
                .filter(|g| g.iter().any(|&i| rows.labels[i] != rows.labels[g[0]]))
                .count() as u64
        };
        let exact_duplicates = self.hashes.as_ref().map(|_| {
            let m = members(&self.exact_group);
            let mut examples: Vec<&Vec<usize>> = m.values().collect();
            examples.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
            Duplicates {
                groups: m.len() as u64,
                copies: m.values().map(|g| g.len() as u64 - 1).sum(),
                conflicting_labels: conflicts(&m),
                examples: examples
                    .into_iter()
                    .take(EXAMPLES)
                    .map(|g| g.iter().map(|&i| image(i)).collect())
                    .collect(),
            }
        });
        let near = members(&self.near_group);
        let mut bins: Vec<Bin> = BIN_EDGES
            .windows(2)
            .map(|w| Bin {
                from: w[0],
                to: w[1],
                images: 0,
            })
            .collect();
        for (_, s) in self.nearest.iter().flatten() {
            bins[bin_of(*s)].images += 1;
        }
        let mut by_outlier: Vec<usize> = (0..n).collect();
        by_outlier.sort_by(|&a, &b| self.outlier[b].total_cmp(&self.outlier[a]).then(a.cmp(&b)));
        let mut suspects: Vec<usize> = (0..n).filter(|&i| self.suspect[i]).collect();
        suspects.sort_by(|&a, &b| {
            self.issue[b].cmp(&self.issue[a]).then(
                self.given(a, c)
                    .unwrap_or(1.0)
                    .total_cmp(&self.given(b, c).unwrap_or(1.0))
                    .then(a.cmp(&b)),
            )
        });
        QualitySummary {
            rows: n as u64,
            threshold: config.threshold,
            neighbours: config.neighbours,
            exact_duplicates,
            unreadable: self
                .hashes
                .as_ref()
                .map_or(0, |h| h.iter().filter(|h| h.is_none()).count() as u64),
            near_duplicate_groups: near.len() as u64,
            near_duplicate_images: self
                .nearest
                .iter()
                .filter(|n| n.is_some_and(|(_, s)| s >= config.threshold))
                .count() as u64,
            near_duplicate_conflicts: conflicts(&near),
            nearest_similarity: bins,
            search: Method::Exact,
            seconds: Seconds::default(),
            leakage: Vec::new(),
            outliers: by_outlier
                .into_iter()
                .take(config.top)
                .map(|i| Outlier {
                    path: rows.paths[i].clone(),
                    label: rows.labels[i].clone(),
                    score: self.outlier[i],
                })
                .collect(),
            label_issues: self.issue.iter().filter(|&&i| i).count() as u64,
            label_suspects: suspects.len() as u64,
            suspects: suspects
                .into_iter()
                .take(config.top)
                .map(|i| Suspect {
                    path: rows.paths[i].clone(),
                    label: rows.labels[i].clone(),
                    suggested: self.suggested(i, classes).unwrap_or_default().to_string(),
                    score: self.given(i, c).unwrap_or(1.0),
                    confident_learning: self.issue[i],
                    neighbours_disagree: self.disagree[i],
                })
                .collect(),
            folds: config.folds,
            details: IMAGES.into(),
            thumbnails: config.thumbnails,
        }
    }

    /// `quality/images.parquet`: a row per image, with the classes of its probabilities in the schema's
    /// metadata (`verger.classes`, a JSON list).
    fn images(&self, rows: &RunRows, classes: &[String]) -> Result<RecordBatch, QualityError> {
        let n = rows.len();
        let c = classes.len();
        let mut probabilities = ListBuilder::new(Float64Builder::new());
        for i in 0..n {
            match &self.probabilities {
                Some(p) => {
                    probabilities.values().append_slice(&p[i * c..(i + 1) * c]);
                    probabilities.append(true);
                }
                None => probabilities.append(false),
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("sha256", DataType::Utf8, true),
            Field::new("exact_group", DataType::UInt64, true),
            Field::new("near_group", DataType::UInt64, true),
            Field::new("nearest_path", DataType::Utf8, true),
            Field::new("nearest_similarity", DataType::Float64, true),
            Field::new("outlier_score", DataType::Float64, false),
            Field::new("given_probability", DataType::Float64, true),
            Field::new("suggested_label", DataType::Utf8, true),
            Field::new("label_issue", DataType::Boolean, false),
            Field::new("neighbours_disagree", DataType::Float64, false),
            Field::new("label_suspect", DataType::Boolean, false),
            Field::new(
                "probabilities",
                DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                true,
            ),
        ]));
        let schema = with_metadata(
            &schema,
            &[(
                "verger.classes".to_string(),
                serde_json::to_string(classes).expect("names serialize"),
            )],
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(rows.paths.clone())),
            Arc::new(StringArray::from(rows.labels.clone())),
            Arc::new(StringArray::from(match &self.hashes {
                Some(h) => h.clone(),
                None => vec![None; n],
            })),
            Arc::new(UInt64Array::from(self.exact_group.clone())),
            Arc::new(UInt64Array::from(self.near_group.clone())),
            Arc::new(StringArray::from(
                self.nearest
                    .iter()
                    .map(|n| n.map(|(j, _)| rows.paths[j].clone()))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                self.nearest.iter().map(|n| n.map(|(_, s)| s)).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(self.outlier.clone())),
            Arc::new(Float64Array::from((0..n).map(|i| self.given(i, c)).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                (0..n).map(|i| self.suggested(i, classes)).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(self.issue.clone())),
            Arc::new(Float64Array::from(self.disagree.clone())),
            Arc::new(BooleanArray::from(self.suspect.clone())),
            Arc::new(probabilities.finish()),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// The histogram bin of a similarity: `[from, to)`, the last bin holding 1 (and what rounding puts above it).
fn bin_of(similarity: f64) -> usize {
    BIN_EDGES[1..]
        .partition_point(|&edge| edge <= similarity)
        .min(BIN_EDGES.len() - 2)
}

/// Numbers the groups (each a list of image indices, in order) from 0 by their first image.
fn groups(n: usize, found: impl Iterator<Item = Vec<usize>>) -> Vec<Option<u64>> {
    let mut found: Vec<Vec<usize>> = found.collect();
    found.sort_by_key(|g| g[0]);
    let mut group = vec![None; n];
    for (g, members) in found.iter().enumerate() {
        for &i in members {
            group[i] = Some(g as u64);
        }
    }
    group
}

fn leakage(rows: &RunRows, against: &str, other: &RunRows, nearest: &Neighbours, threshold: f64) -> Leakage {
    let mut leaked = 0;
    let mut same_label = 0;
    for i in 0..rows.len() {
        if let Some((j, s)) = nearest.nearest(i) {
            if s >= threshold {
                leaked += 1;
                same_label += u64::from(other.labels[j] == rows.labels[i]);
            }
        }
    }
    Leakage {
        against: against.to_string(),
        rows: rows.len() as u64,
        leaked,
        share: leaked as f64 / rows.len().max(1) as f64,
        same_label,
        search: nearest.method(),
    }
}

/// `quality/leakage.parquet`: for each other run, each image's nearest image there.
fn leakage_rows(
    rows: &RunRows,
    against: &[String],
    others: &[Arc<RunRows>],
    nearest: &[Neighbours],
    threshold: f64,
) -> Result<RecordBatch, QualityError> {
    let (mut path, mut label, mut run, mut twin, mut twin_label, mut similarity, mut leaked) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((name, other), found) in against.iter().zip(others).zip(nearest) {
        for i in 0..rows.len() {
            let best = found.nearest(i);
            path.push(rows.paths[i].clone());
            label.push(rows.labels[i].clone());
            run.push(name.clone());
            twin.push(best.map(|(j, _)| other.paths[j].clone()));
            twin_label.push(best.map(|(j, _)| other.labels[j].clone()));
            similarity.push(best.map(|(_, s)| s));
            leaked.push(best.is_some_and(|(_, s)| s >= threshold));
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("against", DataType::Utf8, false),
        Field::new("nearest_path", DataType::Utf8, true),
        Field::new("nearest_label", DataType::Utf8, true),
        Field::new("similarity", DataType::Float64, true),
        Field::new("leaked", DataType::Boolean, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(path)),
        Arc::new(StringArray::from(label)),
        Arc::new(StringArray::from(run)),
        Arc::new(StringArray::from(twin)),
        Arc::new(StringArray::from(twin_label)),
        Arc::new(Float64Array::from(similarity)),
        Arc::new(BooleanArray::from(leaked)),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The nearest image of `reference` to each of `rows`, by cosine similarity of the features (for
/// `evaluate`'s novel-only scores).
pub fn nearest_in(rows: &RunRows, reference: &RunRows, search: Search) -> Result<Neighbours, ClassifyError> {
    let features = rows.features.as_deref().expect("read with features");
    knn::search(
        features,
        reference.features.as_deref().expect("read with features"),
        features.len() / rows.len().max(1),
        1,
        false,
        Metric::Cosine,
        search,
    )
    .map_err(ClassifyError::Train)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_outside_zero_to_one_are_refused() {
        for bad in [0.0, -0.2, 1.5, f64::NAN] {
            assert!(check_threshold(bad).unwrap_err().contains("(0, 1]"), "{bad}");
        }
        assert_eq!(check_threshold(1.0), Ok(1.0));
        let mut config = QualityConfig::new("r");
        config.folds = 1;
        assert!(config.check().unwrap_err().to_string().contains("--folds"));
    }

    #[test]
    fn similarities_fall_in_their_bins_and_one_in_the_last() {
        let bin = bin_of;
        assert_eq!(bin(-0.3), 0);
        assert_eq!(bin(0.5), 1);
        assert_eq!(bin(0.929), 11);
        assert_eq!(bin(0.93), 12);
        assert_eq!(bin(0.995), 18);
        assert_eq!(bin(1.0), 18);
        assert_eq!(bin(1.0000001), 18);
    }

    #[test]
    fn groups_are_numbered_by_their_first_image() {
        let g = groups(5, [vec![3, 4], vec![0, 2]].into_iter());
        assert_eq!(g, vec![Some(0), None, Some(0), Some(1), Some(1)]);
    }
}
