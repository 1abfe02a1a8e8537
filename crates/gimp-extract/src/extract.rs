//! One slide's patches → a bag of features, in the order of the patch file's `coords` (what
//! CLAM's `extract_features_fp.py` writes, so the rows line up with the coordinates for
//! heatmaps).

use crate::resnet::{normalise, ResNet50Trunc};
use candle_core::Device;
use gimp_io::h5::{self, PatchFile};
use gimp_io::{Bag, DataError, ErrorKind, Result};
use gimp_slide::{batch, SlideReader};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::Path;

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

/// Reads patches `coords` as `u8 [B, 3, S, S]` (channel-first, as the network reads them).
pub fn read_patches(
    slide: &dyn SlideReader,
    coords: &[[i64; 2]],
    g: &PatchGeometry,
) -> Result<Vec<u8>> {
    let s = g.input_size as usize;
    let per = 3 * s * s;
    let images: Vec<Result<Vec<u8>>> = coords
        .par_iter()
        .map(|c| {
            let img = slide.read_region(c[0], c[1], g.level, g.read_size, g.read_size)?;
            let img = if g.read_size == g.input_size {
                img
            } else {
                // Bilinear with a widened kernel when shrinking: torchvision's Resize with
                // antialias, PIL's BILINEAR.
                image::imageops::resize(&img, g.input_size, g.input_size, FilterType::Triangle)
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
    net: &ResNet50Trunc,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Bag> {
    let n = patches.coords.len();
    let d = net.out_dim();
    let mut features = Vec::with_capacity(n * d);
    let s = g.input_size as usize;
    let model_err = |e: candle_core::Error| {
        DataError::new(
            ErrorKind::Value,
            slide.path(),
            format!("feature extraction: {e}"),
        )
    };
    for chunk in patches.coords.chunks(batch.max(1)) {
        let rgb = read_patches(slide, chunk, g)?;
        let x = normalise(&rgb, chunk.len(), s, s, &Device::Cpu).map_err(model_err)?;
        let f = net.forward(&x).map_err(model_err)?;
        features.extend(
            f.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(model_err)?,
        );
        progress(chunk.len());
    }
    Bag::from_parts(slide.path(), n, d, features, Some(patches.coords.clone()))
}

/// Where and how a batch run writes features: `{out}/h5_files/{slide_id}.h5` (CLAM's layout), and
/// `{out}/pt_files/{slide_id}.pt` with `pt`, the files
/// [`gimp_slide::batch::features_done`] checks.
#[derive(Clone, Copy)]
pub struct FeatureRun<'a> {
    pub net: &'a ResNet50Trunc,
    /// Patches per forward pass.
    pub batch: usize,
    /// Side the network sees; `None`: the patch file's choice (see [`geometry`]).
    pub input_size: Option<u32>,
    pub out: &'a Path,
    pub pt: bool,
}

impl FeatureRun<'_> {
    /// Whether slide `id` with `n_patches` patches needs no work.
    pub fn is_done(&self, id: &str, n_patches: usize) -> bool {
        batch::features_done(self.out, id, n_patches, self.pt)
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
        let bag = extract_slide(s.as_ref(), patches, &g, self.net, self.batch, progress)?;
        h5::write_features(
            &batch::features_path(self.out, &id),
            &bag,
            h5::Chunking::Clam,
        )?;
        if self.pt {
            gimp_io::pt::write_bag(&batch::features_pt_path(self.out, &id), &bag)?;
        }
        Ok(bag.n)
    }
}
