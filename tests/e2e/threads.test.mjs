// Multi-threaded inference. On a cross-origin isolated page (`otlens serve` sends the COOP and COEP headers)
// the widget runs tract on one thread per core from pkg-threads/ and embeds exactly as on one thread. On a
// page that is not isolated, with threads="off", or when the multi-threaded module fails to load, it runs on
// one thread, says why, and searches as before. A browser with relaxed SIMD (this Chromium) runs the builds
// made with it, which differ from the plain ones only in rounding; without those files, the plain ones run.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  DOG_JPG,
  LOAD_TIMEOUT,
  WWW,
  cosine,
  launchBrowser,
  openDemo,
  skipUnlessBuilt,
  startServer,
  unexpected,
  waitForWidgetEvents,
} from "./helpers.mjs";

const THREADS_MODULE = join(WWW, "pkg-threads/otlens_bg.wasm");
// Routes that leave a page without the relaxed-SIMD builds, as on a host that lacks them.
const withoutRelaxedSimd = (page) => page.route("**/otlens_relaxed_bg.wasm", (route) => route.fulfill({ status: 404 }));

/**
 * A shop page with the widget, its `threads` attribute set to `mode`, once ready: the page and the ready detail.
 * The page is served with the COOP and COEP headers unless `isolated` is false.
 */
async function openWidget(context, base, mode, { isolated = true, prepare = async () => {} } = {}) {
  const url = new URL(`threads-${mode}.html`, base).href;
  const { page, problems } = await openDemo(context, url, {
    prepare: async (page) => {
      await prepare(page);
      await page.route(url, (route) =>
        route.fulfill({
          contentType: "text/html",
          headers: isolated
            ? { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" }
            : {},
          body: `<!doctype html><html lang="en"><title>threads ${mode}</title>
            <script type="module" src="otlens.js"></script>
            <ot-lens src="catalog/manifest.json" threads="${mode}"></ot-lens>`,
        }),
      );
    },
  });
  const [ready] = await waitForWidgetEvents(page, "otlens-ready");
  return { page, problems, ready };
}

/** The widget's embedding of darknet's dog photo and its search: {embedding, ids, backend}. */
function dogOn(page) {
  const photo = readFileSync(DOG_JPG).toString("base64");
  return page.evaluate(async (base64) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const blob = new Blob([bytes], { type: "image/jpeg" });
    const lens = document.querySelector("ot-lens");
    const embedding = Array.from(await lens.embed(blob));
    const { results } = await lens.search(blob);
    return { embedding, ids: results.map((result) => result.product.id), backend: lens.backend };
  }, photo);
}

describe("threads", { skip: skipUnlessBuilt() || (!existsSync(THREADS_MODULE) && "no pkg-threads (./build.sh build)") }, () => {
  let isolated;
  let plain;
  let browser;
  let onOneThread;

  before(async () => {
    isolated = await startServer();
    plain = await startServer(WWW, { isolated: false });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await isolated?.stop();
    await plain?.stop();
  });

  test('threads="off" runs on one thread and says so', { timeout: LOAD_TIMEOUT }, async () => {
    const { page, problems, ready } = await openWidget(browser.context, isolated.url, "off");
    assert.equal(ready.threads, 1);
    assert.match(ready.threadsReason, /threads are off/);
    // Chromium has had relaxed SIMD since version 114.
    assert.equal(ready.relaxedSimd, true);
    onOneThread = await dogOn(page);
    assert.equal(onOneThread.ids.length, 12);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("on an isolated page tract runs on every core and embeds as on one thread", { timeout: LOAD_TIMEOUT }, async (t) => {
    const { page, problems, ready } = await openWidget(browser.context, isolated.url, "auto");
    const cores = await page.evaluate(() => Math.min(navigator.hardwareConcurrency, 4));
    t.diagnostic(`cores ${cores}, ready ${JSON.stringify({ threads: ready.threads, reason: ready.threadsReason })}`);
    assert.equal(await page.evaluate(() => self.crossOriginIsolated), true);
    if (cores < 2) {
      assert.equal(ready.threads, 1);
      assert.match(ready.threadsReason, /one core/);
    } else {
      assert.equal(ready.threads, cores, ready.threadsReason);
      assert.equal(ready.threadsReason, undefined);
    }
    assert.equal(ready.relaxedSimd, true);
    const onThreads = await dogOn(page);
    assert.equal(onThreads.backend.threads, ready.threads);
    assert.ok(onOneThread, "the one-thread test ran first");
    // Each thread computes whole rows of each matrix product, in the same order as one thread does.
    assert.deepEqual(onThreads.embedding, onOneThread.embedding);
    assert.deepEqual(onThreads.ids, onOneThread.ids);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("without relaxed-SIMD files the plain builds run, on threads and on one", { timeout: LOAD_TIMEOUT }, async () => {
    const embeddings = [];
    for (const mode of ["auto", "off"]) {
      const { page, problems, ready } = await openWidget(browser.context, isolated.url, mode, {
        prepare: withoutRelaxedSimd,
      });
      assert.equal(ready.relaxedSimd, false);
      const cores = await page.evaluate(() => Math.min(navigator.hardwareConcurrency, 4));
      assert.equal(ready.threads, mode === "auto" ? cores : 1);
      const plain = await dogOn(page);
      embeddings.push(plain.embedding);
      // Fused multiply-adds round once where a multiply and an add round twice: the same embedding within
      // rounding, and the same results.
      assert.notDeepEqual(plain.embedding, onOneThread.embedding, "the relaxed build ran before");
      assert.ok(cosine(plain.embedding, onOneThread.embedding) > 0.99999);
      assert.deepEqual(plain.ids, onOneThread.ids);
      // The browser logs the failed download, the worker that it took the plain build.
      assert.deepEqual(unexpected(problems), []);
      await page.close();
    }
    assert.deepEqual(embeddings[0], embeddings[1], "the plain builds embed alike on threads and on one");
  });

  test("a page that is not cross-origin isolated runs on one thread and says why", { timeout: LOAD_TIMEOUT }, async () => {
    const { page, problems, ready } = await openWidget(browser.context, plain.url, "auto", { isolated: false });
    assert.equal(await page.evaluate(() => self.crossOriginIsolated), false);
    assert.equal(ready.threads, 1);
    assert.match(ready.threadsReason, /not cross-origin isolated/);
    assert.deepEqual((await dogOn(page)).ids, onOneThread.ids);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("when the multi-threaded module does not load, one thread takes over", { timeout: LOAD_TIMEOUT }, async () => {
    const { page, problems, ready } = await openWidget(browser.context, isolated.url, "auto", {
      prepare: (page) => page.route("**/pkg-threads/*.wasm", (route) => route.fulfill({ status: 404 })),
    });
    assert.equal(ready.threads, 1);
    assert.match(ready.threadsReason, /multi-threaded engine did not start: could not download search engine/);
    assert.deepEqual((await dogOn(page)).ids, onOneThread.ids);
    // The browser logs the failed downloads; nothing else went wrong.
    assert.deepEqual(unexpected(problems), []);
    await page.close();
  });
});
