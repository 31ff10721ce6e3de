//! Lowers a compiled model to the WebGPU executor's [`Plan`] (crate `otlens-gpu`).
//!
//! The GPU path reads the same model file as tract: tract parses it, and each node of the
//! decluttered graph becomes a step of the plan (convolution, matrix product, element-wise
//! arithmetic, pooling, reduction, strided copies) or an alias (axis changes and reshapes move no
//! data). A node the executor has no kernel for is refused by name, and the widget stays on tract.

use std::collections::HashMap;

use otlens_gpu::plan::{self, BinaryOp, MatrixStrides, ReduceOp, Source, Step, TensorId, UnaryOp, Window};
use otlens_gpu::Plan;
use tract_nnef::internal::*;
use tract_nnef::tract_core::ops::array::Slice;
use tract_nnef::tract_core::ops::binary::TypedBinOp;
use tract_nnef::tract_core::ops::cast::Cast;
use tract_nnef::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec};
use tract_nnef::tract_core::ops::einsum::EinSum;
use tract_nnef::tract_core::ops::element_wise::ElementWiseOp;
use tract_nnef::tract_core::ops::logic::Iff;
use tract_nnef::tract_core::ops::math::PowConst;
use tract_nnef::tract_core::ops::nn::{DataFormat, Reduce, Reducer};
use tract_nnef::tract_core::ops::source::TypedSource;
use tract_nnef::tract_core::ops::Downsample;

use super::tract::model_error;
use crate::{Error, Result};

/// The plan of a compiled model file (`.nnef.tgz`).
pub fn lower(archive: &[u8]) -> Result<Plan> {
    // As read, not decluttered again: the file holds the graph `otlens compile` decluttered, and
    // another pass may rewrite it (into channels-last convolutions, say) differently per target.
    let model = super::reader::read(archive).map_err(model_error("not a readable compiled model"))?;
    Lowering::default().lower(&model)
}

fn unsupported(node: &TypedNode, why: impl std::fmt::Display) -> Error {
    Error::Model(format!(
        "the WebGPU path cannot run {} ({}): {why}",
        node.name,
        node.op.name()
    ))
}

#[derive(Default)]
struct Lowering {
    tensors: Vec<plan::Tensor>,
    steps: Vec<Step>,
    constants: Vec<f32>,
    outlets: HashMap<OutletId, TensorId>,
}

impl Lowering {
    fn lower(mut self, model: &TypedModel) -> Result<Plan> {
        let mut input = None;
        let order = model.eval_order().map_err(model_error("the model has no order"))?;
        for id in order {
            let node = model.node(id);
            // Only first outputs are computed (NNEF's max pool, say, also has the argmax one).
            if node.outputs.iter().skip(1).any(|output| !output.successors.is_empty()) {
                return Err(unsupported(node, "it has several outputs in use"));
            }
            let fact = &node.outputs[0].fact;
            let shape = fact
                .shape
                .as_concrete()
                .ok_or_else(|| unsupported(node, "its shape is not fixed"))?
                .to_vec();
            if shape.len() > 4 {
                return Err(unsupported(node, "its output has more than 4 axes"));
            }
            let tensor = if let Some(value) = &fact.konst {
                self.constant(node, value, shape)?
            } else if node.op_is::<TypedSource>() {
                let tensor = self.tensor(shape, Source::Computed);
                input = Some(tensor);
                tensor
            } else {
                self.node(node, shape)?
            };
            self.outlets.insert(OutletId::new(id, 0), tensor);
        }
        let output = model
            .output_outlets()
            .ok()
            .and_then(|outlets| outlets.first())
            .and_then(|outlet| self.outlets.get(outlet))
            .copied()
            .ok_or_else(|| Error::Model("the model has no output".into()))?;
        let input = input.ok_or_else(|| Error::Model("the model has no input".into()))?;
        // Unfused: the GPU module fuses steps itself, which keeps that code out of this module.
        Ok(Plan {
            tensors: self.tensors,
            input,
            output,
            steps: self.steps,
            constants: self.constants,
        })
    }

