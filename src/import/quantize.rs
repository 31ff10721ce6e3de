//! Static int8 quantisation in QDQ form (QuantizeLinear/DequantizeLinear pairs around an
//! fp32 graph), the form tract executes; onnxruntime's fused QOperator ops it does not.
//!
//! Every Conv and Gemm gets per-output-channel symmetric int8 weights and a uint8
//! quantised input whose range comes from running the fp32 graph over sample photos.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};

use super::graph::{f32_tensor, f32_values, i8_tensor, int, node, u8_tensor, value_info, INPUT};
use super::{encode, ImportError};
use crate::model::Embedder;

const QUANTISED_OPS: [&str; 2] = ["Conv", "Gemm"];

/// The int8 QDQ version of `fp32`, with activation ranges measured on `calibration`
/// (prepared input tensors, as [`crate::preprocess::to_tensor`] makes them).
pub fn quantize(fp32: &ModelProto, calibration: &[Vec<f32>]) -> Result<ModelProto, ImportError> {
    if calibration.is_empty() {
        return Err(ImportError::Calibration("no calibration photos".into()));
    }
    let activations = quantised_activations(&graph_of(fp32)?.node);
    let ranges = measure_ranges(fp32, &activations, calibration)?;
    rewrite(fp32, Some(&ranges))
}

/// `fp32` with int8 weights and fp32 activations: about the size of [`quantize`]'s model,
/// but tract folds the dequantisation into the weights at load, so it runs the fp32 arithmetic,
/// as fast and with the same result on every CPU (rounding activations to int8 turns the last-bit
/// differences between SIMD paths into whole steps).
pub fn quantize_weights(fp32: &ModelProto) -> Result<ModelProto, ImportError> {
    rewrite(fp32, None)
}

fn no_graph() -> ImportError {
    crate::Error::Model("the ONNX file has no graph".into()).into()
}

pub(super) fn graph_of(model: &ModelProto) -> Result<&tract_onnx::pb::GraphProto, ImportError> {
    model.graph.as_ref().ok_or_else(no_graph)
}

/// Puts QDQ around every Conv and Gemm: their weights always, their input activations
/// when `ranges` gives them.
fn rewrite(fp32: &ModelProto, ranges: Option<&HashMap<String, (f32, f32)>>) -> Result<ModelProto, ImportError> {
    let graph = graph_of(fp32)?;
    let mut initializers: HashMap<&str, &TensorProto> =
        graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut new_initializers = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    let mut dequantised: HashMap<String, String> = HashMap::new();
    for original in &graph.node {
        let mut node_out = original.clone();
        if QUANTISED_OPS.contains(&original.op_type.as_str()) {
            if let Some(ranges) = ranges {
                let activation = &original.input[0];
                if !dequantised.contains_key(activation) {
                    let (low, high) = ranges[activation];
                    let (q, dq) = activation_qdq(activation, low, high, &mut new_initializers);
                    nodes.extend([q.0, dq.0]);
                    dequantised.insert(activation.clone(), dq.1);
                }
                node_out.input[0] = dequantised[activation].clone();
            }
            let weight_name = &original.input[1];
            let weight = initializers
                .remove(weight_name.as_str())
                .ok_or_else(|| ImportError::Calibration(format!("{weight_name} is not a constant")))?;
            let (dq, dq_output) = weight_qdq(weight, &mut new_initializers);
            nodes.push(dq);
            node_out.input[1] = dq_output;
        }
        nodes.push(node_out);
    }
    let kept: Vec<TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| initializers.contains_key(t.name.as_str()))
        .cloned()
        .collect();
    let mut model = fp32.clone();
    let graph = model.graph.as_mut().expect("graph_of checked it");
    graph.node = nodes;
    graph.initializer = kept.into_iter().chain(new_initializers).collect();
    Ok(model)
}

/// The distinct input activations of the quantised ops, in graph order.
fn quantised_activations(nodes: &[NodeProto]) -> Vec<String> {
    let mut seen = HashSet::new();
    nodes
        .iter()
        .filter(|n| QUANTISED_OPS.contains(&n.op_type.as_str()))
        .map(|n| n.input[0].clone())
        .filter(|name| seen.insert(name.clone()))
        .collect()
}

