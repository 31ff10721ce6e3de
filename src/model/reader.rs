//! Reads compiled models: a tar (gzipped or not) of `graph.nnef` and its tensors.
//!
//! tract's own reader (`tract_nnef::nnef().model_for_read`) supports nested models through
//! a framework holding every `tract_core` operator (FFT, STFT, LSTM, scan, top-k…), so it
//! links all of their code into the wasm module. This reader names only the standard NNEF
//! operators and the four `tract_core` extensions that compiled EfficientNet-Lite0, ResNet-18
//! and trained graphs use, and the linker drops the rest. A graph that needs another operator is
//! refused when it is read, natively too, so `otlens build-index` fails before a catalog
//! could ship it.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use tract_nnef::ast::parse::parse_document;
use tract_nnef::ast::quant::parse_quantization;
use tract_nnef::ast::ProtoModel;
use tract_nnef::framework::stdlib;
use tract_nnef::internal::*;
use tract_nnef::ops::nnef::deser::read_conv_parameters;
use tract_nnef::resource::{resource_path_to_id, GRAPH_NNEF_FILENAME, GRAPH_QUANT_FILENAME};
use tract_nnef::tensors::read_tensor;
use tract_nnef::tract_core::ops::cast::Cast;
use tract_nnef::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_nnef::tract_core::ops::element_wise::ElementWiseOp;
use tract_nnef::tract_core::ops::math::{PowConst, RoundHalfToEven};
use tract_nnef::tract_core::ops::Downsample;

use super::int8_weights::{read_int8_weights, Q8_EXTENSION};
use super::GZIP_MAGIC;

/// The typed model in a compiled archive.
pub fn read(archive: &[u8]) -> TractResult<TypedModel> {
    let unpacked: Box<dyn Read + '_> = if archive.starts_with(&GZIP_MAGIC) {
        Box::new(GzDecoder::new(archive))
    } else {
        Box::new(archive)
    };
    let mut graph = None;
    let mut quantization = None;
    let mut tensors = HashMap::new();
    for entry in tar::Archive::new(unpacked).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let path = path.strip_prefix("./").unwrap_or(&path);
        if path == Path::new(GRAPH_NNEF_FILENAME) {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            graph = Some(text);
            continue;
        }
        if path == Path::new(GRAPH_QUANT_FILENAME) {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            quantization = Some(parse_quantization(&text)?.into_iter().collect());
            continue;
        }
        let tensor = match path.extension().and_then(|extension| extension.to_str()) {
            Some("dat") => read_tensor(&mut entry),
            Some(Q8_EXTENSION) => read_int8_weights(&mut entry),
            _ if entry.header().entry_type().is_file() => {
                bail!("unexpected file {path:?}: a compiled model holds graph.nnef, graph.quant, .dat and .q8 files")
            }
            _ => continue,
        };
        let tensor = tensor.with_context(|| format!("reading {path:?}"))?;
        tensors.insert(Identifier::from(&*resource_path_to_id(path)?), Arc::new(tensor));
    }
    let graph = graph.with_context(|| format!("no {GRAPH_NNEF_FILENAME} in the archive"))?;
    let proto = ProtoModel {
        doc: parse_document(&graph)?,
        tensors,
        quantization,
        resources: HashMap::new(),
    };
    framework().model_for_proto_model(&proto)
}

/// The operators compiled models may use. Compiling spells quantisation out in plain
/// arithmetic, except in integer convolutions, whose u8 and i8 operands `graph.quant` types.
fn framework() -> Nnef {
    Nnef {
        stdlib: stdlib(),
        registries: vec![tract_nnef::ops::tract_nnef(), tract_core_subset()],
        resource_loaders: vec![],
        allow_extended_identifier_syntax: false,
        extern_all_constants: false,
    }
}

/// The `tract_core` extension, limited to the operators compiled graphs contain: casts and
/// rounding from spelt-out quantisation, the downsampling tract makes of strided 1x1 convs,
/// and the constant power of a trained head's GeM pooling. The parameter lists and loaders
/// are tract-nnef's own (0.23.9).
fn tract_core_subset() -> Registry {
    let mut registry = Registry::new("tract_core");
    registry.register_unit_element_wise("tract_core_round_even", &RoundHalfToEven {});
    registry.register_primitive(
        "tract_core_cast",
        &[TypeName::Scalar.tensor().named("input"), TypeName::String.named("to")],
        &[("output", TypeName::Scalar.tensor())],
        load_cast,
    );
    registry.register_primitive(
        "tract_core_downsample",
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Integer.named("axis"),
            TypeName::Integer.named("stride"),
            TypeName::Integer.named("modulo").default(0),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_downsample,
    );
    registry.register_primitive(
        "tract_core_qconv",
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.tensor().named("filter"),
            TypeName::Scalar.tensor().named("bias").default(0),
            TypeName::Integer.spec().named("group"),
            TypeName::Integer.array().named("dilation"),
            TypeName::Integer.array().named("stride"),
            TypeName::Integer.array().array().named("padding"),
            TypeName::String.spec().named("border"),
            TypeName::Integer.spec().named("a0"),
            TypeName::Scalar.spec().named("a_scale"),
            TypeName::Integer.spec().named("b0"),
            TypeName::Scalar.spec().named("b_scale"),
            TypeName::Integer.spec().named("c0"),
            TypeName::Scalar.spec().named("c_scale"),
            TypeName::String.spec().named("output_dt").default(""),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_qconv,
    );
    registry.register_primitive(
        "tract_core_pow_const",
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.named("exponent"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_pow_const,
    );
    registry
}

fn load_cast(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let to: DatumType = invocation.named_arg_as::<String>(builder, "to")?.parse()?;
    builder.wire(Cast { to }, &[input])
}

fn load_downsample(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let axis = invocation.named_arg_as(builder, "axis")?;
    let stride = invocation.named_arg_as::<i64>(builder, "stride")? as isize;
    let modulo = invocation.named_arg_as(builder, "modulo")?;
    builder.wire(Downsample { axis, stride, modulo }, &[input])
}

/// tract-nnef's loader, for the form `otlens compile` writes: every parameter given, the
/// output type named.
fn load_qconv(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input: OutletId = invocation.named_arg_as(builder, "input")?;
    let filter: OutletId = invocation.named_arg_as(builder, "filter")?;
    let bias: OutletId = invocation.named_arg_as(builder, "bias")?;
    let input_fact = builder.model.outlet_fact(input)?.clone();
    let filter_shape = builder.model.outlet_fact(filter)?.shape.clone();
    let filter_shape = filter_shape.as_concrete().context("the filter's shape is not fixed")?;
    let (group, pool_spec) = read_conv_parameters(builder, invocation, filter_shape, &input_fact)?;
    // tract_core_qconv names the filter's parameters a and the input's b; Conv takes the
    // input's first.
    let mut inputs = tvec!(input, filter, bias);
    for name in ["b0", "b_scale", "a0", "a_scale", "c0", "c_scale"] {
        let mut value: OutletId = invocation.named_arg_as(builder, name)?;
        if name.ends_with('0') {
            value = builder.wire_as_outlets(Cast { to: i32::datum_type() }, &[value])?[0];
        }
        inputs.push(value);
    }
    let output: DatumType = invocation.named_arg_as::<String>(builder, "output_dt")?.parse()?;
    builder.wire(Conv::new(pool_spec, KernelFormat::OIHW, group, Some(output)), &inputs)
}

fn load_pow_const(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let exponent = invocation.named_arg_as(builder, "exponent")?;
    builder.wire(ElementWiseOp(Box::new(PowConst { exponent }), None), &[input])
}
