// The WebGPU path in headless Chromium. With --enable-unsafe-webgpu Chromium has a SwiftShader adapter
// (WebGPU on the CPU, far slower than tract): by default the widget says so and stays on tract; with
// gpu="always" it moves inference there and finds what tract finds. The GPU module embeds like tract for
// EfficientNet-Lite0 and ResNet-18 (a random checkpoint), fp32 and int8. Without an adapter, when the GPU
// module fails, or when the device is lost mid-session, the widget says why and searches on tract.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  DOG_JPG,
  LOAD_TIMEOUT,
  ROOT,
  SEARCH_TIMEOUT,
  WWW,
  compiled,
  cosine,
  launchBrowser,
  openDemo,
  readManifest,
  skipUnlessBuilt,
  startProxy,
  startServer,
  unexpected,
  waitForWidgetEvents,
  widgetEvents,
} from "./helpers.mjs";

const AGREEMENT = 0.999;
const IMPORTED = process.env.OTLENS_IMPORTED_MODELS ?? join(ROOT, ".cache/bench-models");

/** Waits for the widget's otlens-backend event and returns its detail. */
async function backendOf(page) {
  await page.waitForFunction(() => window.otlensEvents.some((event) => event.type === "otlens-backend"), null, {
    timeout: LOAD_TIMEOUT,
  });
  return (await widgetEvents(page, "otlens-backend"))[0];
}

/** A shop page with the widget in GPU mode `mode`, recording its events (see openDemo). */
function openWidget(context, base, mode, { prepare = async () => {} } = {}) {
  const url = new URL(`gpu-${mode}.html`, base).href;
  return openDemo(context, url, {
    prepare: async (page) => {
      await prepare(page);
      await page.route(url, (route) =>
        route.fulfill({
          contentType: "text/html",
          body: `<!doctype html><html lang="en"><title>WebGPU ${mode}</title>
            <script type="module" src="otlens.js"></script>
            <ot-lens src="catalog/manifest.json" gpu="${mode}"></ot-lens>`,
        }),
      );
    },
  });
}

/**
 * Makes the widget's worker keep the GPUDevice it asks for in `self.otlensDevice`, so a test can lose it
 * (the device lives inside the GPU module, out of the page's reach). Resolves with the worker.
 */
function keepWorkerDevice(page) {
  return new Promise((resolve) =>
    page.once("worker", async (worker) => {
      await worker.evaluate(() => {
        const requestDevice = GPUAdapter.prototype.requestDevice;
        GPUAdapter.prototype.requestDevice = async function (...args) {
          self.otlensDevice = await requestDevice.apply(this, args);
          return self.otlensDevice;
        };
      });
      resolve(worker);
    }),
  );
}

/** The widget's search for darknet's dog photo: {results, timings}. */
function searchDog(page) {
  const photo = readFileSync(DOG_JPG).toString("base64");
  return page.evaluate(async (base64) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const lens = document.querySelector("ot-lens");
    const { results, timings } = await lens.search(new Blob([bytes], { type: "image/jpeg" }));
    return { ids: results.map((result) => result.product.id), scores: results.map((r) => r.score), timings };
  }, photo);
}

