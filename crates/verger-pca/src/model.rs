use faer::Side;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::stats::PcaStats;

#[derive(Debug, Error, PartialEq)]
pub enum PcaError {
    #[error("PCA needs at least 2 vectors, got {0}")]
    TooFewRows(u64),
    #[error("k = {k} is out of range 1..={dim}")]
    BadK { k: usize, dim: usize },
    #[error("variance fraction {0} is out of range (0, 1]")]
    BadFraction(f64),
    #[error("eigendecomposition did not converge")]
    NoConvergence,
}

/// How many components to keep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Components {
    /// Exactly this many.
    Count(usize),
    /// The fewest whose cumulative explained-variance ratio reaches this fraction.
    VarianceFraction(f64),
}

/// A fitted PCA, saved as JSON beside the results and readable from any language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaModel {
    pub dim: usize,
    pub k: usize,
    pub count: u64,
    /// Whether [`PcaModel::project`] subtracts `mean` first (Spark does not).
    pub center: bool,
    pub mean: Vec<f64>,
    /// `k` rows of `dim` values: the principal axes, largest variance first.
    pub components: Vec<Vec<f64>>,
    /// All `dim` eigenvalues of the covariance, descending.
    pub eigenvalues: Vec<f64>,
    /// All `dim` eigenvalues over their sum.
    pub explained_variance_ratio: Vec<f64>,
}

/// Fits PCA from merged statistics.
pub fn fit(stats: &PcaStats, components: Components, center: bool) -> Result<PcaModel, PcaError> {
    let dim = stats.dim();
    if stats.count() < 2 {
        return Err(PcaError::TooFewRows(stats.count()));
    }
    let eigen = stats
        .covariance()
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| PcaError::NoConvergence)?;
    let values = eigen.S().column_vector();
    let vectors = eigen.U();
    // faer sorts ascending; PCA wants descending.
    let order: Vec<usize> = (0..dim).rev().collect();
    let eigenvalues: Vec<f64> = order.iter().map(|&i| values[i]).collect();
    let total: f64 = eigenvalues.iter().sum();
    let explained_variance_ratio: Vec<f64> = eigenvalues.iter().map(|v| v / total).collect();

    let k = match components {
        Components::Count(k) if (1..=dim).contains(&k) => k,
        Components::Count(k) => return Err(PcaError::BadK { k, dim }),
        Components::VarianceFraction(f) if f > 0.0 && f <= 1.0 => {
            let mut cumulative = 0.0;
            explained_variance_ratio
                .iter()
                .position(|r| {
                    cumulative += r;
                    cumulative >= f - 1e-12
                })
                .map_or(dim, |i| i + 1)
        }
        Components::VarianceFraction(f) => return Err(PcaError::BadFraction(f)),
    };
    let components = order[..k]
        .iter()
        .map(|&c| {
            let mut axis: Vec<f64> = (0..dim).map(|i| vectors[(i, c)]).collect();
            // Eigenvector signs are arbitrary; fix them so that reruns agree: largest entry positive.
            let largest = axis
                .iter()
                .copied()
                .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
            if largest < 0.0 {
                axis.iter_mut().for_each(|v| *v = -*v);
            }
            axis
        })
        .collect();
    Ok(PcaModel {
        dim,
        k,
        count: stats.count(),
        center,
        mean: stats.mean().to_vec(),
        components,
        eigenvalues,
        explained_variance_ratio,
    })
}

impl PcaModel {
    /// Projects one vector onto the `k` components.
    pub fn project(&self, row: &[f32]) -> Vec<f64> {
        assert_eq!(row.len(), self.dim, "vector length differs from the model's");
        let x: Vec<f64> = if self.center {
            row.iter().zip(&self.mean).map(|(&v, m)| f64::from(v) - m).collect()
        } else {
            row.iter().map(|&v| f64::from(v)).collect()
        };
        self.components.iter().map(|axis| dot(axis, &x)).collect()
    }

    /// The principal angles, in degrees and ascending, between the spans of this model's components and
    /// `other`'s (over the fewer of the two counts): how far a refit basis has drifted from a saved one.
    /// 0 means the same subspace, 90 an axis the other does not span at all.
    pub fn principal_angles(&self, other: &PcaModel) -> Result<Vec<f64>, PcaError> {
        assert_eq!(self.dim, other.dim, "models of different dimensions");
        let (a, b) = match self.k <= other.k {
            true => (&self.components, &other.components),
            false => (&other.components, &self.components),
        };
        // The cosines of the angles are the singular values of AᵀB (Björck and Golub): the square roots of
        // the eigenvalues of (AᵀB)(AᵀB)ᵀ, a k×k matrix.
        let cross: Vec<Vec<f64>> = a.iter().map(|u| b.iter().map(|v| dot(u, v)).collect()).collect();
        let k = a.len();
        let gram = faer::Mat::from_fn(k, k, |i, j| dot(&cross[i], &cross[j]));
        let eigen = gram
            .self_adjoint_eigen(Side::Lower)
            .map_err(|_| PcaError::NoConvergence)?;
        let values = eigen.S().column_vector();
        let mut angles: Vec<f64> = (0..k)
            .map(|i| values[i].clamp(0.0, 1.0).sqrt().acos().to_degrees())
            .collect();
        angles.sort_by(f64::total_cmp);
        Ok(angles)
    }

