//! PCA statistics stored with the cache's parts, so that a run does not summarise every cached image again.
//!
//! `pca-stats-<sha256 of the file>.bin` holds the statistics of every featured row of the parts it names. A
//! run starts from them, merges the statistics of the parts it added (summarised as each was added), then takes
//! out the cached rows it does not use (deleted or changed images) and adds again the rows it uses more than
//! once (the same bytes under several paths): work in proportion to what changed, not to the collection. When
//! taking out would cost more than summarising the run's rows directly (a run over a small share of a large
//! cache), it does that instead. Either way the statistics equal those of the run's rows summarised directly,
//! up to rounding (merging and removing reorder the sums).
//!
//! After a run, a new file covers every part it read or added, and the files it read are removed: a run that
//! reads a removed file mid-way, or a torn or corrupt one (its bytes do not hash to its name), goes without it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use datafusion::arrow::array::{ArrayRef, AsArray, ListArray};
use datafusion::arrow::datatypes::Float32Type;
use sha2::{Digest, Sha256};
use verger_pca::PcaStats;

use super::FeatureCache;
use crate::error::JobError;

const PREFIX: &str = "pca-stats-";
const MAGIC: &[u8] = b"verger-pca-stats 1\n";
/// Rows summarised at a time: bounded memory, whole matrix products.
const CHUNK: usize = 512;

/// The statistics read from the cache: the usable file covering the most rows, and every file seen.
#[derive(Default)]
pub(super) struct Stored {
    best: Option<(BTreeSet<usize>, PcaStats)>,
    files: Vec<String>,
}

/// The statistics of the parts a run added, summarised as each was added.
#[derive(Default)]
pub(super) struct Added {
    parts: BTreeSet<usize>,
    stats: Option<PcaStats>,
}

