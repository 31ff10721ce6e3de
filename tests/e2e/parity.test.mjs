// The same photo must give the same embedding natively, in wasm under Node and in the
// widget's worker in Chromium: otherwise the browser searches an index built with different numbers.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import {
  DOG_JPG,
  OTLENS,
  WWW,
  compiled,
  cosine,
  openPage,
  readManifest,
  servedDemo,
  skipUnlessBuilt,
} from "./helpers.mjs";

const SAME = 0.9999;
// With int8 activations, the last-bit differences between tract's x86 and wasm-SIMD fp32
// kernels become whole rounding steps (measured 0.9996-0.9997): why the widget ships int8 weights only.
const SAME_INT8_ACTIVATIONS = 0.999;
// Written by `./build.sh test` with `otlens import`, beside the shipped model's own import.
const IMPORTED = process.env.OTLENS_IMPORTED_MODELS ?? join(WWW, "..", ".cache/bench-models");

function nativeEmbedding(modelPath) {
  const output = JSON.parse(execFileSync(OTLENS, ["embed", "--model", modelPath, DOG_JPG], { encoding: "utf8" }));
  return output.embeddings[0].embedding;
}

function wasmEmbedding(wasm, modelPath) {
  const compiledPath = modelPath.endsWith(".onnx") ? compiled(modelPath) : modelPath;
  const model = new wasm.Model(readFileSync(compiledPath));
  try {
    return model.embed_photo(readFileSync(DOG_JPG));
  } finally {
    model.free();
  }
}

describe("embedding parity", { skip: skipUnlessBuilt() }, () => {
  let modelPath;
  let native;

  before(() => {
    modelPath = join(WWW, "catalog", readManifest().model.file);
    native = nativeEmbedding(modelPath);
    assert.ok(native.length > 0);
  });

  test("wasm in Node matches the native binary, for the shipped model and every precision", async (t) => {
    const wasm = await import(join(WWW, "pkg/otlens.js"));
    wasm.initSync({ module: readFileSync(join(WWW, "pkg/otlens_bg.wasm")) });
    const shipped = cosine(wasmEmbedding(wasm, modelPath), native);
    t.diagnostic(`shipped model cosine ${shipped}`);
    assert.ok(shipped >= SAME, `shipped model cosine ${shipped} < ${SAME}`);
    for (const [precision, threshold] of [
      ["fp32", SAME],
      ["int8-weights", SAME],
      ["int8", SAME_INT8_ACTIVATIONS],
    ]) {
      const path = join(IMPORTED, `efficientnet-lite0-${precision}.onnx`);
      const similarity = cosine(wasmEmbedding(wasm, path), nativeEmbedding(path));
      t.diagnostic(`${precision} cosine ${similarity}`);
      assert.ok(similarity >= threshold, `${precision} cosine ${similarity} < ${threshold}`);
    }
  });

  describe("in Chromium", () => {
    const demo = servedDemo();

    test("the widget's worker matches the native binary", async () => {
      const { page, problems } = await openPage(demo.browser.context, demo.server.url);
      const photo = readFileSync(DOG_JPG).toString("base64");
      const embedding = await page.evaluate(async (base64) => {
        const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
        const lens = document.querySelector("ot-lens");
        return Array.from(await lens.embed(new Blob([bytes], { type: "image/jpeg" })));
      }, photo);
      assert.equal(embedding.length, native.length);
      const similarity = cosine(embedding, native);
      assert.ok(similarity >= SAME, `cosine ${similarity} < ${SAME}`);
      assert.deepEqual(problems, []);
    });
  });
});
