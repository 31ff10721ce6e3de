#!/usr/bin/env node
// Browser benchmark: median ms per embedding for tract-wasm (otlens, running each ONNX file
// compiled by `otlens compile`) and onnxruntime-web (wasm, 1 thread, the ONNX file itself), their runs
// interleaved, then the same on one thread per core,
// search timings on the demo catalog, and download sizes. With --scale DIR (a catalog written by
// `otlens demo scale`), the end-to-end query time on it: photo in, results painted. Chromium runs
// with WebGPU on: the WebGPU module is timed on each model too (--gpu-runs runs after one warm-up;
// 0 skips it). Here that adapter is SwiftShader, WebGPU on the CPU: its column measures the path's
// overhead, not a GPU. With --ranged DIR (the same, written with `--ranged`), what a ranged catalog costs:
// load to ready against the whole one, and per query of a distinct photo the lists fetched, their bytes and
// the time, from a server that answers Range requests. With --million DIR (a ranged catalog of a million
// products, `otlens demo scale --count 1000000 --ranged`), the same per-query figures and the search with a
// filter on, with no whole catalog beside it (it would be a 90 MB download).
//
//   node bench/run.mjs MODEL.onnx [MODEL.onnx…] [--runs 20] [--warmup 3] [--gpu-runs 2] [--scale DIR]
//                      [--ranged DIR] [--million DIR]
//
// Needs: www/pkg and target/release/otlens (./build.sh build), www/catalog (./build.sh demo),
// tests/e2e/node_modules (npm ci).
// One headless Chromium run; everything is served from 127.0.0.1 by a server started here.

import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { basename, dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

import { DOG_JPG, MANIFEST, WWW, compiled, launchBrowser } from "../tests/e2e/helpers.mjs";

const BENCH = dirname(fileURLToPath(import.meta.url));
const ORT_DIST = resolve(BENCH, "../tests/e2e/node_modules/onnxruntime-web/dist");
const SITE = "/site/";
const SCALE = "/scale/";
const RANGED = "/ranged/";
const MILLION = "/million/";
// Distinct query photos for the ranged catalog: thumbnails of the demo catalog's products.
const QUERIES = 12;
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".json": "application/json",
  ".wasm": "application/wasm",
};

function parseArgs(argv) {
  const options = { models: [], runs: 20, warmup: 3, gpuRuns: 2, scale: null, ranged: null, million: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--runs") options.runs = Number(argv[++i]);
    else if (argv[i] === "--scale") options.scale = resolve(argv[++i]);
    else if (argv[i] === "--ranged") options.ranged = resolve(argv[++i]);
    else if (argv[i] === "--million") options.million = resolve(argv[++i]);
    else if (argv[i] === "--warmup") options.warmup = Number(argv[++i]);
    else if (argv[i] === "--gpu-runs") options.gpuRuns = Number(argv[++i]);
    else options.models.push(resolve(argv[i]));
  }
  if (!options.models.length || !(options.runs > 0) || !(options.warmup >= 0) || !(options.gpuRuns >= 0)) {
    console.error(
      "usage: node bench/run.mjs MODEL.onnx [MODEL.onnx…] [--runs 20] [--warmup 3] [--gpu-runs 2] [--scale DIR] " +
        "[--ranged DIR] [--million DIR]",
    );
    process.exit(2);
  }
  return options;
}

function readRange(file, start, end) {
  const descriptor = openSync(file, "r");
  try {
    const bytes = Buffer.alloc(end - start);
    readSync(descriptor, bytes, 0, bytes.length, start);
    return bytes;
  } finally {
    closeSync(descriptor);
  }
}

/**
 * URL prefix -> folder, plus single files; nothing outside them is served. Answers single-range requests with
 * 206, as static hosts do, and counts the bytes sent per path in `server.sent`, the requests in `server.requests`.
 */
