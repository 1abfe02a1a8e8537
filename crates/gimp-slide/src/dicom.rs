//! DICOM whole-slide images (VL Whole Slide Microscopy, DICOM PS3.3 A.32.8), read with the
//! dicom-rs crates: a series is a folder of instances, one per pyramid level (`ImageType`
//! `VOLUME`) plus its label, overview and thumbnail images. Each instance is a grid of tiles
//! (frames): `TILED_FULL` frames fill the grid row by row; `TILED_SPARSE` frames are placed by
//! their Per-Frame Plane Position, and grid cells without one read as black (OpenSlide's
//! convention for missing tiles). Transfer syntaxes: JPEG baseline, JPEG 2000 (lossless and
//! lossy, decoded as OpenSlide does, [`crate::jpeg2000`]) and uncompressed (explicit or implicit
//! VR little endian). Microns per pixel come from the level-0 instance's Shared Functional Groups
//! Pixel Spacing (mm), the objective power from its Optical Path.
//!
//! Opening reads every instance's attributes up to the pixel data (the dicom-rs collector) and
//! the position of each frame in the file (dicom-rs's lazy parser finds where the pixel data
//! begins; from there the fragment items are walked, not read); frames are read on demand.

use crate::jpeg;
use crate::jpeg2000;
use crate::slide::{compose_tiles, Level, Properties, SlideReader, TileCache, TilePixels};
use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DicomCollector, InMemDicomObject};
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::stateful::decode::{StatefulDecode, StatefulDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use gimp_io::{DataError, ErrorKind, Result};
use image::RgbImage;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Decoded frames kept in memory (a 256–1024 px RGB frame is 0.2–3 MB).
const FRAME_CACHE: usize = 128;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const JPEG2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
const JPEG2000: &str = "1.2.840.10008.1.2.4.91";

/// Whether `path` is a DICOM file: `DICM` after the 128-byte preamble (PS3.10 7.1).
pub fn is_dicom_file(path: &Path) -> bool {
    let mut head = [0u8; 132];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head[128..] == b"DICM")
}

/// Whether `dir` holds a DICOM series (a file ending in `.dcm`, or one of its first files with
/// the DICOM magic): such a folder is one slide.
pub fn is_dicom_folder(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .any(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm")))
        || files.iter().take(4).any(|p| is_dicom_file(p))
}

/// How a frame's bytes become pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Codec {
    /// Uncompressed 8-bit samples: RGB (interleaved or planar) or MONOCHROME2.
    Native {
        samples: u16,
        planar: bool,
    },
    /// JPEG baseline; `rgb`: the components are RGB, not YCbCr (Photometric `RGB`).
    Jpeg {
        rgb: bool,
    },
    Jpeg2000,
}

/// One instance: a tiled image (a pyramid level or an associated image).
#[derive(Debug)]
struct Instance {
    file: PathBuf,
    width: u64,
    height: u64,
    tile_w: u32,
    tile_h: u32,
    tiles_across: u64,
    codec: Codec,
    /// File offset and length of each pixel data fragment (of each frame, when native).
    fragments: Vec<(u64, u64)>,
    /// Each frame's fragments: a range of `fragments`.
    frames: Vec<std::ops::Range<u32>>,
    /// Frame of each grid cell, row by row; `None`: no tile there (`TILED_SPARSE`).
    grid: Vec<Option<u32>>,
}

struct State {
    files: HashMap<usize, File>,
    cache: TileCache<(usize, u32)>,
}

pub struct DicomSlide {
    path: PathBuf,
    levels: Vec<Level>,
    /// Instances: the levels first (level k is instance k), then the associated images.
    instances: Vec<Instance>,
    associated: Vec<(String, usize)>,
    properties: Properties,
    state: Mutex<State>,
}

/// The attributes of one instance read up to its pixel data.
struct Header {
    file: PathBuf,
    transfer_syntax: String,
    dataset_start: u64,
    obj: InMemDicomObject,
}

fn missing(file: &Path, name: &str, tag: Tag) -> DataError {
    DataError::malformed(
        file,
        format!("attribute {name} {tag} is missing or not readable"),
    )
}

