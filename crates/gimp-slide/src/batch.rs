//! Batch processing of slide lists, shared by patching and feature extraction: finding the slide
//! files, splitting the list across machines (`i/n` shards or a Slurm array), the output folder
//! layout with its skip-if-done checks, patching one slide into it, and CLAM's `process_list.csv`.

use crate::overlay;
use crate::patching::{self, PatchParams};
use crate::qupath;
use crate::resolution;
use crate::segment::{self, SegmentParams};
pub use gimp_io::shard::{Shard, ShardError};
use gimp_io::{h5, DataError, ErrorKind};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File extensions taken from a folder of slides.
pub const SLIDE_EXTENSIONS: &[&str] = &[
    "svs", "tif", "tiff", "ndpi", "mrxs", "scn", "vms", "vmu", "bif", "svslide",
];

/// Slides from files and folders, sorted and de-duplicated so every machine of a sharded run
/// sees the same list. A folder that is a DICOM series is one slide; another folder gives its
/// files with a [`SLIDE_EXTENSIONS`] extension and its subfolders that are DICOM series (not
/// recursing further).
pub fn slide_files(inputs: &[PathBuf]) -> gimp_io::Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for p in inputs {
        if p.is_dir() && crate::dicom::is_dicom_folder(p) {
            all.push(p.clone());
        } else if p.is_dir() {
            for e in std::fs::read_dir(p).map_err(|e| DataError::io(p, e))? {
                let path = e.map_err(|e| DataError::io(p, e))?.path();
                let ext = path
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_default();
                let slide_file = path.is_file() && SLIDE_EXTENSIONS.contains(&ext.as_str());
                if slide_file || (path.is_dir() && crate::dicom::is_dicom_folder(&path)) {
                    all.push(path);
                }
            }
        } else if p.is_file() {
            all.push(p.clone());
        } else {
            return Err(DataError::new(
                ErrorKind::Io,
                p,
                "no such slide file or folder",
            ));
        }
    }
    all.sort();
    all.dedup();
    if all.is_empty() {
        let place = inputs.first().map_or(Path::new(""), |p| p.as_path());
        return Err(DataError::new(
            ErrorKind::Empty,
            place,
            format!(
                "no slides found (extensions read from folders: {}; DICOM series folders)",
                SLIDE_EXTENSIONS.join(", ")
            ),
        ));
    }
    Ok(all)
}

/// CLAM's slide id: the file name without its extension; for a DICOM series, given as its folder
/// or as one of its files, the folder's name.
pub fn slide_id(p: &Path) -> String {
    let name = if p.is_dir() {
        p.canonicalize()
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_owned()))
    } else if crate::dicom::is_dicom_file(p) {
        p.canonicalize()
            .ok()
            .and_then(|c| c.parent().and_then(|d| d.file_name()).map(|n| n.to_owned()))
    } else {
        p.file_stem().map(|n| n.to_owned())
    };
    name.map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// `{out}/patches/{id}.h5`, the patch file `patch_slide` writes.
pub fn patch_path(out: &Path, id: &str) -> PathBuf {
    out.join("patches").join(format!("{id}.h5"))
}

/// `{out}/masks/{id}.png`, the segmentation QC picture.
pub fn mask_path(out: &Path, id: &str) -> PathBuf {
    out.join("masks").join(format!("{id}.png"))
}

/// `{out}/masks/{id}.tissue.png`, the tissue outlines alone on a transparent overview (the
/// viewer's contour layer; it spans the whole slide).
pub fn tissue_path(out: &Path, id: &str) -> PathBuf {
    out.join("masks").join(format!("{id}.tissue.png"))
}

/// `{out}/contours_geojson/{id}.geojson`, the tissue outlines as QuPath annotations (TRIDENT's
/// folder name; [`crate::qupath`]).
pub fn contours_path(out: &Path, id: &str) -> PathBuf {
    out.join("contours_geojson").join(format!("{id}.geojson"))
}

/// `{out}/h5_files/{id}.h5`, CLAM's feature file.
pub fn features_path(out: &Path, id: &str) -> PathBuf {
    out.join("h5_files").join(format!("{id}.h5"))
}

/// `{out}/pt_files/{id}.pt`, CLAM's torch feature file.
pub fn features_pt_path(out: &Path, id: &str) -> PathBuf {
    out.join("pt_files").join(format!("{id}.pt"))
}

/// A slide is patched when its patch file is there and readable (a file cut short by a killed
/// job is not).
pub fn patches_done(out: &Path, id: &str) -> bool {
    let p = patch_path(out, id);
    p.is_file() && h5::read_patches(&p).is_ok()
}

