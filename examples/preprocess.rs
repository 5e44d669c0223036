//! The exact pixels the model sees: Pillow-identical decode and bicubic resize to 224×224 RGB.
//!
//!     cargo run --release --example preprocess -- IMAGE

fn main() {
    let Some(image) = std::env::args().nth(1) else {
        eprintln!("usage: preprocess IMAGE");
        std::process::exit(2);
    };
    let bytes = std::fs::read(&image).unwrap_or_else(|e| panic!("{image}: {e}"));
    match verger::preprocess(&bytes, &verger::Limits::default()) {
        Ok(rgb) => {
            let mean = rgb.iter().map(|&b| f64::from(b)).sum::<f64>() / rgb.len() as f64;
            println!("{image}: {} bytes of 224x224 RGB, mean value {mean:.2}", rgb.len());
            println!("first pixel: {:?}", &rgb[..3]);
        }
        Err(e) => {
            eprintln!("{image}: {e}");
            std::process::exit(3);
        }
    }
}
