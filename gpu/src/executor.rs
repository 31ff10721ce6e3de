//! Runs a [`Plan`] on a wgpu device.
//!
//! Everything a query needs is made once, when the model loads: the pipelines, weights resident
//! in GPU buffers, activation buffers shared by tensors whose lifetimes do not overlap, and one
//! bind group per step. A query is then one buffer write, one submission of every dispatch
//! and the embedding read back. Where the adapter has shader-f16, the weights of matrix products
//! and convolutions are stored as f16: half the GPU memory and half the reads.

use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::plan::{BinaryOp, Clamp, Plan, PointOp, ReduceOp, Source, Step, TensorId, UnaryOp, Window, MAX_POINT_OPS};
use crate::GpuError;

/// Threads per workgroup of the one-value-per-thread kernels (`LINEAR` in kernels.wgsl).
const LINEAR: usize = 64;
/// Output tile side of the `gemm` kernel (`TILE` in kernels.wgsl).
const TILE: usize = 16;
/// Parameter words per step (`Params` in kernels.wgsl).
const WORDS: usize = 32;
/// WebGPU's maximum workgroups per dispatch dimension.
const MAX_GROUPS: usize = 65535;
/// Codes of the `pointwise` kernel from here on are binary operations with a constant
/// (`WITH_CONSTANT` in kernels.wgsl); those below are unary.
const WITH_CONSTANT: u32 = 16;
const KERNELS: &str = include_str!("kernels.wgsl");

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kernel {
    Pointwise,
    Binary,
    Choose,
    Gather,
    Reduce,
    MaxPool,
    ConvDirect,
    Gemm,
}

impl Kernel {
    const ALL: [Kernel; 8] = [
        Kernel::Pointwise,
        Kernel::Binary,
        Kernel::Choose,
        Kernel::Gather,
        Kernel::Reduce,
        Kernel::MaxPool,
        Kernel::ConvDirect,
        Kernel::Gemm,
    ];

    fn entry_point(self) -> &'static str {
        match self {
            Kernel::Pointwise => "pointwise",
            Kernel::Binary => "binary",
            Kernel::Choose => "choose",
            Kernel::Gather => "gather",
            Kernel::Reduce => "reduce",
            Kernel::MaxPool => "max_pool",
            Kernel::ConvDirect => "conv_direct",
            Kernel::Gemm => "gemm",
        }
    }
}

/// The operand of a launch stored as f16, if any: its kernel comes from a copy of kernels.wgsl
/// that declares that binding `array<f16>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HalfOperand {
    None,
    X,
    Y,
}

/// kernels.wgsl, or its copy reading operand `half` as f16.
fn kernel_source(half: HalfOperand) -> String {
    let binding = match half {
        HalfOperand::None => return KERNELS.to_string(),
        HalfOperand::X => "x",
        HalfOperand::Y => "y",
    };
    let declaration = |element| format!("var<storage, read> {binding}: array<{element}>;");
    format!(
        "enable f16;\n{}",
        KERNELS.replacen(&declaration("f32"), &declaration("f16"), 1)
    )
}

/// One kernel launch of a query.
struct Dispatch {
    kernel: Kernel,
    /// Index into [`GpuModel::pipelines`].
    pipeline: usize,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

/// What a step launches, before buffers are bound.
struct Launch {
    kernel: Kernel,
    words: Vec<u32>,
    workgroups: [u32; 3],
    /// The tensors bound to `x`, `y` and `z`.
    reads: Vec<TensorId>,
}

/// A model ready to run on the GPU.
pub struct GpuModel {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: Vec<wgpu::ComputePipeline>,
    dispatches: Vec<Dispatch>,
    input: wgpu::Buffer,
    input_len: usize,
    output: wgpu::Buffer,
    readback: wgpu::Buffer,
    output_len: usize,
    adapter: String,
    f16_weights: bool,
    lost: Arc<Mutex<Option<String>>>,
}

fn gpu_error(error: wgpu::Error) -> GpuError {
    match error {
        wgpu::Error::OutOfMemory { .. } => GpuError::Gpu("out of GPU memory".into()),
        other => GpuError::Gpu(other.to_string()),
    }
}

impl GpuModel {
    /// Finds an adapter, then builds everything the plan needs on it (with its steps fused),
    /// weights in f16 where the adapter supports it.
    pub async fn new(plan: &Plan) -> Result<GpuModel, GpuError> {
        GpuModel::with_f16_weights(plan, true).await
    }

