//! Exact k nearest neighbours of many rows at once, by blocked matrix products (faer) on every core: cosine
//! similarity for feature vectors, Euclidean distance for PCA rows.
//!
//! Exact, so its cost grows with queries × references. Deterministic: each product is summed in one order
//! whatever the threads, and ties go to the lower reference index.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rayon::prelude::*;

/// Queries a block, references a block: a 256 × 2048 product (4 MiB) stays in cache-friendly pieces and
/// gives every core its own query blocks.
const QUERY_BLOCK: usize = 256;
const REFERENCE_BLOCK: usize = 2048;

/// Each query's `k` nearest references, best first. A slot stays empty where there are fewer than `k`
/// references (or fewer than `k` other rows, when a set is searched against itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    k: usize,
    /// `k` slots a query: reference index, or `usize::MAX` when empty.
    index: Vec<usize>,
    /// Cosine similarity (highest first) or Euclidean distance (lowest first), by slot.
    score: Vec<f64>,
}

impl Neighbours {
    pub fn k(&self) -> usize {
        self.k
    }

    /// How many queries.
    pub fn queries(&self) -> usize {
        self.index.len().checked_div(self.k).unwrap_or(0)
    }

    /// Query `q`'s neighbours, best first, as (reference index, score).
    pub fn of(&self, q: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let slots = q * self.k..(q + 1) * self.k;
        self.index[slots.clone()]
            .iter()
            .zip(&self.score[slots])
            .take_while(|(&i, _)| i != usize::MAX)
            .map(|(&i, &s)| (i, s))
    }

    /// Query `q`'s best neighbour, if it has one.
    pub fn nearest(&self, q: usize) -> Option<(usize, f64)> {
        self.of(q).next()
    }
}

/// For each row of `queries`, the `k` rows of `references` with the highest cosine similarity (rows of `dim`
/// values, row-major). With `same_rows`, `queries` and `references` are one set and a row is not its own
/// neighbour. A zero row has similarity 0 to everything.
pub fn cosine_knn(queries: &[f64], references: &[f64], dim: usize, k: usize, same_rows: bool) -> Neighbours {
    let unit = |rows: &[f64]| -> Vec<f64> {
        rows.chunks_exact(dim)
            .flat_map(|row| {
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                row.iter().map(move |v| v * scale)
            })
            .collect()
    };
    blocked(&unit(queries), &unit(references), dim, k, same_rows, |dot, _, _| dot)
}

/// For each row of `queries`, the `k` rows of `references` nearest in Euclidean distance, as in
/// [`cosine_knn`]; the scores are distances, lowest first.
pub fn euclidean_knn(queries: &[f64], references: &[f64], dim: usize, k: usize, same_rows: bool) -> Neighbours {
    let squares =
        |rows: &[f64]| -> Vec<f64> { rows.chunks_exact(dim).map(|r| r.iter().map(|v| v * v).sum()).collect() };
    let (q2, r2) = (squares(queries), squares(references));
    // Ranked by minus the squared distance, so that the highest score is the nearest.
    let mut found = blocked(queries, references, dim, k, same_rows, |dot, q, r| {
        -(q2[q] + r2[r] - 2.0 * dot)
    });
    found.score.iter_mut().for_each(|s| *s = (-*s).max(0.0).sqrt());
    found
}

