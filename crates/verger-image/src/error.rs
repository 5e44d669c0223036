use thiserror::Error;

/// Why an image could not be turned into pixels. Messages name the cause the way Pillow would.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("empty file")]
    Empty,
    #[error("cannot identify image file (not a JPEG or PNG)")]
    UnknownFormat,
    #[error("image size {width}x{height} ({pixels} pixels) exceeds the limit of {limit} pixels; possible decompression bomb")]
    TooLarge {
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    #[error("image file is truncated")]
    Truncated,
    #[error("broken JPEG data: {0}")]
    Jpeg(String),
    #[error("broken PNG data: {0}")]
    Png(String),
    #[error("unsupported image: {0}")]
    Unsupported(String),
}
