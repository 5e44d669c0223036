//! `verger estimate`: what a run of an input will take and cost, before it runs. Lists the input (counting
//! bytes), featurizes a random sample on this machine with the run's own per-image code, and extrapolates to
//! the whole input here and on clusters, priced from the price table ([`crate::report::cost`]).
//!
//! It writes nothing. Its assumptions (stated in the result) are that per-image CPU time is the sample's on
//! every node and that a cluster keeps every executor core busy; the bench compares it with real runs.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::default_threads;
use crate::error::JobError;
use crate::featurize::{featurize_files, FeaturizeSettings};
use crate::io::store::bucket_regions;
use crate::report::cost::{OriginalCost, Pricing};
use crate::report::{CostConfig, Usage};

/// Images featurized when no sample size is asked for.
pub const DEFAULT_SAMPLE: usize = 200;
/// Cluster sizes priced.
pub const CLUSTER_EXECUTORS: [usize; 4] = [2, 4, 8, 16];

#[derive(Debug, Clone)]
pub struct EstimateConfig {
    pub input: String,
    pub globs: Vec<String>,
    pub featurize: FeaturizeSettings,
    pub sample: usize,
    /// Which sample: the same seed picks the same images.
    pub seed: u64,
    /// Workers featurizing the sample here, as a run would use.
    pub threads: usize,
    /// The machine the runs would run on, and the table that prices it.
    pub cost: CostConfig,
}

impl EstimateConfig {
    pub fn new(input: impl Into<String>, featurize: FeaturizeSettings) -> Self {
        EstimateConfig {
            input: input.into(),
            globs: vec![verger_listing::DEFAULT_GLOB.to_string()],
            featurize,
            sample: DEFAULT_SAMPLE,
            seed: 0,
            threads: default_threads(),
            cost: CostConfig::default(),
        }
    }
}

/// One predicted run.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub setup: String,
    pub nodes: usize,
    pub wall_s: f64,
    pub cpu_hours: f64,
    pub usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub input: String,
    pub images: u64,
    pub bytes: u64,
    pub labels: usize,
    pub list_s: f64,
    pub sampled: usize,
    /// Sampled images that failed (they cost time too, and are counted in the rates).
    pub sample_failed: usize,
    pub threads: usize,
    pub sample_wall_s: f64,
    /// Images per second on this machine with `threads` workers.
    pub images_per_s: f64,
    pub cpu_ms_per_image: f64,
    /// The full input on this machine, priced as one node of the given instance type.
    pub here: Prediction,
    pub clusters: Vec<Prediction>,
    /// The same input on the original set-up.
    pub original: OriginalCost,
    pub instance_type: String,
    pub region: String,
    pub usd_per_node_hour: f64,
    pub vcpus: u32,
    pub price_source: String,
    pub assumptions: Vec<String>,
}

