//! The command line: clap's description of each subcommand and its translation into the library's
//! configurations. Defaults come from the library ([`crate::JobConfig::new`] and its constants). The `verger`
//! binary parses its arguments with it, and the Python package its keyword arguments (translated to the same
//! options), so both front ends share every option's meaning, default and message.

use std::path::PathBuf;

use crate as verger;
use clap::{Args, Parser, Subcommand};
use verger::{Components, Encryption, ErrorBudget, ExitStatus, FeaturizeSettings, JobConfig, Limits, StoreOptions};
use verger_model::{Device, Precision, MOBILENET_V2_SHA256};

/// Why a command ends without its result.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Arguments that cannot work together (exit status 2).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Verger(#[from] verger::Error),
}

#[derive(Parser)]
#[command(name = "verger", version, about = "Turn large collections of images into compact feature vectors.", after_help = ExitStatus::HELP)]
pub struct Cli {
    /// More log output (repeat for more); logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List, featurize (MobileNetV2), reduce (PCA) and write Parquet: the whole job.
    #[command(after_help = ExitStatus::HELP)]
    Run(Box<RunArgs>),
    /// List the images a run would process and count them per label; writes nothing.
    List(ListArgs),
    /// Predict a run's wall time, CPU hours and cost before running it: lists the input, featurizes a random
    /// sample here, and extrapolates to this machine and to clusters of 2/4/8/16 executors.
    Estimate(Box<EstimateArgs>),
    /// Write OUTPUT/report.html again from a run's report.json (runs write it themselves).
    Report {
        /// A verger run's output (folder or s3://).
        output: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make a cluster's credentials: `verger cluster init DIR`.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a cluster scheduler (Apache DataFusion Ballista) with verger's functions; its REST API
    /// (/api/jobs, /api/job/{id}/stages, /api/executors) listens on the same port and, with --security,
    /// answers only clients with the cluster's certificate and token.
    Scheduler {
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        #[arg(long, default_value_t = 50050)]
        port: u16,
        #[command(flatten)]
        guard: GuardArgs,
    },
    /// Run a cluster executor that serves the scheduler at HOST:PORT; it uses PORT and PORT+1.
    Executor(ExecutorArgs),
    /// Train a classifier (softmax regression, L2) on a finished run: RUN -> --out CLASSIFIER.
    Train(TrainArgs),
    /// Score a classifier on a finished, labelled run (projected with the classifier's PCA model):
    /// top-1/top-5 accuracy, macro F1, per-class scores, confusion matrix; saved beside the classifier.
    Evaluate(EvaluateArgs),
    /// Check a finished run's images as a dataset: exact and near duplicates, leakage into other runs
    /// (--against), outliers and likely wrong labels; writes RUN/quality/ and a section of its report.
    Quality(QualityArgs),
    /// Identify photos (files or s3:// objects): the most probable labels and the nearest training images.
    #[command(after_help = ExitStatus::HELP)]
    Identify(IdentifyArgs),
    /// Serve a classifier over HTTP: POST /identify (the photo as the body or a multipart file) answers
    /// identify's JSON; GET /healthz; GET /metrics (Prometheus). Stops on SIGTERM after requests in flight.
    Serve(ServeArgs),
    /// Write a classifier and its featurizer as one ONNX file for apps: uint8 [N, 224, 224, 3] RGB in
    /// (resized with Pillow's BICUBIC), class probabilities out, class names in the metadata ("labels").
    Export {
        #[command(flatten)]
        classifier: ClassifierArgs,
        /// The ONNX file to write (a path or s3://bucket/key).
        #[arg(long)]
        onnx: String,
    },
    /// Write the exact 224x224 RGB pixels the model sees, as DIR/<file stem>.png.
    Preprocess {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the 1280-d features of a few images (paths or s3:// URIs) to one Parquet file (columns path,
    /// features), a path or s3://bucket/key.
    Embed {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

/// What a run runs on, for its cost.
#[derive(Args)]
pub struct CostArgs {
    /// The instance type the run runs on (each node, with --nodes), priced from the price table.
    #[arg(long, default_value = verger::cost::ORIGINAL_INSTANCE_TYPE)]
    instance_type: String,
    /// The region whose prices apply (default: --region if given, else eu-west-1, the original set-up's).
    #[arg(long)]
    price_region: Option<String>,
    /// Nodes the run runs on (a cluster's executors plus its scheduler/client node).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// A price table (CSV: instance_type,region,vcpus,ec2_usd_per_hour,emr_uplift_usd_per_hour,as_of,source)
    /// instead of the built-in one (crates/verger-engine/data/prices.csv).
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
}

impl CostArgs {
    /// The cost settings, with `region` (the buckets' `--region`) for prices when no --price-region is given.
    pub fn config(&self, region: Option<&str>) -> verger::CostConfig {
        verger::CostConfig {
            instance_type: self.instance_type.clone(),
            region: (self.price_region.as_deref().or(region))
                .unwrap_or(verger::cost::ORIGINAL_REGION)
                .to_string(),
            nodes: self.nodes,
            prices: self.prices.clone(),
        }
    }
}

#[derive(Args)]
pub struct EstimateArgs {
    /// Images, searched recursively: a folder or s3://bucket/prefix.
    #[arg(long)]
    input: String,
    /// File-name pattern to include (repeatable). Default: *.jpg
    #[arg(long = "glob")]
    globs: Vec<String>,
    /// Images featurized here to measure the rate.
    #[arg(long, default_value_t = verger::estimate::DEFAULT_SAMPLE)]
    sample: usize,
    /// Which random sample (the same seed picks the same images).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads, as the run would use (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the estimate as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    cost: CostArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
}

impl EstimateArgs {
    pub fn config(self) -> Result<verger::EstimateConfig, Failure> {
        let store = self.store.options()?;
        let mut config = verger::EstimateConfig::new(self.input, self.model.settings(store)?);
        if !self.globs.is_empty() {
            config.globs = self.globs;
        }
        if self.sample == 0 {
            return Err(Failure::Usage("--sample must be at least 1".into()));
        }
        config.sample = self.sample;
        config.seed = self.seed;
        match self.threads {
            Some(0) => return Err(Failure::Usage("--threads must be at least 1".into())),
            Some(threads) => config.threads = threads,
            None => {}
        }
        config.cost = self.cost.config(self.store.region.as_deref());
        Ok(config)
    }
}

#[derive(Args)]
pub struct ListArgs {
    /// A folder or s3://bucket/prefix, searched recursively.
    #[arg(long)]
    input: String,
    /// File-name pattern to include (repeatable). Default: *.jpg
    #[arg(long = "glob")]
    globs: Vec<String>,
    /// Folders of a bucket listed at once.
    #[arg(long, default_value_t = verger::LIST_CONCURRENCY)]
    concurrency: usize,
    /// Print every image (URI, tab, label), not only the counts.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    store: StoreArgs,
}

impl ListArgs {
    pub fn config(self) -> Result<verger::ListConfig, Failure> {
        let mut config = verger::ListConfig::new(self.input);
        if !self.globs.is_empty() {
            config.globs = self.globs;
        }
        config.concurrency = self.concurrency;
        config.store = self.store.options()?;
        Ok(config)
    }
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Create DIR with a CA, a certificate and key for the scheduler, the executors and clients, and an API
    /// token (files 0600). Give each process only its own role's files (docs/cluster.md).
    Init { dir: PathBuf },
}

/// How a scheduler or executor protects itself.
#[derive(Args)]
pub struct GuardArgs {
    /// The cluster's credentials (a `verger cluster init` folder): mTLS on every connection, the API token.
    /// Default: $VERGER_SECURITY. Without it, only a loopback --bind is accepted.
    #[arg(long, value_name = "DIR")]
    security: Option<PathBuf>,
    /// Accept unauthenticated, unencrypted connections even on a non-loopback --bind (warns at each start).
    #[arg(long, conflicts_with = "security")]
    insecure: bool,
}

/// `$VERGER_SECURITY`, when set.
fn security_from_env() -> Option<PathBuf> {
    std::env::var_os(verger::SECURITY_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl GuardArgs {
    pub fn guard(self) -> Result<verger::ClusterGuard, Failure> {
        match (self.security.or_else(security_from_env), self.insecure) {
            (Some(_), true) => Err(Failure::Usage(format!(
                "--insecure while {} names credentials: unset it to run insecure",
                verger::SECURITY_ENV
            ))),
            (Some(dir), false) => Ok(verger::ClusterGuard::Secured(dir)),
            (None, network) => Ok(verger::ClusterGuard::Insecure { network }),
        }
    }
}

#[derive(Args)]
pub struct ExecutorArgs {
    #[arg(long, default_value = "127.0.0.1:50050")]
    scheduler: String,
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Tasks run at once (default: all cores).
    #[arg(long)]
    slots: Option<usize>,
    /// Where intermediate (shuffle) data goes (default: a temporary folder).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// A folder or s3://bucket/prefix this executor's jobs may read and write (repeatable; required with
    /// --security): the inputs, outputs and model. Any other location in a plan is refused, naming it.
    #[arg(long = "allow-location", value_name = "PREFIX")]
    allow_locations: Vec<String>,
    /// The S3-compatible endpoint jobs may reach (default: AWS); a plan naming another is refused.
    #[arg(long)]
    endpoint: Option<String>,
    /// Allow plain HTTP to --endpoint on another machine.
    #[arg(long)]
    allow_http: bool,
    #[command(flatten)]
    pub guard: GuardArgs,
}

impl ExecutorArgs {
    pub fn options(self) -> Result<(verger::ExecutorOptions, verger::ClusterGuard), Failure> {
        let guard = self.guard.guard()?;
        let (host, port) = self
            .scheduler
            .rsplit_once(':')
            .ok_or_else(|| Failure::Usage("--scheduler is HOST:PORT".into()))?;
        let options = verger::ExecutorOptions {
            scheduler_host: host.to_string(),
            scheduler_port: port
                .parse()
                .map_err(|e| Failure::Usage(format!("--scheduler port: {e}")))?,
            bind_host: self.bind,
            port: self.port,
            slots: self.slots.unwrap_or_else(verger::default_threads),
            work_dir: self.work_dir.map(|d| d.to_string_lossy().into_owned()),
            allow_locations: self.allow_locations,
            endpoint: self.endpoint,
            allow_http: self.allow_http,
        };
        Ok((options, guard))
    }
}

#[derive(Args)]
pub struct ModelArgs {
    /// The ONNX model: a path or s3://bucket/key. Default: $VERGER_MODEL, else the shared MobileNetV2 beside
    /// this checkout.
    #[arg(long)]
    model: Option<String>,
    /// Expected sha256 of the model file; a mismatch stops the run before any image is read.
    #[arg(long, default_value = MOBILENET_V2_SHA256)]
    model_sha256: String,
    /// Images per inference call. 1 is fastest on CPUs (measured: larger batches lose cache locality);
    /// raise it for accelerators.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Refuse images with more pixels than this, before decoding (default: Pillow's decompression-bomb limit).
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    max_pixels: u64,
    /// Where inference runs: cpu, or cuda[:N] for NVIDIA GPU N through ONNX Runtime's GPU build (installed by
    /// scripts/setup-gpu; 32 images per call unless --batch-size says otherwise). Decoding stays on the CPU.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// The arithmetic inference computes in: fp32 (the reference), or bf16 on CPUs with AVX512-BF16 or AMX
    /// (about 1.9x fp32's speed, top-1 within 0.1 point on Fruits-360; OpenVINO, installed by
    /// scripts/setup --bf16; refused elsewhere). MobileNetV2's first block stays in fp32.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
}

impl ModelArgs {
    pub fn settings(&self, store: StoreOptions) -> Result<FeaturizeSettings, Failure> {
        let location = match &self.model {
            Some(location) => location.clone(),
            None => verger::default_model()
                .ok_or_else(|| Failure::Usage("no model given: pass --model PATH or set VERGER_MODEL".into()))?,
        };
        let mut settings = FeaturizeSettings::new(verger::absolute(&location)?).on(self.device);
        settings.model.sha256 = self.model_sha256.clone();
        settings.precision = self.precision;
        if let Some(batch_size) = self.batch_size {
            settings.batch_size = batch_size;
        }
        settings.max_pixels = self.max_pixels;
        settings.store = store;
        Ok(settings)
    }
}

/// Where object stores are; credentials come from the usual AWS sources (environment, the shared profile
/// files and AWS_PROFILE, web identity, container or instance metadata), never from the command line.
#[derive(Args)]
pub struct StoreArgs {
    /// AWS region of the buckets (stores that report none are taken to be here).
    #[arg(long)]
    region: Option<String>,
    /// Endpoint of an S3-compatible store, e.g. http://127.0.0.1:8333.
    #[arg(long)]
    endpoint: Option<String>,
    /// Allow plain HTTP to an endpoint that is not on this machine.
    #[arg(long)]
    allow_http: bool,
    /// Region patterns (e.g. `eu-*`, repeatable or comma-separated) that every bucket must be in; a job touching
    /// another region is refused before any byte moves.
    #[arg(long, value_delimiter = ',')]
    allowed_regions: Vec<String>,
    /// Server-side encryption of everything written to an s3:// output.
    #[arg(long, value_parser = ["AES256", "aws:kms"])]
    sse: Option<String>,
    /// The KMS key for --sse aws:kms.
    #[arg(long, requires = "sse")]
    sse_kms_key_id: Option<String>,
    /// Retries of a store request that failed transiently (connection refused, timeout, 5xx, throttling); waits
    /// start at 1 s and grow with jitter up to 15 s, so 10 retries ride out at least 10 s of outage, typically
    /// about a minute.
    #[arg(long, default_value_t = StoreOptions::default().max_retries)]
    max_retries: usize,
    /// Seconds one store request may take before it is retried.
    #[arg(long, default_value_t = StoreOptions::default().timeout_s)]
    timeout: u64,
}

impl StoreArgs {
    pub fn options(&self) -> Result<StoreOptions, Failure> {
        let usage = |m: &str| Err(Failure::Usage(m.into()));
        let encryption = match (self.sse.as_deref(), &self.sse_kms_key_id) {
            (None, _) => None,
            (Some("AES256"), None) => Some(Encryption::Aes256),
            (Some("aws:kms"), Some(key_id)) => Some(Encryption::Kms { key_id: key_id.clone() }),
            (Some("aws:kms"), None) => return usage("--sse aws:kms needs --sse-kms-key-id"),
            (Some(_), Some(_)) => return usage("--sse-kms-key-id goes with --sse aws:kms"),
            (Some(other), None) => return usage(&format!("unknown --sse {other}")),
        };
        Ok(StoreOptions {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            allow_http: self.allow_http,
            encryption,
            max_retries: self.max_retries,
            timeout_s: self.timeout,
            allowed_regions: self.allowed_regions.clone(),
        })
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Images, searched recursively: a folder or s3://bucket/prefix. Each image's label is its parent
    /// folder's name.
    #[arg(long)]
    input: String,
    /// Output folder or s3://bucket/prefix: result/, errors/, pca/, manifest/, report.json, report.html, and
    /// _SUCCESS last.
    /// One run writes an output at a time: a second one is refused, naming the first.
    #[arg(long)]
    pub output: String,
    /// File-name pattern to include (repeatable). Default: *.jpg
    #[arg(long = "glob")]
    globs: Vec<String>,
    /// Number of principal components to keep (default: 50).
    #[arg(long, conflicts_with = "variance")]
    k: Option<usize>,
    /// Keep the fewest components whose cumulative explained variance reaches this fraction (0 < F <= 1).
    #[arg(long)]
    variance: Option<f64>,
    /// Project with the PCA model of an earlier run (OUT/pca/model.json, a path or s3://) instead of fitting
    /// one, e.g. the Test split with the Training basis; it must come from the same featurizer model.
    #[arg(long, value_name = "MODEL_JSON", conflicts_with_all = ["k", "variance", "center"])]
    pca_model: Option<String>,
    /// Project centred vectors (x - mean); the default projects raw vectors, as Spark ML does.
    #[arg(long)]
    center: bool,
    /// A feature cache (a folder or s3://bucket/prefix, made on first use): images whose bytes it holds, under
    /// this model, preprocessing and runtime, are not featurized again, and this run's new images are added.
    /// Unchanged files are recognised from the listing (path, size, modification time) without being read.
    #[arg(long, value_name = "DIR|S3_URL")]
    cache: Option<String>,
    /// With --cache: read and hash every image instead of trusting unchanged listings.
    #[arg(long, requires = "cache")]
    verify_cache: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Images per partition (the unit of parallel work and of output files); the last few partitions are cut
    /// 4x finer so that the workers finish together. Default: 256.
    #[arg(long)]
    partition_rows: Option<usize>,
    /// Replace the output folder if it exists.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Write HMAC-SHA256(key, path) instead of each path in result/, errors/ and manifest/ (labels kept), with
    /// the key read from this file (at least 16 bytes), so results can be shared without exposing paths.
    #[arg(long, value_name = "KEYFILE")]
    pseudonymize_paths: Option<PathBuf>,
    /// Continue an unfinished run in the output folder: committed partitions are reused, the rest is done,
    /// and the result has exactly the rows of an uninterrupted run.
    #[arg(long)]
    resume: bool,
    /// Fail as soon as more inputs than this cannot be processed: a count (10) or a fraction of the listed
    /// images (0.01 or 1%). Default: no limit.
    #[arg(long)]
    max_errors: Option<ErrorBudget>,
    #[command(flatten)]
    cost: CostArgs,
    /// Run on a cluster (a `verger scheduler` with `verger executor`s): df://HOST:PORT. The executors
    /// featurize and write the output, so the images, the model and the output must be reachable from them
    /// at the same locations (a shared folder or s3://); listing, PCA fitting and commits stay here.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// With --cluster: the cluster's credentials (a `verger cluster init` folder, the client's files): mTLS
    /// to the scheduler and executors, and the API token. Default: $VERGER_SECURITY.
    #[arg(long, value_name = "DIR", requires = "cluster")]
    security: Option<PathBuf>,
    /// With --cluster: cluster jobs (one per partition) kept in flight; more than the executors' task slots,
    /// so that none waits for the next job. Default: 16.
    #[arg(long, requires = "cluster")]
    cluster_jobs: Option<usize>,
    /// Seconds an s3:// output's lease lasts without renewal; another run takes a lease over only after twice
    /// this without renewal, or at once when its process on this host has ended. Default: 60.
    #[arg(long, hide = true)]
    lease_ttl: Option<u64>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
}

impl RunArgs {
    pub fn config(self) -> Result<JobConfig, Failure> {
        let store = self.store.options()?;
        let settings = self.model.settings(store)?;
        let mut config = JobConfig::new(self.input, self.output, String::new());
        config.featurize = settings;
        if !self.globs.is_empty() {
            config.globs = self.globs;
        }
        match (self.k, self.variance) {
            (_, Some(f)) => config.components = Components::VarianceFraction(f),
            (Some(k), None) => config.components = Components::Count(k),
            (None, None) => {}
        }
        config.center = self.center;
        config.pca_model = self.pca_model.as_deref().map(verger::absolute).transpose()?;
        config.cache = self.cache.as_deref().map(verger::absolute).transpose()?;
        config.verify_cache = self.verify_cache;
        if let Some(threads) = self.threads {
            if threads == 0 {
                return Err(Failure::Usage("--threads must be at least 1".into()));
            }
            config.threads = threads;
        }
        if let Some(rows) = self.partition_rows {
            config.partition_rows = rows;
        }
        config.overwrite = self.overwrite;
        config.resume = self.resume;
        config.max_errors = self.max_errors;
        config.pseudonymize_key = self.pseudonymize_paths;
        config.cost = self.cost.config(self.store.region.as_deref());
        if self.cluster.is_some() {
            config.cluster_security = self.security.or_else(security_from_env);
        }
        config.cluster = self.cluster;
        if let Some(jobs) = self.cluster_jobs {
            config.cluster_jobs = jobs.max(1);
        }
        if let Some(ttl) = self.lease_ttl {
            config.lease_ttl_s = ttl;
        }
        Ok(config)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum On {
    /// The run's pca_features.
    PcaFeatures,
    /// The run's 1280-d features.
    Features,
}

#[derive(Args)]
pub struct TrainArgs {
    /// A finished verger run (folder or s3://).
    run: String,
    /// The classifier folder to write (folder or s3://).
    #[arg(long)]
    out: String,
    /// What to train on.
    #[arg(long, value_enum, default_value = "pca-features")]
    on: On,
    /// L2 penalty on the weights (scikit-learn's 1/C). Default: 1.
    #[arg(long)]
    l2: Option<f64>,
    /// Replace an existing classifier folder.
    #[arg(long)]
    overwrite: bool,
    /// identify calls a photo unknown when it is further from every training image than this percentile
    /// of the training images' own distances to their 5th nearest other training image, in (0, 100].
    /// Default: 99.
    #[arg(long)]
    unknown_percentile: Option<f64>,
    /// How the training images' neighbours are found (the unknown rule, identify): auto (exact up to 100,000
    /// images, beyond an HNSW index saved with the classifier and its recall@10 reported), exact or
    /// approximate.
    #[arg(long, default_value = "auto", value_parser = ["auto", "exact", "approximate"])]
    search: String,
    #[command(flatten)]
    store: StoreArgs,
}

impl TrainArgs {
    pub fn config(self) -> Result<verger::TrainConfig, Failure> {
        let mut config = verger::TrainConfig::new(self.run, self.out);
        config.input = match self.on {
            On::PcaFeatures => verger::Input::PcaFeatures,
            On::Features => verger::Input::Features,
        };
        if let Some(l2) = self.l2 {
            if l2.is_nan() || l2 <= 0.0 {
                return Err(Failure::Usage("--l2 must be positive".into()));
            }
            config.options.l2 = l2;
        }
        config.search = self.search.parse().map_err(Failure::Usage)?;
        if let Some(p) = self.unknown_percentile {
            config.unknown_percentile = verger::check_unknown_percentile(p).map_err(Failure::Usage)?;
        }
        config.overwrite = self.overwrite;
        config.store = self.store.options()?;
        Ok(config)
    }
}

#[derive(Args)]
pub struct QualityArgs {
    /// A finished verger run (folder or s3://); quality/ is written into it.
    pub run: String,
    /// Another finished run of the same model and PCA basis to find this run's near twins in (leakage), e.g.
    /// the Training run when RUN is the Test run; repeatable.
    #[arg(long)]
    pub against: Vec<String>,
    /// The cosine similarity of the features from which two images are near duplicates, in (0, 1].
    /// Default: 0.93 (docs/quality.md).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Neighbours each image is compared with (outlier score, label disagreement). Default: 10.
    #[arg(long)]
    pub neighbours: Option<usize>,
    /// Folds of the out-of-fold probabilities the label check uses, at least 2. Default: 5.
    #[arg(long)]
    pub folds: Option<usize>,
    /// Suspects and outliers listed in the summary. Default: 100.
    #[arg(long)]
    pub top: Option<usize>,
    /// Embed small JPEGs of the listed images in report.html (off by default: photos may be personal data).
    #[arg(long)]
    pub thumbnails: bool,
    /// How neighbours are found: auto (exact up to 100,000 x 100,000 image pairs, an HNSW index beyond, its
    /// recall@10 reported), exact or approximate.
    #[arg(long, default_value = "auto", value_parser = ["auto", "exact", "approximate"])]
    pub search: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl QualityArgs {
    pub fn config(self) -> Result<verger::QualityConfig, Failure> {
        let mut config = verger::QualityConfig::new(self.run);
        config.against = self.against;
        config.threshold = self.threshold.unwrap_or(config.threshold);
        config.neighbours = self.neighbours.unwrap_or(config.neighbours);
        config.folds = self.folds.unwrap_or(config.folds);
        config.top = self.top.unwrap_or(config.top);
        config.thumbnails = self.thumbnails;
        config.search = self.search.parse().map_err(Failure::Usage)?;
        config.store = self.store.options()?;
        config.check().map_err(|e| Failure::Usage(e.to_string()))?;
        Ok(config)
    }
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// The classifier folder (made by verger train).
    #[arg(long)]
    pub model: String,
    /// A finished verger run, e.g. the Test split made with --pca-model TRAINING/pca/model.json.
    pub run: String,
    /// Also score the images without a near twin in this finished run (the training run): the accuracy
    /// that holds on photos unlike the training images.
    #[arg(long, value_name = "TRAIN_RUN")]
    pub novel_only_vs: Option<String>,
    /// With --novel-only-vs: the cosine similarity of the features from which an image is a near twin, in
    /// (0, 1]. Default: verger quality's, 0.93.
    #[arg(long, requires = "novel_only_vs")]
    pub threshold: Option<f64>,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl EvaluateArgs {
    /// Checks the options and scores the classifier ([`verger::evaluate`]).
    pub fn evaluate(self) -> Result<verger::Evaluation, Failure> {
        let threshold = verger::check_threshold(self.threshold.unwrap_or(verger::quality::DEFAULT_THRESHOLD))
            .map_err(|e| Failure::Usage(format!("--threshold: {e}")))?;
        let novelty = self.novel_only_vs.map(|against| verger::Novelty { against, threshold });
        Ok(verger::evaluate(
            &self.model,
            &self.run,
            novelty.as_ref(),
            &self.store.options()?,
        )?)
    }
}

/// A classifier folder and the featurizer its features came from: what identify, serve and export load.
#[derive(Args)]
pub struct ClassifierArgs {
    /// The classifier folder (made by verger train).
    #[arg(long)]
    pub model: String,
    /// The featurizer (ONNX) the classifier's features came from. Default: $VERGER_MODEL, else the shared
    /// MobileNetV2 beside this checkout; its sha256 must be the classifier's.
    #[arg(long)]
    featurizer: Option<String>,
    /// Refuse photos with more pixels than this, before decoding. Default: Pillow's limit (178,956,970), and
    /// 64,000,000 for serve.
    #[arg(long)]
    max_pixels: Option<u64>,
    #[command(flatten)]
    store: StoreArgs,
}

impl ClassifierArgs {
    /// The classifier, loaded and checked, and the featurizer settings expecting its checksum.
    pub fn load(&self) -> Result<(verger::Classifier, FeaturizeSettings), Failure> {
        let store = self.store.options()?;
        let classifier = verger::load_classifier(&self.model, &store)?;
        let location = match &self.featurizer {
            Some(location) => location.clone(),
            None => verger::default_model()
                .ok_or_else(|| Failure::Usage("no featurizer: pass --featurizer PATH or set VERGER_MODEL".into()))?,
        };
        let mut settings = FeaturizeSettings::new(verger::absolute(&location)?);
        settings.model.sha256 = classifier.featurizer_sha256.clone();
        settings.max_pixels = self.max_pixels.unwrap_or(Limits::default().max_pixels);
        settings.store = store;
        Ok((classifier, settings))
    }
}

#[derive(Args)]
pub struct IdentifyArgs {
    #[command(flatten)]
    pub classifier: ClassifierArgs,
    /// Print JSON (one array, one object a photo) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Labels shown per photo.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Nearest training images shown per photo.
    #[arg(long, default_value_t = 5)]
    pub neighbours: usize,
    #[arg(required = true)]
    pub photos: Vec<String>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub classifier: ClassifierArgs,
    /// Address to listen on. Anything but loopback needs --token-file.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = verger::serve::DEFAULT_PORT)]
    port: u16,
    /// A file holding the bearer token every route but /healthz requires (or $VERGER_SERVE_TOKEN): at least
    /// 32 bytes, mode 0600.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// HTTPS with this certificate chain (PEM); with --tls-key. Anything but loopback needs it or --insecure.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM, mode 0600).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Plain HTTP beyond loopback, for a service behind a proxy that terminates TLS.
    #[arg(long)]
    insecure: bool,
    /// Bytes the photos being decoded may hold together, judged from their headers; a photo needing more
    /// gets 413.
    #[arg(long, default_value_t = verger::serve::DEFAULT_MEMORY_BUDGET)]
    memory_budget: u64,
    /// Connections open at once; more are closed as they come.
    #[arg(long, default_value_t = verger::serve::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a connection has to send a request's headers.
    #[arg(long, default_value_t = verger::serve::DEFAULT_HEADER_TIMEOUT.as_secs_f64())]
    header_timeout: f64,
    /// Seconds a request has to send its body.
    #[arg(long, default_value_t = verger::serve::DEFAULT_BODY_TIMEOUT.as_secs_f64())]
    body_timeout: f64,
    /// Inference workers: photos identified at once (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Requests that may wait for a worker (default: 32 per worker); more get 503 at once.
    #[arg(long)]
    queue: Option<usize>,
    /// Seconds a request waits for a worker before it gets 503.
    #[arg(long, default_value_t = verger::serve::DEFAULT_QUEUE_TIMEOUT.as_secs_f64())]
    queue_timeout: f64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = verger::serve::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
}

impl ServeArgs {
    pub fn config(&self) -> Result<verger::ServeConfig, Failure> {
        let address = format!("{}:{}", self.bind, self.port)
            .parse()
            .map_err(|e| Failure::Usage(format!("--bind/--port: {e}")))?;
        let mut config = verger::ServeConfig::new(address, self.workers.unwrap_or_else(verger::default_threads));
        if let Some(queue) = self.queue {
            config.queue = queue;
        }
        let seconds = |value: f64, flag: &str| match value.is_finite() && value >= 0.0 {
            true => Ok(std::time::Duration::from_secs_f64(value)),
            false => Err(Failure::Usage(format!("{flag} must be a number of seconds"))),
        };
        config.queue_timeout = seconds(self.queue_timeout, "--queue-timeout")?;
        config.header_timeout = seconds(self.header_timeout, "--header-timeout")?;
        config.body_timeout = seconds(self.body_timeout, "--body-timeout")?;
        config.max_body_bytes = self.max_body_bytes;
        config.max_pixels = self.classifier.max_pixels.unwrap_or(verger::serve::DEFAULT_MAX_PIXELS);
        config.memory_budget = self.memory_budget;
        config.max_connections = self.max_connections;
        config.insecure = self.insecure;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(verger::serve::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        let token = |t: Result<verger::serve::Token, verger::ServeError>| t.map_err(|e| Failure::Usage(e.to_string()));
        config.token = match (&self.token_file, std::env::var("VERGER_SERVE_TOKEN")) {
            (Some(file), _) => Some(token(verger::serve::Token::from_file(file))?),
            (None, Ok(text)) => {
                Some(token(verger::serve::Token::new(&text).map_err(|e| {
                    verger::ServeError::Config(format!("$VERGER_SERVE_TOKEN: {e}"))
                }))?)
            }
            (None, Err(_)) => None,
        };
        Ok(config)
    }
}

/// Parses `argv` (without the program name) as a verger command line; a bad one is a [`Failure::Usage`] with
/// clap's message. For front ends that translate their own arguments into options (the Python package).
pub fn parse(argv: &[String]) -> Result<Command, Failure> {
    parse_as::<Cli>(&with_program(argv)).map(|cli| cli.command)
}

/// The options of a library call that is not a subcommand: the model and store options of `featurize`.
#[derive(Parser)]
#[command(name = "verger")]
pub struct FeaturizeOptions {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
}

impl FeaturizeOptions {
    pub fn parse(argv: &[String]) -> Result<FeaturizeSettings, Failure> {
        let options = parse_as::<FeaturizeOptions>(&with_program(argv))?;
        options.model.settings(options.store.options()?)
    }
}

/// The store options alone, for calls that read a run (`read`, `read_pca`).
#[derive(Parser)]
#[command(name = "verger")]
pub struct StoreOptionsArgs {
    #[command(flatten)]
    store: StoreArgs,
}

impl StoreOptionsArgs {
    pub fn parse(argv: &[String]) -> Result<StoreOptions, Failure> {
        parse_as::<StoreOptionsArgs>(&with_program(argv))?.store.options()
    }
}

fn with_program(argv: &[String]) -> Vec<String> {
    std::iter::once("verger".to_string())
        .chain(argv.iter().cloned())
        .collect()
}

fn parse_as<T: Parser>(argv: &[String]) -> Result<T, Failure> {
    T::try_parse_from(argv).map_err(|e| Failure::Usage(e.render().to_string().trim_end().to_string()))
}
