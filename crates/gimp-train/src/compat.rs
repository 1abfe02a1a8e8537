//! Which features a model reads — their width and the encoder that made them — recorded in its
//! checkpoint when it is trained, and checked against a feature file before the model runs on it
//! (`docs/DESIGN.md` §36). Without the check a 1024-wide file given to a model trained on
//! 256-wide features ends in a shape error deep inside a layer, and features of the right width
//! from another encoder give a silently wrong answer.

use crate::data::Prepared;
use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The checkpoint `info` key that holds the training features' [`FeatureKind`] (JSON).
pub const INFO_KEY: &str = "features";

/// The encoder a feature file without an `encoder` attribute is taken to come from when it is
/// [`LEGACY_WIDTH`] wide: every file `gimp-rs extract` wrote before encoders were recorded, and
/// CLAM's default feature sets, are ResNet50-trunc's 1024-d features.
pub const LEGACY_ENCODER: &str = "resnet50_trunc";
pub const LEGACY_WIDTH: usize = 1024;

/// The features a model reads or a file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureKind {
    pub width: usize,
    /// `None`: not recorded and not inferable (a file of another width without the attribute,
    /// or a model loaded from reference weights); then only the width is checked.
    pub encoder: Option<String>,
}

impl FeatureKind {
    /// From a file's width and its `encoder` attribute; without the attribute a
    /// [`LEGACY_WIDTH`]-wide file is [`LEGACY_ENCODER`]'s, any other width unknown.
    pub fn from_record(width: usize, recorded: Option<String>) -> Self {
        let encoder = recorded.or_else(|| (width == LEGACY_WIDTH).then(|| LEGACY_ENCODER.into()));
        Self { width, encoder }
    }

    /// The kind of a feature file (its header and attributes only; the data is not read).
    pub fn of_file(path: &Path) -> Result<Self> {
        let (_, width) = gimp_io::feature_file::bag_shape(path)?;
        let recorded = gimp_io::feature_file::recorded_encoder(path)?;
        Ok(Self::from_record(width, recorded))
    }

    /// The kind of a prepared cohort's features, from its first feature file (a cohort's files
    /// all have one width: `gimp-rs cohort check` refuses mixed widths), with that file.
    pub fn of_cohort(data: &Prepared) -> Result<Option<(Self, std::path::PathBuf)>> {
        let Some(path) = data
            .patients
            .iter()
            .flat_map(|p| p.slides.iter())
            .map(|(_, path)| path.clone())
            .next()
        else {
            return Ok(None);
        };
        Ok(Some((Self::of_file(&path)?, path)))
    }

    /// The kind recorded in a checkpoint's provenance, if it has one.
    pub fn from_info(info: &BTreeMap<String, String>) -> Option<Self> {
        serde_json::from_str(info.get(INFO_KEY)?).ok()
    }

    /// What a model expects: its checkpoint's record, else (older checkpoints, reference
    /// weights) the input width its config names (`d_in`), with the encoder unknown.
    pub fn expected(
        info: Option<&BTreeMap<String, String>>,
        config: &serde_json::Value,
    ) -> Option<Self> {
        info.and_then(Self::from_info).or_else(|| {
            config_input_width(config).map(|width| Self {
                width,
                encoder: None,
            })
        })
    }

    pub fn describe(&self) -> String {
        match &self.encoder {
            Some(e) => format!("{}-wide features from encoder '{e}'", self.width),
            None => format!("{}-wide features from an unrecorded encoder", self.width),
        }
    }

