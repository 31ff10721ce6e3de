// otlens search worker: downloads and checks the model and catalog index, then answers
// searches. Decoding and inference run here so the shop page never freezes.
//
// Messages in:  {type: "load", manifestUrl, withModel, gpu, threads} (without the model only "similar" works;
//                                                         gpu: "auto", "always" or "off"; threads: "auto" or
//                                                         "off", see otlens.js)
//               {type: "search", id, photo: Blob, region?, k, filter, colourWeight}
//               {type: "region", id, region, k, filter, colourWeight}  (another region of the last photo)
//               {type: "refine", id, k, filter, colourWeight}  (the last photo again, e.g. with a new filter)
//               {type: "similar", id, product, k, filter, colourWeight} (products like the one with this id)
//               region: [x, y, width, height] as fractions of the upright photo, or absent for all of it;
//               colourWeight: 0 (match by shape) to 1 (match by colour)
//               {type: "embed", id, photo: Blob}
// Messages out: {type: "progress", step, steps, label, loaded, total}
//               {type: "ready", manifest, model, products, facets, colours, ranged, backend: "tract", threads,
//                                         threadsReason?, relaxedSimd, engineFiles}
//                                         (colours: the catalog can be matched by colour; ranged: its
//                                          lists download as searches reach them, with Range requests;
//                                          threads: how many threads tract runs on, and if one, why;
//                                          relaxedSimd: the engine is the relaxed-SIMD build;
//                                          engineFiles: the URLs of the engine module's files, for the
//                                          service worker to keep)
//               {type: "backend", backend, adapter?, dispatches?, weights?, threads?, reason?}
//                                         (after ready: the WebGPU path took over, or why inference stays on tract)
//               {type: "results", id, results, colour?, timings}  (colour: {name?, rgb} of a photo;
//                                         timings.lists_ms, details_ms: time spent fetching a ranged
//                                         catalog's lists, and its results' titles, links and thumbnails)
//               {type: "embedding", id, embedding}
//               {type: "error", id?, message, fatal}   (fatal: the widget must reload the worker)

const SUPPORTED_FORMAT = 1;
// The engine's module (wasm-bindgen's exports): pkg/, or pkg-threads/ when it runs on several threads.
let engine = null;
// How many threads tract runs on, and if only one while more were asked for, why.
let threads = { count: 1, reason: undefined };
// Which build of the engine runs, the URL of its wasm file and the URLs of all its files.
let engineBuild = { relaxedSimd: false, wasm: undefined, files: [] };
// f32x4.relaxed_madd on three splats: a module that validates only in browsers with relaxed SIMD (Chrome
// 114 and later). They get the engine built with it, whose float matrix products use fused multiply-adds
// (an embedding in 0.8-0.9 of the time). Others, and pages where that file is missing, get the plain build.
const RELAXED_SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 19, 1, 17, 0, 65, 0, 253, 15, 65, 0, 253, 15,
  65, 0, 253, 15, 253, 133, 2, 11,
]);
const ENGINE_FILES = WebAssembly.validate(RELAXED_SIMD_PROBE)
  ? ["otlens_relaxed_bg.wasm", "otlens_bg.wasm"]
  : ["otlens_bg.wasm"];
// More threads than this gain little on a 224x224 photo and each costs a worker's memory.
const MAX_THREADS = 4;
let lens = null;
// The WebGPU embedder once it has passed its self-check; null while inference runs on tract.
let gpu = null;
// The model file, kept from loading until the GPU path has lowered it.
let modelBytes = null;
// The lists file of a ranged catalog, whose lists are fetched as searches need them.
let listsUrl = null;
// The GPU path must give tract's embedding; below this cosine it is not used.
const GPU_AGREEMENT = 0.999;

const megabytes = (bytes) => (bytes / 1e6).toFixed(1);

function post(message, transfer = []) {
  self.postMessage(message, transfer);
}

// A download that receives nothing for this long is given up, so a dead connection ends in a
// message and a retry button rather than a progress bar that never moves.
const STALL_MS = 20_000;

