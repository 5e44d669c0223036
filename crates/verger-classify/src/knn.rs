//! k nearest neighbours of many rows at once: cosine similarity for feature vectors, Euclidean distance for
//! PCA rows. [`search`] chooses: exact search by blocked matrix products (faer) on every core while queries ×
//! references stay within [`EXACT_MAX_PAIRS`], an HNSW index ([`crate::ann`]) beyond, with its recall@10
//! measured every time ([`Method`]).
//!
//! Exact search costs queries × references; it is deterministic: each product is summed in one order
//! whatever the threads, and ties go to the lower reference index.

use std::str::FromStr;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ann::{self, Recall};
use crate::ClassifyError;

/// Exact search up to this many query-reference pairs (a set of 100,000 rows against itself), an index
/// beyond. Chosen, not yet measured as the crossover (`bench/quality.py --only peer` measures it).
pub const EXACT_MAX_PAIRS: u64 = 10_000_000_000;

/// How rows are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Cosine,
    Euclidean,
}

/// Which search to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Search {
    /// Exact within [`EXACT_MAX_PAIRS`], approximate beyond.
    #[default]
    Auto,
    Exact,
    Approximate,
}

impl FromStr for Search {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Search::Auto),
            "exact" => Ok(Search::Exact),
            "approximate" => Ok(Search::Approximate),
            other => Err(format!("a search is auto, exact or approximate, not {other:?}")),
        }
    }
}

/// How a search was made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Method {
    Exact,
    /// An HNSW index, with its recall@10 against exact search.
    Approximate(Recall),
}

/// Queries a block, references a block: a 256 × 2048 product (4 MiB) stays in cache-friendly pieces and
/// gives every core its own query blocks.
const QUERY_BLOCK: usize = 256;
const REFERENCE_BLOCK: usize = 2048;

/// Each query's `k` nearest references, best first. A slot stays empty where there are fewer than `k`
/// references (or fewer than `k` other rows, when a set is searched against itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    k: usize,
    method: Method,
    /// `k` slots a query: reference index, or `usize::MAX` when empty.
    index: Vec<usize>,
    /// Cosine similarity (highest first) or Euclidean distance (lowest first), by slot.
    score: Vec<f64>,
}

impl Neighbours {
    pub fn k(&self) -> usize {
        self.k
    }

    /// Exact, or approximate with the index's measured recall.
    pub fn method(&self) -> Method {
        self.method
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
    let skip = |q: usize, r: usize| same_rows && q == r;
    with_units(queries, references, dim, same_rows, |q, r| {
        blocked(q, r, dim, k, skip, |dot, _, _| dot)
    })
}

/// `search` on unit-length copies of the queries and references: one copy of a set searched against itself
/// (1 GB at 100,000 features).
fn with_units<T>(
    queries: &[f64],
    references: &[f64],
    dim: usize,
    same_rows: bool,
    search: impl FnOnce(&[f64], &[f64]) -> T,
) -> T {
    let references = unit(references, dim);
    let queries = (!same_rows).then(|| unit(queries, dim));
    search(queries.as_deref().unwrap_or(&references), &references)
}

/// Rows scaled to length 1 (a zero row stays zero).
fn unit(rows: &[f64], dim: usize) -> Vec<f64> {
    rows.chunks_exact(dim)
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            row.iter().map(move |v| v * scale)
        })
        .collect()
}

/// For each row of `queries`, the `k` rows of `references` nearest in Euclidean distance, as in
/// [`cosine_knn`]; the scores are distances, lowest first.
pub fn euclidean_knn(queries: &[f64], references: &[f64], dim: usize, k: usize, same_rows: bool) -> Neighbours {
    let mut found = euclidean_ranks(queries, references, dim, k, |q, r| same_rows && q == r);
    found.score.iter_mut().for_each(|s| *s = Metric::Euclidean.score(*s));
    found
}

/// Exact neighbours ranked by minus the squared distance, so that the highest rank is the nearest.
fn euclidean_ranks(
    queries: &[f64],
    references: &[f64],
    dim: usize,
    k: usize,
    skip: impl Fn(usize, usize) -> bool + Sync,
) -> Neighbours {
    let squares =
        |rows: &[f64]| -> Vec<f64> { rows.chunks_exact(dim).map(|r| r.iter().map(|v| v * v).sum()).collect() };
    let (q2, r2) = (squares(queries), squares(references));
    blocked(queries, references, dim, k, skip, |dot, q, r| {
        -(q2[q] + r2[r] - 2.0 * dot)
    })
}

