//! `verger export --onnx`: a classifier folder and its featurizer as the one ONNX file the app runs
//! (`verger_model::app_model`): uint8 224×224 RGB in, class probabilities out, class names in the metadata.
//! Before the file is written, it is run once beside verger's own pipeline on the same pixels and refused if
//! the probabilities differ; then a single photo's latency is timed.

use std::time::Instant;

use serde::Serialize;
use verger_image::preprocess::scale_into;
use verger_model::app_model::{self, AppSession, Head};
use verger_model::INPUT_LEN;

use super::folder::{Classifier, Input};
use super::ClassifyError;
use crate::error::JobError;
use crate::featurize::FeaturizeSettings;
use crate::io::output::{split_file, OutputStore};
use crate::saved_pca::sha256_hex;

/// Largest difference allowed between the file's probabilities and verger's (float32 against float64 head).
pub const TOLERANCE: f64 = 1e-4;
/// Timed single-photo runs, after one warm-up.
const TIMED_RUNS: usize = 20;

/// What `export` wrote and measured.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub onnx: String,
    pub bytes: u64,
    pub sha256: String,
    pub classes: usize,
    pub input: Input,
    /// Largest |Δ| between the file's probabilities and verger's on the check photo.
    pub check_max_abs_diff: f64,
    /// Median and fastest single-photo inference, warm, one thread.
    pub latency_ms_median: f64,
    pub latency_ms_min: f64,
}

/// Writes `classifier` with the featurizer of `settings` as one ONNX file at `onnx` (a path or `s3://`).
/// Must run inside a multi-threaded Tokio runtime.
pub async fn export(
    classifier: &Classifier,
    settings: &FeaturizeSettings,
    onnx: &str,
) -> Result<Exported, ClassifyError> {
    classifier.check_featurizer(settings)?;
    let head = head(classifier);
    let (built, mut report) = {
        let classifier = classifier.clone();
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || build_and_check(&classifier, &settings, &head))
            .await
            .map_err(JobError::task)??
    };
    let (folder, name) = split_file(onnx);
    OutputStore::open(&folder, &settings.store)?.put(&name, built).await?;
    report.onnx = onnx.to_string();
    Ok(report)
}

/// The head of `classifier` in float32: centring and projection unless it reads the raw features.
fn head(classifier: &Classifier) -> Head {
    let pca = &classifier.pca.model;
    let uses_pca = classifier.input == Input::PcaFeatures;
    let projection = uses_pca.then(|| {
        let (dim, k) = (pca.dim, pca.k);
        let mut columns = vec![0f32; dim * k];
        for (j, axis) in pca.components.iter().enumerate() {
            for (i, v) in axis.iter().enumerate() {
                columns[i * k + j] = *v as f32;
            }
        }
        (columns, k)
    });
    let center = (uses_pca && pca.center).then(|| pca.mean.iter().map(|&m| m as f32).collect());
    Head {
        center,
        projection,
        weights: classifier.model.weights.iter().map(|&w| w as f32).collect(),
        bias: classifier.model.bias.iter().map(|&b| b as f32).collect(),
        labels: classifier.classes.clone(),
        metadata: vec![
            ("verger_featurizer_sha256".into(), classifier.featurizer_sha256.clone()),
            ("verger_pca_sha256".into(), sha256_hex(&classifier.pca_bytes)),
            (
                "verger_input".into(),
                "uint8 [batch, 224, 224, 3] RGB: the photo resized to 224x224 with Pillow's BICUBIC filter".into(),
            ),
        ],
    }
}

fn build_and_check(
    classifier: &Classifier,
    settings: &FeaturizeSettings,
    head: &Head,
) -> Result<(Vec<u8>, Exported), ClassifyError> {
    let featurizers = settings.featurizers().map_err(JobError::from)?;
    let built = app_model::build(&featurizers.model().bytes, head).map_err(JobError::from)?;
    let mut app = AppSession::new(&built, classifier.classes.len()).map_err(JobError::from)?;

    let photo = check_photo();
    let from_file = app.probabilities(&photo).map_err(JobError::from)?;
    let mut input = vec![0f32; INPUT_LEN];
    scale_into(&photo, &mut input);
    let features = featurizers
        .get()
        .and_then(|mut f| f.embed(&input))
        .map_err(JobError::from)?;
    let pca = classifier.pca.model.project(&features);
    let from_verger = classifier.model.probabilities(&classifier.input_row(&features, &pca));
    let diff = from_file
        .iter()
        .zip(&from_verger)
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max);
    if diff > TOLERANCE {
        return Err(ClassifyError::Mismatch(format!(
            "the exported model's probabilities differ from verger's by {diff:.2e} (more than {TOLERANCE:e}); not written"
        )));
    }

    let mut times = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        let started = Instant::now();
        app.probabilities(&photo).map_err(JobError::from)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let report = Exported {
        onnx: String::new(),
        bytes: built.len() as u64,
        sha256: sha256_hex(&built),
        classes: classifier.classes.len(),
        input: classifier.input,
        check_max_abs_diff: diff,
        latency_ms_median: times[TIMED_RUNS / 2],
        latency_ms_min: times[0],
    };
    Ok((built, report))
}

/// A photo-like pattern (smooth gradients, every byte value), so the check exercises the whole input range.
fn check_photo() -> Vec<u8> {
    let mut photo = Vec::with_capacity(INPUT_LEN);
    for y in 0..224usize {
        for x in 0..224usize {
            photo.extend_from_slice(&[(x + y / 2) as u8, (y * 255 / 223) as u8, ((x * y) / 197) as u8]);
        }
    }
    photo
}
