// Faults a shopper's network and browser produce: a download cut halfway, a missing file, one that
// stalls, a file from another build, and an engine that crashes. Each ends in a clear state with a
// way back, never a blank or frozen widget, and never results from a mismatched model and index.

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import {
  DOG_JPG,
  LOAD_TIMEOUT,
  SEARCH_TIMEOUT,
  launchBrowser,
  openDemo,
  readManifest,
  searchWith,
  skipUnlessBuilt,
  startProxy,
  startServer,
  unexpected,
  waitForWidgetEvents,
  widgetEvents,
} from "./helpers.mjs";


describe("faults", { skip: skipUnlessBuilt() }, () => {
  const manifest = readManifest();
  const modelPath = `/catalog/${manifest.model.file}`;
  const indexPath = `/catalog/${manifest.index.file}`;
  let server;
  let proxy;
  let browser;

  before(async () => {
    server = await startServer();
    proxy = await startProxy(server.url);
    browser = await launchBrowser();
  });

  afterEach(() => proxy.heal());

  after(async () => {
    await browser?.close();
    await proxy?.stop();
    await server?.stop();
  });

  /** The demo page through the proxy, with its Try again button. */
  async function openThroughProxy() {
    const demo = await openDemo(browser.context, proxy.url);
    return { ...demo, retry: demo.page.getByRole("button", { name: "Try again" }) };
  }

  async function assertStartFailed({ page, status, retry }, message) {
    await status.getByText(/could not start/).waitFor({ timeout: LOAD_TIMEOUT });
    assert.match(await status.textContent(), message);
    assert.ok(await retry.isVisible(), "a Try again button");
    assert.equal(await page.locator("ot-lens .result").count(), 0);
    const [error] = await widgetEvents(page, "otlens-error");
    assert.equal(error.fatal, true);
  }

  test("a model download cut halfway says so, and Try again loads it", async () => {
    proxy.fail(modelPath, "cut");
    const demo = await openThroughProxy();
    const total = (manifest.model.bytes / 1e6).toFixed(1);
    await assertStartFailed(
      demo,
      new RegExp(`the model download from \\S+ stopped after \\d+\\.\\d of ${total} MB \\(.+\\); check the connection`),
    );
    proxy.heal();
    await demo.retry.click();
    await demo.status.getByText(/Visual search ready/).waitFor({ timeout: LOAD_TIMEOUT });
    assert.equal(await demo.retry.isVisible(), false);
    await searchWith(demo.page, DOG_JPG);
    assert.deepEqual(unexpected(demo.problems), []);
    await demo.page.close();
  });

  test("a missing catalog index (HTTP 404) is named", async () => {
    proxy.fail(indexPath, "404");
    const demo = await openThroughProxy();
    await assertStartFailed(demo, /could not download catalog \(\S+index-\w+\.otl\): HTTP 404 Not Found\.$/);
    assert.deepEqual(unexpected(demo.problems), []);
    await demo.page.close();
  });

  test("an index the manifest does not list is refused before any search", async () => {
    const demo = await openThroughProxy();
    // The shop deployed a new manifest but an old index (or a CDN served a stale one).
    await demo.page.route("**/catalog/manifest.json", (route) =>
      route.fulfill({ json: { ...manifest, index: { ...manifest.index, sha256: "f".repeat(64) } } }),
    );
    await demo.page.reload();
    await assertStartFailed(demo, /the index file is not the one the catalog manifest lists/);
    assert.equal((await widgetEvents(demo.page, "otlens-ready")).length, 0);
    assert.deepEqual(unexpected(demo.problems), []);
    await demo.page.close();
  });

  test("a manifest from another otlens version, or a page where the manifest should be, is named", async () => {
    const demo = await openThroughProxy();
    for (const [body, message] of [
      [{ json: { ...manifest, format: 2 } }, /the catalog manifest has format 2, this widget reads format 1/],
      // What static hosts with a single-page fallback serve for a missing file: the site's HTML.
      [
        { contentType: "text/html", body: "<!doctype html><title>Shop</title>" },
        /could not read the catalog manifest \(\S+\): the server sent text\/html, not JSON/,
      ],
    ]) {
      await demo.page.route("**/catalog/manifest.json", (route) => route.fulfill(body));
      await demo.page.reload();
      await assertStartFailed(demo, message);
      await demo.page.unroute("**/catalog/manifest.json");
    }
    assert.deepEqual(unexpected(demo.problems), []);
    await demo.page.close();
  });

  test("a download that stalls is given up after 20 s, with a retry", async () => {
    proxy.fail(indexPath, "stall");
    const demo = await openThroughProxy();
    await assertStartFailed(
      demo,
      /the catalog download from \S+ stopped after [\d.]+ of [\d.]+ MB \(nothing arrived for 20 s\)/,
    );
    assert.deepEqual(unexpected(demo.problems), []);
    await demo.page.close();
  });

  test("an engine crash starts a fresh worker; one that keeps crashing stops with a retry", async () => {
    const demo = await openThroughProxy();
    const { page, status } = demo;
    await waitForWidgetEvents(page, "otlens-ready", 1);
    // A photo that the engine opens at an address outside wasm memory: a genuine trap (WebAssembly.RuntimeError),
    // as a Rust panic or an engine bug raises. Only the worker it is put into is affected.
    const sabotage = (worker) =>
      worker.evaluate(async (pkg) => {
        const { Lens } = await import(pkg);
        const openPhoto = Lens.prototype.open_photo;
        Lens.prototype.open_photo = function (bytes) {
          return openPhoto.call({ __wbg_ptr: 0xfffffff0 }, bytes);
        };
      }, new URL("pkg/otlens.js", proxy.url).href);

    await sabotage(page.workers()[0]);
    await page.locator("ot-lens #file").setInputFiles(DOG_JPG);
    await waitForWidgetEvents(page, "otlens-ready", 2);
    const [crash] = await widgetEvents(page, "otlens-error");
    assert.deepEqual(crash, { type: "otlens-error", message: "memory access out of bounds", fatal: false });
    assert.equal(
      await status.textContent(),
      "Visual search could not handle that photo and has restarted; please try another one.",
    );
    assert.equal(page.workers().length, 1, "the crashed worker was terminated");
    await searchWith(page, DOG_JPG);

    // Every worker crashes from now on: after three restarts in a minute the widget stops trying.
    page.on("worker", sabotage);
    await sabotage(page.workers()[0]);
    for (let restart = 2; restart <= 3; restart++) {
      await page.locator("ot-lens #file").setInputFiles(DOG_JPG);
      await waitForWidgetEvents(page, "otlens-ready", restart + 1);
    }
    await page.locator("ot-lens #file").setInputFiles(DOG_JPG);
    await status
      .getByText(/^Visual search stopped working: memory access out of bounds\.$/)
      .waitFor({ timeout: SEARCH_TIMEOUT });
    assert.ok(await demo.retry.isVisible());
    assert.equal((await widgetEvents(page, "otlens-error")).at(-1).fatal, true);
    page.off("worker", sabotage);
    await demo.retry.click();
    await waitForWidgetEvents(page, "otlens-ready", 5);
    await searchWith(page, DOG_JPG);
    assert.deepEqual(unexpected(demo.problems), []);
    await page.close();
  });
});
