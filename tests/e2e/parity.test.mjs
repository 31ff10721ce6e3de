// The same photo must give the same embedding natively, in wasm under Node and in the
// widget's worker in Chromium: otherwise the browser searches an index built with different numbers.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  DOG_JPG,
  OTLENS,
  WWW,
  cosine,
  launchBrowser,
  missingPrerequisites,
  openPage,
  readManifest,
  startServer,
} from "./helpers.mjs";

const missing = missingPrerequisites();
const SAME = 0.9999;

describe("embedding parity", { skip: missing.length ? `build first: ${missing.join(", ")}` : false }, () => {
  let modelPath;
  let native;

  before(() => {
    modelPath = join(WWW, "catalog", readManifest().model.file);
    const output = JSON.parse(execFileSync(OTLENS, ["embed", "--model", modelPath, DOG_JPG], { encoding: "utf8" }));
    native = output.embeddings[0].embedding;
    assert.ok(native.length > 0);
  });

  test("wasm in Node matches the native binary", async () => {
    const wasm = await import(join(WWW, "pkg/otlens.js"));
    wasm.initSync({ module: readFileSync(join(WWW, "pkg/otlens_bg.wasm")) });
    const model = new wasm.Model(readFileSync(modelPath));
    const embedding = model.embed_photo(readFileSync(DOG_JPG));
    model.free();
    assert.equal(embedding.length, native.length);
    const similarity = cosine(embedding, native);
    assert.ok(similarity >= SAME, `cosine ${similarity} < ${SAME}`);
  });

  describe("in Chromium", () => {
    let server;
    let browser;

    before(async () => {
      server = await startServer();
      browser = await launchBrowser();
    });

    after(async () => {
      await browser?.close();
      await server?.stop();
    });

    test("the widget's worker matches the native binary", async () => {
      const { page, problems } = await openPage(browser.context, server.url);
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
