//! The classifier folder: what `train` writes and `evaluate`, `identify` (and later `serve`, `export`) load,
//! checked whole on loading.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Builder, ListBuilder, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde::{Deserialize, Serialize};
use verger_classify::knn::Metric;
use verger_classify::{ann, Softmax, TrainOptions};

use super::run_rows::{extend_rows, strings};
use super::ClassifyError;
use crate::io::output::{OutputKind, OutputStore};
use crate::io::store::StoreOptions;
use crate::saved_pca::{sha256_hex, SavedPca};

const CLASSIFIER: &str = "classifier.json";
const PCA: &str = "pca_model.json";
const NEIGHBOURS: &str = "neighbours.parquet";
/// The training rows' HNSW graph, for classifiers trained on more than 100,000 images.
const INDEX: &str = "neighbours.usearch";
pub const TRAINING: &str = "training.json";
pub const EVALUATION: &str = "evaluation.json";
pub const CONFUSION: &str = "confusion.parquet";
const FORMAT: &str = "verger-classifier-1";
/// A classifier folder: what `train --overwrite` replaces, and what makes a folder one.
pub const KIND: OutputKind = OutputKind {
    what: "classifier",
    names: &[CLASSIFIER, PCA, NEIGHBOURS, INDEX, TRAINING, EVALUATION, CONFUSION],
    marks: &[CLASSIFIER, TRAINING],
};

/// What a classifier reads from a run's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// The run's `pca_features` (k values).
    PcaFeatures,
    /// The run's 1280-d `features`.
    Features,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    format: String,
    input: Input,
    classes: Vec<String>,
    model: Softmax,
    featurizer_sha256: String,
    pca_sha256: String,
    options: TrainOptions,
    /// Absent in classifiers trained before verger flagged unknown photos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unknown: Option<UnknownRule>,
    /// The sha256 of `neighbours.usearch`, where the classifier has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index_sha256: Option<String>,
}

/// When a photo is unlike every training image: its distance to the nearest training image in PCA space
/// above `distance`, the `percentile`-th percentile of the training images' own distances to their
/// `neighbour`-th nearest other training image (leave one out).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct UnknownRule {
    pub percentile: f64,
    pub neighbour: usize,
    pub distance: f64,
}

/// The training images, for nearest neighbours in PCA space.
#[derive(Debug, Clone)]
pub struct Neighbours {
    pub paths: Vec<String>,
    pub labels: Vec<String>,
    /// `k` values a row, row-major.
    pub pca: Vec<f64>,
}

/// A trained classifier with everything it needs to classify new features.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub input: Input,
    pub classes: Vec<String>,
    pub model: Softmax,
    pub options: TrainOptions,
    /// The featurizer model whose features it classifies.
    pub featurizer_sha256: String,
    /// The PCA model of its training run, and that model's saved bytes.
    pub pca: SavedPca,
    pub pca_bytes: Vec<u8>,
    pub neighbours: Neighbours,
    /// None for classifiers trained before verger had it.
    pub unknown: Option<UnknownRule>,
    /// The training rows' HNSW graph (beyond 100,000 rows): `identify` finds the nearest training images
    /// through it instead of by brute force.
    pub index: Option<Arc<ann::Index>>,
}

impl Classifier {
    /// The row the softmax model reads, from an image's features and PCA projection.
    pub fn input_row(&self, features: &[f32], pca: &[f64]) -> Vec<f64> {
        match self.input {
            Input::PcaFeatures => pca.to_vec(),
            Input::Features => features.iter().map(|&v| f64::from(v)).collect(),
        }
    }

