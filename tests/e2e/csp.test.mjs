// The widget on a page with the strict Content-Security-Policy the README documents: no inline script
// or style, WebAssembly only through 'wasm-unsafe-eval', workers only from the page's origin. Every
// response carries the policy, as a shop's server would send it.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  LOAD_TIMEOUT,
  SEARCH_TIMEOUT,
  catalogProduct,
  launchBrowser,
  openPage,
  skipUnlessBuilt,
  startProxy,
  startServer,
} from "./helpers.mjs";

const POLICY = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'";

describe("content security policy", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  let server;
  let strict;
  let withoutWasm;
  let browser;

  before(async () => {
    server = await startServer();
    strict = await startProxy(server.url, { headers: { "Content-Security-Policy": POLICY } });
    const noWasm = POLICY.replace(" 'wasm-unsafe-eval'", "");
    withoutWasm = await startProxy(server.url, { headers: { "Content-Security-Policy": noWasm } });
    browser = await launchBrowser({ serviceWorkers: "allow" });
  });

  after(async () => {
    await browser?.close();
    await strict?.stop();
    await withoutWasm?.stop();
    await server?.stop();
  });

  /** The demo page, recording the policy violations its document reports. */
  async function open(url) {
    const { page, problems } = await openPage(browser.context, "about:blank");
    await page.addInitScript(() => {
      window.violations = [];
      document.addEventListener("securitypolicyviolation", (event) =>
        window.violations.push(`${event.effectiveDirective} ${event.blockedURI}`),
      );
    });
    await page.goto(url);
    return { page, problems, widget: page.locator("ot-lens"), status: page.getByRole("status") };
  }

  test("the demo works under the documented policy: styled, searching, saved for offline use", async () => {
    const { page, problems, widget, status } = await open(strict.url);
    await status.getByText(/Visual search ready/).waitFor({ timeout: LOAD_TIMEOUT });
    const { product, photo } = catalogProduct(11);
    await widget.locator("#file").setInputFiles(photo);
    await status.getByText(/^\d+ results?/).waitFor({ timeout: SEARCH_TIMEOUT });
    assert.equal(await widget.locator(".result .title").first().textContent(), product.title);
    // The widget's constructed style sheet and the page's own applied; the preview was drawn.
    const button = widget.locator("label[for=file]");
    assert.equal(await button.evaluate((label) => getComputedStyle(label).borderRadius), "999px");
    assert.equal(await page.evaluate(() => getComputedStyle(document.body).backgroundColor), "rgb(246, 245, 242)");
    assert.equal(await widget.locator("figure").isVisible(), true, "the photo preview");
    await widget.getByText(/^Saved on this device/).waitFor({ timeout: LOAD_TIMEOUT });
    assert.deepEqual(await page.evaluate(() => window.violations), []);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("a policy without 'wasm-unsafe-eval' is named in the widget", async () => {
    const { page, status } = await open(withoutWasm.url);
    await status.getByText(/could not start/).waitFor({ timeout: LOAD_TIMEOUT });
    assert.equal(
      await status.textContent(),
      "Visual search could not start: the page's Content-Security-Policy does not let WebAssembly run; " +
        "add 'wasm-unsafe-eval' to script-src.",
    );
    await page.close();
  });
});
