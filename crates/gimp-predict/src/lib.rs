//! From a raw slide to an answer ([`pipeline`]): tissue segmentation and patching, features from
//! the encoder the model was trained on ([`encoder`]; checked against the checkpoint's record
//! before anything runs), the model, class probabilities, per-patch scores aligned with the
//! coordinates, the heatmap, a QuPath GeoJSON file of tissue and scored patches ([`qupath`]),
//! and a per-slide record ([`record`]) that `gimp-view` shows.

pub mod encoder;
pub mod pipeline;
pub mod qupath;
pub mod record;

pub use encoder::SlideEncoder;
pub use pipeline::{Predictor, Progress, Stage};
pub use record::SlidePrediction;

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{0}")]
    Io(#[from] gimp_io::DataError),
    #[error("{0}")]
    Data(#[from] gimp_train::error::TrainError),
    #[error("{0}")]
    Patch(#[from] gimp_slide::batch::PatchError),
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, PredictError>;
