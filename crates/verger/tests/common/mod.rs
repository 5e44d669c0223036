//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use verger_testdata::fruits360_dir;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn verger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(args)
        .output()
        .expect("verger runs")
}

/// The Python of `.venv`, where scripts/setup installed pyarrow and pandas.
pub fn python(script: &str, args: &[&str]) -> Output {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.is_file(), "{} missing: run scripts/setup", python.display());
    Command::new(python)
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python runs")
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 3 classes x 8 real images, plus an empty file and a text file named .jpg.
pub fn small_input(dir: &Path) {
    for class in ["Kiwi", "Lemon", "Orange"] {
        let from = fruits360_dir().join("Training").join(class);
        let to = dir.join(class);
        std::fs::create_dir_all(&to).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&from).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().take(8) {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("Broken")).unwrap();
    std::fs::write(dir.join("Broken/empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("Broken/notes.jpg"), b"this is not an image").unwrap();
    std::fs::write(dir.join("Broken/ignored.txt"), b"not matched by the glob").unwrap();
}
