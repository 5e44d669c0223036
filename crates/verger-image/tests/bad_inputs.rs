//! Broken files give errors, never panics, hangs or unbounded allocations.

use proptest::prelude::*;
use verger_image::{load_rgb224, ImageError, Limits};
use verger_testdata::{fruits360_dir, shared_dir};

fn jpeg() -> Vec<u8> {
    std::fs::read(fruits360_dir().join("Training/Apple 10/r0_103_100.jpg")).unwrap()
}

fn png() -> Vec<u8> {
    std::fs::read(shared_dir().join("datasets/pillow-test-images/hopper.png")).unwrap()
}

#[test]
fn empty_and_foreign_bytes_are_refused() {
    assert_eq!(load_rgb224(b"", &Limits::default()), Err(ImageError::Empty));
    assert_eq!(
        load_rgb224(b"GIF89a not supported here", &Limits::default()),
        Err(ImageError::UnknownFormat)
    );
    assert_eq!(
        load_rgb224(b"hello, I am a text file named .jpg", &Limits::default()),
        Err(ImageError::UnknownFormat)
    );
}

#[test]
fn oversized_images_are_refused_before_decoding() {
    let limits = Limits { max_pixels: 99 * 100 };
    for bytes in [jpeg(), png()] {
        match load_rgb224(&bytes, &limits) {
            Err(ImageError::TooLarge { pixels, limit, .. }) => assert!(pixels > limit),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
}

/// Like Pillow, a JPEG that ends early is an error ("image file is truncated"), wherever it was cut.
#[test]
fn every_truncation_of_a_jpeg_is_an_error() {
    let full = jpeg();
    for len in 0..full.len() {
        assert!(
            load_rgb224(&full[..len], &Limits::default()).is_err(),
            "cut at {len} of {} decoded",
            full.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn truncated_pngs_never_panic(cut in 0usize..100_000) {
        let full = png();
        let _ = load_rgb224(&full[..cut % full.len()], &Limits::default());
    }

    #[test]
    fn bit_flips_never_panic(flips in proptest::collection::vec((0usize..1_000_000, 0u8..8), 1..8), use_png: bool) {
        let mut bytes = if use_png { png() } else { jpeg() };
        let len = bytes.len();
        for (at, bit) in flips {
            bytes[at % len] ^= 1 << bit;
        }
        let _ = load_rgb224(&bytes, &Limits::default());
    }
}

/// The decoder is reused per thread: a broken stream must not leak tables or sizes into the next image.
#[test]
fn a_broken_jpeg_does_not_affect_the_next_one() {
    let good = jpeg();
    let expected = load_rgb224(&good, &Limits::default()).unwrap();
    let mut bogus_huffman = good.clone();
    let dht = good.windows(2).position(|w| w == [0xFF, 0xC4]).expect("a DHT segment");
    bogus_huffman[dht + 5] = 0xFF; // first code-length count: the table no longer fits
    let before_frame = good[..20].to_vec();
    for bad in [bogus_huffman, before_frame] {
        assert!(load_rgb224(&bad, &Limits::default()).is_err());
        assert_eq!(load_rgb224(&good, &Limits::default()).unwrap(), expected);
        assert!(
            load_rgb224(&bad, &Limits::default()).is_err(),
            "an error after a good image too"
        );
    }
}

/// Pillow ignores a missing IEND but refuses a chunk cut off after the image data (here hopper.png's tEXt).
#[test]
fn a_png_cut_after_its_image_data_follows_pillow() {
    let full = png();
    for cut in [4, 8, 12, 13] {
        assert!(
            load_rgb224(&full[..full.len() - cut], &Limits::default()).is_ok(),
            "cut {cut}: Pillow accepts it"
        );
    }
    assert_eq!(
        load_rgb224(&full[..full.len() - 20], &Limits::default()),
        Err(ImageError::Truncated)
    );
}

/// Issue 41, point 10: the header alone gives an image's size and its decoding's peak memory, which covers
/// what decoding really allocates (the decoded buffer is checked here; the service's test checks resident
/// memory under a burst).
#[test]
fn the_header_bounds_what_decoding_holds() {
    let header = verger_image::header(&jpeg()).unwrap();
    assert_eq!((header.width, header.height), (100, 100));
    let decoded = verger_image::decode(&jpeg(), &Limits::default()).unwrap();
    assert!(header.peak_bytes >= 2 * decoded.data.len() as u64, "{header:?}");
    assert_eq!(header.peak_bytes, 100 * 100 * (3 + 8));

    let png = png();
    let header = verger_image::header(&png).unwrap();
    let decoded = verger_image::decode(&png, &Limits::default()).unwrap();
    assert_eq!(
        (header.width, header.height),
        (decoded.width as u64, decoded.height as u64)
    );
    assert!(header.peak_bytes >= 2 * decoded.data.len() as u64, "{header:?}");

    assert_eq!(verger_image::header(b""), Err(ImageError::Empty));
    assert_eq!(verger_image::header(b"GIF89a"), Err(ImageError::UnknownFormat));
}
