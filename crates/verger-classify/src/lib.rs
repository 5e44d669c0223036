//! The classifier behind `verger train`, `evaluate` and `identify`, as numbers: multinomial logistic
//! regression (softmax) with an L2 penalty, fitted by L-BFGS ([`train`]); classification metrics
//! ([`metrics`]); exact nearest neighbours of one row by brute force ([`nearest`]), of many rows by blocked
//! matrix products or, for large sets, an HNSW index with its measured recall ([`knn`], [`ann`]); likely wrong
//! labels by confident learning ([`label_issues`]).
//!
//! Deterministic, but for the HNSW index's graph: every sum runs in one fixed order whatever the number of
//! threads (the matrix products are split by output, never by the sum), so the same rows give the same bits.
//! Scope: numbers only. No files, no Arrow, no images.

pub mod ann;
pub mod knn;
pub mod label_issues;
mod lbfgs;
pub mod metrics;
mod softmax;

pub use softmax::{train, ClassifyError, Softmax, TrainOptions, Trained};

/// The `k` rows of `rows` (row-major, `dim` values each) nearest to `query` in Euclidean distance, nearest
/// first, as (row index, distance); ties go to the lower index.
pub fn nearest(rows: &[f64], dim: usize, query: &[f64], k: usize) -> Vec<(usize, f64)> {
    assert_eq!(query.len(), dim, "query length differs from the rows'");
    let mut scored: Vec<(usize, f64)> = rows
        .chunks_exact(dim.max(1))
        .enumerate()
        .map(|(i, row)| (i, row.iter().zip(query).map(|(a, b)| (a - b) * (a - b)).sum::<f64>()))
        .collect();
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    let by_distance = |a: &(usize, f64), b: &(usize, f64)| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0));
    scored.select_nth_unstable_by(k - 1, by_distance);
    scored.truncate(k);
    scored.sort_by(by_distance);
    scored.into_iter().map(|(i, d2)| (i, d2.sqrt())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rows_in_order_with_ties_to_the_lower_index() {
        let rows = [0.0, 0.0, 3.0, 4.0, 1.0, 0.0, -1.0, 0.0];
        let found = nearest(&rows, 2, &[0.0, 0.0], 3);
        assert_eq!(found, vec![(0, 0.0), (2, 1.0), (3, 1.0)]);
        assert_eq!(nearest(&rows, 2, &[3.0, 4.0], 1), vec![(1, 0.0)]);
        assert_eq!(nearest(&rows, 2, &[0.0, 0.0], 10).len(), 4);
    }
}
