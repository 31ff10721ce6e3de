//! Stage 2: fine-tuning the backbone's last layer together with the head.
//!
//! A linear head on frozen features saturates early (In-shop: held-out Recall@1 0.81 after
//! two epochs). The last 1x1 convolution ([`LastConv`], EfficientNet's `_conv_head`: 320 ->
//! 1280 channels, then ReLU6) is the cheapest backbone layer to train: its input, the
//! 7x7 feature map before it, is cached per view like the features, so an epoch costs two
//! matrix products per photo and no image decoding.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::{Linear, Module, VarMap};

use super::features::{Features, Rows};
use super::head::{find_var, fit, l2_normalise, snapshot, EpochLog, TrainConfig, Trainable, Trained};
use crate::import::head::{Head, LastConv, GEM_P};

/// Rows handled at once when embedding for scoring, to bound memory.
const CHUNK: usize = 256;

/// Feature maps stored position-major: each row is `positions` runs of `channels` values, so
/// a batch of rows is one (rows x positions, channels) matrix for the 1x1 convolution.
pub struct FeatureMaps {
    pub maps: Features,
    pub channels: usize,
}

impl FeatureMaps {
    /// Rows of channel-major (C x H x W, as the model gives them) maps of `channels` channels.
    pub fn from_channel_major(maps: Features, channels: usize) -> Result<FeatureMaps> {
        anyhow::ensure!(
            channels > 0 && maps.dims.is_multiple_of(channels),
            "a feature map of {} values does not have {channels} channels",
            maps.dims
        );
        let positions = maps.dims / channels;
        let mut values = Vec::with_capacity(maps.values.len());
        for row in maps.values.chunks_exact(maps.dims) {
            for position in 0..positions {
                values.extend((0..channels).map(|c| row[c * positions + position]));
            }
        }
        Ok(FeatureMaps {
            maps: Features {
                values,
                dims: maps.dims,
            },
            channels,
        })
    }

    fn rows(&self) -> usize {
        self.maps.values.len() / self.maps.dims
    }

    fn positions(&self) -> usize {
        self.maps.dims / self.channels
    }

    /// Rows `from..to` as a (rows, positions, channels) tensor.
    fn tensor(&self, from: usize, to: usize, device: &Device) -> candle_core::Result<Tensor> {
        let values = &self.maps.values[from * self.maps.dims..to * self.maps.dims];
        Tensor::from_slice(values, (to - from, self.positions(), self.channels), device)
    }
}

impl Rows for FeatureMaps {
    fn select(&self, rows: &[usize]) -> FeatureMaps {
        FeatureMaps {
            maps: self.maps.select(rows),
            channels: self.channels,
        }
    }
}

/// The last convolution, GeM pooling and the head, as one trainable model.
pub struct TunedModel {
    conv: Linear,
    ceiling: Option<f32>,
    head: Option<Linear>,
    device: Device,
}

impl TunedModel {
    /// `conv`, then GeM pooling, then `head` when there is one.
    pub fn new(conv: &LastConv, head: Option<&Head>) -> Result<TunedModel> {
        let device = Device::Cpu;
        let linear = |weight: &[f32], bias: &[f32], rows: usize, columns: usize| -> Result<Linear> {
            let weight = Tensor::from_slice(weight, (rows, columns), &device)?;
            Ok(Linear::new(weight, Some(Tensor::from_slice(bias, rows, &device)?)))
        };
        Ok(TunedModel {
            conv: linear(&conv.weight, &conv.bias, conv.outputs, conv.inputs)?,
            ceiling: conv.ceiling,
            head: head
                .map(|h| linear(&h.weight, &h.bias, h.dims, h.channels))
                .transpose()?,
            device,
        })
    }

