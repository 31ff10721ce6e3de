//! Stage 2: fine-tuning the backbone's last layers together with the head.
//!
//! A linear head on frozen features saturates early (In-shop: held-out Recall@1 0.81 after
//! two epochs). The backbone's last convolutions ([`TunableConv`]) are the cheapest layers to
//! train: the 7x7 feature map before them is cached per view like the features, so an epoch
//! costs a few products per photo and no image decoding. For EfficientNet-Lite0 that is its
//! `_conv_head` (320 -> 1280 channels, then ReLU6), and with it its last MBConv block (192 ->
//! 1152 -> depthwise 3x3 -> 320).

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::{Linear, Module, VarMap};

use super::features::{Features, Rows};
use super::head::{
    find_var, fit, head_of, l2_normalise, projection, snapshot, Auxiliary, EpochLog, Targets, TrainConfig, Trainable,
    Trained,
};
use crate::import::head::{Activation, Head, TunableConv, GEM_P};

/// Rows handled at once when embedding for scoring, to bound memory.
const CHUNK: usize = 256;

/// Feature maps as the model gives them: each row is `channels` runs of `positions` values
/// (C x H x W) of a square map.
pub struct FeatureMaps {
    pub maps: Features,
    pub channels: usize,
}

impl FeatureMaps {
    pub fn new(maps: Features, channels: usize) -> Result<FeatureMaps> {
        anyhow::ensure!(
            channels > 0 && maps.dims.is_multiple_of(channels),
            "a feature map of {} values does not have {channels} channels",
            maps.dims
        );
        let positions = maps.dims / channels;
        anyhow::ensure!(
            side_of(positions).is_some(),
            "a feature map of {positions} positions is not square"
        );
        Ok(FeatureMaps { maps, channels })
    }

    fn rows(&self) -> usize {
        self.maps.values.len() / self.maps.dims
    }

    /// Rows `from..to` as a (channels, rows, positions) tensor.
    fn tensor(&self, from: usize, to: usize, device: &Device) -> candle_core::Result<Tensor> {
        let values = &self.maps.values[from * self.maps.dims..to * self.maps.dims];
        channels_first(
            &Tensor::from_slice(values, (to - from, self.maps.dims), device)?,
            self.channels,
        )
    }
}

/// A batch of rows of C x H x W maps, (rows, C x H x W), as (C, rows, H x W). The layers work
/// channels first so that every per-channel gradient (biases, depthwise taps, the pooling)
/// is a sum over the last dimensions, which candle's CPU backend sums fast; a sum over
/// leading dimensions costs a division per element and took a third of an epoch.
fn channels_first(rows: &Tensor, channels: usize) -> candle_core::Result<Tensor> {
    let (count, width) = rows.dims2()?;
    rows.reshape((count, channels, width / channels))?
        .transpose(0, 1)?
        .contiguous()
}

/// The side of a square map of `positions` positions.
fn side_of(positions: usize) -> Option<usize> {
    let side = positions.isqrt();
    (side * side == positions).then_some(side)
}

impl Rows for FeatureMaps {
    fn select(&self, rows: &[usize]) -> FeatureMaps {
        FeatureMaps {
            maps: self.maps.select(rows),
            channels: self.channels,
        }
    }
}

/// One [`TunableConv`] as candle tensors: the weight is (outputs, inputs) for a 1x1
/// convolution and (channels, k x k) for a depthwise one.
struct Layer {
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    activation: Activation,
}

impl Layer {
    fn new(conv: &TunableConv, weight: Tensor, bias: Tensor) -> Layer {
        Layer {
            weight,
            bias,
            kernel: conv.kernel,
            activation: conv.activation,
        }
    }

