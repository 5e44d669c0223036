//! `verger evaluate`: a classifier scored on a labelled run (for example the Test split projected with the
//! Training PCA): top-1, top-5, macro F1, per-class precision and recall, the confusion matrix and the most
//! confused pairs, saved next to the classifier and summarised in the evaluated run's `report.json` and `report.html`.
//! With a [`Novelty`], the same scores again on the images without a near twin in another run (the training
//! run): the accuracy that holds on photos unlike any the classifier was trained on.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use verger_classify::metrics;

use super::folder::{Classifier, Input, CONFUSION, EVALUATION};
use super::{run_rows, ClassifyError};
use crate::io::claim::OutputClaim;
use crate::io::output::OutputStore;
use crate::io::store::StoreOptions;
use crate::layout;
use crate::report::{page, Confusion, EvaluationSummary, Report};

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub label: String,
    pub support: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfusedPair {
    pub true_label: String,
    pub predicted: String,
    pub count: u64,
}

/// Which images count as novel: those whose nearest image of run `against` (by cosine similarity of the
/// features) is below `threshold`.
#[derive(Debug, Clone)]
pub struct Novelty {
    pub against: String,
    pub threshold: f64,
}

/// The scores on the novel images only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NovelScores {
    pub against: String,
    pub threshold: f64,
    /// Images without a near twin in `against`.
    pub rows: u64,
    pub top1: f64,
    pub top5: f64,
    pub macro_f1: f64,
}

/// A classifier's scores on a run, saved as `evaluation.json` (and `confusion.parquet`).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub run: String,
    pub classifier: String,
    pub rows: u64,
    pub top1: f64,
    pub top5: f64,
    pub macro_f1: f64,
    /// Rows whose label the classifier never saw in training, by label: counted as misclassified, never
    /// dropped.
    pub unseen_labels: BTreeMap<String, u64>,
    pub per_class: Vec<ClassReport>,
    /// The 20 largest off-diagonal cells of the confusion matrix.
    pub most_confused: Vec<ConfusedPair>,
    /// The same scores on the images without a near twin in another run, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub novel: Option<NovelScores>,
    /// Whether the summary was added to the run's `report.json` (not when the run cannot be written, or
    /// another run holds it: a warning says why).
    #[serde(skip)]
    pub recorded_in_run_report: bool,
}

