//! Tiled TIFF and Aperio SVS on the `tiff` crate (pages, tags, LZW, deflate and predictors);
//! JPEG tiles and strips are read raw and decoded by libjpeg-turbo's code ([`crate::jpeg`]) with
//! the file's shared `JPEGTables` and its photometric interpretation, as OpenSlide does, so the
//! pixels are OpenSlide's to the bit. Those chunks are read with positioned reads and decoded on
//! the calling thread, outside the `tiff` decoder's lock (which also re-reads a page's tables
//! whenever another page was read last), so the tiles of a 40× slide decode in parallel; and a
//! tile server can hand a stored YCbCr tile out as it is ([`SlideReader::stored_jpeg_tile`]).
//!
//! Which pages are the pyramid: page 0 and every later *tiled* page with level 0's aspect ratio
//! and a smaller width. Aperio's stripped pages are its associated images: the first one is the
//! thumbnail, the others are named by their description (`label`, `macro`). A small stripped
//! (untiled) TIFF is read as a one-level slide — the case OpenSlide refuses
//! (openslide-python#153).
//!
//! OME-TIFF (QuPath's, bfconvert's and tifffile's pyramids) keeps the reduced levels of page 0
//! in its `SubIFDs` tag, outside the chain of pages: they are read by a decoder of their own
//! that sees the file through a header pointing at the sub-directory ([`HeaderOverlay`]).
//! Microns per pixel and the objective come from the OME-XML (`PhysicalSizeX`, `…Unit`,
//! `NominalMagnification`).

