//! `verger identify`: new photos through the featurizer, the classifier's PCA model and the classifier, with
//! the nearest training images in PCA space (exact, by brute force, up to 100,000 training rows: milliseconds;
//! beyond, through the classifier's HNSW index).

use serde::Serialize;
use verger_classify::metrics::top_k;

use super::folder::Classifier;
use super::ClassifyError;
use crate::error::JobError;
use crate::featurize::{featurize_bytes, featurize_files, FeaturizeSettings};
use crate::io::source;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Label {
    pub label: String,
    pub probability: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Neighbour {
    pub path: String,
    pub label: String,
    pub distance: f64,
}

/// What a photo was identified as.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Identified {
    /// The most probable labels, most probable first.
    pub labels: Vec<Label>,
    /// The nearest training images, nearest first.
    pub neighbours: Vec<Neighbour>,
    /// The distance to the nearest training image in PCA space over the classifier's unknown distance (the
    /// 99th percentile of the training images' own distances to their 5th nearest other training image,
    /// unless trained otherwise): above 1, the photo is unlike nearly every training image. None for
    /// classifiers trained without the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub novelty: Option<f64>,
    /// Novelty above 1: not a kind of image the classifier knows, whatever its labels say.
    pub unknown: bool,
}

/// One photo's answer: identified, or why not (`stage` is `read`, `decode` or `infer`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Identification {
    pub photo: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identified: Option<Identified>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<PhotoError>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhotoError {
    pub stage: String,
    pub message: String,
    /// The photo exceeds the pixel limit (for services: 413 rather than 400).
    #[serde(skip)]
    pub too_large: bool,
}

impl Classifier {
    /// The `top` most probable labels and `neighbours` nearest training images for an image's features.
    pub fn identify_features(&self, features: &[f32], top: usize, neighbours: usize) -> Identified {
        let pca = self.pca.model.project(features);
        let probabilities = self.model.probabilities(&self.input_row(features, &pca));
        let labels = top_k(&probabilities, top)
            .into_iter()
            .map(|c| Label {
                label: self.classes[c].clone(),
                probability: probabilities[c],
            })
            .collect();
        let n = &self.neighbours;
        let k = neighbours.max(1);
        // Through the index where the classifier has one; by brute force if it has none (or fails).
        let found = match self.index.as_ref().map(|index| index.nearest(&n.pca, &pca, k, None)) {
            Some(Ok(found)) => found,
            _ => verger_classify::nearest(&n.pca, self.pca.model.k, &pca, k),
        };
        let novelty = self
            .unknown
            .zip(found.first())
            .map(|(rule, &(_, distance))| distance / rule.distance.max(f64::MIN_POSITIVE));
        let neighbours = found
            .into_iter()
            .take(neighbours)
            .map(|(i, distance)| Neighbour {
                path: n.paths[i].clone(),
                label: n.labels[i].clone(),
                distance,
            })
            .collect();
        Identified {
            labels,
            neighbours,
            novelty,
            unknown: novelty.is_some_and(|v| v > 1.0),
        }
    }

    /// Refuses a featurizer other than the one whose features the classifier was trained on.
    pub fn check_featurizer(&self, settings: &FeaturizeSettings) -> Result<(), ClassifyError> {
        if settings.model.sha256.eq_ignore_ascii_case(&self.featurizer_sha256) {
            return Ok(());
        }
        Err(ClassifyError::Mismatch(format!(
            "the classifier was trained on features of model sha256 {}, not of {} ({})",
            self.featurizer_sha256, settings.model.location, settings.model.sha256
        )))
    }
}

/// Identifies each of `photos` (paths or `s3://` URIs); a photo that cannot be read or decoded gets its error,
/// the others their answers. Must run inside a multi-threaded Tokio runtime (for `s3://` photos).
pub async fn identify(
    classifier: &Classifier,
    photos: &[String],
    settings: &FeaturizeSettings,
    top: usize,
    neighbours: usize,
) -> Result<Vec<Identification>, ClassifyError> {
    classifier.check_featurizer(settings)?;
    let uris: Vec<String> = photos.iter().map(|l| source::uri(l)).collect::<Result<_, _>>()?;
    let settings = settings.clone();
    let outcomes = tokio::task::spawn_blocking(move || featurize_files(&uris, &settings))
        .await
        .map_err(JobError::task)??;
    Ok(photos
        .iter()
        .zip(outcomes)
        .map(|(photo, (_, outcome))| match outcome {
            Ok(features) => Identification {
                photo: photo.clone(),
                identified: Some(classifier.identify_features(&features, top, neighbours)),
                error: None,
            },
            Err((stage, message)) => Identification {
                photo: photo.clone(),
                identified: None,
                error: Some(PhotoError {
                    stage: stage.to_string(),
                    message,
                    too_large: false,
                }),
            },
        })
        .collect())
}

/// Identifies one photo held in memory (an upload to `verger serve`): synchronous CPU work, to be run on a
/// worker thread. The classifier's featurizer is checked by the caller once ([`Classifier::check_featurizer`]).
pub fn identify_bytes(
    classifier: &Classifier,
    photo: &[u8],
    settings: &FeaturizeSettings,
    top: usize,
    neighbours: usize,
) -> Result<Identified, PhotoError> {
    featurize_bytes(photo, settings)
        .map(|features| classifier.identify_features(&features, top, neighbours))
        .map_err(|f| PhotoError {
            stage: f.stage.to_string(),
            message: f.message,
            too_large: f.too_large,
        })
}
