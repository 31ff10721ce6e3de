//! The browser API used by the widget's Web Worker (wasm only).
//!
//! Every fallible call returns a `JsError` whose message is the crate's own, written to be
//! shown to the shopper as it is (e.g. "the file is empty").

use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::catalog::Product;
use crate::index::Index;
use crate::model::{sha256_hex, Embedder};
use crate::preprocess::{self, DecodeLimits, ImageError};
use crate::Error;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[wasm_bindgen]
extern "C" {
    // `performance` exists in windows, workers and Node alike; Date.now() is only ms-granular.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

fn js_error(error: impl std::fmt::Display) -> JsError {
    JsError::new(&error.to_string())
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsError> {
    serde_wasm_bindgen::to_value(value).map_err(js_error)
}

/// Lower-case hex sha256 of `bytes`, for pages where `crypto.subtle` is unavailable
/// (it exists only in secure contexts).
#[wasm_bindgen(js_name = sha256Hex)]
pub fn sha256_hex_js(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

/// Refuses a file too large to be a photo from its size alone, so the widget never reads a
/// multi-gigabyte file into memory just to be told so.
#[wasm_bindgen(js_name = checkPhotoSize)]
pub fn check_photo_size(bytes: f64) -> Result<(), JsError> {
    let limit = DecodeLimits::default().max_bytes;
    // Saturating: a file size beyond usize (4 GiB on wasm32) is simply "too large".
    let bytes = bytes as usize;
    if bytes > limit {
        return Err(js_error(ImageError::FileTooLarge { bytes, limit }));
    }
    Ok(())
}

/// An embedding model on its own: photo or tensor in, embedding out.
#[wasm_bindgen]
pub struct Model {
    embedder: Embedder,
}

#[wasm_bindgen]
impl Model {
    /// Loads an ONNX model file written by `otlens import`.
    #[wasm_bindgen(constructor)]
    pub fn new(model_bytes: &[u8]) -> Result<Model, JsError> {
        Ok(Model {
            embedder: Embedder::from_bytes(model_bytes).map_err(js_error)?,
        })
    }

    /// `{arch, input: {size, mean, std}, dims, sha256}`.
    pub fn info(&self) -> Result<JsValue, JsError> {
        to_js(self.embedder.info())
    }

    /// The embedding of a photo file's bytes.
    pub fn embed_photo(&self, photo_bytes: &[u8]) -> Result<Vec<f32>, JsError> {
        self.embedder
            .embed_photo(photo_bytes, &DecodeLimits::default())
            .map_err(js_error)
    }

    /// The embedding of an already prepared 1x3xSxS input (the benchmark feeds every
    /// runtime the same tensor).
    pub fn run_tensor(&self, input: &[f32]) -> Result<Vec<f32>, JsError> {
        self.embedder.embed_tensor(input.to_vec()).map_err(js_error)
    }
}

/// A catalog index with the model it was built with: photo in, products out.
#[wasm_bindgen]
pub struct Lens {
    embedder: Embedder,
    index: Index,
}

#[derive(Serialize)]
struct SearchResult<'a> {
    product: &'a Product,
    score: f32,
}

#[derive(Serialize)]
struct Timings {
    decode_ms: f64,
    embed_ms: f64,
    search_ms: f64,
}

#[derive(Serialize)]
struct SearchResponse<'a> {
    results: Vec<SearchResult<'a>>,
    timings: Timings,
}

#[wasm_bindgen]
impl Lens {
    /// Refuses a model and index that do not belong together, before the (slow) model load.
    #[wasm_bindgen(constructor)]
    pub fn new(model_bytes: &[u8], index_bytes: &[u8]) -> Result<Lens, JsError> {
        let index = Index::from_bytes(index_bytes).map_err(|e| js_error(Error::from(e)))?;
        let model_sha256 = sha256_hex(model_bytes);
        if index.model_sha256() != model_sha256 {
            return Err(js_error(Error::ModelMismatch {
                index: index.model_sha256(),
                model: model_sha256,
            }));
        }
        let embedder = Embedder::from_bytes(model_bytes).map_err(js_error)?;
        Ok(Lens { embedder, index })
    }

    /// `{arch, input: {size, mean, std}, dims, sha256}` of the model.
    pub fn info(&self) -> Result<JsValue, JsError> {
        to_js(self.embedder.info())
    }

    /// Number of products in the catalog.
    #[wasm_bindgen(js_name = len)]
    pub fn product_count(&self) -> usize {
        self.index.len()
    }

    /// The embedding of a photo file's bytes.
    pub fn embed(&self, photo_bytes: &[u8]) -> Result<Vec<f32>, JsError> {
        self.embedder
            .embed_photo(photo_bytes, &DecodeLimits::default())
            .map_err(js_error)
    }

    /// `{results: [{product, score}], timings: {decode_ms, embed_ms, search_ms}}`, best first.
    pub fn search(&self, photo_bytes: &[u8], k: usize) -> Result<JsValue, JsError> {
        let started = performance_now();
        let tensor = preprocess::preprocess(photo_bytes, &self.embedder.info().input, &DecodeLimits::default())
            .map_err(|e| js_error(Error::from(e)))?;
        let decoded = performance_now();
        let embedding = self.embedder.embed_tensor(tensor).map_err(js_error)?;
        let embedded = performance_now();
        let hits = self.index.search(&embedding, k);
        let searched = performance_now();
        let products = self.index.products();
        to_js(&SearchResponse {
            results: hits
                .iter()
                .map(|hit| SearchResult {
                    product: &products[hit.product],
                    score: hit.score,
                })
                .collect(),
            timings: Timings {
                decode_ms: decoded - started,
                embed_ms: embedded - decoded,
                search_ms: searched - embedded,
            },
        })
    }
}
