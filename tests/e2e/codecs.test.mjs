// The widget with each smaller vector codec `otlens build-index` offers: a binary and a pq catalog of
// the demo's 1,000 products (its photos are not embedded again: the demo's embedding cache) load in
// the browser, find a product from its own photo, keep a category filter exact and answer "more like
// this" from the stored codes alone. A pq catalog in inverted lists stores each product as its offset
// from its list's centroid, which searches and "more like this" add back.

import assert from "node:assert/strict";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  buildDemoCatalog,
  catalogProduct,
  demoSite,
  launchBrowser,
  moreLikeThisThenFilter,
  openCatalogPage,
  readManifest,
  searchWith,
  skipUnlessBuilt,
  startServer,
  waitForWidgetEvents,
} from "./helpers.mjs";

const CODECS = {
  binary: ["--codec", "binary"],
  pq: ["--codec", "pq", "--pq-subspaces", "64"],
  "pq-lists": ["--codec", "pq", "--pq-subspaces", "64", "--lists", "8", "--probe", "2"],
};
// The vector codec number in an index file's header (src/index/format.rs).
const CODEC_IDS = { pq: 2, "pq-lists": 2, binary: 3 };
const ids = (event) => event.results.map((result) => result.product.id);

describe("binary and pq catalogs in the browser", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  const int8 = readManifest();
  let site; // www/ with a catalog folder per codec beside the demo's
  let server;
  let browser;

  before(async () => {
    site = demoSite("otlens-codecs-");
    for (const [codec, flags] of Object.entries(CODECS)) buildDemoCatalog(site, codec, flags);
    server = await startServer(site);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    rmSync(site, { recursive: true, force: true });
  });

  for (const codec of Object.keys(CODECS)) {
    test(`${codec}: a product's own photo finds it, more like this and a category filter work`, async () => {
      const manifest = JSON.parse(readFileSync(join(site, codec, "manifest.json"), "utf8"));
      assert.equal(manifest.products, int8.products);
      const header = readFileSync(join(site, codec, manifest.index.file)).subarray(0, 20);
      assert.equal(header.readUInt32LE(16), CODEC_IDS[codec], "the index is stored with the codec asked for");

      const { page, problems, status } = await openCatalogPage(browser.context, server.url, codec);
      const [ready] = await waitForWidgetEvents(page, "otlens-ready");
      assert.equal(ready.products, int8.products);

      const own = catalogProduct(7).product;
      const searched = await searchWith(page, catalogProduct(7).photo);
      assert.equal(searched.results.length, 12);
      // Binary codes are rescored with int8 vectors; pq ranks by its codes alone, so near-ties may swap.
      const rank = ids(searched).indexOf(own.id);
      assert.ok(codec === "binary" ? rank === 0 : rank >= 0 && rank < 3, `rank ${rank}`);

      const chosen = await moreLikeThisThenFilter(page, searched);
      assert.match(await status.textContent(), new RegExp(`like “${chosen.title}”`));
      assert.deepEqual(problems, []);
      await page.close();
    });
  }
});
