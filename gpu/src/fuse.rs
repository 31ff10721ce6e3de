//! Folds element-wise steps into the matrix product or convolution before them.
//!
//! A 1x1 convolution compiled by tract is a matrix product, then a per-channel bias addition,
//! then ReLU6 as a max and a min: four passes over the activations. Folded into the product's
//! last write, they are one, and the dispatches per image drop by two thirds for EfficientNet.

use crate::plan::{BinaryOp, Clamp, Plan, Source, Step, TensorId};

impl Plan {
    /// Folds each bias addition and clamp that alone reads a product's or convolution's output
    /// into that step. The values computed are the same.
    pub fn fuse(&mut self) {
        let mut at = 0;
        while at < self.steps.len() {
            match self.fusable_reader(at) {
                Some((reader, fused)) => {
                    self.steps[at] = fused;
                    self.steps.remove(reader);
                }
                None => at += 1,
            }
        }
    }

    /// The step that alone reads step `at`'s output and can be folded into it, and the step
    /// that results. Compiled graphs reshape between steps, so reads go through aliases.
    fn fusable_reader(&self, at: usize) -> Option<(usize, Step)> {
        let written = Plan::step_tensors(&self.steps[at]).1;
        if self.root(self.output) == written {
            return None;
        }
        let reads_written = |step: &Step| Plan::step_tensors(step).0.iter().any(|&t| self.root(t) == written);
        let mut readers = (at + 1..self.steps.len()).filter(|&step| reads_written(&self.steps[step]));
        let reader = readers.next()?;
        if readers.next().is_some() {
            return None;
        }
        let Step::Binary { op, a, b, output } = self.steps[reader] else {
            return None;
        };
        let (operand, other) = if self.root(a) == written { (a, b) } else { (b, a) };
        if self.root(other) == written || self.tensors[output].len() != self.tensors[written].len() {
            return None;
        }
        let Source::Constant(offset) = self.tensors[self.root(other)].source else {
            return None;
        };
        let scalar = (self.tensors[other].len() == 1).then(|| self.constants[offset]);
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
        Some((reader, fused))
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
    use crate::plan::{MatrixStrides, Tensor};

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
        // The bias folds; the sum it gives has two readers, so the clamp stays apart.
        assert_eq!(plan.steps.len(), 4);
        assert!(matches!(
            plan.steps[0],
            Step::MatMul {
                bias: Some(3),
                output: 4,
                clamp: None,
                ..
            }
        ));
    }
}
