// Shared by the benchmark page (bench.mjs) and its worker (threads.mjs).

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Deterministic input, the same for both runtimes (values in the normalised-image range). */
export function inputTensor(size) {
  const tensor = new Float32Array(3 * size * size);
  let state = 12345;
  for (let i = 0; i < tensor.length; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    tensor[i] = (state / 2 ** 32) * 4 - 2;
  }
  return tensor;
}

export function timeRuns(run, warmup, runs) {
  for (let i = 0; i < warmup; i++) run();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    run();
    times.push(performance.now() - started);
  }
  return times;
}

export async function timeRunsAsync(run, warmup, runs) {
  for (let i = 0; i < warmup; i++) await run();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await run();
    times.push(performance.now() - started);
  }
  return times;
}

export function cosine(a, b) {
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

export async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * onnxruntime-web (`ort`, its wasm backend) on the ONNX file `bytes` and the 1x3xSxS `input`, with `threads`
 * threads within each operator: the session's load ms, the median ms per run and the last output.
 */
export async function timeOrt(ort, bytes, input, { warmup, runs, threads = 1 }) {
  const started = performance.now();
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
    intraOpNumThreads: threads,
  });
  const loadMs = performance.now() - started;
  const size = Math.sqrt(input.length / 3);
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", input, [1, 3, size, size]) };
  let output;
  const times = await timeRunsAsync(
    async () => (output = (await session.run(feeds))[session.outputNames[0]].data),
    warmup,
    runs,
  );
  await session.release();
  return { loadMs, ms: median(times), output };
}
