//! Microns per pixel and magnification of a slide's level 0: what the file says, what the user
//! says (`--mpp`, `--level0-magnification`), and which one wins.
//!
//! Missing or wrong pixel sizes are the most reported problem of slide pipelines (TRIDENT's and
//! slideflow's trackers): files written by converters without calibration, TIFF exports at 72
//! dpi, scanners that state the objective but not the pixel. The rules, in order:
//!
//! - **mpp**: the user's `--mpp`, else the file's, else estimated from the magnification
//!   (the user's, else the file's objective) as 10 µm / magnification.
//! - **magnification**: the user's `--level0-magnification`, else 10 µm / the user's `--mpp`,
//!   else the file's objective power, else 10 µm / the file's mpp.
//!
//! A value the user gives always beats the file, and a value the user gives in one unit beats
//! the file's value in the other (a user who corrects the mpp of a file whose `AppMag` is wrong
//! means the new mpp). Nothing is guessed beyond that: a slide with neither is an error naming
//! the slide and both flags, where a command needs one ([`Resolution::magnification_or_err`]).
//! An mpp far from every objective's (more than 30% from 0.125, 0.25, 0.5, 1, 2, 4, 8 µm:
//! 80× to 1.25×) is kept and reported in [`Resolution::warnings`]: mistaken units (nanometres,
//! millimetres, 72 dpi) land there.

use crate::slide::Properties;
use gimp_io::{DataError, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Microns per pixel and magnification given by the user, overriding or supplying the file's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleOverride {
    /// Microns per level-0 pixel (`--mpp`), both axes.
    #[serde(default)]
    pub mpp: Option<f64>,
    /// Objective power of level 0 (`--level0-magnification`).
    #[serde(default)]
    pub magnification: Option<f64>,
}

impl ScaleOverride {
    /// Refuses a non-positive or non-finite value, naming the flag.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (flag, v) in [
            ("--mpp", self.mpp),
            ("--level0-magnification", self.magnification),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("{flag} must be a positive number, got {v}"));
                }
            }
        }
        Ok(())
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Given on the command line.
    User,
    /// Stated by the file.
    File,
    /// Computed from the other quantity (10 µm / mpp, or 10 µm / magnification).
    Estimated,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::User => "given",
            Source::File => "from the file",
            Source::Estimated => "estimated",
        }
    }
}

/// The level-0 scale a command works with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolution {
    /// Microns per level-0 pixel, x and y.
    pub mpp: Option<([f64; 2], Source)>,
    pub magnification: Option<(f64, Source)>,
    /// Doubts about the values (an mpp far from every objective's, a file whose objective and
    /// pixel size disagree); the CLI prints them as warnings.
    pub warnings: Vec<String>,
}

/// Objective powers and the microns per pixel they scan at (10 µm / power; real scanners: 0.22 –
/// 0.27 µm at 40×, 0.44 – 0.52 µm at 20×).
pub const OBJECTIVES: &[(f64, f64)] = &[
    (80.0, 0.125),
    (40.0, 0.25),
    (20.0, 0.5),
    (10.0, 1.0),
    (5.0, 2.0),
    (2.5, 4.0),
    (1.25, 8.0),
];

/// How far (as a ratio) an mpp may be from the nearest objective's before it is doubted.
pub const MPP_TOLERANCE: f64 = 1.3;

/// The objective whose mpp is nearest to `mpp` (in ratio), and that ratio (≥ 1).
pub fn nearest_objective(mpp: f64) -> (f64, f64) {
    OBJECTIVES
        .iter()
        .map(|&(mag, m)| (mag, (mpp / m).max(m / mpp)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0.0, f64::INFINITY))
}

/// A warning when `mpp` is far from every objective's.
pub fn mpp_warning(mpp: f64, origin: &str) -> Option<String> {
    let (mag, ratio) = nearest_objective(mpp);
    (ratio > MPP_TOLERANCE).then(|| {
        format!(
            "{origin} {mpp} µm per pixel is far from every objective's (nearest: {mag}× at {} µm); \
             check the units (µm, not nm or mm) or give the right one with --mpp",
            10.0 / mag
        )
    })
}

/// Resolves the level-0 scale of a slide from its file's properties and the user's overrides
/// (the rules of this module's documentation).
pub fn resolve(file: &Properties, user: &ScaleOverride) -> Resolution {
    let file_mpp = file.mpp.filter(|m| m[0] > 0.0 && m[1] > 0.0);
    let file_mag = file.objective_power.filter(|m| *m > 0.0);
    let mag = user
        .magnification
        .map(|m| (m, Source::User))
        .or_else(|| user.mpp.map(|m| (10.0 / m, Source::Estimated)))
        .or_else(|| file_mag.map(|m| (m, Source::File)))
        .or_else(|| file_mpp.map(|m| (10.0 / m[0], Source::Estimated)));
    let mpp = user
        .mpp
        .map(|m| ([m, m], Source::User))
        .or_else(|| file_mpp.map(|m| (m, Source::File)))
        .or_else(|| mag.map(|(m, _)| ([10.0 / m, 10.0 / m], Source::Estimated)));
    let mut warnings = Vec::new();
    if let Some(([x, _], source)) = mpp {
        let origin = match source {
            Source::User => "--mpp",
            Source::File => "the file's",
            Source::Estimated => "the estimated",
        };
        if source != Source::Estimated {
            warnings.extend(mpp_warning(x, origin));
        }
    }
    // A file whose objective and pixel size disagree by more than a factor 1.3 (AppMag 40 with
    // MPP 0.5): one of them is wrong, and the user should say which.
    if let (Some(m), Some(p), None, None) = (file_mag, file_mpp, user.mpp, user.magnification) {
        let implied = 10.0 / p[0];
        if (implied / m).max(m / implied) > MPP_TOLERANCE {
            warnings.push(format!(
                "the file states {m}× but {} µm per pixel (≈ {implied:.1}×); the objective is used — \
                 give --mpp or --level0-magnification if it is wrong",
                p[0]
            ));
        }
    }
    Resolution {
        mpp,
        magnification: mag,
        warnings,
    }
}