function serve(routes, files) {
  const sent = new Map();
  const requests = new Map();
  const server = createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url, "http://localhost").pathname);
    let file = files[path];
    for (const [prefix, folder] of Object.entries(routes)) {
      if (file || !path.startsWith(prefix)) continue;
      const candidate = resolve(folder, path.slice(prefix.length) || "index.html");
      if (candidate.startsWith(resolve(folder))) file = candidate;
    }
    if (!file || !existsSync(file) || !statSync(file).isFile()) {
      response.writeHead(404).end("not found");
      return;
    }
    const size = statSync(file).size;
    const range = request.headers.range?.match(/^bytes=(\d+)-(\d+)$/);
    const [start, end] = range ? [Number(range[1]), Math.min(Number(range[2]) + 1, size)] : [0, size];
    const partial = range && start < end;
    // Only the bytes asked for are read, as a static host's sendfile would.
    const body = partial ? readRange(file, start, end) : readFileSync(file);
    sent.set(path, (sent.get(path) ?? 0) + body.length);
    requests.set(path, (requests.get(path) ?? 0) + 1);
    response.writeHead(partial ? 206 : 200, {
      "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
      "Content-Length": body.length,
      ...(partial ? { "Content-Range": `bytes ${start}-${end - 1}/${size}` } : {}),
      // The demo site is served as a static host would: cacheable, so a second visit is a warm cache.
      ...(path.startsWith(SITE) ? { "Cache-Control": "max-age=3600" } : {}),
      // Cross-origin isolated, as `otlens serve` and the README ask of a shop: the widget runs on several threads.
      "Cross-Origin-Opener-Policy": "same-origin",
      "Cross-Origin-Embedder-Policy": "require-corp",
    });
    response.end(body);
  });
  server.sent = sent;
  server.requests = requests;
  return new Promise((done) => server.listen(0, "127.0.0.1", () => done(server)));
}

/**
 * Opens `url` in a new page and waits for the widget's otlens-ready: the page, when (ms) and its detail. With
 * `oneThread`, the page's widget gets threads="off" before it starts.
 */
async function openReady(context, url, timeout, { oneThread = false } = {}) {
  const page = await context.newPage();
  await page.addInitScript((oneThread) => {
    addEventListener("otlens-ready", (event) => (window.otlensReady ??= { at: performance.now(), ...event.detail }));
    // The element is parsed before the otlens.js module defines it, and observers run before modules do.
    if (oneThread) {
      new MutationObserver(() => document.querySelector("ot-lens")?.setAttribute("threads", "off")).observe(
        document,
        { childList: true, subtree: true },
      );
    }
  }, oneThread);
  await page.goto(url);
  await page.waitForFunction(() => window.otlensReady !== undefined, null, { timeout });
  return { page, ready: await page.evaluate(() => window.otlensReady) };
}

/** Page load to the widget's otlens-ready in ms: the first visit, then the median of `visits` warm ones. */
async function timeToReady(context, url, visits = 5) {
  const times = [];
  for (let visit = 0; visit <= visits; visit++) {
    const { page, ready } = await openReady(context, url, 120_000);
    times.push(ready.at);
    await page.close();
  }
  const warm = times.slice(1).sort((a, b) => a - b);
  return { cold: times[0], warm: warm[Math.floor(warm.length / 2)], visits };
}

/**
 * The demo page on a large catalog: ms from handing the widget a photo (`search(blob)`: decode,
 * preprocess, embed, search, render) to the frame after its results are in the page.
 */
async function endToEnd(context, url, { warmup, runs }, { oneThread = false } = {}) {
  const { page, ready } = await openReady(context, url, 300_000, { oneThread });
  const measuredRuns = await page.evaluate(
    async ({ warmup, runs }) => {
      const lens = document.querySelector("ot-lens");
      const photo = await (await fetch("/photo.jpg")).blob();
      const measured = [];
      let category;
      for (let run = 0; run < warmup + runs; run++) {
        const started = performance.now();
        const { results, timings } = await lens.search(photo);
        await new Promise((painted) => requestAnimationFrame(() => setTimeout(painted, 0)));
        const shown = document.querySelector("ot-lens").shadowRoot.querySelectorAll(".results li").length;
        measured.push({ ms: performance.now() - started, timings, results: results.length, shown });
        category = results[0]?.product.category;
      }
      // "Red dresses under 50,000 KRW": the first result's category, a price bound, in stock.
      lens.filter = { categories: [category], max_price: 50_000, in_stock: true };
      const filtered = [];
      for (let run = 0; run < warmup + runs; run++) {
        const { results, timings } = await lens.search(photo);
        filtered.push({ search: timings.search_ms, results: results.length });
      }
      return { measured: measured.slice(warmup), filtered: filtered.slice(warmup), category };
    },
    { warmup, runs },
  );
  const { measured: runsMeasured, filtered, category } = measuredRuns;
  await page.close();
  const sorted = (values) => [...values].sort((a, b) => a - b);
  const quantile = (values, q) => sorted(values)[Math.min(values.length - 1, Math.floor(q * values.length))];
  const ms = runsMeasured.map((run) => run.ms);
  const part = (name) => quantile(runsMeasured.map((run) => run.timings[name]), 0.5);
  return {
    products: ready.products,
    threads: ready.threads,
    runs: runsMeasured.length,
    shown: Math.min(...runsMeasured.map((run) => run.shown)),
    p50: quantile(ms, 0.5),
    p90: quantile(ms, 0.9),
    decode: part("decode_ms"),
    embed: part("embed_ms"),
    search: part("search_ms"),
    worker: part("total_ms"),
    filtered: {
      category,
      search: quantile(filtered.map((run) => run.search), 0.5),
      results: Math.min(...filtered.map((run) => run.results)),
    },
  };
}

