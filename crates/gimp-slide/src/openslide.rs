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

pub struct OpenSlide {
    handle: *mut c_void,
    path: PathBuf,
    levels: Vec<Level>,
    properties: Properties,
}

// libopenslide handles are thread-safe (documented: "may be used from multiple threads").
unsafe impl Send for OpenSlide {}
unsafe impl Sync for OpenSlide {}

unsafe fn strings(list: *const *const c_char) -> Vec<String> {
    let mut out = Vec::new();
    if list.is_null() {
        return out;
    }
    let mut p = list;
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
        let n = unsafe { openslide_get_level_count(handle) };
        for l in 0..n {
            let (mut w, mut h) = (0i64, 0i64);
            unsafe { openslide_get_level_dimensions(handle, l, &mut w, &mut h) };
            let downsample = unsafe { openslide_get_level_downsample(handle, l) };
            s.levels.push(Level {
                width: w.max(0) as u64,
                height: h.max(0) as u64,
                downsample,
            });
        }
        let mut raw = BTreeMap::new();
        for name in unsafe { strings(openslide_get_property_names(handle)) } {
            let cn = CString::new(name.clone()).unwrap_or_default();
            let v = unsafe { openslide_get_property_value(handle, cn.as_ptr()) };
            if !v.is_null() {
                raw.insert(
                    name,
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
        let e = unsafe { openslide_get_error(self.handle) };
        if e.is_null() {
            return Ok(());
        }
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
        unsafe {
            openslide_get_associated_image_dimensions(self.handle, cn.as_ptr(), &mut w, &mut h)
        };
        let (w, h) = (w.max(0) as u32, h.max(0) as u32);
        let mut buf = vec![0u32; w as usize * h as usize];
        unsafe { openslide_read_associated_image(self.handle, cn.as_ptr(), buf.as_mut_ptr()) };
        self.check()?;
        Ok(Self::to_rgb(&buf, w, h))
    }
}