impl Resolution {
    /// The level-0 magnification, or an error naming the slide and the flags that supply it.
    pub fn magnification_or_err(&self, slide: &Path) -> Result<f64> {
        self.magnification.map(|m| m.0).ok_or_else(|| {
            DataError::new(
                ErrorKind::Missing,
                slide,
                "the file states neither an objective power nor a pixel size; give \
                 --level0-magnification (e.g. 40) or --mpp (e.g. 0.25)",
            )
        })
    }

    /// Microns per level-0 pixel, or an error naming the slide and the flags that supply it.
    pub fn mpp_or_err(&self, slide: &Path) -> Result<[f64; 2]> {
        self.mpp.map(|m| m.0).ok_or_else(|| {
            DataError::new(
                ErrorKind::Missing,
                slide,
                "the file states neither a pixel size nor an objective power; give --mpp \
                 (e.g. 0.25) or --level0-magnification (e.g. 40)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(mpp: Option<f64>, mag: Option<f64>) -> Properties {
        Properties {
            mpp: mpp.map(|m| [m, m]),
            objective_power: mag,
            ..Default::default()
        }
    }

    #[test]
    fn the_user_beats_the_file_and_each_quantity_fills_the_other() {
        let none = ScaleOverride::default();
        let r = resolve(&props(Some(0.499), Some(20.0)), &none);
        assert_eq!(r.magnification, Some((20.0, Source::File)));
        assert_eq!(r.mpp, Some(([0.499, 0.499], Source::File)));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // Only an mpp: the magnification is estimated from it.
        let r = resolve(&props(Some(0.25), None), &none);
        assert_eq!(r.magnification, Some((40.0, Source::Estimated)));
        // Only an objective: the mpp is estimated from it.
        let r = resolve(&props(None, Some(40.0)), &none);
        assert_eq!(r.mpp, Some(([0.25, 0.25], Source::Estimated)));
        // --mpp overrides both of the file's values.
        let user = ScaleOverride {
            mpp: Some(0.5),
            magnification: None,
        };
        let r = resolve(&props(Some(0.25), Some(40.0)), &user);
        assert_eq!(r.mpp, Some(([0.5, 0.5], Source::User)));
        assert_eq!(r.magnification, Some((20.0, Source::Estimated)));
        // --level0-magnification supplies what the file lacks.
        let user = ScaleOverride {
            mpp: None,
            magnification: Some(40.0),
        };
        let r = resolve(&props(None, None), &user);
        assert_eq!(r.magnification, Some((40.0, Source::User)));
        assert_eq!(r.mpp, Some(([0.25, 0.25], Source::Estimated)));
        // Neither: the error names the slide and both flags.
        let r = resolve(&props(None, None), &none);
        let e = r.magnification_or_err(Path::new("s.tif")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("s.tif")
                && msg.contains("--level0-magnification")
                && msg.contains("--mpp"),
            "{msg}"
        );
        assert!(r.mpp_or_err(Path::new("s.tif")).is_err());
    }

    #[test]
    fn an_mpp_far_from_every_objective_and_a_disagreeing_file_are_warned_about() {
        let none = ScaleOverride::default();
        for ok in [0.2265, 0.2425, 0.263, 0.4545, 0.499, 1.0] {
            assert!(mpp_warning(ok, "x").is_none(), "{ok}");
        }
        for far in [0.35, 250.0, 0.00025, 35.3] {
            assert!(mpp_warning(far, "x").is_some(), "{far}");
        }
        let r = resolve(&props(Some(250.0), None), &none);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("250 µm per pixel is far from every objective"));
        let r = resolve(&props(Some(0.5), Some(40.0)), &none);
        assert!(
            r.warnings[0].contains("states 40× but 0.5 µm"),
            "{:?}",
            r.warnings
        );
        // The user settled it: no warning.
        let user = ScaleOverride {
            mpp: Some(0.5),
            magnification: None,
        };
        assert!(resolve(&props(Some(0.5), Some(40.0)), &user)
            .warnings
            .is_empty());
        assert!(ScaleOverride {
            mpp: Some(-1.0),
            magnification: None
        }
        .check()
        .unwrap_err()
        .contains("--mpp must be a positive number"));
    }
}
