/// The Pillow modes verger decodes into. Samples are interleaved, 8 bits each except [`Mode::I16`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Bilevel, one byte per pixel holding 0 or 255 (Pillow stores "1" the same way).
    Bilevel,
    /// Grayscale.
    L,
    /// Grayscale with alpha.
    LA,
    /// Palette indices; the palette holds RGB triples.
    P {
        palette: Vec<[u8; 3]>,
    },
    Rgb,
    Rgba,
    /// As Pillow holds Adobe CMYK JPEGs: already un-inverted.
    Cmyk,
    /// 16-bit unsigned grayscale ("I;16"), native-endian `u16` samples stored as pairs of bytes.
    I16,
}

impl Mode {
    /// Bytes per pixel in [`Pixels::data`].
    pub fn bytes_per_pixel(&self) -> usize {
        match self {
            Mode::Bilevel | Mode::L | Mode::P { .. } => 1,
            Mode::LA | Mode::I16 => 2,
            Mode::Rgb => 3,
            Mode::Rgba | Mode::Cmyk => 4,
        }
    }
}

/// A decoded image: `height` rows of `width` pixels, tightly packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub mode: Mode,
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Pixels {
    pub fn new(mode: Mode, width: usize, height: usize, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len(), width * height * mode.bytes_per_pixel());
        Pixels {
            mode,
            width,
            height,
            data,
        }
    }
}
