//! The job from a bucket to a bucket, kept in EU regions and encrypted at rest. Credentials come from the
//! usual AWS sources (environment, ~/.aws files), never from the code.
//!
//!     AWS_PROFILE=features cargo run --release --example s3_run -- s3://photos-eu/app s3://features-eu/run-1 \
//!         [http://127.0.0.1:8333]

use std::sync::Arc;

fn main() -> Result<(), verger::Error> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        eprintln!("usage: s3_run s3://BUCKET/IMAGES s3://BUCKET/OUTPUT [ENDPOINT]");
        std::process::exit(2);
    };
    let model = verger::default_model().expect("set VERGER_MODEL to the model's path or s3:// URI");
    let mut config = verger::JobConfig::new(input, output, model);
    config.featurize.store = verger::StoreOptions {
        region: Some("eu-west-1".into()),
        // An S3-compatible store (SeaweedFS, MinIO, ...) instead of AWS.
        endpoint: args.next(),
        encryption: Some(verger::Encryption::Aes256),
        // Every bucket the job touches must be in an EU region, checked before any byte moves.
        allowed_regions: vec!["eu-*".into()],
        ..verger::StoreOptions::default()
    };
    config.resume = true;

    let outcome = verger::run(&config, Arc::new(verger::NoProgress))?;
    if let verger::RunOutcome::Done(report) = &outcome {
        for bucket in &report.buckets {
            println!("bucket {} in {} ({})", bucket.bucket, bucket.region, bucket.source);
        }
    }
    std::process::exit(outcome.exit_status().code().into());
}