/// A slide's features are done when the feature file has one row per patch (and, with `pt`, the
/// `.pt` file exists too).
pub fn features_done(out: &Path, id: &str, n_patches: usize, pt: bool) -> bool {
    h5::feature_shape(&features_path(out, id)).is_ok_and(|(n, _)| n == n_patches)
        && (!pt || features_pt_path(out, id).is_file())
}

/// One patched slide: a row of the process list.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchedSlide {
    pub id: String,
    /// Doubts about the slide's scale ([`crate::resolution`]), for the user to see.
    pub warnings: Vec<String>,
    pub n_patches: usize,
    pub patch_level: usize,
    pub patch_size_at_level: u32,
    pub level0_magnification: f64,
    pub tissue_fraction: f64,
    pub regions: usize,
}

/// Why a slide could not be patched.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(
        "none of the {before} tissue patches has its centre inside --roi and outside --exclude \
         ({regions}); check that the regions are this slide's, in level-0 pixels"
    )]
    NoneInRegions { regions: String, before: usize },
    #[error(
        "no tissue patches: the largest tissue region is {largest:.2} reference patches \
         (512² level-0 px), a_t is {a_t}; lower --a-t (or use --preset bwh_biopsy), or check \
         the QC picture masks/{id}.png"
    )]
    NoTissue { id: String, largest: f64, a_t: f64 },
}

/// Segments one slide and writes its patch file ([`patch_path`]), QC picture ([`mask_path`],
/// written first so a slide without tissue patches can be looked at), tissue outlines
/// ([`tissue_path`]) and their polygons for QuPath ([`contours_path`]). With `pp.roi` /
/// `pp.exclude`, only patches whose centre is inside the regions (and outside the excluded ones)
/// are kept.
pub fn patch_slide(
    slide: &Path,
    out: &Path,
    sp: &SegmentParams,
    pp: &PatchParams,
) -> Result<PatchedSlide, PatchError> {
    let id = slide_id(slide);
    let s = crate::open(slide)?;
    let scale = resolution::resolve(s.properties(), &pp.scale());
    let plan = patching::plan_at(s.as_ref(), pp, scale.magnification_or_err(slide)?)?;
    let l0 = s.levels()[0];
    let read = |spec: &Option<PathBuf>| {
        spec.as_deref()
            .map(|p| qupath::regions_for(p, &id, l0.width, l0.height))
            .transpose()
    };
    let filter = qupath::PatchFilter {
        include: read(&pp.roi)?,
        exclude: read(&pp.exclude)?,
    };
    // Slides with one level (small regions, some scanners' exports) are segmented on an
    // overview no coarser than 1/1024 of their side, so small regions keep enough pixels.
    let seg_ds = sp
        .downsample
        .min((l0.width.max(l0.height) as f64 / 1024.0).max(1.0));
    let (overview, ds) = s.overview(seg_ds, 1 << 27)?;
    let mask = segment::segment(&overview, ds, sp);
    let coords = patching::coords(&mask, &plan, pp.contour_fn);
    let before = coords.len();
    let coords = if filter.is_empty() {
        coords
    } else {
        filter.apply(coords, plan.size_level0 as f64)
    };
    let qc = overlay::segmentation_qc(&overview, &mask, Some((&coords, plan.size_level0 as f64)));
    overlay::save_png(&qc, &mask_path(out, &id))?;
    overlay::save_rgba_png(&overlay::tissue_outline(&mask), &tissue_path(out, &id))?;
    qupath::write(&contours_path(out, &id), qupath::tissue_annotations(&mask))?;
    let n = coords.len();
    if n == 0 && before > 0 {
        let regions = [&filter.include, &filter.exclude]
            .into_iter()
            .flatten()
            .map(|r| r.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PatchError::NoneInRegions { regions, before });
    }
    if n == 0 {
        let largest = mask.regions.iter().map(|r| r.area).fold(0.0, f64::max);
        return Err(PatchError::NoTissue {
            id,
            largest,
            a_t: sp.a_t,
        });
    }
    let file = patching::patch_file(s.as_ref(), &id, &plan, pp, coords);
    h5::write_patches(&patch_path(out, &id), &file)?;
    Ok(PatchedSlide {
        warnings: scale.warnings,
        id,
        n_patches: n,
        patch_level: plan.level,
        patch_size_at_level: plan.size_at_level,
        level0_magnification: plan.level0_magnification,
        tissue_fraction: mask.tissue_fraction(),
        regions: mask.kept_regions().count(),
    })
}

/// CLAM's `process_list_autogen.csv`: one row per slide of the run with its status
/// (`processed`, `already_exist`, `failed` with the error).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessList {
    csv: String,
    failed: usize,
}