impl FeatureCache {
    /// The rows of `part` that hold features (the others point to features held elsewhere).
    fn featured(&self, part: usize) -> impl Iterator<Item = usize> + '_ {
        let featured = &self.parts[part].featured;
        (0..featured.len()).filter(|&r| featured[r])
    }

    /// Reads the stored statistics among `files` (the cache's), keeping the usable one that covers the most
    /// rows; unusable ones are reported and their rows summarised again.
    pub(super) async fn load_stats(&mut self, files: &[String]) {
        let prefix = format!("{}/{PREFIX}", self.folder);
        let parts: HashMap<&str, usize> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| (p.checksum.as_str(), i))
            .collect();
        let mut best: Option<(BTreeSet<usize>, PcaStats)> = None;
        for name in files.iter().filter(|f| f.starts_with(&prefix) && f.ends_with(".bin")) {
            self.stored.files.push(name.clone());
            let read = match self.store.get(name).await {
                Ok(bytes) => decode(name, &bytes, &parts),
                Err(e) => Err(e.to_string()),
            };
            let checked = read.and_then(|(covers, stats)| {
                let rows: usize = covers.iter().map(|&p| self.featured(p).count()).sum();
                match rows as u64 == stats.count() {
                    true => Ok((covers, stats)),
                    false => Err(format!("counts {} rows where its parts hold {rows}", stats.count())),
                }
            });
            match checked {
                Ok(found) => {
                    if best.as_ref().is_none_or(|(_, b)| b.count() < found.1.count()) {
                        best = Some(found);
                    }
                }
                Err(why) => {
                    tracing::warn!("cache statistics {name} ignored: {why}; their rows are summarised again");
                    self.summary.ignored_parts.push(format!("{name}: {why}"));
                }
            }
        }
        self.stored.best = best;
    }

    /// Summarises the featured rows of `part`, just added with features `result`, into the run's added
    /// statistics.
    pub(super) fn add_stats(&mut self, part: usize, result: &ArrayRef) {
        let features = result.as_struct().column(0).as_list::<i32>();
        let rows: Vec<usize> = self.featured(part).collect();
        let Some(&first) = rows.first() else { return };
        let dim = values(features, first).len();
        let mut summary = Summary::new(dim, self.added.stats.take());
        for &r in &rows {
            summary.push(values(features, r));
        }
        self.added.stats = summary.finish();
        self.added.parts.insert(part);
    }

    /// Plans the PCA statistics of a run's rows: `uses` counts the rows at each cached (part, row), and
    /// `extra_rows` rows the cache does not hold come with [`FeatureCache::finish_stats`]. The plan names the
    /// cached rows whose features it needs; [`StatsPlan::collect`] takes them from parts as the run reads
    /// them.
    pub fn plan_stats(&mut self, dim: usize, uses: &HashMap<(usize, usize), u64>, extra_rows: usize) -> StatsPlan {
        let used = |at: (usize, usize)| uses.get(&at).copied().unwrap_or(0);
        if self.stored.best.as_ref().is_some_and(|(_, s)| s.dim() != dim) {
            self.stored.best = None;
        }
        let stored_parts = self
            .stored
            .best
            .as_ref()
            .map(|(covers, _)| covers.clone())
            .unwrap_or_default();
        // The stored statistics pay off when fewer of their rows must be taken out than kept.
        let (mut unused, mut kept) = (0usize, 0usize);
        for &p in &stored_parts {
            for r in self.featured(p) {
                match used((p, r)) {
                    0 => unused += 1,
                    _ => kept += 1,
                }
            }
        }
        let use_stored = unused < kept;
        let merged_parts: BTreeSet<usize> = match use_stored {
            true => stored_parts.union(&self.added.parts).copied().collect(),
            false => self.added.parts.clone(),
        };
        let positions: Vec<(usize, usize)> = (0..self.parts.len())
            .flat_map(|p| self.featured(p).map(move |r| (p, r)))
            .collect();
        // New stored statistics cover every part, unless the rows outside the stored and added ones cost more
        // than the run's own.
        let is_outside = |p: &usize| !stored_parts.contains(p) && !self.added.parts.contains(p);
        let outside_rows = positions.iter().filter(|(p, _)| is_outside(p)).count();
        let run_rows = uses.values().sum::<u64>() as usize + extra_rows;
        let store = outside_rows <= run_rows;
        // Rows in the merged statistics once: taken out when unused, added again when used more than once;
        // rows outside them added as many times as used.
        let mut wanted: BTreeMap<usize, Vec<(usize, Want)>> = BTreeMap::new();
        for &(p, r) in &positions {
            let in_merged = merged_parts.contains(&p);
            let want = Want {
                again: used((p, r)).saturating_sub(u64::from(in_merged)),
                out: in_merged && used((p, r)) == 0,
                outside: store && is_outside(&p),
            };
            if want.again > 0 || want.out || want.outside {
                wanted.entry(p).or_default().push((r, want));
            }
        }
        StatsPlan {
            dim,
            use_stored,
            store,
            covers: positions.iter().map(|&(p, _)| p).collect(),
            wanted,
            again: Summary::new(dim, None),
            out: Summary::new(dim, None),
            outside: Summary::new(dim, None),
        }
    }

    /// The statistics `plan` was made for, with `extra` (the rows the cache does not hold, row-major): the
    /// parts it still needs are read, and new statistics are stored for the next run (see
    /// [`FeatureCache::plan_stats`]).
    pub async fn finish_stats(&mut self, mut plan: StatsPlan, extra: &[f32]) -> Result<PcaStats, JobError> {
        let parts: Vec<usize> = plan.wanted.keys().copied().collect();
        for part in parts {
            let result = self.part(part).await?;
            plan.collect(part, &result);
        }
        extra.chunks_exact(plan.dim).for_each(|row| plan.again.push(row));
        let (again, out, outside) = (plan.again.finish(), plan.out.finish(), plan.outside.finish());
        // Taken, not cloned: each is 8·dim² bytes, and a run needs them no more.
        let added = self.added.stats.take();
        let stored = self.stored.best.take().map(|(_, stored)| stored);
        let count = |s: &Option<PcaStats>| s.as_ref().map_or(0, PcaStats::count);
        self.summary.pca_rows_computed += count(&added) + count(&again) + count(&out);
        let mut stats = match (plan.use_stored, &stored) {
            (true, Some(stored)) => {
                self.summary.pca_rows_merged += stored.count();
                stored.clone()
            }
            _ => PcaStats::new(plan.dim),
        };
        for merged in [&added, &again].into_iter().flatten() {
            stats.merge(merged);
        }
        if let Some(out) = &out {
            stats.remove(out);
        }
        if plan.store {
            let mut all = stored.unwrap_or_else(|| PcaStats::new(plan.dim));
            for merged in [&added, &outside].into_iter().flatten() {
                all.merge(merged);
            }
            self.store_stats(&plan.covers, all);
        }
        Ok(stats)
    }

    /// Starts writing `stats`, covering `covers`, then removing the statistics files read at the start: the
    /// run goes on meanwhile (its PCA fit needs the statistics, not their file), and
    /// [`FeatureCache::finish`] waits for it.
    fn store_stats(&mut self, covers: &BTreeSet<usize>, stats: PcaStats) {
        let checksums: Vec<String> = covers.iter().map(|&p| self.parts[p].checksum.clone()).collect();
        let (store, folder) = (self.store.clone(), self.folder.clone());
        let read = std::mem::take(&mut self.stored.files);
        self.storing = Some(tokio::spawn(async move {
            let bytes = encode(checksums.iter().map(String::as_str), &stats);
            drop(stats);
            let name = format!("{folder}/{PREFIX}{}.bin", hex::encode(Sha256::digest(&bytes)));
            if read.contains(&name) {
                return Ok(()); // nothing new
            }
            store.put(&name, bytes).await?;
            for old in read {
                // Another run may have removed it already.
                if let Err(e) = store.remove(&old).await {
                    tracing::debug!("cache statistics {old} not removed: {e}");
                }
            }
            Ok(())
        }));
    }
}

