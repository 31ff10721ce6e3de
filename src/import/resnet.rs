//! ResNet-18 from a torchvision state dict (`conv1`, `bn1`, `layer{1..4}.{0,1}.*`, `fc`).

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::checkpoint::{Array, ArrayData, Loader, StateDict};
use super::graph::{ints, Conv, GraphBuilder};
use super::ImportError;

/// torchvision's BatchNorm epsilon.
const BN_EPS: f32 = 1e-5;
/// Output channels of layer1..layer4; layers 2-4 halve the resolution.
const WIDTHS: [usize; 4] = [64, 128, 256, 512];
const BLOCKS_PER_LAYER: usize = 2;
/// Name prefix of the ImageNet classifier.
pub const CLASSIFIER: &str = "fc";
const CLASSES: usize = 1000;

fn conv_bn(loader: &Loader, conv: &str, bn: &str, shape: [usize; 4], stride: usize) -> Result<Conv, ImportError> {
    let pad = shape[2] / 2;
    Ok(Conv::folded(loader, conv, bn, shape, 1, BN_EPS)?
        .with_stride(stride)
        .with_pads([pad; 4]))
}

/// Adds the backbone to `graph`; returns the last feature map's name and channel count.
pub fn backbone(loader: &Loader, graph: &mut GraphBuilder, input: &str) -> Result<(String, usize), ImportError> {
    let stem = conv_bn(loader, "conv1", "bn1", [64, 3, 7, 7], 2)?;
    let x = graph.conv("conv1", input, &stem);
    let x = graph.node("Relu", "conv1.relu", &[&x], vec![]);
    let pool = vec![
        ints("kernel_shape", &[3, 3]),
        ints("strides", &[2, 2]),
        ints("pads", &[1; 4]),
    ];
    let mut x = graph.node("MaxPool", "maxpool", &[&x], pool);
    let mut channels = 64;
    for (layer, &width) in WIDTHS.iter().enumerate() {
        for block in 0..BLOCKS_PER_LAYER {
            let stride = if layer > 0 && block == 0 { 2 } else { 1 };
            let name = format!("layer{}.{block}", layer + 1);
            x = basic_block(loader, graph, &name, &x, channels, width, stride)?;
            channels = width;
        }
    }
    Ok((x, channels))
}

/// Two 3x3 convolutions plus a shortcut (a strided 1x1 projection when the shape changes).
fn basic_block(
    loader: &Loader,
    graph: &mut GraphBuilder,
    name: &str,
    input: &str,
    channels: usize,
    width: usize,
    stride: usize,
) -> Result<String, ImportError> {
    let conv1 = conv_bn(
        loader,
        &format!("{name}.conv1"),
        &format!("{name}.bn1"),
        [width, channels, 3, 3],
        stride,
    )?;
    let x = graph.conv(&format!("{name}.conv1"), input, &conv1);
    let x = graph.node("Relu", &format!("{name}.conv1.relu"), &[&x], vec![]);
    let conv2 = conv_bn(
        loader,
        &format!("{name}.conv2"),
        &format!("{name}.bn2"),
        [width, width, 3, 3],
        1,
    )?;
    let x = graph.conv(&format!("{name}.conv2"), &x, &conv2);
    let shortcut = if stride != 1 || channels != width {
        let projection = conv_bn(
            loader,
            &format!("{name}.downsample.0"),
            &format!("{name}.downsample.1"),
            [width, channels, 1, 1],
            stride,
        )?;
        graph.conv(&format!("{name}.downsample"), input, &projection)
    } else {
        input.to_owned()
    };
    let x = graph.node("Add", &format!("{name}.add"), &[&x, &shortcut], vec![]);
    Ok(graph.node("Relu", &format!("{name}.relu"), &[&x], vec![]))
}

/// Names and shapes of a torchvision ResNet-18 state dict's float tensors, in torchvision's order.
fn float_tensors() -> Vec<(String, Vec<usize>)> {
    let mut tensors = vec![("conv1.weight".to_owned(), vec![64, 3, 7, 7])];
    let batch_norm = |tensors: &mut Vec<(String, Vec<usize>)>, name: &str, width: usize| {
        for param in ["weight", "bias", "running_mean", "running_var"] {
            tensors.push((format!("{name}.{param}"), vec![width]));
        }
    };
    batch_norm(&mut tensors, "bn1", 64);
    let mut channels = 64;
    for (layer, &width) in WIDTHS.iter().enumerate() {
        for block in 0..BLOCKS_PER_LAYER {
            let name = format!("layer{}.{block}", layer + 1);
            tensors.push((format!("{name}.conv1.weight"), vec![width, channels, 3, 3]));
            batch_norm(&mut tensors, &format!("{name}.bn1"), width);
            tensors.push((format!("{name}.conv2.weight"), vec![width, width, 3, 3]));
            batch_norm(&mut tensors, &format!("{name}.bn2"), width);
            if channels != width {
                tensors.push((format!("{name}.downsample.0.weight"), vec![width, channels, 1, 1]));
                batch_norm(&mut tensors, &format!("{name}.downsample.1"), width);
            }
            channels = width;
        }
    }
    tensors.push(("fc.weight".into(), vec![CLASSES, 512]));
    tensors.push(("fc.bias".into(), vec![CLASSES]));
    tensors
}

/// A ResNet-18 state dict with He-uniform weights and mildly perturbed BatchNorm statistics,
/// the same for the same `seed`. For benchmarks and tests: it recognises nothing.
pub fn random_state_dict(seed: u64) -> StateDict {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut state = StateDict::default();
    for (name, shape) in float_tensors() {
        let count: usize = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let (low, high) = match name.rsplit('.').next() {
            Some("running_var") => (0.5, 1.5),
            Some("running_mean") | Some("bias") => (-0.1, 0.1),
            Some("weight") if shape.len() == 1 => (0.5, 1.5), // BatchNorm gamma
            _ => {
                let bound = (6.0 / fan_in as f32).sqrt();
                (-bound, bound)
            }
        };
        let data = (0..count).map(|_| rng.random_range(low..high)).collect();
        if name.ends_with("running_var") {
            let counter = name.replace("running_var", "num_batches_tracked");
            state.tensors.insert(
                counter,
                Array {
                    shape: vec![],
                    data: ArrayData::I64(vec![0]),
                },
            );
        }
        state.tensors.insert(name, Array::f32(shape, data));
    }
    state
}
