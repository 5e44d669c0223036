//! The whole job on this machine: list → featurize → PCA → Parquet.
//!
//!     cargo run --release --example local_run -- ../shared/datasets/fruits360/Test out/test-example

use std::sync::Arc;

fn main() -> Result<(), verger::Error> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        eprintln!("usage: local_run INPUT OUTPUT");
        std::process::exit(2);
    };
    let model = verger::default_model().expect("set VERGER_MODEL to the MobileNetV2 ONNX file");
    let mut config = verger::JobConfig::new(input, output, model);
    config.components = verger::Components::Count(20);
    config.overwrite = true;

    match verger::run(&config, Arc::new(verger::NoProgress))? {
        verger::RunOutcome::Done(report) => println!(
            "{} images featurized, {} failed; 20 components keep {:.1} % of the variance; {:.1} images/s",
            report.counts.featurized,
            report.counts.failed,
            100.0 * report.pca.as_ref().map_or(0.0, |p| p.explained_variance),
            report.images_per_s
        ),
        verger::RunOutcome::AlreadyComplete(output) => println!("{output} is already complete"),
    }
    Ok(())
}
