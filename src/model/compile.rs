//! ONNX -> the widget's model file (native only).
//!
//! The widget links tract-core and its NNEF reader, not the ONNX parser and its
//! type inference, which keeps the wasm module small. So the companion compiles each
//! imported ONNX model once: input shape fixed, graph decluttered (batch norms folded,
//! 1x1 convolutions as matrix products), written as NNEF in a gzipped tar.
//!
//! Weights that were int8 stay int8 in the file (see [`super::int8_weights`]).

use std::io::Read;

use tract_nnef::internal::*;
use tract_nnef::tensors::{read_tensor, write_tensor};
use tract_nnef::tract_core::ops::cast::cast;
use tract_nnef::tract_core::ops::element_wise::ElementWiseOp;
use tract_nnef::tract_core::ops::math::{add, max, min, mul, round_half_to_even, sub};
use tract_nnef::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};
use tract_onnx::prelude::{InferenceFact, InferenceModelExt};

use super::int8_weights::{as_int8, Q8_EXTENSION};
use super::tract::{input_spec, model_error};
use super::{sha256_hex, META_SOURCE_SHA256};
use crate::{Error, Result};

/// Weights smaller than this stay f32: a scale per slice would save next to nothing.
const SMALLEST_INT8: usize = 256;

/// The decluttered graph of an ONNX model from `otlens import`, its input fixed to 1x3xSxS.
pub(super) fn onnx_to_typed(onnx: &[u8]) -> Result<TypedModel> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(onnx))
        .map_err(model_error("not a readable ONNX model"))?;
    let size = input_spec(&model.properties)?.size as usize;
    let fact: InferenceFact = f32::fact([1, 3, size, size]).into();
    model
        .with_input_fact(0, fact)
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .map_err(model_error("cannot prepare the model"))
}

/// Compiles an ONNX model written by `otlens import` into the file the widget loads
/// (`.nnef.tgz`). The output is deterministic: the same ONNX bytes give the same file.
pub fn compile(onnx: &[u8]) -> Result<Vec<u8>> {
    let mut model = onnx_to_typed(onnx)?;
    expand_quantisation(&mut model).map_err(model_error("cannot compile the int8 activations"))?;
    model
        .properties
        .insert(META_SOURCE_SHA256.into(), tensor0(sha256_hex(onnx)).into_arc_tensor());
    let nnef = tract_nnef::nnef()
        .write_to_tar_with_config(&model, Vec::new(), false, true)
        .map_err(model_error("cannot write the compiled model"))?;
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let gzip = store_int8_weights(&nnef, gzip).map_err(|e| Error::Model(format!("cannot pack the model: {e:#}")))?;
    gzip.finish()
        .map_err(|e| Error::Model(format!("cannot compress the compiled model: {e}")))
}