/// The `k` highest `score(q · r, q, r)` of each query, over references in blocks.
fn blocked(
    queries: &[f64],
    references: &[f64],
    dim: usize,
    k: usize,
    same_rows: bool,
    score: impl Fn(f64, usize, usize) -> f64 + Sync,
) -> Neighbours {
    assert!(dim > 0, "rows of no values");
    assert_eq!(queries.len() % dim, 0, "queries are not whole rows");
    assert_eq!(references.len() % dim, 0, "references are not whole rows");
    let (nq, nr) = (queries.len() / dim, references.len() / dim);
    let mut found = Neighbours {
        k,
        index: vec![usize::MAX; nq * k],
        score: vec![f64::NEG_INFINITY; nq * k],
    };
    if k == 0 || nq == 0 || nr == 0 {
        return found;
    }
    let reference_blocks: Vec<Mat<f64>> = (0..nr)
        .step_by(REFERENCE_BLOCK)
        .map(|start| {
            let rows = REFERENCE_BLOCK.min(nr - start);
            Mat::from_fn(rows, dim, |i, j| references[(start + i) * dim + j])
        })
        .collect();
    found
        .index
        .par_chunks_mut(QUERY_BLOCK * k)
        .zip(found.score.par_chunks_mut(QUERY_BLOCK * k))
        .enumerate()
        .for_each(|(block, (index, best))| {
            let q0 = block * QUERY_BLOCK;
            let rows = index.len() / k;
            let q = Mat::from_fn(rows, dim, |i, j| queries[(q0 + i) * dim + j]);
            let mut dots = Mat::<f64>::zeros(rows, REFERENCE_BLOCK.min(nr));
            for (b, r) in reference_blocks.iter().enumerate() {
                let r0 = b * REFERENCE_BLOCK;
                // The cores are already split by query blocks.
                let out = dots.as_mut().subcols_mut(0, r.nrows());
                matmul(out, Accum::Replace, q.as_ref(), r.as_ref().transpose(), 1.0, Par::Seq);
                for i in 0..rows {
                    let (slots, scores) = (&mut index[i * k..(i + 1) * k], &mut best[i * k..(i + 1) * k]);
                    for j in 0..r.nrows() {
                        if same_rows && q0 + i == r0 + j {
                            continue;
                        }
                        let s = score(dots[(i, j)], q0 + i, r0 + j);
                        // Strictly better than the worst kept (an equal score keeps the lower index; NaN never
                        // is).
                        if s.partial_cmp(&scores[k - 1]) != Some(std::cmp::Ordering::Greater) {
                            continue;
                        }
                        let at = scores.partition_point(|&kept| kept >= s);
                        slots.copy_within(at..k - 1, at + 1);
                        scores.copy_within(at..k - 1, at + 1);
                        slots[at] = r0 + j;
                        scores[at] = s;
                    }
                }
            }
        });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random rows.
    fn rows(n: usize, dim: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..n * dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect()
    }

    fn brute(queries: &[f64], refs: &[f64], dim: usize, k: usize, same: bool, cosine: bool) -> Vec<Vec<usize>> {
        queries
            .chunks_exact(dim)
            .enumerate()
            .map(|(qi, q)| {
                let mut scored: Vec<(usize, f64)> = refs
                    .chunks_exact(dim)
                    .enumerate()
                    .filter(|(ri, _)| !(same && *ri == qi))
                    .map(|(ri, r)| {
                        let s = if cosine {
                            let dot: f64 = q.iter().zip(r).map(|(a, b)| a * b).sum();
                            let nq = q.iter().map(|v| v * v).sum::<f64>().sqrt();
                            let nr = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                            dot / (nq * nr)
                        } else {
                            -q.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum::<f64>()
                        };
                        (ri, s)
                    })
                    .collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                scored.into_iter().take(k).map(|(i, _)| i).collect()
            })
            .collect()
    }

    #[test]
    fn blocked_search_finds_what_brute_force_finds_across_block_edges() {
        // More references than one block and more queries than one block.
        let (dim, k) = (7, 5);
        let refs = rows(REFERENCE_BLOCK + 300, dim, 1);
        let queries = rows(QUERY_BLOCK + 40, dim, 2);
        for cosine in [true, false] {
            let found = match cosine {
                true => cosine_knn(&queries, &refs, dim, k, false),
                false => euclidean_knn(&queries, &refs, dim, k, false),
            };
            let want = brute(&queries, &refs, dim, k, false, cosine);
            assert_eq!(found.queries(), queries.len() / dim);
            for (q, want) in want.iter().enumerate() {
                let got: Vec<usize> = found.of(q).map(|(i, _)| i).collect();
                assert_eq!(&got, want, "query {q}, cosine {cosine}");
            }
        }
    }

    #[test]
    fn a_set_against_itself_leaves_each_row_out_and_keeps_ties_in_index_order() {
        // Rows 0, 1 and 3 are the same vector; row 2 is opposite.
        let set = [1.0, 0.0, 2.0, 0.0, -1.0, 0.0, 3.0, 0.0];
        let found = cosine_knn(&set, &set, 2, 3, true);
        assert_eq!(found.of(0).collect::<Vec<_>>(), vec![(1, 1.0), (3, 1.0), (2, -1.0)]);
        assert_eq!(found.nearest(3), Some((0, 1.0)));
        // Fewer other rows than k: the rest stay empty.
        let found = euclidean_knn(&set, &set, 2, 5, true);
        assert_eq!(found.of(0).count(), 3);
        assert_eq!(found.nearest(0), Some((1, 1.0)));
        assert_eq!(found.of(2).next(), Some((0, 2.0)));
    }

    #[test]
    fn distances_are_euclidean_and_zero_rows_have_similarity_zero() {
        let refs = [0.0, 0.0, 3.0, 4.0];
        let found = euclidean_knn(&[0.0, 0.0], &refs, 2, 2, false);
        assert_eq!(found.of(0).collect::<Vec<_>>(), vec![(0, 0.0), (1, 5.0)]);
        let found = cosine_knn(&[0.0, 0.0], &refs, 2, 1, false);
        assert_eq!(found.nearest(0), Some((0, 0.0)));
        assert_eq!(cosine_knn(&[], &refs, 2, 1, false).queries(), 0);
    }
}
