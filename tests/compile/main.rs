//! `otlens compile`: the widget's model file (NNEF, int8 weights kept) embeds like the ONNX
//! file it came from (exactly, bar int8 activations), names that file, and is the same bytes
//! every time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use otlens::import::{self, Arch};
use otlens::model::{self, cosine, sha256_hex, Embedder};
use otlens::preprocess::DecodeLimits;

const DARKNET_PHOTOS: &str = "/usr/share/darknet/data";

fn committed(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)).unwrap()
}

/// Darknet's photos when installed, else none (the tensor checks still run).
fn photos() -> Vec<PathBuf> {
    let photos = otlens::import::photos_in(Path::new(DARKNET_PHOTOS)).unwrap_or_default();
    if photos.is_empty() {
        eprintln!("skipped the photo checks: no {DARKNET_PHOTOS} (Debian package darknet)");
    }
    photos
}

/// (path, size) of every entry of a gzipped tar.
fn entries(archive: &[u8]) -> Vec<(String, u64)> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    tar.entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.path().unwrap().display().to_string(), entry.size())
        })
        .collect()
}

#[test]
fn compiled_models_embed_exactly_like_their_onnx() {
    let limits = DecodeLimits::default();
    let photos = photos();
    for (name, int8_activations) in [
        ("efficientnet-lite0-int8-weights.onnx", false),
        ("efficientnet-lite0-int8.onnx", true),
    ] {
        let onnx = committed(name);
        let compiled = model::compile(&onnx).unwrap();
        assert!(model::is_compiled(&compiled) && !model::is_compiled(&onnx));
        let from_onnx = Embedder::from_bytes(&onnx).unwrap();
        let from_compiled = Embedder::from_bytes(&compiled).unwrap();
        assert_eq!(from_compiled.info(), from_onnx.info(), "{name}");
        assert_eq!(
            from_compiled.info().sha256,
            sha256_hex(&onnx),
            "{name} names its source"
        );

        let size = from_onnx.info().input.size as usize;
        let tensor: Vec<f32> = (0..3 * size * size).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect();
        assert_embeds_like(
            name,
            int8_activations,
            &from_compiled.embed_tensor(tensor.clone()).unwrap(),
            &from_onnx.embed_tensor(tensor).unwrap(),
        );
        for photo in &photos {
            let bytes = std::fs::read(photo).unwrap();
            assert_embeds_like(
                &format!("{name} on {}", photo.display()),
                int8_activations,
                &from_compiled.embed_photo(&bytes, &limits).unwrap(),
                &from_onnx.embed_photo(&bytes, &limits).unwrap(),
            );
        }
    }
}

/// Bit for bit, except where int8 activations meet int8 weights: the compiled model sums
/// their products exactly in i32 and scales once, tract's QDQ graph sums dequantised f32
/// values, so an activation may round to the neighbouring code in a later layer (ResNet-18:
/// cosine 0.999996 on dog.jpg; EfficientNet-Lite0, 16 more rounded layers: 0.9998). The
/// bound is the one the browser's int8 parity test holds wasm to.
fn assert_embeds_like(name: &str, int8_activations: bool, compiled: &[f32], onnx: &[f32]) {
    if !int8_activations {
        assert_eq!(compiled, onnx, "{name}");
    } else {
        let similarity = cosine(compiled, onnx);
        assert!(similarity >= 0.999, "{name}: cosine {similarity}");
    }
}

/// A ResNet-18 with random weights, imported (int8 calibrated on) a synthetic input, and that input.
fn random_resnet18() -> (import::Imported, Vec<f32>) {
    let size = Arch::ResNet18.input_spec().size as usize;
    let tensor: Vec<f32> = (0..3 * size * size).map(|i| (i % 241) as f32 / 120.0 - 1.0).collect();
    let imported = import::import(
        Arch::ResNet18,
        &import::random_resnet18(1),
        false,
        std::slice::from_ref(&tensor),
    )
    .unwrap();
    (imported, tensor)
}

/// ResNet-18 brings operators EfficientNet-Lite0 does not (max pooling, the downsampling tract
/// makes of strided 1x1 convolutions): the widget's reader must know them too.
#[test]
fn compiled_resnet18_embeds_exactly_like_its_onnx() {
    let (imported, tensor) = random_resnet18();
    for (name, onnx, int8_activations) in [
        ("int8", &imported.int8, true),
        ("int8 weights", &imported.int8_weights, false),
    ] {
        let from_onnx = Embedder::from_bytes(onnx).unwrap();
        let from_compiled = Embedder::from_bytes(&model::compile(onnx).unwrap()).unwrap();
        assert_eq!(from_compiled.info(), from_onnx.info(), "{name}");
        assert_embeds_like(
            name,
            int8_activations,
            &from_compiled.embed_tensor(tensor.clone()).unwrap(),
            &from_onnx.embed_tensor(tensor.clone()).unwrap(),
        );
    }
}

/// The int8 model's convolutions run on tract's integer kernels: in the compiled graph as
/// integer convolutions on the quantised codes, none left on dequantised values, except
/// the depthwise ones.
#[test]
fn int8_convolutions_compile_to_integer_ones() {
    let (imported, _) = random_resnet18();
    let graph = graph_text(&model::compile(&imported.int8).unwrap());
    let integer = graph.matches("= tract_core_qconv(").count();
    let float = graph.matches("= conv(").count();
    assert_eq!((integer, float), (17, 0), "ResNet-18 has 17 3x3 and 7x7 convolutions");
    let graph = graph_text(&model::compile(&imported.int8_weights).unwrap());
    assert_eq!(
        graph.matches("= tract_core_qconv(").count(),
        0,
        "int8 weights, f32 activations"
    );

    let graph = graph_text(&model::compile(&committed("efficientnet-lite0-int8.onnx")).unwrap());
    assert_eq!(graph.matches("= tract_core_qconv(").count(), 1, "the stem");
    assert!(
        graph.matches("= conv(").count() >= 16,
        "depthwise convolutions stay f32"
    );
}