use crate::jpeg::{self, JpegColour};
use crate::slide::{Level, Properties, SlideReader};
use gimp_io::{DataError, ErrorKind, Result};
use image::RgbImage;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tiff::decoder::{ChunkType, Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

/// Decoded tiles kept in memory (a 240–512 px RGB tile is 0.2–0.8 MB).
const TILE_CACHE: usize = 192;

#[derive(Debug, Clone)]
struct Page {
    ifd: usize,
    /// For a level kept in page 0's `SubIFDs`: which one (its decoder in [`State::subs`]).
    sub: Option<usize>,
    width: u32,
    height: u32,
    tiled: bool,
    chunk: (u32, u32),
    description: String,
    /// Where the compressed chunks are, when they are JPEG (compression 7).
    jpeg: Option<Arc<JpegChunks>>,
}

/// A JPEG page's chunks, read raw and decoded by [`crate::jpeg`].
#[derive(Debug)]
struct JpegChunks {
    offsets: Vec<u64>,
    byte_counts: Vec<u64>,
    /// The `JPEGTables` tag: quantisation and Huffman tables shared by every chunk.
    tables: Option<Vec<u8>>,
    colour: JpegColour,
}

/// The JPEG layout of the decoder's current page, or `None` when its chunks are not JPEG
/// (compression 7) with 8-bit samples in one plane — those the `tiff` crate decodes.
fn jpeg_chunks(path: &Path, dec: &mut TiffDecoder, ifd: usize) -> Result<Option<JpegChunks>> {
    let tag = |dec: &mut TiffDecoder, t: Tag| dec.find_tag_unsigned::<u32>(t).ok().flatten();
    // BitsPerSample has one value per sample (8, 8, 8).
    let bits = dec.get_tag_u32_vec(Tag::BitsPerSample).unwrap_or_default();
    if tag(dec, Tag::Compression) != Some(7)
        || bits.is_empty()
        || bits.iter().any(|&b| b != 8)
        || tag(dec, Tag::PlanarConfiguration).unwrap_or(1) != 1
    {
        return Ok(None);
    }
    let (offsets_tag, counts_tag) = match dec.get_chunk_type() {
        ChunkType::Tile => (Tag::TileOffsets, Tag::TileByteCounts),
        ChunkType::Strip => (Tag::StripOffsets, Tag::StripByteCounts),
    };
    let what = format!("page {ifd}");
    let offsets = dec
        .get_tag_u64_vec(offsets_tag)
        .map_err(|e| tiff_err(path, &format!("{what}: {offsets_tag:?}"), e))?;
    let byte_counts = dec
        .get_tag_u64_vec(counts_tag)
        .map_err(|e| tiff_err(path, &format!("{what}: {counts_tag:?}"), e))?;
    if offsets.len() != byte_counts.len() {
        return Err(DataError::malformed(
            path,
            format!(
                "{what}: {} chunk offsets but {} byte counts",
                offsets.len(),
                byte_counts.len()
            ),
        ));
    }
    // YCbCr (6) is converted to RGB; RGB (2, Aperio's) and anything else with three components
    // is taken as stored, as OpenSlide does.
    let colour = match tag(dec, Tag::PhotometricInterpretation) {
        Some(6) => JpegColour::YCbCr,
        _ => JpegColour::Rgb,
    };
    Ok(Some(JpegChunks {
        offsets,
        byte_counts,
        tables: dec.get_tag_u8_vec(Tag::JPEGTables).ok(),
        colour,
    }))
}

struct Tile {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Page {
    /// The pixels chunk `index` covers: a whole tile or strip, or less at the right and bottom
    /// edges (what the `tiff` crate's `chunk_data_dimensions` says, without its decoder).
    fn chunk_size(&self, index: u32) -> (u32, u32) {
        let (cw, ch) = (self.chunk.0.max(1), self.chunk.1.max(1));
        let across = self.width.div_ceil(cw).max(1);
        let (col, row) = (index % across, index / across);
        (
            cw.min(self.width.saturating_sub(col * cw)),
            ch.min(self.height.saturating_sub(row * ch)),
        )
    }

    /// A key unique among the pages of a file, for the tile cache.
    fn key(&self) -> usize {
        match self.sub {
            Some(k) => (1 << 40) + k,
            None => self.ifd,
        }
    }
}

/// The file as the `tiff` crate reads it, optionally with its first bytes replaced by a header
/// whose first-directory offset points at a sub-directory: the crate follows only the chain of
/// pages, and this makes a `SubIFDs` entry the first page of a decoder of its own.
struct HeaderOverlay {
    inner: BufReader<File>,
    header: Vec<u8>,
    pos: u64,
    inner_pos: u64,
}

impl HeaderOverlay {
    fn new(file: File, first_ifd: Option<(u64, bool, bool)>) -> Self {
        // (offset, big-endian, BigTIFF)
        let header = match first_ifd {
            None => Vec::new(),
            Some((off, be, big)) => {
                let mut h = if be { b"MM".to_vec() } else { b"II".to_vec() };
                let u16b = |v: u16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
                if big {
                    h.extend(u16b(43));
                    h.extend(u16b(8));
                    h.extend(u16b(0));
                    h.extend(if be {
                        off.to_be_bytes()
                    } else {
                        off.to_le_bytes()
                    });
                } else {
                    h.extend(u16b(42));
                    let o = off as u32;
                    h.extend(if be { o.to_be_bytes() } else { o.to_le_bytes() });
                }
                h
            }
        };
        Self {
            inner: BufReader::new(file),
            header,
            pos: 0,
            inner_pos: 0,
        }
    }
}

impl Read for HeaderOverlay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let hl = self.header.len() as u64;
        if self.pos < hl {
            let n = buf.len().min((hl - self.pos) as usize);
            buf[..n].copy_from_slice(&self.header[self.pos as usize..self.pos as usize + n]);
            self.pos += n as u64;
            return Ok(n);
        }
        if self.inner_pos != self.pos {
            self.inner.seek(SeekFrom::Start(self.pos))?;
            self.inner_pos = self.pos;
        }
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        self.inner_pos = self.pos;
        Ok(n)
    }
}

