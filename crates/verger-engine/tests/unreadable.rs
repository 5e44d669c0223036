//! Inputs that cannot be read become per-row errors with the path; the good rows survive.

use verger_engine::featurize::{featurize_files, stage, FeaturizeSettings};
use verger_image::Limits;
use verger_model::{ModelSpec, MOBILENET_V2_SHA256};
use verger_testdata::{fruits360_dir, model_path};

#[test]
fn missing_and_unreadable_files_are_recorded_per_row() {
    let tmp = tempfile::tempdir().unwrap();
    let good = fruits360_dir().join("Training/Kiwi");
    let good = std::fs::read_dir(good).unwrap().next().unwrap().unwrap().path();
    let directory = tmp.path().join("folder.jpg");
    std::fs::create_dir(&directory).unwrap();
    let uris: Vec<String> = [
        good.as_path(),
        &tmp.path().join("deleted-after-listing.jpg"),
        &directory,
    ]
    .iter()
    .map(|p| format!("file://{}", p.display()))
    .chain(["s3-but-unsupported://bucket/key.jpg".to_string()])
    .collect();
    let settings = FeaturizeSettings {
        model: ModelSpec {
            location: model_path().to_string_lossy().into_owned(),
            sha256: MOBILENET_V2_SHA256.into(),
        },
        batch_size: 4,
        max_pixels: Limits::default().max_pixels,
        store: Default::default(),
        device: Default::default(),
        precision: Default::default(),
    };
    let outcomes = featurize_files(&uris, &settings).unwrap();
    assert_eq!(outcomes.len(), 4);
    assert_eq!(outcomes[0].1.as_ref().map(Vec::len), Ok(1280));
    for (uri, outcome) in &outcomes[1..] {
        let (failed_stage, message) = outcome.as_ref().expect_err(uri);
        assert_eq!(*failed_stage, stage::READ, "{uri}");
        assert!(!message.is_empty());
    }
    assert!(outcomes[1].1.as_ref().unwrap_err().1.contains("No such file"));
}
