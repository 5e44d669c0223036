//! From a finished run to the app: train a classifier on its PCA features, export it with the featurizer as
//! one ONNX file, and identify a photo with the library (what `verger serve` answers over HTTP).
//!
//!     cargo run --release --example app_model -- RUN CLASSIFIER APP.onnx PHOTO

fn main() -> Result<(), verger::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [run, folder, onnx, photo] = args.as_slice() else {
        eprintln!("usage: app_model RUN CLASSIFIER APP.onnx PHOTO");
        std::process::exit(2);
    };
    let mut config = verger::TrainConfig::new(run.as_str(), folder.as_str());
    config.overwrite = true;
    let trained = verger::train(&config)?;
    println!(
        "{} classes, training accuracy {:.4}",
        trained.classes, trained.train_accuracy
    );

    let store = verger::StoreOptions::default();
    let classifier = verger::load_classifier(folder, &store)?;
    let model = verger::default_model().expect("set VERGER_MODEL to the MobileNetV2 ONNX file");
    let mut settings = verger::FeaturizeSettings::new(model);
    settings.model.sha256 = classifier.featurizer_sha256.clone();
    let exported = verger::export(&classifier, &settings, onnx)?;
    println!(
        "{onnx}: {} bytes, one photo in {:.2} ms",
        exported.bytes, exported.latency_ms_median
    );

    for answer in verger::identify(&classifier, std::slice::from_ref(photo), &settings, 3, 0)? {
        match answer.identified {
            Some(found) => found
                .labels
                .iter()
                .for_each(|l| println!("{:>7.2} %  {}", 100.0 * l.probability, l.label)),
            None => println!("{photo}: {:?}", answer.error),
        }
    }
    Ok(())
}