impl Seek for HeaderOverlay {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => {
                let len = self.inner.get_ref().metadata()?.len();
                len.checked_add_signed(d)
            }
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

type TiffDecoder = Decoder<HeaderOverlay>;

struct State {
    decoder: TiffDecoder,
    current_ifd: usize,
    /// One decoder per `SubIFDs` level, each on its one page.
    subs: Vec<TiffDecoder>,
    cache: HashMap<(usize, u32), Arc<Tile>>,
    order: VecDeque<(usize, u32)>,
}

pub struct TiffSlide {
    path: PathBuf,
    /// The file for raw chunks, read with positioned reads (no shared position, no lock).
    file: File,
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
fn rational(dec: &mut TiffDecoder, tag: Tag) -> Option<f64> {
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

/// `TAG="value"` of the first element `<ELEMENT …>` of an XML text.
fn xml_attr<'a>(xml: &'a str, element: &str, attr: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{element} "))?;
    let end = start + xml[start..].find('>')?;
    let tag = &xml[start..end];
    let key = format!(" {attr}=\"");
    let at = tag.find(&key)? + key.len();
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// Microns per pixel (x, y) and objective power from OME-XML; sizes in other units are
/// converted, unknown units ignored.
fn ome_scale(xml: &str) -> (Option<[f64; 2]>, Option<f64>) {
    let size = |axis: &str| -> Option<f64> {
        let v: f64 = xml_attr(xml, "Pixels", &format!("PhysicalSize{axis}"))?
            .parse()
            .ok()?;
        let unit = xml_attr(xml, "Pixels", &format!("PhysicalSize{axis}Unit")).unwrap_or("µm");
        let per_um = match unit {
            "\u{b5}m" | "\u{3bc}m" | "um" | "micron" => 1.0,
            "nm" => 1e-3,
            "mm" => 1e3,
            "cm" => 1e4,
            _ => return None,
        };
        Some(v * per_um).filter(|m| m.is_finite() && *m > 0.0)
    };
    let mpp = size("X").zip(size("Y")).map(|(x, y)| [x, y]);
    let mag = xml_attr(xml, "Objective", "NominalMagnification")
        .and_then(|v| v.parse().ok())
        .filter(|m: &f64| *m > 0.0);
    (mpp, mag)
}

/// The offsets in page 0's `SubIFDs` tag (330), if any.
fn sub_ifd_offsets(dec: &mut TiffDecoder) -> Vec<u64> {
    use tiff::decoder::ifd::Value;
    let one = |v: &Value| match *v {
        Value::Ifd(o) | Value::Unsigned(o) => Some(o as u64),
        Value::IfdBig(o) | Value::UnsignedBig(o) => Some(o),
        _ => None,
    };
    match dec.find_tag(Tag::Unknown(330)) {
        Ok(Some(Value::List(v))) => v.iter().filter_map(one).collect(),
        Ok(Some(v)) => one(&v).into_iter().collect(),
        _ => Vec::new(),
    }
}

impl TiffSlide {
    pub fn open(path: &Path) -> Result<Self> {
        guarded(path, "reading the TIFF directory", || {
            Self::open_inner(path)
        })
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut head = [0u8; 4];
        (&file)
            .read_exact(&mut head)
            .map_err(|e| DataError::io(path, e))?;
        let (big_endian, bigtiff) = (head[0] == b'M', head[2] == 43 || head[3] == 43);
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut dec = Decoder::new(HeaderOverlay::new(file, None))
            .map_err(|e| tiff_err(path, "not a readable TIFF", e))?
            .with_limits(limits());
        let mut pages = Vec::new();
        let mut resolution = None;
        let mut sub_offsets = Vec::new();
        for ifd in 0.. {
            let (width, height) = dec
                .dimensions()
                .map_err(|e| tiff_err(path, &format!("page {ifd}"), e))?;
            let tiled = dec.get_chunk_type() == ChunkType::Tile;
            let chunk = dec.chunk_dimensions();
            let description = dec
                .get_tag_ascii_string(Tag::ImageDescription)
                .unwrap_or_default();
            let jpeg = jpeg_chunks(path, &mut dec, ifd)?.map(Arc::new);
            if ifd == 0 {
                let x = rational(&mut dec, Tag::XResolution);
                let y = rational(&mut dec, Tag::YResolution);
                let unit = dec.get_tag_u32(Tag::ResolutionUnit).unwrap_or(2);
                resolution = x.zip(y).map(|(x, y)| (x, y, unit));
                sub_offsets = sub_ifd_offsets(&mut dec);
            }
            pages.push(Page {
                ifd,
                sub: None,
                width,
                height,
                tiled,
                chunk,
                description,
                jpeg,
            });
            // Associated pages of some files are damaged or use codecs we do not decode; the
            // pyramid we already have is still usable, so listing stops there.
            if !dec.more_images() || ifd >= 255 || dec.next_image().is_err() {
                break;
            }
        }
        // Page 0's SubIFDs (OME-TIFF's reduced levels), each through a decoder of its own.
        let mut subs = Vec::new();
        let mut sub_pages = Vec::new();
        for (k, &off) in sub_offsets.iter().enumerate() {
            let what = format!("SubIFD {k} of page 0");
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            let mut d = Decoder::new(HeaderOverlay::new(file, Some((off, big_endian, bigtiff))))
                .map_err(|e| tiff_err(path, &what, e))?
                .with_limits(limits());
            let (width, height) = d.dimensions().map_err(|e| tiff_err(path, &what, e))?;
            let jpeg = jpeg_chunks(path, &mut d, 0)?.map(Arc::new);
            sub_pages.push(Page {
                ifd: 0,
                sub: Some(k),
                width,
                height,
                tiled: d.get_chunk_type() == ChunkType::Tile,
                chunk: d.chunk_dimensions(),
                description: String::new(),
                jpeg,
            });
            subs.push(d);
        }
        let first = pages[0].clone();
        let aperio = first.description.starts_with("Aperio");
        let ome = first.description.contains("<OME");
        let aspect = first.width as f64 / first.height.max(1) as f64;
        let mut level_pages = vec![first.clone()];
        let mut associated = Vec::new();
        for p in sub_pages.iter().chain(pages.iter().skip(1)) {
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
        let vendor = if aperio {
            "aperio"
        } else if ome {
            "ome-tiff"
        } else {
            "generic-tiff"
        };
        let mut properties = Properties {
            vendor: vendor.to_string(),
            ..Default::default()
        };
        if ome {
            let (mpp, mag) = ome_scale(&first.description);
            properties.mpp = mpp;
            properties.objective_power = mag;
        } else if aperio {
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
            file: File::open(path).map_err(|e| DataError::io(path, e))?,
            levels,
            level_pages,
            associated,
            properties,
            state: Mutex::new(State {
                decoder: dec,
                current_ifd: usize::MAX,
                subs,
                cache: HashMap::new(),
                order: VecDeque::new(),
            }),
        })
    }

    /// Decodes chunk `index` of `page` to RGB (cached).
    fn chunk(&self, page: &Page, index: u32) -> Result<Arc<Tile>> {
        let key = (page.key(), index);
        let what = match page.sub {
            Some(k) => format!("SubIFD {k} of page 0, chunk {index}"),
            None => format!("page {} chunk {index}", page.ifd),
        };
        if let Some(j) = &page.jpeg {
            if let Some(t) = self.lock()?.cache.get(&key) {
                return Ok(t.clone());
            }
            // Read and decoded without the lock: other threads decode other tiles meanwhile.
            let (w, h) = page.chunk_size(index);
            let data = self.raw_chunk(&what, j, index)?;
            let tile = Arc::new(guarded(&self.path, &what, || {
                decode_jpeg_chunk(&self.path, &what, j, &data, w, h)
            })?);
            Self::keep(&mut *self.lock()?, key, tile.clone());
            return Ok(tile);
        }
        let mut st = self.lock()?;
        if let Some(t) = st.cache.get(&key) {
            return Ok(t.clone());
        }
        let path = self.path.clone();
        let tile = guarded(&path, &what, || {
            let dec = match page.sub {
                Some(k) => st.subs.get_mut(k).ok_or_else(|| {
                    DataError::malformed(&path, format!("{what}: no such sub-directory"))
                })?,
                None => {
                    if st.current_ifd != page.ifd {
                        st.decoder
                            .seek_to_image(page.ifd)
                            .map_err(|e| tiff_err(&path, &what, e))?;
                        st.current_ifd = page.ifd;
                    }
                    &mut st.decoder
                }
            };
            let (w, h) = dec.chunk_data_dimensions(index);
            let data = dec
                .read_chunk(index)
                .map_err(|e| tiff_err(&path, &what, e))?;
            to_rgb(&path, &what, data, w, h)
        })?;
        let tile = Arc::new(tile);
        Self::keep(&mut st, key, tile.clone());
        Ok(tile)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| DataError::malformed(&self.path, "reader poisoned by an earlier panic"))
    }

    /// Adds a decoded tile to the cache, dropping the oldest past [`TILE_CACHE`].
    fn keep(st: &mut State, key: (usize, u32), tile: Arc<Tile>) {
        if st.cache.insert(key, tile).is_some() {
            return; // another thread decoded it meanwhile: already in `order`
        }
        st.order.push_back(key);
        while st.order.len() > TILE_CACHE {
            if let Some(old) = st.order.pop_front() {
                st.cache.remove(&old);
            }
        }
    }

    /// The bytes of chunk `index` as the file stores them.
    fn raw_chunk(&self, what: &str, j: &JpegChunks, index: u32) -> Result<Vec<u8>> {
        let path = &self.path;
        let i = index as usize;
        let (Some(&offset), Some(&count)) = (j.offsets.get(i), j.byte_counts.get(i)) else {
            return Err(DataError::malformed(
                path,
                format!(
                    "{what}: no offset for chunk {index} ({} listed)",
                    j.offsets.len()
                ),
            ));
        };
        let len = self.file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if count == 0 || offset.checked_add(count).is_none_or(|end| end > len) || count > 1 << 30
        {
            return Err(DataError::malformed(
                path,
                format!(
                    "{what}: {count} bytes at offset {offset} are not inside the file ({len} bytes)"
                ),
            ));
        }
        read_at(&self.file, offset, count as usize).map_err(|e| DataError::io(path, e))
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

/// `len` bytes at `offset` of `file`, without moving a shared file position (so threads read
/// at once).
fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, offset)?;
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < len {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
    }
    Ok(buf)
}

/// Decodes a JPEG chunk read raw from the file; the chunk's `w × h` pixels (edge tiles are coded
/// at full tile size; the padding is cut off).
fn decode_jpeg_chunk(
    path: &Path,
    what: &str,
    j: &JpegChunks,
    data: &[u8],
    w: u32,
    h: u32,
) -> Result<Tile> {
    let d = jpeg::decode(j.tables.as_deref(), data, j.colour)
        .map_err(|e| DataError::malformed(path, format!("{what}: JPEG: {e}")))?;
    if d.width < w || d.height < h {
        return Err(DataError::malformed(
            path,
            format!(
                "{what}: the JPEG is {}×{} pixels, the chunk needs {w}×{h}",
                d.width, d.height
            ),
        ));
    }
    let c = d.channels;
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h as usize {
        let row = &d.pixels[y * d.width as usize * c..][..w as usize * c];
        if c == 3 {
            rgb.extend_from_slice(row);
        } else {
            row.iter().for_each(|&v| rgb.extend_from_slice(&[v, v, v]));
        }
    }
    Ok(Tile {
        width: w,
        height: h,
        rgb,
    })
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

    fn stored_jpeg_tile(
        &self,
        level: usize,
        tile: u32,
        col: u64,
        row: u64,
    ) -> Option<Result<Vec<u8>>> {
        let page = self.level_pages.get(level)?;
        let j = page.jpeg.as_ref()?;
        // Only YCbCr tiles show the right colours in any JPEG decoder (Aperio's RGB-coded
        // JPEG does not say it is RGB), and only whole tiles of the size asked.
        if j.colour != JpegColour::YCbCr || !page.tiled || page.chunk != (tile, tile) {
            return None;
        }
        let across = (page.width as u64).div_ceil(tile as u64);
        let down = (page.height as u64).div_ceil(tile as u64);
        if col >= across || row >= down {
            return None;
        }
        let index = (row * across + col) as u32;
        let what = format!("page {} tile {index}", page.ifd);
        Some(self.raw_chunk(&what, j, index).and_then(|data| {
            jpeg::complete_stream(j.tables.as_deref(), data)
                .map_err(|e| DataError::malformed(&self.path, format!("{what}: {e}")))
        }))
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
