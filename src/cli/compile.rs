//! `otlens compile`: an imported ONNX model -> the `.nnef.tgz` the widget loads.
//! `otlens build-index` does this itself; the command is for pages that load a model on its own.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::model::{self, Embedder};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// ONNX embedding model written by `otlens import` or `otlens train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the compiled model (by convention `<name>.nnef.tgz`).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let onnx = fs::read(&args.model).with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let compiled = model::compile(&onnx).with_context(|| format!("cannot compile {}", args.model.display()))?;
    // Load what was written, so a file that would fail in the browser fails here instead.
    Embedder::from_bytes(&compiled).context("the compiled model does not load")?;
    fs::write(&args.out, &compiled).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "compiled {} ({} bytes) into {} ({} bytes)",
        args.model.display(),
        onnx.len(),
        args.out.display(),
        compiled.len()
    );
    Ok(())
}
