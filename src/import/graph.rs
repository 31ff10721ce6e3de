//! Writing ONNX graphs with tract's protobuf types: the few layers the importer needs.

use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

use super::checkpoint::Loader;
use super::ImportError;

/// ONNX IR version 8 (ONNX 1.10+), understood by tract and onnxruntime alike.
pub const IR_VERSION: i64 = 8;
/// Opset 13: per-channel QuantizeLinear/DequantizeLinear (`axis`) and Clip with tensor bounds.
pub const OPSET: i64 = 13;
/// Name of the graph's image input.
pub const INPUT: &str = "input";
/// Name of the first output, the L2-normalised embedding.
pub const EMBEDDING: &str = "embedding";
/// Name of the optional second output, the classifier's logits.
pub const LOGITS: &str = "logits";

/// A convolution with its BatchNorm folded in: `weight` is OIHW, row-major.
pub struct Conv {
    pub weight: Vec<f32>,
    /// (out channels, in channels per group, kernel height, kernel width)
    pub shape: [usize; 4],
    pub bias: Vec<f32>,
    pub stride: usize,
    /// top, left, bottom, right
    pub pads: [usize; 4],
    pub groups: usize,
}

/// A classifier layer to keep: name, weight shape (OI), weight, bias.
pub type Classifier<'a> = (&'a str, &'a [usize], &'a [f32], &'a [f32]);

impl Conv {
    /// Loads `conv.weight` and folds the following BatchNorm `bn` (eval mode) into it:
    /// w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps).
    pub fn folded(
        loader: &Loader,
        conv: &str,
        bn: &str,
        shape: [usize; 4],
        groups: usize,
        eps: f32,
    ) -> Result<Conv, ImportError> {
        let out = shape[0];
        let weight = loader.get(&format!("{conv}.weight"), &shape)?;
        let bn_param = |name: &str| loader.get(&format!("{bn}.{name}"), &[out]);
        let (gamma, beta) = (bn_param("weight")?, bn_param("bias")?);
        let (mean, var) = (bn_param("running_mean")?, bn_param("running_var")?);
        let per_channel = weight.len() / out;
        let mut folded = Vec::with_capacity(weight.len());
        let mut bias = Vec::with_capacity(out);
        for c in 0..out {
            let factor = gamma[c] / (var[c] + eps).sqrt();
            folded.extend(
                weight[c * per_channel..(c + 1) * per_channel]
                    .iter()
                    .map(|w| w * factor),
            );
            bias.push(beta[c] - mean[c] * factor);
        }
        Ok(Conv {
            weight: folded,
            shape,
            bias,
            stride: 1,
            pads: [0; 4],
            groups,
        })
    }

    pub fn with_stride(mut self, stride: usize) -> Conv {
        self.stride = stride;
        self
    }

    pub fn with_pads(mut self, pads: [usize; 4]) -> Conv {
        self.pads = pads;
        self
    }

    /// Output side for an input of side `size`.
    pub fn output_size(&self, size: usize) -> usize {
        (size + self.pads[0] + self.pads[2] - self.shape[2]) / self.stride + 1
    }
}