    /// The layer on channels-first square maps (channels, rows, positions).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (channels, rows, positions) = x.dims3()?;
        let x = if self.kernel == 1 {
            self.weight
                .matmul(&x.reshape((channels, rows * positions))?)?
                .broadcast_add(&self.bias.unsqueeze(1)?)?
                .reshape(((), rows, positions))?
        } else {
            self.depthwise(x)?
        };
        match self.activation {
            Activation::Linear => Ok(x),
            Activation::Relu => x.relu(),
            Activation::Clip(ceiling) => x.clamp(0f32, ceiling),
        }
    }

    /// A depthwise k x k convolution with stride 1 and zero "same" padding, as k x k shifted
    /// products: candle has no depthwise kernel, and its grouped convolution runs one group
    /// at a time. Each row of the padded map is flattened, so a tap is one shift of it (one
    /// narrow, whose gradient is a copy at full size); the shifts wrap into the next row only
    /// in the `2 x pad` padding columns, which are dropped at the end.
    fn depthwise(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (channels, rows, positions) = x.dims3()?;
        let side = side_of(positions).ok_or_else(|| candle_core::Error::Msg("the feature map is not square".into()))?;
        let pad = self.kernel / 2;
        let width = side + 2 * pad;
        // One more padding row, so the last tap's shift stays inside the map.
        let grid = x
            .reshape((channels, rows, side, side))?
            .pad_with_zeros(2, pad, pad + 1)?
            .pad_with_zeros(3, pad, pad)?
            .reshape((channels, rows, (width + 1) * width))?;
        let mut sum = self
            .bias
            .reshape((channels, 1, 1))?
            .broadcast_as((channels, rows, side * width))?
            .contiguous()?;
        for dy in 0..self.kernel {
            for dx in 0..self.kernel {
                let tap = self.weight.narrow(1, dy * self.kernel + dx, 1)?.unsqueeze(2)?;
                let shifted = grid.narrow(2, dy * width + dx, side * width)?;
                sum = (sum + shifted.broadcast_mul(&tap)?)?;
            }
        }
        sum.reshape((channels, rows, side, width))?
            .narrow(3, 0, side)?
            .reshape((channels, rows, positions))
    }
}

/// The backbone's last convolutions, GeM pooling and the head, as one trainable model.
pub struct TunedModel {
    layers: Vec<Layer>,
    head: Option<Linear>,
    device: Device,
}

impl TunedModel {
    /// `convs`, then GeM pooling, then `head` when there is one.
    pub fn new(convs: &[TunableConv], head: Option<&Head>) -> Result<TunedModel> {
        let device = Device::Cpu;
        let layers = convs
            .iter()
            .map(|conv| {
                let (rows, columns) = conv_matrix(conv);
                Ok(Layer::new(
                    conv,
                    Tensor::from_slice(&conv.weight, (rows, columns), &device)?,
                    Tensor::from_slice(&conv.bias, conv.outputs, &device)?,
                ))
            })
            .collect::<Result<_>>()?;
        let head = head.map(|h| projection(h, &device)).transpose()?;
        Ok(TunedModel { layers, head, device })
    }

    /// GeM-pooled features (rows, channels) of channels-first maps (channels, rows, positions).
    fn pooled(&self, maps: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = maps.clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        x.maximum(1e-6)?
            .powf(f64::from(GEM_P))?
            .mean(2)?
            .powf(1.0 / f64::from(GEM_P))?
            .t()?
            .contiguous()
    }

    /// The head's (unnormalised) output, or the pooled features when there is no head.
    fn forward(&self, maps: &Tensor) -> candle_core::Result<Tensor> {
        let pooled = self.pooled(maps)?;
        match &self.head {
            Some(head) => head.forward(&pooled),
            None => Ok(pooled),
        }
    }

