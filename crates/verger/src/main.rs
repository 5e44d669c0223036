//! The `verger` command: thin wiring of the crates below it. See `verger --help`.

mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use verger_engine::store::{Encryption, StoreOptions};
use verger_engine::{run_job, ErrorBudget, FeaturizeSettings, JobConfig, JobError};
use verger_image::{Limits, MODEL_SIDE};
use verger_model::{ModelSpec, MOBILENET_V2_SHA256};
use verger_pca::Components;

const EXIT_STATUSES: &str = "Exit status: 0 = every image processed; 1 = the run failed (nothing committed); \
2 = bad command line; 3 = completed, but some inputs could not be processed (see OUTPUT/errors/).";

#[derive(Parser)]
#[command(name = "verger", version, about = "Turn large collections of images into compact feature vectors.", after_help = EXIT_STATUSES)]
struct Cli {
    /// More log output (repeat for more); logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List, featurize (MobileNetV2), reduce (PCA) and write Parquet: the whole job.
    #[command(after_help = EXIT_STATUSES)]
    Run(Box<RunArgs>),
    /// List the images a run would process and count them per label; writes nothing.
    List {
        /// A folder or s3://bucket/prefix, searched recursively.
        #[arg(long)]
        input: String,
        /// File-name pattern to include (repeatable). Default: *.jpg
        #[arg(long = "glob")]
        globs: Vec<String>,
        /// Folders of a bucket listed at once.
        #[arg(long, default_value_t = verger_listing::LIST_CONCURRENCY)]
        concurrency: usize,
        /// Print every image (URI, tab, label), not only the counts.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Run a cluster scheduler (Apache DataFusion Ballista) with verger's functions; its REST API
    /// (/api/jobs, /api/job/{id}/stages, /api/executors) listens on the same port.
    Scheduler {
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        #[arg(long, default_value_t = 50050)]
        port: u16,
    },
    /// Run a cluster executor that serves the scheduler at HOST:PORT; it uses PORT and PORT+1.
    Executor {
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
    },
    /// Write the exact 224x224 RGB pixels the model sees, as DIR/<file stem>.png.
    Preprocess {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the 1280-d features of a few images to one Parquet file (columns path, features).
    Embed {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// The ONNX model: a path or s3://bucket/key. Default: $VERGER_MODEL, else the shared MobileNetV2 beside
    /// this checkout.
    #[arg(long)]
    model: Option<String>,
    /// Expected sha256 of the model file; a mismatch stops the run before any image is read.
    #[arg(long, default_value = MOBILENET_V2_SHA256)]
    model_sha256: String,
    /// Images per inference call. 1 is fastest on CPUs (measured: larger batches lose cache locality);
    /// raise it for accelerators.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Refuse images with more pixels than this, before decoding (default: Pillow's decompression-bomb limit).
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    max_pixels: u64,
}

impl ModelArgs {
    fn settings(&self, store: StoreOptions) -> Result<FeaturizeSettings> {
        let location = match &self.model {
            Some(location) => location.clone(),
            None => default_model().context("no model given: pass --model PATH or set VERGER_MODEL")?,
        };
        Ok(FeaturizeSettings {
            model: ModelSpec {
                location: absolute(&location)?,
                sha256: self.model_sha256.clone(),
            },
            batch_size: self.batch_size,
            max_pixels: self.max_pixels,
            store,
        })
    }
}

/// Where object stores are; credentials come from the usual AWS sources (environment, the shared profile
/// files and AWS_PROFILE, web identity, container or instance metadata), never from the command line.
#[derive(Args)]
struct StoreArgs {
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
    fn options(&self) -> Result<StoreOptions> {
        let encryption = match (self.sse.as_deref(), &self.sse_kms_key_id) {
            (None, _) => None,
            (Some("AES256"), None) => Some(Encryption::Aes256),
            (Some("aws:kms"), Some(key_id)) => Some(Encryption::Kms { key_id: key_id.clone() }),
            (Some("aws:kms"), None) => bail!("--sse aws:kms needs --sse-kms-key-id"),
            (Some(_), Some(_)) => bail!("--sse-kms-key-id goes with --sse aws:kms"),
            (Some(other), None) => bail!("unknown --sse {other}"),
        };
        Ok(StoreOptions {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            allow_http: self.allow_http,
            encryption,
            max_retries: self.max_retries,
            timeout_s: self.timeout,
        })
    }
}

/// Local paths made absolute (workers may run elsewhere); URIs as given.
fn absolute(location: &str) -> Result<String> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    Ok(std::path::absolute(location)?.to_string_lossy().into_owned())
}

#[derive(Args)]
struct RunArgs {
    /// Images, searched recursively: a folder or s3://bucket/prefix. Each image's label is its parent
    /// folder's name.
    #[arg(long)]
    input: String,
    /// Output folder or s3://bucket/prefix: result/, errors/, pca/, manifest/, report.json, and _SUCCESS last.
    #[arg(long)]
    output: String,
    /// File-name pattern to include (repeatable). Default: *.jpg
    #[arg(long = "glob")]
    globs: Vec<String>,
    /// Number of principal components to keep.
    #[arg(long, conflicts_with = "variance")]
    k: Option<usize>,
    /// Keep the fewest components whose cumulative explained variance reaches this fraction (0 < F <= 1).
    #[arg(long)]
    variance: Option<f64>,
    /// Project centred vectors (x - mean); the default projects raw vectors, as Spark ML does.
    #[arg(long)]
    center: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Images per partition (the unit of parallel work and of output files); the last few partitions are cut
    /// 4x finer so that the workers finish together.
    #[arg(long, default_value_t = 256)]
    partition_rows: usize,
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
    #[arg(long, value_parser = parse_error_budget)]
    max_errors: Option<ErrorBudget>,
    /// Hourly price of the machine in USD, for the report's cost estimate (default: an m5.xlarge on demand
    /// in eu-west-1, the original EMR node type).
    #[arg(long, default_value_t = 0.214)]
    price_per_hour: f64,
    /// Run on a cluster (a `verger scheduler` with `verger executor`s): df://HOST:PORT. The executors
    /// featurize and write the output, so the images, the model and the output must be reachable from them
    /// at the same locations (a shared folder or s3://); listing, PCA fitting and commits stay here.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// With --cluster: cluster jobs (one per partition) kept in flight; more than the executors' task slots,
    /// so that none waits for the next job.
    #[arg(long, default_value_t = 16, requires = "cluster")]
    cluster_jobs: usize,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
}

/// `$VERGER_MODEL`, else `shared/models/...` beside the checkout this binary was built from.
fn default_model() -> Option<String> {
    if let Ok(location) = std::env::var("VERGER_MODEL") {
        return Some(location);
    }
    let shared =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/mobilenet_v2/mobilenet_v2_imagenet.onnx");
    shared.is_file().then(|| shared.to_string_lossy().into_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run(*args),
        Command::List {
            input,
            globs,
            concurrency,
            all,
            store,
        } => list(&input, &globs, concurrency, all, &store),
        Command::Scheduler { bind, port } => {
            let address = format!("{bind}:{port}").parse().context("--bind/--port")?;
            tokio::runtime::Runtime::new()?.block_on(verger_cluster::run_scheduler(address))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Executor {
            scheduler,
            bind,
            port,
            slots,
            work_dir,
        } => {
            let (host, scheduler_port) = scheduler.rsplit_once(':').context("--scheduler is HOST:PORT")?;
            let options = verger_cluster::ExecutorOptions {
                scheduler_host: host.to_string(),
                scheduler_port: scheduler_port.parse().context("--scheduler port")?,
                bind_host: bind,
                port,
                slots: slots.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                work_dir: work_dir.map(|d| d.to_string_lossy().into_owned()),
            };
            tokio::runtime::Runtime::new()?.block_on(verger_cluster::run_executor(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Preprocess { images, out } => preprocess(&images, &out),
        Command::Embed { images, out, model } => {
            let files: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
            let failures = verger_engine::embed::embed_files(&files, &model.settings(StoreOptions::default())?, &out)?;
            for f in &failures {
                eprintln!("{}: {} failed: {}", f.uri, f.stage, f.message);
            }
            println!("wrote {} rows to {}", images.len() - failures.len(), out.display());
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

fn list(input: &str, globs: &[String], concurrency: usize, all: bool, store: &StoreArgs) -> Result<ExitCode> {
    let options = store.options()?;
    options.check_transport().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let started = std::time::Instant::now();
    let entries = runtime.block_on(async {
        verger_engine::bucket_regions(&[&input.to_string()], &options, &store.allowed_regions).await?;
        verger_engine::list_images(input, globs, &options, concurrency).await
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let mut per_label = std::collections::BTreeMap::<&str, usize>::new();
    for entry in &entries {
        *per_label.entry(entry.label.as_str()).or_default() += 1;
        if all {
            println!("{}\t{}", entry.uri, entry.label);
        }
    }
    if !all {
        for (label, count) in &per_label {
            println!("{count:>8}  {label}");
        }
    }
    println!(
        "{} images in {} labels under {input}, listed in {seconds:.2} s",
        entries.len(),
        per_label.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn preprocess(images: &[PathBuf], out: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut failed = 0;
    for image in images {
        let written = (|| -> Result<PathBuf> {
            let bytes = std::fs::read(image)?;
            let rgb = verger_image::load_rgb224(&bytes, &Limits::default())?;
            let stem = image.file_stem().context("image path has no file name")?;
            let target = out.join(stem).with_extension("png");
            std::fs::write(&target, verger_image::encode_png(&rgb, MODEL_SIDE, MODEL_SIDE)?)?;
            Ok(target)
        })();
        match written {
            Ok(target) => println!("{} -> {}", image.display(), target.display()),
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e:#}", image.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let components = match (args.k, args.variance) {
        (_, Some(f)) => Components::VarianceFraction(f),
        (k, None) => Components::Count(k.unwrap_or(50)),
    };
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let config = JobConfig {
        input: args.input.clone(),
        output: args.output.clone(),
        globs: if args.globs.is_empty() {
            vec![verger_listing::DEFAULT_GLOB.to_string()]
        } else {
            args.globs.clone()
        },
        components,
        center: args.center,
        threads,
        partition_rows: args.partition_rows,
        overwrite: args.overwrite,
        resume: args.resume,
        max_errors: args.max_errors,
        allowed_regions: args.store.allowed_regions.clone(),
        pseudonymize_key: args.pseudonymize_paths.clone(),
        featurize: args.model.settings(args.store.options()?)?,
        price_per_hour_usd: args.price_per_hour,
        cluster: args.cluster.clone(),
        cluster_jobs: args.cluster_jobs.max(1),
    };
    config.featurize.store.check_transport().map_err(anyhow::Error::msg)?;
    // Fail before anything else when the runtime is unusable (the job verifies the model first thing).
    verger_model::runtime::ensure_loaded()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let progress = Arc::new(progress::CliProgress::new());
    let cluster = match &config.cluster {
        Some(url) => Some(
            runtime
                .block_on(verger_cluster::connect(url, &config.featurize))
                .with_context(|| format!("connecting to the cluster at {url}"))?,
        ),
        None => None,
    };
    let outcome = match runtime.block_on(run_job(&config, progress, cluster)) {
        Ok(outcome) => outcome,
        Err(JobError::AlreadyComplete(output)) => {
            println!("{output} is already complete; nothing to do");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let r = &outcome.report;
    println!(
        "{} images -> {}/result ({} failed); PCA k = {}, explained variance {:.4}; {:.1} s, {:.1} images/s, {:.2} ms CPU/image, peak {:.0} MiB, ~${:.4}",
        r.counts.featurized,
        config.output.trim_end_matches('/'),
        r.counts.failed,
        r.pca.k,
        r.pca.explained_variance,
        r.wall_s,
        r.images_per_s,
        r.cpu_ms_per_image,
        r.peak_rss_mib,
        r.cost.estimated_usd,
    );
    Ok(if r.counts.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `--max-errors`: `10` (a count), `0.01` or `1%` (a fraction of the listed images).
fn parse_error_budget(text: &str) -> Result<ErrorBudget, String> {
    let fraction = |f: f64| {
        if (0.0..=1.0).contains(&f) {
            Ok(ErrorBudget::Fraction(f))
        } else {
            Err(format!("fraction {f} is not between 0 and 1"))
        }
    };
    if let Some(percent) = text.strip_suffix('%') {
        return fraction(percent.trim().parse::<f64>().map_err(|e| e.to_string())? / 100.0);
    }
    if let Ok(count) = text.parse::<u64>() {
        return Ok(ErrorBudget::Count(count));
    }
    fraction(
        text.parse::<f64>()
            .map_err(|_| format!("{text:?} is neither a count nor a fraction"))?,
    )
}
