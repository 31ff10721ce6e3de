//! The browser API used by the widget's Web Worker (wasm only).
//!
//! Every fallible call returns a `JsError` whose message is the crate's own, written to be
//! shown to the shopper as it is (e.g. "the file is empty").

use std::borrow::Cow;
use std::cell::RefCell;

use image::RgbImage;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::catalog::Product;
use crate::colour;
use crate::index::{ColourQuery, Filter, Hit, Index};
use crate::model::{self, sha256_hex, Embedder};
use crate::preprocess::{self, DecodeLimits, ImageError};
use crate::Error;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Starts `threads` Web Workers sharing this module's memory (the multi-threaded module only;
/// its Promise resolves when they run). Then [`use_thread_pool`] hands tract's work to them.
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// Runs tract's matrix products on the pool `initThreadPool` started. Called after its Promise
/// resolves: before that, rayon's global pool would try to spawn threads wasm cannot.
#[cfg(feature = "threads")]
#[wasm_bindgen(js_name = useThreadPool)]
pub fn use_thread_pool() {
    use tract_linalg::multithread::{set_default_executor, Executor};
    set_default_executor(Executor::RayonGlobal);
    // wasm cannot read the cache sizes, so tract splits a matrix product whose operands pass
    // 1.5 MB in one chunk per thread: when another process slows one core, the other thread
    // idles at the end. Four per thread let it take up the slack (A/B, two threads,
    // ResNet-18 int8: 1.01-1.14x faster; eight were slower than four).
    tract_linalg::knobs::TRACT_MMM_CHUNKS_PER_THREAD.set(Some(4));
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
    /// The last photo, decoded and upright, so a new region of it is searched without decoding.
    photo: Option<RgbImage>,
    /// The colour of the region last prepared for the GPU path, until its embedding comes back.
    prepared_colour: Option<colour::ColourDescriptor>,
    /// What was last searched, so a filter or colour-weight change searches again without the model.
    query: Option<Query>,
    /// The last answer, to give again once a ranged catalog's details of its products are loaded.
    last_answer: RefCell<Option<Answer>>,
}

/// A search's answer before it is turned into the page's objects.
struct Answer {
    like: Option<usize>,
    hits: Vec<Hit>,
    timings: Timings,
}

struct Query {
    embedding: Vec<f32>,
    colour: colour::ColourDescriptor,
    /// What the page is told of that colour, worked out once: naming it scans the index.
    shown_colour: Option<QueryColour>,
}

#[derive(Serialize)]
struct SearchResult<'a> {
    product: &'a Product,
    score: f32,
}

/// The searched photo's colour, for the widget's chip.
#[derive(Serialize)]
struct QueryColour {
    /// The catalog's name for it (see [`Index::search_photo`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The garment's main colour as 8-bit sRGB.
    rgb: [u8; 3],
}

#[derive(Clone, Serialize)]
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
    /// For a photo search: the photo's colour.
    #[serde(skip_serializing_if = "Option::is_none")]
    colour: Option<&'a QueryColour>,
    timings: Timings,
}

/// A region of a photo as fractions of its width and height: `[x, y, width, height]`.
fn region_of(photo: &RgbImage, region: &[f32]) -> Result<RgbImage, JsError> {
    let &[x, y, w, h] = region else {
        return Err(JsError::new("a photo region is [x, y, width, height]"));
    };
    let inside = |start: f32, size: f32| (0.0..1.0).contains(&start) && size > 0.0 && start + size <= 1.0 + 1e-4;
    if !(inside(x, w) && inside(y, h)) {
        return Err(JsError::new(&format!(
            "the region [{x}, {y}, {w}, {h}] is not inside the photo (fractions from 0 to 1)"
        )));
    }
    let (width, height) = photo.dimensions();
    let pixels = |fraction: f32, side: u32| (fraction * side as f32).round() as u32;
    let (left, top) = (pixels(x, width).min(width - 1), pixels(y, height).min(height - 1));
    let region_width = pixels(w, width).clamp(1, width - left);
    let region_height = pixels(h, height).clamp(1, height - top);
    Ok(image::imageops::crop_imm(photo, left, top, region_width, region_height).to_image())
}

/// A byte range of the lists file for JS: `[start, end)` as numbers, exact below 2^53.
fn to_f64_pair(range: std::ops::Range<u64>) -> Vec<f64> {
    vec![range.start as f64, range.end as f64]
}