    fn tensor(&mut self, shape: Vec<usize>, source: Source) -> TensorId {
        self.tensors.push(plan::Tensor { shape, source });
        self.tensors.len() - 1
    }

    fn constant(&mut self, node: &TypedNode, value: &Tensor, shape: Vec<usize>) -> Result<TensorId> {
        let values = value
            .cast_to::<f32>()
            .map_err(|e| unsupported(node, format!("a constant of type {:?}: {e}", value.datum_type())))?;
        let values = values.to_plain_array_view::<f32>().map_err(|e| unsupported(node, e))?;
        let offset = self.constants.len();
        self.constants.extend(values.iter());
        Ok(self.tensor(shape, Source::Constant(offset)))
    }

    fn computed(&mut self, shape: Vec<usize>, step: impl FnOnce(TensorId) -> Step) -> TensorId {
        let output = self.tensor(shape, Source::Computed);
        self.steps.push(step(output));
        output
    }

    /// The value of a one-element constant.
    fn scalar(&self, tensor: TensorId) -> Option<f32> {
        match self.tensors[tensor].source {
            Source::Constant(offset) if self.tensors[tensor].len() == 1 => Some(self.constants[offset]),
            _ => None,
        }
    }

    fn shape(&self, tensor: TensorId) -> &[usize] {
        &self.tensors[tensor].shape
    }

    fn node(&mut self, node: &TypedNode, shape: Vec<usize>) -> Result<TensorId> {
        let inputs: Vec<TensorId> = node.inputs.iter().map(|outlet| self.outlets[outlet]).collect();
        let op = node.op.as_op();
        if let Some(binary) = op.downcast_ref::<TypedBinOp>() {
            let op = binary_op(binary.0.name()).ok_or_else(|| unsupported(node, "no kernel for it"))?;
            let (a, b) = (inputs[0], inputs[1]);
            return Ok(self.computed(shape, |output| Step::Binary { op, a, b, output }));
        }
        if let Some(element_wise) = op.downcast_ref::<ElementWiseOp>() {
            let mini = &element_wise.0;
            let op = match mini.downcast_ref::<PowConst>() {
                Some(pow) => UnaryOp::Pow(pow.exponent),
                None => unary_op(&mini.name()).ok_or_else(|| unsupported(node, "no kernel for it"))?,
            };
            let input = inputs[0];
            return Ok(self.computed(shape, |output| Step::Unary { op, input, output }));
        }
        if let Some(cast) = op.downcast_ref::<Cast>() {
            return self.cast(node, cast.to, inputs[0], shape);
        }
        if op.downcast_ref::<Iff>().is_some() {
            let [condition, then, otherwise] = inputs[..] else {
                return Err(unsupported(node, "it does not have three inputs"));
            };
            return Ok(self.computed(shape, |output| Step::Select {
                condition,
                then,
                otherwise,
                output,
            }));
        }
        if let Some(axis_op) = op.downcast_ref::<AxisOp>() {
            return self.axis_op(node, axis_op, inputs[0], shape);
        }
        if let Some(conv) = op.downcast_ref::<Conv>() {
            return self.conv(node, conv, &inputs, shape);
        }
        if let Some(pool) = op.downcast_ref::<MaxPool>() {
            let geometry = window(node, &pool.pool_spec, self.shape(inputs[0]))?;
            let input = inputs[0];
            return Ok(self.computed(shape, |output| Step::MaxPool {
                input,
                output,
                geometry,
            }));
        }
        if let Some(einsum) = op.downcast_ref::<EinSum>() {
            return self.einsum(node, einsum, &inputs, shape);
        }
        if let Some(reduce) = op.downcast_ref::<Reduce>() {
            let input = inputs[0];
            let op = match reduce.reducer {
                Reducer::Sum => ReduceOp::Sum,
                Reducer::Max => ReduceOp::Max,
                Reducer::Min => ReduceOp::Min,
                Reducer::MeanOfSquares => {
                    let squares = self.shape(input).to_vec();
                    let squared = self.computed(squares, |output| Step::Unary {
                        op: UnaryOp::Square,
                        input,
                        output,
                    });
                    return Ok(self.computed(shape, |output| Step::Reduce {
                        op: ReduceOp::Mean,
                        input: squared,
                        output,
                    }));
                }
                other => return Err(unsupported(node, format!("no kernel for {other:?}"))),
            };
            return Ok(self.computed(shape, |output| Step::Reduce { op, input, output }));
        }
        if let Some(downsample) = op.downcast_ref::<Downsample>() {
            let stride = usize::try_from(downsample.stride).map_err(|_| unsupported(node, "a negative stride"))?;
            let input = inputs[0];
            let mut strides = contiguous_strides(self.shape(input));
            let offset = downsample.modulo * strides[downsample.axis];
            strides[downsample.axis] *= stride;
            return Ok(self.computed(shape, |output| Step::Gather {
                input,
                output,
                offset,
                strides,
            }));
        }
        if let Some(slice) = op.downcast_ref::<Slice>() {
            let start = slice.start.to_usize().map_err(|e| unsupported(node, e))?;
            let input = inputs[0];
            let strides = contiguous_strides(self.shape(input));
            let offset = start * strides[slice.axis];
            return Ok(self.computed(shape, |output| Step::Gather {
                input,
                output,
                offset,
                strides,
            }));
        }
        Err(unsupported(node, "no kernel for it"))
    }