/// What a planned row is needed for: added again (times), taken out, added to new stored statistics.
#[derive(Clone, Copy)]
struct Want {
    again: u64,
    out: bool,
    outside: bool,
}

/// The statistics of a run's rows in the making ([`FeatureCache::plan_stats`]).
pub struct StatsPlan {
    dim: usize,
    use_stored: bool,
    store: bool,
    covers: BTreeSet<usize>,
    /// The rows still needed, by part.
    wanted: BTreeMap<usize, Vec<(usize, Want)>>,
    again: Summary,
    out: Summary,
    outside: Summary,
}

impl StatsPlan {
    /// Takes the rows the plan needs from `part`'s features (`featurize`'s result), once.
    pub fn collect(&mut self, part: usize, result: &ArrayRef) {
        let Some(rows) = self.wanted.remove(&part) else { return };
        let features = result.as_struct().column(0).as_list::<i32>();
        for (row, want) in rows {
            let v = values(features, row);
            for _ in 0..want.again {
                self.again.push(v);
            }
            if want.out {
                self.out.push(v);
            }
            if want.outside {
                self.outside.push(v);
            }
        }
    }
}

/// The features at `row` of a features column.
fn values(features: &ListArray, row: usize) -> &[f32] {
    let offsets = features.value_offsets();
    let values = features.values().as_primitive::<Float32Type>().values();
    &values[offsets[row] as usize..offsets[row + 1] as usize]
}

/// Rows added to statistics [`CHUNK`] at a time: bounded memory, whole matrix products. The statistics are
/// made with the first rows (8·dim² bytes, which a run's plan mostly does not need).
struct Summary {
    dim: usize,
    stats: Option<PcaStats>,
    chunk: Vec<f32>,
}

impl Summary {
    fn new(dim: usize, stats: Option<PcaStats>) -> Self {
        Summary {
            dim,
            stats,
            chunk: Vec::new(),
        }
    }

