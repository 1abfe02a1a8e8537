//! JPEG 2000 codestreams to RGB, the way OpenSlide decodes them: OpenJPEG (built from source by
//! the `openjpeg-sys` crate, no system library) with its default decoder parameters on the raw
//! codestream, then OpenSlide's own component unpacking — for Aperio's compression 33003 its
//! fixed-point YCbCr → RGB tables (`make-tables.c`), for Aperio's 33005 and DICOM's JPEG 2000
//! (YBR_ICT, YBR_RCT, RGB) the components as they are (OpenJPEG undoes the codestream's colour
//! transform). Subsampled components are repeated, as OpenSlide's general path does. Pixels are
//! therefore those of OpenSlide, bit for bit, as long as both use the same OpenJPEG release.

use openjpeg_sys as opj;
use std::ffi::{c_char, c_void, CStr};

/// How the three decoded components map to RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Components {
    /// Y, Cb, Cr (JPEG's full-range YCbCr) without a codestream colour transform: Aperio 33003.
    YCbCr,
    /// R, G, B after OpenJPEG's inverse colour transform: Aperio 33005, DICOM JPEG 2000.
    Rgb,
}

/// A decoded codestream: `width × height` RGB pixels.
#[derive(Debug)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// The source of the codestream for OpenJPEG's read, skip and seek callbacks.
struct Source<'a> {
    data: &'a [u8],
    offset: usize,
}

unsafe extern "C" fn read_fn(buf: *mut c_void, count: usize, user: *mut c_void) -> usize {
    // SAFETY: `user` is the `Source` `decode` registered, alive for the whole decode; OpenJPEG
    // hands a buffer of at least `count` writable bytes.
    let src = unsafe { &mut *(user as *mut Source) };
    let n = count.min(src.data.len() - src.offset);
    if n == 0 {
        return usize::MAX; // OpenJPEG's end-of-stream (-1)
    }
    unsafe {
        std::ptr::copy_nonoverlapping(src.data.as_ptr().add(src.offset), buf as *mut u8, n);
    }
    src.offset += n;
    n
}

unsafe extern "C" fn skip_fn(count: i64, user: *mut c_void) -> i64 {
    // SAFETY: as in `read_fn`.
    let src = unsafe { &mut *(user as *mut Source) };
    let before = src.offset as i64;
    let after = (before + count).clamp(0, src.data.len() as i64);
    if count != 0 && after == before {
        return -1;
    }
    src.offset = after as usize;
    after - before
}

unsafe extern "C" fn seek_fn(offset: i64, user: *mut c_void) -> i32 {
    // SAFETY: as in `read_fn`.
    let src = unsafe { &mut *(user as *mut Source) };
    if offset < 0 || offset as usize > src.data.len() {
        return 0;
    }
    src.offset = offset as usize;
    1
}

/// Keeps OpenJPEG's first error message (its messages name what is wrong in the codestream).
unsafe extern "C" fn error_fn(msg: *const c_char, user: *mut c_void) {
    // SAFETY: `user` is the `Option<String>` `decode` registered, alive for the whole decode;
    // `msg` is a NUL-terminated string OpenJPEG owns for the duration of the call.
    let slot = unsafe { &mut *(user as *mut Option<String>) };
    if slot.is_none() && !msg.is_null() {
        let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
        *slot = Some(text.trim().to_string());
    }
}

unsafe extern "C" fn quiet_fn(_msg: *const c_char, _user: *mut c_void) {}

/// Owns the three OpenJPEG objects of one decode and releases them in `Drop`, whichever way the
/// decode ends.
struct Handles {
    stream: *mut opj::opj_stream_t,
    codec: *mut opj::opj_codec_t,
    image: *mut opj::opj_image_t,
}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or the live object its `opj_*create*`/`opj_read_header`
        // returned, owned only by this value and destroyed exactly once, here.
        unsafe {
            if !self.image.is_null() {
                opj::opj_image_destroy(self.image);
            }
            if !self.codec.is_null() {
                opj::opj_destroy_codec(self.codec);
            }
            if !self.stream.is_null() {
                opj::opj_stream_destroy(self.stream);
            }
        }
    }
}