impl Header {
    fn read(file: &Path) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| {
            DataError::malformed(file, format!("not a readable DICOM file: {e}"))
        };
        let mut collector = DicomCollector::open_file(file).map_err(|e| bad(&e))?;
        let meta = collector.read_file_meta().map_err(|e| bad(&e))?;
        let transfer_syntax = meta
            .transfer_syntax()
            .trim_end_matches(['\0', ' '])
            .to_string();
        let sop_class = meta
            .media_storage_sop_class_uid()
            .trim_end_matches(['\0', ' '])
            .to_string();
        // Preamble, `DICM`, the group length element (12 bytes) and the rest of the group.
        let dataset_start = 128 + 4 + 12 + meta.information_group_length as u64;
        if sop_class != uids::VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                file,
                format!(
                    "MediaStorageSOPClassUID is {sop_class}, not VL Whole Slide Microscopy \
                     ({})",
                    uids::VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE
                ),
            ));
        }
        let mut obj = InMemDicomObject::new_empty();
        collector
            .read_dataset_up_to_pixeldata(&mut obj)
            .map_err(|e| bad(&e))?;
        Ok(Self {
            file: file.to_path_buf(),
            transfer_syntax,
            dataset_start,
            obj,
        })
    }

    fn str_opt(&self, tag: Tag) -> Option<String> {
        let e = self.obj.element_opt(tag).ok()??;
        Some(e.to_str().ok()?.trim_end_matches(['\0', ' ']).to_string())
    }

    fn str(&self, name: &str, tag: Tag) -> Result<String> {
        self.str_opt(tag)
            .ok_or_else(|| missing(&self.file, name, tag))
    }

    fn uint(&self, name: &str, tag: Tag) -> Result<u64> {
        self.obj
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u64>().ok())
            .ok_or_else(|| missing(&self.file, name, tag))
    }

    /// `ImageType`'s third value: `VOLUME`, `LABEL`, `OVERVIEW`, `THUMBNAIL`.
    fn flavor(&self) -> Result<String> {
        let e = self
            .obj
            .element(tags::IMAGE_TYPE)
            .map_err(|_| missing(&self.file, "ImageType", tags::IMAGE_TYPE))?;
        let values = e
            .to_multi_str()
            .map_err(|_| missing(&self.file, "ImageType", tags::IMAGE_TYPE))?;
        values.get(2).map(|v| v.trim().to_string()).ok_or_else(|| {
            DataError::malformed(
                &self.file,
                format!(
                    "attribute ImageType {} has {} values; 3 or more expected",
                    tags::IMAGE_TYPE,
                    values.len()
                ),
            )
        })
    }

    /// A value of the first item of nested sequences, e.g. Shared Functional Groups → Pixel
    /// Measures → Pixel Spacing.
    fn nested(&self, path: &[Tag], leaf: Tag) -> Option<&dicom_object::mem::InMemElement> {
        let mut obj = &self.obj;
        for seq in path {
            obj = obj.element_opt(*seq).ok()??.items()?.first()?;
        }
        obj.element_opt(leaf).ok()?
    }

    /// The codec of the transfer syntax and photometric interpretation (OpenSlide's accepted
    /// pairs), or an error naming both.
    fn codec(&self) -> Result<Codec> {
        let photometric = self.str(
            "PhotometricInterpretation",
            tags::PHOTOMETRIC_INTERPRETATION,
        )?;
        let samples = self.uint("SamplesPerPixel", tags::SAMPLES_PER_PIXEL)? as u16;
        let bits = self.uint("BitsAllocated", tags::BITS_ALLOCATED)?;
        if bits != 8 {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                &self.file,
                format!(
                    "BitsAllocated {} is {bits}; 8 expected",
                    tags::BITS_ALLOCATED
                ),
            ));
        }
        let ts = self.transfer_syntax.as_str();
        let codec = match ts {
            EXPLICIT_VR_LE | IMPLICIT_VR_LE => match (photometric.as_str(), samples) {
                ("RGB", 3) => Some(Codec::Native {
                    samples,
                    planar: self
                        .obj
                        .element_opt(tags::PLANAR_CONFIGURATION)
                        .ok()
                        .flatten()
                        .and_then(|e| e.to_int::<u16>().ok())
                        == Some(1),
                }),
                ("MONOCHROME2", 1) => Some(Codec::Native {
                    samples,
                    planar: false,
                }),
                _ => None,
            },
            JPEG_BASELINE => match photometric.as_str() {
                "YBR_FULL_422" | "YBR_FULL" => Some(Codec::Jpeg { rgb: false }),
                "RGB" => Some(Codec::Jpeg { rgb: true }),
                _ => None,
            },
            JPEG2000 if matches!(photometric.as_str(), "YBR_ICT" | "YBR_RCT" | "RGB") => {
                Some(Codec::Jpeg2000)
            }
            JPEG2000_LOSSLESS if matches!(photometric.as_str(), "YBR_RCT" | "RGB") => {
                Some(Codec::Jpeg2000)
            }
            JPEG2000 | JPEG2000_LOSSLESS => None,
            _ => {
                let name = TransferSyntaxRegistry
                    .get(ts)
                    .map(|t| t.name().to_string())
                    .unwrap_or_else(|| "unknown".into());
                return Err(DataError::new(
                    ErrorKind::Unsupported,
                    &self.file,
                    format!(
                        "TransferSyntaxUID (0002,0010) {ts} ({name}) is not read; supported: \
                         JPEG baseline, JPEG 2000, explicit/implicit VR little endian"
                    ),
                ));
            }
        };
        codec.ok_or_else(|| {
            DataError::new(
                ErrorKind::Unsupported,
                &self.file,
                format!(
                    "PhotometricInterpretation {} {photometric} with SamplesPerPixel {samples} \
                     is not supported for transfer syntax {ts}",
                    tags::PHOTOMETRIC_INTERPRETATION
                ),
            )
        })
    }

    fn instance(&self) -> Result<Instance> {
        let file = self.file.clone();
        if let Some(uid) = self.str_opt(tags::CONCATENATION_UID) {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                &file,
                format!(
                    "ConcatenationUID {} {uid}: instances split into concatenations are not read",
                    tags::CONCATENATION_UID
                ),
            ));
        }
        let codec = self.codec()?;
        let width = self.uint("TotalPixelMatrixColumns", tags::TOTAL_PIXEL_MATRIX_COLUMNS)?;
        let height = self.uint("TotalPixelMatrixRows", tags::TOTAL_PIXEL_MATRIX_ROWS)?;
        let tile_w = self.uint("Columns", tags::COLUMNS)?;
        let tile_h = self.uint("Rows", tags::ROWS)?;
        let n_frames = self
            .obj
            .element_opt(tags::NUMBER_OF_FRAMES)
            .ok()
            .flatten()
            .map_or(Ok(1), |e| e.to_int::<u64>())
            .map_err(|_| missing(&file, "NumberOfFrames", tags::NUMBER_OF_FRAMES))?;
        if width == 0
            || height == 0
            || !(1..=1 << 14).contains(&tile_w)
            || !(1..=1 << 14).contains(&tile_h)
        {
            return Err(DataError::malformed(
                &file,
                format!(
                    "a {width}×{height} image of {tile_w}×{tile_h} tiles \
                     (TotalPixelMatrixColumns/Rows, Columns/Rows) is not a tiled image"
                ),
            ));
        }
        let tiles_across = width.div_ceil(tile_w);
        let tiles_down = height.div_ceil(tile_h);
        let cells = tiles_across * tiles_down;
        if cells > 1 << 26 || n_frames > 1 << 26 {
            return Err(DataError::new(
                ErrorKind::TooLarge,
                &file,
                format!("{cells} tiles and {n_frames} frames are over the 67M limit"),
            ));
        }
        // Absent means TILED_SPARSE (PS3.3 C.7.6.17.1, as OpenSlide reads it).
        let full = self.str_opt(tags::DIMENSION_ORGANIZATION_TYPE).as_deref() == Some("TILED_FULL");
        let grid = if full {
            if n_frames < cells {
                return Err(DataError::malformed(
                    &file,
                    format!(
                        "TILED_FULL with NumberOfFrames {} {n_frames}, fewer than the \
                         {tiles_across}×{tiles_down} tiles of the image",
                        tags::NUMBER_OF_FRAMES
                    ),
                ));
            }
            // Further frames are other focal planes or optical paths; the first is read.
            (0..cells as u32).map(Some).collect()
        } else {
            self.sparse_grid(n_frames, tile_w, tile_h, tiles_across, tiles_down)?
        };
        let frame_bytes = match codec {
            Codec::Native { samples, .. } => Some(tile_w * tile_h * samples as u64),
            _ => None,
        };
        let (fragments, frames) = frame_positions(self, n_frames, frame_bytes)?;
        Ok(Instance {
            file,
            width,
            height,
            tile_w: tile_w as u32,
            tile_h: tile_h as u32,
            tiles_across,
            codec,
            fragments,
            frames,
            grid,
        })
    }

    /// `TILED_SPARSE`: each frame's cell from its Plane Position (Slide), 1-based pixel
    /// positions on the tile grid; the first frame at a cell is read there.
    fn sparse_grid(
        &self,
        n_frames: u64,
        tile_w: u64,
        tile_h: u64,
        across: u64,
        down: u64,
    ) -> Result<Vec<Option<u32>>> {
        let seq = tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE;
        let items = self
            .obj
            .element_opt(seq)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .ok_or_else(|| {
                missing(
                    &self.file,
                    "PerFrameFunctionalGroupsSequence (TILED_SPARSE)",
                    seq,
                )
            })?;
        if items.len() as u64 != n_frames {
            return Err(DataError::malformed(
                &self.file,
                format!(
                    "PerFrameFunctionalGroupsSequence {seq} has {} items for NumberOfFrames {n_frames}",
                    items.len()
                ),
            ));
        }
        let mut grid = vec![None; (across * down) as usize];
        for (i, item) in items.iter().enumerate() {
            let position = |tag: Tag| -> Option<i64> {
                item.element_opt(tags::PLANE_POSITION_SLIDE_SEQUENCE)
                    .ok()??
                    .items()?
                    .first()?
                    .element_opt(tag)
                    .ok()??
                    .to_int::<i64>()
                    .ok()
            };
            let (Some(col), Some(row)) = (
                position(tags::COLUMN_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX),
                position(tags::ROW_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX),
            ) else {
                return Err(missing(
                    &self.file,
                    &format!(
                        "PlanePositionSlideSequence Column/RowPositionInTotalImagePixelMatrix of \
                         frame {}",
                        i + 1
                    ),
                    tags::PLANE_POSITION_SLIDE_SEQUENCE,
                ));
            };
            let (x, y) = (col - 1, row - 1);
            if x < 0
                || y < 0
                || !(x as u64).is_multiple_of(tile_w)
                || !(y as u64).is_multiple_of(tile_h)
            {
                return Err(DataError::malformed(
                    &self.file,
                    format!(
                        "frame {} is at column {col}, row {row}, not on the {tile_w}×{tile_h} tile grid",
                        i + 1
                    ),
                ));
            }
            let (tx, ty) = (x as u64 / tile_w, y as u64 / tile_h);
            if tx >= across || ty >= down {
                return Err(DataError::malformed(
                    &self.file,
                    format!(
                        "frame {} at column {col}, row {row} is outside the image",
                        i + 1
                    ),
                ));
            }
            let cell = &mut grid[(ty * across + tx) as usize];
            if cell.is_none() {
                *cell = Some(i as u32);
            }
        }
        Ok(grid)
    }
}

