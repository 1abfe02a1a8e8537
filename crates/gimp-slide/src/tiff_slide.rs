//! Tiled TIFF and Aperio SVS, in pure Rust on the `tiff` crate (which decodes JPEG tiles with
//! the file's shared `JPEGTables`, Aperio's RGB-coded JPEG, LZW, deflate and predictors); Aperio's
//! JPEG 2000 tiles (compressions 33003 and 33005) are read raw and decoded by [`crate::jpeg2000`].
//!
//! Which pages are the pyramid: page 0 and every later *tiled* page with level 0's aspect ratio
//! and a smaller width. Aperio's stripped pages are its associated images: the first one is the
//! thumbnail, the others are named by their description (`label`, `macro`). A small stripped
//! (untiled) TIFF is read as a one-level slide — the case OpenSlide refuses
//! (openslide-python#153).

use crate::jpeg2000;
use crate::slide::{Level, Properties, SlideReader};
use gimp_io::{DataError, ErrorKind, Result};
use image::RgbImage;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tiff::decoder::{ChunkType, Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

/// Decoded tiles kept in memory (a 240–512 px RGB tile is 0.2–0.8 MB).
const TILE_CACHE: usize = 192;

#[derive(Debug, Clone)]
struct Page {
    ifd: usize,
    width: u32,
    height: u32,
    tiled: bool,
    chunk: (u32, u32),
    description: String,
    /// Aperio's JPEG 2000 flavour of the page's tiles, which the `tiff` crate cannot decode.
    jpeg2000: Option<jpeg2000::Components>,
}

/// Aperio's JPEG 2000 compressions: 33003 codes YCbCr without a colour transform, 33005 RGB
/// with the codestream's transform.
fn aperio_jpeg2000(compression: u32) -> Option<jpeg2000::Components> {
    match compression {
        33003 => Some(jpeg2000::Components::YCbCr),
        33005 => Some(jpeg2000::Components::Rgb),
        _ => None,
    }
}

struct Tile {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

/// A chunk as read under the lock: decoded by the `tiff` crate, or JPEG 2000 bytes to decode.
enum Fetched {
    Decoded(Tile),
    Jpeg2000(Vec<u8>, jpeg2000::Components),
}

struct State {
    decoder: Decoder<BufReader<File>>,
    current_ifd: usize,
    cache: HashMap<(usize, u32), Arc<Tile>>,
    order: VecDeque<(usize, u32)>,
    /// For JPEG 2000 pages: the file and its length, opened on first use, and each page's tile offsets and
    /// byte counts.
    raw: Option<(File, u64)>,
    raw_index: HashMap<usize, (Vec<u64>, Vec<u64>)>,
}

pub struct TiffSlide {
    path: PathBuf,
    levels: Vec<Level>,
    level_pages: Vec<Page>,
    associated: Vec<(String, Page)>,
    properties: Properties,
    state: Mutex<State>,
}

fn tiff_err(path: &Path, what: &str, e: impl std::fmt::Display) -> DataError {
    let msg = e.to_string();
    let kind = if msg.contains("nsupported") {
        ErrorKind::Unsupported
    } else if msg.contains("imit") {
        ErrorKind::TooLarge
    } else {
        ErrorKind::Malformed
    };
    DataError::new(kind, path, format!("{what}: {msg}"))
}

/// Runs a `tiff` call, turning a panic inside the crate (it has a few `expect`s on malformed
/// files) into an error naming the file.
fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match gimp_io::guard::catch_quietly(f) {
        Ok(r) => r,
        Err(_) => Err(DataError::malformed(
            path,
            format!("{what}: the TIFF structure is inconsistent"),
        )),
    }
}

fn limits() -> Limits {
    let mut l = Limits::default();
    // Tile offset tables of a 100k × 100k slide are a few MB; the default (1 MB) refuses them.
    l.ifd_value_size = 256 << 20;
    l.decoding_buffer_size = 512 << 20;
    l.intermediate_buffer_size = 512 << 20;
    l
}

/// A RATIONAL (or floating-point) tag as a number.
fn rational(dec: &mut Decoder<BufReader<File>>, tag: Tag) -> Option<f64> {
    use tiff::decoder::ifd::Value;
    match dec.find_tag(tag).ok()?? {
        Value::Rational(n, d) if d != 0 => Some(n as f64 / d as f64),
        Value::RationalBig(n, d) if d != 0 => Some(n as f64 / d as f64),
        Value::SRational(n, d) if d != 0 => Some(n as f64 / d as f64),
        Value::Float(v) => Some(v as f64),
        Value::Double(v) => Some(v),
        Value::List(v) => match v.first()? {
            Value::Rational(n, d) if *d != 0 => Some(*n as f64 / *d as f64),
            _ => None,
        },
        _ => None,
    }
}

/// `key = value` fields of an Aperio `ImageDescription` (`…|AppMag = 20|MPP = 0.4990|…`).
fn aperio_fields(description: &str) -> BTreeMap<String, String> {
    description
        .split('|')
        .skip(1)
        .filter_map(|f| {
            let (k, v) = f.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

impl TiffSlide {
    pub fn open(path: &Path) -> Result<Self> {
        guarded(path, "reading the TIFF directory", || {
            Self::open_inner(path)
        })
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut dec = Decoder::new(BufReader::new(file))
            .map_err(|e| tiff_err(path, "not a readable TIFF", e))?
            .with_limits(limits());
        let mut pages = Vec::new();
        let mut resolution = None;
        for ifd in 0.. {
            let (width, height) = dec
                .dimensions()
                .map_err(|e| tiff_err(path, &format!("page {ifd}"), e))?;
            let tiled = dec.get_chunk_type() == ChunkType::Tile;
            let chunk = dec.chunk_dimensions();
            let description = dec
                .get_tag_ascii_string(Tag::ImageDescription)
                .unwrap_or_default();
            if ifd == 0 {
                let x = rational(&mut dec, Tag::XResolution);
                let y = rational(&mut dec, Tag::YResolution);
                let unit = dec.get_tag_u32(Tag::ResolutionUnit).unwrap_or(2);
                resolution = x.zip(y).map(|(x, y)| (x, y, unit));
            }
            let compression = dec.get_tag_u32(Tag::Compression).unwrap_or(1);
            pages.push(Page {
                ifd,
                width,
                height,
                tiled,
                chunk,
                description,
                jpeg2000: aperio_jpeg2000(compression),
            });
            // Associated pages of some files are damaged or use codecs we do not decode; the
            // pyramid we already have is still usable, so listing stops there.
            if !dec.more_images() || ifd >= 255 || dec.next_image().is_err() {
                break;
            }
        }
        let first = pages[0].clone();
        let aperio = first.description.starts_with("Aperio");
        let aspect = first.width as f64 / first.height.max(1) as f64;
        let mut level_pages = vec![first.clone()];
        let mut associated = Vec::new();
        for p in pages.iter().skip(1) {
            let same_aspect =
                ((p.width as f64 / p.height.max(1) as f64) / aspect - 1.0).abs() < 0.02;
            if p.tiled && same_aspect && p.width < level_pages.last().map_or(0, |l| l.width) {
                level_pages.push(p.clone());
            } else if aperio {
                let d = p.description.to_ascii_lowercase();
                let name = if d.contains("label") {
                    "label"
                } else if d.contains("macro") {
                    "macro"
                } else if !associated.iter().any(|(n, _)| n == "thumbnail") {
                    "thumbnail"
                } else {
                    continue;
                };
                associated.push((name.to_string(), p.clone()));
            }
        }
        let levels = level_pages
            .iter()
            .map(|p| Level {
                width: p.width as u64,
                height: p.height as u64,
                downsample: 0.5
                    * (first.width as f64 / p.width as f64 + first.height as f64 / p.height as f64),
            })
            .collect();
        let mut properties = Properties {
            vendor: if aperio { "aperio" } else { "generic-tiff" }.to_string(),
            ..Default::default()
        };
        if aperio {
            let fields = aperio_fields(&first.description);
            let num = |k: &str| fields.get(k).and_then(|v| v.parse::<f64>().ok());
            properties.mpp = num("MPP").filter(|m| *m > 0.0).map(|m| [m, m]);
            properties.objective_power = num("AppMag");
            properties.raw = fields
                .into_iter()
                .map(|(k, v)| (format!("aperio.{k}"), v))
                .collect();
        } else if let Some((x, y, unit)) = resolution {
            // Pixels per centimetre (3) or inch (2) → microns per pixel. Files written without a
            // real calibration say 72 dpi (353 µm): only plausible microscope pixels are kept.
            let per_unit = match unit {
                3 => 10_000.0,
                2 => 25_400.0,
                _ => f64::NAN,
            };
            let (mx, my) = (per_unit / x, per_unit / y);
            if mx.is_finite() && (0.05..=20.0).contains(&mx) && my.is_finite() {
                properties.mpp = Some([mx, my]);
            }
            properties
                .raw
                .insert("tiff.XResolution".into(), x.to_string());
            properties
                .raw
                .insert("tiff.YResolution".into(), y.to_string());
            properties
                .raw
                .insert("tiff.ResolutionUnit".into(), unit.to_string());
        }
        if !first.description.is_empty() {
            properties
                .raw
                .insert("tiff.ImageDescription".into(), first.description.clone());
        }
        if !first.tiled && (first.width as u64) * (first.height as u64) > 1 << 28 {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!(
                    "level 0 is a {}×{} stripped (untiled) image; slides this large must be tiled \
                     (convert with `vips tiffsave --tile --pyramid` or `bfconvert -tilex 256`)",
                    first.width, first.height
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            levels,
            level_pages,
            associated,
            properties,
            state: Mutex::new(State {
                decoder: dec,
                current_ifd: usize::MAX,
                cache: HashMap::new(),
                order: VecDeque::new(),
                raw: None,
                raw_index: HashMap::new(),
            }),
        })
    }

    /// Decodes chunk `index` of `page` to RGB (cached).
    fn chunk(&self, page: &Page, index: u32) -> Result<Arc<Tile>> {
        let lock = || {
            self.state.lock().map_err(|_| {
                DataError::malformed(&self.path, "reader poisoned by an earlier panic")
            })
        };
        let mut st = lock()?;
        if let Some(t) = st.cache.get(&(page.ifd, index)) {
            return Ok(t.clone());
        }
        let path = self.path.clone();
        let what = format!("page {} chunk {index}", page.ifd);
        let tile = guarded(&path, &what, || {
            if st.current_ifd != page.ifd {
                st.decoder
                    .seek_to_image(page.ifd)
                    .map_err(|e| tiff_err(&path, &what, e))?;
                st.current_ifd = page.ifd;
            }
            if let Some(components) = page.jpeg2000 {
                let bytes = raw_chunk(&mut st, &path, &what, page, index)?;
                return Ok(Fetched::Jpeg2000(bytes, components));
            }
            let (w, h) = st.decoder.chunk_data_dimensions(index);
            let data = st
                .decoder
                .read_chunk(index)
                .map_err(|e| tiff_err(&path, &what, e))?;
            to_rgb(&path, &what, data, w, h).map(Fetched::Decoded)
        })?;
        let tile = match tile {
            Fetched::Decoded(tile) => tile,
            // JPEG 2000 tiles (slow to decode) are decoded outside the lock, so the threads of
            // feature extraction decode in parallel.
            Fetched::Jpeg2000(bytes, components) => {
                drop(st);
                let decoded = jpeg2000::decode(&bytes, components, Some(page.chunk))
                    .map_err(|e| DataError::malformed(&path, format!("{what}: {e}")))?;
                st = lock()?;
                Tile {
                    width: decoded.width,
                    height: decoded.height,
                    rgb: decoded.rgb,
                }
            }
        };
        let tile = Arc::new(tile);
        st.cache.insert((page.ifd, index), tile.clone());
        st.order.push_back((page.ifd, index));
        while st.order.len() > TILE_CACHE {
            if let Some(old) = st.order.pop_front() {
                st.cache.remove(&old);
            }
        }
        Ok(tile)
    }

    /// Pixels `[x, x+w) × [y, y+h)` of a page in its own coordinates; outside is black.
    fn read_page(&self, page: &Page, x: i64, y: i64, w: u32, h: u32) -> Result<RgbImage> {
        let mut out = RgbImage::new(w, h);
        let (cw, ch) = (page.chunk.0.max(1) as i64, page.chunk.1.max(1) as i64);
        let across = (page.width as i64 + cw - 1) / cw;
        let x_lo = x.max(0);
        let y_lo = y.max(0);
        let x_hi = (x + w as i64).min(page.width as i64);
        let y_hi = (y + h as i64).min(page.height as i64);
        if x_lo >= x_hi || y_lo >= y_hi {
            return Ok(out);
        }
        for ty in y_lo / ch..=(y_hi - 1) / ch {
            for tx in x_lo / cw..=(x_hi - 1) / cw {
                let tile = self.chunk(page, (ty * across + tx) as u32)?;
                let (ox, oy) = (tx * cw, ty * ch);
                let sx0 = x_lo.max(ox);
                let sx1 = x_hi.min(ox + tile.width as i64);
                let sy0 = y_lo.max(oy);
                let sy1 = y_hi.min(oy + tile.height as i64);
                if sx0 >= sx1 {
                    continue;
                }
                let n = ((sx1 - sx0) * 3) as usize;
                for sy in sy0..sy1 {
                    let src = (((sy - oy) * tile.width as i64 + (sx0 - ox)) * 3) as usize;
                    let dst = (((sy - y) * w as i64 + (sx0 - x)) * 3) as usize;
                    out.as_mut()[dst..dst + n].copy_from_slice(&tile.rgb[src..src + n]);
                }
            }
        }
        Ok(out)
    }
}

/// The stored bytes of chunk `index` of `page` (the decoder is on `page`'s directory).
fn raw_chunk(st: &mut State, path: &Path, what: &str, page: &Page, index: u32) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    if !st.raw_index.contains_key(&page.ifd) {
        let (offsets, counts) = if page.tiled {
            (Tag::TileOffsets, Tag::TileByteCounts)
        } else {
            (Tag::StripOffsets, Tag::StripByteCounts)
        };
        let o = st
            .decoder
            .get_tag_u64_vec(offsets)
            .map_err(|e| tiff_err(path, &format!("{what}: {offsets:?}"), e))?;
        let c = st
            .decoder
            .get_tag_u64_vec(counts)
            .map_err(|e| tiff_err(path, &format!("{what}: {counts:?}"), e))?;
        st.raw_index.insert(page.ifd, (o, c));
    }
    let (offsets, counts) = &st.raw_index[&page.ifd];
    let (Some(&offset), Some(&count)) = (offsets.get(index as usize), counts.get(index as usize))
    else {
        return Err(DataError::malformed(
            path,
            format!(
                "{what}: the page lists {} tile offsets",
                offsets.len().min(counts.len())
            ),
        ));
    };
    let (file, len) = match &mut st.raw {
        Some(open) => open,
        None => {
            let f = File::open(path).map_err(|e| DataError::io(path, e))?;
            let len = f.metadata().map_err(|e| DataError::io(path, e))?.len();
            st.raw.insert((f, len))
        }
    };
    let len = *len;
    if count == 0 || offset.checked_add(count).is_none_or(|end| end > len) {
        return Err(DataError::malformed(
            path,
            format!("{what}: {count} bytes at offset {offset} are not within the {len}-byte file"),
        ));
    }
    let mut bytes = vec![0; count as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| DataError::io(path, e))?;
    Ok(bytes)
}

/// Samples of any 8/16-bit grey, grey+alpha, RGB or RGBA chunk → RGB bytes.
fn to_rgb(path: &Path, what: &str, data: DecodingResult, w: u32, h: u32) -> Result<Tile> {
    let bytes: Vec<u8> = match data {
        DecodingResult::U8(v) => v,
        DecodingResult::U16(v) => v.into_iter().map(|s| (s >> 8) as u8).collect(),
        _ => {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!("{what}: only 8- and 16-bit unsigned samples are supported"),
            ))
        }
    };
    let px = (w as usize) * (h as usize);
    let spp = bytes.len().checked_div(px).unwrap_or(0);
    if px == 0 || bytes.len() != px * spp || !(1..=4).contains(&spp) {
        return Err(DataError::malformed(
            path,
            format!(
                "{what}: {} bytes for a {w}×{h} chunk is not 1–4 samples per pixel",
                bytes.len()
            ),
        ));
    }
    let rgb = if spp == 3 {
        bytes
    } else {
        let mut rgb = Vec::with_capacity(px * 3);
        for p in bytes.chunks_exact(spp) {
            match spp {
                1 | 2 => rgb.extend_from_slice(&[p[0], p[0], p[0]]),
                _ => rgb.extend_from_slice(&p[..3]),
            }
        }
        rgb
    };
    Ok(Tile {
        width: w,
        height: h,
        rgb,
    })
}

impl SlideReader for TiffSlide {
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
        let page = &self.level_pages[level];
        let ds = self.levels[level].downsample;
        let x = (x0 as f64 / ds).floor() as i64;
        let y = (y0 as f64 / ds).floor() as i64;
        self.read_page(page, x, y, w, h)
    }

    fn associated_names(&self) -> Vec<String> {
        self.associated.iter().map(|(n, _)| n.clone()).collect()
    }

    fn read_associated(&self, name: &str) -> Result<RgbImage> {
        let Some((_, page)) = self.associated.iter().find(|(n, _)| n == name) else {
            return Err(DataError::new(
                ErrorKind::Missing,
                &self.path,
                format!(
                    "no associated image '{name}' (has: {})",
                    self.associated_names().join(", ")
                ),
            ));
        };
        let page = page.clone();
        self.read_page(&page, 0, 0, page.width, page.height)
    }
}