/** Bytes the server has sent (or with `counts` "requests", requests answered) of files whose path contains `part`. */
const sentOf = (server, part, counts = "sent") =>
  [...server[counts]].reduce((sum, [path, bytes]) => sum + (path.includes(part) ? bytes : 0), 0);

/** The ranged catalogs the options name: where each is served, its folder, and its name in the size table. */
const rangedCatalogs = (options) =>
  [
    { prefix: RANGED, dir: options.ranged, option: "--ranged", name: "large" },
    { prefix: MILLION, dir: options.million, option: "--million", name: "million" },
  ].filter(({ dir }) => dir);

/**
 * A ranged catalog served under `prefix`, beside the same catalog whole (`wholeUrl`, or null for none): first-visit
 * load to ready of each, then on the ranged one, per query of a distinct photo (one page, so lists fetched before
 * stay loaded), the bytes and requests of the lists file (lists and pages of result details), the time fetching
 * each and the worker's total; then each photo again with a filter on ("red dresses under 50,000 KRW": its first
 * result's category, at most 50,000, in stock), whose lists and pages count apart.
 */
async function rangedQueries(context, server, baseUrl, prefix, wholeUrl) {
  let wholeReady = null;
  if (wholeUrl) {
    const whole = await openReady(context, wholeUrl, 300_000);
    wholeReady = whole.ready.at;
    await whole.page.close();
  }
  const ranged = await openReady(context, `${baseUrl}${prefix.slice(1)}`, 600_000);
  const headBytes = sentOf(server, `${prefix}catalog/index-`);
  const lists = `${prefix}catalog/lists-`;
  const loadBytes = sentOf(server, lists);
  // Setting a filter searches the open photo again: that search settles before the next is measured.
  const setFilter = (filter) =>
    ranged.page.evaluate(async (filter) => {
      const lens = document.querySelector("ot-lens");
      const settled = new Promise((done) => {
        lens.addEventListener("otlens-results", done, { once: true });
        setTimeout(done, 60_000);
      });
      lens.filter = filter;
      await settled;
    }, filter);
  const pass = async (categories) => {
    const queries = [];
    for (let query = 0; query < QUERIES; query++) {
      if (categories) await setFilter({ categories: [categories[query]], max_price: 50_000, in_stock: true });
      const [before, requestsBefore] = [sentOf(server, lists), sentOf(server, lists, "requests")];
      const answer = await ranged.page.evaluate(async (url) => {
        const photo = await (await fetch(url)).blob();
        const { results, timings } = await document.querySelector("ot-lens").search(photo);
        return { timings, results: results.length, category: results[0]?.product.category };
      }, `/query/${query}.jpg`);
      const requests = sentOf(server, lists, "requests") - requestsBefore;
      queries.push({ bytes: sentOf(server, lists) - before, requests, results: answer.results,
        category: answer.category, ...answer.timings });
    }
    return queries;
  };
  const queries = await pass(null);
  const filtered = await pass(queries.map((query) => query.category));
  await ranged.page.close();
  const { products } = ranged.ready;
  return { wholeReady, rangedReady: ranged.ready.at, products, headBytes, loadBytes, queries, filtered };
}

const megabytes = (bytes) => `${(bytes / 1e6).toFixed(2)} MB`;
const sizeOf = (path) => statSync(path).size;
const gzipSizeOf = (path) => gzipSync(readFileSync(path), { level: 9 }).length;

function printTable(header, rows) {
  const width = (column) => Math.max(header[column].length, ...rows.map((row) => String(row[column]).length));
  const widths = header.map((_, column) => width(column));
  const line = (cells) => `| ${cells.map((cell, column) => String(cell).padEnd(widths[column])).join(" | ")} |`;
  console.log(line(header));
  console.log(`|${widths.map((width) => "-".repeat(width + 2)).join("|")}|`);
  for (const row of rows) console.log(line(row));
}

