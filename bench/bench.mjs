// Runs in the benchmark page: times tract-wasm (otlens Model.run_tensor) and onnxruntime-web
// (wasm backend) on the same ONNX files and the same input tensor, their runs interleaved, one thread
// each, then on one thread per core in a worker (threads.mjs), and the WebGPU module (otlens_gpu
// GpuEmbedder) when the browser has an adapter. Tract is the build the widget would run here: relaxed SIMD
// when the browser has it, timed then against the plain build too.
// bench/run.mjs serves /pkg/ and /pkg-threads/ (www/), /ort/ (onnxruntime-web's dist), /models/N and
// /catalog/, all cross-origin isolated.

import init, { Lens, Model, gpuPlan } from "/pkg/otlens.js";
// The same glue, a second instance: the plain-SIMD build beside the relaxed one.
import initPlain, { Model as PlainModel } from "/pkg/otlens.js?plain";
import * as ort from "/ort/ort.wasm.min.mjs";

import {
  cosine,
  fetchBytes,
  median,
  startEngineBuild,
  timeRuns,
  timeRunsAsync,
  timeTractAndOrt,
} from "./common.mjs";

const log = (line) => (document.getElementById("log").textContent += `${line}\n`);

async function benchModel({ name, onnxUrl, compiledUrl }, { warmup, runs, gpu, relaxedSimd }) {
  const [onnxBytes, compiledBytes] = await Promise.all([fetchBytes(onnxUrl), fetchBytes(compiledUrl)]);
  const { input, tractOutput, ...timed } = await timeTractAndOrt(
    { Model, PlainModel: relaxedSimd ? PlainModel : undefined },
    ort,
    { compiledBytes, onnxBytes },
    { warmup, runs },
  );
  const webgpu = gpu && (await benchGpu(compiledBytes, input, tractOutput, gpu));
  const result = { name, ...timed, webgpu };
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

/**
 * The models on `threads` threads in a worker (threads.mjs), as the widget runs on a cross-origin isolated page,
 * and when that ran the relaxed-SIMD build, the plain build in another worker after it; null and why when this
 * page is not isolated or the multi-threaded module is not built.
 */
async function benchThreads(models, { warmup, runs, threads }) {
  if (!self.crossOriginIsolated) return [null, "the page is not cross-origin isolated"];
  if (!(await fetch("/pkg-threads/otlens_bg.wasm", { method: "HEAD" })).ok) {
    return [null, "no multi-threaded module (www/pkg-threads: ./build.sh build)"];
  }
  const inWorker = async (plain) => {
    const worker = new Worker("/threads.mjs", { type: "module" });
    const answer = await new Promise((done) => {
      worker.onmessage = ({ data }) => done(data);
      worker.onerror = (event) => done({ error: event.message });
      worker.postMessage({ models, threads, warmup, runs, plain });
    });
    worker.terminate();
    if (answer.error) throw new Error(`the threads benchmark failed: ${answer.error}`);
    return answer;
  };
  const { results, relaxedSimd } = await inWorker(false);
  if (relaxedSimd) {
    const plain = await inWorker(true);
    for (const [i, result] of results.entries()) {
      result.plain = { ms: plain.results[i].tract_ms, ort_ms: plain.results[i].ort_ms };
    }
  }
  return [results, `${threads} threads${relaxedSimd ? ", relaxed SIMD" : ""}`];
}

/** Called by bench/run.mjs through page.evaluate. */
window.runBenchmark = async ({ models, photoUrl, warmup, runs, gpuRuns }) => {
  const relaxedSimd = await startEngineBuild("/pkg/", init);
  if (relaxedSimd) await startEngineBuild("/pkg/", initPlain, { plain: true });
  const [gpu, gpuNote] = gpuRuns > 0 ? await startGpu(gpuRuns) : [null, "not asked (--gpu-runs 0)"];
  ort.env.wasm.wasmPaths = "/ort/";
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  const results = [];
  for (const model of models) results.push(await benchModel(model, { warmup, runs, gpu, relaxedSimd }));
  const search = photoUrl ? await benchSearch(photoUrl, { warmup, runs }) : null;
  // As many as the widget takes: one per core, at most 4.
  const threads = Math.min(navigator.hardwareConcurrency || 1, 4);
  const [threaded, threadsNote] = threads > 1 ? await benchThreads(models, { warmup, runs, threads }) : [null, "one core"];
  return {
    relaxedSimd,
    results,
    threaded,
    threadsNote,
    search,
    gpuNote,
    userAgent: navigator.userAgent,
    crossOriginIsolated: self.crossOriginIsolated,
  };
};

window.benchReady = true;