/// `take` entries of `uris` chosen at random (reproducibly by `seed`): those whose keyed hash is smallest.
pub fn sample<'a>(uris: impl Iterator<Item = &'a str>, take: usize, seed: u64) -> Vec<String> {
    let mut keyed: Vec<([u8; 32], &str)> = uris
        .map(|uri| {
            let mut hash = Sha256::new();
            hash.update(seed.to_le_bytes());
            hash.update(uri.as_bytes());
            (hash.finalize().into(), uri)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().take(take).map(|(_, uri)| uri.to_string()).collect()
}

pub async fn estimate(config: &EstimateConfig) -> Result<Estimate, JobError> {
    let pricing = Pricing::new(&config.cost)?;
    if config.sample == 0 || config.threads == 0 {
        return Err(JobError::Config("--sample and --threads must be at least 1".into()));
    }
    bucket_regions(&[config.input.as_str()], &config.featurize.store).await?;
    let listed = Instant::now();
    let entries = crate::list_images(
        &config.input,
        &config.globs,
        &config.featurize.store,
        verger_listing::LIST_CONCURRENCY,
    )
    .await?;
    let list_s = listed.elapsed().as_secs_f64();
    if entries.is_empty() {
        return Err(JobError::NoImages {
            input: config.input.clone(),
            globs: config.globs.clone(),
        });
    }
    let mut labels: Vec<&str> = entries.labels().iter().flatten().collect();
    labels.sort_unstable();
    labels.dedup();
    let chosen = sample(entries.uris().iter().flatten(), config.sample, config.seed);

    // The model loaded and every worker's session made before the clock starts, as in a run's steady state.
    let settings = Arc::new(config.featurize.clone());
    let threads = config.threads.min(chosen.len());
    let warm = settings.clone();
    let first = chosen[0].clone();
    tokio::task::spawn_blocking(move || warm.featurizers().map(drop))
        .await
        .map_err(JobError::task)??;
    let (wall, cpu) = (Instant::now(), Usage::now().cpu_s);
    let chunks: Vec<Vec<String>> = chosen
        .chunks(chosen.len().div_ceil(threads))
        .map(<[String]>::to_vec)
        .collect();
    let mut workers = Vec::new();
    for chunk in chunks {
        let (settings, first) = (settings.clone(), first.clone());
        workers.push(tokio::task::spawn_blocking(move || {
            featurize_files(&[first], &settings)?;
            let warmed = Instant::now();
            let outcomes = featurize_files(&chunk, &settings)?;
            let failed = outcomes.iter().filter(|(_, o)| o.is_err()).count();
            Ok::<_, JobError>((failed, warmed.elapsed().as_secs_f64()))
        }));
    }
    let mut sample_failed = 0;
    let mut slowest = 0f64;
    for worker in workers {
        let (failed, seconds) = worker.await.map_err(JobError::task)??;
        sample_failed += failed;
        slowest = slowest.max(seconds);
    }
    // The warm-up image of each worker is not part of the rate: its share of CPU time is taken out.
    let total_cpu = Usage::now().cpu_s - cpu;
    let warmups = threads as f64;
    let cpu_per_image = total_cpu / (chosen.len() as f64 + warmups);
    let sample_wall_s = slowest.min(wall.elapsed().as_secs_f64());
    let images_per_s = chosen.len() as f64 / sample_wall_s.max(1e-9);

    let images = entries.len() as u64;
    let cpu_hours = images as f64 * cpu_per_image / 3600.0;
    let node = &pricing.node;
    let here_wall = list_s + images as f64 / images_per_s;
    let here = Prediction {
        setup: format!("this machine ({threads} workers), priced as 1 x {}", node.instance_type),
        nodes: 1,
        wall_s: here_wall,
        cpu_hours,
        usd: here_wall / 3600.0 * node.ec2_usd_per_hour,
    };
    let clusters = CLUSTER_EXECUTORS
        .iter()
        .map(|&executors| {
            let rate = executors as f64 * node.vcpus as f64 / cpu_per_image;
            let wall_s = list_s + images as f64 / rate;
            let nodes = executors + 1;
            Prediction {
                setup: format!("{executors} executors + 1 scheduler/client, {}", node.instance_type),
                nodes,
                wall_s,
                cpu_hours,
                usd: wall_s / 3600.0 * nodes as f64 * node.ec2_usd_per_hour,
            }
        })
        .collect();
    Ok(Estimate {
        input: config.input.clone(),
        images,
        bytes: entries.iter().map(|e| e.size).sum(),
        labels: labels.len(),
        list_s,
        sampled: chosen.len(),
        sample_failed,
        threads,
        sample_wall_s,
        images_per_s,
        cpu_ms_per_image: cpu_per_image * 1000.0,
        here,
        clusters,
        original: OriginalCost::of(&pricing.original, images),
        instance_type: node.instance_type.clone(),
        region: node.region.clone(),
        usd_per_node_hour: node.ec2_usd_per_hour,
        vcpus: node.vcpus,
        price_source: format!("{} (as of {}: {})", pricing.table, node.as_of, node.source),
        assumptions: vec![
            format!(
                "each image costs the sample's {:.2} ms of CPU on every node, with one worker per vCPU",
                cpu_per_image * 1000.0
            ),
            "here: the sample's images/s with the same workers, plus this listing's time; PCA and writing add a \
             few percent"
                .into(),
            format!(
                "clusters: every executor's {} vCPUs busy; the scheduler and client share one more node; listing \
                 as here; starting the cluster and its per-job overhead (seconds) not included",
                node.vcpus
            ),
            "prices: on-demand EC2, wall time only (no storage, transfer or request charges)".into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_reproducible_distinct_and_seed_dependent() {
        let uris: Vec<String> = (0..1000).map(|i| format!("file:///d/{i}.jpg")).collect();
        let a = sample(uris.iter().map(String::as_str), 50, 7);
        assert_eq!(a, sample(uris.iter().map(String::as_str), 50, 7));
        let mut distinct = a.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 50);
        assert_ne!(a, sample(uris.iter().map(String::as_str), 50, 8));
        // Spread over the input, not its first rows.
        assert!(a.iter().any(|u| u.contains("/9")));
        assert_eq!(sample(uris.iter().map(String::as_str), 5000, 1).len(), 1000);
    }
}
