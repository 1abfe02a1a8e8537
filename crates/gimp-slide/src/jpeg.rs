//! JPEG tiles decoded by libjpeg-turbo's own code (built from source by `mozjpeg-sys`, whose
//! decoder is libjpeg-turbo's), with the settings OpenSlide uses: the library's defaults (ISLOW
//! integer IDCT, "fancy" triangle upsampling of subsampled chroma), the TIFF's shared
//! `JPEGTables` read first, and the colour space taken from the TIFF's `PhotometricInterpretation`
//! rather than from the stream (Aperio's "RGB" JPEG carries no marker saying so). The pixels are
//! therefore the ones OpenSlide, PIL and tifffile get, to the bit (docs/SLIDES.md, measured).
//!
//! libjpeg reports a fatal error through `error_exit`, which must not return: ours panics with
//! the library's message, the C code is built with unwinding tables (`mozjpeg-sys`'s `unwinding`
//! feature) and the panic is caught here and becomes an error. Warnings (corrupt data the
//! library recovers from, as OpenSlide does) are not printed.

use mozjpeg_sys as ffi;
use std::cell::RefCell;
use std::os::raw::c_ulong;

/// How a stream's three components are to be read (TIFF's photometric interpretation; a
/// one-component stream is grey either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegColour {
    /// Photometric 6: Y, Cb, Cr, converted to RGB by the library.
    YCbCr,
    /// Photometric 2: the components are R, G, B (Aperio's RGB JPEG).
    Rgb,
}

/// One chunk of a TIFF JPEG page as a complete JPEG stream that any decoder reads: the shared
/// `JPEGTables` (start-of-image, tables, end-of-image) put after the chunk's own start-of-image
/// marker; the chunk as it is when the page has no shared tables.
pub fn complete_stream(
    tables: Option<&[u8]>,
    chunk: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    if chunk.len() < 2 || chunk[..2] != [0xFF, 0xD8] {
        return Err("not a JPEG stream (no start-of-image marker)".into());
    }
    let Some(t) = tables else {
        return Ok(chunk);
    };
    if t.len() < 4 || t[..2] != [0xFF, 0xD8] || t[t.len() - 2..] != [0xFF, 0xD9] {
        return Err("the page's JPEGTables are not a start-of-image … end-of-image block".into());
    }
    let mut out = Vec::with_capacity(chunk.len() + t.len());
    out.extend_from_slice(&chunk[..2]);
    out.extend_from_slice(&t[2..t.len() - 2]);
    out.extend_from_slice(&chunk[2..]);
    Ok(out)
}

/// A decoded JPEG: `width × height` pixels of `channels` (1 or 3) bytes each, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// libjpeg's fatal-error hook: records the library's message and unwinds out of the C code.
unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let buffer = [0u8; 80];
    let mut message = String::from("libjpeg error");
    if let Some(format) = (*cinfo.err).format_message {
        format(cinfo, &buffer);
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        message = String::from_utf8_lossy(&buffer[..end]).into_owned();
    }
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
    std::panic::resume_unwind(Box::new(JpegPanic));
}

/// Payload of the unwinding [`error_exit`] starts (`resume_unwind` skips the panic hook).
struct JpegPanic;

/// Warnings and trace messages: dropped (libjpeg's default prints the first one to stderr).
unsafe extern "C-unwind" fn silent(_cinfo: &mut ffi::jpeg_common_struct, _level: i32) {}

/// The decompressor, destroyed however decoding ends.
struct Session {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    _err: Box<ffi::jpeg_error_mgr>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: `cinfo` was created by `jpeg_create_decompress` in `Session::new` and is
        // destroyed once; destroying also frees whatever a failed decode left allocated.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

impl Session {
    fn new() -> Self {
        // SAFETY: both structs are plain C data for which all-zero is the state libjpeg's
        // constructors expect to fill in.
        let mut err: Box<ffi::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
        let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `jpeg_std_error` fills the error manager, which outlives `cinfo` (both are
        // boxed and dropped together); the decompressor is created with the library's version.
        unsafe {
            ffi::jpeg_std_error(&mut err);
            err.error_exit = Some(error_exit);
            err.emit_message = Some(silent);
            cinfo.common.err = &mut *err;
            ffi::jpeg_create_decompress(&mut *cinfo);
        }
        Session { cinfo, _err: err }
    }
}

/// Decodes one JPEG stream (a TIFF tile or strip), after the abbreviated `tables` stream when
/// the TIFF has `JPEGTables`. Errors carry libjpeg's message.
pub fn decode(
    tables: Option<&[u8]>,
    data: &[u8],
    colour: JpegColour,
) -> std::result::Result<Decoded, String> {
    if data.is_empty() {
        return Err("empty JPEG stream".into());
    }
    let run = || {
        let mut s = Session::new();
        let cinfo = &mut *s.cinfo;
        // SAFETY: the source buffers outlive the calls that read them (they are only read
        // inside this closure); every libjpeg call follows the library's documented order
        // (tables header, image header, start, scanlines, finish); a fatal error unwinds
        // through `error_exit` and `Session`'s drop cleans up.
        unsafe {
            if let Some(t) = tables.filter(|t| !t.is_empty()) {
                ffi::jpeg_mem_src(cinfo, t.as_ptr(), t.len() as c_ulong);
                // JPEG_HEADER_TABLES_ONLY (2): an abbreviated stream of tables.
                if ffi::jpeg_read_header(cinfo, 0) != 2 {
                    return Err("the JPEGTables tag is not a JPEG tables stream".to_string());
                }
            }
            ffi::jpeg_mem_src(cinfo, data.as_ptr(), data.len() as c_ulong);
            // JPEG_HEADER_OK (1).
            if ffi::jpeg_read_header(cinfo, 1) != 1 {
                return Err("no JPEG image in the stream".to_string());
            }
            let components = cinfo.num_components;
            let channels = match (colour, components) {
                (_, 1) => {
                    cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_GRAYSCALE;
                    1
                }
                (JpegColour::YCbCr, 3) => {
                    cinfo.jpeg_color_space = ffi::J_COLOR_SPACE::JCS_YCbCr;
                    cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
                    3
                }
                (JpegColour::Rgb, 3) => {
                    cinfo.jpeg_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
                    cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
                    3
                }
                (_, n) => return Err(format!("{n} JPEG components (1 or 3 are read)")),
            };
            let (w, h) = (cinfo.image_width as usize, cinfo.image_height as usize);
            if w == 0 || h == 0 || w * h > 1 << 28 {
                return Err(format!("a {w}×{h} JPEG image is not a usable tile"));
            }
            ffi::jpeg_start_decompress(cinfo);
            let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
            let stride = w * channels;
            let mut pixels = vec![0u8; stride * h];
            while (cinfo.output_scanline as usize) < h {
                let row = cinfo.output_scanline as usize;
                let mut ptr = pixels[row * stride..].as_mut_ptr();
                if ffi::jpeg_read_scanlines(cinfo, &mut ptr, 1) != 1 {
                    return Err(format!("the JPEG data ends at row {row} of {h}"));
                }
            }
            ffi::jpeg_finish_decompress(cinfo);
            Ok(Decoded {
                width: w as u32,
                height: h as u32,
                channels,
                pixels,
            })
        }
    };
    match gimp_io::guard::catch_quietly(run) {
        Ok(r) => r,
        Err(_) => Err(LAST_ERROR.with(|e| e.borrow().clone())),
    }
}
