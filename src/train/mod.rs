//! Offline training and evaluation of retrieval models (native only).
//!
//! photos + product ids ([`dataset`]) -> frozen-backbone features per augmented view,
//! cached ([`features`], [`augment`]) -> a projection head trained with a metric-learning
//! loss ([`head`]) -> written back into the ONNX model (`import::head`) ->
//! Recall@K and mAP@R ([`metrics`]) with curves ([`plot`]). Optionally a second stage
//! fine-tunes the backbone's last convolution with the head ([`tune`]).

pub mod augment;
pub mod dataset;
pub mod features;
pub mod head;
pub mod metrics;
pub mod plot;
pub mod tune;
