// Runs in the benchmark page: times tract-wasm (otlens Model.run_tensor) and onnxruntime-web
// (wasm backend) on the same ONNX files and the same input tensor, one thread each, and the WebGPU
// module (otlens_gpu GpuEmbedder) when the browser has an adapter.
// bench/run.mjs serves /pkg/ (www/pkg), /ort/ (onnxruntime-web's dist), /models/N and /catalog/.

import init, { Lens, Model, gpuPlan } from "/pkg/otlens.js";
import * as ort from "/ort/ort.wasm.min.mjs";

const log = (line) => (document.getElementById("log").textContent += `${line}\n`);

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Deterministic input, the same for both runtimes (values in the normalised-image range). */
function inputTensor(size) {
  const tensor = new Float32Array(3 * size * size);
  let state = 12345;
  for (let i = 0; i < tensor.length; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    tensor[i] = (state / 2 ** 32) * 4 - 2;
  }
  return tensor;
}

function timeRuns(run, warmup, runs) {
  for (let i = 0; i < warmup; i++) run();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    run();
    times.push(performance.now() - started);
  }
  return times;
}

async function timeRunsAsync(run, warmup, runs) {
  for (let i = 0; i < warmup; i++) await run();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await run();
    times.push(performance.now() - started);
  }
  return times;
}

function cosine(a, b) {
  let dot = 0;
  let normA = 0;
  let normB = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    normA += a[i] * a[i];
    normB += b[i] * b[i];
  }
  return dot / Math.sqrt(normA * normB);
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function benchModel({ name, onnxUrl, compiledUrl }, { warmup, runs, gpu }) {
  const [bytes, compiledBytes] = await Promise.all([fetchBytes(onnxUrl), fetchBytes(compiledUrl)]);

  let started = performance.now();
  const model = new Model(compiledBytes);
  const tractLoadMs = performance.now() - started;
  const { size } = model.info().input;
  const input = inputTensor(size);
  let tractOutput;
  const tractTimes = timeRuns(() => (tractOutput = model.run_tensor(input)), warmup, runs);
  model.free();
  const webgpu = gpu && (await benchGpu(compiledBytes, input, tractOutput, gpu));

  started = performance.now();
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  const ortLoadMs = performance.now() - started;
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", input, [1, 3, size, size]) };
  let ortOutput;
  const ortTimes = await timeRunsAsync(
    async () => (ortOutput = (await session.run(feeds))[session.outputNames[0]].data),
    warmup,
    runs,
  );
  await session.release();

  const result = {
    name,
    size,
    tract_ms: median(tractTimes),
    ort_ms: median(ortTimes),
    tract_load_ms: tractLoadMs,
    ort_load_ms: ortLoadMs,
    agreement: cosine(tractOutput, ortOutput),
    webgpu,
  };
  log(JSON.stringify(result));
  return result;
}

/** The WebGPU module on the same compiled file and input: fewer runs (a software adapter is slow). */
async function benchGpu(compiledBytes, input, tractOutput, { module, warmup, runs }) {
  const started = performance.now();
  const embedder = await module.GpuEmbedder.create(gpuPlan(compiledBytes));
  const loadMs = performance.now() - started;
  let output;
  const times = await timeRunsAsync(async () => (output = await embedder.run(input)), warmup, runs);
  const result = {
    ms: median(times),
    load_ms: loadMs,
    agreement: cosine(output, tractOutput),
    kernels: embedder.kernelCount(),
    dispatches: embedder.dispatchCount(),
    adapter: embedder.adapter(),
  };
  embedder.free();
  return result;
}

/** The GPU module when the browser has a WebGPU adapter, else null and why. */
async function startGpu(gpuRuns) {
  const adapter = await navigator.gpu?.requestAdapter();
  if (!adapter) return [null, navigator.gpu ? "WebGPU gave no adapter" : "no WebGPU in this browser"];
  const module = await import("/pkg/otlens_gpu.js");
  await module.default({ module_or_path: "/pkg/otlens_gpu_bg.wasm" });
  const fallback = adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter;
  return [{ module, warmup: 1, runs: gpuRuns }, fallback ? "software adapter: overhead only" : "hardware adapter"];
}

async function benchSearch(photoUrl, { warmup, runs }) {
  const manifest = await (await fetch("/catalog/manifest.json")).json();
  const [model, index, photo] = await Promise.all([
    fetchBytes(`/catalog/${manifest.model.file}`),
    fetchBytes(`/catalog/${manifest.index.file}`),
    fetchBytes(photoUrl),
  ]);
  const lens = new Lens(index);
  lens.load_model(model);
  const timings = [];
  timeRuns(() => timings.push(lens.search(photo, 12).timings), warmup, runs);
  const measured = timings.slice(warmup);
  lens.free();
  return {
    products: manifest.products,
    dims: manifest.dims,
    decode_ms: median(measured.map((t) => t.decode_ms)),
    embed_ms: median(measured.map((t) => t.embed_ms)),
    search_ms: median(measured.map((t) => t.search_ms)),
  };
}

/** Called by bench/run.mjs through page.evaluate. */
window.runBenchmark = async ({ models, photoUrl, warmup, runs, gpuRuns }) => {
  await init({ module_or_path: "/pkg/otlens_bg.wasm" });
  const [gpu, gpuNote] = gpuRuns > 0 ? await startGpu(gpuRuns) : [null, "not asked (--gpu-runs 0)"];
  ort.env.wasm.wasmPaths = "/ort/";
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  const results = [];
  for (const model of models) results.push(await benchModel(model, { warmup, runs, gpu }));
  const search = photoUrl ? await benchSearch(photoUrl, { warmup, runs }) : null;
  return {
    results,
    search,
    gpuNote,
    userAgent: navigator.userAgent,
    crossOriginIsolated: self.crossOriginIsolated,
  };
};

window.benchReady = true;
