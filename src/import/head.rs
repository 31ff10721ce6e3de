//! Trained heads written back into an imported model, so the widget, the index builder and
//! the WebGPU path keep running one ONNX file.
//!
//! [`feature_model`] cuts an imported model at its global pooling and pools the last
//! feature map with GeM (p = 3) instead: the unnormalised "features" output the head is
//! trained on. [`with_head`] appends the trained projection (int8 weights, per output
//! channel) and the L2 normalisation as the new "embedding".
//!
//! To fine-tune the backbone's last layers too, [`feature_map_model`] cuts before the last
//! few convolutions that feed the pooling ([`TunableConv`]), and [`with_tuned_convs`] puts the
//! tuned ones back.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tract_onnx::pb::{
    tensor_proto::DataType, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, ValueInfoProto,
};

use super::graph::{f32_tensor, f32_values, int, node, value_info, GraphBuilder, EMBEDDING};
use super::quantize::{graph_of, weight_qdq};
use super::ImportError;

/// Name of the pooled, unnormalised output of [`feature_model`].
pub const FEATURES: &str = "features";
/// ONNX metadata key describing the trained head, as [`HeadInfo`] JSON.
pub const META_HEAD: &str = "otlens.head";
/// Name of the output of [`feature_map_model`]: the input of the first [`TunableConv`].
pub const FEATURE_MAP: &str = "feature_map";
/// GeM exponent: between average (1) and max pooling; 3 is the usual choice for retrieval.
pub const GEM_P: f32 = 3.0;

/// A linear projection: `weight` is `dims` rows of `channels` values.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub dims: usize,
    pub channels: usize,
}

/// What the `otlens.head` metadata records about a trained model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    pub pooling: String,
    pub dims: usize,
    /// sha256 of the imported model the head was trained on.
    pub base_model: String,
    /// What it was trained on, as `otlens train` saw it (e.g. the split's file name and size).
    pub trained_on: String,
    /// Backbone layers fine-tuned with the head (none when the backbone stayed frozen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tuned: Vec<String>,
}

/// How a tunable convolution's output is clipped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// None: the convolution feeds the next one directly (an MBConv block's projection).
    Linear,
    Relu,
    /// ReLU capped at this value (6 for ReLU6, as an ONNX Clip).
    Clip(f32),
}

/// A convolution of the backbone's tail that `otlens train --tune-convs` fine-tunes: 1x1,
/// or depthwise k x k with stride 1 and "same" padding (an MBConv block's middle layer).
#[derive(Clone, Debug, PartialEq)]
pub struct TunableConv {
    /// The Conv node's name, to put the tuned weights back.
    pub name: String,
    /// `outputs` rows of `inputs` values (1x1), or of `kernel` x `kernel` values (depthwise).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    /// 1 for a 1x1 convolution; the side of a depthwise one's kernel.
    pub kernel: usize,
    pub activation: Activation,
}

impl TunableConv {
    pub fn is_depthwise(&self) -> bool {
        self.kernel > 1
    }

    /// The ONNX weight shape: (outputs, inputs, 1, 1), or (channels, 1, k, k) for depthwise.
    pub fn weight_shape(&self) -> [usize; 4] {
        match self.is_depthwise() {
            true => [self.outputs, 1, self.kernel, self.kernel],
            false => [self.outputs, self.inputs, 1, 1],
        }
    }
}

/// A model the head cannot go on: an ONNX file, so not a checkpoint error.
fn unsupported(why: &str) -> ImportError {
    ImportError::Model(crate::Error::Model(why.into()))
}

