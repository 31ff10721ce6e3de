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
 * An onnxruntime-web (`ort`, its wasm backend) session on the ONNX file `bytes`, with `threads` threads within
 * each operator: its load ms, `run(input)` (a 1x3xSxS tensor in, the output's data out) and `release()`.
 */
async function openOrt(ort, bytes, threads) {
  const started = performance.now();
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
    intraOpNumThreads: threads,
  });
  const loadMs = performance.now() - started;
  return {
    loadMs,
    async run(input) {
      const size = Math.sqrt(input.length / 3);
      const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", input, [1, 3, size, size]) };
      return (await session.run(feeds))[session.outputNames[0]].data;
    },
    release: () => session.release(),
  };
}

const pause = (ms) => new Promise((done) => setTimeout(done, ms));

/**
 * Times runtimes on the same model in alternating blocks of `block` runs, each block after a pause: a burst of
 * load on a shared machine then falls on every side alike. (Timed one after the other, the two-thread ratios
 * moved by up to 25 % between runs.) The pause lets onnxruntime's threads go idle before the next block, and
 * each runtime leads in turn. `runners`: async functions returning an output. Per runner: the median ms per
 * run and its last output.
 */
async function timeInterleaved(runners, { warmup, runs, block = 2, pauseMs = 50 }) {
  const outputs = [];
  for (const [i, run] of runners.entries()) for (let w = 0; w < warmup; w++) outputs[i] = await run();
  const times = runners.map(() => []);
  for (let round = 0; times[0].length < runs; round++) {
    const count = Math.min(block, runs - times[0].length);
    for (let turn = 0; turn < runners.length; turn++) {
      const i = (round + turn) % runners.length;
      await pause(pauseMs);
      for (let r = 0; r < count; r++) {
        const started = performance.now();
        outputs[i] = await runners[i]();
        times[i].push(performance.now() - started);
      }
    }
  }
  return times.map((t, i) => ({ ms: median(t), output: outputs[i] }));
}

/**
 * Starts the engine module in `folder` (wasm-bindgen's `init`) as the widget's worker does: its relaxed-SIMD
 * build when the browser accepts it, else (or with `plain`) the plain one. Whether the relaxed build runs.
 */
export async function startEngineBuild(folder, init, { plain = false } = {}) {
  const response = plain ? null : await fetch(`${folder}otlens_relaxed_bg.wasm`);
  const relaxed = response?.ok ? new Uint8Array(await response.arrayBuffer()) : null;
  if (relaxed && WebAssembly.validate(relaxed)) {
    await init({ module_or_path: relaxed });
    return true;
  }
  await init({ module_or_path: `${folder}otlens_bg.wasm` });
  return false;
}

/**
 * One model on tract (`Model`, from the one-thread or the multi-threaded module, as the caller started it) and
 * on onnxruntime-web, each on `threads` threads, their runs interleaved, with tract's plain-SIMD build
 * (`PlainModel`) as a third when `Model` is the relaxed-SIMD one: the input size, the median ms per run and load
 * ms, the cosine of tract's and onnxruntime's outputs, and the input and tract's output for further checks.
 */
export async function timeTractAndOrt(
  { Model, PlainModel },
  ort,
  { compiledBytes, onnxBytes },
  { threads = 1, warmup, runs },
) {
  const started = performance.now();
  const model = new Model(compiledBytes);
  const tractLoadMs = performance.now() - started;
  const { size } = model.info().input;
  const input = inputTensor(size);
  const onOrt = await openOrt(ort, onnxBytes, threads);
  const plain = PlainModel && new PlainModel(compiledBytes);
  const runners = [async () => model.run_tensor(input), () => onOrt.run(input)];
  if (plain) runners.push(async () => plain.run_tensor(input));
  const [tract, onnxruntime, onPlain] = await timeInterleaved(runners, { warmup, runs });
  model.free();
  plain?.free();
  await onOrt.release();
  return {
    size,
    tract_ms: tract.ms,
    ort_ms: onnxruntime.ms,
    tract_load_ms: tractLoadMs,
    ort_load_ms: onOrt.loadMs,
    agreement: cosine(tract.output, onnxruntime.output),
    plain: onPlain && { ms: onPlain.ms, ort_ms: onnxruntime.ms },
    input,
    tractOutput: tract.output,
  };
}