/// List numbers for JS (a `Uint32Array`).
fn to_u32(lists: Vec<usize>) -> Vec<u32> {
    lists.into_iter().map(|list| list as u32).collect()
}

/// A colour weight from the page: 0 (shape only) when absent or not a number.
fn clamp_colour_weight(weight: Option<f32>) -> f32 {
    weight.filter(|w| w.is_finite()).map_or(0.0, |w| w.clamp(0.0, 1.0))
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
            photo: None,
            prepared_colour: None,
            query: None,
            last_answer: RefCell::new(None),
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

    /// Whether the catalog holds its products' colours, so searches can match by colour.
    pub fn has_colours(&self) -> bool {
        self.index.has_colours()
    }

    /// The embedding of a photo file's bytes.
    pub fn embed(&self, photo_bytes: &[u8]) -> Result<Vec<f32>, JsError> {
        self.embedder()?
            .embed_photo(photo_bytes, &DecodeLimits::default())
            .map_err(js_error)
    }

    /// Decodes a photo file and keeps it as the photo that [`Lens::prepare`] and
    /// [`Lens::search_region`] take regions of.
    pub fn open_photo(&mut self, photo_bytes: &[u8]) -> Result<(), JsError> {
        self.photo = None;
        self.photo =
            Some(preprocess::decode(photo_bytes, &DecodeLimits::default()).map_err(|e| js_error(Error::from(e)))?);
        Ok(())
    }

    fn open_region(&self, region: Option<Vec<f32>>) -> Result<(Vec<f32>, colour::ColourDescriptor), JsError> {
        let spec = &self.embedder()?.info().input;
        let photo = self
            .photo
            .as_ref()
            .ok_or_else(|| JsError::new("there is no photo to search"))?;
        let part = match region {
            Some(region) => Cow::Owned(region_of(photo, &region)?),
            None => Cow::Borrowed(photo),
        };
        Ok((preprocess::to_tensor(&part, spec), colour::describe(&part)))
    }

    /// Searches a new photo's embedding and colour, and keeps them with the colour's name for
    /// searching again (a filter or colour-weight change keeps the named colour).
    fn search_new_photo(
        &mut self,
        embedding: Vec<f32>,
        colour: colour::ColourDescriptor,
        k: usize,
        filter: &Filter,
        colour_weight: Option<f32>,
    ) -> Vec<Hit> {
        let blend = ColourQuery {
            histogram: &colour.histogram,
            weight: clamp_colour_weight(colour_weight),
        };
        let (hits, name) = self.index.search_photo(&embedding, blend, k, filter);
        let shown_colour = colour.dominant.first().map(|main| QueryColour {
            name: name.map(str::to_owned),
            rgb: main.rgb(),
        });
        self.query = Some(Query {
            embedding,
            colour,
            shown_colour,
        });
        hits
    }

    /// The open photo, or a `[x, y, width, height]` region of it, as the model's prepared
    /// 1x3xSxS input (for the GPU path, whose embedding then goes to `search_embedding`).
    pub fn prepare(&mut self, region: Option<Vec<f32>>) -> Result<Vec<f32>, JsError> {
        let (tensor, colour) = self.open_region(region)?;
        self.prepared_colour = Some(colour);
        Ok(tensor)
    }

    /// The embedding of a prepared input on tract (the GPU path checks itself against it).
    pub fn run_tensor(&self, input: &[f32]) -> Result<Vec<f32>, JsError> {
        self.embedder()?.embed_tensor(input.to_vec()).map_err(js_error)
    }

    /// `search` for the input last prepared, whose embedding was computed elsewhere (the GPU
    /// path), with the times it took.
    #[allow(clippy::too_many_arguments)]
    pub fn search_embedding(
        &mut self,
        embedding: Vec<f32>,
        k: usize,
        filter: Option<String>,
        decode_ms: f64,
        embed_ms: f64,
        colour_weight: Option<f32>,
    ) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        let dims = self.embedder()?.info().dims;
        if embedding.len() != dims {
            return Err(JsError::new(&format!(
                "the embedding has {} values, the model's have {dims}",
                embedding.len()
            )));
        }
        let colour = self
            .prepared_colour
            .take()
            .ok_or_else(|| JsError::new("no photo was prepared for this embedding"))?;
        let started = performance_now();
        let hits = self.search_new_photo(embedding, colour, k, &filter, colour_weight);
        let search_ms = performance_now() - started;
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

    /// `{results: [{product, score}], colour: {name?, rgb}, timings: {decode_ms, embed_ms,
    /// search_ms}}`, best first. `filter` is the JSON of `{categories, colours, brands, min_price,
    /// max_price, in_stock}`, each optional. `colour_weight` (0 to 1, default 0) is how much the
    /// photo's colour counts next to its shape, when the catalog has colours.
    pub fn search(
        &mut self,
        photo_bytes: &[u8],
        k: usize,
        filter: Option<String>,
        colour_weight: Option<f32>,
    ) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        self.embedder()?;
        let started = performance_now();
        self.open_photo(photo_bytes)?;
        let opened_ms = performance_now() - started;
        let (hits, mut timings) = self.search_photo(None, k, &filter, colour_weight)?;
        timings.decode_ms += opened_ms;
        self.respond(None, &hits, timings)
    }

    /// [`Lens::search`] on a `[x, y, width, height]` region (fractions) of the open photo, or
    /// all of it; decodes nothing.
    pub fn search_region(
        &mut self,
        region: Option<Vec<f32>>,
        k: usize,
        filter: Option<String>,
        colour_weight: Option<f32>,
    ) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        let (hits, timings) = self.search_photo(region, k, &filter, colour_weight)?;
        self.respond(None, &hits, timings)
    }

    fn search_photo(
        &mut self,
        region: Option<Vec<f32>>,
        k: usize,
        filter: &Filter,
        colour_weight: Option<f32>,
    ) -> Result<(Vec<Hit>, Timings), JsError> {
        let started = performance_now();
        let (tensor, colour) = self.open_region(region)?;
        let prepared = performance_now();
        let embedding = self.embedder()?.embed_tensor(tensor).map_err(js_error)?;
        let embedded = performance_now();
        let hits = self.search_new_photo(embedding, colour, k, filter, colour_weight);
        let timings = Timings {
            decode_ms: prepared - started,
            embed_ms: embedded - prepared,
            search_ms: performance_now() - embedded,
        };
        Ok((hits, timings))
    }

    fn search_query(&self, k: usize, filter: &Filter, colour_weight: Option<f32>) -> Result<Vec<Hit>, JsError> {
        let query = self
            .query
            .as_ref()
            .ok_or_else(|| JsError::new("there is no photo to search again"))?;
        let colour = ColourQuery {
            histogram: &query.colour.histogram,
            weight: clamp_colour_weight(colour_weight),
        };
        Ok(self.index.search_with_colour(&query.embedding, Some(colour), k, filter))
    }

    /// Searches the last photo again with another `k`, filter or colour weight; no decoding, no model.
    pub fn refine(&self, k: usize, filter: Option<String>, colour_weight: Option<f32>) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        let started = performance_now();
        let hits = self.search_query(k, &filter, colour_weight)?;
        self.respond_searched(None, &hits, started)
    }

    /// "More like this": `{product, results, timings}`, the products most like the one with
    /// `product_id`, itself excluded. Needs no model.
    pub fn similar(
        &self,
        product_id: &str,
        k: usize,
        filter: Option<String>,
        colour_weight: Option<f32>,
    ) -> Result<JsValue, JsError> {
        let filter = parse_filter(filter)?;
        let product = self
            .index
            .position(product_id)
            .ok_or_else(|| JsError::new(&format!("the catalog has no product with id {product_id:?}")))?;
        let started = performance_now();
        let hits = self
            .index
            .similar_with_colour(product, clamp_colour_weight(colour_weight), k, &filter);
        self.respond_searched(Some(product), &hits, started)
    }

    /// Whether the catalog is ranged: its lists load as searches need them ([`Lens::load_block`]).
    pub fn is_ranged(&self) -> bool {
        self.index.is_ranged()
    }

    /// `[start, end)`: where block `block` (as the `blocks_for_*` functions number them: lists,
    /// then refinement blocks) lies in the lists file.
    pub fn block_range(&self, block: usize) -> Result<Vec<f64>, JsError> {
        let range = self
            .index
            .block_range(block)
            .ok_or_else(|| JsError::new(&format!("the catalog has no block {block} in its lists file")))?;
        Ok(to_f64_pair(range))
    }

    /// Loads block `block`, refusing one that is not the block the index vouches for.
    pub fn load_block(&mut self, block: usize, bytes: &[u8]) -> Result<(), JsError> {
        self.index
            .load_block(block, bytes)
            .map_err(|e| js_error(Error::from(e)))
    }

    /// Loads every list from the whole lists file (when the host ignores Range requests).
    pub fn load_lists_file(&mut self, file: &[u8]) -> Result<(), JsError> {
        self.index.load_lists_file(file).map_err(|e| js_error(Error::from(e)))
    }

    /// The blocks to load next before `search_embedding` can search `embedding` with the colour
    /// of the input last prepared (empty when whole, or when all are loaded): load them and ask
    /// again until none are left. First the lists a search scans, then the refinement blocks
    /// of its best candidates.
    pub fn blocks_for_embedding(
        &self,
        embedding: &[f32],
        k: usize,
        filter: Option<String>,
        colour_weight: Option<f32>,
    ) -> Result<Vec<u32>, JsError> {
        let filter = parse_filter(filter)?;
        let colour = self.prepared_colour.as_ref().map(|colour| ColourQuery {
            histogram: &colour.histogram,
            weight: clamp_colour_weight(colour_weight),
        });
        Ok(to_u32(self.index.blocks_to_load(embedding, colour, k, &filter, None)))
    }

    /// The blocks to load next before `refine` can search the last photo again.
    pub fn blocks_for_refine(
        &self,
        k: usize,
        filter: Option<String>,
        colour_weight: Option<f32>,
    ) -> Result<Vec<u32>, JsError> {
        let filter = parse_filter(filter)?;
        Ok(self.query.as_ref().map_or_else(Vec::new, |query| {
            let colour = ColourQuery {
                histogram: &query.colour.histogram,
                weight: clamp_colour_weight(colour_weight),
            };
            to_u32(
                self.index
                    .blocks_to_load(&query.embedding, Some(colour), k, &filter, None),
            )
        }))
    }

    /// The blocks to load next before `similar` can answer for the product with `product_id`:
    /// its own list and refinement block first (its stored vector is the query), then those
    /// that query needs.
    pub fn blocks_for_similar(
        &self,
        product_id: &str,
        k: usize,
        filter: Option<String>,
        colour_weight: Option<f32>,
    ) -> Result<Vec<u32>, JsError> {
        let filter = parse_filter(filter)?;
        Ok(self.index.position(product_id).map_or_else(Vec::new, |product| {
            to_u32(
                self.index
                    .blocks_to_load_similar(product, clamp_colour_weight(colour_weight), k, &filter),
            )
        }))
    }

    /// The pages of product details that the last answer's products need (none unless ranged):
    /// fetch them ([`Lens::page_range`], [`Lens::load_page`]), then take [`Lens::answer_again`].
    pub fn pages_for_answer(&self) -> Vec<u32> {
        let last = self.last_answer.borrow();
        let Some(answer) = last.as_ref() else {
            return Vec::new();
        };
        let shown: Vec<usize> = answer
            .like
            .into_iter()
            .chain(answer.hits.iter().map(|hit| hit.product))
            .collect();
        to_u32(self.index.pages_to_load(&shown))
    }

    /// `[start, end)`: where page `page` of the product details lies in the lists file.
    pub fn page_range(&self, page: usize) -> Result<Vec<f64>, JsError> {
        let range = self
            .index
            .page_range(page)
            .ok_or_else(|| JsError::new(&format!("the catalog has no page {page} of product details")))?;
        Ok(to_f64_pair(range))
    }

    /// Loads page `page` of the product details, refusing one the index does not vouch for.
    pub fn load_page(&mut self, page: usize, bytes: &[u8]) -> Result<(), JsError> {
        self.index.load_page(page, bytes).map_err(|e| js_error(Error::from(e)))
    }

    /// The last answer again, with the product details loaded since.
    pub fn answer_again(&self) -> Result<JsValue, JsError> {
        // Taken out, as answering stores it again.
        let answer = self
            .last_answer
            .take()
            .ok_or_else(|| JsError::new("nothing was searched yet"))?;
        self.respond(answer.like, &answer.hits, answer.timings)
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
        *self.last_answer.borrow_mut() = Some(Answer {
            like,
            hits: hits.to_vec(),
            timings: timings.clone(),
        });
        let products = self.index.products();
        // "More like this" is about a product, not the photo searched before it.
        let colour = match like {
            Some(_) => None,
            None => self.query.as_ref().and_then(|query| query.shown_colour.as_ref()),
        };
        to_js(&SearchResponse {
            product: like.map(|product| &products[product]),
            colour,
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