/// (min, max) of each activation over the calibration inputs, from the fp32 graph with
/// the activations exposed as extra outputs.
fn measure_ranges(
    fp32: &ModelProto,
    activations: &[String],
    calibration: &[Vec<f32>],
) -> Result<HashMap<String, (f32, f32)>, ImportError> {
    let mut probe = fp32.clone();
    let graph = probe.graph.as_mut().ok_or_else(no_graph)?;
    let first_probe = graph.output.len();
    let internal: Vec<&String> = activations.iter().filter(|name| name.as_str() != INPUT).collect();
    graph.output.extend(internal.iter().map(|name| value_info(name, None)));
    let embedder = Embedder::from_bytes(&encode(&probe))?;
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    let mut widen = |name: &str, values: &[f32]| {
        let range = ranges
            .entry(name.to_owned())
            .or_insert((f32::INFINITY, f32::NEG_INFINITY));
        for &v in values {
            range.0 = range.0.min(v);
            range.1 = range.1.max(v);
        }
    };
    for input in calibration {
        widen(INPUT, input);
        let outputs = embedder.run(input.clone())?;
        for (name, values) in internal.iter().zip(&outputs[first_probe..]) {
            widen(name, values);
        }
    }
    Ok(ranges)
}

/// Rounds `x` away from zero to 6 significant bits, so that calibration results that
/// differ in the last bits between CPUs (other SIMD paths in tract) give the same model.
fn coarsen(x: f32) -> f32 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let exponent = ((x.abs().to_bits() >> 23) & 0xff) as i32 - 127;
    let step = 2f32.powi(exponent - 5);
    x.signum() * (x.abs() / step).ceil() * step
}

/// QuantizeLinear + DequantizeLinear for an activation with range [low, high], as
/// asymmetric uint8 (the range always includes 0 so that zero padding is exact).
/// Returns the two nodes with their output names.
fn activation_qdq(
    name: &str,
    low: f32,
    high: f32,
    initializers: &mut Vec<TensorProto>,
) -> ((NodeProto, String), (NodeProto, String)) {
    let (low, high) = (coarsen(low.min(0.0)), coarsen(high.max(0.0)));
    let scale = if high > low { (high - low) / 255.0 } else { 1.0 };
    let zero_point = (-low / scale).round().clamp(0.0, 255.0) as u8;
    let scale_name = format!("{name}.scale");
    let zero_name = format!("{name}.zero_point");
    initializers.push(f32_tensor(&scale_name, &[], &[scale]));
    initializers.push(u8_tensor(&zero_name, &[], &[zero_point]));
    let quantised = format!("{name}.quantized");
    let dequantised = format!("{name}.dequantized");
    let q = node(
        "QuantizeLinear",
        &quantised,
        &[name, &scale_name, &zero_name],
        &[&quantised],
        vec![],
    );
    let dq = node(
        "DequantizeLinear",
        &dequantised,
        &[&quantised, &scale_name, &zero_name],
        &[&dequantised],
        vec![],
    );
    ((q, quantised), (dq, dequantised))
}

/// Per-output-channel symmetric int8 weights (scale = max |w| / 127, zero point 0) and the
/// DequantizeLinear that restores them. Returns the node and its output name.
pub(super) fn weight_qdq(weight: &TensorProto, initializers: &mut Vec<TensorProto>) -> (NodeProto, String) {
    let values = f32_values(weight);
    let dims: Vec<usize> = weight.dims.iter().map(|&d| d as usize).collect();
    let channels = dims[0];
    let per_channel = values.len() / channels.max(1);
    let mut scales = Vec::with_capacity(channels);
    let mut quantised = Vec::with_capacity(values.len());
    for channel in values.chunks(per_channel.max(1)) {
        let max = channel.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        quantised.extend(channel.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
    }
    let name = &weight.name;
    let (q_name, scale_name, zero_name) = (
        format!("{name}.quantized"),
        format!("{name}.scale"),
        format!("{name}.zero_point"),
    );
    initializers.push(i8_tensor(&q_name, &dims, &quantised));
    initializers.push(f32_tensor(&scale_name, &[channels], &scales));
    initializers.push(i8_tensor(&zero_name, &[channels], &vec![0; channels]));
    let output = format!("{name}.dequantized");
    let dq = node(
        "DequantizeLinear",
        &output,
        &[&q_name, &scale_name, &zero_name],
        &[&output],
        vec![int("axis", 0)],
    );
    (dq, output)
}