    /// Sum of the kept components' explained-variance ratios.
    pub fn explained_variance(&self) -> f64 {
        self.explained_variance_ratio[..self.k].iter().sum()
    }

    /// The model bit for bit (decimal JSON floats need not parse back to the same bits), so that every
    /// process projects with exactly the model that was fitted: a tag, `dim`, `k`, `count`, `center`, then
    /// mean, components, eigenvalues and ratios as little-endian float64.
    pub fn to_exact_bytes(&self) -> Vec<u8> {
        let floats = self.dim * 3 + self.k * self.dim;
        let mut out = Vec::with_capacity(EXACT_TAG.len() + 25 + 8 * floats);
        out.extend_from_slice(EXACT_TAG);
        for n in [self.dim as u64, self.k as u64, self.count] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.push(u8::from(self.center));
        let rows = std::iter::once(&self.mean)
            .chain(&self.components)
            .chain([&self.eigenvalues, &self.explained_variance_ratio]);
        for v in rows.flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The model [`PcaModel::to_exact_bytes`] wrote; `None` for anything else (wrong tag, truncated, extra
    /// bytes, inconsistent sizes).
    pub fn from_exact_bytes(bytes: &[u8]) -> Option<PcaModel> {
        let rest = bytes.strip_prefix(EXACT_TAG)?;
        let word = |i: usize| Some(u64::from_le_bytes(rest.get(i * 8..i * 8 + 8)?.try_into().ok()?));
        let (dim, k, count) = (word(0)? as usize, word(1)? as usize, word(2)?);
        let center = match *rest.get(24)? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let floats = &rest[25..];
        if k > dim || floats.len() != 8 * (dim.checked_mul(3 + k)?) {
            return None;
        }
        let values: Vec<f64> = floats
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let (mean, rest) = values.split_at(dim);
        let (components, rest) = rest.split_at(k * dim);
        let (eigenvalues, ratios) = rest.split_at(dim);
        Some(PcaModel {
            dim,
            k,
            count,
            center,
            mean: mean.to_vec(),
            components: components.chunks(dim.max(1)).map(<[f64]>::to_vec).collect(),
            eigenvalues: eigenvalues.to_vec(),
            explained_variance_ratio: ratios.to_vec(),
        })
    }
}

const EXACT_TAG: &[u8] = b"verger-pca-model-v1:";

/// `a · x` with [`LANES`] running sums, added up in a fixed order: vectorizable (one running sum waits on the
/// latency of every addition), and the same bits for a row wherever and in whatever batch it is projected, on
/// every CPU: the AVX versions only hold the lanes in wider registers (each lane adds its products in the same
/// order, no fused multiply-add). Projecting every row is most of the write stage's arithmetic.
fn dot(a: &[f64], x: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature this version is compiled for.
            return unsafe { dot_avx512(a, x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { dot_avx2(a, x) };
        }
    }
    dot_lanes(a, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f64], x: &[f64]) -> f64 {
    dot_lanes(a, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f64], x: &[f64]) -> f64 {
    dot_lanes(a, x)
}

const LANES: usize = 8;

#[inline(always)]
fn dot_lanes(a: &[f64], x: &[f64]) -> f64 {
    let mut sums = [0f64; LANES];
    for (a, x) in a.chunks_exact(LANES).zip(x.chunks_exact(LANES)) {
        for lane in 0..LANES {
            sums[lane] += a[lane] * x[lane];
        }
    }
    let tail = a.len() - a.len() % LANES;
    let rest: f64 = a[tail..].iter().zip(&x[tail..]).map(|(a, x)| a * x).sum();
    sums.iter().sum::<f64>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dot_version_gives_the_same_bits() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        for n in [0, 1, 7, 8, 9, 1280, 1283] {
            let a: Vec<f64> = (0..n).map(|_| next() * 1e3).collect();
            let x: Vec<f64> = (0..n).map(|_| next()).collect();
            let portable = dot_lanes(&a, &x);
            assert_eq!(dot(&a, &x).to_bits(), portable.to_bits(), "n={n}");
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    assert_eq!(unsafe { dot_avx2(&a, &x) }.to_bits(), portable.to_bits(), "n={n}");
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    assert_eq!(unsafe { dot_avx512(&a, &x) }.to_bits(), portable.to_bits(), "n={n}");
                }
            }
        }
    }

    /// Points on a line y = 2x with small noise: one dominant component along (1, 2)/√5.
    fn line() -> PcaStats {
        let mut rows = Vec::new();
        for i in 0..50 {
            let x = i as f32 / 10.0;
            let noise = if i % 2 == 0 { 0.01 } else { -0.01 };
            rows.extend([x, 2.0 * x + noise]);
        }
        let mut s = PcaStats::new(2);
        s.add_rows(&rows);
        s
    }

    #[test]
    fn finds_the_dominant_axis() {
        let model = fit(&line(), Components::Count(1), false).unwrap();
        let axis = &model.components[0];
        let expected = [1.0 / 5f64.sqrt(), 2.0 / 5f64.sqrt()];
        assert!(
            (axis[0] - expected[0]).abs() < 1e-4 && (axis[1] - expected[1]).abs() < 1e-4,
            "{axis:?}"
        );
        assert!(model.explained_variance_ratio[0] > 0.999);
        assert!((model.explained_variance_ratio.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn projection_is_uncentred_unless_asked() {
        let stats = line();
        let spark = fit(&stats, Components::Count(1), false).unwrap();
        let centred = fit(&stats, Components::Count(1), true).unwrap();
        let p = spark.project(&[1.0, 2.0]);
        assert!((p[0] - 5f64.sqrt()).abs() < 1e-3);
        let mean_projection: f64 = spark.components[0].iter().zip(&spark.mean).map(|(a, m)| a * m).sum();
        assert!((centred.project(&[1.0, 2.0])[0] - (p[0] - mean_projection)).abs() < 1e-9);
    }

    #[test]
    fn exact_bytes_round_trip_every_bit_and_refuse_anything_else() {
        let model = fit(&line(), Components::Count(2), true).unwrap();
        let mut odd = model.clone();
        odd.mean[0] = f64::from_bits(1); // a subnormal: no decimal detour may round it
        odd.components[1][1] = -0.0;
        for m in [&model, &odd] {
            let bytes = m.to_exact_bytes();
            let back = PcaModel::from_exact_bytes(&bytes).expect("decodes");
            assert_eq!(back.to_exact_bytes(), bytes);
            assert_eq!(
                (back.dim, back.k, back.count, back.center),
                (m.dim, m.k, m.count, m.center)
            );
        }
        let bytes = model.to_exact_bytes();
        assert!(
            PcaModel::from_exact_bytes(&bytes[..bytes.len() - 1]).is_none(),
            "truncated"
        );
        assert!(
            PcaModel::from_exact_bytes(&[&bytes[..], &[0]].concat()).is_none(),
            "extra bytes"
        );
        assert!(
            PcaModel::from_exact_bytes(b"{\"dim\": 3}").is_none(),
            "not this encoding"
        );
    }

    #[test]
    fn dot_products_of_any_length() {
        for n in [0, 1, 7, 8, 9, 1280, 1283] {
            let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&x).map(|(a, x)| a * x).sum();
            assert!((dot(&a, &x) - naive).abs() <= 1e-12 * (1.0 + naive.abs()), "n={n}");
        }
    }

    #[test]
    fn k_by_variance_fraction() {
        let stats = line();
        assert_eq!(fit(&stats, Components::VarianceFraction(0.5), false).unwrap().k, 1);
        assert_eq!(fit(&stats, Components::VarianceFraction(1.0), false).unwrap().k, 2);
        assert_eq!(
            fit(&stats, Components::Count(3), false),
            Err(PcaError::BadK { k: 3, dim: 2 })
        );
        assert_eq!(
            fit(&PcaStats::new(2), Components::Count(1), false),
            Err(PcaError::TooFewRows(0))
        );
    }

    #[test]
    fn principal_angles_measure_how_far_a_basis_turned() {
        let model = |components: Vec<Vec<f64>>| PcaModel {
            dim: 3,
            k: components.len(),
            count: 2,
            center: false,
            mean: vec![0.0; 3],
            components,
            eigenvalues: vec![1.0; 3],
            explained_variance_ratio: vec![1.0 / 3.0; 3],
        };
        let xy = model(vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]);
        let same_plane = model(vec![vec![0.6, 0.8, 0.0], vec![0.8, -0.6, 0.0]]);
        for angle in xy.principal_angles(&same_plane).unwrap() {
            assert!(angle.abs() < 1e-6, "{angle}");
        }
        // One axis turned by 30 degrees out of the plane.
        let (s, c) = 30f64.to_radians().sin_cos();
        let turned = model(vec![vec![1.0, 0.0, 0.0], vec![0.0, c, s]]);
        let angles = xy.principal_angles(&turned).unwrap();
        assert!(angles[0].abs() < 1e-6 && (angles[1] - 30.0).abs() < 1e-6, "{angles:?}");
        // Against fewer axes: as many angles as the smaller basis has.
        let z = model(vec![vec![0.0, 0.0, 1.0]]);
        let angles = xy.principal_angles(&z).unwrap();
        assert_eq!(angles.len(), 1);
        assert!((angles[0] - 90.0).abs() < 1e-6, "{angles:?}");
    }
}
