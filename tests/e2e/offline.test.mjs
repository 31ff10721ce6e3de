// Offline use: the demo page's `<ot-lens offline>` saves the widget, the page and the catalog with
// otlens-sw.js. After one visit search works with no network; a catalog published meanwhile, or a new
// service worker, replaces what was saved without ever pairing a model with another version's index; a
// full disk and a visit offline before anything was saved each end in a clear message and a way back.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, beforeEach, describe, test } from "node:test";

import {
  DEMO_WORK,
  DOG_JPG,
  LOAD_TIMEOUT,
  OTLENS,
  ROOT,
  SEARCH_TIMEOUT,
  WWW,
  catalogProduct,
  launchBrowser,
  openDemo,
  readManifest,
  searchWith,
  skipUnlessBuilt,
  startServer,
  unexpected,
  waitForWidgetEvents,
} from "./helpers.mjs";

const SAVED = "Saved on this device: photo search also works offline.";
const OFFLINE = "You are offline: searching the catalog saved on this device.";

describe("offline", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  const v1 = readManifest();
  let site; // a copy of www/ that the tests publish new versions into
  let server;
  let browser;

  before(async () => {
    site = mkdtempSync(join(tmpdir(), "otlens-site-"));
    cpSync(WWW, site, { recursive: true });
    server = await startServer(site);
  });

  beforeEach(async () => {
    browser = await launchBrowser({ serviceWorkers: "allow" });
  });

  afterEach(async () => {
    await browser?.close();
  });

  after(async () => {
    await server?.stop();
    rmSync(site, { recursive: true, force: true });
  });

  /** The demo page with its offline note; `prepare(page)` runs on the blank page first. */
  async function openSite(prepare) {
    const demo = await openDemo(browser.context, server.url, { prepare });
    return { ...demo, note: demo.page.locator("ot-lens [part=offline]") };
  }

  /** Reloads the page and waits for the widget to be ready; resolves with its otlens-ready event. */
  async function reloadUntilReady(page) {
    await page.reload();
    return (await waitForWidgetEvents(page, "otlens-ready"))[0];
  }

  /** Searches with the photo of catalog row `row` and resolves with the first result's product. */
  async function searchProduct(page, row) {
    return (await searchWith(page, catalogProduct(row).photo)).results[0].product;
  }

  const cachedPaths = (page) =>
    page.evaluate(async () => {
      const names = await caches.keys();
      const paths = {};
      for (const name of names) {
        const keys = await (await caches.open(name)).keys();
        paths[name] = keys.map((request) => new URL(request.url).pathname).sort();
      }
      return paths;
    });

  /** Publishes a second catalog version (the first `count` products) with the companion binary. */
  function publishSmallerCatalog(count) {
    const work = mkdtempSync(join(tmpdir(), "otlens-v2-"));
    const [header, ...rows] = readFileSync(join(DEMO_WORK, "catalog.csv"), "utf8").trim().split("\n");
    const imageColumn = header.split(",").indexOf("image");
    const absolute = rows.slice(0, count).map((row) => {
      const fields = row.split(",");
      fields[imageColumn] = join(DEMO_WORK, fields[imageColumn]);
      return fields.join(",");
    });
    writeFileSync(join(work, "catalog.csv"), [header, ...absolute].join("\n") + "\n");
    const model = join(ROOT, "models/efficientnet-lite0-int8-weights.onnx");
    const out = join(site, "catalog");
    // The demo's own embedding cache: its photos are not embedded again.
    const cache = join(DEMO_WORK, "embeddings");
    const args = ["--catalog", join(work, "catalog.csv"), "--out", out, "--cache", cache];
    execFileSync(OTLENS, ["build-index", "--model", model, ...args], { stdio: "pipe" });
    rmSync(work, { recursive: true, force: true });
    return JSON.parse(readFileSync(join(out, "manifest.json"), "utf8"));
  }

  test("after one visit, search works offline", async () => {
    const { page, problems, note } = await openSite();
    const [online] = await waitForWidgetEvents(page, "otlens-ready");
    const [saved] = await waitForWidgetEvents(page, "otlens-offline");
    assert.equal(saved.saved, true, saved.message);
    assert.equal(await note.textContent(), SAVED);
    const cached = (await cachedPaths(page))["otlens-1"];
    const widgetAndPage = ["/", "/demo.css", "/icon.svg", "/app.webmanifest", "/otlens.js", "/pkg/otlens.js"];
    for (const path of [...widgetAndPage, "/otlens-worker.js", "/catalog/manifest.json"]) {
      assert.ok(cached.includes(path), `${path} is saved`);
    }
    assert.ok(cached.includes(`/catalog/${v1.index.file}`) && cached.includes(`/catalog/${v1.model.file}`));
    // The page is cross-origin isolated: on a machine of two cores or more the engine runs on threads, and
    // their module (with its thread pool's helper script) is saved. Of the engine's builds, only the one
    // that ran is: relaxed SIMD in this Chromium.
    const folder = online.threads > 1 ? "/pkg-threads" : "/pkg";
    assert.equal(online.relaxedSimd, true);
    assert.ok(cached.includes(`${folder}/otlens_relaxed_bg.wasm`), `${folder}'s relaxed-SIMD build is saved`);
    assert.ok(!cached.includes(`${folder}/otlens_bg.wasm`), "the plain build is not");
    if (online.threads > 1) {
      assert.ok(cached.includes("/pkg-threads/otlens.js"), "/pkg-threads/otlens.js is saved");
      const helper = /^\/pkg-threads\/snippets\/.+\.js$/;
      assert.ok(cached.some((path) => helper.test(path)), "the thread pool's script is saved");
    }

    await browser.context.setOffline(true);
    const ready = await reloadUntilReady(page);
    assert.equal(ready.products, v1.products);
    assert.equal(ready.threads, online.threads, `offline on as many threads as online (${ready.threadsReason})`);
    await waitForWidgetEvents(page, "otlens-offline");
    assert.equal(await note.textContent(), OFFLINE);
    assert.equal((await searchProduct(page, 7)).id, catalogProduct(7).product.id);
    // Thumbnails of the results are shown once online; offline they simply may be missing.
    assert.deepEqual(unexpected(problems), []);
  });

  test("a catalog published while offline: the saved one keeps working, and replaces it once online", async () => {
    const { page, problems } = await openSite();
    await waitForWidgetEvents(page, "otlens-offline");
    const found = await searchProduct(page, 900);
    assert.equal(found.id, catalogProduct(900).product.id);
    // Shown, so saved: thumbnails are kept as they are seen, not all in advance.
    const thumbnail = new URL(found.thumbnail, `${server.url}catalog/`).pathname;
    await page.waitForFunction(
      async (path) => (await (await caches.open("otlens-1")).match(path)) !== undefined,
      thumbnail,
    );

    const v2 = publishSmallerCatalog(40);
    assert.notEqual(v2.index.file, v1.index.file);
    assert.equal(v2.model.file, v1.model.file, "same model, new index");

    // Offline: the saved pair, never the saved model with an index the page has not seen.
    await browser.context.setOffline(true);
    assert.equal((await reloadUntilReady(page)).products, v1.products);
    assert.equal((await searchProduct(page, 900)).id, catalogProduct(900).product.id);

    await browser.context.setOffline(false);
    assert.equal((await reloadUntilReady(page)).products, 40);
    const [saved] = await waitForWidgetEvents(page, "otlens-offline");
    assert.equal(saved.saved, true, saved.message);
    const cached = (await cachedPaths(page))["otlens-1"];
    assert.ok(cached.includes(`/catalog/${v2.index.file}`), "the new index is saved");
    assert.ok(cached.includes(`/catalog/${v1.model.file}`), "the model both versions use is kept");
    assert.ok(!cached.includes(`/catalog/${v1.index.file}`), "the old index is deleted");
    assert.ok(!cached.includes(thumbnail), "the old version's thumbnails are deleted");

    await browser.context.setOffline(true);
    assert.equal((await reloadUntilReady(page)).products, 40);
    assert.equal((await searchProduct(page, 3)).id, catalogProduct(3).product.id);
    assert.deepEqual(unexpected(problems), []);
  });

  test("a new service worker version replaces the old cache", async () => {
    const { page, problems } = await openSite();
    await waitForWidgetEvents(page, "otlens-offline");
    const worker = join(site, "otlens-sw.js");
    const original = readFileSync(worker, "utf8");
    try {
      writeFileSync(worker, original.replace('const VERSION = "1";', 'const VERSION = "2";'));
      await reloadUntilReady(page);
      await page.waitForFunction(async () => (await caches.keys()).join() === "otlens-2", null, {
        timeout: LOAD_TIMEOUT,
      });
      const [saved] = await waitForWidgetEvents(page, "otlens-offline");
      assert.equal(saved.saved, true, saved.message);
      await browser.context.setOffline(true);
      await reloadUntilReady(page);
      assert.equal((await searchProduct(page, 5)).id, catalogProduct(5).product.id);
    } finally {
      writeFileSync(worker, original);
    }
    assert.deepEqual(unexpected(problems), []);
  });

  test("a full disk: search still works, the shopper is told, and the next visit saves", async () => {
    const origin = new URL(server.url).origin;
    let cdp;
    const { page, problems, note, status } = await openSite(async (blank) => {
      cdp = await browser.context.newCDPSession(blank);
      // Less than the search engine alone: Chromium refuses the cache writes with QuotaExceededError.
      await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: 2_000_000 });
    });
    const [full] = await waitForWidgetEvents(page, "otlens-offline");
    assert.equal(full.saved, false);
    assert.match(await note.textContent(), /^Not saved for offline use: this device's storage is full\./);
    assert.deepEqual(await cachedPaths(page), { "otlens-1": [] }, "nothing half-saved");
    await page.locator("ot-lens #file").setInputFiles(DOG_JPG);
    await status.getByText(/^12 results/).waitFor({ timeout: SEARCH_TIMEOUT });

    // Offline before anything was saved: a widget that starts now (another page of the shop) says why
    // it cannot, and Try again works once the connection is back.
    await browser.context.setOffline(true);
    await page.evaluate(() => {
      const widget = document.querySelector("ot-lens");
      widget.replaceWith(widget.cloneNode());
    });
    await status.getByText(/could not start/).waitFor({ timeout: LOAD_TIMEOUT });
    assert.equal(
      await status.textContent(),
      "Visual search could not start: you are offline, and visual search is not saved on this device; " +
        "connect to the internet and try again.",
    );
    await browser.context.setOffline(false);
    await cdp.send("Storage.overrideQuotaForOrigin", { origin });
    await page.getByRole("button", { name: "Try again" }).click();
    await status.getByText(/Visual search ready/).waitFor({ timeout: LOAD_TIMEOUT });
    await note.getByText(SAVED).waitFor({ timeout: LOAD_TIMEOUT });
    assert.deepEqual(unexpected(problems), []);
  });
});
