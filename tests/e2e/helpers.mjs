// Shared by the browser tests and the benchmark: the repo's paths, the companion server,
// headless Chromium, and the bad photos the widget must refuse.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";
import { crc32 } from "node:zlib";

import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const WWW = join(ROOT, "www");
export const OTLENS = join(ROOT, "target/release/otlens");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const DOG_JPG = "/usr/share/darknet/data/dog.jpg";
export const MANIFEST = join(WWW, "catalog/manifest.json");
// Generous, for a cold start on a loaded 2-core CI machine: a model load, and one search.
export const LOAD_TIMEOUT = 120_000;
export const SEARCH_TIMEOUT = 60_000;

// Where `otlens demo fmnist` keeps the catalog's product photos (its --work default).
export const DEMO_WORK = process.env.OTLENS_DEMO_WORK ?? join(ROOT, ".cache/demo-fmnist");

/** `describe`'s skip option: false when what the tests need is built, else what to build first and how. */
export function skipUnlessBuilt({ demoPhotos = false } = {}) {
  const needs = [
    [OTLENS, "cargo build --release"],
    [join(WWW, "pkg/otlens_bg.wasm"), "./build.sh build"],
    [MANIFEST, "./build.sh demo"],
    [CHROMIUM, "apt-get install chromium"],
  ];
  if (demoPhotos) needs.push([join(DEMO_WORK, "catalog.csv"), "./build.sh demo"]);
  const missing = needs.filter(([path]) => !existsSync(path)).map(([path, command]) => `${path} (${command})`);
  return missing.length ? `build first: ${missing.join(", ")}` : false;
}

/** Product `row` of the demo catalog and the path of its photo, as a shopper would upload it. */
export function catalogProduct(row) {
  // The demo writes a plain CSV (no quoted fields), one product per line after the header.
  const [header, ...lines] = readFileSync(join(DEMO_WORK, "catalog.csv"), "utf8").trim().split("\n");
  const names = header.split(",");
  const product = Object.fromEntries(lines[row].split(",").map((value, i) => [names[i], value]));
  return { product, photo: join(DEMO_WORK, product.image) };
}

/**
 * A copy of www/ in a new temporary folder (its name starting with `prefix`) holding the demo's catalog.csv with
 * absolute photo paths, so that `buildDemoCatalog` can build other catalogs of the demo's products into it.
 */
export function demoSite(prefix) {
  const site = mkdtempSync(join(tmpdir(), prefix));
  cpSync(WWW, site, { recursive: true });
  const [header, ...rows] = readFileSync(join(DEMO_WORK, "catalog.csv"), "utf8").trim().split("\n");
  const imageColumn = header.split(",").indexOf("image");
  const absolute = rows.map((row) => {
    const fields = row.split(",");
    fields[imageColumn] = join(DEMO_WORK, fields[imageColumn]);
    return fields.join(",");
  });
  writeFileSync(join(site, "catalog.csv"), [header, ...absolute].join("\n") + "\n");
  return site;
}

/**
 * `otlens build-index` of a `demoSite`'s catalog into its folder `folder`, with `flags`; its photos are not
 * embedded again (the demo's embedding cache). Returns the catalog's manifest.
 */
export function buildDemoCatalog(site, folder, flags) {
  const model = join(ROOT, "models/efficientnet-lite0-int8-weights.onnx");
  const args = ["--catalog", join(site, "catalog.csv"), "--out", join(site, folder), ...flags];
  execFileSync(OTLENS, ["build-index", "--model", model, ...args, "--cache", join(DEMO_WORK, "embeddings")], {
    stdio: "pipe",
  });
  return JSON.parse(readFileSync(join(site, folder, "manifest.json"), "utf8"));
}

/** A page of `origin` holding only the widget, showing 12 results of the catalog in `folder` (see openDemo). */
export function openCatalogPage(context, origin, folder) {
  const pageUrl = new URL(`${folder}.html`, origin).href;
  return openDemo(context, pageUrl, {
    prepare: (page) =>
      page.route(pageUrl, (route) =>
        route.fulfill({
          contentType: "text/html",
          body: `<!doctype html><html lang="en"><title>${folder}</title>
            <script type="module" src="otlens.js"></script>
            <ot-lens src="${folder}/manifest.json" max-results="12"></ot-lens>`,
        }),
      ),
  });
}

export function readManifest() {
  return JSON.parse(readFileSync(MANIFEST, "utf8"));
}

/**
 * Starts `otlens serve --root <root> --port 0` and resolves once it prints its URL. Its pages are cross-origin
 * isolated unless `isolated` is false (`--no-isolation`).
 */