    /// As [`GpuModel::new`]; with `allowed` false, weights stay f32 on any adapter. They stay f32,
    /// too, in a model that rounds its activations (int8 activations): rounding turns f16's error
    /// into whole quantisation steps (EfficientNet-Lite0 int8 on lavapipe: cosine to tract 0.9991
    /// with f16 weights, 0.9997 with f32).
    pub async fn with_f16_weights(plan: &Plan, allowed: bool) -> Result<GpuModel, GpuError> {
        let mut plan = plan.clone();
        plan.fuse();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        // Browsers may hide the adapter's name (Chromium's SwiftShader has none).
        let name = if info.name.trim().is_empty() {
            "unnamed adapter"
        } else {
            info.name.trim()
        };
        let adapter_name = format!("{name} ({:?}, {:?})", info.backend, info.device_type);
        let f16 = allowed && !rounds_activations(&plan) && adapter.features().contains(wgpu::Features::SHADER_F16);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("otlens"),
                required_features: if f16 {
                    wgpu::Features::SHADER_F16
                } else {
                    wgpu::Features::empty()
                },
                required_limits: wgpu::Limits::default(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        GpuModel::on_device(&plan, device, queue, adapter_name, f16).await
    }

    /// The adapter running the model, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)`.
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    /// Whether weights are stored as f16 (the adapter has shader-f16 and they were allowed).
    pub fn f16_weights(&self) -> bool {
        self.f16_weights
    }

    async fn on_device(
        plan: &Plan,
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: String,
        f16_weights: bool,
    ) -> Result<GpuModel, GpuError> {
        let lost = Arc::new(Mutex::new(None));
        let lost_reason = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{reason:?}: {message}"));
        });
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let built = Builder::build(plan, &device, f16_weights);
        if let Some(error) = memory.pop().await {
            return Err(gpu_error(error));
        }
        if let Some(error) = scope.pop().await {
            return Err(gpu_error(error));
        }
        let (pipelines, dispatches, buffers) = built?;
        let output_len = plan.tensors[plan.output].len();
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("embedding readback"),
            size: (4 * output_len) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuModel {
            pipelines,
            dispatches,
            input: buffers[plan.root(plan.input)].clone().expect("the input has a buffer"),
            input_len: plan.tensors[plan.input].len(),
            output: buffers[plan.root(plan.output)]
                .clone()
                .expect("the output has a buffer"),
            readback,
            output_len,
            adapter,
            f16_weights,
            lost,
            device,
            queue,
        })
    }

    /// Number of kernel launches per image.
    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len()
    }

    /// Number of distinct kernels the model uses.
    pub fn kernel_count(&self) -> usize {
        Kernel::ALL
            .iter()
            .filter(|&&kernel| self.dispatches.iter().any(|dispatch| dispatch.kernel == kernel))
            .count()
    }

    /// Runs the model on one input tensor and reads its output back.
    pub async fn run(&self, input: &[f32]) -> Result<Vec<f32>, GpuError> {
        if input.len() != self.input_len {
            return Err(GpuError::Input(format!(
                "input has {} values, the model takes {}",
                input.len(),
                self.input_len
            )));
        }
        if let Some(reason) = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(GpuError::DeviceLost(reason));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.queue.write_buffer(&self.input, 0, &f32_bytes(input));
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for dispatch in &self.dispatches {
                pass.set_pipeline(&self.pipelines[dispatch.pipeline]);
                pass.set_bind_group(0, &dispatch.bind_group, &[]);
                let [x, y, z] = dispatch.workgroups;
                pass.dispatch_workgroups(x, y, z);
            }
        }
        let bytes = (4 * self.output_len) as u64;
        encoder.copy_buffer_to_buffer(&self.output, 0, &self.readback, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.readback.map_async(wgpu::MapMode::Read, .., move |result| {
            // The receiver is only gone if the query was abandoned; nothing to tell then.
            let _ = sender.send(result);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| GpuError::Gpu(e.to_string()))?;
        let mapped = receiver.await;
        if let Some(error) = memory.pop().await {
            return Err(gpu_error(error));
        }
        if let Some(error) = scope.pop().await {
            return Err(gpu_error(error));
        }
        if let Some(reason) = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(GpuError::DeviceLost(reason));
        }
        match mapped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(GpuError::Gpu(format!("cannot read the embedding back: {e}"))),
            Err(_) => return Err(GpuError::Gpu("the embedding read-back was cancelled".into())),
        }
        let values = {
            let view = self
                .readback
                .get_mapped_range(..)
                .map_err(|e| GpuError::Gpu(format!("cannot read the embedding back: {e}")))?;
            view.chunks_exact(4)
                .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
                .collect()
        };
        self.readback.unmap();
        Ok(values)
    }
}

