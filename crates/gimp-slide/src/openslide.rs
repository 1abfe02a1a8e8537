//! Other vendors' formats (MRXS, NDPI, SCN, VMS, BIF, …) through the system libopenslide, for
//! builds with `--features openslide`. The default build never links it.

use crate::slide::{Level, Properties, SlideReader};
use gimp_io::{DataError, ErrorKind, Result};
use image::RgbImage;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};

#[link(name = "openslide")]
extern "C" {
    fn openslide_open(filename: *const c_char) -> *mut c_void;
    fn openslide_close(osr: *mut c_void);
    fn openslide_get_error(osr: *mut c_void) -> *const c_char;
    fn openslide_get_level_count(osr: *mut c_void) -> i32;
    fn openslide_get_level_dimensions(osr: *mut c_void, level: i32, w: *mut i64, h: *mut i64);
    fn openslide_get_level_downsample(osr: *mut c_void, level: i32) -> f64;
    fn openslide_read_region(
        osr: *mut c_void,
        dest: *mut u32,
        x: i64,
        y: i64,
        level: i32,
        w: i64,
        h: i64,
    );
    fn openslide_get_property_names(osr: *mut c_void) -> *const *const c_char;
    fn openslide_get_property_value(osr: *mut c_void, name: *const c_char) -> *const c_char;
    fn openslide_get_associated_image_names(osr: *mut c_void) -> *const *const c_char;
    fn openslide_get_associated_image_dimensions(
        osr: *mut c_void,
        name: *const c_char,
        w: *mut i64,
        h: *mut i64,
    );
    fn openslide_read_associated_image(osr: *mut c_void, name: *const c_char, dest: *mut u32);
}

/// An open libopenslide handle. Invariant: `handle` is the non-null pointer `openslide_open`
/// returned (a null one is never stored), owned by this value alone and closed exactly once, in
/// `Drop`; every FFI call below passes it while `self` is borrowed, so it is never used after
/// `openslide_close`.
pub struct OpenSlide {
    handle: *mut c_void,
    path: PathBuf,
    levels: Vec<Level>,
    properties: Properties,
}

// SAFETY: libopenslide documents its handles as thread-safe ("may be used from multiple
// threads"; it locks internally), and the handle is not tied to the thread that opened it, so
// moving an `OpenSlide` to another thread is sound. The other fields are plain owned data.
unsafe impl Send for OpenSlide {}
// SAFETY: as above, concurrent calls on one handle from several threads are allowed by
// libopenslide; `&self` methods only read the handle pointer and owned data.
unsafe impl Sync for OpenSlide {}

/// Copies a NULL-terminated list of C strings into owned `String`s (an empty list for a null
/// pointer).
///
/// # Safety
///
/// `list` must be null or point to an array of pointers to NUL-terminated strings ending with a
/// null pointer, all valid for the duration of the call. The name lists libopenslide returns
/// (`openslide_get_property_names`, `openslide_get_associated_image_names`) are: they are owned
/// by the handle and live until it is closed, which cannot happen during the call because the
/// caller borrows the `OpenSlide`.
unsafe fn strings(list: *const *const c_char) -> Vec<String> {
    let mut out = Vec::new();
    if list.is_null() {
        return out;
    }
    let mut p = list;
    // SAFETY (caller's contract): `p` walks the array up to and including its terminating null
    // pointer and no further, and every entry before it is a valid NUL-terminated string, which
    // is copied out before returning.
    while !(*p).is_null() {
        out.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
        p = p.add(1);
    }
    out
}

