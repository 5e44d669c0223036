//! The `verger` command: parses arguments into the library's configurations, calls the library ([`verger`]),
//! prints, and exits with [`ExitStatus`]. See `verger --help`.

mod progress;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use verger::{ExitStatus, RunOutcome};

use verger::cli::{self as args, Cli, Command};

fn main() -> ExitCode {
    verger::opt_out_of_telemetry();
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        // With -vv, every span's time on closing: stages, and per image read, decode and infer.
        .with_span_events(match cli.verbose {
            0 | 1 => tracing_subscriber::fmt::format::FmtSpan::NONE,
            _ => tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        })
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let status = dispatch(cli.command).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        match e {
            args::Failure::Usage(_) | args::Failure::Verger(verger::Error::ClusterNotBuilt { .. }) => ExitStatus::Usage,
            args::Failure::Verger(_) => ExitStatus::Failed,
        }
    });
    ExitCode::from(status.code())
}

fn dispatch(command: Command) -> Result<ExitStatus, args::Failure> {
    match command {
        Command::Run(args) => {
            let config = args.config()?;
            let outcome = verger::run(&config, Arc::new(progress::CliProgress::new()))?;
            match &outcome {
                RunOutcome::AlreadyComplete(output) => println!("{output} is already complete; nothing to do"),
                RunOutcome::Done(r) => {
                    let output = config.output.trim_end_matches('/');
                    let pca = r.pca.as_ref().map_or(String::new(), |p| {
                        format!("; PCA k = {}, explained variance {:.4}", p.k, p.explained_variance)
                    });
                    println!(
                        "{} images -> {output}/result ({} failed){pca}; {:.1} s, {:.1} images/s, {:.2} ms CPU/image, peak {:.0} MiB",
                        r.counts.featurized, r.counts.failed, r.wall_s, r.images_per_s, r.cpu_ms_per_image, r.peak_rss_mib,
                    );
                    let c = &r.cost;
                    let saving = c.saving.map_or(String::new(), |s| {
                        format!(", {s:.1}x cheaper per image than the original EMR set-up")
                    });
                    println!(
                        "cost ~${:.4} on {} x {} in {}{saving}; report: {output}/report.html",
                        c.usd, c.nodes, c.instance_type, c.region
                    );
                }
            }
            Ok(outcome.exit_status())
        }
        Command::List(args) => {
            let all = args.all;
            let config = args.config()?;
            let listing = verger::list(&config)?;
            if all {
                for entry in listing.images.iter() {
                    println!("{}\t{}", entry.uri, entry.label);
                }
            } else {
                for (label, count) in &listing.per_label {
                    println!("{count:>8}  {label}");
                }
            }
            println!(
                "{} images in {} labels under {}, listed in {:.2} s",
                listing.images.len(),
                listing.per_label.len(),
                config.input,
                listing.seconds
            );
            Ok(ExitStatus::Success)
        }
        Command::Estimate(args) => {
            let json = args.json;
            let e = verger::estimate(&args.config()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e).expect("an estimate serializes"));
                return Ok(ExitStatus::Success);
            }
            println!(
                "{} images ({:.1} MB) in {} labels under {}, listed in {:.2} s",
                e.images,
                e.bytes as f64 / 1e6,
                e.labels,
                e.input,
                e.list_s
            );
            println!(
                "sample: {} images ({} failed) on {} workers here: {:.1} images/s, {:.2} ms CPU/image",
                e.sampled, e.sample_failed, e.threads, e.images_per_s, e.cpu_ms_per_image
            );
            println!(
                "\n{:<56} {:>12} {:>10} {:>12}",
                format!(
                    "{} in {} at ${:.3}/h a node",
                    e.instance_type, e.region, e.usd_per_node_hour
                ),
                "wall",
                "CPU hours",
                "cost"
            );
            for p in std::iter::once(&e.here).chain(&e.clusters) {
                println!(
                    "{:<56} {:>12} {:>10.2} {:>12}",
                    p.setup,
                    duration(p.wall_s),
                    p.cpu_hours,
                    format!("${:.4}", p.usd)
                );
            }
            let o = &e.original;
            println!(
                "{:<56} {:>12} {:>10} {:>12}",
                o.description,
                duration(o.wall_s),
                "",
                format!("${:.4}", o.usd)
            );
            println!("\nassumptions:");
            for a in &e.assumptions {
                println!("  - {a}");
            }
            println!("  - prices: {}", e.price_source);
            Ok(ExitStatus::Success)
        }
        Command::Report { output, store } => {
            let page = verger::report(&output, &store.options()?)?;
            println!("{page}");
            Ok(ExitStatus::Success)
        }
        Command::Cluster(args::ClusterCommand::Init { dir }) => {
            for file in verger::cluster_init(&dir)? {
                println!("{}", file.display());
            }
            println!(
                "cluster credentials made. Scheduler: ca.crt scheduler.crt scheduler.key token; executors: ca.crt \
                 executor.crt executor.key; clients: ca.crt client.crt client.key token; keep ca.key offline. \
                 Pass --security DIR (or set {}) to verger scheduler, executor and run --cluster.",
                verger::SECURITY_ENV
            );
            Ok(ExitStatus::Success)
        }
        Command::Scheduler { bind, port, guard } => {
            let address = format!("{bind}:{port}")
                .parse()
                .map_err(|e| args::Failure::Usage(format!("--bind/--port: {e}")))?;
            verger::scheduler(address, &guard.guard()?)?;
            Ok(ExitStatus::Success)
        }
        Command::Executor(args) => {
            let (options, guard) = args.options()?;
            verger::executor(options, &guard)?;
            Ok(ExitStatus::Success)
        }
        Command::Train(args) => {
            let config = args.config()?;
            let report = verger::train(&config)?;
            println!(
                "{} classes from {} rows of {} -> {}; training accuracy {:.4} after {} iterations ({:.1} s)",
                report.classes,
                report.rows,
                config.run,
                config.out,
                report.train_accuracy,
                report.iterations,
                report.seconds
            );
            Ok(ExitStatus::Success)
        }
        Command::Evaluate(args) => {
            let e = args.evaluate()?;
            let (model, run) = (&e.classifier, &e.run);
            println!(
                "{} rows of {run}: top-1 {:.4}, top-5 {:.4}, macro F1 {:.4}",
                e.rows, e.top1, e.top5, e.macro_f1
            );
            if let Some(n) = e.novel.as_ref().filter(|n| n.rows == 0) {
                println!(
                    "every row has a near twin in {} (similarity >= {}): no novel-only scores",
                    n.against, n.threshold
                );
            } else if let Some(n) = &e.novel {
                println!(
                    "{} rows without a near twin in {} (similarity < {}): top-1 {:.4}, top-5 {:.4}, macro F1 {:.4}",
                    n.rows, n.against, n.threshold, n.top1, n.top5, n.macro_f1
                );
            }
            for (label, rows) in &e.unseen_labels {
                println!("  {rows} rows labelled {label:?}, a label the classifier never saw");
            }
            for pair in e.most_confused.iter().take(5) {
                println!("  {} x {} taken for {}", pair.count, pair.true_label, pair.predicted);
            }
            println!("saved in {model}/evaluation.json and {model}/confusion.parquet");
            if e.recorded_in_run_report {
                println!("summarised in {run}/report.json and {run}/report.html");
            }
            Ok(ExitStatus::Success)
        }
        Command::Quality(args) => {
            let config = args.config()?;
            let q = verger::quality(&config)?;
            print_quality(&config.run, &q);
            Ok(ExitStatus::Success)
        }
        Command::Identify(args) => identify(&args),
        Command::Serve(args) => {
            let config = args.config()?;
            let scheme = match config.tls {
                Some(_) => "https",
                None => "http",
            };
            let (classifier, settings) = args.classifier.load()?;
            verger::serve(classifier, settings, config, |address| {
                // The one line scripts wait for (the port may have been chosen by the system).
                println!("serving on {scheme}://{address}");
            })?;
            Ok(ExitStatus::Success)
        }
        Command::Export { classifier, onnx } => {
            let (loaded, settings) = classifier.load()?;
            let e = verger::export(&loaded, &settings, &onnx)?;
            println!(
                "{} ({:.1} MB, sha256 {}): {} classes, probabilities within {:.1e} of verger's; one photo in {:.2} ms (median, 1 thread)",
                e.onnx,
                e.bytes as f64 / 1e6,
                e.sha256,
                e.classes,
                e.check_max_abs_diff,
                e.latency_ms_median
            );
            Ok(ExitStatus::Success)
        }
        Command::Preprocess { images, out } => {
            let mut failed = 0;
            for image in &images {
                match verger::preprocess_file(image, &out, &verger::Limits::default()) {
                    Ok(target) => println!("{} -> {}", image.display(), target.display()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{e}");
                    }
                }
            }
            Ok(ExitStatus::from_failures(failed))
        }
        Command::Embed { images, out, model } => {
            let images: Vec<String> = images.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            let settings = model.settings(verger::StoreOptions::default())?;
            let outcome = verger::embed(&images, &settings, &out.to_string_lossy())?;
            for f in &outcome.failures {
                eprintln!("{}: {} failed: {}", f.uri, f.stage, f.message);
            }
            println!("wrote {} rows to {}", outcome.rows, out.display());
            Ok(ExitStatus::from_failures(outcome.failures.len() as u64))
        }
    }
}

