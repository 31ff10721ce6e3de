//! `otlens embed`: the native embedding of photos as JSON, to compare with the widget's.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::model::Embedder;
use crate::preprocess::DecodeLimits;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Embedding model: ONNX from `otlens import`, or compiled by `otlens compile`.
    #[arg(long)]
    pub model: PathBuf,
    /// Photos to embed.
    #[arg(required = true)]
    pub photos: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Output {
    model_sha256: String,
    embeddings: Vec<PhotoEmbedding>,
}

#[derive(Serialize)]
struct PhotoEmbedding {
    photo: String,
    embedding: Vec<f32>,
}

pub fn run(args: Args) -> Result<()> {
    let model = fs::read(&args.model).with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let embedder =
        Embedder::from_bytes(&model).with_context(|| format!("cannot load the model {}", args.model.display()))?;
    let limits = DecodeLimits::default();
    let embeddings = args
        .photos
        .iter()
        .map(|photo| {
            let bytes = fs::read(photo).with_context(|| format!("cannot read {}", photo.display()))?;
            let embedding = embedder
                .embed_photo(&bytes, &limits)
                .with_context(|| format!("cannot embed {}", photo.display()))?;
            Ok(PhotoEmbedding {
                photo: photo.display().to_string(),
                embedding,
            })
        })
        .collect::<Result<_>>()?;
    let output = Output {
        model_sha256: embedder.info().sha256.clone(),
        embeddings,
    };
    println!("{}", serde_json::to_string(&output)?);
    Ok(())
}
