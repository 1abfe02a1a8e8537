//! One slide's patches → a bag of features, in the order of the patch file's `coords` (what
//! CLAM's `extract_features_fp.py` and TRIDENT write, so the rows line up with the coordinates
//! for heatmaps), by any [`PatchEncoder`].

use crate::encoders::{PatchEncoder, Transform};
use gimp_io::h5::{self, FeatureProvenance, PatchFile};
use gimp_io::{Bag, DataError, ErrorKind, Result};
use gimp_slide::resample::{resize_rgb, Filter as PilFilter};
use gimp_slide::{batch, SlideReader};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// How patches are read and fed to the network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchGeometry {
    pub level: usize,
    /// Side read at `level`.
    pub read_size: u32,
    /// Side the network sees (after resizing).
    pub input_size: u32,
}

/// The geometry a patch file asks for: CLAM's `patch_level`/`patch_size`, or TRIDENT's
/// level-0 size; patches are resized to the target magnification's `patch_size` when the file
/// records the magnifications (ours and TRIDENT's do), else fed as read (2021–2023 CLAM) unless
/// `input_size` is given (CLAM's `--target_patch_size`).
pub fn geometry(
    patches: &PatchFile,
    path: &Path,
    input_size: Option<u32>,
) -> Result<PatchGeometry> {
    let a = &patches.attrs;
    let (level, read_size) = match (a.patch_level, a.patch_size, a.patch_size_level0) {
        (Some(l), Some(s), _) => (l, s),
        (None, _, Some(s0)) => (0, s0),
        (None, Some(s), None) => (0, s),
        _ => {
            return Err(DataError::new(
                ErrorKind::Missing,
                path,
                "attributes of 'coords' give no patch size (patch_size or patch_size_level0)",
            )
            .at("dataset 'coords'"))
        }
    };
    if level < 0 || read_size <= 0 || read_size > 8192 {
        return Err(DataError::new(
            ErrorKind::Value,
            path,
            format!("patch_level {level} / patch_size {read_size} is not usable"),
        )
        .at("dataset 'coords'"));
    }
    let recorded = match (
        a.patch_size_level0,
        a.level0_magnification,
        a.target_magnification,
    ) {
        (Some(s0), Some(m0), Some(t)) if m0 > 0.0 => Some((s0 as f64 * t / m0).round() as u32),
        _ => None,
    };
    Ok(PatchGeometry {
        level: level as usize,
        read_size: read_size as u32,
        input_size: input_size.or(recorded).unwrap_or(read_size as u32),
    })
}

/// Side of the images [`read_patches`] returns: the patch at the target size, then the
/// encoder's resize and crop.
pub fn network_side(g: &PatchGeometry, t: &Transform) -> u32 {
    t.crop.or(t.resize).unwrap_or(g.input_size)
}

/// Reads patches `coords` as `u8 [B, 3, S, S]` (channel-first, as the network reads them): each
/// read at `g.level`, resized to `g.input_size` (the patch at the target magnification, as
/// TRIDENT and CLAM hand it to the transform), then the encoder's transform's resize and
/// centre crop (torchvision's `Resize` on a PIL image and `CenterCrop`). Every resize is PIL's,
/// bit for bit ([`gimp_slide::resample`]), so the bytes are those TRIDENT feeds its network.
pub fn read_patches(
    slide: &dyn SlideReader,
    coords: &[[i64; 2]],
    g: &PatchGeometry,
    t: &Transform,
) -> Result<Vec<u8>> {
    let s = network_side(g, t) as usize;
    let per = 3 * s * s;
    let images: Vec<Result<Vec<u8>>> = coords
        .par_iter()
        .map(|c| {
            let img = slide.read_region(c[0], c[1], g.level, g.read_size, g.read_size)?;
            let img = if g.read_size == g.input_size {
                img
            } else {
                // TRIDENT's patcher: `tile.resize((size, size))`, PIL's default filter (bicubic),
                // antialiased when shrinking (a 40× read to 20×).
                resize_rgb(&img, g.input_size, g.input_size, PilFilter::Bicubic)
            };
            let img = match t.resize {
                // torchvision's `Resize` on a PIL image is PIL's `Image.resize`; the same size
                // is returned untouched.
                Some(r) if r != img.width() => resize_rgb(&img, r, r, t.filter),
                _ => img,
            };
            let img = match t.crop {
                Some(c) if c < img.width() => {
                    // torchvision's CenterCrop: top-left at round((side − crop) / 2).
                    let at = ((img.width() - c) as f64 / 2.0).round() as u32;
                    image::imageops::crop_imm(&img, at, at, c, c).to_image()
                }
                Some(c) if c > img.width() => {
                    return Err(DataError::new(
                        ErrorKind::Value,
                        slide.path(),
                        format!(
                            "patches of {} px are smaller than the encoder's {c} px crop",
                            img.width()
                        ),
                    ))
                }
                _ => img,
            };
            let mut chw = vec![0u8; per];
            for (i, px) in img.pixels().enumerate() {
                for ch in 0..3 {
                    chw[ch * s * s + i] = px.0[ch];
                }
            }
            Ok(chw)
        })
        .collect();
    let mut out = Vec::with_capacity(coords.len() * per);
    for img in images {
        out.extend_from_slice(&img?);
    }
    Ok(out)
}

