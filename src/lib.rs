//! otlens: visual search for clothing shops that runs in the shopper's browser.
//!
//! Layers, bottom up (each compiles for wasm and native unless marked):
//! - [`preprocess`]: photo bytes -> bounded decode -> upright RGB -> model input tensor.
//! - [`model`]: ONNX embedding model execution (tract).
//! - [`colour`]: the garment's colour in a photo (background suppressed) and its name.
//! - [`catalog`]: product metadata shared by the index and the widget.
//! - [`index`]: the versioned binary catalog index and top-k search.
//! - `web` (wasm only): the wasm-bindgen API used by the widget's worker.
//! - `import`, `train`, `cli`, `progress` (native only): the companion binary's model importer,
//!   training and evaluation, commands, and their progress on a terminal or in a log.

pub mod catalog;
pub mod colour;
pub mod error;
pub mod index;
pub mod model;
pub mod preprocess;

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
#[cfg(not(target_arch = "wasm32"))]
pub mod import;
#[cfg(not(target_arch = "wasm32"))]
pub mod progress;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
