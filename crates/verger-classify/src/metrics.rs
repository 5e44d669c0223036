//! How well predictions match labels: top-1 and top-k accuracy, per-class precision, recall and F1, macro F1,
//! the confusion matrix and its most confused pairs.

use serde::Serialize;

/// The index of the largest value (the first, on ties).
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// The indices of the `k` largest values, largest first (lower index first on ties).
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassScores {
    pub support: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Confusion {
    /// True class, predicted class, how often.
    pub true_class: usize,
    pub predicted: usize,
    pub count: u64,
}

/// Scores of predictions against labels over `classes` classes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scores {
    pub rows: u64,
    pub top1: f64,
    pub top5: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScores>,
    /// `classes × classes`, row = true class, column = predicted.
    pub confusion: Vec<Vec<u64>>,
    /// Off-diagonal cells by count, largest first (ties by class indices).
    pub most_confused: Vec<Confusion>,
}

/// Scores rows whose true class is `truth[i]` and whose top-5 predicted classes are `ranked[i]` (best first).
pub fn score(truth: &[usize], ranked: &[Vec<usize>], classes: usize) -> Scores {
    assert_eq!(truth.len(), ranked.len());
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut top1, mut top5) = (0u64, 0u64);
    for (&t, r) in truth.iter().zip(ranked) {
        let predicted = r[0];
        confusion[t][predicted] += 1;
        top1 += u64::from(predicted == t);
        top5 += u64::from(r.iter().take(5).any(|&c| c == t));
    }
    let per_class: Vec<ClassScores> = (0..classes)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            let ratio = |a: f64, b: u64| if b == 0 { 0.0 } else { a / b as f64 };
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassScores {
                support,
                precision,
                recall,
                f1,
            }
        })
        .collect();
    // Macro F1 over the classes that occur among the labels.
    let present: Vec<&ClassScores> = per_class.iter().filter(|s| s.support > 0).collect();
    let macro_f1 = present.iter().map(|s| s.f1).sum::<f64>() / present.len().max(1) as f64;
    let mut most_confused: Vec<Confusion> = (0..classes)
        .flat_map(|t| (0..classes).map(move |p| (t, p)))
        .filter(|&(t, p)| t != p && confusion[t][p] > 0)
        .map(|(t, p)| Confusion {
            true_class: t,
            predicted: p,
            count: confusion[t][p],
        })
        .collect();
    most_confused.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then((a.true_class, a.predicted).cmp(&(b.true_class, b.predicted)))
    });
    let n = truth.len().max(1) as f64;
    Scores {
        rows: truth.len() as u64,
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        macro_f1,
        per_class,
        confusion,
        most_confused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_a_small_confusion_by_hand() {
        // Truth 0,0,1,1,2; predictions 0,1,1,1,0.
        let truth = [0, 0, 1, 1, 2];
        let ranked = vec![vec![0, 1], vec![1, 0], vec![1, 2], vec![1, 0], vec![0, 2]];
        let s = score(&truth, &ranked, 3);
        assert_eq!(s.top1, 3.0 / 5.0);
        assert_eq!(s.top5, 1.0);
        assert_eq!(s.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
        // Class 0: precision 1/2, recall 1/2; class 1: precision 2/3, recall 1; class 2: 0.
        assert_eq!(s.per_class[0].f1, 0.5);
        assert!((s.per_class[1].f1 - 0.8).abs() < 1e-12);
        assert_eq!(s.per_class[2].f1, 0.0);
        assert!((s.macro_f1 - (0.5 + 0.8) / 3.0).abs() < 1e-12);
        assert_eq!(
            s.most_confused[0],
            Confusion {
                true_class: 0,
                predicted: 1,
                count: 1
            }
        );
        assert_eq!(s.most_confused.len(), 2);
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2], 3), vec![1, 2, 3]);
        assert_eq!(argmax(&[0.1, 0.5, 0.5]), 1);
    }
}