/// tract's fused (de)quantisation ops have no NNEF form: spells each out in the ops it
/// fuses, with the same arithmetic, so the compiled graph computes the same numbers.
/// (Quantise: `clamp(round_half_even(x * inverse_scale) + zero_point)`; dequantise:
/// `(q - zero_point) * scale`. Every intermediate is a small integer, exact in f32.)
fn expand_quantisation(model: &mut TypedModel) -> TractResult<()> {
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(step) = QuantisationStep::of(node) else {
            continue;
        };
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, node.inputs[0])?;
        let rank = patch.outlet_fact(input)?.rank();
        let constant = |patch: &mut TypedModelPatch, suffix: &str, value: f32| {
            patch.add_const(format!("{name}.{suffix}"), tensor0(value).broadcast_into_rank(rank)?)
        };
        let wire = |patch: &mut TypedModelPatch, suffix: &str, op: Box<dyn TypedOp>, inputs: &[OutletId]| {
            Ok::<_, TractError>(patch.wire_node(format!("{name}.{suffix}"), op, inputs)?[0])
        };
        let as_f32 = wire(&mut patch, "as_f32", Box::new(cast(f32::datum_type())), &[input])?;
        let output = match step {
            QuantisationStep::Quantise {
                inverse_scale,
                zero_point,
                to,
            } => {
                let (low, high) = if to == u8::datum_type() {
                    (0.0, 255.0)
                } else {
                    (-128.0, 127.0)
                };
                let inverse_scale = constant(&mut patch, "inverse_scale", inverse_scale)?;
                let scaled = wire(&mut patch, "scaled", Box::new(mul()), &[as_f32, inverse_scale])?;
                let rounded = wire(&mut patch, "rounded", Box::new(round_half_to_even()), &[scaled])?;
                let zero_point = constant(&mut patch, "zero_point", zero_point)?;
                let shifted = wire(&mut patch, "shifted", Box::new(add()), &[rounded, zero_point])?;
                let low = constant(&mut patch, "low", low)?;
                let high = constant(&mut patch, "high", high)?;
                let above = wire(&mut patch, "above", Box::new(max()), &[shifted, low])?;
                let clamped = wire(&mut patch, "clamped", Box::new(min()), &[above, high])?;
                wire(&mut patch, "quantised", Box::new(cast(to)), &[clamped])?
            }
            QuantisationStep::Dequantise { scale, zero_point } => {
                let zero_point = constant(&mut patch, "zero_point", zero_point)?;
                let centred = wire(&mut patch, "centred", Box::new(sub()), &[as_f32, zero_point])?;
                let scale = constant(&mut patch, "scale", scale)?;
                wire(&mut patch, "dequantised", Box::new(mul()), &[centred, scale])?
            }
        };
        patch.shunt_outside(model, OutletId::new(id, 0), output)?;
        patch.apply(model)?;
    }
    model.compact()
}

/// One of tract's fused (de)quantisation ops, by its parameters.
enum QuantisationStep {
    Quantise {
        inverse_scale: f32,
        zero_point: f32,
        to: DatumType,
    },
    Dequantise {
        scale: f32,
        zero_point: f32,
    },
}

impl QuantisationStep {
    fn of(node: &TypedNode) -> Option<QuantisationStep> {
        if let Some(op) = node.op_as::<DequantizeLinearF32>() {
            return Some(QuantisationStep::Dequantise {
                scale: op.scale,
                zero_point: op.zero_point as f32,
            });
        }
        let mini = node.op_as::<ElementWiseOp>()?.0.as_ref();
        let quantise = |inverse_scale, zero_point, to| QuantisationStep::Quantise {
            inverse_scale,
            zero_point,
            to,
        };
        match (
            mini.downcast_ref::<QuantizeLinearU8>(),
            mini.downcast_ref::<QuantizeLinearI8>(),
        ) {
            (Some(op), _) => Some(quantise(op.scale, op.zero_point as f32, u8::datum_type())),
            (_, Some(op)) => Some(quantise(op.scale, op.zero_point as f32, i8::datum_type())),
            _ => None,
        }
    }
}

/// Copies the NNEF tar `nnef` into `out`, each weight that is exactly int8 x scales as a
/// `.q8` entry instead of its `.dat`.
fn store_int8_weights<W: std::io::Write>(nnef: &[u8], out: W) -> TractResult<W> {
    let mut packed = tar::Builder::new(out);
    for entry in tar::Archive::new(nnef).entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        let path = entry.path()?.into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        if path.extension().is_some_and(|extension| extension == "dat") {
            let tensor = read_tensor(content.as_slice())?;
            let int8 = (tensor.datum_type() == f32::datum_type() && tensor.len() >= SMALLEST_INT8)
                .then(|| as_int8(&tensor))
                .flatten();
            if let Some((codes, scales)) = int8 {
                content.clear();
                write_tensor(&mut content, &codes)?;
                write_tensor(&mut content, &scales)?;
                header.set_size(content.len() as u64);
                packed.append_data(&mut header, path.with_extension(Q8_EXTENSION), content.as_slice())?;
                continue;
            }
        }
        packed.append_data(&mut header, &path, content.as_slice())?;
    }
    Ok(packed.into_inner()?)
}
