//! Approximate nearest neighbours, for sets too large for exact search: an HNSW graph (USearch) proposes
//! candidates, which are scored again exactly (f64) and ranked as the exact search ranks them. How much the
//! graph misses is measured each time it is used for many queries: recall@10 against exact search on a sample
//! of the queries ([`Recall`]), so an index never hides its quality loss.
//!
//! Not bit-reproducible between runs: the graph is built on every core, in the order the threads take the
//! rows (the scores of what it finds are exact). Does not choose between exact and approximate search: that
//! is [`crate::knn::search`].

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use usearch::{Index as Graph, IndexOptions, MetricKind, ScalarKind};

use crate::knn::Metric;
use crate::ClassifyError;

/// Links a node keeps per layer (twice this in the bottom layer) and the candidates kept while adding and
/// searching. Measured on 1,000,000 synthetic 50-d rows (bench/README.md): Euclidean recall@10 0.98 with 100
/// candidates while adding and 64 while searching, 0.96 with 64 and 48; the audit's cosine search with these
/// values: 0.935.
const CONNECTIVITY: usize = 16;
const EXPANSION_ADD: usize = 64;
const EXPANSION_SEARCH: usize = 64;
/// Recall is measured at 10 neighbours, on this many queries (or all, when fewer).
pub const RECALL_AT: usize = 10;
pub const RECALL_SAMPLE: usize = 1000;

/// recall@10 of an index against exact search, on `sample` queries spread evenly over the queries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// The share of the exact 10 nearest that the index found (a neighbour tied with the exact 10th counts).
    pub recall_at_10: f64,
    pub sample: usize,
}

/// An HNSW graph over the rows of a reference set (row `i` has key `i`). It holds the rows in f32 for its own
/// distances; [`Index::nearest`] takes the f64 rows again to score what it found exactly.
pub struct Index {
    graph: Graph,
    metric: Metric,
    dim: usize,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("rows", &self.len())
            .field("dim", &self.dim)
            .field("metric", &self.metric)
            .finish()
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> ClassifyError {
    ClassifyError::Index(format!("{what}: {e}"))
}

impl Index {
    fn empty(dim: usize, metric: Metric) -> Result<Index, ClassifyError> {
        let options = IndexOptions {
            dimensions: dim,
            // Cosine rows arrive unit-length: their inner product is the similarity.
            metric: match metric {
                Metric::Cosine => MetricKind::IP,
                Metric::Euclidean => MetricKind::L2sq,
            },
            quantization: ScalarKind::F32,
            connectivity: CONNECTIVITY,
            expansion_add: EXPANSION_ADD,
            expansion_search: EXPANSION_SEARCH,
            multi: false,
        };
        let graph = Graph::new(&options).map_err(|e| failed("creating the index", e))?;
        Ok(Index { graph, metric, dim })
    }

    /// The graph of `rows` (`dim` values each, row-major; unit rows for [`Metric::Cosine`]), built on every
    /// core.
    pub fn build(rows: &[f64], dim: usize, metric: Metric) -> Result<Index, ClassifyError> {
        if dim == 0 || !rows.len().is_multiple_of(dim) {
            return Err(ClassifyError::Shape { rows: rows.len(), dim });
        }
        let index = Index::empty(dim, metric)?;
        let n = rows.len() / dim;
        index
            .graph
            .reserve_capacity_and_threads(n, rayon::current_num_threads())
            .map_err(|e| failed(&format!("reserving room for {n} rows"), e))?;
        rows.par_chunks_exact(dim).enumerate().try_for_each(|(i, row)| {
            let row: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            index
                .graph
                .add(i as u64, &row)
                .map_err(|e| failed(&format!("adding row {i}"), e))
        })?;
        Ok(index)
    }

    /// How many rows the graph holds.
    pub fn len(&self) -> usize {
        self.graph.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The graph as bytes, for [`Index::from_bytes`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, ClassifyError> {
        let mut bytes = vec![0u8; self.graph.serialized_length()];
        self.graph
            .save_to_buffer(&mut bytes)
            .map_err(|e| failed("saving the index", e))?;
        Ok(bytes)
    }

    /// A graph saved by [`Index::to_bytes`], for rows of `dim` values compared by `metric`.
    pub fn from_bytes(bytes: &[u8], dim: usize, metric: Metric) -> Result<Index, ClassifyError> {
        let index = Index::empty(dim, metric)?;
        index
            .graph
            .load_from_buffer(bytes)
            .map_err(|e| failed("loading the index", e))?;
        if index.graph.dimensions() != dim {
            return Err(ClassifyError::Index(format!(
                "the saved index holds rows of {} values, not {dim}",
                index.graph.dimensions()
            )));
        }
        Ok(index)
    }

    /// The `k` rows nearest to `query` among those the graph proposes, best first, as (row index, score):
    /// `rows` are the f64 rows the graph was built from, and score as in [`crate::knn::Neighbours`] (cosine
    /// similarity of unit rows, or Euclidean distance). `skip` leaves one row out (a query's own row).
    pub fn nearest(
        &self,
        rows: &[f64],
        query: &[f64],
        k: usize,
        skip: Option<usize>,
    ) -> Result<Vec<(usize, f64)>, ClassifyError> {
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        // USearch keeps max(EXPANSION_SEARCH, want) candidates while it searches.
        let want = k + usize::from(skip.is_some());
        let q32: Vec<f32> = query.iter().map(|&v| v as f32).collect();
        let found = self
            .graph
            .search(&q32, want)
            .map_err(|e| failed("searching the index", e))?;
        let mut scored: Vec<(usize, f64)> = found
            .keys
            .iter()
            .map(|&key| key as usize)
            .filter(|&i| Some(i) != skip && (i + 1) * self.dim <= rows.len())
            .map(|i| (i, self.metric.rank(query, &rows[i * self.dim..(i + 1) * self.dim])))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        Ok(scored.into_iter().map(|(i, s)| (i, self.metric.score(s))).collect())
    }
}

impl Metric {
    /// Higher is nearer: the dot product of unit rows, or minus the squared distance.
    pub(crate) fn rank(self, a: &[f64], b: &[f64]) -> f64 {
        match self {
            Metric::Cosine => a.iter().zip(b).map(|(x, y)| x * y).sum(),
            Metric::Euclidean => -a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>(),
        }
    }

    /// The score reported for a rank: the similarity, or the distance.
    pub(crate) fn score(self, rank: f64) -> f64 {
        match self {
            Metric::Cosine => rank,
            Metric::Euclidean => (-rank).max(0.0).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_index_finds_what_it_found_and_refuses_other_rows() {
        let rows: Vec<f64> = (0..300).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
        let index = Index::build(&rows, 3, Metric::Euclidean).unwrap();
        assert_eq!(index.len(), 100);
        let query = [1.0, 2.0, 3.0];
        let found = index.nearest(&rows, &query, 4, None).unwrap();
        let again = Index::from_bytes(&index.to_bytes().unwrap(), 3, Metric::Euclidean).unwrap();
        assert_eq!(again.nearest(&rows, &query, 4, None).unwrap(), found);
        assert!(matches!(
            Index::from_bytes(&index.to_bytes().unwrap(), 4, Metric::Euclidean),
            Err(ClassifyError::Index(_))
        ));
        assert!(Index::from_bytes(b"not an index", 3, Metric::Euclidean).is_err());
        assert!(matches!(
            Index::build(&rows[..7], 3, Metric::Euclidean),
            Err(ClassifyError::Shape { .. })
        ));
    }
}
