//! ONNX -> the widget's model file (native only).
//!
//! The widget links tract-core and its NNEF reader, not the ONNX parser and its
//! type inference, which keeps the wasm module small. So the companion compiles each
//! imported ONNX model once: input shape fixed, graph decluttered (batch norms folded,
//! 1x1 convolutions as matrix products), written as NNEF in a gzipped tar.
//!
//! Weights that were int8 stay int8 in the file (see [`super::int8_weights`]), and
//! convolutions between int8 activations and int8 weights become integer ones.

use std::io::Read;

use tract_nnef::internal::*;
use tract_nnef::tensors::{read_tensor, write_tensor};
use tract_nnef::tract_core::ops::binary::TypedBinOp;
use tract_nnef::tract_core::ops::cast::{cast, Cast};
use tract_nnef::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_nnef::tract_core::ops::element_wise::ElementWiseOp;
use tract_nnef::tract_core::ops::math::{add, max, min, mul, round_half_to_even, sub, Mul};
use tract_nnef::tract_core::ops::nn::DataFormat;
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
    integer_convolutions(&mut model).map_err(model_error("cannot compile the int8 convolutions"))?;
    fake_quantisation(&mut model)
        .and_then(|()| expand_quantisation(&mut model))
        .map_err(model_error("cannot compile the int8 activations"))?;
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

/// A QDQ convolution (`Conv(Dequantise(x_u8), int8 x scales, bias)`) as tract runs it,
/// after decluttering, is an f32 convolution on dequantised values: the int8 codes are only
/// carried, never computed with. This rewrites each one whose weights are int8 with one scale
/// per output channel into an integer convolution: `Σ (x_u8 - zero_point) * w_i8` exact in i32,
/// then `* (x_scale * w_scale[o]) + bias[o]` in f32. The same sum as before up to f32
/// rounding, on tract's int8 matrix kernels. Grouped (depthwise) convolutions stay f32: tract's
/// integer path would run them as one tiny matrix product per channel.
fn integer_convolutions(model: &mut TypedModel) -> TractResult<()> {
    for id in 0..model.nodes().len() {
        let Some(plan) = IntegerConvolution::of(model, model.node(id))? else {
            continue;
        };
        let name = model.node(id).name.clone();
        let mut patch = TypedModelPatch::default();
        let codes = patch.tap_model(model, plan.codes)?;
        let constant = |patch: &mut TypedModelPatch, suffix: &str, value: Tensor| {
            patch.add_const(format!("{name}.{suffix}"), value)
        };
        let weights = constant(&mut patch, "weights_i8", plan.weights)?;
        let q_inputs = [
            constant(&mut patch, "bias_i32", tensor0(0i32))?,
            constant(&mut patch, "x0", tensor0(plan.zero_point))?,
            constant(&mut patch, "x_scale", tensor0(1f32))?,
            constant(&mut patch, "k0", tensor0(0i32))?,
            constant(&mut patch, "k_scale", tensor0(1f32))?,
            constant(&mut patch, "y0", tensor0(0i32))?,
            constant(&mut patch, "y_scale", tensor0(1f32))?,
        ];
        let mut inputs = vec![codes, weights];
        inputs.extend(q_inputs);
        let op = Conv {
            q_params: Some(i32::datum_type()),
            ..plan.conv
        };
        let sums = patch.wire_node(format!("{name}.integer"), op, &inputs)?[0];
        let sums = patch.wire_node(format!("{name}.sums"), cast(f32::datum_type()), &[sums])?[0];
        let scales = constant(&mut patch, "scales", plan.scales)?;
        let scaled = patch.wire_node(format!("{name}.scaled"), mul(), &[sums, scales])?[0];
        let bias = constant(&mut patch, "bias", plan.bias)?;
        let output = patch.wire_node(format!("{name}.biased"), add(), &[scaled, bias])?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), output)?;
        patch.apply(model)?;
    }
    model.compact()
}

