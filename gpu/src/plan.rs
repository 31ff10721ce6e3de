//! A model lowered for the GPU: its tensors, the steps that compute them, and the constants.
//!
//! The plan is what the tract side (`otlens::model::gpu`) writes from the model file the widget
//! already runs, so both paths read one file. It names operations by what they compute, with
//! shapes; the executor derives the index arithmetic. All tensors are f32 (a boolean is 0 or 1,
//! an integer an integral f32), at most rank 4, laid out contiguously, row-major.

use serde::{Deserialize, Serialize};

use crate::GpuError;

/// Index of a tensor in [`Plan::tensors`].
pub type TensorId = usize;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub tensors: Vec<Tensor>,
    pub input: TensorId,
    pub output: TensorId,
    /// In execution order.
    pub steps: Vec<Step>,
    /// Every constant's values, back to back ([`Tensor::constant`] gives each one's start).
    #[serde(skip)]
    pub constants: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Source {
    /// The model's input, or the output of a step.
    Computed,
    /// Values at this offset of [`Plan::constants`].
    Constant(usize),
    /// The same values as another tensor under another shape (a reshape, an added or removed axis).
    Alias(TensorId),
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// 2-D convolution of a CxHxW tensor (a leading batch axis of 1 allowed) with OIHW weights.
    Conv {
        input: TensorId,
        weights: TensorId,
        /// One value per output channel, or a single one for all.
        bias: Option<TensorId>,
        output: TensorId,
        geometry: Window,
        groups: usize,
        /// Applied to each output value (a fused activation).
        clamp: Option<Clamp>,
    },
    /// Max pooling; padding never wins.
    MaxPool {
        input: TensorId,
        output: TensorId,
        geometry: Window,
    },
    /// `output[batch, m, n] = sum_k a[batch, m, k] * b[batch, k, n]`, each operand read through the
    /// strides given (a matrix product, an einsum with one summed axis).
    MatMul {
        a: TensorId,
        b: TensorId,
        output: TensorId,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        a_strides: MatrixStrides,
        b_strides: MatrixStrides,
        output_strides: MatrixStrides,
        /// One value per row, added to it (a fused bias).
        bias: Option<TensorId>,
        /// Applied after the bias (a fused activation).
        clamp: Option<Clamp>,
    },
    /// Element-wise, numpy broadcasting.
    Binary {
        op: BinaryOp,
        a: TensorId,
        b: TensorId,
        output: TensorId,
    },
    Unary {
        op: UnaryOp,
        input: TensorId,
        output: TensorId,
    },
    /// A chain of element-wise operations, each on the result of the one before: what
    /// [`Plan::fuse`] makes of unary steps and arithmetic with one constant (tract spells an int8
    /// quantise-dequantise pair as eight of them).
    Pointwise {
        input: TensorId,
        output: TensorId,
        ops: Vec<PointOp>,
    },
    /// `condition ? then : otherwise`, element-wise, broadcasting.
    Select {
        condition: TensorId,
        then: TensorId,
        otherwise: TensorId,
        output: TensorId,
    },
    /// Reduces the axes where the output has size 1 and the input does not.
    Reduce {
        op: ReduceOp,
        input: TensorId,
        output: TensorId,
    },
    /// `output[i] = input[offset + sum_d i_d * strides[d]]`: a strided view made contiguous
    /// (downsampling, transposition).
    Gather {
        input: TensorId,
        output: TensorId,
        offset: usize,
        strides: Vec<usize>,
    },
}

/// Geometry of a sliding window over the last two axes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// Padding before each axis (after it follows from the output shape).
    pub padding: [usize; 2],
}

/// `min(max(x, low), high)`: ReLU, ReLU6 and the bounds of an int8 range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clamp {
    pub low: f32,
    pub high: f32,
}

/// Strides (in elements) of a matrix operand's row, column and batch indices.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatrixStrides {
    pub row: usize,
    pub column: usize,
    pub batch: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum UnaryOp {
    Square,
    Sqrt,
    Rsqrt,
    Recip,
    Abs,
    Neg,
    Exp,
    RoundHalfEven,
    Pow(f32),
    /// A cast to an integer type: toward zero, saturating at the type's bounds.
    CastToInteger {
        min: f32,
        max: f32,
    },
    /// A cast to bool: 1 unless 0.
    CastToBool,
}

/// Links a [`Step::Pointwise`] chain may have: the kernel's parameter block holds two words, then
/// three per link.
pub const MAX_POINT_OPS: usize = 10;

/// One link of a [`Step::Pointwise`] chain.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PointOp {
    Unary(UnaryOp),
    /// `x op value`, or `value op x` when `constant_first`.
    WithConstant {
        op: BinaryOp,
        value: f32,
        constant_first: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
}

/// Plan files begin with this, then a version number.
const MAGIC: &[u8; 4] = b"OTGP";
const VERSION: u32 = 3;

