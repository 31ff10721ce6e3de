//! The browser API used by the widget's Web Worker (wasm only).
//!
//! Every fallible call returns a `JsError` whose message is the crate's own, written to be
//! shown to the shopper as it is (e.g. "the file is empty").

use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::catalog::Product;
use crate::index::{Filter, Hit, Index};
use crate::model::{self, sha256_hex, Embedder};
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

/// A compiled model file lowered for the WebGPU module (`GpuEmbedder.create` in
/// `otlens_gpu.js`). Only the widget's GPU path calls it, once, when the browser has an adapter.
#[wasm_bindgen(js_name = gpuPlan)]
pub fn gpu_plan(model_bytes: &[u8]) -> Result<Vec<u8>, JsError> {
    Ok(model::gpu::lower(model_bytes).map_err(js_error)?.to_bytes())
}

/// An embedding model on its own: photo or tensor in, embedding out.
#[wasm_bindgen]
pub struct Model {
    embedder: Embedder,
}

#[wasm_bindgen]
impl Model {
    /// Loads a model compiled by `otlens compile` or `otlens build-index` (`.nnef.tgz`).
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

    /// A photo file's bytes as the model's prepared 1x3xSxS input.
    pub fn prepare(&self, photo_bytes: &[u8]) -> Result<Vec<f32>, JsError> {
        preprocess::preprocess(photo_bytes, &self.embedder.info().input, &DecodeLimits::default())
            .map_err(|e| js_error(Error::from(e)))
    }

    /// The embedding of an already prepared 1x3xSxS input (the benchmark feeds every
    /// runtime the same tensor).
    pub fn run_tensor(&self, input: &[f32]) -> Result<Vec<f32>, JsError> {
        self.embedder.embed_tensor(input.to_vec()).map_err(js_error)
    }
}

/// A catalog index, and the model it was built with once loaded: photo in, products out.
///
/// The index loads first, so "more like this" works before (or without) the model.
#[wasm_bindgen]
pub struct Lens {
    index: Index,
    embedder: Option<Embedder>,
    /// The last searched photo's embedding, so a filter change searches again without the model.
    query: Option<Vec<f32>>,
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
    /// For "more like this": the product the results are like.
    #[serde(skip_serializing_if = "Option::is_none")]
    product: Option<&'a Product>,
    results: Vec<SearchResult<'a>>,
    timings: Timings,
}

/// A filter as JSON text (`undefined` for none). JSON rather than a JS object, because
/// serde-wasm-bindgen reads only the fields it knows, and a misspelt field must not pass silently.
fn parse_filter(filter: Option<String>) -> Result<Filter, JsError> {
    filter.map_or(Ok(Filter::ANY), |json| {
        serde_json::from_str(&json).map_err(|e| JsError::new(&format!("the search filter is not valid: {e}")))
    })
}

#[wasm_bindgen]
impl Lens {
    /// Reads a catalog index, refusing a damaged or wrong-version file.
    #[wasm_bindgen(constructor)]
    pub fn new(index_bytes: &[u8]) -> Result<Lens, JsError> {
        let index = Index::from_bytes(index_bytes).map_err(|e| js_error(Error::from(e)))?;
        Ok(Lens {
            index,
            embedder: None,
            query: None,
        })
    }

    /// Loads the model, refusing one the index was not built with.
    pub fn load_model(&mut self, model_bytes: &[u8]) -> Result<(), JsError> {
        let embedder = Embedder::for_index(model_bytes, &self.index.model_sha256()).map_err(js_error)?;
        self.embedder = Some(embedder);
        Ok(())
    }

    fn embedder(&self) -> Result<&Embedder, JsError> {
        self.embedder
            .as_ref()
            .ok_or_else(|| JsError::new("the model is not loaded yet"))
    }

    /// `{arch, input: {size, mean, std}, dims, sha256}` of the model.
    pub fn info(&self) -> Result<JsValue, JsError> {
        to_js(self.embedder()?.info())
    }

    /// Number of products in the catalog.
    #[wasm_bindgen(js_name = len)]
    pub fn product_count(&self) -> usize {
        self.index.len()
    }

    /// `{categories, colours, brands: [{value, products}], price?: {min, max}, currency, sold_out}`.
    pub fn facets(&self) -> Result<JsValue, JsError> {
        to_js(&self.index.facets())
    }

