//! Trained heads written back into an imported model, so the widget, the index builder and
//! the WebGPU path keep running one ONNX file.
//!
//! [`feature_model`] cuts an imported model at its global pooling and pools the last
//! feature map with GeM (p = 3) instead: the unnormalised "features" output the head is
//! trained on. [`with_head`] appends the trained projection (int8 weights, per output
//! channel) and the L2 normalisation as the new "embedding".
//!
//! To fine-tune the backbone's last layer too, [`feature_map_model`] cuts one layer earlier,
//! before the 1x1 convolution that feeds the pooling ([`LastConv`]), and [`with_last_conv`]
//! puts the tuned convolution back.

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
/// Name of the output of [`feature_map_model`]: the input of the [`LastConv`].
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

/// The 1x1 convolution and activation that feed a model's global pooling (EfficientNet's
/// `_conv_head` with its ReLU6): the backbone layer `otlens train --tune-last-conv` trains.
#[derive(Clone, Debug, PartialEq)]
pub struct LastConv {
    /// The Conv node's name, to put the tuned weights back.
    pub name: String,
    /// `outputs` rows of `inputs` values.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    /// 6 for ReLU6 (Clip), none for ReLU.
    pub ceiling: Option<f32>,
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

/// The imported `model` cut before its [`LastConv`], whose input becomes the
/// [`FEATURE_MAP`] output (1 x inputs x H x W). Returns the model and the convolution.
pub fn feature_map_model(model: &ModelProto) -> Result<(ModelProto, LastConv), ImportError> {
    let graph = headless_graph(model)?;
    let (conv_at, last_conv) = last_conv(graph)?;
    let conv = &graph.node[conv_at];
    let weight_source = producer(graph, &conv.input[1]);
    let mut nodes: Vec<NodeProto> = graph.node[..conv_at]
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != weight_source)
        .map(|(_, n)| n.clone())
        .collect();
    nodes.push(node("Identity", FEATURE_MAP, &[&conv.input[0]], &[FEATURE_MAP], vec![]));
    let cut = with_nodes(model, nodes, Vec::new(), value_info(FEATURE_MAP, None));
    Ok((cut, last_conv))
}

/// `model` with the weights of its [`LastConv`] replaced by `tuned`'s, stored as they were
/// (int8 per output channel when the model's were, f32 otherwise).
pub fn with_last_conv(model: &ModelProto, tuned: &LastConv) -> Result<ModelProto, ImportError> {
    let graph = headless_graph(model)?;
    let (conv_at, current) = last_conv(graph)?;
    if current.name != tuned.name || current.inputs != tuned.inputs || current.outputs != tuned.outputs {
        return Err(unsupported(&format!(
            "the tuned convolution {} ({} -> {}) does not fit the model's {} ({} -> {})",
            tuned.name, tuned.inputs, tuned.outputs, current.name, current.inputs, current.outputs
        )));
    }
    let weight_source = producer(graph, &graph.node[conv_at].input[1]);
    // Only the new tensors: `with_nodes` keeps the model's own ones that are still used.
    let mut initializers = Vec::new();
    let weight = f32_tensor(
        &format!("{}.tuned.weight", tuned.name),
        &[tuned.outputs, tuned.inputs, 1, 1],
        &tuned.weight,
    );
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
    let bias_name = format!("{}.tuned.bias", tuned.name);
    initializers.push(f32_tensor(&bias_name, &[tuned.outputs], &tuned.bias));
    let mut nodes = Vec::with_capacity(graph.node.len() + 1);
    for (i, n) in graph.node.iter().enumerate() {
        if Some(i) == weight_source {
            continue;
        }
        if i == conv_at {
            nodes.extend(dequantise.clone());
            let mut conv = n.clone();
            conv.input = vec![n.input[0].clone(), weight_name.clone(), bias_name.clone()];
            nodes.push(conv);
        } else {
            nodes.push(n.clone());
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

fn initializer<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

/// The Conv (1x1, one group, stride 1) and ReLU/ReLU6 right before the global pooling.
fn last_conv(graph: &GraphProto) -> Result<(usize, LastConv), ImportError> {
    let not_tunable = |why: &str| unsupported(&format!("the last convolution cannot be fine-tuned: {why}"));
    let pool = global_pool(graph)?;
    let activation = producer(graph, &graph.node[pool].input[0])
        .map(|i| &graph.node[i])
        .filter(|n| n.op_type == "Clip" || n.op_type == "Relu")
        .ok_or_else(|| not_tunable("the pooling does not follow a ReLU or ReLU6"))?;
    let ceiling = match activation.op_type.as_str() {
        "Clip" => {
            let bound = |i: usize| {
                let tensor = activation.input.get(i).and_then(|name| initializer(graph, name))?;
                f32_values(tensor).first().copied()
            };
            match (bound(1), bound(2)) {
                (Some(0.0), Some(high)) => Some(high),
                _ => return Err(not_tunable("its Clip is not a ReLU6")),
            }
        }
        _ => None,
    };
    let conv_at = producer(graph, &activation.input[0])
        .filter(|&i| graph.node[i].op_type == "Conv")
        .ok_or_else(|| not_tunable("the activation does not follow a Conv"))?;
    let conv = &graph.node[conv_at];
    let one = |name: &str, value: i64| {
        conv.attribute
            .iter()
            .find(|a| a.name == name)
            .is_none_or(|a| match a.ints.is_empty() {
                true => a.i == value,
                false => a.ints.iter().all(|&v| v == value),
            })
    };
    if !(one("kernel_shape", 1) && one("strides", 1) && one("group", 1)) || conv.input.len() < 2 {
        return Err(not_tunable(&format!("{} is not a plain 1x1 convolution", conv.name)));
    }
    let weight = conv_weight(graph, &conv.input[1]).ok_or_else(|| not_tunable("its weights are not constants"))?;
    let outputs = weight.1.first().copied().unwrap_or(0);
    let inputs = weight.1.get(1).copied().unwrap_or(0);
    if outputs * inputs != weight.0.len() || outputs == 0 {
        return Err(not_tunable("its weights have an unexpected shape"));
    }
    let bias = match conv.input.get(2).filter(|name| !name.is_empty()) {
        Some(name) => initializer(graph, name)
            .filter(|t| t.data_type == DataType::Float as i32)
            .map(f32_values)
            .filter(|b| b.len() == outputs)
            .ok_or_else(|| not_tunable("its bias is not an f32 constant"))?,
        None => vec![0.0; outputs],
    };
    let last = LastConv {
        name: conv.name.clone(),
        weight: weight.0,
        bias,
        inputs,
        outputs,
        ceiling,
    };
    Ok((conv_at, last))
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