    /// Every tensor is f32 on the GPU, so a cast only has to reproduce the target type's values.
    fn cast(&mut self, node: &TypedNode, to: DatumType, input: TensorId, shape: Vec<usize>) -> Result<TensorId> {
        // A quantised type's values are its integer codes.
        let op = match to.unquantized() {
            DatumType::Bool => UnaryOp::CastToBool,
            DatumType::I8 => integer_cast(i8::MIN as f32, i8::MAX as f32),
            DatumType::U8 => integer_cast(0.0, u8::MAX as f32),
            DatumType::I16 => integer_cast(i16::MIN as f32, i16::MAX as f32),
            DatumType::U16 => integer_cast(0.0, u16::MAX as f32),
            DatumType::I32 => integer_cast(i32::MIN as f32, i32::MAX as f32),
            DatumType::F32 | DatumType::F16 | DatumType::F64 => {
                return Ok(self.tensor(shape, Source::Alias(input)));
            }
            other => return Err(unsupported(node, format!("a cast to {other:?}"))),
        };
        Ok(self.computed(shape, |output| Step::Unary { op, input, output }))
    }

    fn axis_op(&mut self, node: &TypedNode, op: &AxisOp, input: TensorId, shape: Vec<usize>) -> Result<TensorId> {
        let AxisOp::Move(from, to) = *op else {
            // Adding, removing or reshaping axes keeps the row-major order of the values.
            return Ok(self.tensor(shape, Source::Alias(input)));
        };
        let input_strides = contiguous_strides(self.shape(input));
        let mut axes: Vec<usize> = (0..input_strides.len()).collect();
        if from >= axes.len() || to >= axes.len() {
            return Err(unsupported(node, "it moves an axis that does not exist"));
        }
        let moved = axes.remove(from);
        axes.insert(to, moved);
        let strides = axes.iter().map(|&axis| input_strides[axis]).collect();
        Ok(self.computed(shape, |output| Step::Gather {
            input,
            output,
            offset: 0,
            strides,
        }))
    }