    /// GeM-pooled features of position-major maps (rows, positions, channels).
    fn pooled(&self, maps: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, positions, channels) = maps.dims3()?;
        let x = self.conv.forward(&maps.reshape((rows * positions, channels))?)?;
        let x = match self.ceiling {
            Some(ceiling) => x.clamp(0f32, ceiling)?,
            None => x.relu()?,
        };
        let outputs = x.dim(1)?;
        x.maximum(1e-6)?
            .powf(f64::from(GEM_P))?
            .reshape((rows, positions, outputs))?
            .mean(1)?
            .powf(1.0 / f64::from(GEM_P))
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

    fn to_parts(&self, template: &LastConv) -> Result<(LastConv, Head)> {
        let rows = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let conv = LastConv {
            weight: rows(self.conv.weight())?,
            bias: rows(self.conv.bias().context("the convolution has a bias")?)?,
            ..template.clone()
        };
        let head = self.head.as_ref().context("a tuned model has a head")?;
        let (dims, channels) = head.weight().dims2()?;
        let head = Head {
            weight: rows(head.weight())?,
            bias: rows(head.bias().context("the head has a bias")?)?,
            dims,
            channels,
        };
        Ok((conv, head))
    }
}

/// Training examples for stage 2: each view's feature maps and each photo's class.
pub struct TuneData<'a> {
    pub views: &'a [FeatureMaps],
    pub labels: &'a [u32],
}

pub struct Tuned {
    pub conv: LastConv,
    pub head: Head,
    pub best_epoch: usize,
    pub log: Vec<EpochLog>,
    /// Every trainable tensor of the best epoch (convolution, head, proxies).
    pub varmap: VarMap,
}

/// Fine-tunes `conv` and stage 1's head and proxies (`stage1`) on `data`; `holdout` scores
/// each epoch as in stage 1, and the best epoch is kept.
pub fn tune(
    data: &TuneData,
    conv: &LastConv,
    stage1: &Trained,
    config: &TrainConfig,
    mut holdout: impl FnMut(&TunedModel) -> Result<f64>,
) -> Result<Tuned> {
    let device = Device::Cpu;
    let head = &stage1.head;
    let var = |values: &[f32], shape: &[usize]| Var::from_slice(values, shape, &device);
    let trainable = [
        ("conv.weight", var(&conv.weight, &[conv.outputs, conv.inputs])?),
        ("conv.bias", var(&conv.bias, &[conv.outputs])?),
        ("head.weight", var(&head.weight, &[head.dims, head.channels])?),
        ("head.bias", var(&head.bias, &[head.dims])?),
    ];
    let proxies = Var::from_tensor(find_var(&stage1.varmap, "proxies")?.as_tensor())?;
    let linear = |weight: &Var, bias: &Var| Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone()));
    let model = TunedModel {
        conv: linear(&trainable[0].1, &trainable[1].1),
        ceiling: conv.ceiling,
        head: Some(linear(&trainable[2].1, &trainable[3].1)),
        device: device.clone(),
    };
    let varmap = VarMap::new();
    {
        let mut vars = varmap.data().lock().expect("just made");
        for (name, var) in &trainable {
            vars.insert((*name).into(), var.clone());
        }
        vars.insert("proxies".into(), proxies.clone());
    }
    let first = data.views.first().context("no training feature maps")?;
    let (positions, channels) = (first.positions(), first.channels);
    let views: Vec<&Features> = data.views.iter().map(|v| &v.maps).collect();
    let trainable = Trainable {
        model: trainable.iter().map(|(_, var)| var.clone()).collect(),
        proxies,
    };
    let (best_epoch, log, (conv, head, varmap)) = fit(
        &views,
        data.labels,
        config,
        trainable,
        |rows| model.forward(&rows.reshape((rows.dim(0)?, positions, channels))?),
        || holdout(&model),
        || {
            let (conv, head) = model.to_parts(conv)?;
            Ok((conv, head, snapshot(&varmap)?))
        },
    )?;
    Ok(Tuned {
        conv,
        head,
        best_epoch,
        log,
        varmap,
    })
}