/**
 * Fetches a URL as bytes, reporting progress when given a `step`. `expectedBytes` (from the manifest) gives the
 * total when the Content-Length header is missing or counts compressed bytes. With `range` ([start, end)) it asks
 * for those bytes only; `partial` says whether the host sent them (206) or, ignoring Range, the whole file.
 */
async function download(url, label, { step, steps, expectedBytes, range } = {}) {
  const stalled = new AbortController();
  let watchdog = setTimeout(() => stalled.abort(), STALL_MS);
  const failure = (loaded, total, error) => {
    const received = loaded ? ` after ${megabytes(loaded)}${total ? ` of ${megabytes(total)}` : ""} MB` : "";
    const cause = stalled.signal.aborted ? `nothing arrived for ${STALL_MS / 1000} s` : error.message;
    return new Error(`the ${label} download from ${url} stopped${received} (${cause}); check the connection`);
  };
  let response;
  try {
    const headers = range ? { Range: `bytes=${range[0]}-${range[1] - 1}` } : {};
    response = await fetch(url, { signal: stalled.signal, headers });
  } catch (error) {
    clearTimeout(watchdog);
    throw failure(0, 0, error);
  }
  if (!response.ok) {
    clearTimeout(watchdog);
    throw new Error(`could not download ${label} (${url}): HTTP ${response.status} ${response.statusText}`);
  }
  const partial = response.status === 206;
  const lengthHeader = Number(response.headers.get("Content-Length"));
  const compressed = response.headers.has("Content-Encoding");
  const total = !compressed && lengthHeader > 0 ? lengthHeader : (!partial && expectedBytes) || 0;
  const chunks = [];
  let loaded = 0;
  let lastReport = 0;
  const report = () => step && post({ type: "progress", step, steps, label, loaded, total: total || loaded });
  report();
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      clearTimeout(watchdog);
      watchdog = setTimeout(() => stalled.abort(), STALL_MS);
      chunks.push(value);
      loaded += value.byteLength;
      // A progress message per network chunk would flood the page; ~20 per second is smooth.
      const now = performance.now();
      if (now - lastReport > 50) {
        lastReport = now;
        report();
      }
    }
  } catch (error) {
    throw failure(loaded, total, error);
  } finally {
    clearTimeout(watchdog);
  }
  report();
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return { bytes, partial };
}

async function sha256(bytes) {
  // crypto.subtle exists only in secure contexts (https, localhost); the wasm hash covers plain http.
  if (self.crypto?.subtle) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return engine.sha256Hex(bytes);
}

/**
 * Downloads (with progress) and starts the engine module in `folder` ("pkg" or "pkg-threads"): its relaxed-SIMD
 * build when the browser has relaxed SIMD, or the plain one when that fails or the browser has not.
 */
async function startEngine(folder, progress) {
  const module = await import(`./${folder}/otlens.js`).catch((error) => {
    throw new Error(`could not load ${folder}/otlens.js (${error.message}); is ${folder}/ deployed next to otlens.js?`);
  });
  for (const [i, file] of ENGINE_FILES.entries()) {
    const url = new URL(`./${folder}/${file}`, import.meta.url);
    try {
      const { bytes: wasm } = await download(url, "search engine", progress);
      await module.default({ module_or_path: wasm });
      engineBuild = { relaxedSimd: file !== "otlens_bg.wasm", wasm: url.href, files: [] };
      return module;
    } catch (error) {
      // The browser's own message is long and names 'unsafe-eval', which a shop should not allow.
      if (/Content Security Policy/i.test(error.message)) {
        throw new Error(
          "the page's Content-Security-Policy does not let WebAssembly run; add 'wasm-unsafe-eval' to script-src",
        );
      }
      if (i === ENGINE_FILES.length - 1) throw error;
      console.warn(`otlens: ${folder}/${file} did not start (${error.message || error}); using the plain build`);
    }
  }
}