    /// Writes the folder (every file atomically; `training.json` last).
    pub async fn save(&self, out: &OutputStore, training: &impl Serialize) -> Result<(), ClassifyError> {
        let index = self.index.as_ref().map(|i| i.to_bytes()).transpose()?;
        let stored = Stored {
            format: FORMAT.into(),
            input: self.input,
            classes: self.classes.clone(),
            model: self.model.clone(),
            featurizer_sha256: self.featurizer_sha256.clone(),
            pca_sha256: sha256_hex(&self.pca_bytes),
            options: self.options,
            unknown: self.unknown,
            index_sha256: index.as_ref().map(|b| sha256_hex(b)),
        };
        out.put(PCA, self.pca_bytes.clone()).await?;
        if let Some(bytes) = index {
            out.put(INDEX, bytes).await?;
        }
        let n = &self.neighbours;
        let k = self.pca.model.k;
        let mut pca = ListBuilder::new(Float64Builder::new())
            .with_field(Arc::new(Field::new_list_field(DataType::Float64, true)));
        for row in n.pca.chunks_exact(k.max(1)) {
            pca.values().append_slice(row);
            pca.append(true);
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("pca_features", crate::pca::pca_features_type(), true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(n.paths.clone())),
            Arc::new(StringArray::from(n.labels.clone())),
            Arc::new(pca.finish()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        out.write_batches(NEIGHBOURS, schema, &[batch]).await?;
        let json = serde_json::to_vec(&stored).expect("a classifier serializes");
        out.put(CLASSIFIER, json).await?;
        out.put(
            TRAINING,
            serde_json::to_vec_pretty(training).expect("a report serializes"),
        )
        .await?;
        Ok(())
    }

    /// Loads and checks the classifier folder `folder` (a path or `s3://`).
    pub async fn load(folder: &str, store: &StoreOptions) -> Result<Classifier, ClassifyError> {
        let bad = |reason: String| ClassifyError::Folder {
            folder: folder.to_string(),
            reason,
        };
        let out = OutputStore::open(folder, store)?;
        if !out.exists(CLASSIFIER).await? {
            return Err(bad(format!(
                "{CLASSIFIER} is missing: not a classifier folder (made by verger train)"
            )));
        }
        let stored: Stored = serde_json::from_slice(&out.get(CLASSIFIER).await?)
            .map_err(|e| bad(format!("{CLASSIFIER} is truncated or corrupt: {e}")))?;
        if stored.format != FORMAT {
            return Err(bad(format!("format {:?}, this verger reads {FORMAT:?}", stored.format)));
        }
        if !out.exists(PCA).await? {
            return Err(bad(format!("{PCA} is missing")));
        }
        let pca_bytes = out.get(PCA).await?.to_vec();
        if sha256_hex(&pca_bytes) != stored.pca_sha256 {
            return Err(bad(format!(
                "{PCA} is not the PCA model the classifier was trained with"
            )));
        }
        let pca = SavedPca::from_json(&pca_bytes, PCA).map_err(bad)?;
        let m = &stored.model;
        let want_dim = match stored.input {
            Input::PcaFeatures => pca.model.k,
            Input::Features => verger_model::FEATURE_DIM,
        };
        if m.dim != want_dim
            || m.classes != stored.classes.len()
            || m.weights.len() != m.classes * m.dim
            || m.bias.len() != m.classes
        {
            return Err(bad(format!(
                "inconsistent model: {} classes of {}-d weights for {} names and {want_dim}-d inputs",
                m.classes,
                m.dim,
                stored.classes.len()
            )));
        }
        let neighbours = read_neighbours(&out, pca.model.k)
            .await
            .map_err(|e| bad(format!("{NEIGHBOURS}: {e}")))?;
        let index = match &stored.index_sha256 {
            None => None,
            Some(sha256) => {
                if !out.exists(INDEX).await? {
                    return Err(bad(format!("{INDEX} is missing")));
                }
                let bytes = out.get(INDEX).await?;
                if sha256_hex(&bytes) != *sha256 {
                    return Err(bad(format!("{INDEX} is not the index the classifier was trained with")));
                }
                let index = ann::Index::from_bytes(&bytes, pca.model.k.max(1), Metric::Euclidean)
                    .map_err(|e| bad(format!("{INDEX}: {e}")))?;
                if index.len() != neighbours.paths.len() {
                    return Err(bad(format!(
                        "{INDEX} holds {} rows, {NEIGHBOURS} {}",
                        index.len(),
                        neighbours.paths.len()
                    )));
                }
                Some(Arc::new(index))
            }
        };
        Ok(Classifier {
            input: stored.input,
            classes: stored.classes,
            model: stored.model,
            options: stored.options,
            featurizer_sha256: stored.featurizer_sha256,
            pca,
            pca_bytes,
            neighbours,
            unknown: stored.unknown,
            index,
        })
    }
}

async fn read_neighbours(out: &OutputStore, k: usize) -> Result<Neighbours, String> {
    if !out.exists(NEIGHBOURS).await.map_err(|e| e.to_string())? {
        return Err("missing".into());
    }
    let ctx = SessionContext::new();
    out.register(&ctx);
    let batches = ctx
        .read_parquet(out.url(NEIGHBOURS), ParquetReadOptions::default())
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut n = Neighbours {
        paths: Vec::new(),
        labels: Vec::new(),
        pca: Vec::new(),
    };
    for batch in &batches {
        n.paths.extend(strings(batch, 0).map_err(|e| e.to_string())?);
        n.labels.extend(strings(batch, 1).map_err(|e| e.to_string())?);
        extend_rows::<Float64Type>(batch, 2, k, &mut n.pca)?;
    }
    Ok(n)
}