fn graph_text(archive: &[u8]) -> String {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut graph = tar
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|entry| entry.path().unwrap().to_str() == Some("graph.nnef"))
        .unwrap();
    let mut text = String::new();
    graph.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn compiling_keeps_int8_weights_and_is_deterministic() {
    let onnx = committed("efficientnet-lite0-int8-weights.onnx");
    let compiled = model::compile(&onnx).unwrap();
    assert_eq!(
        compiled,
        model::compile(&onnx).unwrap(),
        "the same ONNX gives the same bytes"
    );
    assert!(
        compiled.len() < onnx.len(),
        "compiled {} bytes, ONNX {} bytes",
        compiled.len(),
        onnx.len()
    );
    let entries = entries(&compiled);
    assert!(entries.iter().any(|(path, _)| path == "graph.nnef"), "{entries:?}");
    let int8 = entries.iter().filter(|(path, _)| path.ends_with(".q8")).count();
    // One per convolution (49) and the classifier-free head: every big weight.
    assert!(int8 >= 49, "{int8} int8 weights");
    let big_f32: Vec<_> = entries
        .iter()
        .filter(|(path, size)| path.ends_with(".dat") && *size > 16 * 1024)
        .collect();
    assert!(big_f32.is_empty(), "weights left in f32: {big_f32:?}");
}

#[test]
fn damaged_or_foreign_files_are_refused_clearly() {
    let onnx = committed("efficientnet-lite0-int8-weights.onnx");
    let compiled = model::compile(&onnx).unwrap();
    let message = |bytes: &[u8]| match Embedder::from_bytes(bytes) {
        Ok(_) => panic!("a damaged model loaded"),
        Err(error) => error.to_string(),
    };
    let truncated = message(&compiled[..compiled.len() / 2]);
    assert!(truncated.contains("not a readable compiled model"), "{truncated}");

    // A plain NNEF file from another tool: readable, but it names no source model.
    let anonymous = message(&with_graph(&compiled, |text| {
        assert!(
            text.contains("\"otlens.source_sha256\""),
            "the property is in graph.nnef"
        );
        text.replace("\"otlens.source_sha256\"", "\"other.tool\"")
    }));
    assert!(
        anonymous.contains("no otlens.source_sha256 property; compile it with `otlens compile`"),
        "{anonymous}"
    );

    // An operator the widget's reader does not link (it names only those our graphs use).
    let qdq = model::compile(&committed("efficientnet-lite0-int8.onnx")).unwrap();
    let unknown = message(&with_graph(&qdq, |text| {
        assert!(text.contains("tract_core_round_even("), "the QDQ graph rounds");
        text.replace("tract_core_round_even(", "tract_core_fft(")
    }));
    assert!(
        unknown.contains("not a readable compiled model") && unknown.contains("tract_core_fft"),
        "{unknown}"
    );
}

/// `archive` (a compiled model) with its graph.nnef text passed through `edit`.
fn with_graph(archive: &[u8], edit: impl Fn(String) -> String) -> Vec<u8> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut edited = tar::Builder::new(Vec::new());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        let mut header = entry.header().clone();
        if entry.path().unwrap().to_str() == Some("graph.nnef") {
            content = edit(String::from_utf8(content).unwrap()).into_bytes();
            header.set_size(content.len() as u64);
            header.set_cksum();
        }
        edited.append(&header, content.as_slice()).unwrap();
    }
    edited.into_inner().unwrap()
}

#[test]
fn the_compile_command_writes_a_loadable_file_or_says_why_not() {
    let work = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0-int8-weights.onnx");
    let out = work.path().join("model.nnef.tgz");
    let run = |model: &Path| {
        Command::new(env!("CARGO_BIN_EXE_otlens"))
            .args([
                "compile",
                "--model",
                model.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let output = run(&source);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let written = std::fs::read(&out).unwrap();
    assert_eq!(written, model::compile(&std::fs::read(&source).unwrap()).unwrap());

    let not_a_model = work.path().join("photo.onnx");
    std::fs::write(&not_a_model, b"\x89PNG\r\n\x1a\n not a model").unwrap();
    let output = run(&not_a_model);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot compile") && stderr.contains("not a readable ONNX model"),
        "{stderr}"
    );
}

/// The widget loads a model for its index: another model is refused (before it is optimised).
#[test]
fn a_model_for_another_index_is_refused() {
    let onnx = committed("efficientnet-lite0-int8-weights.onnx");
    let compiled = model::compile(&onnx).unwrap();
    let source = sha256_hex(&onnx);
    assert_eq!(Embedder::for_index(&compiled, &source).unwrap().info().sha256, source);
    assert!(
        Embedder::for_index(&onnx, &source).is_ok(),
        "ONNX natively, by its own sha256"
    );
    let other = "0".repeat(64);
    for file in [&compiled, &onnx] {
        let error = Embedder::for_index(file, &other).err().expect("refused").to_string();
        assert!(error.contains(&other[..12]) && error.contains(&source[..12]), "{error}");
    }
}
