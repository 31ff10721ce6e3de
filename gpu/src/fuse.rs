//! Folds element-wise steps into the steps before them, so each value is written once.
//!
//! A 1x1 convolution compiled by tract is a matrix product, then a per-channel bias addition,
//! then ReLU6 as a max and a min: four passes over the activations. Folded into the product's
//! last write, they are one. An int8 quantise-dequantise pair is eight element-wise steps with
//! constants; chained, they are one dispatch.

use crate::plan::{BinaryOp, Clamp, Plan, PointOp, Source, Step, TensorId, MAX_POINT_OPS};

impl Plan {
    /// Folds each bias addition and clamp that alone reads a product's or convolution's output
    /// into that step, then joins element-wise steps that each alone read the one before into
    /// chains. The values computed are the same.
    pub fn fuse(&mut self) {
        self.fold_while(Plan::product_with_reader);
        for at in 0..self.steps.len() {
            if let Some(chain) = self.as_chain(&self.steps[at]) {
                self.steps[at] = chain;
            }
        }
        self.fold_while(Plan::joined_chain);
    }

    /// Replaces each step with `fold(step, its sole reader)` while that gives a step, and drops
    /// the reader.
    fn fold_while(&mut self, fold: impl Fn(&Plan, usize, usize) -> Option<Step>) {
        let mut at = 0;
        while at < self.steps.len() {
            match self
                .sole_reader(at)
                .and_then(|reader| Some((reader, fold(self, at, reader)?)))
            {
                Some((reader, folded)) => {
                    self.steps[at] = folded;
                    self.steps.remove(reader);
                }
                None => at += 1,
            }
        }
    }

    /// The only step reading step `at`'s output, when its output is not the model's. Compiled
    /// graphs reshape between steps, so reads go through aliases.
    fn sole_reader(&self, at: usize) -> Option<usize> {
        let written = Plan::step_tensors(&self.steps[at]).1;
        if self.root(self.output) == written {
            return None;
        }
        let reads_written = |step: &Step| Plan::step_tensors(step).0.iter().any(|&t| self.root(t) == written);
        let mut readers = (at + 1..self.steps.len()).filter(|&step| reads_written(&self.steps[step]));
        let reader = readers.next()?;
        readers.next().is_none().then_some(reader)
    }

    /// The value of a one-value constant.
    fn scalar(&self, tensor: TensorId) -> Option<f32> {
        match self.tensors[self.root(tensor)].source {
            Source::Constant(offset) if self.tensors[tensor].len() == 1 => Some(self.constants[offset]),
            _ => None,
        }
    }

    /// A unary step, or arithmetic with a one-value constant, as a chain of one.
    fn as_chain(&self, step: &Step) -> Option<Step> {
        let (input, output, op) = match *step {
            Step::Unary { op, input, output } => (input, output, PointOp::Unary(op)),
            Step::Binary { op, a, b, output } => {
                let (input, constant, constant_first) = match (self.scalar(a), self.scalar(b)) {
                    (_, Some(value)) => (a, value, false),
                    (Some(value), None) => (b, value, true),
                    (None, None) => return None,
                };
                if self.tensors[input].len() != self.tensors[output].len() {
                    return None;
                }
                let op = PointOp::WithConstant {
                    op,
                    value: constant,
                    constant_first,
                };
                (input, output, op)
            }
            _ => return None,
        };
        Some(Step::Pointwise {
            input,
            output,
            ops: vec![op],
        })
    }

    /// Chain `at` followed by chain `reader`, as long as the kernel takes it.
    fn joined_chain(&self, at: usize, reader: usize) -> Option<Step> {
        let (Step::Pointwise { input, ops, .. }, Step::Pointwise { output, ops: next, .. }) =
            (&self.steps[at], &self.steps[reader])
        else {
            return None;
        };
        if ops.len() + next.len() > MAX_POINT_OPS {
            return None;
        }
        Some(Step::Pointwise {
            input: *input,
            output: *output,
            ops: ops.iter().chain(next).copied().collect(),
        })
    }

    /// Product or convolution `at` with its reader folded in, when that adds one value per row or
    /// clamps to a constant.
    fn product_with_reader(&self, at: usize, reader: usize) -> Option<Step> {
        let written = Plan::step_tensors(&self.steps[at]).1;
        let Step::Binary { op, a, b, output } = self.steps[reader] else {
            return None;
        };
        let (operand, other) = if self.root(a) == written { (a, b) } else { (b, a) };
        if self.root(other) == written || self.tensors[output].len() != self.tensors[written].len() {
            return None;
        }
        if !matches!(self.tensors[self.root(other)].source, Source::Constant(_)) {
            return None;
        }
        let scalar = self.scalar(other);
        let mut fused = self.steps[at].clone();
        let (clamp, bias, fused_output) = match &mut fused {
            Step::Conv { clamp, output, .. } => (clamp, None, output),
            Step::MatMul {
                clamp, bias, output, ..
            } => (clamp, Some(bias), output),
            _ => return None,
        };
        // The folded step writes what its reader wrote: the same values in the same order.
        *fused_output = output;
        // Unbounded sides are the extreme finite values: plan headers are JSON, which has no infinity.
        let current = clamp.unwrap_or(Clamp {
            low: f32::MIN,
            high: f32::MAX,
        });
        match (op, scalar) {
            // Max then min is a clamp only while the bounds stay ordered.
            (BinaryOp::Max, Some(low)) if low <= current.high => {
                *clamp = Some(Clamp {
                    low: low.max(current.low),
                    ..current
                })
            }
            (BinaryOp::Min, Some(high)) if high >= current.low => {
                *clamp = Some(Clamp {
                    high: high.min(current.high),
                    ..current
                })
            }
            (BinaryOp::Add, _) if clamp.is_none() && self.is_row_bias(&self.steps[at], operand, other) => match bias {
                Some(bias @ None) => *bias = Some(other),
                _ => return None,
            },
            _ => return None,
        }
        Some(fused)
    }

