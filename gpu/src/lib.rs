//! otlens' WebGPU path: an embedding model run by WGSL compute kernels on `wgpu`.
//!
//! tract has no GPU backend, so the widget lowers the model it already runs (tract's graph of
//! the compiled model file) into a [`Plan`] of a dozen kernel kinds, and this crate runs it:
//! the browser's WebGPU on wasm, Vulkan natively (Mesa's lavapipe in CI). The widget loads it
//! as a second wasm module only when `navigator.gpu` yields an adapter, so shoppers without one
//! download none of it, and any failure sends the widget back to tract.

#[cfg(feature = "executor")]
mod executor;
mod fuse;
pub mod plan;
#[cfg(all(feature = "executor", target_arch = "wasm32"))]
mod web;

#[cfg(feature = "executor")]
pub use executor::GpuModel;
pub use plan::Plan;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no WebGPU adapter: {0}")]
    NoAdapter(String),
    #[error("the GPU refused the device: {0}")]
    Device(String),
    #[error("{0}")]
    InvalidPlan(String),
    /// Shader, pipeline or dispatch validation, or running out of GPU memory.
    #[error("the GPU reported an error: {0}")]
    Gpu(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("{0}")]
    Input(String),
}
