//! Embedding model execution.
//!
//! A model is an ONNX graph written by the companion importer: one input (1x3xSxS, f32,
//! normalised RGB), first output an L2-normalised embedding. How to prepare its input
//! travels inside the file as ONNX metadata, so the widget and the index builder can
//! never disagree about preprocessing. The widget runs the same graph compiled to NNEF
//! ([`compile`], native only), which keeps that metadata and names the ONNX file it came from.

#[cfg(not(target_arch = "wasm32"))]
mod compile;
pub mod gpu;
mod int8_weights;
mod reader;
mod tract;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::preprocess::{self, DecodeLimits, InputSpec};
use crate::{Error, Result};

#[cfg(not(target_arch = "wasm32"))]
pub use self::compile::compile;
pub use self::tract::TractModel;

/// ONNX metadata key holding the model's [`InputSpec`] as JSON.
pub const META_INPUT: &str = "otlens.input";
/// ONNX metadata key naming the architecture (e.g. `efficientnet-lite0`).
pub const META_ARCH: &str = "otlens.arch";
/// Compiled-model property: sha256 of the ONNX file it was compiled from.
pub const META_SOURCE_SHA256: &str = "otlens.source_sha256";

/// What the widget and the index need to know about a model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub arch: String,
    pub input: InputSpec,
    /// Length of the embedding (first output).
    pub dims: usize,
    /// Lower-case hex sha256 of the imported ONNX file (the one a compiled model came from):
    /// the index records it to refuse a mismatched pair.
    pub sha256: String,
}

/// Lower-case hex sha256, the form used in manifests, indexes and provenance files.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` as lower-case hex digits, two a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Photo in, embedding out.
pub struct Embedder {
    model: TractModel,
}

/// The first bytes of a gzip file: a compiled model is usually a gzipped tar.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether a model file is a compiled one (a tar, gzipped or not) rather than ONNX.
pub fn is_compiled(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC) || bytes.get(257..262) == Some(b"ustar")
}

impl Embedder {
    /// Loads and optimises a model file given as bytes: compiled (`.nnef.tgz`) anywhere,
    /// ONNX natively.
    pub fn from_bytes(bytes: &[u8]) -> Result<Embedder> {
        Self::load(bytes, None)
    }

    /// [`Embedder::from_bytes`] for the index built with the model whose sha256 is `index_sha256`:
    /// another model is refused before it is optimised, which is most of a load's time.
    pub fn for_index(bytes: &[u8], index_sha256: &str) -> Result<Embedder> {
        Self::load(bytes, Some(index_sha256))
    }

    fn load(bytes: &[u8], expected_sha256: Option<&str>) -> Result<Embedder> {
        let model = if is_compiled(bytes) {
            TractModel::from_nnef(bytes, expected_sha256)?
        } else {
            if let Some(expected) = expected_sha256 {
                check_identity(expected, &sha256_hex(bytes))?;
            }
            Self::from_uncompiled(bytes)?
        };
        Ok(Embedder { model })
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn from_uncompiled(onnx: &[u8]) -> Result<TractModel> {
        TractModel::from_onnx(onnx)
    }

    #[cfg(target_arch = "wasm32")]
    fn from_uncompiled(_: &[u8]) -> Result<TractModel> {
        Err(Error::Model(
            "not a compiled model: the widget runs the model-*.nnef.tgz that `otlens build-index` \
             writes (or `otlens compile` makes from an ONNX file)"
                .into(),
        ))
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

    /// A catalog photo's embedding as the index stores it: the mean direction of the photo's
    /// and its mirror image's. A shopper's garment faces either way, and the index is built
    /// once, offline, so the second pass costs the shopper nothing (In-shop val Recall@1 0.798
    /// -> 0.806 with the retrieval model).
    pub fn embed_catalog_photo(&self, photo: &RgbImage) -> Result<Vec<f32>> {
        let spec = &self.info().input;
        let plain = self.embed_tensor(preprocess::to_tensor(photo, spec))?;
        let mirrored = self.embed_tensor(preprocess::to_mirrored_tensor(photo, spec))?;
        Ok(mean_direction(&plain, &mirrored))
    }
}

/// The L2-normalised sum of two embeddings.
pub fn mean_direction(a: &[f32], b: &[f32]) -> Vec<f32> {
    let sum: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    sum.into_iter().map(|x| x / norm).collect()
}

/// Refuses a model other than the one an index was built with.
fn check_identity(index_sha256: &str, model_sha256: &str) -> Result<()> {
    if index_sha256 == model_sha256 {
        return Ok(());
    }
    Err(Error::ModelMismatch {
        index: index_sha256.to_string(),
        model: model_sha256.to_string(),
    })
}

/// Cosine similarity of two vectors (1.0 for identical directions).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}