    /// Whether `constant`, added to `operand` (the product `step`'s output, maybe reshaped),
    /// holds one value per row of the product.
    fn is_row_bias(&self, step: &Step, operand: TensorId, constant: TensorId) -> bool {
        let Step::MatMul { m, output_strides, .. } = *step else {
            return false;
        };
        let out_shape = &self.tensors[operand].shape;
        let shape = &self.tensors[constant].shape;
        if shape.len() > out_shape.len() {
            return false;
        }
        let offset = out_shape.len() - shape.len();
        let varying: Vec<usize> = (0..shape.len())
            .filter(|&axis| shape[axis] != 1)
            .map(|axis| axis + offset)
            .collect();
        match varying[..] {
            [] => m == 1,
            [axis] => {
                let stride: usize = out_shape[axis + 1..].iter().product();
                out_shape[axis] == m && stride == output_strides.row
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{MatrixStrides, Tensor, UnaryOp};

    /// x (4x3) times w (3x2), plus a bias per row of the 2x... output, then ReLU6.
    fn product_bias_relu6(extra_reader: bool) -> Plan {
        let computed = |shape: &[usize]| Tensor {
            shape: shape.to_vec(),
            source: Source::Computed,
        };
        let constant = |shape: &[usize], offset| Tensor {
            shape: shape.to_vec(),
            source: Source::Constant(offset),
        };
        let binary = |op, a, b, output| Step::Binary { op, a, b, output };
        let mut steps = vec![
            Step::MatMul {
                a: 1,
                b: 0,
                output: 2,
                m: 2,
                n: 4,
                k: 3,
                batch: 1,
                a_strides: MatrixStrides {
                    row: 3,
                    column: 1,
                    batch: 0,
                },
                b_strides: MatrixStrides {
                    row: 4,
                    column: 1,
                    batch: 0,
                },
                output_strides: MatrixStrides {
                    row: 4,
                    column: 1,
                    batch: 0,
                },
                bias: None,
                clamp: None,
            },
            binary(BinaryOp::Add, 2, 3, 4),
            binary(BinaryOp::Max, 4, 5, 6),
            binary(BinaryOp::Min, 6, 7, 8),
        ];
        if extra_reader {
            steps.push(binary(BinaryOp::Add, 4, 4, 9));
        }
        Plan {
            tensors: vec![
                computed(&[3, 4]),
                constant(&[2, 3], 0),
                computed(&[2, 4]),
                constant(&[2, 1], 6),
                computed(&[2, 4]),
                constant(&[1, 1], 8),
                computed(&[2, 4]),
                constant(&[1, 1], 9),
                computed(&[2, 4]),
                computed(&[2, 4]),
            ],
            input: 0,
            output: 8,
            steps,
            constants: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, -0.5, 0.0, 6.0],
        }
    }

    #[test]
    fn bias_and_relu6_fold_into_the_product() {
        let mut plan = product_bias_relu6(false);
        plan.fuse();
        assert_eq!(plan.steps.len(), 1);
        let Step::MatMul {
            output, bias, clamp, ..
        } = plan.steps[0]
        else {
            panic!("{:?}", plan.steps)
        };
        assert_eq!((output, bias), (8, Some(3)));
        assert_eq!(clamp, Some(Clamp { low: 0.0, high: 6.0 }));
    }

    #[test]
    fn a_value_read_twice_stays_computed() {
        let mut plan = product_bias_relu6(true);
        plan.fuse();
        // The bias folds; the sum it gives has two readers, so the clamp stays apart, as a chain.
        assert_eq!(plan.steps.len(), 3);
        assert!(matches!(
            plan.steps[0],
            Step::MatMul {
                bias: Some(3),
                output: 4,
                clamp: None,
                ..
            }
        ));
        let Step::Pointwise { input, output, ref ops } = plan.steps[1] else {
            panic!("{:?}", plan.steps)
        };
        assert_eq!((input, output), (4, 8));
        let with = |op, value| PointOp::WithConstant {
            op,
            value,
            constant_first: false,
        };
        assert_eq!(ops, &[with(BinaryOp::Max, 0.0), with(BinaryOp::Min, 6.0)]);
    }

    #[test]
    fn chains_stop_at_the_kernels_limit_and_at_a_second_reader() {
        // x -> 16 times (x * 2) -> the output; one more step negates the 5th value.
        let computed = |len| Tensor {
            shape: vec![len],
            source: Source::Computed,
        };
        let mut tensors = vec![
            computed(4),
            Tensor {
                shape: vec![],
                source: Source::Constant(0),
            },
        ];
        let mut steps = Vec::new();
        for link in 0..16 {
            let input = if link == 0 { 0 } else { tensors.len() - 1 };
            tensors.push(computed(4));
            steps.push(Step::Binary {
                op: BinaryOp::Mul,
                a: input,
                b: 1,
                output: tensors.len() - 1,
            });
        }
        let output = tensors.len() - 1;
        tensors.push(computed(4));
        steps.push(Step::Unary {
            op: UnaryOp::Neg,
            input: 6,
            output: tensors.len() - 1,
        });
        let mut plan = Plan {
            tensors,
            input: 0,
            output,
            steps,
            constants: vec![2.0],
        };
        plan.fuse();
        let lengths: Vec<usize> = plan
            .steps
            .iter()
            .map(|step| match step {
                Step::Pointwise { ops, .. } => ops.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        // Links 1-5 end at the value two steps read; 6-15 fill a chain; 16 and the negation remain.
        assert_eq!(lengths, [5, 10, 1, 1]);
    }
}