/// The most products of a u8 (less its zero point) and an i8 an i32 always holds:
/// 2^31 / (255 * 128). Convolutions that sum more stay f32.
const LARGEST_INTEGER_SUM: usize = 65_793;

/// What [`integer_convolutions`] needs of one QDQ convolution.
struct IntegerConvolution {
    conv: Conv,
    /// The u8 codes the dequantisation reads.
    codes: OutletId,
    zero_point: i32,
    weights: Tensor,
    /// `x_scale * w_scale[o]`, shaped `[1, O, 1, 1]`.
    scales: Tensor,
    /// Shaped `[1, O, 1, 1]`.
    bias: Tensor,
}

impl IntegerConvolution {
    fn of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<IntegerConvolution>> {
        let Some(conv) = node.op_as::<Conv>() else {
            return Ok(None);
        };
        if conv.q_params.is_some()
            || conv.group != 1
            || conv.kernel_fmt != KernelFormat::OIHW
            || conv.pool_spec.data_format != DataFormat::NCHW
            || node.inputs.len() != 3
        {
            return Ok(None);
        }
        let dequantise = model.node(node.inputs[0].node);
        let Some(dequantise_op) = dequantise.op_as::<DequantizeLinearF32>() else {
            return Ok(None);
        };
        let codes = dequantise.inputs[0];
        if model.outlet_fact(codes)?.datum_type != u8::datum_type() {
            return Ok(None);
        }
        let Some(bias) = model.outlet_fact(node.inputs[2])?.konst.clone() else {
            return Ok(None);
        };
        let outputs = conv.output_channels();
        let Some((weights, weight_scales)) = int8_kernel(model, node.inputs[1])? else {
            return Ok(None);
        };
        let products = weights.len() / outputs.max(1);
        if weight_scales.shape() != [outputs, 1, 1, 1] || products > LARGEST_INTEGER_SUM {
            return Ok(None);
        }
        let per_channel = [1, outputs, 1, 1];
        let scales: Vec<f32> = weight_scales
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .iter()
            .map(|w_scale| dequantise_op.scale * w_scale)
            .collect();
        let bias = bias
            .cast_to::<f32>()?
            .broadcast_to_shape(&[outputs])?
            .into_shape(&per_channel)?;
        Ok(Some(IntegerConvolution {
            conv: conv.clone(),
            codes,
            zero_point: dequantise_op.zero_point,
            weights,
            scales: Tensor::from_shape(&per_channel, &scales)?,
            bias,
        }))
    }
}

/// A convolution kernel as int8 codes and their scales, if it is one: a constant of exact
/// multiples (tract folds small dequantised weights), or `cast(i8 constant) * scales` (it
/// leaves large ones to be folded at load).
fn int8_kernel(model: &TypedModel, kernel: OutletId) -> TractResult<Option<(Tensor, Tensor)>> {
    if let Some(value) = &model.outlet_fact(kernel)?.konst {
        return Ok(as_int8(value));
    }
    let node = model.node(kernel.node);
    if !node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<Mul>()) {
        return Ok(None);
    }
    let facts = model.node_input_facts(node.id)?;
    for (codes, scales) in [(0, 1), (1, 0)] {
        let cast = model.node(node.inputs[codes].node);
        let codes = cast
            .op_as::<Cast>()
            .filter(|op| op.to == f32::datum_type())
            .and_then(|_| model.outlet_fact(cast.inputs[0]).ok()?.konst.clone())
            .filter(|codes| codes.datum_type() == i8::datum_type());
        if let (Some(codes), Some(scales)) = (codes, &facts[scales].konst) {
            if scales.datum_type() == f32::datum_type() {
                return Ok(Some((codes.into_tensor(), scales.clone().into_tensor())));
            }
        }
    }
    Ok(None)
}