/// TensorFlow's "SAME" padding for one axis: (begin, end), the odd pixel at the end.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Nodes and initializers of one graph, added in topological order.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphBuilder {
    pub fn initializer(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name.clone();
        self.initializers.push(tensor);
        name
    }

    /// Adds a node named `name` whose single output is also called `name`.
    pub fn node(&mut self, op: &str, name: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.nodes.push(node(op, name, inputs, &[name], attributes));
        name.to_owned()
    }

    pub fn conv(&mut self, name: &str, input: &str, conv: &Conv) -> String {
        let [out, _, kh, kw] = conv.shape;
        let weight = self.initializer(f32_tensor(&format!("{name}.weight"), &conv.shape, &conv.weight));
        let bias = self.initializer(f32_tensor(&format!("{name}.bias"), &[out], &conv.bias));
        let attributes = vec![
            ints("kernel_shape", &[kh, kw]),
            ints("strides", &[conv.stride, conv.stride]),
            ints("pads", &[conv.pads[0], conv.pads[1], conv.pads[2], conv.pads[3]]),
            int("group", conv.groups as i64),
        ];
        self.node("Conv", name, &[input, &weight, &bias], attributes)
    }

    /// ReLU6, as Clip(0, 6) with opset-13 tensor bounds shared by the whole graph.
    pub fn relu6(&mut self, name: &str, input: &str) -> String {
        const MIN: &str = "relu6.min";
        const MAX: &str = "relu6.max";
        if !self.initializers.iter().any(|t| t.name == MIN) {
            self.initializer(f32_tensor(MIN, &[], &[0.0]));
            self.initializer(f32_tensor(MAX, &[], &[6.0]));
        }
        self.node("Clip", name, &[input, MIN, MAX], vec![])
    }

    /// Global average pooling, L2-normalised as the "embedding" output, and with
    /// `classifier` (fc weight OI, bias) also the "logits" output.
    pub fn embedding_head(&mut self, features: &str, classifier: Option<Classifier>) {
        self.node("GlobalAveragePool", "pool", &[features], vec![]);
        let pooled = self.node("Flatten", "pool.flat", &["pool"], vec![int("axis", 1)]);
        self.normalised_embedding(&pooled);
        if let Some((name, shape, weight, bias)) = classifier {
            let weight = self.initializer(f32_tensor(&format!("{name}.weight"), shape, weight));
            let bias = self.initializer(f32_tensor(&format!("{name}.bias"), &shape[..1], bias));
            self.node("Gemm", LOGITS, &[&pooled, &weight, &bias], vec![int("transB", 1)]);
        }
    }

    /// `input` (1 x width) L2-normalised as the "embedding" output.
    pub fn normalised_embedding(&mut self, input: &str) -> String {
        self.node(
            "LpNormalization",
            EMBEDDING,
            &[input],
            vec![int("axis", 1), int("p", 2)],
        )
    }

    /// The nodes and initializers added so far, to splice into an existing graph.
    pub fn into_parts(self) -> (Vec<NodeProto>, Vec<TensorProto>) {
        (self.nodes, self.initializers)
    }

    /// The model: input 1x3xSxS, outputs `outputs` (name, width), metadata as given.
    pub fn finish(self, size: usize, outputs: &[(&str, usize)], metadata: &[(&str, String)]) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "otlens import".into(),
            graph: Some(GraphProto {
                name: "otlens".into(),
                node: self.nodes,
                initializer: self.initializers,
                input: vec![value_info(INPUT, Some(&[1, 3, size, size]))],
                output: outputs
                    .iter()
                    .map(|(name, width)| value_info(name, Some(&[1, *width])))
                    .collect(),
                ..Default::default()
            }),
            metadata_props: metadata
                .iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: key.to_string(),
                    value: value.clone(),
                })
                .collect(),
            ..Default::default()
        }
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

pub fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

pub fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

/// A float tensor value (shape optional: calibration outputs leave it to inference).
pub fn value_info(name: &str, shape: Option<&[usize]>) -> ValueInfoProto {
    let shape = shape.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| tensor_shape_proto::Dimension {
                value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                ..Default::default()
            })
            .collect(),
    });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data,
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Float,
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

pub fn i8_tensor(name: &str, dims: &[usize], data: &[i8]) -> TensorProto {
    tensor(name, dims, DataType::Int8, data.iter().map(|&v| v as u8).collect())
}

pub fn u8_tensor(name: &str, dims: &[usize], data: &[u8]) -> TensorProto {
    tensor(name, dims, DataType::Uint8, data.to_vec())
}

/// The f32 values of an initializer written by [`f32_tensor`].
pub fn f32_values(tensor: &TensorProto) -> Vec<f32> {
    tensor
        .raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