    fn conv(&mut self, node: &TypedNode, conv: &Conv, inputs: &[TensorId], shape: Vec<usize>) -> Result<TensorId> {
        if conv.kernel_fmt != KernelFormat::OIHW {
            return Err(unsupported(node, format!("{:?} weights", conv.kernel_fmt)));
        }
        let [mut input, weights, ..] = inputs[..] else {
            return Err(unsupported(node, "it has no weights"));
        };
        let mut bias = inputs.get(2).copied();
        if let Some(output) = conv.q_params {
            // The integer convolutions `otlens compile` writes: `Σ (x - x0) * w` in i32, every
            // scale 1 and the other zero points 0. In f32 the sums of up to 2^24 are exact.
            let [_, _, integer_bias, x0, x_scale, k0, k_scale, y0, y_scale] = inputs[..] else {
                return Err(unsupported(
                    node,
                    "it is a quantised convolution without its parameters",
                ));
            };
            let plain = [
                (integer_bias, 0.0),
                (x_scale, 1.0),
                (k0, 0.0),
                (k_scale, 1.0),
                (y0, 0.0),
                (y_scale, 1.0),
            ]
            .into_iter()
            .all(|(tensor, wanted)| self.scalar(tensor) == Some(wanted));
            if output != DatumType::I32 || !plain || self.scalar(x0).is_none() {
                return Err(unsupported(node, "it is a quantised convolution with scales"));
            }
            let shape = self.shape(input).to_vec();
            input = self.computed(shape, |output| Step::Binary {
                op: BinaryOp::Sub,
                a: input,
                b: x0,
                output,
            });
            bias = None;
        }
        let geometry = window(node, &conv.pool_spec, self.shape(input))?;
        let groups = conv.group;
        Ok(self.computed(shape, |output| Step::Conv {
            input,
            weights,
            bias,
            output,
            geometry,
            groups,
            clamp: None,
        }))
    }

    /// An einsum with one summed axis as a batched matrix product: output axes found only in
    /// the first operand are rows, only in the second columns, in both the batch.
    fn einsum(
        &mut self,
        node: &TypedNode,
        einsum: &EinSum,
        inputs: &[TensorId],
        shape: Vec<usize>,
    ) -> Result<TensorId> {
        if einsum.q_params.is_some() || inputs.len() != 2 {
            return Err(unsupported(node, "it is not a product of two f32 tensors"));
        }
        let (a, b) = (inputs[0], inputs[1]);
        let strides = [a, b].map(|operand| contiguous_strides(self.shape(operand)));
        let output_strides = contiguous_strides(&shape);
        // Per role (0 row, 1 column, 2 batch, 3 summed), the axes in it: extent, and strides
        // in a, b and the output.
        let mut roles: [Vec<(usize, [usize; 3])>; 4] = Default::default();
        for axis in einsum.axes.iter_all_axes() {
            let position = |list: &TVec<usize>| -> Result<Option<usize>> {
                match list.len() {
                    0 => Ok(None),
                    1 => Ok(Some(list[0])),
                    _ => Err(unsupported(node, format!("axis {} repeats in an operand", axis.repr))),
                }
            };
            let in_a = position(&axis.inputs[0])?;
            let in_b = position(&axis.inputs[1])?;
            let out = position(&axis.outputs[0])?;
            let extent = in_a
                .map(|p| self.shape(a)[p])
                .or(in_b.map(|p| self.shape(b)[p]))
                .or(out.map(|p| shape[p]))
                .unwrap_or(1);
            if extent == 1 {
                continue;
            }
            let role = match (in_a.is_some(), in_b.is_some(), out.is_some()) {
                (true, false, true) => 0,
                (false, true, true) => 1,
                (true, true, true) => 2,
                (true, true, false) => 3,
                _ => {
                    return Err(unsupported(
                        node,
                        format!("axis {} is summed in one operand only", axis.repr),
                    ))
                }
            };
            let stride = |p: Option<usize>, strides: &[usize]| p.map_or(0, |p| strides[p]);
            roles[role].push((
                extent,
                [
                    stride(in_a, &strides[0]),
                    stride(in_b, &strides[1]),
                    stride(out, &output_strides),
                ],
            ));
        }
        let roles = roles
            .map(merge_axes)
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| unsupported(node, "it is not a single matrix product"))?;
        let [row, column, batch, summed] = roles[..] else {
            unreachable!("four roles")
        };
        let operand = |which: usize, row_stride: usize, column_stride: usize| MatrixStrides {
            row: row_stride,
            column: column_stride,
            batch: batch.1[which],
        };
        let step = |output| Step::MatMul {
            a,
            b,
            output,
            m: row.0,
            n: column.0,
            k: summed.0,
            batch: batch.0,
            a_strides: operand(0, row.1[0], summed.1[0]),
            b_strides: operand(1, summed.1[1], column.1[1]),
            output_strides: operand(2, row.1[2], column.1[2]),
            bias: None,
            clamp: None,
        };
        Ok(self.computed(shape, step))
    }
}