/// Fragments (file offset and length) and each frame's range of them. Native pixel data:
/// consecutive frames of `frame_bytes`, one "fragment" each. Encapsulated: the fragment items
/// after the Basic Offset Table, one per frame, or grouped into frames by the offset table when
/// there are more fragments than frames.
type Fragments = (Vec<(u64, u64)>, Vec<std::ops::Range<u32>>);

fn frame_positions(h: &Header, n_frames: u64, frame_bytes: Option<u64>) -> Result<Fragments> {
    let file = &h.file;
    let bad = |what: String| DataError::malformed(file, what);
    let ts = TransferSyntaxRegistry
        .get(&h.transfer_syntax)
        .ok_or_else(|| bad(format!("unknown transfer syntax {}", h.transfer_syntax)))?;
    let mut reader = BufReader::new(File::open(file).map_err(|e| DataError::io(file, e))?);
    reader
        .seek(SeekFrom::Start(h.dataset_start))
        .map_err(|e| DataError::io(file, e))?;
    let decoder = StatefulDecoder::new_with_ts(reader, ts, h.dataset_start)
        .map_err(|e| bad(format!("cannot parse the data set: {e}")))?;
    let mut tokens = LazyDataSetReader::new(decoder);
    // Depth in sequences, so a Pixel Data nested in an item (an icon image) is skipped.
    let mut depth = 0usize;
    let mut native: Option<(u64, u64)> = None;
    let mut encapsulated = false;
    while let Some(token) = tokens.advance() {
        let token = token.map_err(|e| bad(format!("cannot parse the data set: {e}")))?;
        match token {
            LazyDataToken::SequenceStart { .. } => depth += 1,
            LazyDataToken::SequenceEnd => depth = depth.saturating_sub(1),
            LazyDataToken::PixelSequenceStart if depth == 0 => {
                encapsulated = true;
                break;
            }
            LazyDataToken::PixelSequenceStart => depth += 1,
            LazyDataToken::LazyValue { header, decoder }
                if header.tag == tags::PIXEL_DATA && depth == 0 =>
            {
                native = Some((decoder.position(), header.len.0 as u64));
                break;
            }
            t @ (LazyDataToken::LazyValue { .. } | LazyDataToken::LazyItemValue { .. }) => t
                .skip()
                .map_err(|e| bad(format!("cannot parse the data set: {e}")))?,
            _ => {}
        }
    }
    let position = tokens.into_decoder().position();
    let mut raw = File::open(file).map_err(|e| DataError::io(file, e))?;
    let file_len = raw.metadata().map_err(|e| DataError::io(file, e))?.len();
    if let Some((start, len)) = native {
        let Some(frame_bytes) = frame_bytes else {
            return Err(bad(format!(
                "native (unencapsulated) pixel data for the compressed transfer syntax {}",
                h.transfer_syntax
            )));
        };
        if len < n_frames * frame_bytes || start + len > file_len {
            return Err(bad(format!(
                "PixelData (7FE0,0010) holds {len} bytes; {n_frames} frames of {frame_bytes} \
                 bytes expected (file of {file_len} bytes)"
            )));
        }
        let fragments = (0..n_frames)
            .map(|k| (start + k * frame_bytes, frame_bytes))
            .collect();
        return Ok((fragments, (0..n_frames as u32).map(|k| k..k + 1).collect()));
    }
    if !encapsulated {
        return Err(missing(file, "PixelData", tags::PIXEL_DATA));
    }
    if frame_bytes.is_some() {
        return Err(bad(format!(
            "encapsulated pixel data for the uncompressed transfer syntax {}",
            h.transfer_syntax
        )));
    }
    // Fragment items (PS3.5 A.4): tag (FFFE,E000), 32-bit length, the bytes; the sequence
    // ends with (FFFE,E0DD). The first item is the Basic Offset Table.
    let mut items = Vec::new();
    let mut at = position;
    loop {
        let mut head = [0u8; 8];
        raw.seek(SeekFrom::Start(at))
            .and_then(|_| raw.read_exact(&mut head))
            .map_err(|_| bad(format!("the pixel data is cut short at byte {at}")))?;
        let group = u16::from_le_bytes([head[0], head[1]]);
        let element = u16::from_le_bytes([head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
        match (group, element) {
            (0xFFFE, 0xE000) if at + 8 + len <= file_len => {
                items.push((at + 8, len));
                at += 8 + len;
            }
            (0xFFFE, 0xE0DD) => break,
            _ => {
                return Err(bad(format!(
                    "pixel data item at byte {at} is ({group:04X},{element:04X}) of {len} bytes; \
                     a fragment item within the file expected"
                )))
            }
        }
        if items.len() as u64 > n_frames * 64 + 1 {
            return Err(bad(format!(
                "over {} fragments for {n_frames} frames",
                n_frames * 64
            )));
        }
    }
    let Some((&(bot_at, bot_len), fragments)) = items.split_first() else {
        return Err(bad(
            "the encapsulated pixel data has no Basic Offset Table item".into(),
        ));
    };
    let fragments = fragments.to_vec();
    if fragments.len() as u64 == n_frames {
        let frames = (0..n_frames as u32).map(|k| k..k + 1).collect();
        return Ok((fragments, frames));
    }
    // Several fragments per frame: the Basic Offset Table gives the offset of each frame's
    // first item, relative to the first fragment's item header.
    let mut bot = vec![0u8; bot_len as usize];
    raw.seek(SeekFrom::Start(bot_at))
        .and_then(|_| raw.read_exact(&mut bot))
        .map_err(|e| DataError::io(file, e))?;
    let offsets: Vec<u64> = bot
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
        .collect();
    if offsets.len() as u64 != n_frames {
        return Err(bad(format!(
            "{} fragments and a Basic Offset Table of {} entries for NumberOfFrames {n_frames}; \
             cannot tell where each frame is",
            fragments.len(),
            offsets.len()
        )));
    }
    // Fragments are in file order, so an item offset is found by binary search.
    let base = fragments[0].0 - 8;
    let index_of = |off: u64| {
        fragments
            .binary_search_by_key(&(base + off + 8), |f| f.0)
            .ok()
    };
    let mut frames = Vec::with_capacity(offsets.len());
    for (k, &off) in offsets.iter().enumerate() {
        let start = index_of(off);
        let end = match offsets.get(k + 1) {
            Some(&next) => index_of(next),
            None => Some(fragments.len()),
        };
        match (start, end) {
            (Some(a), Some(b)) if a < b => frames.push(a as u32..b as u32),
            _ => {
                return Err(bad(format!(
                    "Basic Offset Table entry {} ({off}) is not at a fragment boundary",
                    k + 1
                )))
            }
        }
    }
    Ok((fragments, frames))
}

/// A JPEG frame by libjpeg-turbo's code ([`crate::jpeg`], what wsidicom's decoders use), so the
/// pixels are theirs to the bit.
fn decode_jpeg(data: &[u8], rgb: bool) -> std::result::Result<(u32, u32, Vec<u8>), String> {
    let colour = if rgb {
        jpeg::JpegColour::Rgb
    } else {
        jpeg::JpegColour::YCbCr
    };
    let d = jpeg::decode(None, data, colour).map_err(|e| format!("JPEG: {e}"))?;
    let pixels = match d.channels {
        3 => d.pixels,
        1 => d.pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        c => return Err(format!("JPEG: {c} components; RGB or grey expected")),
    };
    Ok((d.width, d.height, pixels))
}

impl Instance {
    fn decode(&self, bytes: &[u8], what: &str) -> Result<TilePixels> {
        let (tw, th) = (self.tile_w, self.tile_h);
        let err = |e: String| DataError::malformed(&self.file, format!("{what}: {e}"));
        let (w, h, rgb) = match self.codec {
            Codec::Native { samples, planar } => {
                let px = tw as usize * th as usize;
                let rgb = match (samples, planar) {
                    (3, false) => bytes.to_vec(),
                    (3, true) => (0..px)
                        .flat_map(|i| [bytes[i], bytes[px + i], bytes[2 * px + i]])
                        .collect(),
                    _ => bytes.iter().flat_map(|&v| [v, v, v]).collect(),
                };
                (tw, th, rgb)
            }
            Codec::Jpeg { rgb } => decode_jpeg(bytes, rgb).map_err(err)?,
            Codec::Jpeg2000 => {
                let d = jpeg2000::decode(bytes, jpeg2000::Components::Rgb, None).map_err(err)?;
                (d.width, d.height, d.rgb)
            }
        };
        if (w, h) != (tw, th) || rgb.len() != w as usize * h as usize * 3 {
            return Err(DataError::malformed(
                &self.file,
                format!("{what} decodes to {w}×{h} pixels; the frame size (Columns × Rows) is {tw}×{th}"),
            ));
        }
        Ok(TilePixels {
            width: w,
            height: h,
            rgb,
        })
    }
}

impl DicomSlide {
    /// A series folder, or one of its files (the series of that file, from its folder).
    pub fn open(path: &Path) -> Result<Self> {
        let (dir, given) = if path.is_dir() {
            (path.to_path_buf(), None)
        } else {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            (
                dir.unwrap_or(Path::new(".")).to_path_buf(),
                Some(path.to_path_buf()),
            )
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| DataError::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_dicom_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::new(
                ErrorKind::Empty,
                path,
                "a folder is read as a DICOM whole-slide series, and this one holds no DICOM \
                 file ('DICM' after the 128-byte preamble)",
            ));
        }
        let series_of_given = match &given {
            Some(f) => {
                let h = Header::read(f)?;
                Some(h.str("SeriesInstanceUID", tags::SERIES_INSTANCE_UID)?)
            }
            None => None,
        };
        // Headers of the whole-slide instances; other objects (annotations, other SOP classes)
        // in the folder are passed over.
        let mut by_series: BTreeMap<String, Vec<Header>> = BTreeMap::new();
        for f in &files {
            let h = match Header::read(f) {
                Ok(h) => h,
                Err(e) if e.kind == ErrorKind::Unsupported && given.as_ref() != Some(f) => continue,
                Err(e) => return Err(e),
            };
            let series = h.str("SeriesInstanceUID", tags::SERIES_INSTANCE_UID)?;
            by_series.entry(series).or_default().push(h);
        }
        let headers = match series_of_given {
            Some(uid) => by_series.remove(&uid).unwrap_or_default(),
            None if by_series.len() > 1 => {
                return Err(DataError::new(
                    ErrorKind::Value,
                    path,
                    format!(
                        "the folder holds {} whole-slide series ({}); give one of its files, or \
                         put each series in a folder of its own",
                        by_series.len(),
                        by_series.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
            None => by_series.into_values().next().unwrap_or_default(),
        };
        let mut volumes = Vec::new();
        let mut associated = Vec::new();
        for h in headers {
            let name = match h.flavor()?.as_str() {
                "VOLUME" => None,
                "LABEL" => Some("label"),
                "OVERVIEW" => Some("macro"),
                "THUMBNAIL" => Some("thumbnail"),
                _ => continue,
            };
            match name {
                None => volumes.push(h),
                Some(n) if !associated.iter().any(|(a, _): &(&str, Header)| *a == n) => {
                    associated.push((n, h))
                }
                Some(_) => {}
            }
        }
        if volumes.is_empty() {
            return Err(DataError::new(
                ErrorKind::Empty,
                path,
                "no VL Whole Slide Microscopy instance with ImageType VOLUME (a pyramid level) \
                 found",
            ));
        }
        let mut volumes = volumes
            .into_iter()
            .map(|h| Ok((h.instance()?, h)))
            .collect::<Result<Vec<_>>>()?;
        // Level 0 is the widest; instances of the same size (other focal planes, copies) after
        // the first are not levels.
        volumes.sort_by(|(a, _), (b, _)| b.width.cmp(&a.width).then(a.file.cmp(&b.file)));
        volumes.dedup_by(|(b, _), (a, _)| a.width == b.width && a.height == b.height);
        let properties = properties(&volumes[0].1);
        let mut instances: Vec<Instance> = volumes.into_iter().map(|(i, _)| i).collect();
        let level0 = (instances[0].width, instances[0].height);
        let levels = instances
            .iter()
            .map(|i| Level {
                width: i.width,
                height: i.height,
                downsample: 0.5
                    * (level0.0 as f64 / i.width as f64 + level0.1 as f64 / i.height as f64),
            })
            .collect();
        let mut named = Vec::new();
        for (name, h) in associated {
            named.push((name.to_string(), instances.len()));
            instances.push(h.instance()?);
        }
        Ok(Self {
            path: path.to_path_buf(),
            levels,
            instances,
            associated: named,
            properties,
            state: Mutex::new(State {
                files: HashMap::new(),
                cache: TileCache::new(FRAME_CACHE),
            }),
        })
    }

    /// The decoded frame `frame` of instance `inst` (cached). The file is read under the lock,
    /// the frame decoded outside it, so threads decode in parallel.
    fn frame(&self, inst: usize, frame: u32) -> Result<Arc<TilePixels>> {
        let instance = &self.instances[inst];
        let lock = || {
            self.state.lock().map_err(|_| {
                DataError::malformed(&self.path, "reader poisoned by an earlier panic")
            })
        };
        let what = format!("frame {}", frame + 1);
        let bytes = {
            let mut st = lock()?;
            if let Some(t) = st.cache.get(&(inst, frame)) {
                return Ok(t);
            }
            let f = match st.files.entry(inst) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    File::open(&instance.file).map_err(|e| DataError::io(&instance.file, e))?,
                ),
            };
            let range = instance.frames[frame as usize].clone();
            let parts = &instance.fragments[range.start as usize..range.end as usize];
            let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.1 as usize).sum());
            for &(offset, len) in parts {
                f.seek(SeekFrom::Start(offset))
                    .and_then(|_| f.by_ref().take(len).read_to_end(&mut bytes))
                    .map_err(|e| DataError::io(&instance.file, e))?;
            }
            bytes
        };
        let decoded = Arc::new(
            gimp_io::guard::catch_quietly(|| instance.decode(&bytes, &what)).unwrap_or_else(
                |_| {
                    Err(DataError::malformed(
                        &instance.file,
                        format!("{what}: the decoder failed"),
                    ))
                },
            )?,
        );
        lock()?.cache.keep((inst, frame), decoded.clone());
        Ok(decoded)
    }

    /// Pixels `[x, x+w) × [y, y+h)` of an instance in its own coordinates; outside the image
    /// and in missing tiles black.
    fn read_instance(&self, inst: usize, x: i64, y: i64, w: u32, h: u32) -> Result<RgbImage> {
        let i = &self.instances[inst];
        compose_tiles(
            (x, y, w, h),
            (i.width, i.height),
            (i.tile_w, i.tile_h),
            |col, row| match i.grid[(row * i.tiles_across + col) as usize] {
                Some(frame) => self.frame(inst, frame).map(Some),
                None => Ok(None),
            },
        )
    }
}

/// Microns per pixel from level 0's Pixel Spacing (mm; row spacing, then column spacing), the
/// objective power from its Optical Path, and a few identifying attributes.
fn properties(h: &Header) -> Properties {
    let mut p = Properties {
        vendor: "dicom".into(),
        ..Default::default()
    };
    let spacing = h
        .nested(
            &[
                tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
                tags::PIXEL_MEASURES_SEQUENCE,
            ],
            tags::PIXEL_SPACING,
        )
        .and_then(|e| e.to_multi_float64().ok())
        .filter(|s| s.len() == 2 && s.iter().all(|v| v.is_finite() && *v > 0.0));
    if let Some(s) = spacing {
        p.mpp = Some([s[1] * 1000.0, s[0] * 1000.0]);
        p.raw
            .insert("dicom.PixelSpacing".into(), format!("{}\\{}", s[0], s[1]));
    }
    p.objective_power = h
        .nested(&[tags::OPTICAL_PATH_SEQUENCE], tags::OBJECTIVE_LENS_POWER)
        .and_then(|e| e.to_float64().ok())
        .filter(|m| m.is_finite() && *m > 0.0);
    for (name, tag) in [
        ("SeriesInstanceUID", tags::SERIES_INSTANCE_UID),
        ("Manufacturer", tags::MANUFACTURER),
        ("ManufacturerModelName", tags::MANUFACTURER_MODEL_NAME),
        ("ContainerIdentifier", tags::CONTAINER_IDENTIFIER),
        (
            "DimensionOrganizationType",
            tags::DIMENSION_ORGANIZATION_TYPE,
        ),
    ] {
        if let Some(v) = h.str_opt(tag).filter(|v| !v.is_empty()) {
            p.raw.insert(format!("dicom.{name}"), v);
        }
    }
    p.raw
        .insert("dicom.TransferSyntaxUID".into(), h.transfer_syntax.clone());
    if let Some(m) = p.objective_power {
        p.raw
            .insert("dicom.ObjectiveLensPower".into(), m.to_string());
    }
    p
}

impl SlideReader for DicomSlide {
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
        let ds = self.levels[level].downsample;
        let x = (x0 as f64 / ds).floor() as i64;
        let y = (y0 as f64 / ds).floor() as i64;
        self.read_instance(level, x, y, w, h)
    }

    fn associated_names(&self) -> Vec<String> {
        self.associated.iter().map(|(n, _)| n.clone()).collect()
    }

    fn read_associated(&self, name: &str) -> Result<RgbImage> {
        let Some(&(_, inst)) = self.associated.iter().find(|(n, _)| n == name) else {
            return Err(DataError::new(
                ErrorKind::Missing,
                &self.path,
                format!(
                    "no associated image '{name}' (has: {})",
                    self.associated_names().join(", ")
                ),
            ));
        };
        let i = &self.instances[inst];
        if i.width * i.height > crate::slide::MAX_REGION_PIXELS {
            return Err(DataError::new(
                ErrorKind::TooLarge,
                &i.file,
                format!(
                    "the {}×{} '{name}' image is over the read limit",
                    i.width, i.height
                ),
            ));
        }
        self.read_instance(inst, 0, 0, i.width as u32, i.height as u32)
    }
}
