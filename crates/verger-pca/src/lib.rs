//! PCA fitted from mergeable statistics, so that any number of partitions, threads or machines can each
//! summarise their rows and a driver combines the summaries.
//!
//! [`PcaStats`] holds a count, a mean and the centred co-moment matrix, merged with the pairwise update of
//! Chan, Golub and LeVeque (stabler than raw sums of squares). [`fit`] follows Spark ML's `PCA`, which the
//! original pipeline used: covariance divided by m − 1, eigenvectors of largest eigenvalues, explained variance
//! as eigenvalue over the sum of all eigenvalues. [`PcaModel::project`] multiplies **uncentred** rows by the
//! components, as Spark's `PCAModel.transform` does, unless the model was fitted with `center`.
//!
//! Scope: numbers only. No images, no Arrow, no files.

mod model;
mod stats;

pub use model::{fit, Components, PcaError, PcaModel};
pub use stats::PcaStats;
