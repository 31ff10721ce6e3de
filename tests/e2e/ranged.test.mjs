// A ranged catalog (`otlens build-index --ranged`): the widget loads the index's head, then fetches the
// inverted lists a search scans with HTTP Range requests from a static server, and only those, then the pages of
// titles, links and thumbnails of the results it shows (the head holds only what filters need). From a host
// that ignores Range (a proxy that always sends whole files) it takes the whole lists file once; a damaged
// lists file is refused with a message. The demo's 1,000 products in 16 lists, 2 probed per search, their
// colours words of a palette of 64; int8, and refined pq (16 bytes in the lists' blocks, 16 more in refinement
// blocks that a search fetches for its best candidates, after their lists).

import assert from "node:assert/strict";
import { cpSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  buildDemoCatalog,
  catalogProduct,
  demoSite,
  launchBrowser,
  moreLikeThisThenFilter,
  openCatalogPage,
  searchWith,
  skipUnlessBuilt,
  startProxy,
  startServer,
  waitForWidgetEvents,
} from "./helpers.mjs";

const LISTS = 16;
const ids = (event) => event.results.map((result) => result.product.id);

describe("a ranged catalog in the browser", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  // www/ with the ranged catalog in ranged/, a damaged copy in damaged/, refined pq in refined/ and whole in
  // refined-whole/
  let site;
  let manifest;
  let server;
  let wholeFiles; // a proxy in front of the server that ignores Range requests
  let browser;

  before(async () => {
    site = demoSite("otlens-ranged-");
    const ranged = ["--lists", String(LISTS), "--probe", "2", "--ranged", "--colour-palette", "64"];
    manifest = buildDemoCatalog(site, "ranged", ranged);
    const refined = ["--codec", "pq", "--pq-subspaces", "16", "--pq-refinement", "16"];
    buildDemoCatalog(site, "refined", [...ranged, ...refined]);
    buildDemoCatalog(site, "refined-whole", [...ranged.filter((flag) => flag !== "--ranged"), ...refined]);
    // The same catalog with one byte of its first list changed: the head still vouches for the original.
    cpSync(join(site, "ranged"), join(site, "damaged"), { recursive: true });
    const lists = join(site, "damaged", manifest.lists.file);
    const bytes = readFileSync(lists);
    bytes[10] ^= 0xff;
    writeFileSync(lists, bytes);

    server = await startServer(site);
    wholeFiles = await startProxy(server.url);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await wholeFiles?.stop();
    await server?.stop();
    rmSync(site, { recursive: true, force: true });
  });

  /**
   * The widget on a page of `origin` showing the catalog in `folder`, with every lists-file response (of the page
   * and its worker: the context sees both) until the page closes.
   */
  async function openCatalog(origin, folder) {
    const lists = [];
    const record = (response) => {
      if (response.url().includes("/lists-")) {
        lists.push({
          status: response.status(),
          range: response.request().headers().range,
          bytes: Number(response.headers()["content-length"]),
        });
      }
    };
    browser.context.on("response", record);
    const opened = await openCatalogPage(browser.context, origin, folder);
    opened.page.once("close", () => browser.context.off("response", record));
    return { ...opened, lists };
  }

  test("searches fetch only the lists they scan, with Range requests", async () => {
    assert.ok(manifest.lists.file.match(/^lists-[0-9a-f]{8}\.otb$/), manifest.lists.file);
    const headBytes = manifest.index.bytes;
    assert.ok(headBytes < manifest.lists.bytes / 4, `a ${headBytes}-byte head, ${manifest.lists.bytes} of lists`);

    const { page, problems, lists } = await openCatalog(server.url, "ranged");
    const [ready] = await waitForWidgetEvents(page, "otlens-ready");
    assert.equal(ready.ranged, true);
    assert.equal(ready.products, manifest.products);
    assert.equal(lists.length, 1, "loading fetches one list, which also shows the host answers Range");

    const { product, photo } = catalogProduct(7);
    const searched = await searchWith(page, photo);
    assert.equal(ids(searched)[0], product.id, "the product's own photo finds it first");
    assert.equal(searched.results.length, 12);
    assert.ok(searched.colour.name, "the colours, words of a palette of 64, name the photo's colour");
    assert.equal(searched.results[0].product.title, product.title, "the results' details came with them");
    assert.ok(searched.results.every(({ product }) => product.title && product.url && product.thumbnail));
    assert.ok(searched.timings.lists_ms >= 0 && searched.timings.details_ms >= 0);
    // 2 lists, and a page of 32 products' details per result at most.
    assert.ok(lists.length <= 1 + 2 + 12, `the search fetched ${lists.length - 1} parts of the lists file`);

    // More like this and a filter on another category fetch the lists (and pages) they need.
    await moreLikeThisThenFilter(page, searched);

    assert.ok(lists.length > 1 && lists.every((response) => response.status === 206 && response.range));
    const fetched = lists.reduce((sum, response) => sum + response.bytes, 0);
    assert.ok(fetched < manifest.lists.bytes, `${fetched} of ${manifest.lists.bytes} bytes of lists fetched`);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("refined pq fetches its candidates' refinement blocks after their lists", async () => {
    const { page, problems, lists } = await openCatalog(server.url, "refined");
    await waitForWidgetEvents(page, "otlens-ready");
    const { product, photo } = catalogProduct(7);
    const searched = await searchWith(page, photo);
    assert.equal(ids(searched)[0], product.id, "the product's own photo finds it first");
    assert.ok(searched.results.every(({ product }) => product.title && product.url));
    // The first list at loading; then 2 lists, their candidates' refinement blocks (a list of ~60 products is one
    // block) and a page of details per result at most, in one request per run of adjacent parts.
    const beforeDetails = lists.length;
    assert.ok(beforeDetails >= 1 + 2, `${beforeDetails - 1} parts of the lists file: lists, then refinements`);
    assert.ok(beforeDetails <= 1 + 2 + 2 + 12, `the search fetched ${beforeDetails - 1} parts of the lists file`);
    await moreLikeThisThenFilter(page, searched);
    assert.ok(lists.every((response) => response.status === 206 && response.range));
    assert.deepEqual(problems, []);
    await page.close();

    // The same catalog whole has every refinement at hand: the ranged one, which fetched those it needed, ranks
    // and scores as it does.
    const whole = await openCatalog(server.url, "refined-whole");
    await waitForWidgetEvents(whole.page, "otlens-ready");
    const wholeSearched = await searchWith(whole.page, photo);
    const scored = (event) => event.results.map(({ product, score }) => `${product.id} ${score.toFixed(5)}`);
    assert.deepEqual(scored(searched), scored(wholeSearched));
    await whole.page.close();
  });

  test("a host that ignores Range requests sends the whole lists file, once", async () => {
    const { page, problems, lists } = await openCatalog(wholeFiles.url, "ranged");
    await waitForWidgetEvents(page, "otlens-ready");
    const { product, photo } = catalogProduct(21);
    const searched = await searchWith(page, photo);
    assert.equal(ids(searched)[0], product.id);
    assert.deepEqual(
      lists.map(({ status, bytes }) => [status, bytes]),
      [[200, manifest.lists.bytes]],
    );
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("a damaged lists file is refused with a clear message", async () => {
    for (const origin of [server.url, wholeFiles.url]) {
      const { page } = await openCatalog(origin, "damaged");
      const [error] = await waitForWidgetEvents(page, "otlens-error");
      assert.equal(error.fatal, true);
      assert.match(error.message, /part 0 of the catalog's lists file is damaged/);
      await page.close();
    }
  });
});
