//! Trained heads written back into an imported model, so the widget, the index builder and
//! the WebGPU path keep running one ONNX file.
//!
//! [`feature_model`] cuts an imported model at its global pooling and pools the last
//! feature map with GeM (p = 3) instead: the unnormalised "features" output the head is
//! trained on. [`with_head`] appends the trained projection (int8 weights, per output
//! channel) and the L2 normalisation as the new "embedding".

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tract_onnx::pb::{ModelProto, NodeProto, StringStringEntryProto};

use super::graph::{f32_tensor, int, value_info, GraphBuilder, EMBEDDING};
use super::quantize::{graph_of, weight_qdq};
use super::ImportError;

/// Name of the pooled, unnormalised output of [`feature_model`].
pub const FEATURES: &str = "features";
/// ONNX metadata key describing the trained head, as [`HeadInfo`] JSON.
pub const META_HEAD: &str = "otlens.head";
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
}

/// A model the head cannot go on: an ONNX file, so not a checkpoint error.
fn unsupported(why: &str) -> ImportError {
    ImportError::Model(crate::Error::Model(why.into()))
}

/// The imported `model` cut at its GlobalAveragePool, with GeM pooling giving [`FEATURES`]
/// (1 x channels, not normalised). Returns the model and the channel count.
pub fn feature_model(model: &ModelProto) -> Result<(ModelProto, usize), ImportError> {
    if model.metadata_props.iter().any(|p| p.key == META_HEAD) {
        return Err(unsupported(
            "the model already has a trained head; train from the model `otlens import` wrote",
        ));
    }
    let graph = graph_of(model)?;
    let pool = graph
        .node
        .iter()
        .position(|n| n.op_type == "GlobalAveragePool")
        .ok_or_else(|| unsupported("the model has no GlobalAveragePool to put a head after"))?;
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
    let (gem_nodes, mut initializers) = gem.into_parts();
    let nodes: Vec<NodeProto> = graph.node[..pool].iter().cloned().chain(gem_nodes).collect();
    let used: HashSet<&str> = nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    initializers.extend(
        graph
            .initializer
            .iter()
            .filter(|t| used.contains(t.name.as_str()))
            .cloned(),
    );
    let mut cut = model.clone();
    let out = cut.graph.as_mut().expect("checked above");
    out.node = nodes;
    out.initializer = initializers;
    out.output = vec![value_info(FEATURES, Some(&[1, channels]))];
    Ok((cut, channels))
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
