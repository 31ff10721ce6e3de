// The wasm API (www/pkg) used directly from Node: what the worker relies on, and its refusals.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import { DOG_JPG, WWW, badPhotos, readManifest, skipUnlessBuilt } from "./helpers.mjs";

describe("the wasm API", { skip: skipUnlessBuilt() }, () => {
  let wasm;
  let manifest;
  let modelBytes;
  let indexBytes;
  let lens;

  before(async () => {
    wasm = await import(join(WWW, "pkg/otlens.js"));
    wasm.initSync({ module: readFileSync(join(WWW, "pkg/otlens_bg.wasm")) });
    manifest = readManifest();
    modelBytes = readFileSync(join(WWW, "catalog", manifest.model.file));
    indexBytes = readFileSync(join(WWW, "catalog", manifest.index.file));
    lens = new wasm.Lens(modelBytes, indexBytes);
  });

  test("Model reports what the manifest says about it", () => {
    const model = new wasm.Model(modelBytes);
    const info = model.info();
    assert.equal(info.sha256, manifest.model.sha256);
    assert.equal(info.dims, manifest.dims);
    assert.equal(info.arch, manifest.arch);
    assert.equal(info.input.mean.length, 3);
    const embedding = model.embed_photo(readFileSync(DOG_JPG));
    assert.ok(embedding instanceof Float32Array);
    assert.equal(embedding.length, info.dims);
    const norm = Math.hypot(...embedding);
    assert.ok(Math.abs(norm - 1) < 1e-3, `the embedding is L2-normalised (norm ${norm})`);
    const tensor = new Float32Array(3 * info.input.size * info.input.size).fill(0.5);
    assert.equal(model.run_tensor(tensor).length, info.dims);
    assert.throws(() => model.run_tensor(new Float32Array(10)), /input has 10 values/);
    model.free();
  });

  test("Lens searches the catalog, best first, with timings", () => {
    assert.equal(lens.len(), manifest.products);
    const { results, timings } = lens.search(readFileSync(DOG_JPG), 5);
    assert.equal(results.length, Math.min(5, manifest.products));
    for (const { product, score } of results) {
      assert.equal(typeof product.id, "string");
      assert.equal(typeof product.title, "string");
      assert.ok(score >= -1 && score <= 1.0001, `score ${score} is a cosine`);
    }
    const scores = results.map((result) => result.score);
    assert.deepEqual(scores, [...scores].sort((a, b) => b - a));
    for (const key of ["decode_ms", "embed_ms", "search_ms"]) assert.ok(timings[key] >= 0, key);
    assert.equal(lens.search(readFileSync(DOG_JPG), 0).results.length, 0);
  });

  test("bad photos get the crate's messages, and the lens keeps working", () => {
    for (const photo of badPhotos()) {
      assert.throws(() => lens.search(photo.buffer, 3), photo.expect, photo.name);
    }
    assert.throws(() => wasm.checkPhotoSize(40 * 1024 * 1024), /the file is too large \(41943040 bytes/);
    assert.throws(() => wasm.checkPhotoSize(8e9), /the file is too large/);
    wasm.checkPhotoSize(5e6);
    assert.ok(lens.search(readFileSync(DOG_JPG), 3).results.length > 0);
  });

  test("a model that is not the index's is refused", () => {
    const otherModel = new Uint8Array([...modelBytes, 0]);
    assert.throws(
      () => new wasm.Lens(otherModel, indexBytes),
      /the index was built with model [0-9a-f]{64}, but the loaded model is [0-9a-f]{64}/,
    );
  });

  test("a damaged index is refused with a clear message", () => {
    assert.throws(() => new wasm.Lens(modelBytes, indexBytes.subarray(0, indexBytes.length - 100)), /incomplete/);
    assert.throws(() => new wasm.Lens(modelBytes, new TextEncoder().encode("<html>404</html>")), /not an otlens/);
    assert.throws(() => new wasm.Model(new Uint8Array([1, 2, 3])), /model: not a readable ONNX model/);
  });

  test("sha256Hex matches the manifest", () => {
    assert.equal(wasm.sha256Hex(modelBytes), manifest.model.sha256);
  });
});