/// Where f32 operators read int8 activations (depthwise convolutions, matrix products),
/// the codes are only a rounding: spells each quantise-dequantise pair in f32,
/// `clamp(round_half_even(x * inverse_scale), low - zero_point, high - zero_point) * scale`,
/// the same numbers without the two casts (every intermediate is a small integer, exact in
/// f32), unless integer convolutions read the same codes.
fn fake_quantisation(model: &mut TypedModel) -> TractResult<()> {
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(QuantisationStep::Dequantise { scale, zero_point }) = QuantisationStep::of(node) else {
            continue;
        };
        let quantise = model.node(node.inputs[0].node);
        let Some(QuantisationStep::Quantise {
            inverse_scale,
            zero_point: quantised_zero_point,
            to,
        }) = QuantisationStep::of(quantise)
        else {
            continue;
        };
        // Codes an integer convolution reads too are computed anyway: dequantising them (a
        // cast and a product) is cheaper than rounding the activations a second time.
        let codes_read_elsewhere = quantise.outputs[0].successors.len() > 1;
        if codes_read_elsewhere
            || quantised_zero_point != zero_point
            || model.outlet_fact(quantise.inputs[0])?.datum_type != f32::datum_type()
        {
            continue;
        }
        let (low, high) = if to == u8::datum_type() {
            (0.0, 255.0)
        } else {
            (-128.0, 127.0)
        };
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, quantise.inputs[0])?;
        let rank = patch.outlet_fact(input)?.rank();
        let mut step = |suffix: &str, op: Box<dyn TypedOp>, operand: Option<f32>, wire: OutletId| {
            let mut inputs = vec![wire];
            if let Some(value) = operand {
                let value = tensor0(value).broadcast_into_rank(rank)?;
                inputs.push(patch.add_const(format!("{name}.{suffix}.operand"), value)?);
            }
            Ok::<_, TractError>(patch.wire_node(format!("{name}.{suffix}"), op, &inputs)?[0])
        };
        let scaled = step("scaled", Box::new(mul()), Some(inverse_scale), input)?;
        let rounded = step("rounded", Box::new(round_half_to_even()), None, scaled)?;
        let above = step("above", Box::new(max()), Some(low - zero_point), rounded)?;
        let clamped = step("clamped", Box::new(min()), Some(high - zero_point), above)?;
        let output = step("dequantised", Box::new(mul()), Some(scale), clamped)?;
        patch.shunt_outside(model, OutletId::new(id, 0), output)?;
        patch.apply(model)?;
    }
    model.compact()
}

/// tract's fused (de)quantisation ops have no NNEF form: spells each out in the ops it
/// fuses, with the same arithmetic, so the compiled graph computes the same numbers.
/// (Quantise: `clamp(round_half_even(x * inverse_scale) + zero_point)`, the clamp being the
/// saturating cast; dequantise: `(q - zero_point) * scale`. Every intermediate is a small
/// integer, exact in f32.)
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
        let as_f32 = if patch.outlet_fact(input)?.datum_type == f32::datum_type() {
            input
        } else {
            wire(&mut patch, "as_f32", Box::new(cast(f32::datum_type())), &[input])?
        };
        let output = match step {
            QuantisationStep::Quantise {
                inverse_scale,
                zero_point,
                to,
            } => {
                let inverse_scale = constant(&mut patch, "inverse_scale", inverse_scale)?;
                let scaled = wire(&mut patch, "scaled", Box::new(mul()), &[as_f32, inverse_scale])?;
                let mut codes = wire(&mut patch, "rounded", Box::new(round_half_to_even()), &[scaled])?;
                if zero_point != 0.0 {
                    let zero_point = constant(&mut patch, "zero_point", zero_point)?;
                    codes = wire(&mut patch, "shifted", Box::new(add()), &[codes, zero_point])?;
                }
                // The cast saturates at the type's bounds (Rust's `as`), which is the clamp.
                wire(&mut patch, "quantised", Box::new(cast(to)), &[codes])?
            }
            QuantisationStep::Dequantise { scale, zero_point } => {
                let mut centred = as_f32;
                if zero_point != 0.0 {
                    let zero_point = constant(&mut patch, "zero_point", zero_point)?;
                    centred = wire(&mut patch, "centred", Box::new(sub()), &[as_f32, zero_point])?;
                }
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
