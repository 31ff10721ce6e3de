//! The trained head: a linear projection of frozen backbone features to a small,
//! L2-normalised embedding, learned with the Proxy-Anchor loss (Kim et al., CVPR 2020).
//!
//! Proxy-Anchor gives every product a learned proxy vector and pulls each photo towards its
//! product's proxy and away from the others, weighting hard examples most; it converges
//! in few epochs and needs no pair mining, which suits features computed once.

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor, Var, D};
use candle_nn::{encoding::one_hot, AdamW, Linear, Module, Optimizer, ParamsAdamW, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::distr::{Distribution, Uniform};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::Normal;

use super::features::Features;
use crate::import::head::Head;

/// How the head is trained; `Default` gives the documented values.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Embedding width (default 256).
    pub dims: usize,
    /// Most epochs to run (default 60).
    pub epochs: usize,
    /// Stop after this many epochs without a better held-out Recall@1 (default 8).
    pub patience: usize,
    /// Photos per step (default 256).
    pub batch: usize,
    /// AdamW learning rate of the projection (default 1e-3); the proxies learn 10x faster.
    pub learning_rate: f64,
    /// Lower the learning rate along a cosine to zero over `epochs` (default off). Suits a
    /// fixed budget of epochs, as stage 2 runs; stage 1 stops early instead.
    pub cosine_decay: bool,
    /// Proxy-Anchor scale and margin (defaults 32 and 0.1, as in the paper).
    pub alpha: f64,
    pub delta: f64,
    /// Weight of each [`Auxiliary`] target's loss next to the main classes' (default 0.25).
    pub auxiliary_weight: f64,
    pub seed: u64,
}

impl TrainConfig {
    /// The learning rate once `done` (0 to 1) of the epochs have run.
    pub fn learning_rate_at(&self, done: f64) -> f64 {
        if self.cosine_decay {
            self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())
        } else {
            self.learning_rate
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dims: 256,
            epochs: 60,
            patience: 8,
            batch: 256,
            learning_rate: 1e-3,
            cosine_decay: false,
            alpha: 32.0,
            delta: 0.1,
            auxiliary_weight: 0.25,
            seed: 1,
        }
    }
}

/// Training examples: each view's features (same photos, same order) and each photo's class.
pub struct TrainData<'a> {
    pub views: &'a [Features],
    pub labels: &'a [u32],
    pub classes: usize,
    pub auxiliary: &'a [Auxiliary],
}

/// A second labelling of the training photos, such as a category or a colour name, that the
/// embedding also learns to group by: its own proxies, its loss weighted by
/// [`TrainConfig::auxiliary_weight`]. Photos without a label (`None`) add nothing to it.
#[derive(Clone, Debug)]
pub struct Auxiliary {
    /// Names its proxies in the checkpoint: `proxies.<name>`.
    pub name: String,
    pub labels: Vec<Option<u32>>,
    pub classes: usize,
}

impl Auxiliary {
    /// The checkpoint name of its proxies.
    pub fn proxies_name(&self) -> String {
        format!("proxies.{}", self.name)
    }
}

/// One epoch's figures, for the training curves.
#[derive(Clone, Debug)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub holdout_recall_at_1: f64,
}

pub struct Trained {
    /// The weights of the best epoch.
    pub head: Head,
    pub best_epoch: usize,
    pub log: Vec<EpochLog>,
    /// Every trainable tensor of the best epoch (projection and proxies), for a checkpoint.
    pub varmap: VarMap,
}

/// The projection being trained, and what it embeds.
pub struct HeadModel {
    linear: Linear,
    device: Device,
}

/// `head`'s weights as a candle layer.
pub(crate) fn projection(head: &Head, device: &Device) -> Result<Linear> {
    let weight = Tensor::from_slice(&head.weight, (head.dims, head.channels), device)?;
    let bias = Tensor::from_slice(&head.bias, head.dims, device)?;
    Ok(Linear::new(weight, Some(bias)))
}