/** A ranged catalog's figures from `rangedQueries`: load, then per query unfiltered, then medians with a filter on. */
function printRanged(title, run) {
  const { wholeReady, rangedReady, products, headBytes, loadBytes, queries, filtered } = run;
  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const versusWhole = wholeReady
    ? ` (whole: ${wholeReady.toFixed(0)} ms, ${(rangedReady / wholeReady).toFixed(2)} x)`
    : "";
  console.log(
    `\n${title} (${products.toLocaleString("en")} products): first-visit load to ready ${rangedReady.toFixed(0)} ms` +
      `${versusWhole}, head ${megabytes(headBytes)}, first list ${megabytes(loadBytes)}.\n` +
      `${queries.length} distinct photos, one page (lists fetched stay loaded):\n`,
  );
  printTable(
    ["query", "lists file bytes", "requests", "lists ms", "details ms", "search ms", "worker total ms"],
    queries.map((query, i) => [
      i + 1,
      megabytes(query.bytes),
      query.requests,
      query.lists_ms.toFixed(1),
      (query.details_ms ?? 0).toFixed(1),
      query.search_ms.toFixed(2),
      query.total_ms.toFixed(1),
    ]),
  );
  const medians = (runs) =>
    `${megabytes(median(runs.map((query) => query.bytes)))} of the lists file (lists and pages of details) in ` +
    `${median(runs.map((query) => query.requests))} requests, ` +
    `${median(runs.map((query) => query.lists_ms)).toFixed(1)} ms fetching lists, ` +
    `${median(runs.map((query) => query.details_ms ?? 0)).toFixed(1)} ms fetching details, ` +
    `search ${median(runs.map((query) => query.search_ms)).toFixed(2)} ms ` +
    `(slowest ${Math.max(...runs.map((query) => query.search_ms)).toFixed(2)} ms)`;
  console.log(`\nmedian per query: ${medians(queries)}.`);
  console.log(
    `The same photos filtered to their first result's category, at most 50,000, in stock: ${medians(filtered)}; ` +
      `fewest results ${Math.min(...filtered.map((query) => query.results))}.`,
  );
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const wasmPath = join(WWW, "pkg/otlens_bg.wasm");
  for (const path of [wasmPath, ORT_DIST, ...options.models]) {
    if (!existsSync(path)) throw new Error(`missing ${path}: see the requirements at the top of bench/run.mjs`);
  }
  const hasCatalog = existsSync(MANIFEST);
  const compiledModels = options.models.map(compiled);
  const files = {};
  options.models.forEach((path, i) => {
    files[`/models/${i}.onnx`] = path;
    files[`/models/${i}.nnef.tgz`] = compiledModels[i];
  });
  files["/photo.jpg"] = DOG_JPG;
  const scaleManifest = options.scale && join(options.scale, "manifest.json");
  if (scaleManifest && !existsSync(scaleManifest)) throw new Error(`--scale: no catalog at ${scaleManifest}`);
  const routes = {
    [SITE]: WWW,
    "/pkg/": join(WWW, "pkg"),
    "/pkg-threads/": join(WWW, "pkg-threads"),
    "/ort/": ORT_DIST,
    "/catalog/": join(WWW, "catalog"),
  };
  // The demo page again, on the large catalog (routes match in order: its catalog first).
  if (options.scale) Object.assign(routes, { [`${SCALE}catalog/`]: options.scale, [SCALE]: WWW });
  if (options.ranged && !options.scale) throw new Error("--ranged compares with the whole catalog: pass --scale too");
  const ranged = rangedCatalogs(options);
  for (const { prefix, dir, option } of ranged) {
    if (!existsSync(join(dir, "manifest.json"))) throw new Error(`${option}: no catalog at ${dir}`);
    Object.assign(routes, { [`${prefix}catalog/`]: dir, [prefix]: WWW });
  }
  if (ranged.length) {
    const thumbs = join(WWW, "catalog/thumbs");
    readdirSync(thumbs)
      .sort()
      .slice(0, QUERIES)
      .forEach((name, i) => (files[`/query/${i}.jpg`] = join(thumbs, name)));
  }
  const server = await serve({ ...routes, "/": BENCH }, files);
  const url = `http://127.0.0.1:${server.address().port}/`;
  const browser = await launchBrowser({ webgpu: true });
  let report;
  let ready = null;
  let scaled = null;
  let rangedRun = null;
  let millionRun = null;
  try {
    const page = await browser.context.newPage();
    page.on("console", (message) => {
      if (message.type() === "error") console.error(`[page] ${message.text()}`);
    });
    await page.goto(url);
    await page.waitForFunction(() => window.benchReady === true);
    const { models, warmup, runs } = options;
    console.error(`benchmarking ${models.length} models, ${warmup} warm-up + ${runs} runs each…`);
    report = await page.evaluate((config) => window.runBenchmark(config), {
      models: options.models.map((path, i) => ({
        name: basename(path, ".onnx"),
        onnxUrl: `/models/${i}.onnx`,
        compiledUrl: `/models/${i}.nnef.tgz`,
      })),
      photoUrl: hasCatalog ? "/photo.jpg" : null,
      warmup: options.warmup,
      runs: options.runs,
      gpuRuns: options.gpuRuns,
    });
    // Its models (up to 41 MB each, twice) would otherwise stay in memory for the page timings.
    await page.close();
    if (hasCatalog) ready = await timeToReady(browser.context, `${url}site/`);
    if (options.scale) {
      console.error("end-to-end queries on the large catalog…");
      scaled = await endToEnd(browser.context, `${url}${SCALE.slice(1)}`, options);
      if (scaled.threads > 1) {
        scaled.oneThread = await endToEnd(browser.context, `${url}${SCALE.slice(1)}`, options, { oneThread: true });
      }
    }
    if (options.ranged) {
      console.error("queries on the large catalog, ranged…");
      rangedRun = await rangedQueries(browser.context, server, url, RANGED, `${url}${SCALE.slice(1)}`);
    }
    if (options.million) {
      console.error("queries on the million-product catalog, ranged…");
      millionRun = await rangedQueries(browser.context, server, url, MILLION, null);
    }
  } finally {
    await browser.close();
    server.close();
  }

  console.log(`\n${report.userAgent}`);
  const build = report.relaxedSimd ? "relaxed SIMD" : "plain SIMD (no relaxed SIMD here)";
  console.log(`median ms per embedding, 1 thread, ${build}, ${options.runs} runs after ${options.warmup} warm-up\n`);
  // With the relaxed-SIMD build, the plain one (what browsers without relaxed SIMD run): on one thread in the
  // same runs; on threads in a pass of its own after, against onnxruntime again.
  const plainColumns = (r) =>
    r.plain
      ? [r.plain.ms.toFixed(1), (r.plain.ms / r.plain.ort_ms).toFixed(2), (r.tract_ms / r.plain.ms).toFixed(2)]
      : [];
  const plainHeader = report.relaxedSimd ? ["plain SIMD ms", "plain/ort", "relaxed/plain"] : [];
  printTable(
    [
      ...["model", "input", "tract-wasm ms", "ort-web ms", "tract/ort", "load tract/ort ms", "output cosine"],
      ...plainHeader,
    ],
    report.results.map((r) => [
      r.name,
      `${r.size}x${r.size}`,
      r.tract_ms.toFixed(1),
      r.ort_ms.toFixed(1),
      (r.tract_ms / r.ort_ms).toFixed(2),
      `${r.tract_load_ms.toFixed(0)} / ${r.ort_load_ms.toFixed(0)}`,
      r.agreement.toFixed(5),
      ...plainColumns(r),
    ]),
  );
  console.log(`\nmedian ms per embedding, ${report.threadsNote}, in a worker (the widget's engine on a cross-origin isolated page)\n`);
  if (report.threaded) {
    printTable(
      ["model", "tract-wasm ms", "ort-web ms", "tract/ort", "tract vs its 1 thread", "output cosine", ...plainHeader],
      report.threaded.map((r, i) => [
        r.name,
        r.tract_ms.toFixed(1),
        r.ort_ms.toFixed(1),
        (r.tract_ms / r.ort_ms).toFixed(2),
        (r.tract_ms / report.results[i].tract_ms).toFixed(2),
        r.agreement.toFixed(5),
        ...plainColumns(r),
      ]),
    );
  }
  const onGpu = report.results.filter((r) => r.webgpu);
  console.log(`\nWebGPU module, ${report.gpuNote}: median ms per embedding, ${options.gpuRuns} runs after 1 warm-up\n`);
  if (onGpu.length) {
    console.log(`adapter: ${onGpu[0].webgpu.adapter}\n`);
    printTable(
      ["model", "webgpu ms", "webgpu/tract", "load ms", "kernels", "dispatches per image", "cosine to tract"],
      onGpu.map((r) => [
        r.name,
        r.webgpu.ms.toFixed(1),
        (r.webgpu.ms / r.tract_ms).toFixed(2),
        r.webgpu.load_ms.toFixed(0),
        r.webgpu.kernels,
        r.webgpu.dispatches,
        r.webgpu.agreement.toFixed(6),
      ]),
    );
  }
  if (report.search) {
    const s = report.search;
    console.log(`\nLens.search on the demo catalog (${s.products} products, ${s.dims} dims), dog.jpg, median ms:\n`);
    printTable(
      ["decode+resize", "embed", "index search"],
      [[s.decode_ms.toFixed(1), s.embed_ms.toFixed(1), s.search_ms.toFixed(2)]],
    );
  } else {
    console.log("\n(no demo catalog in www/catalog: search timings skipped)");
  }

  if (ready) {
    console.log("\nDemo page load to otlens-ready (model and index downloaded, checked and loaded), ms:\n");
    printTable(
      ["first visit", `warm HTTP cache (median of ${ready.visits})`, "warm / 1,500 ms target"],
      [[ready.cold.toFixed(0), ready.warm.toFixed(0), (ready.warm / 1500).toFixed(2)]],
    );
  }

  if (scaled) {
    console.log(
      `\nEnd-to-end query on ${scaled.products.toLocaleString("en")} products (demo page, dog.jpg, photo in to ` +
        `${scaled.shown} results painted), ${scaled.runs} runs, ms:\n`,
    );
    const row = (run) => [
      `${run.threads}`,
      ...[run.p50, run.p90, run.p50 / 120, run.worker, run.decode, run.embed, run.search].map((value, column) =>
        value.toFixed(column === 2 ? 2 : 1),
      ),
    ];
    printTable(
      ["tract threads", "p50", "p90", "p50 / 120 ms target", "worker total", "decode+resize", "embed", "index search"],
      [row(scaled), ...(scaled.oneThread ? [row(scaled.oneThread)] : [])],
    );
    const { category, search, results } = scaled.filtered;
    console.log(
      `\nThe same search filtered to "${category}", at most 50,000, in stock: index search ${search.toFixed(1)} ms ` +
        `(${(search / scaled.search).toFixed(2)} x unfiltered), ${results} results.`,
    );
  }

  if (rangedRun) printRanged("Ranged large catalog", rangedRun);
  if (millionRun) printRanged("Ranged catalog of a million products", millionRun);

  console.log("\nDownload sizes:\n");
  const ortWasm = join(ORT_DIST, "ort-wasm-simd-threaded.wasm");
  const ifBuilt = (label, path) => (existsSync(path) ? [[label, path]] : []);
  const sized = [
    ["otlens wasm (tract)", wasmPath],
    ...ifBuilt("otlens wasm, relaxed SIMD", join(WWW, "pkg/otlens_relaxed_bg.wasm")),
    ...ifBuilt("otlens multi-threaded wasm (isolated pages)", join(WWW, "pkg-threads/otlens_bg.wasm")),
    ...ifBuilt("otlens multi-threaded wasm, relaxed SIMD", join(WWW, "pkg-threads/otlens_relaxed_bg.wasm")),
    ["otlens WebGPU module (with an adapter only)", join(WWW, "pkg/otlens_gpu_bg.wasm")],
    ["onnxruntime-web wasm", ortWasm],
    ...options.models.flatMap((path, i) => [
      [basename(path), path],
      [`${basename(path, ".onnx")}.nnef.tgz (compiled)`, compiledModels[i]],
    ]),
  ];
  if (hasCatalog) {
    const manifest = JSON.parse(readFileSync(MANIFEST, "utf8"));
    sized.push([`demo model (${manifest.model.file})`, join(WWW, "catalog", manifest.model.file)]);
    sized.push([`demo index (${manifest.products} products)`, join(WWW, "catalog", manifest.index.file)]);
  }
  if (scaleManifest) {
    const manifest = JSON.parse(readFileSync(scaleManifest, "utf8"));
    sized.push([`large index (${manifest.products} products)`, join(options.scale, manifest.index.file)]);
  }
  for (const { dir, name } of rangedCatalogs(options)) {
    const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
    sized.push([`${name} index, ranged: head`, join(dir, manifest.index.file)]);
    sized.push([`${name} index, ranged: lists file`, join(dir, manifest.lists.file)]);
  }
  printTable(
    ["file", "raw", "gzip -9"],
    sized.map(([name, path]) => [name, megabytes(sizeOf(path)), megabytes(gzipSizeOf(path))]),
  );
}

main().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
