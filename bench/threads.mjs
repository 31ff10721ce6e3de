// Runs in a worker of the benchmark page (bench.mjs), as the widget's engine runs on a cross-origin isolated
// page: tract-wasm's multi-threaded module (pkg-threads) and onnxruntime-web, each on the same number of
// threads, timed on the same compiled and ONNX files and the same input tensor.

import init, { Model, initThreadPool, useThreadPool } from "/pkg-threads/otlens.js";
import * as ort from "/ort/ort.wasm.min.mjs";

import { cosine, fetchBytes, inputTensor, median, timeOrt, timeRuns } from "./common.mjs";

/** tract on `threads` threads: the median ms per run and the last output, for each model in turn. */
async function timeTract({ compiledUrl }, { warmup, runs }) {
  const model = new Model(await fetchBytes(compiledUrl));
  const input = inputTensor(model.info().input.size);
  let output;
  const times = timeRuns(() => (output = model.run_tensor(input)), warmup, runs);
  model.free();
  return { ms: median(times), input, output };
}

self.onmessage = async ({ data: { models, threads, warmup, runs } }) => {
  try {
    await init({ module_or_path: "/pkg-threads/otlens_bg.wasm" });
    await initThreadPool(threads);
    useThreadPool();
    ort.env.wasm.wasmPaths = "/ort/";
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.proxy = false;
    // Every tract run first: onnxruntime's threads keep spinning for a while after each of its runs, and would
    // take the cores from tract's.
    const onTract = [];
    for (const model of models) onTract.push(await timeTract(model, { warmup, runs }));
    const results = [];
    for (const [i, { name, onnxUrl }] of models.entries()) {
      const { ms, input, output } = onTract[i];
      const onOrt = await timeOrt(ort, await fetchBytes(onnxUrl), input, { warmup, runs, threads });
      results.push({ name, tract_ms: ms, ort_ms: onOrt.ms, agreement: cosine(output, onOrt.output) });
    }
    postMessage({ results });
  } catch (error) {
    postMessage({ error: error.message || String(error) });
  }
};
