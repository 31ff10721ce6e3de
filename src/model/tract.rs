//! The tract backend: runs on every target, wasm SIMD included.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::DimLike;

use super::{sha256_hex, ModelInfo, META_ARCH, META_INPUT};
use crate::preprocess::InputSpec;
use crate::{Error, Result};

pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    info: ModelInfo,
}

fn model_error(context: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Model(format!("{context}: {e:#}"))
}

impl TractModel {
    pub fn from_bytes(onnx: &[u8]) -> Result<TractModel> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(model_error("not a readable ONNX model"))?;
        let property = |key: &str| -> Option<String> {
            let value = model.properties.get(&format!("onnx.metadata_props.{key}"))?;
            value.to_plain_array_view::<String>().ok()?.iter().next().cloned()
        };
        let input: InputSpec = match property(META_INPUT) {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| Error::Model(format!("bad {META_INPUT} metadata: {e}")))?
            }
            None => {
                return Err(Error::Model(format!(
                    "the model has no {META_INPUT} metadata; import it with `otlens import`"
                )))
            }
        };
        let arch = property(META_ARCH).unwrap_or_else(|| "unknown".into());
        let size = input.size as usize;
        let plan = model
            .with_input_fact(0, f32::fact([1, 3, size, size]).into())
            .and_then(|m| m.into_optimized())
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
                sha256: sha256_hex(onnx),
            },
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn run(&self, input: Vec<f32>) -> Result<Vec<Vec<f32>>> {
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
