//! The crate's error type: every failure a shopper or shop engineer can cause is a
//! typed variant with a message meant to be shown as it is.

use crate::index::IndexError;
use crate::preprocess::ImageError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("model: {0}")]
    Model(String),
    #[error("the index was built with model {index}, but the loaded model is {model}; rebuild the index or deploy the matching model")]
    ModelMismatch { index: String, model: String },
}
