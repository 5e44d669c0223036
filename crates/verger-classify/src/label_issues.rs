//! Likely wrong labels: out-of-fold predicted probabilities ([`out_of_fold`]) and the label issues confident
//! learning finds in them ([`confident_learning`]; Northcutt, Jiang and Chuang, "Confident Learning", JAIR
//! 2021), computed as `cleanlab.filter.find_label_issues(labels, pred_probs, filter_by="confident_learning")`
//! does in cleanlab 2.9, so that the two agree on the same probabilities (checked by the tests against
//! cleanlab itself).

use crate::softmax::{train, ClassifyError, TrainOptions};

/// cleanlab's fuzzy comparison of probabilities, and its floor for a class's threshold.
const FLOATING_POINT_COMPARISON: f64 = 1e-6;
const THRESHOLD_FLOOR: f64 = 2.0 * FLOATING_POINT_COMPARISON;

/// Each row's probabilities (`classes` a row, row-major) from a softmax trained on the other folds: the rows
/// are split into `folds` folds, each class's rows dealt round-robin in their order so that every fold holds
/// its share of every class. Deterministic.
pub fn out_of_fold(
    rows: &[f64],
    dim: usize,
    labels: &[usize],
    classes: usize,
    folds: usize,
    options: &TrainOptions,
) -> Result<Vec<f64>, ClassifyError> {
    let n = labels.len();
    if dim == 0 || rows.len() != n * dim {
        return Err(ClassifyError::Shape { rows: rows.len(), dim });
    }
    let folds = folds.max(2);
    let mut seen = vec![0usize; classes];
    let fold: Vec<usize> = labels
        .iter()
        .map(|&l| {
            let f = seen[l] % folds;
            seen[l] += 1;
            f
        })
        .collect();
    let mut probabilities = vec![0.0; n * classes];
    for f in 0..folds {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in (0..n).filter(|&i| fold[i] != f) {
            x.extend_from_slice(&rows[i * dim..(i + 1) * dim]);
            y.push(labels[i]);
        }
        let model = train(&x, dim, &y, classes, options)?.model;
        for i in (0..n).filter(|&i| fold[i] == f) {
            let p = model.probabilities(&rows[i * dim..(i + 1) * dim]);
            probabilities[i * classes..(i + 1) * classes].copy_from_slice(&p);
        }
    }
    Ok(probabilities)
}

/// Which rows confident learning calls label issues, given each row's predicted probabilities (`classes` a
/// row) and given label: per-class thresholds (the mean probability of the class over the rows labelled with
/// it), each row counted into the confident joint under the class it confidently belongs to, and the rows
/// off its diagonal kept, unless the given label is (within 1e-6) the most probable anyway.
pub fn confident_learning(probabilities: &[f64], labels: &[usize], classes: usize) -> Vec<bool> {
    assert_eq!(
        probabilities.len(),
        labels.len() * classes,
        "probabilities are not a row a label"
    );
    let rows = || probabilities.chunks_exact(classes.max(1));
    let (mut sum, mut count) = (vec![0.0; classes], vec![0usize; classes]);
    for (p, &l) in rows().zip(labels) {
        sum[l] += p[l];
        count[l] += 1;
    }
    // A class no row is labelled with gets a threshold no probability reaches (cleanlab's 2).
    let thresholds: Vec<f64> = (0..classes)
        .map(|k| match count[k] {
            0 => 2.0,
            c => (sum[k] / c as f64).max(THRESHOLD_FLOOR),
        })
        .collect();
    rows()
        .zip(labels)
        .map(|(p, &label)| {
            let confident: Vec<usize> = (0..classes)
                .filter(|&k| p[k] >= thresholds[k] - FLOATING_POINT_COMPARISON)
                .collect();
            let guess = match confident.len() {
                0 => return false,
                1 => confident[0],
                _ => first_argmax(p.iter().copied()),
            };
            let nudged = p
                .iter()
                .enumerate()
                .map(|(k, &v)| if k == label { v + FLOATING_POINT_COMPARISON } else { v });
            guess != label && first_argmax(nudged) != label
        })
        .collect()
}

/// The index of the first largest value, as numpy's `argmax`.
fn first_argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confidently_other_row_is_an_issue_and_a_close_call_is_not() {
        // Class thresholds: class 0 = mean(0.9, 0.8) = 0.85; class 1 = mean(0.1, 0.9, 0.45) = 0.483.
        let p = [
            0.9, 0.1, // labelled 0, confidently 0
            0.8, 0.2, // labelled 0
            0.9, 0.1, // labelled 1 but confidently 0: an issue
            0.1, 0.9, // labelled 1
            0.55, 0.45, // labelled 1: under both thresholds, not confident: no issue
        ];
        let labels = [0, 0, 1, 1, 1];
        let issues = confident_learning(&p, &labels, 2);
        assert_eq!(issues, vec![false, false, true, false, false]);
    }

    #[test]
    fn two_confident_classes_take_the_argmax_and_ties_keep_the_given_label() {
        // Thresholds: class 0 = 0.5, class 1 = mean(0.5, 0.5) = 0.5, class 2 = 0.1.
        let p = [
            0.5, 0.3, 0.2, // labelled 0
            0.3, 0.5, 0.2, // labelled 1
            0.6, 0.3, 0.1, // labelled 2: confident in 0 and 2, argmax 0: an issue
            0.5, 0.5, 0.0, // labelled 1: confident in 0 and 1, argmax 0, but 1 ties within 1e-6: not an issue
        ];
        let labels = [0, 1, 2, 1];
        let issues = confident_learning(&p, &labels, 3);
        assert_eq!(issues, vec![false, false, true, false]);
    }

    #[test]
    fn out_of_fold_probabilities_come_from_models_that_did_not_see_the_row() {
        // Two clusters; the last row sits in cluster 0's place with label 1. A model that saw it would give
        // label 1 some weight there; out of fold it is confidently class 0.
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..20 {
            let jitter = (i as f64) * 0.01;
            rows.extend([0.0 + jitter, 0.0 - jitter]);
            labels.push(0);
            rows.extend([3.0 - jitter, 3.0 + jitter]);
            labels.push(1);
        }
        rows.extend([0.05, -0.05]);
        labels.push(1);
        let options = TrainOptions::default();
        let p = out_of_fold(&rows, 2, &labels, 2, 5, &options).unwrap();
        let last = &p[p.len() - 2..];
        assert!(
            last[0] > 0.9,
            "the mislabelled row's out-of-fold probability of class 0: {last:?}"
        );
        let issues = confident_learning(&p, &labels, 2);
        assert!(issues[labels.len() - 1]);
        assert_eq!(issues.iter().filter(|&&i| i).count(), 1);
        assert_eq!(p.len(), labels.len() * 2);
        // Same rows, same bits.
        assert_eq!(p, out_of_fold(&rows, 2, &labels, 2, 5, &options).unwrap());
    }
}