/// The weights of a candle layer made by [`projection`].
pub(crate) fn head_of(linear: &Linear) -> Result<Head> {
    let weight = linear.weight();
    let (dims, channels) = weight.dims2()?;
    let bias = linear.bias().context("the projection has a bias")?;
    Ok(Head {
        weight: weight.flatten_all()?.to_vec1()?,
        bias: bias.to_vec1()?,
        dims,
        channels,
    })
}

impl HeadModel {
    /// The projection of trained weights, to embed with candle what the ONNX model embeds with tract.
    pub fn from_head(head: &Head) -> Result<HeadModel> {
        let device = Device::Cpu;
        Ok(HeadModel {
            linear: projection(head, &device)?,
            device,
        })
    }

    /// L2-normalised embeddings of `features`' rows.
    pub fn embed(&self, features: &Features) -> Result<Features> {
        let rows = features.values.len() / features.dims;
        let input = Tensor::from_slice(&features.values, (rows, features.dims), &self.device)?;
        let output = l2_normalise(&self.linear.forward(&input)?)?;
        let dims = output.dim(1)?;
        Ok(Features {
            values: output.flatten_all()?.to_vec1()?,
            dims,
        })
    }

    fn to_head(&self) -> Result<Head> {
        head_of(&self.linear)
    }
}

pub(super) fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?)
}

/// Proxy-Anchor loss of a batch: `embeddings` (B x D, any norm), `proxies` (C x D),
/// `labels` (B, u32 class indices).
pub fn proxy_anchor_loss(
    embeddings: &Tensor,
    proxies: &Tensor,
    labels: &Tensor,
    alpha: f64,
    delta: f64,
) -> candle_core::Result<Tensor> {
    let classes = proxies.dim(0)?;
    let cosine = l2_normalise(embeddings)?.matmul(&l2_normalise(proxies)?.t()?)?;
    let positive = one_hot(labels.clone(), classes, 1f32, 0f32)?;
    let negative = positive.affine(-1.0, 1.0)?;
    // exp(-alpha (s - delta)) over each proxy's positives, exp(alpha (s + delta)) over its negatives.
    let pulled = (cosine.affine(-alpha, alpha * delta)?.exp()? * &positive)?;
    let pushed = (cosine.affine(alpha, alpha * delta)?.exp()? * &negative)?;
    let with_positives = positive.max(0)?.sum_all()?.maximum(1f32)?;
    let pull = (pulled.sum(0)? + 1.0)?
        .log()?
        .sum_all()?
        .broadcast_div(&with_positives)?;
    let push = ((pushed.sum(0)? + 1.0)?.log()?.sum_all()? / classes as f64)?;
    pull + push
}

/// Trains a head on `data`; after each epoch `holdout` scores the projection (higher is
/// better) and the best epoch's weights are kept. Stops early after `patience` epochs
/// without improvement.
pub fn train(
    data: &TrainData,
    config: &TrainConfig,
    mut holdout: impl FnMut(&HeadModel) -> Result<f64>,
) -> Result<Trained> {
    let device = Device::Cpu;
    let channels = data.views.first().context("no training features")?.dims;
    let varmap = VarMap::new();
    // candle's CPU generator cannot be seeded, so the initial values come from the run's seed
    // (a stream apart from the shuffle's), spread as candle would: Kaiming-normal weights and
    // proxies, a uniform bias. The same seed and data then give the same model.
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(1));
    let kaiming = |fan_in: usize| Normal::new(0.0, (2.0 / fan_in as f32).sqrt());
    let bound = 1.0 / (channels as f32).sqrt();
    let weight = seeded_var(
        &varmap,
        "head.weight",
        &[config.dims, channels],
        kaiming(channels)?,
        &mut rng,
    )?;
    let bias = seeded_var(
        &varmap,
        "head.bias",
        &[config.dims],
        Uniform::new(-bound, bound)?,
        &mut rng,
    )?;
    let proxies = seeded_var(
        &varmap,
        "proxies",
        &[data.classes, config.dims],
        kaiming(config.dims)?,
        &mut rng,
    )?;
    let auxiliary_proxies = data
        .auxiliary
        .iter()
        .map(|target| {
            seeded_var(
                &varmap,
                &target.proxies_name(),
                &[target.classes, config.dims],
                kaiming(config.dims)?,
                &mut rng,
            )
        })
        .collect::<Result<_>>()?;
    let linear = Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone()));
    let model = HeadModel { linear, device };
    let trainable = Trainable {
        model: vec![weight, bias],
        proxies,
        auxiliary_proxies,
    };
    let views: Vec<&Features> = data.views.iter().collect();
    let targets = Targets {
        labels: data.labels,
        auxiliary: data.auxiliary,
    };
    let (best_epoch, log, (head, varmap)) = fit(
        &views,
        targets,
        config,
        trainable,
        |inputs| model.linear.forward(inputs),
        || holdout(&model),
        || Ok((model.to_head()?, snapshot(&varmap)?)),
    )?;
    Ok(Trained {
        head,
        best_epoch,
        log,
        varmap,
    })
}

