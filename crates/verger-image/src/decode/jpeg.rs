//! JPEG through libjpeg-turbo's TurboJPEG API, with Pillow's defaults (accurate integer IDCT, fancy
//! upsampling). libjpeg warnings are not errors for Pillow, except running out of data: Pillow then
//! raises "image file is truncated" where libjpeg would pad the image with grey.

use std::ffi::CStr;

use turbojpeg::raw;

use super::{Header, Limits, CONVERSION_BYTES_PER_PIXEL};
use crate::error::ImageError;
use crate::pixels::{Mode, Pixels};

/// Scans a progressive JPEG may have. Cameras and encoders write about ten; libjpeg-turbo's `djpeg
/// -strict` advice for untrusted input is a few hundred. Beyond this, decoding is refused (Pillow has no such
/// limit: an image refused here would take minutes of CPU there).
const MAX_SCANS: libc_int = 500;

/// libjpeg's JWRN_JPEG_EOF: the data ended before the image did.
const PREMATURE_END: &str = "Premature end of JPEG file";

/// A TurboJPEG decompressor handle for one image. Handles are not reused: after a broken stream libjpeg can
/// keep state (tables, the previous image's size) that would leak into the next image, and a new handle
/// costs microseconds next to milliseconds of inference.
pub(crate) struct JpegDecoder {
    handle: raw::tjhandle,
}

// The handle is owned exclusively and only used through `&mut self`.
unsafe impl Send for JpegDecoder {}

impl Drop for JpegDecoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.handle) };
    }
}

impl JpegDecoder {
    pub fn new() -> Result<Self, ImageError> {
        // SAFETY: plain constructor; a null return is checked.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as libc_int) };
        if handle.is_null() {
            return Err(ImageError::Jpeg("cannot initialise libjpeg-turbo".into()));
        }
        Ok(JpegDecoder { handle })
    }

    fn message(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.handle)) }
            .to_string_lossy()
            .into_owned()
    }

    fn get(&self, param: raw::TJPARAM) -> libc_int {
        // SAFETY: reading a parameter of a valid handle.
        unsafe { raw::tj3Get(self.handle, param as libc_int) }
    }

    fn set(&mut self, param: raw::TJPARAM, value: libc_int) -> Result<(), ImageError> {
        // SAFETY: setting a parameter of a valid handle.
        let status = unsafe { raw::tj3Set(self.handle, param as libc_int, value) };
        self.check(status)
    }

    /// Reads the header: the image's size, and what decoding it costs in memory at its peak.
    pub fn header(&mut self, bytes: &[u8]) -> Result<Header, ImageError> {
        // SAFETY: the pointer and length describe `bytes`, which outlives the call.
        let status = unsafe { raw::tj3DecompressHeader(self.handle, bytes.as_ptr(), bytes.len() as _) };
        self.check(status)?;
        let width = self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH);
        let height = self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT);
        let (width, height) = match (u64::try_from(width), u64::try_from(height)) {
            (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
            // libjpeg reports no frame when the data ends before it: Pillow calls that truncated.
            _ => return Err(ImageError::Truncated),
        };
        let channels: u64 = match self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as u32 {
            raw::TJCS_TJCS_GRAY => 1,
            raw::TJCS_TJCS_CMYK | raw::TJCS_TJCS_YCCK => 4,
            _ => 3,
        };
        // A progressive image's coefficients (2 bytes per sample) are held whole until its last scan.
        let coefficients = match self.get(raw::TJPARAM_TJPARAM_PROGRESSIVE) {
            1 => 2 * channels,
            _ => 0,
        };
        Ok(Header {
            width,
            height,
            peak_bytes: width * height * (channels + coefficients + CONVERSION_BYTES_PER_PIXEL),
        })
    }

    /// Decodes into "L", "RGB" or "CMYK" as Pillow's JPEG plugin would.
    pub fn decode(&mut self, bytes: &[u8], limits: &Limits) -> Result<Pixels, ImageError> {
        let header = self.header(bytes)?;
        let (width, height) = (header.width as usize, header.height as usize);
        limits.check(width, height)?;
        // libjpeg-turbo's own guards, for what the header does not show: a progressive image of endless scans
        // (each one a pass over every coefficient), and intermediate buffers beyond what the pixel limit
        // implies.
        self.set(raw::TJPARAM_TJPARAM_SCANLIMIT, MAX_SCANS)?;
        let max_memory_mb = (limits.max_pixels.saturating_mul(8) >> 20).clamp(1, libc_int::MAX as u64);
        self.set(raw::TJPARAM_TJPARAM_MAXMEMORY, max_memory_mb as libc_int)?;
        if self.get(raw::TJPARAM_TJPARAM_PRECISION) != 8 {
            return Err(ImageError::Unsupported(
                "JPEG sample precision other than 8 bits".into(),
            ));
        }
        let colorspace = self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as u32;
        let (mode, format) = match colorspace {
            raw::TJCS_TJCS_GRAY => (Mode::L, raw::TJPF_TJPF_GRAY),
            raw::TJCS_TJCS_RGB | raw::TJCS_TJCS_YCbCr => (Mode::Rgb, raw::TJPF_TJPF_RGB),
            raw::TJCS_TJCS_CMYK | raw::TJCS_TJCS_YCCK => (Mode::Cmyk, raw::TJPF_TJPF_CMYK),
            other => return Err(ImageError::Unsupported(format!("JPEG colour space {other}"))),
        };
        let channels = mode.bytes_per_pixel();
        let mut data = vec![0u8; width * height * channels];
        // SAFETY: `data` holds exactly height rows of width * channels bytes, the pitch we pass.
        let status = unsafe {
            raw::tj3Decompress8(
                self.handle,
                bytes.as_ptr(),
                bytes.len() as _,
                data.as_mut_ptr(),
                (width * channels) as libc_int,
                format as libc_int,
            )
        };
        self.check(status)?;
        if mode == Mode::Cmyk {
            // Pillow reads every CMYK JPEG with rawmode "CMYK;I" (Adobe's inverted convention).
            data.iter_mut().for_each(|v| *v = 255 - *v);
        }
        Ok(Pixels::new(mode, width, height, data))
    }

    /// Maps a TurboJPEG status to Pillow's outcome: warnings pass, running out of data and errors fail.
    fn check(&self, status: libc_int) -> Result<(), ImageError> {
        if status == 0 {
            return Ok(());
        }
        let message = self.message();
        // SAFETY: reading the error code of a valid handle.
        let is_warning = unsafe { raw::tj3GetErrorCode(self.handle) } == raw::TJERR_TJERR_WARNING as libc_int;
        if message.contains(PREMATURE_END) {
            Err(ImageError::Truncated)
        } else if is_warning {
            Ok(())
        } else {
            Err(ImageError::Jpeg(message))
        }
    }
}

#[allow(non_camel_case_types)]
type libc_int = std::os::raw::c_int;