/**
 * The engine on as many threads as the machine has cores (at most MAX_THREADS) when `mode` is "auto" and the
 * page is cross-origin isolated (which shared wasm memory needs), else on one. A multi-threaded module that
 * fails to load or start leaves the single-threaded one, with the reason in `threads.reason`.
 */
async function startEngineOnThreads(mode, progress) {
  const cores = Math.min(self.navigator?.hardwareConcurrency || 1, MAX_THREADS);
  let reason;
  if (mode === "off") reason = "threads are off";
  else if (mode === "no-model") reason = "no model runs here, only similar items";
  else if (!self.crossOriginIsolated) {
    reason = "the page is not cross-origin isolated (send the COOP and COEP headers: see the README)";
  } else if (cores < 2) reason = "this device reports one core";
  else {
    try {
      const module = await startEngine("pkg-threads", progress);
      await module.initThreadPool(cores);
      module.useThreadPool();
      threads = { count: cores, reason: undefined };
      engineBuild.files = engineFilesIn("pkg-threads");
      return module;
    } catch (error) {
      reason = `the multi-threaded engine did not start: ${error.message || error}`;
    }
  }
  threads = { count: 1, reason };
  const module = await startEngine("pkg", progress);
  engineBuild.files = engineFilesIn("pkg");
  return module;
}

/**
 * The URLs of the engine's files in `folder`: the wasm file that runs, and the scripts this worker loaded from
 * there. wasm-bindgen names the thread pool's helper script after a hash of its crate, so they come from the
 * browser's record of the fetches rather than from fixed names; its wasm files are left out of that record,
 * as one may be a relaxed-SIMD build that failed to start.
 */
function engineFilesIn(folder) {
  const prefix = new URL(`./${folder}/`, import.meta.url).href;
  // Only for offline use: a browser without resource timing in workers still runs the engine.
  const urls = (self.performance?.getEntriesByType?.("resource") ?? []).map((entry) => entry.name);
  const scripts = urls.filter((url) => url.startsWith(prefix) && !url.endsWith(".wasm"));
  return [...new Set([engineBuild.wasm, ...scripts])];
}

async function verify(bytes, entry, label) {
  const actual = await sha256(bytes);
  if (entry.sha256 && actual !== entry.sha256.toLowerCase()) {
    throw new Error(
      `the ${label} file is not the one the catalog manifest lists (sha256 ${actual.slice(0, 12)}…, ` +
        `expected ${entry.sha256.slice(0, 12)}…); the shop must deploy the catalog files together`,
    );
  }
}