/// Features of every patch of `patches`, `batch` at a time; `progress(done)` after each batch.
pub fn extract_slide(
    slide: &dyn SlideReader,
    patches: &PatchFile,
    g: &PatchGeometry,
    encoder: &dyn PatchEncoder,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Bag> {
    let n = patches.coords.len();
    let d = encoder.out_dim();
    let mut features = Vec::with_capacity(n * d);
    let s = network_side(g, encoder.transform()) as usize;
    for chunk in patches.coords.chunks(batch.max(1)) {
        let rgb = read_patches(slide, chunk, g, encoder.transform())?;
        let f = encoder.forward_sized(&rgb, chunk.len(), s).map_err(|e| {
            DataError::new(
                ErrorKind::Value,
                slide.path(),
                format!("feature extraction: {e}"),
            )
        })?;
        features.extend(f);
        progress(chunk.len());
    }
    Bag::from_parts(slide.path(), n, d, features, Some(patches.coords.clone()))
}

/// Where a run writes each slide's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `{out}/h5_files/{slide_id}.h5` (and `pt_files/` with `pt`): CLAM's.
    Clam,
    /// `{out}/features_{encoder}/{slide_id}.h5`: TRIDENT's, one folder per encoder so several
    /// encoders' features of a cohort sit side by side.
    Trident,
}

/// Where and how a batch run writes features (see [`Layout`]); with `pt`, CLAM's
/// `{out}/pt_files/{slide_id}.pt` too.
#[derive(Clone, Copy)]
pub struct FeatureRun<'a> {
    pub encoder: &'a dyn PatchEncoder,
    /// SHA-256 of the weights file, recorded with the encoder's name on every feature file.
    pub weights_sha256: &'a str,
    pub layout: Layout,
    /// Patches per forward pass.
    pub batch: usize,
    /// Side the network sees; `None`: the patch file's choice (see [`geometry`]).
    pub input_size: Option<u32>,
    pub out: &'a Path,
    pub pt: bool,
}

impl FeatureRun<'_> {
    /// The feature file of slide `id`.
    pub fn features_path(&self, id: &str) -> PathBuf {
        match self.layout {
            Layout::Clam => batch::features_path(self.out, id),
            Layout::Trident => self
                .out
                .join(format!("features_{}", self.encoder.name()))
                .join(format!("{id}.h5")),
        }
    }

    /// Whether slide `id` with `n_patches` patches needs no work: its feature file has a row per
    /// patch and was made by this encoder from these weights (and, with `pt`, the `.pt` file
    /// exists).
    pub fn is_done(&self, id: &str, n_patches: usize) -> bool {
        let path = self.features_path(id);
        h5::feature_shape(&path).is_ok_and(|(n, _)| n == n_patches)
            && h5::read_provenance(&path).is_ok_and(|p| {
                p.is_some_and(|p| {
                    p.encoder == self.encoder.name() && p.weights_sha256 == self.weights_sha256
                })
            })
            && (!self.pt || batch::features_pt_path(self.out, id).is_file())
    }

    /// Extracts the features of `slide`'s patches (read from `patch_path`) and writes its files;
    /// returns the number of patches. `progress(done)` after each batch.
    pub fn slide(
        &self,
        slide: &Path,
        patches: &PatchFile,
        patch_path: &Path,
        progress: impl FnMut(usize),
    ) -> Result<usize> {
        let id = batch::slide_id(slide);
        let s = gimp_slide::open(slide)?;
        let g = geometry(patches, patch_path, self.input_size)?;
        let bag = extract_slide(s.as_ref(), patches, &g, self.encoder, self.batch, progress)?;
        let provenance = FeatureProvenance {
            encoder: self.encoder.name().to_string(),
            weights_sha256: self.weights_sha256.to_string(),
        };
        h5::write_features_with(
            &self.features_path(&id),
            &bag,
            h5::Chunking::Clam,
            Some(&provenance),
        )?;
        if self.pt {
            gimp_io::pt::write_bag(&batch::features_pt_path(self.out, &id), &bag)?;
        }
        Ok(bag.n)
    }
}