describe("WebGPU", { skip: skipUnlessBuilt() || (!existsSync(join(WWW, "pkg/otlens_gpu_bg.wasm")) && "no GPU module") }, () => {
  let server;
  let gpuBrowser;
  let cpuBrowser;
  let onTract;

  before(async () => {
    server = await startServer();
    gpuBrowser = await launchBrowser({ webgpu: true });
    cpuBrowser = await launchBrowser();
  });

  after(async () => {
    await gpuBrowser?.close();
    await cpuBrowser?.close();
    await server?.stop();
  });

  test("without an adapter the widget says so and searches on tract", { timeout: LOAD_TIMEOUT }, async () => {
    const { page, problems } = await openDemo(cpuBrowser.context, server.url);
    const backend = await backendOf(page);
    assert.equal(backend.backend, "tract");
    assert.match(backend.reason, /no WebGPU|no adapter/);
    onTract = await searchDog(page);
    assert.equal(onTract.timings.backend, "tract");
    assert.ok(onTract.ids.length > 0);
    assert.deepEqual(problems, []);
  });

  test("by default a software adapter is left alone, with the reason", { timeout: LOAD_TIMEOUT }, async () => {
    const { page, problems } = await openWidget(gpuBrowser.context, server.url, "auto");
    const backend = await backendOf(page);
    assert.equal(backend.backend, "tract");
    assert.match(backend.reason, /software fallback/);
    assert.deepEqual(problems, []);
  });

  test("with gpu=always the model runs on WebGPU and finds what tract finds", { timeout: LOAD_TIMEOUT }, async (t) => {
    const { page, problems } = await openWidget(gpuBrowser.context, server.url, "always");
    const backend = await backendOf(page);
    t.diagnostic(`backend ${JSON.stringify(backend)}`);
    assert.equal(backend.backend, "webgpu", backend.reason);
    assert.ok(backend.adapter.length > 0 && backend.dispatches > 0);
    assert.equal(backend.weights, "f32", "SwiftShader has no shader-f16");
    assert.equal(await page.evaluate(() => document.querySelector("ot-lens").backend.backend), "webgpu");
    const onGpu = await searchDog(page);
    t.diagnostic(`timings on WebGPU (SwiftShader): ${JSON.stringify(onGpu.timings)}`);
    assert.equal(onGpu.timings.backend, "webgpu");
    assert.ok(onTract, "the tract search ran first");
    assert.deepEqual(onGpu.ids.slice(0, 3), onTract.ids.slice(0, 3));
    onGpu.scores.slice(0, 3).forEach((score, i) => assert.ok(Math.abs(score - onTract.scores[i]) < 0.01));
    assert.deepEqual(problems, []);
  });

  test("a device lost mid-session sends search back to tract, saying why", { timeout: LOAD_TIMEOUT }, async (t) => {
    let worker;
    const { page, problems } = await openWidget(gpuBrowser.context, server.url, "always", {
      prepare: async (page) => {
        worker = keepWorkerDevice(page);
      },
    });
    assert.equal((await backendOf(page)).backend, "webgpu");
    worker = await worker;
    assert.ok(await worker.evaluate(() => Boolean(self.otlensDevice)), "the worker's GPUDevice was caught");
    await worker.evaluate(() => self.otlensDevice.destroy());
    const { timings, ids } = await searchDog(page);
    assert.equal(timings.backend, "tract");
    assert.ok(onTract, "the tract search ran first");
    assert.deepEqual(ids.slice(0, 3), onTract.ids.slice(0, 3));
    const [, back] = await waitForWidgetEvents(page, "otlens-backend", 2);
    t.diagnostic(`after the loss: ${JSON.stringify(back)}`);
    assert.equal(back.backend, "tract");
    assert.match(back.reason, /device was lost/);
    assert.equal(await page.evaluate(() => document.querySelector("ot-lens").backend.backend), "tract");
    assert.deepEqual(problems, []);
  });

  test("a GPU module that fails to load leaves search on tract, with the reason", { timeout: LOAD_TIMEOUT }, async () => {
    const proxy = await startProxy(server.url);
    try {
      proxy.fail("/pkg/otlens_gpu_bg.wasm", "404");
      const { page, problems } = await openWidget(gpuBrowser.context, proxy.url, "always");
      const backend = await backendOf(page);
      assert.equal(backend.backend, "tract");
      assert.match(backend.reason, /WebGPU path failed/);
      const { timings, ids } = await searchDog(page);
      assert.equal(timings.backend, "tract");
      assert.ok(ids.length > 0);
      assert.deepEqual(unexpected(problems), []);
    } finally {
      await proxy.stop();
    }
  });

  // ResNet-18 takes about 25 s a photo on SwiftShader, so one photo per model.
  test("the GPU module embeds like tract: EfficientNet-Lite0 and ResNet-18, fp32 and int8", { timeout: 8 * SEARCH_TIMEOUT }, async (t) => {
    const models = [join(WWW, "catalog", readManifest().model.file)];
    for (const name of ["efficientnet-lite0-fp32", "efficientnet-lite0-int8", "resnet18-fp32", "resnet18-int8"]) {
      const path = join(IMPORTED, `${name}.onnx`);
      // A missing model fails the test: skipping it left ResNet-18 unchecked on every fresh machine.
      assert.ok(existsSync(path), `no ${path}: ./build.sh test imports it`);
      models.push(compiled(path));
    }
    const page = await gpuBrowser.context.newPage();
    await page.goto(server.url);
    await page.route("**/parity-model-*", (route, request) =>
      route.fulfill({ body: readFileSync(models[Number(request.url().split("-").pop())]) }),
    );
    for (let n = 0; n < models.length; n++) {
      const [onTract, onGpu] = await page.evaluate(
        async ({ n, photo }) => {
          const tract = await import("/pkg/otlens.js");
          await tract.default();
          const gpu = await import("/pkg/otlens_gpu.js");
          await gpu.default();
          const bytes = new Uint8Array(await (await fetch(`/parity-model-${n}`)).arrayBuffer());
          const model = new tract.Model(bytes);
          const input = model.prepare(Uint8Array.from(atob(photo), (c) => c.charCodeAt(0)));
          const embedder = await gpu.GpuEmbedder.create(tract.gpuPlan(bytes));
          return [Array.from(model.run_tensor(input)), Array.from(await embedder.run(input))];
        },
        { n, photo: readFileSync(DOG_JPG).toString("base64") },
      );
      const similarity = cosine(onGpu, onTract);
      t.diagnostic(`${models[n]}: cosine ${similarity}`);
      assert.ok(similarity >= AGREEMENT, `${models[n]}: cosine ${similarity}`);
    }
    await page.close();
  });
});
