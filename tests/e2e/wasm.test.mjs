// The wasm API (www/pkg) used directly from Node: what the worker relies on, and its refusals.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import { DOG_JPG, ROOT, WWW, badPhotos, compiled, readManifest, skipUnlessBuilt } from "./helpers.mjs";

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
    lens = new wasm.Lens(indexBytes);
    lens.load_model(modelBytes);
  });

  test("Model reports what the manifest says about it", () => {
    const model = new wasm.Model(modelBytes);
    const info = model.info();
    assert.equal(info.sha256, lens.info().sha256, "the index's model");
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

  test("filters narrow a search, and a filter change searches the same photo again", () => {
    const { categories, price, currency } = lens.facets();
    assert.ok(categories.length > 1, "the demo has several categories");
    assert.equal(currency, "KRW");
    assert.ok(price.min < price.max);
    const everything = lens.search(readFileSync(DOG_JPG), 30).results;
    const [second] = categories.slice(1);
    const filter = { categories: [second.value], max_price: (price.min + price.max) / 2 };
    const narrowed = lens.refine(30, JSON.stringify(filter)).results;
    assert.ok(narrowed.length > 0);
    for (const { product } of narrowed) {
      assert.equal(product.category, second.value);
      assert.ok(product.price <= filter.max_price);
    }
    // The same photo: a result shown both times has the same score.
    const before = new Map(everything.map(({ product, score }) => [product.id, score]));
    for (const { product, score } of narrowed) {
      if (before.has(product.id)) assert.equal(score, before.get(product.id));
    }
    assert.deepEqual(lens.search(readFileSync(DOG_JPG), 30, JSON.stringify(filter)).results, narrowed);
    assert.throws(() => lens.refine(5, '{"colors": ["red"]}'), /the search filter is not valid: unknown field `colors`/);
    assert.throws(() => lens.refine(5, '{"min_price": "cheap"}'), /the search filter is not valid/);
  });

  test("more like this needs only the catalog", () => {
    const catalogOnly = new wasm.Lens(indexBytes);
    const id = "fmnist-0000";
    const { product, results } = catalogOnly.similar(id, 5, '{"in_stock": true}');
    assert.equal(results.length, 5);
    assert.ok(results.every((result) => result.product.id !== id), "the product itself is not among them");
    assert.equal(results[0].product.category, product.category, "the nearest is of the same kind");
    assert.throws(() => catalogOnly.similar("no-such-id", 5), /the catalog has no product with id "no-such-id"/);
    assert.throws(() => catalogOnly.search(readFileSync(DOG_JPG), 5), /the model is not loaded yet/);
    assert.throws(() => catalogOnly.refine(5), /there is no photo to search again/);
    catalogOnly.free();
  });

  test("a model that is not the index's is refused", () => {
    const otherModel = readFileSync(compiled(join(ROOT, "models/efficientnet-lite0-int8.onnx")));
    const catalogOnly = new wasm.Lens(indexBytes);
    assert.throws(
      () => catalogOnly.load_model(otherModel),
      /the index was built with model [0-9a-f]{64}, but the loaded model is [0-9a-f]{64}/,
    );
    catalogOnly.free();
  });

  test("a damaged index is refused with a clear message", () => {
    assert.throws(() => new wasm.Lens(indexBytes.subarray(0, indexBytes.length - 100)), /incomplete/);
    assert.throws(() => new wasm.Lens(new TextEncoder().encode("<html>404</html>")), /not an otlens/);
    assert.throws(() => new wasm.Model(new Uint8Array([1, 2, 3])), /model: not a compiled model/);
    const onnx = readFileSync(join(ROOT, "models/efficientnet-lite0-int8-weights.onnx"));
    assert.throws(() => new wasm.Model(onnx), /runs the model-\*\.nnef\.tgz that `otlens build-index` writes/);
    assert.throws(() => new wasm.Model(modelBytes.subarray(0, 100_000)), /model: not a readable compiled model/);
  });

  test("sha256Hex matches the manifest", () => {
    assert.equal(wasm.sha256Hex(modelBytes), manifest.model.sha256);
  });
});