/// Axes that play one role as a single axis, when they are nested in every operand the same
/// way (e.g. height and width of an image as its pixels); `None` when they are not.
fn merge_axes(mut axes: Vec<(usize, [usize; 3])>) -> Option<(usize, [usize; 3])> {
    // Outermost first: the largest stride in whichever operand has one.
    axes.sort_by_key(|(_, strides)| std::cmp::Reverse(*strides));
    let mut axes = axes.into_iter();
    let Some(mut merged) = axes.next() else {
        return Some((1, [0; 3]));
    };
    for (extent, strides) in axes {
        if (0..3).any(|i| merged.1[i] != extent * strides[i]) {
            return None;
        }
        merged = (merged.0 * extent, strides);
    }
    Some(merged)
}

fn integer_cast(min: f32, max: f32) -> UnaryOp {
    UnaryOp::CastToInteger { min, max }
}

fn binary_op(name: &str) -> Option<BinaryOp> {
    Some(match name {
        "Add" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "Div" => BinaryOp::Div,
        "Max" => BinaryOp::Max,
        "Min" => BinaryOp::Min,
        "Pow" => BinaryOp::Pow,
        "Eq" => BinaryOp::Equal,
        "NE" => BinaryOp::NotEqual,
        "LT" => BinaryOp::Less,
        "LTE" => BinaryOp::LessOrEqual,
        "GT" => BinaryOp::Greater,
        "GTE" => BinaryOp::GreaterOrEqual,
        _ => return None,
    })
}

fn unary_op(name: &str) -> Option<UnaryOp> {
    Some(match name {
        "Square" => UnaryOp::Square,
        "Sqrt" => UnaryOp::Sqrt,
        "Rsqrt" => UnaryOp::Rsqrt,
        "Recip" => UnaryOp::Recip,
        "Abs" => UnaryOp::Abs,
        "Neg" => UnaryOp::Neg,
        "Exp" => UnaryOp::Exp,
        "RoundHalfToEven" => UnaryOp::RoundHalfEven,
        _ => return None,
    })
}

/// The window of a 2-D pooling or convolution over an image of shape `[C, H, W]` or `[1, C, H, W]`.
fn window(node: &TypedNode, spec: &PoolSpec, shape: &[usize]) -> Result<Window> {
    let image = match spec.data_format {
        DataFormat::NCHW if shape.first() == Some(&1) => &shape[1..],
        DataFormat::CHW => shape,
        other => return Err(unsupported(node, format!("{other:?} data of shape {shape:?}"))),
    };
    let [_, height, width] = *image else {
        return Err(unsupported(node, "its input is not an image"));
    };
    if spec.kernel_shape.len() != 2 {
        return Err(unsupported(node, "it is not two-dimensional"));
    }
    let padding = spec.computed_padding(&[height, width]);
    let pair = |values: &[usize]| [values[0], values[1]];
    Ok(Window {
        kernel: pair(&spec.kernel_shape),
        strides: pair(&spec.strides()),
        dilations: pair(&spec.dilations()),
        padding: [padding[0].pad_before, padding[1].pad_before],
    })
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}