    /// Every row of `maps` through the model: L2-normalised embeddings with a head, GeM
    /// features (what `import::head::feature_model` gives) without one.
    pub fn embed(&self, maps: &FeatureMaps) -> Result<Features> {
        let mut values = Vec::new();
        let mut dims = 0;
        for from in (0..maps.rows()).step_by(CHUNK) {
            let to = (from + CHUNK).min(maps.rows());
            let mut output = self.forward(&maps.tensor(from, to, &self.device)?)?;
            if self.head.is_some() {
                output = l2_normalise(&output)?;
            }
            dims = output.dim(1)?;
            values.extend(output.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(Features { values, dims })
    }

    fn to_parts(&self, templates: &[TunableConv]) -> Result<(Vec<TunableConv>, Head)> {
        let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let convs = self
            .layers
            .iter()
            .zip(templates)
            .map(|(layer, template)| {
                Ok(TunableConv {
                    weight: values(&layer.weight)?,
                    bias: values(&layer.bias)?,
                    ..template.clone()
                })
            })
            .collect::<Result<_>>()?;
        let head = head_of(self.head.as_ref().context("a tuned model has a head")?)?;
        Ok((convs, head))
    }
}

/// The shape of `conv`'s weight as [`Layer`] holds it: one row per output channel.
fn conv_matrix(conv: &TunableConv) -> (usize, usize) {
    let [outputs, per_group, height, width] = conv.weight_shape();
    (outputs, per_group * height * width)
}

/// Training examples for stage 2: each view's feature maps, each photo's class and the
/// auxiliary targets stage 1 trained with (their proxies carry on from stage 1's).
pub struct TuneData<'a> {
    pub views: &'a [FeatureMaps],
    pub labels: &'a [u32],
    pub auxiliary: &'a [Auxiliary],
}

pub struct Tuned {
    pub convs: Vec<TunableConv>,
    pub head: Head,
    pub best_epoch: usize,
    pub log: Vec<EpochLog>,
    /// Every trainable tensor of the best epoch (convolutions, head, proxies).
    pub varmap: VarMap,
}

/// Fine-tunes `convs` and stage 1's head and proxies (`stage1`) on `data`; `holdout` scores
/// each epoch as in stage 1, and the best epoch is kept.
pub fn tune(
    data: &TuneData,
    convs: &[TunableConv],
    stage1: &Trained,
    config: &TrainConfig,
    mut holdout: impl FnMut(&TunedModel) -> Result<f64>,
) -> Result<Tuned> {
    let device = Device::Cpu;
    let head = &stage1.head;
    let mut named = Vec::new();
    let mut layers = Vec::new();
    for conv in convs {
        let weight = Var::from_slice(&conv.weight, conv_matrix(conv), &device)?;
        let bias = Var::from_slice(&conv.bias, conv.outputs, &device)?;
        layers.push(Layer::new(conv, weight.as_tensor().clone(), bias.as_tensor().clone()));
        named.push((format!("{}.weight", conv.name), weight));
        named.push((format!("{}.bias", conv.name), bias));
    }
    let head_weight = Var::from_slice(&head.weight, (head.dims, head.channels), &device)?;
    let head_bias = Var::from_slice(&head.bias, head.dims, &device)?;
    let model = TunedModel {
        layers,
        head: Some(Linear::new(
            head_weight.as_tensor().clone(),
            Some(head_bias.as_tensor().clone()),
        )),
        device: device.clone(),
    };
    named.push(("head.weight".into(), head_weight));
    named.push(("head.bias".into(), head_bias));
    let stage1_proxies =
        |name: &str| -> Result<Var> { Ok(Var::from_tensor(find_var(&stage1.varmap, name)?.as_tensor())?) };
    let proxies = stage1_proxies("proxies")?;
    let auxiliary_proxies: Vec<Var> = data
        .auxiliary
        .iter()
        .map(|target| stage1_proxies(&target.proxies_name()))
        .collect::<Result<_>>()?;
    let varmap = VarMap::new();
    {
        let mut vars = varmap.data().lock().expect("just made");
        for (name, var) in &named {
            vars.insert(name.clone(), var.clone());
        }
        vars.insert("proxies".into(), proxies.clone());
        for (target, var) in data.auxiliary.iter().zip(&auxiliary_proxies) {
            vars.insert(target.proxies_name(), var.clone());
        }
    }
    let first = data.views.first().context("no training feature maps")?;
    let channels = first.channels;
    let views: Vec<&Features> = data.views.iter().map(|v| &v.maps).collect();
    let trainable = Trainable {
        model: named.into_iter().map(|(_, var)| var).collect(),
        proxies,
        auxiliary_proxies,
    };
    let targets = Targets {
        labels: data.labels,
        auxiliary: data.auxiliary,
    };
    let (best_epoch, log, (convs, head, varmap)) = fit(
        &views,
        targets,
        config,
        trainable,
        |rows| model.forward(&channels_first(rows, channels)?),
        || holdout(&model),
        || {
            let (convs, head) = model.to_parts(convs)?;
            Ok((convs, head, snapshot(&varmap)?))
        },
    )?;
    Ok(Tuned {
        convs,
        head,
        best_epoch,
        log,
        varmap,
    })
}
