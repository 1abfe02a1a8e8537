//! The crate's error: a file's problem (gimp-io's, which names the file, line and field), a
//! tensor operation's, a message naming the setting at fault, or a stage stopped on request.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Io(#[from] gimp_io::DataError),
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Msg(String),
    /// A stage stopped on request after this many epochs (its state is saved for `--resume`).
    #[error("stopped after epoch {0}")]
    Stopped(usize),
}

pub type Result<T> = std::result::Result<T, TrainError>;
