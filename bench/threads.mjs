// Runs in a worker of the benchmark page (bench.mjs), as the widget's engine runs on a cross-origin isolated
// page: tract-wasm's multi-threaded module (pkg-threads) and onnxruntime-web, each on the same number of
// threads, timed on the same compiled and ONNX files and the same input tensor, their runs interleaved.

import init, { Model, initThreadPool, useThreadPool } from "/pkg-threads/otlens.js";
import * as ort from "/ort/ort.wasm.min.mjs";

import { fetchBytes, timeTractAndOrt } from "./common.mjs";

self.onmessage = async ({ data: { models, threads, warmup, runs } }) => {
  try {
    await init({ module_or_path: "/pkg-threads/otlens_bg.wasm" });
    await initThreadPool(threads);
    useThreadPool();
    ort.env.wasm.wasmPaths = "/ort/";
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.proxy = false;
    const results = [];
    for (const { name, onnxUrl, compiledUrl } of models) {
      const [onnxBytes, compiledBytes] = await Promise.all([fetchBytes(onnxUrl), fetchBytes(compiledUrl)]);
      const timed = await timeTractAndOrt(Model, ort, { compiledBytes, onnxBytes }, { threads, warmup, runs });
      results.push({ name, tract_ms: timed.tract_ms, ort_ms: timed.ort_ms, agreement: timed.agreement });
    }
    postMessage({ results });
  } catch (error) {
    postMessage({ error: error.message || String(error) });
  }
};
