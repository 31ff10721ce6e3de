// The <ot-lens> widget on the demo page, driven like a shopper would in headless Chromium.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  DOG_JPG,
  LOAD_TIMEOUT,
  ROOT,
  SEARCH_TIMEOUT,
  badPhotos,
  catalogProduct,
  launchBrowser,
  openPage,
  readManifest,
  skipUnlessBuilt,
  startServer,
} from "./helpers.mjs";

const OUTPUT = join(ROOT, "tests/output");

describe("the <ot-lens> widget", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  let server;
  let browser;
  let page;
  let problems;
  let widget;
  let status;

  async function upload(file) {
    await widget.locator("#file").setInputFiles(file);
  }

  async function searchFor(file) {
    await upload(file);
    await status.getByText(/^\d+ results?/).waitFor({ timeout: SEARCH_TIMEOUT });
  }

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
    ({ page, problems } = await openPage(browser.context, server.url));
    widget = page.locator("ot-lens");
    status = page.getByRole("status");
    await status.getByText(/Visual search ready/).waitFor({ timeout: LOAD_TIMEOUT });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("the demo page loads the widget with its catalog", async () => {
    assert.equal(await page.title(), "otlens demo");
    const manifest = readManifest();
    const ready = await page.evaluate(() => document.querySelector("ot-lens").ready);
    assert.equal(ready.products, manifest.products);
    assert.equal(ready.model.dims, manifest.dims);
    // The model names the ONNX file it was compiled from: the demo's is the committed one.
    const onnx = readFileSync(join(ROOT, "models/efficientnet-lite0-int8-weights.onnx"));
    assert.equal(ready.model.sha256, createHash("sha256").update(onnx).digest("hex"));
    assert.match(await status.textContent(), new RegExp(`ready: ${manifest.products.toLocaleString("en")} products`));
    assert.equal(await widget.locator("progress").isVisible(), false, "the progress bar hides once loaded");
    // The file button is a labelled control a keyboard and a screen reader can reach.
    const input = page.getByLabel("Choose a photo");
    assert.equal(await input.getAttribute("type"), "file");
    assert.equal(await input.getAttribute("accept"), "image/*");
  });

  test("loading shows download progress and never blocks the page", async () => {
    const { page: fresh, problems: freshProblems } = await openPage(browser.context, "about:blank");
    await fresh.addInitScript(() => {
      // Every text the progress label shows, and the longest stall of the page's own event loop.
      window.progressTexts = [];
      window.longestStallMs = 0;
      let last = performance.now();
      const ticker = setInterval(() => {
        const now = performance.now();
        window.longestStallMs = Math.max(window.longestStallMs, now - last);
        last = now;
      }, 10);
      addEventListener("otlens-ready", () => clearInterval(ticker));
      addEventListener("DOMContentLoaded", () => {
        const label = document.querySelector("ot-lens").shadowRoot.querySelector(".progress-text");
        const record = () => window.progressTexts.push(label.textContent);
        record();
        new MutationObserver(record).observe(label, { childList: true, characterData: true, subtree: true });
      });
    });
    await fresh.goto(server.url);
    await fresh.getByRole("status").getByText(/Visual search ready/).waitFor({ timeout: LOAD_TIMEOUT });
    const texts = await fresh.evaluate(() => window.progressTexts);
    const manifest = readManifest();
    const total = (bytes) => (bytes / 1e6).toFixed(1);
    const modelText = new RegExp(`^Downloading model… \\d+\\.\\d / ${total(manifest.model.bytes)} MB$`);
    const indexText = new RegExp(`^Downloading catalog… \\d+\\.\\d / ${total(manifest.index.bytes)} MB$`);
    assert.ok(texts.some((text) => modelText.test(text)), `model progress in ${JSON.stringify(texts)}`);
    assert.ok(texts.some((text) => indexText.test(text)), `catalog progress in ${JSON.stringify(texts)}`);
    assert.ok(texts.includes("Preparing the model…"), JSON.stringify(texts));
    // Decoding the model happens in the worker: the page keeps answering (a frame is 16 ms).
    const stall = await fresh.evaluate(() => window.longestStallMs);
    assert.ok(stall < 250, `the page's event loop stalled for ${stall.toFixed(0)} ms while loading`);
    assert.deepEqual(freshProblems, []);
    await fresh.close();
  });

  test("a catalog photo finds its own product first", async () => {
    const { product, photo } = catalogProduct(7);
    const event = page.evaluate(
      () =>
        new Promise((resolve) => {
          addEventListener("otlens-results", (e) => resolve(e.detail.results), { once: true });
        }),
    );
    await searchFor(photo);
    const results = await event;
    assert.equal(results[0].product.id, product.id);
    assert.ok(results[0].score > 0.95, `top score ${results[0].score}`);

    const maxResults = Number(await widget.getAttribute("max-results"));
    assert.match(await status.textContent(), new RegExp(`^${maxResults} results`));
    const cards = widget.locator(".result");
    assert.equal(await cards.count(), maxResults);
    const first = cards.first();
    assert.equal(await first.locator(".title").textContent(), product.title);
    assert.ok(await first.locator(".title").isVisible());
    // KRW has no minor unit: "₩9,900", never "₩9,900.00".
    const price = new Intl.NumberFormat("en", { style: "currency", currency: product.currency }).format(product.price);
    assert.equal(await first.locator(".price").textContent(), price);
    assert.equal(await first.locator(".meta").textContent(), `${product.category} · ${product.colour}`);
    assert.match(await first.locator(".score").textContent(), /^Similarity \d+%$/);
    // Results are links to the product pages, named by their content.
    const link = page.getByRole("link", { name: new RegExp(product.title) }).first();
    assert.equal(await link.getAttribute("href"), new URL(product.url, server.url).href);
    assert.equal(await first.locator("img").getAttribute("alt"), `Photo: ${product.title}`);

    // Every thumbnail loads (a broken path or a stalled server would leave an empty card).
    const unloaded = await page.evaluate(async () => {
      const images = [...document.querySelector("ot-lens").shadowRoot.querySelectorAll(".result img")];
      const loaded = (img) =>
        img.decode().then(
          () => null,
          () => `${img.src} is broken`,
        );
      const late = (img) => new Promise((resolve) => setTimeout(() => resolve(`${img.src} never arrived`), 15_000));
      return (await Promise.all(images.map((img) => Promise.race([loaded(img), late(img)])))).filter(Boolean);
    });
    assert.deepEqual(unloaded, []);

    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: join(OUTPUT, "demo.png"), fullPage: true });
    // The README's picture is refreshed on request only, so a test run leaves the tree clean.
    if (process.env.OTLENS_UPDATE_SCREENSHOT) copyFileSync(join(OUTPUT, "demo.png"), join(ROOT, "docs/screenshot.png"));
    assert.deepEqual(problems, []);
  });

  test("the keyboard reaches the file button and activates it", async () => {
    // The progress test opened and closed a page of its own; keys must go to this one.
    await page.bringToFront();
    await page.evaluate(() => document.activeElement?.blur());
    const focusedInput = () =>
      page.evaluate(() => document.querySelector("ot-lens").shadowRoot.activeElement?.type === "file");
    let presses = 0;
    while (!(await focusedInput()) && presses < 20) {
      await page.keyboard.press("Tab");
      presses += 1;
    }
    assert.ok(await focusedInput(), "Tab reaches the file input");
    // Enter must activate the input as a click would (the browser then opens its file chooser). The
    // chooser itself is not awaited: Playwright's filechooser event missed it now and then here.
    await page.evaluate(() => {
      window.fileInputClicks = [];
      const input = document.querySelector("ot-lens").shadowRoot.querySelector("#file");
      input.addEventListener("click", (event) => window.fileInputClicks.push(event.isTrusted), { once: true });
    });
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => window.fileInputClicks.length > 0, null, { timeout: SEARCH_TIMEOUT });
    assert.deepEqual(await page.evaluate(() => window.fileInputClicks), [true]);
    await page.locator("ot-lens #file").setInputFiles(catalogProduct(3).photo);
    await status.getByText(/^\d+ results?/).waitFor({ timeout: SEARCH_TIMEOUT });
  });

  test("a photo dropped on the widget is searched", async () => {
    const { product, photo } = catalogProduct(21);
    const bytes = readFileSync(photo).toString("base64");
    const results = await page.evaluate(async (base64) => {
      const widget = document.querySelector("ot-lens");
      const zone = widget.shadowRoot.querySelector(".drop");
      const data = new DataTransfer();
      const pixels = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const file = new File([pixels], "photo.png", { type: "image/png" });
      data.items.add(file);
      const done = new Promise((resolve) => widget.addEventListener("otlens-results", resolve, { once: true }));
      for (const type of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
      }
      return (await done).detail.results;
    }, bytes);
    assert.equal(results[0].product.id, product.id);
    assert.equal(await widget.locator(".result .title").first().textContent(), product.title);
  });

  test("a photo pasted into the widget is searched, and no request carries it", async () => {
    const { product, photo } = catalogProduct(33);
    // Every request of the page and its worker while the photo is searched and its results are shown.
    const requests = [];
    const record = (request) => requests.push(request);
    browser.context.on("request", record);
    try {
      const results = await page.evaluate(async (base64) => {
        const widget = document.querySelector("ot-lens");
        const data = new DataTransfer();
        const pixels = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
        data.items.add(new File([pixels], "screenshot.png", { type: "image/png" }));
        const done = new Promise((resolve) => widget.addEventListener("otlens-results", resolve, { once: true }));
        widget.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
        return (await done).detail.results;
      }, readFileSync(photo).toString("base64"));
      assert.equal(results[0].product.id, product.id);
      await page.waitForFunction(() =>
        [...document.querySelector("ot-lens").shadowRoot.querySelectorAll(".result img")].every((img) => img.complete),
      );
    } finally {
      browser.context.off("request", record);
    }
    // The photo stays on the device: only thumbnails are fetched, by GET, from the shop's own origin.
    assert.ok(requests.length > 0, "the results' thumbnails were requested");
    for (const request of requests) {
      assert.equal(request.method(), "GET", request.url());
      assert.equal(request.postDataBuffer(), null, request.url());
      assert.ok(request.url().startsWith(server.url), `${request.url()} is on the shop's origin`);
    }
  });

  test("bad photos get a clear message and the widget keeps working", async () => {
    for (const photo of badPhotos()) {
      // The widget answers every photo with exactly one event: results or an error.
      const outcome = page.evaluate(
        () =>
          new Promise((resolve) => {
            const settle = (event) => {
              removeEventListener("otlens-results", settle);
              removeEventListener("otlens-error", settle);
              resolve(event.type);
            };
            addEventListener("otlens-results", settle);
            addEventListener("otlens-error", settle);
          }),
      );
      await upload(photo);
      assert.equal(await outcome, "otlens-error", `${photo.name} is refused`);
      const message = await status.textContent();
      assert.match(message, /^This photo can't be used: /, photo.name);
      assert.match(message, photo.expect, photo.name);
      assert.equal(await status.evaluate((element) => element.classList.contains("error")), true);
    }
    await searchFor(DOG_JPG);
    assert.ok((await widget.locator(".result").count()) > 0);
    assert.deepEqual(problems, [], "no page error, crash or console error");
  });

  test("a catalog whose model is not the manifest's is refused with a clear message", async () => {
    const manifest = readManifest();
    const { page: tampered, problems: tamperedProblems } = await openPage(browser.context, "about:blank");
    // The worker checks each file's sha256 against the manifest before using it.
    await tampered.route("**/catalog/manifest.json", (route) =>
      route.fulfill({ json: { ...manifest, model: { ...manifest.model, sha256: "0".repeat(64) } } }),
    );
    await tampered.goto(server.url);
    const tamperedStatus = tampered.getByRole("status");
    await tamperedStatus.getByText(/could not start/).waitFor({ timeout: LOAD_TIMEOUT });
    assert.match(await tamperedStatus.textContent(), /the model file is not the one the catalog manifest lists/);
    assert.ok(await tampered.getByRole("button", { name: "Try again" }).isVisible());
    assert.deepEqual(tamperedProblems, []);
    await tampered.close();
  });

  test('lang="ko" gives a Korean widget, beside an English one that it leaves alone', async () => {
    await page.evaluate(() => {
      const korean = document.createElement("ot-lens");
      Object.assign(korean, { id: "korean", lang: "ko" });
      korean.setAttribute("max-results", "3");
      document.querySelector("main").append(korean);
    });
    const korean = page.locator("#korean");
    try {
      const koreanStatus = korean.getByRole("status");
      await koreanStatus.getByText(/^이미지 검색 준비 완료: 상품 1,000개\.$/).waitFor({ timeout: LOAD_TIMEOUT });
      assert.equal(await korean.getByLabel("사진 선택").getAttribute("type"), "file");
      assert.equal(await korean.getByText("또는 여기에 사진을 끌어다 놓으세요").count(), 1);
      await korean.locator("#file").setInputFiles(catalogProduct(3).photo);
      await koreanStatus.getByText(/^결과 3개 · \d+ ms$/).waitFor({ timeout: SEARCH_TIMEOUT });
      assert.equal(await korean.getByRole("list", { name: "검색 결과" }).count(), 1);
      // Prices follow the language too: won, without decimals.
      assert.match(await korean.locator(".price").first().textContent(), /^₩[\d,]+$/);
      assert.match(await korean.locator(".score").first().textContent(), /^유사도 \d+%$/);
      const filters = korean.getByRole("group", { name: "필터" });
      assert.equal(await filters.getByRole("group", { name: "카테고리" }).count(), 1);
      assert.equal(await filters.getByRole("checkbox", { name: "재고 있는 상품만" }).count(), 1);
      assert.equal(await filters.getByRole("group", { name: "가격 (KRW)" }).getByLabel("최저").count(), 1);
      assert.match(await korean.locator(".more").first().getAttribute("aria-label"), /^비슷한 상품: /);
      assert.match(await widget.first().getByRole("status").textContent(), /^\d+ results? in \d+ ms$|ready/);
    } finally {
      await page.evaluate(() => document.querySelector("#korean")?.remove());
    }
    assert.deepEqual(problems, []);
  });
});
