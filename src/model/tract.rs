//! The tract backend: runs on every target, wasm SIMD included.

use std::collections::HashMap;
use std::sync::Arc;

use tract_nnef::internal::DimLike;
use tract_nnef::prelude::*;

use super::{ModelInfo, META_ARCH, META_INPUT, META_SOURCE_SHA256};
use crate::preprocess::InputSpec;
use crate::{Error, Result};

pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    info: ModelInfo,
}

pub(super) fn model_error(context: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Model(format!("{context}: {e:#}"))
}

/// A text property of a model: importer metadata read from ONNX keeps its ONNX key prefix,
/// and the compiled NNEF keeps the keys it was written with.
pub(super) fn property(properties: &HashMap<String, Arc<Tensor>>, key: &str) -> Option<String> {
    let value = properties
        .get(&format!("onnx.metadata_props.{key}"))
        .or_else(|| properties.get(key))?;
    value.to_plain_array_view::<String>().ok()?.iter().next().cloned()
}

/// How to prepare the model's input, from the metadata `otlens import` writes.
pub(super) fn input_spec(properties: &HashMap<String, Arc<Tensor>>) -> Result<InputSpec> {
    let json = property(properties, META_INPUT).ok_or_else(|| {
        Error::Model(format!(
            "the model has no {META_INPUT} metadata; import it with `otlens import`"
        ))
    })?;
    serde_json::from_str(&json).map_err(|e| Error::Model(format!("bad {META_INPUT} metadata: {e}")))
}

impl TractModel {
    /// Reads an ONNX model written by `otlens import`. Native only: the widget links no ONNX parser.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_onnx(onnx: &[u8]) -> Result<TractModel> {
        let model = super::compile::onnx_to_typed(onnx)?;
        TractModel::prepare(model, super::sha256_hex(onnx))
    }

    /// Reads a model compiled by `otlens compile` (NNEF in a tar, gzipped or not), refusing it
    /// before optimisation when it was not compiled from the ONNX file `expected_source` names.
    pub fn from_nnef(archive: &[u8], expected_source: Option<&str>) -> Result<TractModel> {
        let model = super::reader::read(archive).map_err(model_error("not a readable compiled model"))?;
        let source = property(&model.properties, META_SOURCE_SHA256).ok_or_else(|| {
            Error::Model(format!(
                "the model has no {META_SOURCE_SHA256} property; compile it with `otlens compile`"
            ))
        })?;
        if let Some(expected) = expected_source {
            super::check_identity(expected, &source)?;
        }
        TractModel::prepare(model, source)
    }

    /// Optimises a typed model for this machine. `sha256` names the imported ONNX file it
    /// came from: the identity an index records.
    fn prepare(model: TypedModel, sha256: String) -> Result<TractModel> {
        let input = input_spec(&model.properties)?;
        let arch = property(&model.properties, META_ARCH).unwrap_or_else(|| "unknown".into());
        let size = input.size as usize;
        let expected = f32::fact([1, 3, size, size]);
        let takes = model.input_fact(0).map_err(model_error("the model has no input"))?;
        if *takes != expected {
            return Err(Error::Model(format!(
                "the model takes {takes:?}, its metadata says {expected:?}"
            )));
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(model_error("cannot prepare the model"))?;
        let dims = plan
            .model()
            .output_fact(0)
            .ok()
            .and_then(|fact| fact.shape.volume().to_usize().ok());
        let dims = dims.ok_or_else(|| Error::Model("the embedding output has no fixed size".into()))?;
        Ok(TractModel {
            plan,
            info: ModelInfo {
                arch,
                input,
                dims,
                sha256,
            },
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn run(&self, input: Vec<f32>) -> Result<Vec<Vec<f32>>> {
        // Once the multi-threaded module has handed tract rayon's pool (`web::use_thread_pool`),
        // inference runs on a thread of it. Run from the widget's worker, each parallel operator
        // was handed to the pool while that worker waited, and the serial operators between them
        // ran slower than without a pool (depthwise 4.1 -> 6.8 ms): three threads on two cores.
        // Two threads, a photo: EfficientNet-Lite0 int8 weights 28.5-30.0 ms -> 22.5-23.4,
        // ResNet-18 int8 67.3 -> 58.6. A panic on a pool thread traps that thread alone and
        // leaves this one waiting; so only inference goes there, on tensors `preprocess` made.
        // Decoding, which meets the shopper's files, stays on this thread.
        #[cfg(feature = "threads")]
        if matches!(
            tract_linalg::multithread::current_tract_executor(),
            tract_linalg::multithread::Executor::RayonGlobal
        ) {
            return with_pool_awake(|| self.run_here(input));
        }
        self.run_here(input)
    }

    fn run_here(&self, input: Vec<f32>) -> Result<Vec<Vec<f32>>> {
        let size = self.info.input.size as usize;
        let tensor = Tensor::from_shape(&[1, 3, size, size], &input).map_err(model_error("bad input"))?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(model_error("inference failed"))?;
        outputs
            .iter()
            .map(|output| {
                let view = output
                    .to_plain_array_view::<f32>()
                    .map_err(model_error("output is not f32"))?;
                Ok(view.iter().copied().collect())
            })
            .collect()
    }
}

/// Runs `inference` on a thread of rayon's pool while the pool's other threads poll for its
/// parallel work instead of sleeping between operators.
///
/// An idle rayon thread soon sleeps on a futex, which in a browser is `Atomics.wait`; each of the
/// model's parallel operators (66 in EfficientNet-Lite0) then began with waking it. Polling
/// through the whole photo cut two threads' time to 0.90x (EfficientNet-Lite0 int8 weights,
/// 22 -> 20 ms) and 0.85x (EfficientNet-Lite0 int8) in Chromium, in runs alternating with the
/// sleeping pool; ResNet-18 fp32, whose operators are few and long, 0.98x.
///
/// A poller stops when the photo is done, or after 2^18 idle polls in a row (about 25 ms in
/// Chromium here, far longer than any serial stretch of a model) so that a pool whose inference
/// thread trapped does not keep a core busy for good.
#[cfg(feature = "threads")]
fn with_pool_awake<R: Send>(inference: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    const IDLE_POLLS_BEFORE_SLEEP: u32 = 1 << 18;
    let done = &AtomicBool::new(false);
    rayon::scope(|scope| {
        let inference_thread = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(move |_| {
                // The inference thread may pop a poller itself while it waits for stolen work.
                if rayon::current_thread_index() == inference_thread {
                    return;
                }
                let mut idle = 0;
                while !done.load(Ordering::Relaxed) && idle < IDLE_POLLS_BEFORE_SLEEP {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => idle = 0,
                        _ => idle += 1,
                    }
                }
            });
        }
        let result = inference();
        done.store(true, Ordering::Relaxed);
        result
    })
}
