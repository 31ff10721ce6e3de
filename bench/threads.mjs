// Runs in a worker of the benchmark page (bench.mjs), as the widget's engine runs on a cross-origin isolated
// page: tract-wasm's multi-threaded module (pkg-threads) and onnxruntime-web, each on the same number of
// threads, timed on the same compiled and ONNX files and the same input tensor, their runs interleaved.
// Tract is the build the widget would run here (relaxed SIMD when the browser has it) or, with `plain`, the
// plain-SIMD build: one build per worker, as a second thread pool would take the cores from the first.

import init, { Model, initThreadPool, useThreadPool } from "/pkg-threads/otlens.js";
import * as ort from "/ort/ort.wasm.min.mjs";

import { fetchBytes, startEngineBuild, timeTractAndOrt } from "./common.mjs";

self.onmessage = async ({ data: { models, threads, warmup, runs, plain } }) => {
  try {
    const relaxedSimd = await startEngineBuild("/pkg-threads/", init, { plain });
    await initThreadPool(threads);
    useThreadPool();
    ort.env.wasm.wasmPaths = "/ort/";
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.proxy = false;
    const results = [];
    for (const { name, onnxUrl, compiledUrl } of models) {
      const [onnxBytes, compiledBytes] = await Promise.all([fetchBytes(onnxUrl), fetchBytes(compiledUrl)]);
      const timed = await timeTractAndOrt({ Model }, ort, { compiledBytes, onnxBytes }, { threads, warmup, runs });
      results.push({ name, tract_ms: timed.tract_ms, ort_ms: timed.ort_ms, agreement: timed.agreement });
    }
    postMessage({ results, relaxedSimd });
  } catch (error) {
    postMessage({ error: error.message || String(error) });
  }
};