fn rounds_activations(plan: &Plan) -> bool {
    let round = PointOp::Unary(UnaryOp::RoundHalfEven);
    plan.steps.iter().any(|step| match step {
        Step::Unary { op, .. } => *op == UnaryOp::RoundHalfEven,
        Step::Pointwise { ops, .. } => ops.contains(&round),
        _ => false,
    })
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Padded to 4 bytes: a storage binding's size is a multiple of 4.
fn f16_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes
}

/// Lays a plan out on a device: buffers, then one launch per step.
struct Builder<'a> {
    plan: &'a Plan,
    /// The buffer of every root tensor (constants and computed ones).
    buffers: Vec<Option<wgpu::Buffer>>,
    /// The root tensors stored as f16.
    half: Vec<bool>,
}

impl<'a> Builder<'a> {
    /// The constants stored as f16 when the device allows: those read only as the x or y operand
    /// of matrix products and convolutions (their weights), and never two in one launch.
    fn half_constants(&self, launches: &[Launch]) -> Vec<bool> {
        let plan = self.plan;
        let mut half: Vec<bool> = plan
            .tensors
            .iter()
            .map(|tensor| matches!(tensor.source, Source::Constant(_)))
            .collect();
        for launch in launches {
            let weighted = matches!(launch.kernel, Kernel::Gemm | Kernel::ConvDirect);
            for (slot, &read) in launch.reads.iter().enumerate() {
                if !weighted || slot > 1 {
                    half[plan.root(read)] = false;
                }
            }
            if let [x, y, ..] = launch.reads[..] {
                if half[plan.root(x)] && half[plan.root(y)] {
                    half[plan.root(y)] = false;
                }
            }
        }
        half
    }

    fn half_operand(&self, launch: &Launch) -> HalfOperand {
        let half = |slot: usize| {
            launch
                .reads
                .get(slot)
                .is_some_and(|&read| self.half[self.plan.root(read)])
        };
        if half(0) {
            HalfOperand::X
        } else if half(1) {
            HalfOperand::Y
        } else {
            HalfOperand::None
        }
    }