    /// Whether features of kind `found` may be fed to a model expecting `self`: same width, and
    /// the same encoder where both are known.
    pub fn accepts(&self, found: &Self) -> bool {
        self.width == found.width
            && match (&self.encoder, &found.encoder) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// An error naming the file, what it holds and what the model (`model`: where it came from)
    /// expects, unless it [`accepts`](Self::accepts) it.
    pub fn check(&self, model: &str, file: &Path, found: &Self) -> Result<()> {
        if self.accepts(found) {
            return Ok(());
        }
        let how = match &self.encoder {
            Some(e) => format!("extract the slide's features with '{e}'"),
            None => format!("give features {} wide", self.width),
        };
        Err(TrainError::Msg(format!(
            "{}: {} found, but {model} expects {}: {how}",
            file.display(),
            found.describe(),
            self.describe()
        )))
    }

    /// The same check for a cohort's features (its first file stands for all of them).
    pub fn check_cohort(&self, model: &str, data: &Prepared) -> Result<()> {
        match Self::of_cohort(data)? {
            Some((found, file)) => self.check(model, &file, &found),
            None => Ok(()),
        }
    }
}

/// The input width a model config names: `d_in` at its top level or in a nested section (the
/// aggregator of GiMP, the image branch of fusion models). Every slide-reading model's config
/// names it so (checked below for every model of the registry).
pub fn config_input_width(config: &serde_json::Value) -> Option<usize> {
    let obj = config.as_object()?;
    if let Some(d) = obj.get("d_in").and_then(|v| v.as_u64()) {
        return Some(d as usize);
    }
    obj.values().find_map(config_input_width)
}

/// The provenance entry of the features a cohort's model is trained on, or nothing for a cohort
/// without slide features (expression-only models).
pub fn provenance_entry(data: &Prepared) -> Result<Option<(String, String)>> {
    Ok(FeatureKind::of_cohort(data)?.map(|(kind, _)| {
        (
            INFO_KEY.to_string(),
            serde_json::to_string(&kind).unwrap_or_default(),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_file_without_the_attribute_is_resnet50_trunc_only_at_1024() {
        assert_eq!(
            FeatureKind::from_record(1024, None).encoder.as_deref(),
            Some(LEGACY_ENCODER)
        );
        assert_eq!(FeatureKind::from_record(768, None).encoder, None);
        assert_eq!(
            FeatureKind::from_record(1024, Some("uni".into()))
                .encoder
                .as_deref(),
            Some("uni")
        );
    }

    #[test]
    fn the_check_names_file_widths_and_encoders() {
        let want = FeatureKind::from_record(256, Some("conch".into()));
        let found = FeatureKind::from_record(1024, None);
        let e = want
            .check("checkpoint m.safetensors", Path::new("s.h5"), &found)
            .unwrap_err()
            .to_string();
        for part in [
            "s.h5",
            "1024-wide",
            "resnet50_trunc",
            "256-wide",
            "'conch'",
            "m.safetensors",
        ] {
            assert!(e.contains(part), "{e}: lacks {part}");
        }
        // Same width, other encoder: refused; unknown encoder on either side: width only.
        let other = FeatureKind::from_record(256, Some("uni".into()));
        assert!(!want.accepts(&other));
        assert!(want.accepts(&FeatureKind::from_record(256, None)));
        let unknown = FeatureKind {
            width: 256,
            encoder: None,
        };
        assert!(unknown.accepts(&other));
        assert!(!unknown.accepts(&found));
    }

    #[test]
    fn every_slide_model_of_the_registry_names_its_input_width() {
        for arch in gimp_models::REGISTRY {
            let cfg = (arch.default_config)(
                gimp_models::arch::Dims {
                    features: 37,
                    genes: 11,
                },
                2,
            );
            let want = arch.input.reads_slides().then_some(37);
            assert_eq!(config_input_width(&cfg), want, "{}: {cfg}", arch.name);
        }
    }

    #[test]
    fn the_expected_kind_comes_from_the_record_else_the_config() {
        let mut info = BTreeMap::new();
        assert_eq!(
            FeatureKind::expected(Some(&info), &json!({"aggregator": {"d_in": 64, "dim": 8}})),
            Some(FeatureKind {
                width: 64,
                encoder: None
            })
        );
        info.insert(
            INFO_KEY.to_string(),
            r#"{"width":1024,"encoder":"resnet50_trunc"}"#.to_string(),
        );
        assert_eq!(
            FeatureKind::expected(Some(&info), &json!({"d_in": 64})),
            Some(FeatureKind::from_record(1024, None))
        );
        assert_eq!(FeatureKind::expected(None, &json!({"n_genes": 5})), None);
    }
}
