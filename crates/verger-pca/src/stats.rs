use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, Par};

/// Count, mean and centred co-moment matrix (Σ (x − mean)(x − mean)ᵀ) of a set of `dim`-vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct PcaStats {
    dim: usize,
    count: u64,
    mean: Vec<f64>,
    /// `dim × dim` co-moment matrix. Only its upper triangle (i <= j) is kept up to date: the matrix is
    /// symmetric, and computing half of it halves the dominant cost, `Xᵀ X`.
    comoment: Mat<f64>,
}

impl PcaStats {
    pub fn new(dim: usize) -> Self {
        PcaStats {
            dim,
            count: 0,
            mean: vec![0.0; dim],
            comoment: Mat::zeros(dim, dim),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Adds `rows.len() / dim` row-major vectors: their co-moment about their own mean goes straight into
    /// this one (no temporary `dim × dim` matrix), then [`PcaStats::shift`] accounts for the two means.
    pub fn add_rows(&mut self, rows: &[f32]) {
        assert_eq!(
            rows.len() % self.dim,
            0,
            "rows must hold whole vectors of length {}",
            self.dim
        );
        let n = rows.len() / self.dim;
        if n == 0 {
            return;
        }
        let mut mean = vec![0.0f64; self.dim];
        for row in rows.chunks_exact(self.dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let centred = Mat::from_fn(n, self.dim, |i, j| f64::from(rows[i * self.dim + j]) - mean[j]);
        matmul(
            &mut self.comoment,
            BlockStructure::TriangularUpper,
            Accum::Add,
            centred.transpose(),
            BlockStructure::Rectangular,
            &centred,
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        self.shift(n as u64, &mean);
    }

    /// Combines two summaries as if their rows had been added to one.
    pub fn merge(&mut self, other: &PcaStats) {
        assert_eq!(self.dim, other.dim, "cannot merge statistics of different dimensions");
        if other.count == 0 {
            return;
        }
        for j in 0..self.dim {
            let column = &mut self.comoment.col_as_slice_mut(j)[..=j];
            for (c, o) in column.iter_mut().zip(&other.comoment.col_as_slice(j)[..=j]) {
                *c += o;
            }
        }
        self.shift(other.count, &other.mean);
    }

    /// Takes out a summary of rows that were added to this one: the inverse of [`PcaStats::merge`] (equal to
    /// summarising the remaining rows, up to rounding), so that stored statistics can lose deleted rows.
    pub fn remove(&mut self, other: &PcaStats) {
        assert_eq!(self.dim, other.dim, "cannot remove statistics of different dimensions");
        assert!(other.count <= self.count, "cannot remove more rows than were added");
        if other.count == 0 {
            return;
        }
        if other.count == self.count {
            *self = PcaStats::new(self.dim);
            return;
        }
        let (n, nb) = (self.count as f64, other.count as f64);
        let na = n - nb;
        // The remaining rows' mean, and the merge's cross term (na nb / n) δ δᵀ with δ = mean_b − mean_a.
        let mean: Vec<f64> = self
            .mean
            .iter()
            .zip(&other.mean)
            .map(|(m, b)| m + (m - b) * nb / na)
            .collect();
        let delta: Vec<f64> = other.mean.iter().zip(&mean).map(|(b, a)| b - a).collect();
        let weight = na * nb / n;
        for j in 0..self.dim {
            let scale = delta[j] * weight;
            let column = &mut self.comoment.col_as_slice_mut(j)[..=j];
            for ((c, o), d) in column.iter_mut().zip(&other.comoment.col_as_slice(j)[..=j]).zip(&delta) {
                *c -= o + d * scale;
            }
        }
        self.mean = mean;
        self.count -= other.count;
    }

    /// Chan et al.'s merge, once both co-moments are summed: adds `count` vectors with mean `mean` to the count
    /// and the mean, and the co-moment term their mean's distance from the old one brings.
    fn shift(&mut self, count: u64, mean: &[f64]) {
        let (na, nb) = (self.count as f64, count as f64);
        let n = na + nb;
        let delta: Vec<f64> = mean.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        let weight = na * nb / n;
        for j in 0..self.dim {
            let scale = delta[j] * weight;
            let column = &mut self.comoment.col_as_slice_mut(j)[..=j];
            for (c, d) in column.iter_mut().zip(&delta) {
                *c += d * scale;
            }
        }
        for (m, d) in self.mean.iter_mut().zip(&delta) {
            *m += d * nb / n;
        }
        self.count += count;
    }

    /// Sample covariance, divided by count − 1 (Spark's convention).
    pub fn covariance(&self) -> Mat<f64> {
        let denominator = (self.count.max(2) - 1) as f64;
        Mat::from_fn(self.dim, self.dim, |i, j| {
            self.comoment[(i.min(j), i.max(j))] / denominator
        })
    }

    /// Compact little-endian encoding: dim, count, mean, then the co-moment's upper triangle column by column
    /// (column j holds rows 0..=j).
    pub fn to_bytes(&self) -> Vec<u8> {
        let triangle = self.dim * (self.dim + 1) / 2;
        let mut out = Vec::with_capacity(16 + 8 * (self.dim + triangle));
        out.extend_from_slice(&(self.dim as u64).to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        let upper = (0..self.dim).flat_map(|j| &self.comoment.col_as_slice(j)[..=j]);
        for v in self.mean.iter().chain(upper) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Inverse of [`PcaStats::to_bytes`]; `None` when the bytes are not such an encoding.
    pub fn from_bytes(bytes: &[u8]) -> Option<PcaStats> {
        let word = |k: usize| {
            bytes
                .get(8 * k..8 * k + 8)
                .map(|w| <[u8; 8]>::try_from(w).expect("8 bytes"))
        };
        let dim = usize::try_from(u64::from_le_bytes(word(0)?)).ok()?;
        let count = u64::from_le_bytes(word(1)?);
        if bytes.len() != 16 + 8 * (dim + dim * (dim + 1) / 2) {
            return None;
        }
        let mut values = bytes[16..]
            .chunks_exact(8)
            .map(|w| f64::from_le_bytes(w.try_into().expect("8 bytes")));
        let mean: Vec<f64> = values.by_ref().take(dim).collect();
        let mut comoment = Mat::zeros(dim, dim);
        for j in 0..dim {
            for (slot, v) in comoment.col_as_slice_mut(j)[..=j].iter_mut().zip(values.by_ref()) {
                *slot = v;
            }
        }
        Some(PcaStats {
            dim,
            count,
            mean,
            comoment,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: &PcaStats, b: &PcaStats) -> bool {
        let scale = 1.0 + b.covariance().norm_max();
        a.count == b.count
            && a.mean.iter().zip(&b.mean).all(|(x, y)| (x - y).abs() <= 1e-12 * scale)
            && (a.covariance() - b.covariance()).norm_max() <= 1e-10 * scale
    }

    proptest! {
        /// Statistics merged from any split into partitions equal the single-partition result.
        #[test]
        fn merging_partitions_equals_one_pass(
            rows in proptest::collection::vec(proptest::collection::vec(-6.0f32..6.0, 5), 2..60),
            cuts in proptest::collection::vec(0usize..60, 0..6),
        ) {
            let flat: Vec<f32> = rows.concat();
            let mut whole = PcaStats::new(5);
            whole.add_rows(&flat);

            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % rows.len()).collect();
            bounds.extend([0, rows.len()]);
            bounds.sort_unstable();
            let mut merged = PcaStats::new(5);
            for w in bounds.windows(2) {
                let mut part = PcaStats::new(5);
                part.add_rows(&flat[w[0] * 5..w[1] * 5]);
                let restored = PcaStats::from_bytes(&part.to_bytes()).expect("round trip");
                merged.merge(&restored);
            }
            prop_assert!(close(&merged, &whole));
        }

        /// Removing a summary of some rows leaves the summary of the others.
        #[test]
        fn removing_rows_equals_never_adding_them(
            rows in proptest::collection::vec(proptest::collection::vec(-6.0f32..6.0, 5), 3..60),
            cut in 1usize..59,
        ) {
            let cut = 1 + cut % (rows.len() - 2);
            let (kept, removed) = (rows[..cut].concat(), rows[cut..].concat());
            let mut whole = PcaStats::new(5);
            whole.add_rows(&rows.concat());
            let mut gone = PcaStats::new(5);
            gone.add_rows(&removed);
            whole.remove(&gone);
            let mut expected = PcaStats::new(5);
            expected.add_rows(&kept);
            prop_assert!(close(&whole, &expected));
            whole.remove(&expected);
            prop_assert_eq!(whole, PcaStats::new(5));
        }
    }

    #[test]
    fn covariance_matches_the_textbook_formula() {
        let rows = [1.0f32, 2.0, 3.0, 5.0, 2.0, 0.5, 4.0, 4.0];
        let mut s = PcaStats::new(2);
        s.add_rows(&rows);
        let c = s.covariance();
        let xs = [1.0, 3.0, 2.0, 4.0];
        let ys = [2.0, 5.0, 0.5, 4.0];
        let (mx, my) = (2.5, 2.875);
        let cxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / 3.0;
        assert!((c[(0, 1)] - cxy).abs() < 1e-12);
        assert!((s.mean()[1] - my).abs() < 1e-12);
    }

    #[test]
    fn rejects_foreign_bytes() {
        assert!(PcaStats::from_bytes(b"not statistics").is_none());
        assert!(PcaStats::from_bytes(&[]).is_none());
    }
}