    /// Weights get a buffer each; activations share buffers: a step's output takes the
    /// smallest free buffer large enough, and a tensor's buffer is freed after its last reader.
    fn allocate(&mut self, device: &wgpu::Device) {
        let plan = self.plan;
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        for (id, tensor) in plan.tensors.iter().enumerate() {
            if let Source::Constant(offset) = tensor.source {
                let values = &plan.constants[offset..offset + tensor.len()];
                let contents = if values.is_empty() {
                    vec![0; 4]
                } else if self.half[id] {
                    f16_bytes(values)
                } else {
                    f32_bytes(values)
                };
                self.buffers[id] = Some(device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("weights"),
                    contents: &contents,
                    usage: storage,
                }));
            }
        }
        let sized = |len: usize, label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (4 * len.max(1)) as u64,
                usage: storage,
                mapped_at_creation: false,
            })
        };
        let (input, output) = (plan.root(plan.input), plan.root(plan.output));
        self.buffers[input] = Some(sized(plan.tensors[input].len(), "input"));
        if output != input {
            self.buffers[output] = Some(sized(plan.tensors[output].len(), "output"));
        }
        let mut last_read = vec![None; plan.tensors.len()];
        for (index, step) in plan.steps.iter().enumerate() {
            for read in Plan::step_tensors(step).0 {
                last_read[plan.root(read)] = Some(index);
            }
        }
        let mut free: Vec<(usize, wgpu::Buffer)> = Vec::new();
        for (index, step) in plan.steps.iter().enumerate() {
            let (reads, written) = Plan::step_tensors(step);
            let written = plan.root(written);
            if self.buffers[written].is_none() {
                let len = plan.tensors[written].len().max(1);
                let best = free
                    .iter()
                    .enumerate()
                    .filter(|(_, (size, _))| *size >= len)
                    .min_by_key(|(_, (size, _))| *size)
                    .map(|(at, _)| at);
                let buffer = match best {
                    Some(at) => free.swap_remove(at).1,
                    None => sized(len, "activations"),
                };
                self.buffers[written] = Some(buffer);
            }
            let done = reads
                .iter()
                .map(|&read| plan.root(read))
                .chain([written])
                .filter(|&root| {
                    root != input
                        && root != output
                        && plan.tensors[root].source == Source::Computed
                        && last_read[root].is_none_or(|last| last <= index)
                });
            for root in done.collect::<std::collections::BTreeSet<_>>() {
                let buffer = self.buffers[root].clone().expect("allocated");
                free.push((plan.tensors[root].len().max(1), buffer));
            }
        }
    }

    /// Lays a plan out on a device: the launches, then buffers, pipelines and bind groups.
    #[allow(clippy::type_complexity)]
    fn build(
        plan: &'a Plan,
        device: &wgpu::Device,
        f16_weights: bool,
    ) -> Result<(Vec<wgpu::ComputePipeline>, Vec<Dispatch>, Vec<Option<wgpu::Buffer>>), GpuError> {
        let mut builder = Builder {
            plan,
            buffers: vec![None; plan.tensors.len()],
            half: vec![false; plan.tensors.len()],
        };
        let launches = plan
            .steps
            .iter()
            .map(|step| builder.launch(step))
            .collect::<Result<Vec<_>, _>>()?;
        if f16_weights {
            builder.half = builder.half_constants(&launches);
        }
        builder.allocate(device);
        builder.bind(device, launches)
    }

    #[allow(clippy::type_complexity)]
    fn bind(
        self,
        device: &wgpu::Device,
        launches: Vec<Launch>,
    ) -> Result<(Vec<wgpu::ComputePipeline>, Vec<Dispatch>, Vec<Option<wgpu::Buffer>>), GpuError> {
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("otlens kernels"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1, false),
                storage(2, true),
                storage(3, true),
                storage(4, true),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("otlens kernels"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        // A pipeline per kernel and f16 operand the launches use, from one module per f16 operand.
        let mut kinds: Vec<(Kernel, HalfOperand)> = launches
            .iter()
            .map(|launch| (launch.kernel, self.half_operand(launch)))
            .collect();
        kinds.sort();
        kinds.dedup();
        let mut modules: Vec<(HalfOperand, wgpu::ShaderModule)> = Vec::new();
        for &(_, half) in &kinds {
            if !modules.iter().any(|(made, _)| *made == half) {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("otlens kernels"),
                    source: wgpu::ShaderSource::Wgsl(kernel_source(half).into()),
                });
                modules.push((half, module));
            }
        }
        let pipelines = kinds
            .iter()
            .map(|&(kernel, half)| {
                let module = &modules.iter().find(|(made, _)| *made == half).expect("made above").1;
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.entry_point()),
                    layout: Some(&pipeline_layout),
                    module,
                    entry_point: Some(kernel.entry_point()),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();

        // Every step's parameters in one uniform buffer, each at an aligned offset.
        let stride = (4 * WORDS).next_multiple_of(device.limits().min_uniform_buffer_offset_alignment as usize);
        let mut words = vec![0u8; stride * launches.len().max(1)];
        for (index, launch) in launches.iter().enumerate() {
            let bytes: Vec<u8> = launch.words.iter().flat_map(|w| w.to_le_bytes()).collect();
            words[index * stride..index * stride + bytes.len()].copy_from_slice(&bytes);
        }
        let parameters = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("kernel parameters"),
            contents: &words,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let unused = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dispatches = launches
            .into_iter()
            .zip(&self.plan.steps)
            .enumerate()
            .map(|(index, (launch, step))| {
                let buffer = |tensor: TensorId| {
                    self.buffers[self.plan.root(tensor)]
                        .as_ref()
                        .expect("every tensor a step touches has a buffer")
                };
                let written = buffer(Plan::step_tensors(step).1);
                let mut entries = vec![
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &parameters,
                            offset: (index * stride) as u64,
                            size: wgpu::BufferSize::new((4 * WORDS) as u64),
                        }),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: written.as_entire_binding(),
                    },
                ];
                for slot in 0..3 {
                    let read = launch.reads.get(slot).map_or(&unused, |&tensor| buffer(tensor));
                    entries.push(wgpu::BindGroupEntry {
                        binding: 2 + slot as u32,
                        resource: read.as_entire_binding(),
                    });
                }
                let kind = (launch.kernel, self.half_operand(&launch));
                Dispatch {
                    kernel: launch.kernel,
                    pipeline: kinds.binary_search(&kind).expect("every launch's kind has a pipeline"),
                    bind_group: device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &layout,
                        entries: &entries,
                    }),
                    workgroups: launch.workgroups,
                }
            })
            .collect();
        Ok((pipelines, dispatches, self.buffers))
    }

    fn shape(&self, tensor: TensorId) -> &[usize] {
        &self.plan.tensors[tensor].shape
    }

    /// The parameters and workgroups of one step.
    fn launch(&self, step: &Step) -> Result<Launch, GpuError> {
        let output = Plan::step_tensors(step).1;
        let out_shape = self.shape(output);
        let count = out_shape.iter().product::<usize>();
        let dims = padded_dims(out_shape);
        let linear = |kernel, mut words: Vec<u32>, reads: Vec<TensorId>| {
            words[0] = count as u32;
            Launch {
                kernel,
                words,
                workgroups: linear_workgroups(count),
                reads,
            }
        };
        let launch = match *step {
            Step::Unary { op, input, .. } => {
                linear(Kernel::Pointwise, point_words(&[PointOp::Unary(op)])?, vec![input])
            }
            Step::Pointwise { input, ref ops, .. } => linear(Kernel::Pointwise, point_words(ops)?, vec![input]),
            Step::Binary { op, a, b, .. } => {
                let mut w = vec![0, binary_code(op)];
                w.extend(dims);
                w.extend(self.broadcast_strides(a, out_shape)?);
                w.extend(self.broadcast_strides(b, out_shape)?);
                linear(Kernel::Binary, w, vec![a, b])
            }
            Step::Select {
                condition,
                then,
                otherwise,
                ..
            } => {
                let mut w = vec![0, 0];
                w.extend(dims);
                for operand in [condition, then, otherwise] {
                    w.extend(self.broadcast_strides(operand, out_shape)?);
                }
                linear(Kernel::Choose, w, vec![condition, then, otherwise])
            }
            Step::Gather {
                input,
                offset,
                ref strides,
                ..
            } => {
                if strides.len() != out_shape.len() {
                    return Err(GpuError::InvalidPlan(
                        "a gather's strides do not match its output".into(),
                    ));
                }
                let mut w = vec![0, offset as u32];
                w.extend(dims);
                w.extend(padded_strides(strides));
                linear(Kernel::Gather, w, vec![input])
            }
            Step::Reduce { op, input, .. } => {
                let in_shape = self.shape(input);
                if in_shape.len() != out_shape.len() {
                    return Err(GpuError::InvalidPlan("a reduction changes the rank".into()));
                }
                let strides = contiguous_strides(in_shape);
                let reduced = |axis: usize| out_shape[axis] == 1 && in_shape[axis] != 1;
                let kept: Vec<usize> = (0..in_shape.len())
                    .map(|axis| if reduced(axis) { 0 } else { strides[axis] })
                    .collect();
                let extents: Vec<usize> = (0..in_shape.len())
                    .map(|axis| if reduced(axis) { in_shape[axis] } else { 1 })
                    .collect();
                let across: Vec<usize> = (0..in_shape.len())
                    .map(|axis| if reduced(axis) { strides[axis] } else { 0 })
                    .collect();
                let mut w = vec![0, reduce_code(op)];
                w.extend(dims);
                w.extend(padded_strides(&kept));
                w.extend(padded_dims(&extents));
                w.extend(padded_strides(&across));
                w.push(extents.iter().product::<usize>() as u32);
                linear(Kernel::Reduce, w, vec![input])
            }
            Step::MaxPool { input, geometry, .. } => {
                let image = self.image(input)?;
                let out = self.image(output)?;
                let mut w = vec![0];
                w.extend(window_words(image, out, &geometry));
                linear(Kernel::MaxPool, w, vec![input])
            }
            Step::Conv { .. } => return self.conv(step),
            Step::MatMul {
                a,
                b,
                m,
                n,
                k,
                batch,
                a_strides,
                b_strides,
                output_strides,
                bias,
                clamp,
                ..
            } => {
                let mut w = vec![0, m as u32, n as u32, k as u32];
                for s in [a_strides, b_strides, output_strides] {
                    w.extend([s.row as u32, s.column as u32, s.batch as u32]);
                }
                w.push(self.bias_mode(bias, m)?);
                // Words 14..27 describe a convolution's window; the bias is per row in every batch.
                w.resize(28, 0);
                w.extend(clamp_words(clamp));
                Launch {
                    kernel: Kernel::Gemm,
                    words: w,
                    workgroups: tiled_workgroups(m, n, batch)?,
                    reads: std::iter::once(a).chain([b]).chain(bias).collect(),
                }
            }
        };
        if launch.words.len() > WORDS {
            return Err(GpuError::InvalidPlan(
                "a step has more parameters than a kernel takes".into(),
            ));
        }
        Ok(launch)
    }

    fn conv(&self, step: &Step) -> Result<Launch, GpuError> {
        let Step::Conv {
            input,
            weights,
            bias,
            output,
            geometry,
            groups,
            clamp,
        } = *step
        else {
            return Err(GpuError::InvalidPlan("not a convolution".into()));
        };
        let image = self.image(input)?;
        let out = self.image(output)?;
        let (in_channels, out_channels) = (image[0], out[0]);
        if groups == 0 || in_channels % groups != 0 || out_channels % groups != 0 {
            return Err(GpuError::InvalidPlan(format!(
                "{groups} groups do not divide {in_channels} input and {out_channels} output channels"
            )));
        }
        let per_group = in_channels / groups;
        let expected = [out_channels, per_group, geometry.kernel[0], geometry.kernel[1]];
        if self.shape(weights) != expected {
            return Err(GpuError::InvalidPlan(format!(
                "convolution weights of shape {:?}, expected {expected:?}",
                self.shape(weights)
            )));
        }
        let bias_mode = self.bias_mode(bias, out_channels)?;
        let reads = std::iter::once(input).chain([weights]).chain(bias).collect::<Vec<_>>();
        let taps = geometry.kernel[0] * geometry.kernel[1];
        // A matrix product needs a deep enough k to fill its tiles; depthwise convolutions
        // (one input channel per group) and tiny stems run directly.
        if per_group * taps < TILE || out_channels / groups < TILE / 2 {
            let count = out.iter().product::<usize>();
            let mut w = vec![count as u32];
            w.extend(window_words(image, out, &geometry));
            w.extend([
                out_channels as u32,
                per_group as u32,
                (out_channels / groups) as u32,
                bias_mode,
            ]);
            w.extend(clamp_words(clamp));
            return Ok(Launch {
                kernel: Kernel::ConvDirect,
                words: w,
                workgroups: linear_workgroups(count),
                reads,
            });
        }
        let m = out_channels / groups;
        let n = out[1] * out[2];
        let k = per_group * taps;
        let mut w = vec![1, m as u32, n as u32, k as u32];
        // a: the weights, one row per output channel; b is read through the window; output rows
        // are channels.
        w.extend([k as u32, 1, (m * k) as u32]);
        w.extend([0, 0, 0]);
        w.extend([n as u32, 1, (m * n) as u32]);
        w.push(bias_mode);
        w.extend(window_words([per_group, image[1], image[2]], out, &geometry));
        w.push(m as u32);
        w.extend(clamp_words(clamp));
        Ok(Launch {
            kernel: Kernel::Gemm,
            words: w,
            workgroups: tiled_workgroups(m, n, groups)?,
            // The gemm kernel reads weights as x, the image as y.
            reads: std::iter::once(weights).chain([input]).chain(bias).collect(),
        })
    }

    /// How the kernels read a bias for `channels` rows or channels: 0 none, 1 one value, 2 one each.
    fn bias_mode(&self, bias: Option<TensorId>, channels: usize) -> Result<u32, GpuError> {
        match bias.map(|b| self.plan.tensors[b].len()) {
            None => Ok(0),
            Some(1) => Ok(1),
            Some(len) if len == channels => Ok(2),
            Some(len) => Err(GpuError::InvalidPlan(format!(
                "{len} bias values for {channels} channels"
            ))),
        }
    }

    /// [channels, height, width] of an image tensor (a leading batch of 1 allowed).
    fn image(&self, tensor: TensorId) -> Result<[usize; 3], GpuError> {
        match *self.shape(tensor) {
            [1, c, h, w] | [c, h, w] => Ok([c, h, w]),
            ref other => Err(GpuError::InvalidPlan(format!(
                "an image tensor of shape {other:?}, expected CxHxW"
            ))),
        }
    }

    /// Strides that read `operand` at every index of `out_shape`, numpy broadcasting.
    fn broadcast_strides(&self, operand: TensorId, out_shape: &[usize]) -> Result<[u32; 4], GpuError> {
        let shape = self.shape(operand);
        if shape.len() > out_shape.len() {
            return Err(GpuError::InvalidPlan(format!(
                "cannot broadcast {shape:?} to {out_shape:?}"
            )));
        }
        let aligned: Vec<usize> = std::iter::repeat_n(1, out_shape.len() - shape.len())
            .chain(shape.iter().copied())
            .collect();
        let strides = contiguous_strides(&aligned);
        let mut broadcast = Vec::with_capacity(out_shape.len());
        for ((&dim, &out), &stride) in aligned.iter().zip(out_shape).zip(&strides) {
            match dim {
                _ if dim == out => broadcast.push(stride),
                1 => broadcast.push(0),
                _ => {
                    return Err(GpuError::InvalidPlan(format!(
                        "cannot broadcast {shape:?} to {out_shape:?}"
                    )))
                }
            }
        }
        Ok(padded_strides(&broadcast))
    }
}