async function load(manifestUrl, withModel, threadsMode) {
  const steps = withModel ? 3 : 2;
  engine = await startEngineOnThreads(withModel ? threadsMode : "no-model", { step: 1, steps });
  const { Lens } = engine;

  let manifest;
  try {
    const response = await fetch(manifestUrl, { signal: AbortSignal.timeout(STALL_MS) });
    if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`);
    const text = await response.text();
    try {
      manifest = JSON.parse(text);
    } catch {
      // Static hosts often answer a missing file with the site's HTML page.
      const type = response.headers.get("Content-Type")?.split(";")[0] || "a file";
      throw new Error(`the server sent ${type}, not JSON`);
    }
  } catch (error) {
    throw new Error(`could not read the catalog manifest (${manifestUrl}): ${error.message}`);
  }
  if (typeof manifest !== "object" || manifest === null) {
    throw new Error(`${manifestUrl} is not a catalog manifest`);
  }
  if (manifest.format !== SUPPORTED_FORMAT) {
    throw new Error(
      `the catalog manifest has format ${manifest.format}, this widget reads format ${SUPPORTED_FORMAT}; ` +
        "rebuild the catalog with the matching otlens version",
    );
  }
  if (!manifest.model?.file || !manifest.index?.file) {
    throw new Error("the catalog manifest names no model or index file");
  }
  // The catalog comes first: it is smaller, and "more like this" needs nothing else.
  const indexUrl = new URL(manifest.index.file, manifestUrl);
  const { bytes: index } = await download(indexUrl, "catalog", { step: 2, steps, expectedBytes: manifest.index.bytes });
  await verify(index, manifest.index, "index");
  lens = new Lens(index);
  listsUrl = null;
  if (lens.is_ranged()) {
    if (!manifest.lists?.file) {
      throw new Error(
        "the catalog index is split into lists, but the catalog manifest names no lists file; " +
          "deploy the catalog folder as otlens build-index wrote it",
      );
    }
    listsUrl = new URL(manifest.lists.file, manifestUrl);
    // The first list also tells whether the host answers Range requests; if not, the whole file came.
    const { bytes, partial } = await download(listsUrl, "catalog lists", {
      step: 2,
      steps,
      expectedBytes: manifest.lists.bytes,
      range: lens.block_range(0),
    });
    loadListBytes(0, bytes, partial);
  }
  if (withModel) {
    const modelUrl = new URL(manifest.model.file, manifestUrl);
    const { bytes: model } = await download(modelUrl, "model", { step: 3, steps, expectedBytes: manifest.model.bytes });
    await verify(model, manifest.model, "model");
    post({ type: "progress", step: steps, steps, label: "preparing", loaded: 1, total: 1 });
    lens.load_model(model);
    modelBytes = model;
  }
  post({
    type: "ready",
    manifest,
    model: withModel ? lens.info() : null,
    products: lens.len(),
    facets: lens.facets(),
    colours: lens.has_colours(),
    ranged: lens.is_ranged(),
    backend: "tract",
    threads: threads.count,
    threadsReason: threads.reason,
    relaxedSimd: engineBuild.relaxedSimd,
    engineFiles: engineBuild.files,
  });
}

/**
 * Loads a list's block, or every list when a host that ignores Range requests sent the whole lists file. The
 * lens checks each block against its sha256 in the index, which the manifest vouches for.
 */
function loadListBytes(list, bytes, partial) {
  if (partial) lens.load_block(list, bytes);
  else lens.load_lists_file(bytes);
}

/**
 * Fetches parts of the lists file (list blocks or pages of details: `rangeOf(part)` gives [start, end)) all at
 * once, one Range request per run of parts that follow each other in the file, and gives each part's bytes to
 * `load(part, bytes)`; the whole file, if the host ignores Range, to `lens.load_lists_file`. Returns the
 * milliseconds it took.
 */
async function fetchParts(parts, label, rangeOf, load) {
  if (!parts.length) return 0;
  const started = performance.now();
  const runs = [];
  for (const part of [...parts].sort((a, b) => a - b)) {
    const range = rangeOf(part);
    const last = runs.at(-1);
    if (last && last.end === range[0]) {
      last.parts.push([part, range]);
      last.end = range[1];
    } else {
      runs.push({ start: range[0], end: range[1], parts: [[part, range]] });
    }
  }
  await Promise.all(
    runs.map(async (run) => {
      const { bytes, partial } = await download(listsUrl, label, { range: [run.start, run.end] });
      if (!partial) return lens.load_lists_file(bytes);
      for (const [part, [start, end]] of run.parts) load(part, bytes.subarray(start - run.start, end - run.start));
    }),
  );
  return performance.now() - started;
}

/**
 * Rounds of blocks a search may need: a product's own list and refinement block, the lists, their candidates'
 * (as `otlens::index::MOST_BLOCK_ROUNDS`).
 */
const MOST_BLOCK_ROUNDS = 4;

/**
 * Fetches the blocks of a ranged catalog that a search needs, round after round while `next()` (block numbers from
 * the lens) names more: the lists it scans, then the refinement blocks of its best candidates. Returns the
 * milliseconds it took.
 */
async function loadBlocks(next) {
  let ms = 0;
  for (let round = 0; ; round++) {
    const needed = next();
    if (!needed.length) return ms;
    // Each round loads what it names, so a next round always names other blocks; more would be a bug, not a wait.
    if (round === MOST_BLOCK_ROUNDS) throw new Error("the catalog keeps asking for more of its lists file");
    ms += await fetchParts(needed, "catalog lists", (block) => lens.block_range(block), (block, bytes) =>
      lens.load_block(block, bytes),
    );
  }
}

function cosine(a, b) {
  let dot = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return dot / Math.sqrt(aa * bb);
}

/** Milliseconds `run` takes, and what it returned. */
async function timed(run) {
  const started = performance.now();
  const value = await run();
  return [performance.now() - started, value];
}

/**
 * Moves inference to the GPU when the browser has a WebGPU adapter (`mode` "auto" or "always"): loads the
 * GPU module (only then), lowers the model for it, and checks it gives tract's embedding. In "auto" mode it
 * must also be faster than tract, so software adapters (SwiftShader) never take over. Searches use tract
 * meanwhile, and for good if any of this fails; the reason goes to the page in a "backend" message.
 */
async function startGpu(mode) {
  const stayOnTract = (reason) => {
    modelBytes = null;
    post({ type: "backend", backend: "tract", threads: threads.count, reason });
  };
  if (!self.navigator?.gpu) return stayOnTract("this browser has no WebGPU");
  let embedder;
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return stayOnTract("WebGPU gave no adapter");
    if (mode === "auto" && (adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter)) {
      return stayOnTract("the WebGPU adapter is a software fallback, slower than the CPU path");
    }
    const module = await import("./pkg/otlens_gpu.js");
    await module.default({ module_or_path: new URL("./pkg/otlens_gpu_bg.wasm", import.meta.url) });
    const plan = engine.gpuPlan(modelBytes);
    modelBytes = null;
    embedder = await module.GpuEmbedder.create(plan);
    const size = lens.info().input.size;
    const probe = Float32Array.from({ length: 3 * size * size }, (_, i) => ((i % 251) - 125) / 125);
    // The first run also compiles the pipelines; the second is what a search will cost.
    const onGpu = await embedder.run(probe);
    const [tractMs, onTract] = await timed(() => lens.run_tensor(probe));
    const agreement = cosine(onGpu, onTract);
    if (!(agreement >= GPU_AGREEMENT)) {
      throw new Error(`its embedding differs from tract's (cosine ${agreement.toFixed(4)})`);
    }
    if (mode === "auto") {
      const [gpuMs] = await timed(() => embedder.run(probe));
      if (gpuMs >= tractMs) {
        embedder.free();
        return stayOnTract(`WebGPU took ${Math.round(gpuMs)} ms per photo, the CPU path ${Math.round(tractMs)} ms`);
      }
    }
  } catch (error) {
    embedder?.free();
    return stayOnTract(`the WebGPU path failed: ${error.message || error}`);
  }
  gpu = embedder;
  post({
    type: "backend",
    backend: "webgpu",
    adapter: gpu.adapter(),
    dispatches: gpu.dispatchCount(),
    weights: gpu.weights(),
  });
}