    /// The embedding of a photo file's bytes.
    pub fn embed(&self, photo_bytes: &[u8]) -> Result<Vec<f32>, JsError> {
        self.embedder()?
            .embed_photo(photo_bytes, &DecodeLimits::default())
            .map_err(js_error)
    }

    /// A photo file's bytes as the model's prepared 1x3xSxS input (for the GPU path, whose
    /// embedding then goes to `search_embedding`).
    pub fn prepare(&self, photo_bytes: &[u8]) -> Result<Vec<f32>, JsError> {
        preprocess::preprocess(photo_bytes, &self.embedder()?.info().input, &DecodeLimits::default())
            .map_err(|e| js_error(Error::from(e)))
    }

    /// The embedding of a prepared input on tract (the GPU path checks itself against it).
    pub fn run_tensor(&self, input: &[f32]) -> Result<Vec<f32>, JsError> {
        self.embedder()?.embed_tensor(input.to_vec()).map_err(js_error)
    }

    /// `search` for an embedding computed elsewhere (the GPU path), with the times it took.
    pub fn search_embedding(
        &mut self,
        embedding: Vec<f32>,
        k: usize,
        filter: Option<String>,
        decode_ms: f64,
        embed_ms: f64,
    ) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        let dims = self.embedder()?.info().dims;
        if embedding.len() != dims {
            return Err(JsError::new(&format!(
                "the embedding has {} values, the model's have {dims}",
                embedding.len()
            )));
        }
        let started = performance_now();
        let hits = self.index.search(&embedding, k, &filter);
        let search_ms = performance_now() - started;
        self.query = Some(embedding);
        self.respond(
            None,
            &hits,
            Timings {
                decode_ms,
                embed_ms,
                search_ms,
            },
        )
    }

    /// `{results: [{product, score}], timings: {decode_ms, embed_ms, search_ms}}`, best first.
    /// `filter` is the JSON of `{categories, colours, brands, min_price, max_price, in_stock}`, each
    /// optional.
    pub fn search(&mut self, photo_bytes: &[u8], k: usize, filter: Option<String>) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        let embedder = self.embedder()?;
        let started = performance_now();
        let tensor = preprocess::preprocess(photo_bytes, &embedder.info().input, &DecodeLimits::default())
            .map_err(|e| js_error(Error::from(e)))?;
        let decoded = performance_now();
        let embedding = embedder.embed_tensor(tensor).map_err(js_error)?;
        let embedded = performance_now();
        let hits = self.index.search(&embedding, k, &filter);
        let searched = performance_now();
        self.query = Some(embedding);
        self.respond(
            None,
            &hits,
            Timings {
                decode_ms: decoded - started,
                embed_ms: embedded - decoded,
                search_ms: searched - embedded,
            },
        )
    }

    /// Searches the last photo again with another `k` or filter; no decoding, no model.
    pub fn refine(&self, k: usize, filter: Option<String>) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        let query = self
            .query
            .as_ref()
            .ok_or_else(|| JsError::new("there is no photo to search again"))?;
        let started = performance_now();
        let hits = self.index.search(query, k, &filter);
        self.respond_searched(None, &hits, started)
    }

    /// "More like this": `{product, results, timings}`, the products most like the one with
    /// `product_id`, itself excluded. Needs no model.
    pub fn similar(&self, product_id: &str, k: usize, filter: Option<String>) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        let product = self
            .index
            .position(product_id)
            .ok_or_else(|| JsError::new(&format!("the catalog has no product with id {product_id:?}")))?;
        let started = performance_now();
        let hits = self.index.similar(product, k, &filter);
        self.respond_searched(Some(product), &hits, started)
    }

    fn respond_searched(&self, like: Option<usize>, hits: &[Hit], started: f64) -> Result<JsValue, JsError> {
        let search_ms = performance_now() - started;
        self.respond(
            like,
            hits,
            Timings {
                decode_ms: 0.0,
                embed_ms: 0.0,
                search_ms,
            },
        )
    }

    fn respond(&self, like: Option<usize>, hits: &[Hit], timings: Timings) -> Result<JsValue, JsError> {
        let products = self.index.products();
        to_js(&SearchResponse {
            product: like.map(|product| &products[product]),
            results: hits
                .iter()
                .map(|hit| SearchResult {
                    product: &products[hit.product],
                    score: hit.score,
                })
                .collect(),
            timings,
        })
    }
}