/// The imported `model` cut at its GlobalAveragePool, with GeM pooling giving [`FEATURES`]
/// (1 x channels, not normalised). Returns the model and the channel count.
pub fn feature_model(model: &ModelProto) -> Result<(ModelProto, usize), ImportError> {
    let graph = headless_graph(model)?;
    let pool = global_pool(graph)?;
    let feature_map = &graph.node[pool].input[0];
    let channels = output_width(model, EMBEDDING)?;
    let mut gem = GraphBuilder::default();
    let eps = gem.initializer(f32_tensor("gem.eps", &[], &[1e-6]));
    let p = gem.initializer(f32_tensor("gem.p", &[], &[GEM_P]));
    let inv_p = gem.initializer(f32_tensor("gem.inv_p", &[], &[1.0 / GEM_P]));
    // Max(x, eps) keeps the cube root defined; the map is already >= 0 after ReLU6.
    let x = gem.node("Max", "gem.clamp", &[feature_map, &eps], vec![]);
    let x = gem.node("Pow", "gem.pow", &[&x, &p], vec![]);
    let x = gem.node("GlobalAveragePool", "gem.mean", &[&x], vec![]);
    let x = gem.node("Pow", "gem.root", &[&x, &inv_p], vec![]);
    gem.node("Flatten", FEATURES, &[&x], vec![int("axis", 1)]);
    let (gem_nodes, initializers) = gem.into_parts();
    let nodes = graph.node[..pool].iter().cloned().chain(gem_nodes).collect();
    let cut = with_nodes(model, nodes, initializers, value_info(FEATURES, Some(&[1, channels])));
    Ok((cut, channels))
}

/// The imported `model` cut before its last `count` convolutions ([`TunableConv`], in graph
/// order), whose input becomes the [`FEATURE_MAP`] output (1 x channels x H x W).
pub fn feature_map_model(model: &ModelProto, count: usize) -> Result<(ModelProto, Vec<TunableConv>), ImportError> {
    let graph = headless_graph(model)?;
    let tail = tunable_tail(graph, count)?;
    let first = &graph.node[tail[0].0];
    let weight_sources: HashSet<usize> = tail
        .iter()
        .filter_map(|(at, _)| producer(graph, &graph.node[*at].input[1]))
        .collect();
    let mut nodes: Vec<NodeProto> = graph.node[..tail[0].0]
        .iter()
        .enumerate()
        .filter(|(i, _)| !weight_sources.contains(i))
        .map(|(_, n)| n.clone())
        .collect();
    nodes.push(node(
        "Identity",
        FEATURE_MAP,
        &[&first.input[0]],
        &[FEATURE_MAP],
        vec![],
    ));
    let cut = with_nodes(model, nodes, Vec::new(), value_info(FEATURE_MAP, None));
    Ok((cut, tail.into_iter().map(|(_, conv)| conv).collect()))
}

/// `model` with the weights of its last `tuned.len()` convolutions replaced by `tuned`'s,
/// stored as they were (int8 per output channel when the model's were, f32 otherwise).
pub fn with_tuned_convs(model: &ModelProto, tuned: &[TunableConv]) -> Result<ModelProto, ImportError> {
    let graph = headless_graph(model)?;
    let current = tunable_tail(graph, tuned.len())?;
    // Each tuned Conv node by position, with its new inputs and the node it no longer needs.
    struct Replacement {
        conv_at: usize,
        weight_source: Option<usize>,
        dequantise: Option<NodeProto>,
        inputs: [String; 2],
    }
    let mut replacements = Vec::with_capacity(tuned.len());
    // Only the new tensors: `with_nodes` keeps the model's own ones that are still used.
    let mut initializers = Vec::new();
    for ((conv_at, now), new) in current.iter().zip(tuned) {
        let fits = now.name == new.name
            && now.weight_shape() == new.weight_shape()
            && new.weight.len() == now.weight.len()
            && new.bias.len() == now.bias.len();
        if !fits {
            return Err(unsupported(&format!(
                "the tuned convolution {} ({} -> {}) does not fit the model's {} ({} -> {})",
                new.name, new.inputs, new.outputs, now.name, now.inputs, now.outputs
            )));
        }
        let weight_source = producer(graph, &graph.node[*conv_at].input[1]);
        let weight = f32_tensor(&format!("{}.tuned.weight", new.name), &new.weight_shape(), &new.weight);
        let (dequantise, weight_name) = match weight_source {
            Some(_) => {
                let (dequantise, name) = weight_qdq(&weight, &mut initializers);
                (Some(dequantise), name)
            }
            None => {
                let name = weight.name.clone();
                initializers.push(weight);
                (None, name)
            }
        };
        let bias_name = format!("{}.tuned.bias", new.name);
        initializers.push(f32_tensor(&bias_name, &[new.outputs], &new.bias));
        replacements.push(Replacement {
            conv_at: *conv_at,
            weight_source,
            dequantise,
            inputs: [weight_name, bias_name],
        });
    }
    let mut nodes = Vec::with_capacity(graph.node.len() + tuned.len());
    for (i, n) in graph.node.iter().enumerate() {
        if replacements.iter().any(|r| r.weight_source == Some(i)) {
            continue;
        }
        match replacements.iter().find(|r| r.conv_at == i) {
            Some(replacement) => {
                nodes.extend(replacement.dequantise.clone());
                let mut conv = n.clone();
                conv.input = [&n.input[0]].into_iter().chain(&replacement.inputs).cloned().collect();
                nodes.push(conv);
            }
            None => nodes.push(n.clone()),
        }
    }
    Ok(with_nodes(model, nodes, initializers, graph.output[0].clone()))
}