impl Plan {
    /// `OTGP`, version, header length (u32 LE), the JSON header, zero padding to 4 bytes, then
    /// the constants as f32 LE: a few milliseconds to write and read for 5 M weights.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(self).expect("a plan always serialises");
        let padding = (4 - header.len() % 4) % 4;
        let mut bytes = Vec::with_capacity(12 + header.len() + padding + 4 * self.constants.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.resize(bytes.len() + padding, 0);
        for value in &self.constants {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// Reads [`Plan::to_bytes`]'s output and checks that every reference in it is in range.
    pub fn from_bytes(bytes: &[u8]) -> Result<Plan, GpuError> {
        let invalid = |why: &str| GpuError::InvalidPlan(why.to_string());
        let word = |at: usize| -> Result<u32, GpuError> {
            let slice = bytes.get(at..at + 4).ok_or_else(|| invalid("the plan is truncated"))?;
            Ok(u32::from_le_bytes(slice.try_into().expect("4 bytes")))
        };
        if !bytes.starts_with(MAGIC) {
            return Err(invalid("not a GPU plan"));
        }
        let version = word(4)?;
        if version != VERSION {
            return Err(GpuError::InvalidPlan(format!(
                "GPU plan version {version}, this executor reads version {VERSION}"
            )));
        }
        let header_len = word(8)? as usize;
        let header = bytes
            .get(12..12 + header_len)
            .ok_or_else(|| invalid("the plan is truncated"))?;
        let mut plan: Plan =
            serde_json::from_slice(header).map_err(|e| GpuError::InvalidPlan(format!("bad plan header: {e}")))?;
        let start = 12 + header_len.div_ceil(4) * 4;
        let data = bytes.get(start..).ok_or_else(|| invalid("the plan is truncated"))?;
        if data.len() % 4 != 0 {
            return Err(invalid("the plan's constants are truncated"));
        }
        plan.constants = data
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect();
        plan.validate()?;
        Ok(plan)
    }

    /// The tensors a step reads, then the one it writes.
    pub fn step_tensors(step: &Step) -> (Vec<TensorId>, TensorId) {
        match *step {
            Step::Conv {
                input,
                weights,
                bias,
                output,
                ..
            } => (std::iter::once(input).chain([weights]).chain(bias).collect(), output),
            Step::MaxPool { input, output, .. }
            | Step::Unary { input, output, .. }
            | Step::Pointwise { input, output, .. }
            | Step::Reduce { input, output, .. }
            | Step::Gather { input, output, .. } => (vec![input], output),
            Step::MatMul { a, b, output, bias, .. } => (std::iter::once(a).chain([b]).chain(bias).collect(), output),
            Step::Binary { a, b, output, .. } => (vec![a, b], output),
            Step::Select {
                condition,
                then,
                otherwise,
                output,
            } => (vec![condition, then, otherwise], output),
        }
    }

    /// Follows aliases to the tensor that owns the values.
    pub fn root(&self, mut tensor: TensorId) -> TensorId {
        while let Source::Alias(of) = self.tensors[tensor].source {
            tensor = of;
        }
        tensor
    }

    fn validate(&self) -> Result<(), GpuError> {
        let count = self.tensors.len();
        let invalid = |why: String| Err(GpuError::InvalidPlan(why));
        for (id, tensor) in self.tensors.iter().enumerate() {
            if tensor.shape.len() > 4 {
                return invalid(format!(
                    "tensor {id} has rank {}; the executor takes up to 4",
                    tensor.shape.len()
                ));
            }
            match tensor.source {
                Source::Constant(offset) if offset + tensor.len() > self.constants.len() => {
                    return invalid(format!("constant {id} lies beyond the plan's data"));
                }
                // Aliases point backwards, so following them always ends.
                Source::Alias(of) if of >= id || self.tensors[of].len() != tensor.len() => {
                    return invalid(format!("tensor {id} is not a valid alias"));
                }
                _ => {}
            }
        }
        for id in [self.input, self.output] {
            if id >= count {
                return invalid(format!("tensor {id} does not exist"));
            }
        }
        for step in &self.steps {
            let (inputs, output) = Plan::step_tensors(step);
            if let Some(bad) = inputs.iter().chain([&output]).find(|&&id| id >= count) {
                return invalid(format!("a step names tensor {bad}, which does not exist"));
            }
            if self.tensors[output].source != Source::Computed {
                return invalid(format!("a step writes tensor {output}, which is not computed"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Plan {
        let tensor = |shape: &[usize], source| Tensor {
            shape: shape.to_vec(),
            source,
        };
        Plan {
            tensors: vec![
                tensor(&[1, 4], Source::Computed),
                tensor(&[1, 4], Source::Constant(0)),
                tensor(&[1, 4], Source::Computed),
            ],
            input: 0,
            output: 2,
            steps: vec![Step::Binary {
                op: BinaryOp::Add,
                a: 0,
                b: 1,
                output: 2,
            }],
            constants: vec![1.0, 2.0, 3.0, 4.0],
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let plan = tiny();
        let bytes = plan.to_bytes();
        assert_eq!(Plan::from_bytes(&bytes).unwrap(), plan);
        assert!(Plan::from_bytes(&bytes[..bytes.len() - 2]).is_err());
        assert!(Plan::from_bytes(&bytes[..10]).is_err());
        let mut future = bytes.clone();
        future[4] = 9;
        let error = Plan::from_bytes(&future).unwrap_err().to_string();
        assert!(error.contains("version 9"), "{error}");
        let mut short = plan.clone();
        short.constants.pop();
        assert!(Plan::from_bytes(&short.to_bytes()).is_err());
    }
}