/// Decodes a raw JPEG 2000 codestream (`FF 4F FF 51 …`, not a JP2 file) of three 8-bit
/// components. `expected` is the size the container promises (a tile, a frame); a codestream of
/// another size is an error, as in OpenSlide. Errors are plain messages; callers add the file.
pub fn decode(
    data: &[u8],
    components: Components,
    expected: Option<(u32, u32)>,
) -> Result<Decoded, String> {
    if data.len() < 4 || data[..2] != [0xFF, 0x4F] {
        return Err(format!(
            "not a JPEG 2000 codestream (first bytes {:02x?})",
            &data[..data.len().min(4)]
        ));
    }
    let mut source = Source { data, offset: 0 };
    let mut error: Option<String> = None;
    let fail = |error: &Option<String>, what: &str| {
        Err(match error {
            Some(e) => format!("OpenJPEG: {e}"),
            None => format!("OpenJPEG: {what} failed"),
        })
    };
    // SAFETY: every OpenJPEG object is created here and owned by `handles`, which outlives each
    // call that uses it; the callbacks' user data (`source`, `error`) are locals that outlive
    // `handles` (declared before it, so dropped after it). The image's component array has
    // `numcomps` entries, each with `w × h` samples once `opj_decode` succeeded.
    unsafe {
        let mut handles = Handles {
            stream: opj::opj_stream_create(data.len().max(1), 1),
            codec: opj::opj_create_decompress(opj::CODEC_FORMAT::OPJ_CODEC_J2K),
            image: std::ptr::null_mut(),
        };
        if handles.stream.is_null() || handles.codec.is_null() {
            return Err("OpenJPEG could not allocate a decoder".into());
        }
        let stream = handles.stream;
        opj::opj_stream_set_user_data(stream, &mut source as *mut Source as *mut c_void, None);
        opj::opj_stream_set_user_data_length(stream, data.len() as u64);
        opj::opj_stream_set_read_function(stream, Some(read_fn));
        opj::opj_stream_set_skip_function(stream, Some(skip_fn));
        opj::opj_stream_set_seek_function(stream, Some(seek_fn));
        let codec = handles.codec;
        let mut params: opj::opj_dparameters_t = std::mem::zeroed();
        opj::opj_set_default_decoder_parameters(&mut params);
        if opj::opj_setup_decoder(codec, &mut params) == 0 {
            return Err("OpenJPEG rejected its default decoder parameters".into());
        }
        let error_ptr = &mut error as *mut Option<String> as *mut c_void;
        opj::opj_set_error_handler(codec, Some(error_fn), error_ptr);
        opj::opj_set_warning_handler(codec, Some(quiet_fn), std::ptr::null_mut());
        opj::opj_set_info_handler(codec, Some(quiet_fn), std::ptr::null_mut());
        if opj::opj_read_header(stream, codec, &mut handles.image) == 0 || handles.image.is_null() {
            return fail(&error, "reading the codestream header");
        }
        let image = &*handles.image;
        let (w, h) = (image.x1, image.y1);
        if let Some((ew, eh)) = expected {
            if (w, h) != (ew, eh) || image.x0 != 0 || image.y0 != 0 {
                return Err(format!(
                    "the codestream is {w}×{h} (origin {}, {}), the container says {ew}×{eh}",
                    image.x0, image.y0
                ));
            }
        }
        if image.numcomps != 3 {
            return Err(format!(
                "{} image components; 3 (colour) expected",
                image.numcomps
            ));
        }
        if (w as u64) * (h as u64) > 1 << 28 {
            return Err(format!("a {w}×{h} codestream is over the tile size limit"));
        }
        if opj::opj_decode(codec, stream, handles.image) == 0
            || opj::opj_end_decompress(codec, stream) == 0
        {
            return fail(&error, "decoding");
        }
        let image = &*handles.image;
        let comps = std::slice::from_raw_parts(image.comps, 3);
        let mut planes: Vec<(&[i32], usize, u32, u32)> = Vec::with_capacity(3);
        for (i, c) in comps.iter().enumerate() {
            if c.data.is_null() || c.w == 0 || c.h == 0 || c.prec > 8 || c.sgnd != 0 {
                return Err(format!(
                    "component {i} is {}×{}, {} bits{}; 8-bit unsigned expected",
                    c.w,
                    c.h,
                    c.prec,
                    if c.sgnd != 0 { " signed" } else { "" }
                ));
            }
            let samples = std::slice::from_raw_parts(c.data, c.w as usize * c.h as usize);
            // OpenSlide's subsampling factors: the image size over the component size.
            planes.push((samples, c.w as usize, (w / c.w).max(1), (h / c.h).max(1)));
        }
        Ok(Decoded {
            width: w,
            height: h,
            rgb: unpack(&planes, components, w, h),
        })
    }
}