    fn push(&mut self, row: &[f32]) {
        self.chunk.extend_from_slice(row);
        if self.chunk.len() == CHUNK * self.dim {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.chunk.is_empty() {
            let dim = self.dim;
            self.stats
                .get_or_insert_with(|| PcaStats::new(dim))
                .add_rows(&self.chunk);
            self.chunk.clear();
        }
    }

    /// The statistics of the rows pushed, and of those it started with; `None` when neither.
    fn finish(mut self) -> Option<PcaStats> {
        self.flush();
        self.stats
    }
}

/// The file: [`MAGIC`], the number of parts covered, each part's SHA-256, then the statistics.
fn encode<'a>(parts: impl ExactSizeIterator<Item = &'a str>, stats: &PcaStats) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(parts.len() as u64).to_le_bytes());
    for part in parts {
        out.extend_from_slice(&hex::decode(part).expect("part names are hexadecimal"));
    }
    out.extend_from_slice(&stats.to_bytes());
    out
}

/// A statistics file checked against its name, with the parts it covers (indices in `parts`, by name).
fn decode(name: &str, bytes: &[u8], parts: &HashMap<&str, usize>) -> Result<(BTreeSet<usize>, PcaStats), String> {
    let expected = name
        .rsplit_once(PREFIX)
        .and_then(|(_, rest)| rest.strip_suffix(".bin"))
        .unwrap_or_default();
    if hex::encode(Sha256::digest(bytes)) != expected {
        return Err("its bytes do not match its name (torn or corrupt)".into());
    }
    let rest = bytes.strip_prefix(MAGIC).ok_or("not cache statistics")?;
    let count = rest
        .get(..8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
        .ok_or("not cache statistics")?;
    let hashes = rest.get(8..8 + 32 * count).ok_or("not cache statistics")?;
    let mut covers = BTreeSet::new();
    for hash in hashes.chunks_exact(32) {
        let part = hex::encode(hash);
        let index = parts
            .get(part.as_str())
            .ok_or_else(|| format!("covers part-{part}.parquet, which was not read"))?;
        covers.insert(*index);
    }
    let stats = PcaStats::from_bytes(&rest[8 + 32 * count..]).ok_or("not cache statistics")?;
    Ok((covers, stats))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{entry, identity, result};
    use super::*;
    use crate::io::store::StoreOptions;

    const DIM: usize = 3;

    fn vector(seed: usize) -> Vec<f32> {
        (0..DIM).map(|j| ((seed * 7 + j * 3) % 11) as f32 * 0.5 - 2.0).collect()
    }

    fn direct(rows: &[Vec<f32>]) -> PcaStats {
        let mut stats = PcaStats::new(DIM);
        stats.add_rows(&rows.concat());
        stats
    }

    fn assert_close(a: &PcaStats, b: &PcaStats) {
        assert_eq!(a.count(), b.count());
        let scale = 1.0 + b.covariance().norm_max();
        let means = a
            .mean()
            .iter()
            .zip(b.mean())
            .all(|(x, y)| (x - y).abs() <= 1e-12 * scale);
        assert!(means && (a.covariance() - b.covariance()).norm_max() <= 1e-10 * scale);
    }

    async fn open(location: &str) -> FeatureCache {
        let mut cache = FeatureCache::open(location, &StoreOptions::default(), identity(), false, None)
            .await
            .unwrap();
        cache.load(2).await.unwrap();
        cache
    }

    /// Adds images `seeds` (one part); returns where the cache holds each.
    async fn add(cache: &mut FeatureCache, seeds: &[usize]) -> Vec<(usize, usize)> {
        let features = result(&seeds.iter().map(|&s| Some(vector(s))).collect::<Vec<_>>());
        let uris: Vec<String> = seeds.iter().map(|s| format!("file:///{s}.jpg")).collect();
        let rows = seeds
            .iter()
            .enumerate()
            .map(|(i, &s)| (entry(&uris[i], 1), [s as u8; 32], Some((&features, i))));
        cache.add(rows).await.unwrap();
        positions(cache, seeds)
    }

    impl FeatureCache {
        /// Plans and finishes the statistics of a run, as the featurize stage does.
        async fn run(&mut self, uses: &HashMap<(usize, usize), u64>, extra: &[f32]) -> PcaStats {
            let plan = self.plan_stats(DIM, uses, extra.len() / DIM);
            let stats = self.finish_stats(plan, extra).await.unwrap();
            self.stored_stats().await.unwrap();
            stats
        }
    }

    fn positions(cache: &FeatureCache, seeds: &[usize]) -> Vec<(usize, usize)> {
        seeds.iter().map(|&s| cache.position(&[s as u8; 32]).unwrap()).collect()
    }

    fn stats_files(location: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(location.join(identity().folder()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .collect()
    }

    #[tokio::test]
    async fn stored_statistics_merge_to_those_of_the_run_s_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let location = tmp.path().to_str().unwrap();
        // A first run: every image new, used once; its statistics are stored.
        let mut first = open(location).await;
        let seeds: Vec<usize> = (0..20).collect();
        let at = add(&mut first, &seeds).await;
        let uses: HashMap<_, _> = at.iter().map(|&p| (p, 1)).collect();
        let stats = first.run(&uses, &[]).await;
        let rows: Vec<Vec<f32>> = seeds.iter().map(|&s| vector(s)).collect();
        assert_close(&stats, &direct(&rows));
        assert_eq!(stats_files(tmp.path()).len(), 1);

        // A daily run: 3 images gone, one used twice (a copy), 2 new, one the cache could not take.
        let mut daily = open(location).await;
        let new_at = add(&mut daily, &[40, 41]).await;
        let mut uses: HashMap<_, _> = at[3..].iter().map(|&p| (p, 1)).collect();
        uses.insert(at[5], 2);
        uses.extend(new_at.iter().map(|&p| (p, 1)));
        let stats = daily.run(&uses, &vector(77)).await;
        let mut expected: Vec<Vec<f32>> = seeds[3..].iter().map(|&s| vector(s)).collect();
        expected.extend([vector(5), vector(40), vector(41), vector(77)]);
        assert_close(&stats, &direct(&expected));
        assert_eq!(daily.summary.pca_rows_merged, 20);
        assert_eq!(
            daily.summary.pca_rows_computed,
            2 + 1 + 1 + 3,
            "added, repeated, extra, taken out"
        );
        let files = stats_files(tmp.path());
        assert_eq!(files.len(), 1, "the statistics read are replaced: {files:?}");

        // A run using few of the cached rows summarises them directly.
        let mut few = open(location).await;
        let at = positions(&few, &seeds);
        let uses: HashMap<_, _> = at[..2].iter().map(|&p| (p, 1)).collect();
        let stats = few.run(&uses, &[]).await;
        assert_close(&stats, &direct(&[vector(0), vector(1)]));
        assert_eq!((few.summary.pca_rows_merged, few.summary.pca_rows_computed), (0, 2));

        // A torn statistics file is reported and the rows summarised again, to the same statistics.
        let file = &stats_files(tmp.path())[0];
        let bytes = std::fs::read(file).unwrap();
        std::fs::write(file, &bytes[..bytes.len() - 8]).unwrap();
        let mut torn = open(location).await;
        assert!(
            torn.summary.ignored_parts.iter().any(|p| p.contains("torn or corrupt")),
            "{:?}",
            torn.summary.ignored_parts
        );
        let every: Vec<usize> = seeds.iter().copied().chain([40, 41]).collect();
        let uses: HashMap<_, _> = positions(&torn, &every).into_iter().map(|p| (p, 1)).collect();
        let stats = torn.run(&uses, &[]).await;
        let mut all: Vec<Vec<f32>> = rows.clone();
        all.extend([vector(40), vector(41)]);
        assert_close(&stats, &direct(&all));
        assert_eq!(torn.summary.pca_rows_merged, 0);
        // ...and the statistics stored again replace the torn file.
        let mut after = open(location).await;
        assert!(after.summary.ignored_parts.is_empty());
        let uses: HashMap<_, _> = positions(&after, &every).into_iter().map(|p| (p, 1)).collect();
        let stats = after.run(&uses, &[]).await;
        assert_close(&stats, &direct(&all));
        assert_eq!(after.summary.pca_rows_merged, 22);
    }
}