/**
 * Searches a region of the open photo (all of it without one): preparing it and the index on the CPU, the
 * model on the GPU when it is ready. `openMs`: the time the photo took to decode, if it was just opened. A
 * ranged catalog first fetches the lists that the photo's embedding reaches (and its candidates' refinements).
 */
async function search(region, k, filter, colourWeight, openMs) {
  region = region ? Float32Array.from(region) : undefined;
  if (!gpu && !listsUrl) {
    const response = lens.search_region(region, k, filter, colourWeight);
    response.timings.decode_ms += openMs;
    response.timings.backend = "tract";
    return response;
  }
  const started = performance.now();
  const tensor = lens.prepare(region);
  const prepared = performance.now();
  let embedding;
  let backend = gpu ? "webgpu" : "tract";
  try {
    embedding = gpu ? await gpu.run(tensor) : lens.run_tensor(tensor);
  } catch (error) {
    if (!gpu) throw error;
    // The GPU failed mid-session (device lost, out of memory): this search (on the photo already
    // decoded) and the next ones use tract.
    gpu.free();
    gpu = null;
    post({ type: "backend", backend: "tract", threads: threads.count, reason: `the WebGPU path failed: ${error.message || error}` });
    embedding = lens.run_tensor(tensor);
    backend = "tract";
  }
  const embedded = performance.now();
  const listsMs = await loadBlocks(() => lens.blocks_for_embedding(embedding, k, filter, colourWeight));
  const decodeMs = openMs + prepared - started;
  const response = lens.search_embedding(embedding, k, filter, decodeMs, embedded - prepared, colourWeight);
  response.timings.backend = backend;
  return withListsMs(response, listsMs);
}