/// `model`'s graph, refused when a head was trained on it already.
fn headless_graph(model: &ModelProto) -> Result<&GraphProto, ImportError> {
    if model.metadata_props.iter().any(|p| p.key == META_HEAD) {
        return Err(unsupported(
            "the model already has a trained head; train from the model `otlens import` wrote",
        ));
    }
    graph_of(model)
}

fn global_pool(graph: &GraphProto) -> Result<usize, ImportError> {
    graph
        .node
        .iter()
        .position(|n| n.op_type == "GlobalAveragePool")
        .ok_or_else(|| unsupported("the model has no GlobalAveragePool to put a head after"))
}

/// Position of the node whose output is `value`.
fn producer(graph: &GraphProto, value: &str) -> Option<usize> {
    graph.node.iter().position(|n| n.output.iter().any(|o| o == value))
}

fn consumers(graph: &GraphProto, value: &str) -> usize {
    graph.node.iter().filter(|n| n.input.iter().any(|i| i == value)).count()
}

fn initializer<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

/// The last `count` convolutions before the global pooling, in graph order with their node
/// positions: a plain chain of Conv nodes, each followed by nothing, a ReLU or a ReLU6, whose
/// values feed nothing else (so the chain can be cut off and computed apart). EfficientNet-
/// Lite0's last four are its last MBConv block (expand, depthwise, project) and `_conv_head`;
/// a fifth would cross the block's input, a residual sum.
fn tunable_tail(graph: &GraphProto, count: usize) -> Result<Vec<(usize, TunableConv)>, ImportError> {
    let not_tunable = |why: String| unsupported(&format!("the last {count} convolutions cannot be fine-tuned: {why}"));
    if count == 0 {
        return Err(not_tunable("no convolution was asked for".into()));
    }
    let pool = global_pool(graph)?;
    let mut value = graph.node[pool].input[0].clone();
    let mut tail = Vec::with_capacity(count);
    while tail.len() < count {
        // Every value between the cut and the pooling must feed only the next layer, or the
        // chain could not be cut off: the activation's output as well as the convolution's.
        let stage_output = value.clone();
        let mut at =
            producer(graph, &value).ok_or_else(|| not_tunable(format!("{value} is not computed by a node")))?;
        let activation = match graph.node[at].op_type.as_str() {
            "Relu" => Activation::Relu,
            "Clip" => {
                let clip = &graph.node[at];
                let bound = |i: usize| {
                    let tensor = clip.input.get(i).and_then(|name| initializer(graph, name))?;
                    f32_values(tensor).first().copied()
                };
                match (bound(1), bound(2)) {
                    (Some(0.0), Some(high)) => Activation::Clip(high),
                    _ => return Err(not_tunable(format!("{} is not a ReLU6", clip.name))),
                }
            }
            _ => Activation::Linear,
        };
        if activation != Activation::Linear {
            value = graph.node[at].input[0].clone();
            at = producer(graph, &value).ok_or_else(|| not_tunable(format!("{value} is not computed by a node")))?;
        }
        let conv = &graph.node[at];
        if conv.op_type != "Conv" {
            return Err(not_tunable(format!(
                "{} ({}) comes before them, not a convolution",
                conv.name, conv.op_type
            )));
        }
        if [&stage_output, &conv.output[0]]
            .iter()
            .any(|v| consumers(graph, v) != 1)
        {
            return Err(not_tunable(format!("{} also feeds other layers", conv.name)));
        }
        tail.push((at, tunable_conv(graph, conv, activation).map_err(not_tunable)?));
        value = conv.input[0].clone();
    }
    tail.reverse();
    Ok(tail)
}