/// Scores the classifier in folder `classifier` on the finished run `run` (and on its novel images with
/// `novelty`), and saves the scores beside it.
pub async fn evaluate(
    classifier: &str,
    run: &str,
    novelty: Option<&Novelty>,
    store: &StoreOptions,
) -> Result<Evaluation, ClassifyError> {
    let model = Classifier::load(classifier, store).await?;
    let rows = run_rows::read(run, store, model.input == Input::Features || novelty.is_some()).await?;
    if rows.pca_model.model != model.pca.model {
        return Err(ClassifyError::Mismatch(format!(
            "run {run} was projected with another PCA model than classifier {classifier} was trained with: \
             make it with --pca-model TRAINING_RUN/pca/model.json"
        )));
    }
    if rows.pca_model.model_sha256.as_deref() != Some(model.featurizer_sha256.as_str()) {
        return Err(ClassifyError::Mismatch(format!(
            "run {run} holds features of another model (sha256 {:?}) than classifier {classifier} ({})",
            rows.pca_model.model_sha256, model.featurizer_sha256
        )));
    }
    let inputs: Vec<&[f64]> = match model.input {
        Input::PcaFeatures => rows.pca.chunks_exact(rows.k.max(1)).collect(),
        Input::Features => rows
            .features
            .as_ref()
            .expect("read with features")
            .chunks_exact(verger_model::FEATURE_DIM)
            .collect(),
    };
    // Labels the classifier does not know get indices after its own classes.
    let mut names = model.classes.clone();
    let mut unseen_labels = BTreeMap::new();
    let truth: Vec<usize> = rows
        .labels
        .iter()
        .map(|label| match model.classes.binary_search(label) {
            Ok(i) => i,
            Err(_) => {
                *unseen_labels.entry(label.clone()).or_default() += 1;
                match names[model.classes.len()..].iter().position(|n| n == label) {
                    Some(i) => model.classes.len() + i,
                    None => {
                        names.push(label.clone());
                        names.len() - 1
                    }
                }
            }
        })
        .collect();
    let ranked: Vec<Vec<usize>> = inputs
        .iter()
        .map(|row| metrics::top_k(&model.model.logits(row), 5))
        .collect();
    let scores = metrics::score(&truth, &ranked, names.len());
    let novel = match novelty {
        None => None,
        Some(n) => {
            crate::quality::check_threshold(n.threshold).map_err(ClassifyError::Mismatch)?;
            let reference = run_rows::read(&n.against, store, true).await?;
            crate::quality::same_featurizer(run, &rows, &n.against, &reference)?;
            let nearest = tokio::task::spawn_blocking(move || {
                crate::quality::nearest_in(&rows, &reference, verger_classify::knn::Search::Auto)
            })
            .await
            .map_err(|e| ClassifyError::Job(crate::error::JobError::task(e)))??;
            let keep: Vec<usize> = (0..truth.len())
                .filter(|&i| nearest.nearest(i).is_none_or(|(_, s)| s < n.threshold))
                .collect();
            let subset = metrics::score(
                &keep.iter().map(|&i| truth[i]).collect::<Vec<_>>(),
                &keep.iter().map(|&i| ranked[i].clone()).collect::<Vec<_>>(),
                names.len(),
            );
            Some(NovelScores {
                against: n.against.clone(),
                threshold: n.threshold,
                rows: subset.rows,
                top1: subset.top1,
                top5: subset.top5,
                macro_f1: subset.macro_f1,
            })
        }
    };
    let mut evaluation = Evaluation {
        run: run.to_string(),
        classifier: classifier.to_string(),
        rows: scores.rows,
        top1: scores.top1,
        top5: scores.top5,
        macro_f1: scores.macro_f1,
        unseen_labels,
        per_class: scores
            .per_class
            .iter()
            .zip(&names)
            .map(|(s, label)| ClassReport {
                label: label.clone(),
                support: s.support,
                precision: s.precision,
                recall: s.recall,
                f1: s.f1,
            })
            .collect(),
        most_confused: scores
            .most_confused
            .iter()
            .take(20)
            .map(|c| ConfusedPair {
                true_label: names[c.true_class].clone(),
                predicted: names[c.predicted].clone(),
                count: c.count,
            })
            .collect(),
        novel,
        recorded_in_run_report: false,
    };

    let out = OutputStore::open(classifier, store)?;
    let cells: Vec<(usize, usize, u64)> = (0..names.len())
        .flat_map(|t| (0..names.len()).map(move |p| (t, p)))
        .map(|(t, p)| (t, p, scores.confusion[t][p]))
        .filter(|&(_, _, count)| count > 0)
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("true_label", DataType::Utf8, false),
        Field::new("predicted_label", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(cells.iter().map(|c| names[c.0].as_str()))),
        Arc::new(StringArray::from_iter_values(cells.iter().map(|c| names[c.1].as_str()))),
        Arc::new(UInt64Array::from_iter_values(cells.iter().map(|c| c.2))),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    out.write_batches(CONFUSION, schema, &[batch]).await?;
    out.put(
        EVALUATION,
        serde_json::to_vec_pretty(&evaluation).expect("an evaluation serializes"),
    )
    .await?;
    let confusion = Confusion {
        labels: names.clone(),
        cells: cells.clone(),
    };
    match record_in_run_report(&evaluation, confusion, store).await {
        Ok(()) => evaluation.recorded_in_run_report = true,
        Err(e) => tracing::warn!(run, "evaluation not summarised in the run's {}: {e}", layout::REPORT),
    }
    Ok(evaluation)
}

/// Adds the evaluation's summary to the evaluated run's `report.json`, under `evaluations` (one entry per
/// classifier folder, replaced when it is evaluated again), and renders its `report.html` again, holding the
/// run's output claim meanwhile so that no run rewrites the output at the same moment.
async fn record_in_run_report(
    evaluation: &Evaluation,
    confusion: Confusion,
    store: &StoreOptions,
) -> Result<(), ClassifyError> {
    let run = OutputStore::open(&evaluation.run, store)?;
    let claim = OutputClaim::take(&run, crate::config::DEFAULT_LEASE_TTL_S).await?;
    let recorded = async {
        let mut report = Report::from_json(&run.get(layout::REPORT).await?, layout::REPORT).map_err(|reason| {
            ClassifyError::Run {
                run: evaluation.run.clone(),
                reason,
            }
        })?;
        let entry = EvaluationSummary {
            classifier: evaluation.classifier.clone(),
            rows: evaluation.rows,
            top1: evaluation.top1,
            top5: evaluation.top5,
            macro_f1: evaluation.macro_f1,
            unseen_labels: evaluation.unseen_labels.clone(),
            details: format!("{}/{EVALUATION}", evaluation.classifier.trim_end_matches('/')),
            confusion: Some(confusion),
            novel: evaluation.novel.clone(),
        };
        report.evaluations.retain(|e| e.classifier != entry.classifier);
        report.evaluations.push(entry);
        claim.confirm().await?;
        run.put(layout::REPORT, report.to_json()).await?;
        page::write(&run, &report).await?;
        Ok(())
    }
    .await;
    claim.release().await;
    recorded
}
