//! The WebGPU module's browser API (wasm only), used by the widget's worker.

use std::rc::Rc;

use wasm_bindgen::prelude::*;

use crate::{GpuModel, Plan};

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js_error(error: impl std::fmt::Display) -> JsError {
    JsError::new(&error.to_string())
}

/// An embedding model on the browser's GPU.
#[wasm_bindgen]
pub struct GpuEmbedder {
    // Shared with the queries in flight: a promise outlives the borrow of `self`.
    model: Rc<GpuModel>,
}

#[wasm_bindgen]
impl GpuEmbedder {
    /// Builds the model from the plan the main module's `Lens.gpuPlan()` writes. Rejects when
    /// the browser has no adapter, or the GPU refuses a kernel or runs out of memory.
    pub async fn create(plan: Vec<u8>) -> Result<GpuEmbedder, JsError> {
        let plan = Plan::from_bytes(&plan).map_err(js_error)?;
        let model = GpuModel::new(&plan).await.map_err(js_error)?;
        Ok(GpuEmbedder { model: Rc::new(model) })
    }

    /// The adapter's name, backend and kind (e.g. "SwiftShader Device (WebGpu, Cpu)").
    pub fn adapter(&self) -> String {
        self.model.adapter().to_string()
    }

    /// "f16" when the weights are stored as f16 (the adapter has shader-f16), else "f32".
    pub fn weights(&self) -> String {
        if self.model.f16_weights() { "f16" } else { "f32" }.to_string()
    }

    /// Kernel launches per image.
    #[wasm_bindgen(js_name = dispatchCount)]
    pub fn dispatch_count(&self) -> usize {
        self.model.dispatch_count()
    }

    /// Distinct kernels the model uses.
    #[wasm_bindgen(js_name = kernelCount)]
    pub fn kernel_count(&self) -> usize {
        self.model.kernel_count()
    }

    /// The embedding of a prepared 1x3xSxS input, as a `Promise<Float32Array>`.
    pub fn run(&self, input: Vec<f32>) -> js_sys::Promise {
        let model = self.model.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let embedding = model.run(&input).await.map_err(|e| JsValue::from(js_error(e)))?;
            Ok(js_sys::Float32Array::from(&embedding[..]).into())
        })
    }
}