/// `conv` read as a [`TunableConv`], or why it is not one.
fn tunable_conv(graph: &GraphProto, conv: &NodeProto, activation: Activation) -> Result<TunableConv, String> {
    let ints = |name: &str| {
        conv.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| if a.ints.is_empty() { vec![a.i] } else { a.ints.clone() })
    };
    let all = |name: &str, value: i64| ints(name).is_none_or(|v| v.iter().all(|&x| x == value));
    let (weight, shape) = conv
        .input
        .get(1)
        .and_then(|name| conv_weight(graph, name))
        .ok_or_else(|| format!("the weights of {} are not constants", conv.name))?;
    let &[outputs, per_group, kh, kw] = shape.as_slice() else {
        return Err(format!("{} is not a 2-d convolution", conv.name));
    };
    let group = ints("group").and_then(|g| g.first().copied()).unwrap_or(1);
    let plain = kh == 1 && kw == 1 && group == 1 && all("pads", 0);
    let depthwise =
        kh == kw && kh > 1 && kh % 2 == 1 && per_group == 1 && group == outputs as i64 && all("pads", (kh / 2) as i64);
    let inputs = if depthwise { outputs } else { per_group };
    let explicit_pads = conv
        .attribute
        .iter()
        .find(|a| a.name == "auto_pad")
        .is_none_or(|a| a.s.is_empty() || a.s == b"NOTSET");
    if !(plain || depthwise) || !all("strides", 1) || !all("dilations", 1) || !explicit_pads {
        return Err(format!(
            "{} is neither a 1x1 nor a depthwise convolution with stride 1",
            conv.name
        ));
    }
    if weight.len() != outputs * per_group * kh * kw || outputs == 0 {
        return Err(format!("the weights of {} have an unexpected shape", conv.name));
    }
    let bias = match conv.input.get(2).filter(|name| !name.is_empty()) {
        Some(name) => initializer(graph, name)
            .filter(|t| t.data_type == DataType::Float as i32)
            .map(f32_values)
            .filter(|b| b.len() == outputs)
            .ok_or_else(|| format!("the bias of {} is not an f32 constant", conv.name))?,
        None => vec![0.0; outputs],
    };
    Ok(TunableConv {
        name: conv.name.clone(),
        weight,
        bias,
        inputs,
        outputs,
        kernel: kh,
        activation,
    })
}

/// The f32 values and dims of a weight: an f32 initializer, or int8 ones through a per-channel
/// DequantizeLinear (as `otlens import` writes them).
fn conv_weight(graph: &GraphProto, name: &str) -> Option<(Vec<f32>, Vec<usize>)> {
    let dims = |t: &TensorProto| t.dims.iter().map(|&d| d as usize).collect::<Vec<_>>();
    if let Some(tensor) = initializer(graph, name).filter(|t| t.data_type == DataType::Float as i32) {
        return Some((f32_values(tensor), dims(tensor)));
    }
    let dequantise = &graph.node[producer(graph, name)?];
    if dequantise.op_type != "DequantizeLinear" {
        return None;
    }
    let quantised = initializer(graph, dequantise.input.first()?)?;
    let scales = f32_values(initializer(graph, dequantise.input.get(1)?)?);
    let zeros: Vec<i8> = match dequantise.input.get(2) {
        Some(zero) => initializer(graph, zero)?.raw_data.iter().map(|&b| b as i8).collect(),
        None => vec![0; scales.len()],
    };
    let shape = dims(quantised);
    let per_channel = quantised.raw_data.len() / scales.len().max(1);
    if quantised.data_type != DataType::Int8 as i32
        || zeros.len() != scales.len()
        || shape.first() != Some(&scales.len())
    {
        return None;
    }
    let values = quantised
        .raw_data
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let channel = i / per_channel;
            (f32::from(q as i8) - f32::from(zeros[channel])) * scales[channel]
        })
        .collect();
    Some((values, shape))
}

