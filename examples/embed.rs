//! The 1280-d MobileNetV2 features of a few images into one Parquet file, no PCA.
//!
//!     cargo run --release --example embed -- features.parquet IMAGE...

fn main() -> Result<(), verger::Error> {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: embed OUT.parquet IMAGE...");
        std::process::exit(2);
    };
    let images: Vec<String> = args.collect();
    let model = verger::default_model().expect("set VERGER_MODEL to the MobileNetV2 ONNX file");
    let outcome = verger::embed(&images, &verger::FeaturizeSettings::new(model), &out)?;
    println!("{} rows in {out}", outcome.rows);
    for failure in &outcome.failures {
        println!("{}: {} failed: {}", failure.uri, failure.stage, failure.message);
    }
    Ok(())
}
