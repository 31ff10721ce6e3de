// A model written by `otlens train` (a head appended to the imported model) is one ONNX file
// that, compiled, the widget's wasm engine runs exactly as the companion binary does, and its index searches.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { DEMO_WORK, DOG_JPG, OTLENS, ROOT, WWW, compiled, cosine, skipUnlessBuilt } from "./helpers.mjs";

describe("a trained model", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  let work;
  let model;
  let wasm;

  before(async () => {
    work = mkdtempSync(join(tmpdir(), "otlens-trained-"));
    // 80 demo photos; the garment type stands in for the product, so each "product" has several photos.
    const rows = readFileSync(join(DEMO_WORK, "catalog.csv"), "utf8").trim().split("\n").slice(1, 81);
    const csv = ["path,item_id"];
    for (const row of rows) {
      const fields = row.split(",");
      csv.push(`${join(DEMO_WORK, fields[8])},${fields[5]}`);
    }
    writeFileSync(join(work, "train.csv"), csv.join("\n") + "\n");
    model = join(work, "trained.onnx");
    execFileSync(OTLENS, [
      "train", "--model", join(ROOT, "models/efficientnet-lite0-int8-weights.onnx"),
      "--train", join(work, "train.csv"), "--out", model, "--views", "2", "--dims", "32",
      "--epochs", "3", "--holdout-every", "5", "--cache", join(work, "cache"),
    ], { stdio: "pipe" });
    wasm = await import(join(WWW, "pkg/otlens.js"));
    wasm.initSync({ module: readFileSync(join(WWW, "pkg/otlens_bg.wasm")) });
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  test("embeds in wasm as natively, 32 dims, L2-normalised", () => {
    const engine = new wasm.Model(readFileSync(compiled(model)));
    assert.equal(engine.info().dims, 32);
    const inWasm = engine.embed_photo(readFileSync(DOG_JPG));
    const native = JSON.parse(execFileSync(OTLENS, ["embed", "--model", model, DOG_JPG], { encoding: "utf8" }));
    assert.equal(native.model_sha256, engine.info().sha256);
    const similarity = cosine(Array.from(inWasm), native.embeddings[0].embedding);
    assert.ok(similarity > 0.9999, `cosine ${similarity}`);
    assert.ok(Math.abs(Math.hypot(...inWasm) - 1) < 1e-4);
    engine.free();
  });

  test("an index built with it finds a catalog photo's own product, and refuses the ImageNet model", () => {
    const catalog = join(work, "catalog");
    const csv = readFileSync(join(DEMO_WORK, "catalog.csv"), "utf8").trim().split("\n").slice(0, 41).join("\n");
    writeFileSync(join(work, "catalog.csv"), csv.replaceAll(",images/", `,${DEMO_WORK}/images/`) + "\n");
    const args = ["--catalog", join(work, "catalog.csv"), "--out", catalog, "--cache", join(work, "embeddings")];
    execFileSync(OTLENS, ["build-index", "--model", model, ...args], { stdio: "pipe" });
    const manifest = JSON.parse(readFileSync(join(catalog, "manifest.json"), "utf8"));
    assert.equal(manifest.dims, 32);
    const lens = new wasm.Lens(readFileSync(join(catalog, manifest.index.file)));
    assert.throws(
      () => lens.load_model(readFileSync(compiled(join(ROOT, "models/efficientnet-lite0-int8-weights.onnx")))),
      /was built with model/,
    );
    lens.load_model(readFileSync(join(catalog, manifest.model.file)));
    const { results } = lens.search(readFileSync(join(DEMO_WORK, "images/0007.png")), 1);
    assert.equal(results[0].product.id, "fmnist-0007");
    lens.free();
  });
});