impl Default for ProcessList {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessList {
    pub const HEADER: &'static str = "slide_id,status,n_patches,patch_level,patch_size_at_level,level0_magnification,tissue_fraction,regions,error";

    pub fn new() -> Self {
        Self {
            csv: format!("{}\n", Self::HEADER),
            failed: 0,
        }
    }

    pub fn processed(&mut self, s: &PatchedSlide) {
        let _ = writeln!(
            self.csv,
            "{},processed,{},{},{},{},{:.4},{},",
            s.id,
            s.n_patches,
            s.patch_level,
            s.patch_size_at_level,
            s.level0_magnification,
            s.tissue_fraction,
            s.regions
        );
    }

    pub fn already_exist(&mut self, id: &str) {
        let _ = writeln!(self.csv, "{id},already_exist,,,,,,,");
    }

    /// A failed slide; the error goes in a quoted field, its own double quotes made single so
    /// the field stays one CSV value.
    pub fn failed(&mut self, id: &str, error: &str) {
        self.failed += 1;
        let _ = writeln!(
            self.csv,
            "{id},failed,,,,,,,\"{}\"",
            error.replace('"', "'")
        );
    }

    pub fn n_failed(&self) -> usize {
        self.failed
    }

    pub fn as_csv(&self) -> &str {
        &self.csv
    }

    /// `process_list.csv`, or `process_list_{i}of{n}.csv` for a shard so that the machines of
    /// one run do not overwrite each other's lists.
    pub fn file_name(shard: Option<&Shard>) -> String {
        match shard {
            Some(s) => format!("process_list_{}of{}.csv", s.index(), s.count()),
            None => "process_list.csv".to_string(),
        }
    }

    /// Writes the list into `out` (atomically) under [`ProcessList::file_name`]; returns its path.
    pub fn write(&self, out: &Path, shard: Option<&Shard>) -> gimp_io::Result<PathBuf> {
        let path = out.join(Self::file_name(shard));
        gimp_io::atomic::write_bytes_atomic(&path, self.csv.as_bytes())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slide_files_are_sorted_filtered_and_deduplicated() {
        let d = tempfile::tempdir().unwrap();
        for f in ["b.svs", "a.TIF", "notes.txt", "c.ndpi"] {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        let dir = d.path().to_path_buf();
        let got = slide_files(&[dir.clone(), dir.join("b.svs")]).unwrap();
        let names: Vec<String> = got.iter().map(|p| slide_id(p)).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let e = slide_files(&[dir.join("missing.svs")]).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("missing.svs: no such slide file or folder"));
        let empty = tempfile::tempdir().unwrap();
        let e = slide_files(&[empty.path().to_path_buf()]).unwrap_err();
        assert!(e
            .to_string()
            .contains("no slides found (extensions read from folders: svs, tif"));
    }

    #[test]
    fn process_list_rows_and_names() {
        let mut l = ProcessList::new();
        l.processed(&PatchedSlide {
            id: "s1".into(),
            warnings: vec![],
            n_patches: 52,
            patch_level: 0,
            patch_size_at_level: 256,
            level0_magnification: 20.0,
            tissue_fraction: 0.123456,
            regions: 2,
        });
        l.already_exist("s2");
        l.failed("s3", "s3.svs: bad \"tile\"");
        assert_eq!(l.n_failed(), 1);
        assert_eq!(
            l.as_csv(),
            format!(
                "{}\ns1,processed,52,0,256,20,0.1235,2,\ns2,already_exist,,,,,,,\ns3,failed,,,,,,,\"s3.svs: bad 'tile'\"\n",
                ProcessList::HEADER
            )
        );
        assert_eq!(ProcessList::file_name(None), "process_list.csv");
        let s = Shard::new(1, 3).unwrap();
        assert_eq!(ProcessList::file_name(Some(&s)), "process_list_1of3.csv");
        let d = tempfile::tempdir().unwrap();
        let p = l.write(d.path(), Some(&s)).unwrap();
        assert_eq!(std::fs::read_to_string(p).unwrap(), l.as_csv());
    }

    #[test]
    fn nothing_is_done_in_an_empty_folder() {
        let d = tempfile::tempdir().unwrap();
        assert!(!patches_done(d.path(), "s"));
        assert!(!features_done(d.path(), "s", 3, false));
        assert_eq!(patch_path(Path::new("o"), "s"), Path::new("o/patches/s.h5"));
        assert_eq!(
            features_pt_path(Path::new("o"), "s"),
            Path::new("o/pt_files/s.pt")
        );
    }
}