/// `model` with `nodes`, the initializers they use (from `extra`, then the model's), and one output.
fn with_nodes(
    model: &ModelProto,
    nodes: Vec<NodeProto>,
    extra: Vec<TensorProto>,
    output: ValueInfoProto,
) -> ModelProto {
    let graph = model.graph.as_ref().expect("callers checked the graph");
    let used: HashSet<&str> = nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let mut initializers = Vec::new();
    let mut seen = HashSet::new();
    for tensor in extra.iter().chain(&graph.initializer) {
        if used.contains(tensor.name.as_str()) && seen.insert(tensor.name.clone()) {
            initializers.push(tensor.clone());
        }
    }
    let mut cut = model.clone();
    let out = cut.graph.as_mut().expect("checked above");
    out.node = nodes;
    out.initializer = initializers;
    out.output = vec![output];
    cut
}

/// [`feature_model`] of `model` followed by `head` (int8 weights) and L2 normalisation: the
/// model `otlens train` writes. Its "embedding" is `head.dims` wide.
pub fn with_head(model: &ModelProto, head: &Head, info: &HeadInfo) -> Result<ModelProto, ImportError> {
    let (mut trained, channels) = feature_model(model)?;
    if channels != head.channels || head.weight.len() != head.dims * channels || head.bias.len() != head.dims {
        return Err(unsupported(&format!(
            "the head takes {} features and gives {} dims, the model has {channels} features",
            head.channels, head.dims
        )));
    }
    let graph = trained.graph.as_mut().expect("feature_model returns a graph");
    let weight = f32_tensor("head.weight", &[head.dims, channels], &head.weight);
    let (dequantise, weight_name) = weight_qdq(&weight, &mut graph.initializer);
    graph.node.push(dequantise);
    let mut projection = GraphBuilder::default();
    let bias = projection.initializer(f32_tensor("head.bias", &[head.dims], &head.bias));
    let x = projection.node("Gemm", "head", &[FEATURES, &weight_name, &bias], vec![int("transB", 1)]);
    projection.normalised_embedding(&x);
    let (nodes, initializers) = projection.into_parts();
    graph.node.extend(nodes);
    graph.initializer.extend(initializers);
    graph.output = vec![value_info(EMBEDDING, Some(&[1, head.dims]))];
    let json = serde_json::to_string(info).map_err(|e| unsupported(&e.to_string()))?;
    trained.metadata_props.push(StringStringEntryProto {
        key: META_HEAD.into(),
        value: json,
    });
    trained.producer_name = "otlens train".into();
    Ok(trained)
}

fn output_width(model: &ModelProto, name: &str) -> Result<usize, ImportError> {
    use tract_onnx::pb::{tensor_shape_proto::dimension::Value, type_proto};
    let output = graph_of(model)?
        .output
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| unsupported(&format!("the model has no {name:?} output")))?;
    let width = match output.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(tensor)) => {
            tensor
                .shape
                .as_ref()
                .and_then(|s| s.dim.last())
                .and_then(|d| match d.value {
                    Some(Value::DimValue(v)) => usize::try_from(v).ok(),
                    _ => None,
                })
        }
        _ => None,
    };
    width.ok_or_else(|| unsupported(&format!("the {name:?} output has no fixed width")))
}