impl OpenSlide {
    pub fn open(path: &Path) -> Result<Self> {
        let c = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| DataError::new(ErrorKind::Value, path, "path contains a NUL byte"))?;
        // SAFETY: `c` is a NUL-terminated string (CString) that outlives the call; libopenslide
        // does not keep the pointer. A null result (not a slide, or unreadable) is checked below.
        let handle = unsafe { openslide_open(c.as_ptr()) };
        if handle.is_null() {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                "OpenSlide does not recognise this file as a slide",
            ));
        }
        let mut s = Self {
            handle,
            path: path.to_path_buf(),
            levels: Vec::new(),
            properties: Properties::default(),
        };
        s.check()?;
        // SAFETY: `handle` is non-null and open (owned by `s`, which closes it on every return
        // path, errors included, through `Drop`). On error libopenslide returns -1.
        let n = unsafe { openslide_get_level_count(handle) };
        for l in 0..n {
            let (mut w, mut h) = (0i64, 0i64);
            // SAFETY: open handle; `l` is in 0..level_count; `w` and `h` are valid, aligned
            // `i64` locals that outlive the call (libopenslide writes -1 to both on error,
            // clamped to 0 below).
            unsafe { openslide_get_level_dimensions(handle, l, &mut w, &mut h) };
            // SAFETY: open handle and a level in range; returns -1.0 on error.
            let downsample = unsafe { openslide_get_level_downsample(handle, l) };
            s.levels.push(Level {
                width: w.max(0) as u64,
                height: h.max(0) as u64,
                downsample,
            });
        }
        let mut raw = BTreeMap::new();
        // SAFETY: open handle; the returned list is null or NULL-terminated and owned by the
        // handle, which stays open while `strings` copies it (the contract of `strings`).
        for name in unsafe { strings(openslide_get_property_names(handle)) } {
            let cn = CString::new(name.clone()).unwrap_or_default();
            // SAFETY: open handle; `cn` is NUL-terminated and outlives the call. The result is
            // null for an unknown name, else a string owned by the handle.
            let v = unsafe { openslide_get_property_value(handle, cn.as_ptr()) };
            if !v.is_null() {
                raw.insert(
                    name,
                    // SAFETY: `v` is non-null and NUL-terminated, valid while the handle is open;
                    // it is copied into an owned String at once.
                    unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned(),
                );
            }
        }
        let num = |k: &str| raw.get(k).and_then(|v| v.parse::<f64>().ok());
        s.properties = Properties {
            vendor: raw.get("openslide.vendor").cloned().unwrap_or_default(),
            mpp: num("openslide.mpp-x")
                .zip(num("openslide.mpp-y"))
                .map(|(x, y)| [x, y]),
            objective_power: num("openslide.objective-power"),
            raw,
        };
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        // SAFETY: `self.handle` is open (struct invariant).
        let e = unsafe { openslide_get_error(self.handle) };
        if e.is_null() {
            return Ok(());
        }
        // SAFETY: `e` is non-null and points to the handle's NUL-terminated error message,
        // valid while the handle is open; it is copied at once.
        let msg = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
        Err(DataError::new(
            ErrorKind::Malformed,
            &self.path,
            format!("OpenSlide: {msg}"),
        ))
    }

    /// Premultiplied ARGB → RGB; transparent pixels (outside the slide) become black, as
    /// PIL's `convert("RGB")` makes them in CLAM.
    fn to_rgb(buf: &[u32], w: u32, h: u32) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for (px, &argb) in img.pixels_mut().zip(buf) {
            let a = (argb >> 24) & 0xff;
            let un = |c: u32| (c * 255 + a / 2).checked_div(a).unwrap_or(0).min(255) as u8;
            px.0 = [
                un((argb >> 16) & 0xff),
                un((argb >> 8) & 0xff),
                un(argb & 0xff),
            ];
        }
        img
    }
}

impl Drop for OpenSlide {
    fn drop(&mut self) {
        // SAFETY: the handle is non-null and open (struct invariant), and `drop` runs once, so it
        // is closed exactly once and never used afterwards.
        unsafe { openslide_close(self.handle) };
    }
}

impl SlideReader for OpenSlide {
    fn path(&self) -> &Path {
        &self.path
    }

    fn levels(&self) -> &[Level] {
        &self.levels
    }

    fn properties(&self) -> &Properties {
        &self.properties
    }

    fn read_checked(&self, x0: i64, y0: i64, level: usize, w: u32, h: u32) -> Result<RgbImage> {
        let mut buf = vec![0u32; w as usize * h as usize];
        // SAFETY: open handle; `buf` holds exactly `w × h` u32 (ARGB) values, what libopenslide
        // writes for a `w × h` region, and is not otherwise borrowed during the call. `w` and `h`
        // are non-negative and bounded by `read_region`'s pixel limit, and `level` is below the
        // level count (checked by `read_region`); an out-of-slide region reads as transparent.
        unsafe {
            openslide_read_region(
                self.handle,
                buf.as_mut_ptr(),
                x0,
                y0,
                level as i32,
                w as i64,
                h as i64,
            )
        };
        self.check()?;
        Ok(Self::to_rgb(&buf, w, h))
    }

    fn associated_names(&self) -> Vec<String> {
        // SAFETY: open handle; the list is null or NULL-terminated and owned by the handle, which
        // stays open while `strings` copies it (`self` is borrowed).
        unsafe { strings(openslide_get_associated_image_names(self.handle)) }
    }

    fn read_associated(&self, name: &str) -> Result<RgbImage> {
        if !self.associated_names().iter().any(|n| n == name) {
            return Err(DataError::new(
                ErrorKind::Missing,
                &self.path,
                format!("no associated image '{name}'"),
            ));
        }
        let cn = CString::new(name).unwrap_or_default();
        let (mut w, mut h) = (0i64, 0i64);
        // SAFETY: open handle; `cn` is NUL-terminated and outlives the call; `w` and `h` are
        // valid `i64` locals (set to -1 on error, which `check` then reports).
        unsafe {
            openslide_get_associated_image_dimensions(self.handle, cn.as_ptr(), &mut w, &mut h)
        };
        self.check()?;
        let (w, h) = (w.max(0) as u32, h.max(0) as u32);
        let mut buf = vec![0u32; w as usize * h as usize];
        // SAFETY: open handle, not in an error state (checked just above); `cn` names an existing
        // associated image (checked at the start), and `buf` holds exactly the `w × h` u32 values
        // libopenslide writes for it — the dimensions it reported for that same name.
        unsafe { openslide_read_associated_image(self.handle, cn.as_ptr(), buf.as_mut_ptr()) };
        self.check()?;
        Ok(Self::to_rgb(&buf, w, h))
    }
}