/// The kernels' activation words: clamp or not, then the bounds.
fn clamp_words(clamp: Option<Clamp>) -> [u32; 3] {
    match clamp {
        Some(Clamp { low, high }) => [1, low.to_bits(), high.to_bits()],
        None => [0; 3],
    }
}

fn window_words(image: [usize; 3], out: [usize; 3], geometry: &Window) -> Vec<u32> {
    let mut w: Vec<u32> = [image[0], image[1], image[2], out[1], out[2]]
        .iter()
        .map(|&v| v as u32)
        .collect();
    for pair in [geometry.kernel, geometry.strides, geometry.padding, geometry.dilations] {
        w.extend(pair.map(|v| v as u32));
    }
    w
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

/// Dims as rank 4, leading ones.
fn padded_dims(shape: &[usize]) -> [u32; 4] {
    let mut dims = [1; 4];
    for (slot, &dim) in dims[4 - shape.len()..].iter_mut().zip(shape) {
        *slot = dim as u32;
    }
    dims
}

/// Strides as rank 4, leading zeros.
fn padded_strides(strides: &[usize]) -> [u32; 4] {
    let mut padded = [0; 4];
    for (slot, &stride) in padded[4 - strides.len()..].iter_mut().zip(strides) {
        *slot = stride as u32;
    }
    padded
}

fn linear_workgroups(count: usize) -> [u32; 3] {
    let groups = count.div_ceil(LINEAR).max(1);
    let x = groups.min(MAX_GROUPS);
    [x as u32, groups.div_ceil(x) as u32, 1]
}

fn tiled_workgroups(m: usize, n: usize, batch: usize) -> Result<[u32; 3], GpuError> {
    let groups = [n.div_ceil(TILE), m.div_ceil(TILE), batch];
    if groups.iter().any(|&g| g > MAX_GROUPS) {
        return Err(GpuError::InvalidPlan(format!(
            "a {m}x{n} product in {batch} batches needs more workgroups than WebGPU allows"
        )));
    }
    Ok(groups.map(|g| g.max(1) as u32))
}

/// The `pointwise` kernel's words for a chain of operations (`WITH_CONSTANT` in kernels.wgsl).
fn point_words(ops: &[PointOp]) -> Result<Vec<u32>, GpuError> {
    if ops.len() > MAX_POINT_OPS {
        return Err(GpuError::InvalidPlan(format!(
            "a chain of {} element-wise operations; the kernel takes {MAX_POINT_OPS}",
            ops.len()
        )));
    }
    let mut words = vec![0, ops.len() as u32];
    for op in ops {
        let (code, a, b) = match *op {
            PointOp::Unary(op) => {
                let (code, a, b) = unary_code(op);
                (code, a.to_bits(), b.to_bits())
            }
            PointOp::WithConstant {
                op,
                value,
                constant_first,
            } => (WITH_CONSTANT + binary_code(op), value.to_bits(), constant_first as u32),
        };
        words.extend([code, a, b]);
    }
    Ok(words)
}

fn unary_code(op: UnaryOp) -> (u32, f32, f32) {
    match op {
        UnaryOp::Square => (0, 0.0, 0.0),
        UnaryOp::Sqrt => (1, 0.0, 0.0),
        UnaryOp::Rsqrt => (2, 0.0, 0.0),
        UnaryOp::Recip => (3, 0.0, 0.0),
        UnaryOp::Abs => (4, 0.0, 0.0),
        UnaryOp::Neg => (5, 0.0, 0.0),
        UnaryOp::Exp => (6, 0.0, 0.0),
        UnaryOp::RoundHalfEven => (7, 0.0, 0.0),
        UnaryOp::Pow(exponent) => (8, exponent, 0.0),
        UnaryOp::CastToInteger { min, max } => (9, min, max),
        UnaryOp::CastToBool => (10, 0.0, 0.0),
    }
}

fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Max => 4,
        BinaryOp::Min => 5,
        BinaryOp::Pow => 6,
        BinaryOp::Equal => 7,
        BinaryOp::NotEqual => 8,
        BinaryOp::Less => 9,
        BinaryOp::LessOrEqual => 10,
        BinaryOp::Greater => 11,
        BinaryOp::GreaterOrEqual => 12,
    }
}

fn reduce_code(op: ReduceOp) -> u32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Max => 2,
        ReduceOp::Min => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_f16_copy_of_the_kernels_declares_only_its_operand_f16() {
        assert_eq!(kernel_source(HalfOperand::None), KERNELS);
        for (half, operand, other) in [(HalfOperand::X, "x", "y"), (HalfOperand::Y, "y", "x")] {
            let source = kernel_source(half);
            assert!(source.starts_with("enable f16;"));
            assert!(source.contains(&format!("var<storage, read> {operand}: array<f16>;")));
            assert!(source.contains(&format!("var<storage, read> {other}: array<f32>;")));
        }
    }

    #[test]
    fn f16_weights_round_and_pad_to_a_word() {
        let bytes = f16_bytes(&[1.0, -2.5, 65504.0]);
        assert_eq!(bytes.len(), 8);
        assert_eq!(&bytes[..6], &[0x00, 0x3c, 0x00, 0xc1, 0xff, 0x7b]);
    }
}