/// A variable of `shape` drawn from `distribution`, also registered in `varmap` as `name` (for
/// the checkpoint).
fn seeded_var(
    varmap: &VarMap,
    name: &str,
    shape: &[usize],
    distribution: impl Distribution<f32>,
    rng: &mut StdRng,
) -> Result<Var> {
    let values: Vec<f32> = distribution.sample_iter(rng).take(shape.iter().product()).collect();
    let var = Var::from_vec(values, shape, &Device::Cpu)?;
    varmap
        .data()
        .lock()
        .map_err(|_| anyhow!("the training variables' lock is poisoned"))?
        .insert(name.into(), var.clone());
    Ok(var)
}

/// What a training stage groups the photos by: each photo's class, and the auxiliary targets.
#[derive(Clone, Copy)]
pub(super) struct Targets<'a> {
    pub labels: &'a [u32],
    pub auxiliary: &'a [Auxiliary],
}

/// The variables a training stage moves: the model's, and the proxies (which learn 10x faster),
/// the main classes' and each auxiliary target's.
pub(super) struct Trainable {
    pub model: Vec<Var>,
    pub proxies: Var,
    pub auxiliary_proxies: Vec<Var>,
}

/// The epoch loop shared by the training stages: shuffles every (view, photo) pair of
/// `views`, and for each batch `forward`s its rows (batch x row width) and steps AdamW on the
/// Proxy-Anchor loss against the `targets`' labels, plus each auxiliary target's on its
/// labelled rows. Scores the model with `score` after each epoch and `keep`s the best epoch's
/// state; stops after `config.patience` epochs without a better score. Returns the best epoch, the log and the kept state.
pub(super) fn fit<S>(
    views: &[&Features],
    targets: Targets,
    config: &TrainConfig,
    trainable: Trainable,
    forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    mut score: impl FnMut() -> Result<f64>,
    mut keep: impl FnMut() -> Result<S>,
) -> Result<(usize, Vec<EpochLog>, S)> {
    let params = |lr| ParamsAdamW {
        lr,
        weight_decay: 1e-4,
        ..Default::default()
    };
    let proxies = trainable.proxies.as_tensor().clone();
    let auxiliary_proxies: Vec<Tensor> = trainable
        .auxiliary_proxies
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    let mut model_opt = AdamW::new(trainable.model, params(config.learning_rate))?;
    let all_proxies = std::iter::once(trainable.proxies)
        .chain(trainable.auxiliary_proxies)
        .collect();
    let mut proxy_opt = AdamW::new(all_proxies, params(config.learning_rate * 10.0))?;
    let width = views.first().context("no training views")?.dims;
    let device = proxies.device().clone();
    let mut step = |batch: &[(usize, usize)], rate: f64| -> Result<f64> {
        model_opt.set_learning_rate(rate);
        proxy_opt.set_learning_rate(rate * 10.0);
        let mut inputs = Vec::with_capacity(batch.len() * width);
        let mut batch_labels = Vec::with_capacity(batch.len());
        for &(view, photo) in batch {
            inputs.extend_from_slice(views[view].row(photo));
            batch_labels.push(targets.labels[photo]);
        }
        let inputs = Tensor::from_vec(inputs, (batch.len(), width), &device)?;
        let batch_labels = Tensor::from_vec(batch_labels, batch.len(), &device)?;
        let embeddings = forward(&inputs)?;
        let mut loss = proxy_anchor_loss(&embeddings, &proxies, &batch_labels, config.alpha, config.delta)?;
        for (target, target_proxies) in targets.auxiliary.iter().zip(&auxiliary_proxies) {
            let (rows, target_labels): (Vec<u32>, Vec<u32>) = batch
                .iter()
                .enumerate()
                .filter_map(|(row, &(_, photo))| Some((row as u32, target.labels[photo]?)))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let count = rows.len();
            let labelled = embeddings.index_select(&Tensor::from_vec(rows, count, &device)?, 0)?;
            let target_labels = Tensor::from_vec(target_labels, count, &device)?;
            let target_loss = proxy_anchor_loss(&labelled, target_proxies, &target_labels, config.alpha, config.delta)?;
            loss = (loss + (target_loss * config.auxiliary_weight)?)?;
        }
        let grads = loss.backward()?;
        model_opt.step(&grads)?;
        proxy_opt.step(&grads)?;
        Ok(f64::from(loss.to_scalar::<f32>()?))
    };
    let photos = targets.labels.len();
    let mut samples: Vec<(usize, usize)> = (0..views.len())
        .flat_map(|view| (0..photos).map(move |photo| (view, photo)))
        .collect();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let progress = ProgressBar::new(config.epochs as u64).with_style(
        ProgressStyle::with_template("training {bar:30} epoch {pos}/{len} {msg}").expect("the template is valid"),
    );
    let mut log = Vec::new();
    let mut best: Option<(f64, usize, S)> = None;
    let steps_per_epoch = samples.len().div_ceil(config.batch);
    let total_steps = (steps_per_epoch * config.epochs) as f64;
    for epoch in 1..=config.epochs {
        let started = Instant::now();
        samples.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let mut steps = 0;
        for batch in samples.chunks(config.batch) {
            let done = ((epoch - 1) * steps_per_epoch) as f64 + f64::from(steps);
            loss_sum += step(batch, config.learning_rate_at(done / total_steps))?;
            steps += 1;
            // A stage 2 epoch takes minutes: show it moving.
            progress.set_message(format!("step {steps}/{steps_per_epoch}"));
        }
        let recall = score()?;
        let loss = loss_sum / f64::from(steps.max(1));
        log.push(EpochLog {
            epoch,
            loss,
            holdout_recall_at_1: recall,
        });
        let figures = format!(
            "loss {loss:.3}, held-out Recall@1 {recall:.3}, {:.0} s",
            started.elapsed().as_secs_f64()
        );
        if progress.is_hidden() {
            // Not a terminal (a CI log, a redirected run): a line per epoch instead of the bar.
            eprintln!("epoch {epoch}/{}: {figures}", config.epochs);
        }
        progress.set_message(figures);
        progress.inc(1);
        if best.as_ref().is_none_or(|(r, ..)| recall > *r) {
            best = Some((recall, epoch, keep()?));
        } else if best.as_ref().is_some_and(|(_, e, _)| epoch - e >= config.patience) {
            break;
        }
    }
    progress.finish_and_clear();
    let (_, best_epoch, state) = best.context("no epoch ran")?;
    Ok((best_epoch, log, state))
}

pub(super) fn find_var(varmap: &VarMap, name: &str) -> Result<Var> {
    let data = varmap.data().lock().expect("no other thread holds the varmap");
    data.get(name).cloned().with_context(|| format!("no variable {name}"))
}

/// A copy of every variable's current value.
pub(super) fn snapshot(varmap: &VarMap) -> Result<VarMap> {
    let copy = VarMap::new();
    {
        let source = varmap.data().lock().expect("no other thread holds the varmap");
        let mut target = copy.data().lock().expect("just made");
        for (name, var) in source.iter() {
            target.insert(name.clone(), Var::from_tensor(&var.as_tensor().copy()?)?);
        }
    }
    Ok(copy)
}