/// OpenSlide's `unpack_argb`: each pixel's samples from the component grids (subsampled ones
/// repeated), YCbCr converted with OpenSlide's tables.
fn unpack(planes: &[(&[i32], usize, u32, u32)], components: Components, w: u32, h: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    let tables = ycc_tables();
    let sample = |p: &(&[i32], usize, u32, u32), x: u32, y: u32| -> u8 {
        let (data, stride, sx, sy) = *p;
        let i = (y / sy) as usize * stride + (x / sx) as usize;
        // OpenSlide casts the decoded value to uint8_t (OpenJPEG already clips 8-bit samples).
        data.get(i).copied().unwrap_or(0) as u8
    };
    for y in 0..h {
        for x in 0..w {
            let (c0, c1, c2) = (
                sample(&planes[0], x, y),
                sample(&planes[1], x, y),
                sample(&planes[2], x, y),
            );
            match components {
                Components::Rgb => rgb.extend_from_slice(&[c0, c1, c2]),
                Components::YCbCr => {
                    let (r, g, b) = ycbcr_to_rgb(tables, c0, c1, c2);
                    rgb.extend_from_slice(&[r, g, b]);
                }
            }
        }
    }
    rgb
}

/// OpenSlide's YCbCr → RGB tables (`make-tables.c`): R and B offsets rounded per value, G from
/// 16-bit fixed-point precursors with the rounding folded into the Cb one.
struct YccTables {
    r_cr: [i32; 256],
    g_cb: [i32; 256],
    g_cr: [i32; 256],
    b_cb: [i32; 256],
}

fn ycc_tables() -> &'static YccTables {
    static TABLES: std::sync::OnceLock<YccTables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = YccTables {
            r_cr: [0; 256],
            g_cb: [0; 256],
            g_cr: [0; 256],
            b_cb: [0; 256],
        };
        for i in 0..256 {
            let c = i as f64 - 128.0;
            // C's round() and Rust's both round halves away from zero.
            t.r_cr[i] = (1.402 * c).round() as i32;
            t.g_cb[i] = (65536.0 * (0.5 - 0.34414 * c)).round() as i32;
            t.g_cr[i] = (65536.0 * (-0.71414 * c)).round() as i32;
            t.b_cb[i] = (1.772 * c).round() as i32;
        }
        t
    })
}

fn ycbcr_to_rgb(t: &YccTables, y: u8, cb: u8, cr: u8) -> (u8, u8, u8) {
    let (y, cb, cr) = (y as i32, cb as usize, cr as usize);
    let g_chroma = (t.g_cb[cb] + t.g_cr[cr]) >> 16;
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    (
        clamp(y + t.r_cr[cr]),
        clamp(y + g_chroma),
        clamp(y + t.b_cb[cb]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ycbcr_matches_openslide_tables() {
        // Values of OpenSlide's tables and arithmetic, computed by hand (tools: Python, C
        // rounding): (Y, Cb, Cr) → (R, G, B).
        let t = ycc_tables();
        for (ycc, rgb) in [
            ((128, 128, 0), (0, 219, 128)),
            ((100, 255, 128), (100, 56, 255)),
            ((128, 0, 255), (255, 81, 0)),
            ((200, 90, 170), (255, 183, 133)),
            ((30, 160, 100), (0, 39, 87)),
        ] {
            assert_eq!(ycbcr_to_rgb(t, ycc.0, ycc.1, ycc.2), rgb, "{ycc:?}");
        }
        // Neutral chroma leaves Y as it is.
        for y in [0u8, 17, 128, 255] {
            assert_eq!(ycbcr_to_rgb(t, y, 128, 128), (y, y, y));
        }
    }

    #[test]
    fn refuses_what_is_not_a_codestream() {
        assert!(decode(b"\xff\xd8\xff\xe0", Components::Rgb, None)
            .unwrap_err()
            .contains("not a JPEG 2000 codestream"));
        let truncated = [0xFF, 0x4F, 0xFF, 0x51, 0, 0x29, 0, 0];
        assert!(decode(&truncated, Components::Rgb, None)
            .unwrap_err()
            .contains("OpenJPEG"));
    }
}
