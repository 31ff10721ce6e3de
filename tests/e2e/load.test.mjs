// Load one shopper puts on a page: hundreds of searches in a row, and photos dropped faster than
// they can be searched. Memory must stay flat, and photos nobody waits for must be dropped, not queued.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import {
  LOAD_TIMEOUT,
  catalogProduct,
  launchBrowser,
  openPage,
  skipUnlessBuilt,
  startServer,
} from "./helpers.mjs";

const SOAK_SEARCHES = 500;
const WARM_UP_SEARCHES = 20;
const RAPID_UPLOADS = 50;

describe("under load", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  let server;
  let browser;
  let page;
  let problems;
  let devtools;
  let workerDevtools;
  let threads;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
    ({ page, problems } = await openPage(browser.context, server.url));
    await page.getByRole("status").getByText(/Visual search ready/).waitFor({ timeout: LOAD_TIMEOUT });
    threads = await page.evaluate(() => document.querySelector("ot-lens").backend.threads);
    devtools = await browser.context.newCDPSession(page);
    workerDevtools = await attachToWorker(devtools);
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  /**
   * A DevTools session on the page's search worker (Playwright opens none on workers): `send(method)`
   * resolves with the result, through the page session's target messages.
   */
  async function attachToWorker(session) {
    const attached = new Promise((resolve) => session.once("Target.attachedToTarget", resolve));
    await session.send("Target.setAutoAttach", { autoAttach: true, waitForDebuggerOnStart: false, flatten: false });
    const { sessionId } = await attached;
    const replies = new Map();
    let nextId = 1;
    session.on("Target.receivedMessageFromTarget", ({ message }) => {
      const { id, result, error } = JSON.parse(message);
      replies.get(id)?.(error ? Promise.reject(new Error(error.message)) : result);
      replies.delete(id);
    });
    return {
      send: (method) => {
        const id = nextId++;
        const reply = new Promise((resolve) => replies.set(id, resolve));
        const message = JSON.stringify({ id, method });
        return session.send("Target.sendMessageToTarget", { sessionId, message }).then(() => reply);
      },
    };
  }

  /** Catalog photos as base64, for page.evaluate. */
  const photos = (count, first = 0) =>
    Array.from({ length: count }, (_, i) => {
      const { product, photo } = catalogProduct(first + i);
      return { id: product.id, base64: readFileSync(photo).toString("base64") };
    });

  /** The JS heaps of the page and the worker after a collection, and the size of the worker's wasm memory. */
  async function memory() {
    await devtools.send("HeapProfiler.collectGarbage");
    const { usedSize } = await devtools.send("Runtime.getHeapUsage");
    await workerDevtools.send("HeapProfiler.collectGarbage");
    const { usedSize: workerHeap } = await workerDevtools.send("Runtime.getHeapUsage");
    // The worker's module instance is the one the widget initialised; init() hands back its exports.
    const wasm = await page
      .workers()[0]
      .evaluate(async (pkg) => (await (await import(pkg)).default()).memory.buffer.byteLength, pkgUrl());
    return { jsHeap: usedSize, workerHeap, wasm };
  }

  // The engine module the worker runs: the multi-threaded one on this cross-origin isolated page, when built.
  const pkgUrl = () => `${server.url}${threads > 1 ? "pkg-threads" : "pkg"}/otlens.js`;
  const megabytes = (bytes) => `${(bytes / 1e6).toFixed(2)} MB`;

  test(`${SOAK_SEARCHES} searches in a row keep the JS heap and wasm memory flat`, async (t) => {
    const catalog = photos(20);
    const search = (count) =>
      page.evaluate(
        async ({ catalog, count }) => {
          const widget = document.querySelector("ot-lens");
          const blobs = catalog.map(
            ({ base64 }) => new Blob([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], { type: "image/png" }),
          );
          let found = 0;
          for (let i = 0; i < count; i++) {
            const { results } = await widget.search(blobs[i % blobs.length]);
            if (results[0].product.id === catalog[i % catalog.length].id) found += 1;
          }
          return found;
        },
        { catalog, count },
      );
    assert.equal(await search(WARM_UP_SEARCHES), WARM_UP_SEARCHES);
    const start = await memory();
    const started = performance.now();
    assert.equal(await search(SOAK_SEARCHES - WARM_UP_SEARCHES), SOAK_SEARCHES - WARM_UP_SEARCHES);
    const seconds = (performance.now() - started) / 1000;
    const end = await memory();
    t.diagnostic(
      `after ${WARM_UP_SEARCHES} and ${SOAK_SEARCHES} searches on ${threads} thread(s) (${seconds.toFixed(1)} s for the rest): ` +
        `page JS heap ${megabytes(start.jsHeap)} -> ${megabytes(end.jsHeap)}, ` +
        `worker JS heap ${megabytes(start.workerHeap)} -> ${megabytes(end.workerHeap)}, ` +
        `wasm memory ${megabytes(start.wasm)} -> ${megabytes(end.wasm)}`,
    );
    // wasm memory never shrinks, so any leak in the engine shows as growth; the allocator reuses
    // the warm-up's memory for every later photo of the same size.
    assert.equal(end.wasm, start.wasm, "wasm memory grew");
    // Each search replaces the results and preview of the one before.
    for (const heap of ["jsHeap", "workerHeap"]) {
      assert.ok(end[heap] < start[heap] * 1.1 + 1e6, `${heap} grew from ${start[heap]} to ${end[heap]} bytes`);
    }
    const { nodes } = await devtools.send("Memory.getDOMCounters");
    assert.ok(nodes < 5_000, `${nodes} DOM nodes`);
    assert.deepEqual(problems, []);
  });

  test(`${RAPID_UPLOADS} photos at once: the first runs, the newest is shown, none between is searched`, async () => {
    const catalog = photos(RAPID_UPLOADS, 100);
    const worker = page.workers()[0];
    // Counts the searches the engine actually runs.
    await worker.evaluate(async (pkg) => {
      const { Lens } = await import(pkg);
      // Every photo search opens its photo once.
      const openPhoto = Lens.prototype.open_photo;
      self.enginesSearches = 0;
      Lens.prototype.open_photo = function (...args) {
        self.enginesSearches += 1;
        return openPhoto.apply(this, args);
      };
    }, pkgUrl());
    const outcomes = await page.evaluate(async (catalog) => {
      const widget = document.querySelector("ot-lens");
      const shown = new Promise((resolve) => widget.addEventListener("otlens-results", resolve, { once: true }));
      const searches = catalog.map(({ base64 }) =>
        widget.search(new Blob([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], { type: "image/png" })),
      );
      const settled = await Promise.allSettled(searches);
      await shown;
      return settled.map((outcome) =>
        outcome.status === "fulfilled" ? outcome.value.results[0].product.id : outcome.reason.name,
      );
    }, catalog);
    assert.equal(outcomes[0], catalog[0].id, "the search already running completes");
    assert.equal(outcomes.at(-1), catalog.at(-1).id, "the newest photo is searched");
    assert.deepEqual(new Set(outcomes.slice(1, -1)), new Set(["AbortError"]), "the photos in between are dropped");
    assert.equal(await worker.evaluate(() => self.enginesSearches), 2);
    // Only the newest photo's results are shown: the first one's arrived when it was already stale.
    const titles = await page.locator("ot-lens .result .title").allTextContents();
    assert.equal(titles[0], catalogProduct(100 + RAPID_UPLOADS - 1).product.title);
    assert.deepEqual(problems, []);
  });
});