export function startServer(root = WWW, { isolated = true } = {}) {
  const args = ["serve", "--root", root, "--port", "0", ...(isolated ? [] : ["--no-isolation"])];
  const server = spawn(OTLENS, args, { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  return new Promise((resolvePromise, reject) => {
    const timeout = setTimeout(() => fail(new Error(`otlens serve printed no URL in 10 s:\n${output}`)), 10_000);
    const fail = (error) => {
      clearTimeout(timeout);
      server.kill();
      reject(error);
    };
    const onData = (chunk) => {
      output += chunk;
      const match = output.match(/serving (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (match) {
        clearTimeout(timeout);
        resolvePromise({
          url: match[1],
          stop: () =>
            new Promise((done) => {
              if (server.exitCode !== null) return done();
              server.once("exit", done);
              server.kill();
            }),
        });
      }
    };
    server.stdout.on("data", onData);
    server.stderr.on("data", onData);
    server.once("error", fail);
    server.once("exit", (code) => fail(new Error(`otlens serve exited with ${code}:\n${output}`)));
  });
}

/**
 * An HTTP proxy in front of `upstream` that adds `headers` to every response and breaks the downloads
 * whose path starts with a prefix given to `fail(prefix, fault)`: "404", "cut" (half the bytes, then the
 * connection drops) or "stall" (half the bytes, then silence). Nothing is cached, so each load goes
 * through it.
 */
export function startProxy(upstream, { headers = {} } = {}) {
  const faults = new Map();
  const server = createServer(async (request, response) => {
    const fault = [...faults].find(([prefix]) => request.url.startsWith(prefix))?.[1];
    if (fault === "404") {
      response.writeHead(404, { "Content-Type": "text/plain" });
      return response.end("not found");
    }
    const original = await fetch(new URL(request.url, upstream));
    const body = Buffer.from(await original.arrayBuffer());
    response.writeHead(original.status, {
      "Content-Type": original.headers.get("Content-Type") ?? "application/octet-stream",
      "Content-Length": body.length,
      "Cache-Control": "no-store",
      ...headers,
    });
    if (!fault) return response.end(body);
    response.write(body.subarray(0, body.length >> 1), () => {
      // Chromium may drop bytes still on their way to the page when the connection fails, so the
      // cut waits until the half has surely been read.
      if (fault === "cut") setTimeout(() => response.destroy(), 1_000);
    });
  });
  return new Promise((resolvePromise) => {
    server.listen(0, "127.0.0.1", () => {
      resolvePromise({
        url: `http://127.0.0.1:${server.address().port}/`,
        fail: (prefix, fault) => faults.set(prefix, fault),
        heal: () => faults.clear(),
        stop: () =>
          new Promise((done) => {
            server.closeAllConnections();
            server.close(done);
          }),
      });
    });
  });
}

/** What a page reported that a fault test did not cause on purpose (the browser logs failed loads). */
export function unexpected(problems) {
  return problems.filter((problem) => !/Failed to load resource/.test(problem));
}

/**
 * Headless Chromium with a fresh profile; `close()` also deletes the profile. Service workers are blocked
 * unless asked for: one test's saved catalog would otherwise answer the next test's downloads.
 */
export async function launchBrowser({
  viewport = { width: 1280, height: 900 },
  serviceWorkers = "block",
  webgpu = false,
} = {}) {
  const profile = mkdtempSync(join(tmpdir(), "otlens-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    serviceWorkers,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // Headless Chromium has a WebGPU adapter (SwiftShader, on the CPU) only when asked.
      ...(webgpu ? ["--enable-unsafe-webgpu"] : []),
    ],
  });
  return {
    context,
    close: async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** A page that collects console errors and uncaught exceptions, for "no crash" assertions. */
export async function openPage(context, url) {
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("crash", () => problems.push("page crashed"));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  await page.goto(url);
  return { page, problems };
}

/**
 * The page at `url`, recording every otlens-* event of its widgets in `window.otlensEvents` (again after
 * each reload); `prepare(page)` runs on the blank page before it navigates.
 */
export async function openDemo(context, url, { prepare = async () => {} } = {}) {
  const { page, problems } = await openPage(context, "about:blank");
  await prepare(page);
  await page.addInitScript(() => {
    window.otlensEvents = [];
    for (const type of ["otlens-ready", "otlens-results", "otlens-error", "otlens-offline", "otlens-backend"]) {
      addEventListener(type, ({ detail }) => window.otlensEvents.push({ type, ...detail }));
    }
  });
  await page.goto(url);
  return { page, problems, status: page.getByRole("status") };
}

/** The widget events of `type` a page opened by `openDemo` has recorded so far. */
export function widgetEvents(page, type) {
  return page.evaluate((wanted) => window.otlensEvents.filter((event) => event.type === wanted), type);
}

/** Waits until the page has recorded `count` widget events of `type`, and resolves with them. */
export async function waitForWidgetEvents(page, type, count = 1, timeout = LOAD_TIMEOUT) {
  await page.waitForFunction(
    ([wanted, n]) => window.otlensEvents.filter((event) => event.type === wanted).length >= n,
    [type, count],
    { timeout },
  );
  return widgetEvents(page, type);
}

/** Gives the widget a photo file and resolves with the otlens-results event of that search. */
export async function searchWith(page, file) {
  const before = (await widgetEvents(page, "otlens-results")).length;
  await page.locator("ot-lens #file").setInputFiles(file);
  return (await waitForWidgetEvents(page, "otlens-results", before + 1, SEARCH_TIMEOUT)).at(-1);
}

/** The demo page after one search for catalog product `row`, with that search's otlens-results event. */
async function searchedDemo(context, url, row) {
  const demo = await openDemo(context, url);
  await waitForWidgetEvents(demo.page, "otlens-ready");
  const searched = await searchWith(demo.page, catalogProduct(row).photo);
  return { ...demo, searched, widget: demo.page.locator("ot-lens") };
}

/**
 * The demo served by `otlens serve` and a headless Chromium, started before the tests of the `describe`
 * this is called in and stopped after them. `demo.searched(row)` is `searchedDemo` in that browser.
 */
export function servedDemo() {
  const demo = { searched: (row) => searchedDemo(demo.browser.context, demo.server.url, row) };
  before(async () => {
    demo.server = await startServer();
    demo.browser = await launchBrowser();
  });
  after(async () => {
    await demo.browser?.close();
    await demo.server?.stop();
  });
  return demo;
}

/** Does `change` to the page and resolves with the otlens-results event it causes. */
export async function resultsAfter(page, change) {
  const before = (await widgetEvents(page, "otlens-results")).length;
  await change();
  return (await waitForWidgetEvents(page, "otlens-results", before + 1, SEARCH_TIMEOUT)).at(-1);
}

/**
 * "More like this" on the second of `searched`'s results, then a filter on another category, each giving 12 results
 * that show what was asked: what the codec and ranged tests check of a catalog beyond a photo search. Returns the
 * product chosen.
 */
export async function moreLikeThisThenFilter(page, searched) {
  const widget = page.locator("ot-lens");
  const chosen = searched.results[1].product;
  const similar = await resultsAfter(page, () =>
    widget.getByRole("button", { name: `More like this: ${chosen.title}` }).click(),
  );
  assert.equal(similar.results.length, 12);
  assert.ok(!similar.results.some(({ product }) => product.id === chosen.id), "the product itself is not listed");
  assert.equal(similar.results[0].product.category, chosen.category);

  const other = chosen.category === "Bag" ? "Sandal" : "Bag";
  const filtered = await resultsAfter(page, () =>
    widget.evaluate((element, category) => (element.filter = { categories: [category] }), other),
  );
  assert.equal(filtered.results.length, 12, "a filter on another category fills the results");
  assert.ok(filtered.results.every((result) => result.product.category === other));
  return chosen;
}

/** A PNG of one pixel whose header claims `width` x `height` (valid CRC, so only the size is wrong). */
export function pngDeclaring(width, height) {
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, deflate, no filter, no interlace
  // One scanline of a 1x1 image (filter byte + RGB), stored uncompressed in a zlib stream.
  const idat = Buffer.from([0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01]);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", idat),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** Photos the widget must refuse, each with the words its message must contain. */
export function badPhotos() {
  const jpeg = readFileSync(DOG_JPG);
  return [
    // Cut inside the compressed pixels, like an interrupted download: headers intact, no end marker.
    {
      name: "truncated.jpg",
      mimeType: "image/jpeg",
      buffer: jpeg.subarray(0, Math.floor(jpeg.length / 3)),
      expect: /damaged or incomplete/,
    },
    { name: "empty.jpg", mimeType: "image/jpeg", buffer: Buffer.alloc(0), expect: /the file is empty/ },
    {
      name: "notes.jpg",
      mimeType: "image/jpeg",
      buffer: Buffer.from("Shopping list: a yellow raincoat, size M.\n"),
      expect: /not a supported image/,
    },
    // What an iPhone shares by default: an ISO-BMFF file with the "heic" brand.
    {
      name: "IMG_0001.HEIC",
      mimeType: "image/heic",
      buffer: Buffer.concat([Buffer.from([0, 0, 0, 24]), Buffer.from("ftypheic\0\0\0\0mif1heic"), Buffer.alloc(64)]),
      expect: /HEIC images are not supported; use a JPEG, PNG, WebP, GIF or BMP photo/,
    },
    {
      name: "huge.png",
      mimeType: "image/png",
      buffer: pngDeclaring(50_000, 50_000),
      expect: /too large \(50000x50000 pixels/,
    },
  ];
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

/**
 * The widget runs compiled models: `otlens compile` of an ONNX file, into a temporary folder
 * removed when the process exits. Returns the compiled file's path.
 */
export function compiled(onnxPath) {
  compiledDir ??= mkdtempSync(join(tmpdir(), "otlens-compiled-"));
  const out = join(compiledDir, `${compiledCount++}-${basename(onnxPath, ".onnx")}.nnef.tgz`);
  execFileSync(OTLENS, ["compile", "--model", onnxPath, "--out", out], { stdio: "pipe" });
  return out;
}
let compiledDir;
let compiledCount = 0;
process.on("exit", () => compiledDir && rmSync(compiledDir, { recursive: true, force: true }));