async function photoBytes(photo) {
  engine.checkPhotoSize(photo.size);
  return new Uint8Array(await photo.arrayBuffer());
}

function withListsMs(response, listsMs) {
  response.timings.lists_ms = listsMs;
  return response;
}

/**
 * The response with its products' titles, links and thumbnails: a ranged catalog's head leaves them to pages of
 * the lists file, of which only the pages of the products shown are fetched.
 */
async function withDetails(response) {
  const needed = lens.pages_for_answer();
  if (!needed.length) return response;
  const detailsMs = await fetchParts(
    needed,
    "product details",
    (page) => lens.page_range(page),
    (page, bytes) => lens.load_page(page, bytes),
  );
  const full = lens.answer_again();
  full.timings = { ...response.timings, details_ms: detailsMs };
  return full;
}

/** Runs one search request and posts its results with the time it took in the worker. */
async function answer(id, search) {
  const started = performance.now();
  let response = await search();
  if (listsUrl) response = await withDetails(response);
  response.timings.total_ms = performance.now() - started;
  post({ type: "results", id, ...response });
}

async function handle(message) {
  if (message.type === "load") {
    await load(message.manifestUrl, message.withModel !== false, message.threads);
    // In the background: the widget is ready on tract already. Without it, the model bytes go now.
    if (modelBytes && message.gpu !== "off") startGpu(message.gpu);
    else modelBytes = null;
    return;
  }
  if (!lens) throw new Error("the search engine is not loaded yet");
  const { id, k, region, colourWeight } = message;
  const filter = message.filter && JSON.stringify(message.filter);
  switch (message.type) {
    case "search":
      return answer(id, async () => {
        const bytes = await photoBytes(message.photo);
        const started = performance.now();
        lens.open_photo(bytes);
        return search(region, k, filter, colourWeight, performance.now() - started);
      });
    case "region":
      return answer(id, async () => search(region, k, filter, colourWeight, 0));
    case "refine":
      return answer(id, async () => {
        const listsMs = await loadBlocks(() => lens.blocks_for_refine(k, filter, colourWeight));
        return withListsMs(lens.refine(k, filter, colourWeight), listsMs);
      });
    case "similar":
      return answer(id, async () => {
        // The product's own list (and refinement block) holds the vector that picks the others.
        const listsMs = await loadBlocks(() => lens.blocks_for_similar(message.product, k, filter, colourWeight));
        return withListsMs(lens.similar(message.product, k, filter, colourWeight), listsMs);
      });
    case "embed": {
      const embedding = lens.embed(await photoBytes(message.photo));
      return post({ type: "embedding", id, embedding }, [embedding.buffer]);
    }
    default:
      throw new Error(`unknown request ${message.type}`);
  }
}

// One request at a time: a search waits for the previous one instead of interleaving across awaits.
let queue = Promise.resolve();
self.onmessage = ({ data }) => {
  queue = queue.then(() =>
    handle(data).catch((error) => {
      // A RuntimeError (e.g. a Rust panic) leaves the wasm instance unusable; anything else
      // is a refused input and the worker carries on.
      const fatal = data.type === "load" || error instanceof WebAssembly.RuntimeError;
      post({ type: "error", id: data.id, message: error.message || String(error), fatal });
    }),
  );
};
