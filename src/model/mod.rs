//! Embedding model execution.
//!
//! A model file is an ONNX graph written by the companion importer: one input
//! (1x3xSxS, f32, normalised RGB), first output an L2-normalised embedding. How to
//! prepare its input travels inside the file as ONNX metadata, so the widget and the
//! index builder can never disagree about preprocessing.

mod tract;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::preprocess::{self, DecodeLimits, InputSpec};
use crate::{Error, Result};

pub use self::tract::TractModel;

/// ONNX metadata key holding the model's [`InputSpec`] as JSON.
pub const META_INPUT: &str = "otlens.input";
/// ONNX metadata key naming the architecture (e.g. `efficientnet-lite0`).
pub const META_ARCH: &str = "otlens.arch";

/// What the widget and the index need to know about a model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub arch: String,
    pub input: InputSpec,
    /// Length of the embedding (first output).
    pub dims: usize,
    /// Lower-case hex sha256 of the model file: the index records it to refuse a mismatched pair.
    pub sha256: String,
}

/// Lower-case hex sha256, the form used in manifests, indexes and provenance files.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Photo in, embedding out.
pub struct Embedder {
    model: TractModel,
}

impl Embedder {
    /// Loads and optimises an ONNX model file given as bytes.
    pub fn from_bytes(onnx: &[u8]) -> Result<Embedder> {
        Ok(Embedder {
            model: TractModel::from_bytes(onnx)?,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    /// Every output of the model for one prepared input tensor, flattened, in graph order.
    pub fn run(&self, input: Vec<f32>) -> Result<Vec<Vec<f32>>> {
        let size = self.info().input.size as usize;
        if input.len() != 3 * size * size {
            return Err(Error::Model(format!(
                "input has {} values, the model takes 3x{size}x{size}",
                input.len()
            )));
        }
        self.model.run(input)
    }

    /// The embedding of a prepared input tensor.
    pub fn embed_tensor(&self, input: Vec<f32>) -> Result<Vec<f32>> {
        self.run(input)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Model("the model has no output".into()))
    }

    /// The embedding of a photo file's bytes.
    pub fn embed_photo(&self, photo: &[u8], limits: &DecodeLimits) -> Result<Vec<f32>> {
        self.embed_tensor(preprocess::preprocess(photo, &self.info().input, limits)?)
    }
}

/// Cosine similarity of two vectors (1.0 for identical directions).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}