fn identify(args: &args::IdentifyArgs) -> Result<ExitStatus, args::Failure> {
    let (classifier, settings) = args.classifier.load()?;
    let answers = verger::identify(&classifier, &args.photos, &settings, args.top, args.neighbours)?;
    let failed = answers.iter().filter(|a| a.error.is_some()).count() as u64;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answers).expect("answers serialize"));
    } else {
        for answer in &answers {
            match (&answer.identified, &answer.error) {
                (Some(found), _) => {
                    println!("{}", answer.photo);
                    if found.unknown {
                        println!(
                            "  unknown, unlike every training image (novelty {:.2})",
                            found.novelty.unwrap_or_default()
                        );
                    }
                    for label in &found.labels {
                        println!("  {:>7.2} %  {}", 100.0 * label.probability, label.label);
                    }
                    for n in &found.neighbours {
                        println!("  nearest {:8.3}  {}  ({})", n.distance, n.path, n.label);
                    }
                }
                (None, Some(e)) => eprintln!("{}: {} failed: {}", answer.photo, e.stage, e.message),
                (None, None) => unreachable!("an answer is identified or failed"),
            }
        }
    }
    Ok(ExitStatus::from_failures(failed))
}

fn print_quality(run: &str, q: &verger::QualitySummary) {
    let run = run.trim_end_matches('/');
    let share = |n: u64| 100.0 * n as f64 / q.rows.max(1) as f64;
    println!("{} images of {run}", q.rows);
    if let verger::Method::Approximate(r) = q.search {
        println!(
            "  neighbours by an HNSW index: recall@10 {:.3} against exact search on {} images",
            r.recall_at_10, r.sample
        );
    }
    match &q.exact_duplicates {
        Some(d) => println!(
            "  exact duplicates: {} groups, {} copies ({} groups with conflicting labels)",
            d.groups, d.copies, d.conflicting_labels
        ),
        None => println!("  exact duplicates: not checked (pseudonymised paths)"),
    }
    if q.unreadable > 0 {
        println!("  {} images could not be read again to hash them", q.unreadable);
    }
    println!(
        "  near duplicates (similarity >= {}): {} images ({:.1} %) in {} groups ({} with conflicting labels)",
        q.threshold,
        q.near_duplicate_images,
        share(q.near_duplicate_images),
        q.near_duplicate_groups,
        q.near_duplicate_conflicts
    );
    for l in &q.leakage {
        println!(
            "  leakage: {} of {} images ({:.1} %) have a near twin in {} ({} of the same label)",
            l.leaked,
            l.rows,
            100.0 * l.share,
            l.against,
            l.same_label
        );
        if let verger::Method::Approximate(r) = l.search {
            println!(
                "    (by an HNSW index: recall@10 {:.3} on {} images)",
                r.recall_at_10, r.sample
            );
        }
    }
    println!(
        "  likely wrong labels: {} label issues (confident learning, {} folds), {} suspects",
        q.label_issues, q.folds, q.label_suspects
    );
    for s in q.suspects.iter().take(5) {
        println!(
            "    {:.3}  {} labelled {}, looks like {}",
            s.score, s.path, s.label, s.suggested
        );
    }
    println!("  outliers, furthest first:");
    for o in q.outliers.iter().take(5) {
        println!("    {:.3}  {} ({})", o.score, o.path, o.label);
    }
    println!("saved in {run}/quality/ and summarised in {run}/report.json and {run}/report.html");
}

/// Seconds as the estimate prints them.
fn duration(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}