/// For each row of `queries`, its `k` nearest rows of `references` by `metric`, as [`cosine_knn`] or
/// [`euclidean_knn`] find them when `search` (or [`Search::Auto`] within [`EXACT_MAX_PAIRS`]) asks for
/// exact search; otherwise through an HNSW index over `references`, whose recall@10 against exact search on
/// a sample of the queries the result carries ([`Neighbours::method`]).
pub fn search(
    queries: &[f64],
    references: &[f64],
    dim: usize,
    k: usize,
    same_rows: bool,
    metric: Metric,
    search: Search,
) -> Result<Neighbours, ClassifyError> {
    if dim == 0 || !queries.len().is_multiple_of(dim) || !references.len().is_multiple_of(dim) {
        return Err(ClassifyError::Shape {
            rows: queries.len().max(references.len()),
            dim,
        });
    }
    let pairs = (queries.len() / dim) as u64 * (references.len() / dim) as u64;
    let exact = match search {
        Search::Exact => true,
        Search::Approximate => false,
        Search::Auto => pairs <= EXACT_MAX_PAIRS,
    };
    Ok(match (exact, metric) {
        (true, Metric::Cosine) => cosine_knn(queries, references, dim, k, same_rows),
        (true, Metric::Euclidean) => euclidean_knn(queries, references, dim, k, same_rows),
        (false, Metric::Cosine) => with_units(queries, references, dim, same_rows, |q, r| {
            approximate(q, r, dim, k, same_rows, metric)
        })?,
        (false, Metric::Euclidean) => approximate(queries, references, dim, k, same_rows, metric)?,
    })
}

/// [`search`] through an index (rows already unit-length for cosine).
fn approximate(
    queries: &[f64],
    references: &[f64],
    dim: usize,
    k: usize,
    same_rows: bool,
    metric: Metric,
) -> Result<Neighbours, ClassifyError> {
    search_with(
        &ann::Index::build(references, dim, metric)?,
        queries,
        references,
        dim,
        k,
        same_rows,
    )
}

/// [`search`] through an index already built over `references` (unit rows for cosine, as the queries), with
/// its recall measured on these queries.
pub fn search_with(
    index: &ann::Index,
    queries: &[f64],
    references: &[f64],
    dim: usize,
    k: usize,
    same_rows: bool,
) -> Result<Neighbours, ClassifyError> {
    let metric = index.metric();
    let nq = queries.len() / dim;
    let mut found = Neighbours {
        k,
        method: Method::Exact,
        index: vec![usize::MAX; nq * k],
        score: vec![f64::NEG_INFINITY; nq * k],
    };
    if k > 0 {
        found
            .index
            .par_chunks_mut(k)
            .zip(found.score.par_chunks_mut(k))
            .enumerate()
            .try_for_each(|(q, (slots, scores))| {
                let query = &queries[q * dim..(q + 1) * dim];
                for (at, (i, s)) in index
                    .nearest(references, query, k, same_rows.then_some(q))?
                    .into_iter()
                    .enumerate()
                {
                    slots[at] = i;
                    scores[at] = s;
                }
                Ok::<_, ClassifyError>(())
            })?;
    }
    found.method = Method::Approximate(recall(index, queries, references, dim, same_rows, metric)?);
    Ok(found)
}

/// The index's recall@10 against exact search, on up to [`ann::RECALL_SAMPLE`] queries spread evenly.
fn recall(
    index: &ann::Index,
    queries: &[f64],
    references: &[f64],
    dim: usize,
    same_rows: bool,
    metric: Metric,
) -> Result<Recall, ClassifyError> {
    let nq = queries.len() / dim;
    let sample: Vec<usize> = (0..ann::RECALL_SAMPLE.min(nq))
        .map(|i| i * nq / ann::RECALL_SAMPLE.min(nq))
        .collect();
    let rows: Vec<f64> = sample
        .iter()
        .flat_map(|&q| queries[q * dim..(q + 1) * dim].iter().copied())
        .collect();
    let skip = |s: usize, r: usize| same_rows && sample[s] == r;
    // Ranks, higher nearer, for both.
    let exact = match metric {
        Metric::Cosine => blocked(&rows, references, dim, ann::RECALL_AT, skip, |dot, _, _| dot),
        Metric::Euclidean => euclidean_ranks(&rows, references, dim, ann::RECALL_AT, skip),
    };
    let (mut hits, mut wanted) = (0usize, 0usize);
    for (s, &q) in sample.iter().enumerate() {
        let truth: Vec<(usize, f64)> = exact.of(s).collect();
        let Some(&(_, last)) = truth.last() else { continue };
        let query = &queries[q * dim..(q + 1) * dim];
        let got = index.nearest(references, query, truth.len(), same_rows.then_some(q))?;
        // A neighbour as near as the exact last one is as good (ties).
        hits += got
            .iter()
            .filter(|&&(i, _)| {
                metric.rank(query, &references[i * dim..(i + 1) * dim]) >= last - 1e-12 * last.abs().max(1.0)
            })
            .count();
        wanted += truth.len();
    }
    Ok(Recall {
        recall_at_10: if wanted == 0 { 1.0 } else { hits as f64 / wanted as f64 },
        sample: sample.len(),
    })
}

