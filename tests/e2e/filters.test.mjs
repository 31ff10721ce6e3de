// Narrowing and widening a search: filter chips, a price range and an in-stock switch searched again
// without the photo being decoded again; "more like this" on a result; `<ot-lens product>` on a product
// page, which loads only the catalog; and the otlens-select event a host page may cancel.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  catalogProduct,
  openDemo,
  readManifest,
  resultsAfter,
  searchWith,
  servedDemo,
  skipUnlessBuilt,
  waitForWidgetEvents,
  widgetEvents,
} from "./helpers.mjs";

const ids = (event) => event.results.map((result) => result.product.id);

describe("filters and similar items", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  const demo = servedDemo();

  test("chips, a price range and the stock switch narrow the results; clearing them restores them", async () => {
    const { page, problems, searched, widget, status } = await demo.searched(7);
    const own = catalogProduct(7).product;
    assert.equal(searched.results[0].product.id, own.id);

    const filters = widget.getByRole("group", { name: "Filters" });
    const category = filters.getByRole("group", { name: "Category" });
    const chips = category.getByRole("button");
    assert.ok((await chips.count()) >= 5, "a chip per demo category");
    // Another category than the photo's: every result must change, and all be of that category.
    const other = category.getByRole("button", { name: /^(Bag|Sandal)$/ }).first();
    const otherName = await other.textContent();
    assert.notEqual(otherName, own.category);
    // The keyboard presses a chip like a click does.
    await other.focus();
    const byCategory = await resultsAfter(page, () => page.keyboard.press("Space"));
    assert.equal(await other.getAttribute("aria-pressed"), "true");
    assert.equal(byCategory.results.length, searched.results.length);
    assert.ok(byCategory.results.every((result) => result.product.category === otherName));
    // Searched again from the photo's embedding, which the engine kept: no decode, no model run.
    assert.equal(byCategory.timings.decode_ms, 0);
    assert.equal(byCategory.timings.embed_ms, 0);
    assert.match(await status.textContent(), /^12 results/);

    const cheap = await resultsAfter(page, () => filters.getByLabel("To", { exact: true }).fill("30000"));
    assert.ok(cheap.results.length > 0);
    assert.ok(cheap.results.every(({ product }) => product.category === otherName && product.price <= 30000));

    const inStock = filters.getByRole("checkbox", { name: "In stock only" });
    // All of the category (about 100 products, one in ten sold out), not only the nearest 12.
    await widget.evaluate((element) => element.setAttribute("max-results", "100"));
    const allBefore = await resultsAfter(page, () => filters.getByLabel("To", { exact: true }).fill(""));
    const soldOut = allBefore.results.filter(({ product }) => product.sold_out);
    assert.ok(soldOut.length > 0, "some of that category are sold out");
    const available = await resultsAfter(page, () => inStock.check());
    assert.ok(available.results.every(({ product }) => !product.sold_out));
    assert.deepEqual(
      ids(available),
      ids(allBefore).filter((id, n) => !allBefore.results[n].product.sold_out),
      "hiding sold-out products keeps the others in order",
    );

    await widget.evaluate((element) => element.setAttribute("max-results", "12"));
    const nothing = await resultsAfter(page, () => filters.getByLabel("From", { exact: true }).fill("1000000"));
    assert.equal(nothing.results.length, 0);
    assert.equal(await status.textContent(), "No products match these filters.");

    const cleared = await resultsAfter(page, () => filters.getByRole("button", { name: "Clear filters" }).click());
    assert.deepEqual(ids(cleared), ids(searched));
    assert.equal(await other.getAttribute("aria-pressed"), "false");
    assert.equal(await inStock.isChecked(), false);
    const focused = () => page.evaluate(() => document.querySelector("ot-lens").shadowRoot.activeElement?.className);
    assert.equal(await focused(), "results", "focus leaves the hidden Clear button for the results");

    // A brand chip narrows to that brand; pressed again, it lets every brand back.
    const brand = filters.getByRole("group", { name: "Brand" }).getByRole("button").first();
    const brandName = await brand.textContent();
    const byBrand = await resultsAfter(page, () => brand.click());
    assert.ok(byBrand.results.length > 0 && byBrand.results.every(({ product }) => product.brand === brandName));
    assert.deepEqual(ids(await resultsAfter(page, () => brand.click())), ids(searched));

    // Setting the filter property searches again, as the controls do; a new photo is searched with it.
    const byProperty = await resultsAfter(page, () =>
      widget.evaluate((element, category) => (element.filter = { categories: [category] }), otherName),
    );
    assert.deepEqual(ids(byProperty), ids(byCategory));
    assert.equal(await other.getAttribute("aria-pressed"), "true");
    const filteredPhoto = await searchWith(page, catalogProduct(8).photo);
    assert.ok(filteredPhoto.results.every((result) => result.product.category === otherName));
    assert.ok(filteredPhoto.timings.embed_ms > 0, "a new photo is embedded");
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("more like this shows products like the chosen one, and the keyboard carries on at the results", async () => {
    const { page, problems, searched, widget, status } = await demo.searched(3);
    const chosen = searched.results[1].product;
    const more = widget.getByRole("button", { name: `More like this: ${chosen.title}` });
    await more.focus();
    const similar = await resultsAfter(page, () => page.keyboard.press("Enter"));
    assert.equal(similar.photo, undefined, "no photo was searched");
    assert.equal(similar.results.length, searched.results.length);
    assert.ok(!ids(similar).includes(chosen.id), "the product itself is not listed");
    assert.equal(similar.results[0].product.category, chosen.category);
    assert.match(await status.textContent(), new RegExp(`^12 results like “${chosen.title}”`));
    assert.equal(await widget.locator(".query").isVisible(), false, "the shopper's photo is not shown above them");
    const focused = await page.evaluate(() => document.querySelector("ot-lens").shadowRoot.activeElement?.className);
    assert.equal(focused, "results");
    // A filter change searches for products like the same one.
    const inStock = await resultsAfter(page, () => widget.getByRole("checkbox", { name: "In stock only" }).check());
    assert.ok(inStock.results.every(({ product }) => !product.sold_out && product.id !== chosen.id));
    assert.match(await status.textContent(), new RegExp(`like “${chosen.title}”`));
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("a product page's <ot-lens product> shows similar items from the catalog alone", async () => {
    const { product } = catalogProduct(5);
    const productPage = new URL("product.html", demo.server.url).href;
    const manifest = readManifest();
    const requests = [];
    const { page, problems, status } = await openDemo(demo.browser.context, productPage, {
      prepare: async (page) => {
        page.on("request", (request) => requests.push(request.url()));
        // A shop's product page: the widget only, three columns.
        await page.route(productPage, (route) =>
          route.fulfill({
            contentType: "text/html",
            body: `<!doctype html><html lang="en"><title>${product.title}</title>
              <script type="module" src="otlens.js"></script>
              <h1>${product.title}</h1><h2>You may also like</h2>
              <ot-lens src="catalog/manifest.json" product="${product.id}" columns="3" max-results="6"></ot-lens>`,
          }),
        );
      },
    });
    const [shown] = await waitForWidgetEvents(page, "otlens-results");
    assert.equal(shown.results.length, 6);
    assert.ok(!ids(shown).includes(product.id));
    assert.equal(shown.results[0].product.category, product.category);
    assert.match(await status.textContent(), new RegExp(`^6 results like “${product.title}”`));
    const [ready] = await widgetEvents(page, "otlens-ready");
    assert.equal(ready.model, null, "no model was loaded");
    assert.ok(!requests.some((url) => url.endsWith(manifest.model.file)), "the model was not downloaded");
    const widget = page.locator("ot-lens");
    assert.equal(await widget.locator(".drop").isVisible(), false, "no photo input");
    const columns = await widget.locator(".results").evaluate((list) => getComputedStyle(list).gridTemplateColumns);
    assert.equal(columns.split(" ").length, 3, columns);

    // Another product on the same page (a client-side router): new results, no reload.
    const next = catalogProduct(6).product;
    const again = await resultsAfter(page, () =>
      widget.evaluate((element, id) => element.setAttribute("product", id), next.id),
    );
    assert.ok(!ids(again).includes(next.id));
    assert.equal((await widgetEvents(page, "otlens-ready")).length, 1);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("choosing a result sends otlens-select, which the page may cancel to route by itself", async () => {
    const { page, problems, searched, widget } = await demo.searched(9);
    await page.evaluate(() => {
      window.selected = [];
      addEventListener("otlens-select", (event) => {
        window.selected.push(event.detail.product.id);
        if (window.cancelSelect) event.preventDefault();
      });
    });
    const first = searched.results[0].product;
    const link = widget.getByRole("link", { name: new RegExp(first.title) }).first();
    await page.evaluate(() => (window.cancelSelect = true));
    await link.click();
    assert.deepEqual(await page.evaluate(() => window.selected), [first.id]);
    assert.equal(await page.evaluate(() => location.hash), "", "the cancelled link was not followed");
    await page.evaluate(() => (window.cancelSelect = false));
    await link.click();
    assert.equal(await page.evaluate(() => decodeURIComponent(location.hash)), first.url);
    assert.deepEqual(problems, []);
    await page.close();
  });
});
