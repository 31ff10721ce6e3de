//! EfficientNet-Lite0 from a lukemelas-style state dict (`_conv_stem`, `_blocks.N.*`, `_conv_head`, `_fc`).
//!
//! Lite differs from B0 in what makes it quantisation-friendly: no squeeze-excite, ReLU6
//! instead of swish, and a fixed stem (32) and head (1280). The weights were trained in
//! TensorFlow, so convolutions use TF "SAME" padding (the odd pixel goes bottom/right).

use super::checkpoint::Loader;
use super::graph::{same_padding, Conv, GraphBuilder};
use super::ImportError;

/// BatchNorm epsilon of the TensorFlow-trained weights.
const BN_EPS: f32 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// One stage of MBConv blocks; the stride applies to its first block.
struct Stage {
    kernel: usize,
    stride: usize,
    expand: usize,
    out: usize,
    repeats: usize,
}

const STAGES: [Stage; 7] = [
    stage(3, 1, 1, 16, 1),
    stage(3, 2, 6, 24, 2),
    stage(5, 2, 6, 40, 2),
    stage(3, 2, 6, 80, 3),
    stage(5, 1, 6, 112, 3),
    stage(5, 2, 6, 192, 4),
    stage(3, 1, 6, 320, 1),
];

const fn stage(kernel: usize, stride: usize, expand: usize, out: usize, repeats: usize) -> Stage {
    Stage {
        kernel,
        stride,
        expand,
        out,
        repeats,
    }
}

/// Square "SAME" pads for a `kernel` x `kernel`, `stride` convolution on a `size` x `size` map.
fn same_pads(size: usize, kernel: usize, stride: usize) -> [usize; 4] {
    let (begin, end) = same_padding(size, kernel, stride);
    [begin, begin, end, end]
}

/// Adds the backbone to `graph`; returns the last feature map's name and channel count.
pub fn backbone(
    loader: &Loader,
    graph: &mut GraphBuilder,
    input: &str,
    size: usize,
) -> Result<(String, usize), ImportError> {
    let mut size = size;
    let stem = Conv::folded(loader, "_conv_stem", "_bn0", [STEM_CHANNELS, 3, 3, 3], 1, BN_EPS)?
        .with_stride(2)
        .with_pads(same_pads(size, 3, 2));
    size = stem.output_size(size);
    let x = graph.conv("_conv_stem", input, &stem);
    let mut x = graph.relu6("_conv_stem.relu6", &x);
    let mut channels = STEM_CHANNELS;
    let mut index = 0;
    for stage in &STAGES {
        for repeat in 0..stage.repeats {
            let stride = if repeat == 0 { stage.stride } else { 1 };
            let name = format!("_blocks.{index}");
            (x, size) = mb_conv(loader, graph, &name, &x, size, channels, stage, stride)?;
            channels = stage.out;
            index += 1;
        }
    }
    let head = Conv::folded(loader, "_conv_head", "_bn1", [HEAD_CHANNELS, channels, 1, 1], 1, BN_EPS)?;
    let x = graph.conv("_conv_head", &x, &head);
    Ok((graph.relu6("_conv_head.relu6", &x), HEAD_CHANNELS))
}

/// Inverted residual block: 1x1 expand (unless the ratio is 1), depthwise, 1x1 linear
/// projection, plus the input when the shape is unchanged.
#[allow(clippy::too_many_arguments)]
fn mb_conv(
    loader: &Loader,
    graph: &mut GraphBuilder,
    name: &str,
    input: &str,
    size: usize,
    channels: usize,
    stage: &Stage,
    stride: usize,
) -> Result<(String, usize), ImportError> {
    let hidden = channels * stage.expand;
    let mut x = input.to_owned();
    if stage.expand != 1 {
        let expand = Conv::folded(
            loader,
            &format!("{name}._expand_conv"),
            &format!("{name}._bn0"),
            [hidden, channels, 1, 1],
            1,
            BN_EPS,
        )?;
        x = graph.conv(&format!("{name}._expand_conv"), &x, &expand);
        x = graph.relu6(&format!("{name}._expand_conv.relu6"), &x);
    }
    let k = stage.kernel;
    let depthwise = Conv::folded(
        loader,
        &format!("{name}._depthwise_conv"),
        &format!("{name}._bn1"),
        [hidden, 1, k, k],
        hidden,
        BN_EPS,
    )?
    .with_stride(stride)
    .with_pads(same_pads(size, k, stride));
    let out_size = depthwise.output_size(size);
    x = graph.conv(&format!("{name}._depthwise_conv"), &x, &depthwise);
    x = graph.relu6(&format!("{name}._depthwise_conv.relu6"), &x);
    let project = Conv::folded(
        loader,
        &format!("{name}._project_conv"),
        &format!("{name}._bn2"),
        [stage.out, hidden, 1, 1],
        1,
        BN_EPS,
    )?;
    x = graph.conv(&format!("{name}._project_conv"), &x, &project);
    if stride == 1 && channels == stage.out {
        x = graph.node("Add", &format!("{name}.add"), &[&x, input], vec![]);
    }
    Ok((x, out_size))
}

/// Name prefix of the ImageNet classifier.
pub const CLASSIFIER: &str = "_fc";
