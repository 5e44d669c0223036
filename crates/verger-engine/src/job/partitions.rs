//! The manifest cut into partitions: the unit of parallel work, of staged files and of result files.

use std::ops::Range;

use crate::error::JobError;
use crate::io::output::OutputStore;
use crate::layout;

/// Cuts `n` rows into contiguous partitions of `rows`, except the last `TAPER * rows` rows, which are cut
/// `TAPER` times finer: workers take partitions in order, so the run ends with at most a small partition on one
/// worker while the others are idle. Depends on nothing but `n` and `rows`, so a resumed run cuts the same.
pub fn partition_ranges(n: usize, rows: usize) -> Vec<Range<usize>> {
    const TAPER: usize = 4;
    let rows = rows.max(1);
    let fine = rows.div_ceil(TAPER);
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < n {
        let size = if n - start > TAPER * rows { rows } else { fine };
        ranges.push(start..(start + size).min(n));
        start += size;
    }
    ranges
}

/// Cuts `n` rows that are not the manifest's (the images a feature cache lacks) for `workers`: as
/// [`partition_ranges`] when each worker gets more than a partition, else one partition per worker of nearly
/// equal sizes. A daily run's few fresh rows would otherwise be cut into tapered partitions of unequal work
/// (109 rows into 64 and 45), or into fewer partitions than workers. Not resumed, so free to depend on `workers`.
pub fn fresh_ranges(n: usize, rows: usize, workers: usize) -> Vec<Range<usize>> {
    let workers = workers.max(1);
    if n > workers * rows.max(1) {
        return partition_ranges(n, rows);
    }
    let count = workers.min(n);
    (0..count).map(|i| i * n / count..(i + 1) * n / count).collect()
}

/// The manifest cut into contiguous partitions; partition i is staged at `_staging/part-i.parquet` and
/// written to `result/part-i.parquet`.
pub struct Partitions<'a> {
    pub ranges: Vec<Range<usize>>,
    pub out: &'a OutputStore,
    /// Where partitions are staged.
    folder: &'static str,
}

impl<'a> Partitions<'a> {
    pub fn new(out: &'a OutputStore, rows: usize, partition_rows: usize) -> Self {
        Self::in_folder(out, layout::STAGING, partition_ranges(rows, partition_rows))
    }

    /// Partitions of some other rows than the manifest's, staged in `folder` (the images a feature cache
    /// lacks, cut by [`fresh_ranges`]).
    pub fn in_folder(out: &'a OutputStore, folder: &'static str, ranges: Vec<Range<usize>>) -> Self {
        Partitions { ranges, out, folder }
    }

    /// The size partitions are cut by (before the tapered tail).
    pub fn partition_rows(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).max().unwrap_or(1)
    }

    pub fn count(&self) -> usize {
        self.ranges.len()
    }

    pub fn staged(&self, i: usize) -> String {
        layout::file(self.folder, &layout::part_name(i))
    }

    pub fn staged_url(&self, i: usize) -> String {
        self.out.url(&self.staged(i))
    }

    pub fn all_staged(&self) -> Vec<String> {
        (0..self.count()).map(|i| self.staged_url(i)).collect()
    }

    pub fn result(&self, i: usize) -> String {
        layout::file(layout::RESULT, &layout::part_name(i))
    }

    /// Partitions a previous attempt has not staged yet.
    pub async fn todo(&self) -> Result<Vec<usize>, JobError> {
        let mut todo = Vec::new();
        for i in 0..self.count() {
            if !self.out.exists(&self.staged(i)).await? {
                todo.push(i);
            }
        }
        Ok(todo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_every_row_once_and_taper_at_the_end() {
        for (n, rows) in [
            (7392, 256),
            (1, 256),
            (1024, 256),
            (1025, 256),
            (26, 6),
            (10, 1),
            (0, 8),
        ] {
            let ranges = partition_ranges(n, rows);
            let covered: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(covered, (0..n).collect::<Vec<_>>(), "n={n} rows={rows}");
            assert!(ranges.iter().all(|r| !r.is_empty() && r.len() <= rows));
            if let Some(last) = ranges.last() {
                assert!(last.len() <= rows.div_ceil(4), "n={n} rows={rows}: tail {}", last.len());
            }
        }
        let sizes: Vec<usize> = partition_ranges(7392, 256).iter().map(|r| r.len()).collect();
        assert_eq!(sizes.iter().filter(|&&s| s == 256).count(), 25);
        assert_eq!(sizes.len(), 25 + 16);
    }

    #[test]
    fn fresh_rows_give_every_worker_an_equal_share_or_whole_partitions() {
        for (n, rows, workers) in [
            (109, 256, 2),
            (1, 256, 4),
            (3, 256, 8),
            (0, 256, 2),
            (512, 256, 2),
            (513, 256, 2),
            (40, 6, 3),
        ] {
            let ranges = fresh_ranges(n, rows, workers);
            let covered: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(
                covered,
                (0..n).collect::<Vec<_>>(),
                "n={n} rows={rows} workers={workers}"
            );
            assert!(ranges.iter().all(|r| !r.is_empty() && r.len() <= rows));
            if n <= rows * workers {
                assert_eq!(ranges.len(), n.min(workers));
                let sizes = ranges.iter().map(|r| r.len());
                assert!(sizes.clone().max().unwrap_or(0) - sizes.min().unwrap_or(0) <= 1);
            } else {
                assert_eq!(ranges, partition_ranges(n, rows));
            }
        }
        let sizes: Vec<usize> = fresh_ranges(109, 256, 2).iter().map(|r| r.len()).collect();
        assert_eq!(sizes, [54, 55]);
    }
}