/// The `k` highest `score(q · r, q, r)` of each query, over references in blocks.
fn blocked(
    queries: &[f64],
    references: &[f64],
    dim: usize,
    k: usize,
    skip: impl Fn(usize, usize) -> bool + Sync,
    score: impl Fn(f64, usize, usize) -> f64 + Sync,
) -> Neighbours {
    assert!(dim > 0, "rows of no values");
    assert_eq!(queries.len() % dim, 0, "queries are not whole rows");
    assert_eq!(references.len() % dim, 0, "references are not whole rows");
    let (nq, nr) = (queries.len() / dim, references.len() / dim);
    let mut found = Neighbours {
        k,
        method: Method::Exact,
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
                        if skip(q0 + i, r0 + j) {
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

    /// Rows around a few centres, as features and PCA rows are.
    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f64> {
        let noise = rows(n, dim, seed);
        let centres = rows(7, dim, seed + 1);
        (0..n * dim)
            .map(|v| 4.0 * centres[(v / dim % 7) * dim + v % dim] + noise[v])
            .collect()
    }

    #[test]
    fn the_index_reports_the_recall_brute_force_measures_and_scores_what_it_finds_exactly() {
        let (dim, k, n) = (8, 5, 3000);
        let set = clustered(n, dim, 3);
        for (metric, cosine) in [(Metric::Cosine, true), (Metric::Euclidean, false)] {
            let found = search(&set, &set, dim, k, true, metric, Search::Approximate).unwrap();
            let Method::Approximate(recall) = found.method() else {
                panic!("asked for the index")
            };
            assert_eq!(recall.sample, ann::RECALL_SAMPLE);
            // The same recall, measured here by brute force on the same sample (no ties in random rows).
            let truth = brute(&set, &set, dim, ann::RECALL_AT, true, cosine);
            let index = ann::Index::build(&if cosine { unit(&set, dim) } else { set.clone() }, dim, metric).unwrap();
            let (mut hits, mut wanted) = (0, 0);
            for q in (0..ann::RECALL_SAMPLE).map(|i| i * n / ann::RECALL_SAMPLE) {
                let rows = if cosine { unit(&set, dim) } else { set.clone() };
                let got = index
                    .nearest(&rows, &rows[q * dim..(q + 1) * dim], 10, Some(q))
                    .unwrap();
                hits += got.iter().filter(|(i, _)| truth[q].contains(i)).count();
                wanted += 10;
            }
            let measured = hits as f64 / wanted as f64;
            assert!(recall.recall_at_10 >= 0.9, "{metric:?}: recall {}", recall.recall_at_10);
            // The graph is built on every core, so the two graphs may differ slightly.
            assert!(
                (recall.recall_at_10 - measured).abs() < 0.02,
                "{} vs {measured}",
                recall.recall_at_10
            );
            for q in 0..n {
                let got: Vec<(usize, f64)> = found.of(q).collect();
                assert_eq!(got.len(), k);
                assert!(got.iter().all(|&(i, _)| i != q), "query {q} is its own neighbour");
                assert!(got.windows(2).all(|w| w[0].1 >= w[1].1 || !cosine), "best first");
                for &(i, score) in &got {
                    let (a, b) = (&set[q * dim..(q + 1) * dim], &set[i * dim..(i + 1) * dim]);
                    let exact = match cosine {
                        true => {
                            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                            let norm = |r: &[f64]| r.iter().map(|v| v * v).sum::<f64>().sqrt();
                            dot / (norm(a) * norm(b))
                        }
                        false => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt(),
                    };
                    assert!(
                        (score - exact).abs() < 1e-9,
                        "query {q} neighbour {i}: {score} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn auto_searches_exactly_within_the_limit_and_shapes_are_checked() {
        let set = clustered(500, 4, 5);
        let found = search(&set, &set, 4, 3, true, Metric::Euclidean, Search::Auto).unwrap();
        assert_eq!(found.method(), Method::Exact);
        assert_eq!(found, euclidean_knn(&set, &set, 4, 3, true));
        assert!(matches!(
            search(&set[..7], &set, 4, 3, false, Metric::Cosine, Search::Auto),
            Err(ClassifyError::Shape { .. })
        ));
        assert_eq!("approximate".parse::<Search>(), Ok(Search::Approximate));
        assert!("fast"
            .parse::<Search>()
            .unwrap_err()
            .contains("auto, exact or approximate"));
    }
}
