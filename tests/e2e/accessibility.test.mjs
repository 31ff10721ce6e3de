// The demo page as people with different devices and abilities meet it: axe-core finds no WCAG 2.2 A/AA
// violation in the loaded, searched and refused states, and a phone-sized screen needs no sideways
// scrolling. Screenshots of both layouts are saved in tests/output/.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  LOAD_TIMEOUT,
  ROOT,
  SEARCH_TIMEOUT,
  badPhotos,
  catalogProduct,
  launchBrowser,
  openPage,
  skipUnlessBuilt,
  startServer,
} from "./helpers.mjs";

const OUTPUT = join(ROOT, "tests/output");
const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
const WCAG_22_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"];

describe("accessibility and layout", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  let server;

  before(async () => {
    server = await startServer();
    mkdirSync(OUTPUT, { recursive: true });
  });

  after(async () => {
    await server?.stop();
  });

  /** The demo page in a browser of this viewport, loaded, with a catalog photo searched. */
  async function searchedDemo(viewport) {
    const browser = await launchBrowser({ viewport });
    const { page, problems } = await openPage(browser.context, server.url);
    const status = page.getByRole("status");
    await status.getByText(/Visual search ready/).waitFor({ timeout: LOAD_TIMEOUT });
    await page.locator("ot-lens #file").setInputFiles(catalogProduct(42).photo);
    await status.getByText(/^\d+ results?/).waitFor({ timeout: SEARCH_TIMEOUT });
    // Thumbnails loaded, so the screenshot and the contrast checks see the finished page.
    await page.waitForFunction(() =>
      [...document.querySelector("ot-lens").shadowRoot.querySelectorAll(".result img")].every((img) => img.complete),
    );
    return { browser, page, problems, status };
  }

  /** axe-core's WCAG 2.2 A/AA violations on the page (or the elements matching `only`), as "rule: target" lines. */
  async function violations(page, only) {
    await page.addScriptTag({ path: AXE });
    const found = await page.evaluate(
      ([tags, selector]) =>
        window.axe.run(selector ? { include: [[selector]] } : document, { runOnly: { type: "tag", values: tags } }),
      [WCAG_22_AA, only],
    );
    return found.violations.flatMap((violation) =>
      violation.nodes.map((node) => `${violation.id}: ${node.target.join(" > ")} (${node.failureSummary})`),
    );
  }

  test("axe-core finds no WCAG 2.2 AA violation: results, then a refused photo", async () => {
    const { browser, page, problems, status } = await searchedDemo({ width: 1280, height: 900 });
    try {
      assert.deepEqual(await violations(page), []);
      const [notAnImage] = badPhotos().filter((photo) => photo.name === "notes.jpg");
      await page.locator("ot-lens #file").setInputFiles(notAnImage);
      await status.getByText(/can't be used/).waitFor({ timeout: SEARCH_TIMEOUT });
      assert.deepEqual(await violations(page), []);
      assert.deepEqual(problems, []);
    } finally {
      await browser.close();
    }
  });

  test("theme=dark on a dark page: axe-core finds no WCAG 2.2 AA violation in the widget", async () => {
    const { browser, page, problems } = await searchedDemo({ width: 1280, height: 900 });
    try {
      await page.evaluate(() => {
        document.documentElement.style.background = "#121212";
        document.body.style.background = "#121212";
        const widget = document.querySelector("ot-lens");
        // The demo shop's own light-theme colours give way to the widget's dark defaults.
        for (const colour of ["--otlens-accent", "--otlens-surface"]) widget.style.setProperty(colour, "initial");
        widget.setAttribute("theme", "dark");
      });
      // The drop zone's background fades to the new theme's (a transition) before colours are checked.
      await page.waitForFunction(() => {
        const drop = document.querySelector("ot-lens").shadowRoot.querySelector(".drop");
        return getComputedStyle(drop).backgroundColor === "rgb(31, 31, 31)";
      });
      await page.screenshot({ path: join(OUTPUT, "demo-dark.png") });
      assert.deepEqual(await violations(page, "ot-lens"), []);
      assert.deepEqual(problems, []);
    } finally {
      await browser.close();
    }
  });

  test("a phone-sized screen shows the results without sideways scrolling", async () => {
    const { browser, page, problems } = await searchedDemo({ width: 390, height: 844 });
    try {
      const { scrollWidth, innerWidth } = await page.evaluate(() => ({
        scrollWidth: document.documentElement.scrollWidth,
        innerWidth: window.innerWidth,
      }));
      assert.ok(scrollWidth <= innerWidth, `the page is ${scrollWidth} px wide on a ${innerWidth} px screen`);
      const cards = await page.locator("ot-lens .result").evaluateAll((elements) =>
        elements.map((element) => element.getBoundingClientRect().right),
      );
      assert.ok(cards.length > 0 && cards.every((right) => right <= innerWidth), "every result fits the screen");
      assert.deepEqual(await violations(page), []);
      await page.screenshot({ path: join(OUTPUT, "demo-phone.png"), fullPage: true });
      assert.deepEqual(problems, []);
    } finally {
      await browser.close();
    }
  });
});
