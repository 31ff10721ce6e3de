// Searching part of the photo with the crop box (keyboard and mouse), and matching by colour: the photo's
// colour chip and the shape <-> colour slider.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { catalogProduct, resultsAfter, servedDemo, skipUnlessBuilt } from "./helpers.mjs";

const ids = (event) => event.results.map((result) => result.product.id);

describe("crop box and colour", { skip: skipUnlessBuilt({ demoPhotos: true }) }, () => {
  const demo = servedDemo();

  test("moving the crop box with the keyboard or the mouse searches that part of the photo", async () => {
    const { page, problems, searched, widget } = await demo.searched(3);
    const crop = widget.getByRole("group", { name: /^Search area/ });
    assert.equal(await crop.getAttribute("aria-label"), "Search area: Whole photo");
    const region = () => widget.evaluate((element) => element.region);

    // Shift+arrows shrink it from the bottom right; arrows move it.
    await crop.focus();
    const byKeyboard = await resultsAfter(page, async () => {
      for (let i = 0; i < 10; i++) await page.keyboard.press("Shift+ArrowLeft");
      for (let i = 0; i < 10; i++) await page.keyboard.press("Shift+ArrowUp");
      for (let i = 0; i < 4; i++) await page.keyboard.press("ArrowRight");
    });
    const [x, y, width, height] = await region();
    assert.ok(Math.abs(x - 0.2) < 1e-6 && y === 0 && Math.abs(width - 0.5) < 1e-6 && Math.abs(height - 0.5) < 1e-6);
    assert.equal(await crop.getAttribute("aria-label"), "Search area: 50% × 50%");
    assert.notDeepEqual(ids(byKeyboard), ids(searched), "another part of the photo finds other products");

    // "Whole photo" brings back the first results.
    const whole = await resultsAfter(page, () => widget.getByRole("button", { name: "Whole photo" }).click());
    assert.deepEqual(ids(whole), ids(searched));
    assert.deepEqual(await region(), [0, 0, 1, 1]);

    // Dragging the bottom-right corner to the middle of the photo.
    await crop.scrollIntoViewIfNeeded();
    const box = await crop.boundingBox();
    const byMouse = await resultsAfter(page, async () => {
      await page.mouse.move(box.x + box.width - 10, box.y + box.height - 10); // on the corner handle
      await page.mouse.down();
      await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2, { steps: 5 });
      await page.mouse.up();
    });
    const dragged = await region();
    assert.ok(dragged[0] === 0 && dragged[1] === 0, `${dragged}`);
    assert.ok(Math.abs(dragged[2] - 0.5) < 0.05 && Math.abs(dragged[3] - 0.5) < 0.05, `${dragged}`);
    assert.notDeepEqual(ids(byMouse), ids(searched));
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("the photo's colour is shown as a chip, and the slider matches by colour", async () => {
    const { page, problems, searched, widget } = await demo.searched(3);
    assert.equal(searched.colour.name, catalogProduct(3).product.colour, "named as the catalog names colours");
    assert.equal(searched.colour.rgb.length, 3);
    const chip = widget.getByRole("button", { name: `Colour: ${searched.colour.name}` });
    assert.equal(await chip.getAttribute("aria-pressed"), "false");

    const slider = widget.getByRole("slider", { name: "Match by" });
    assert.equal(await slider.getAttribute("aria-valuetext"), "shape only");
    await slider.focus();
    const byColour = await resultsAfter(page, () => page.keyboard.press("End"));
    assert.equal(await slider.getAttribute("aria-valuetext"), "colour only");
    assert.equal(await widget.evaluate((element) => element.colourWeight), 1);
    assert.notDeepEqual(ids(byColour), ids(searched), "colour alone ranks differently");
    assert.equal(byColour.timings.embed_ms, 0, "the photo is not embedded again");

    const shapeAgain = await resultsAfter(page, () => widget.evaluate((element) => (element.colourWeight = 0)));
    assert.deepEqual(ids(shapeAgain), ids(searched));

    const onlyThatColour = await resultsAfter(page, () => chip.click());
    assert.equal(await chip.getAttribute("aria-pressed"), "true");
    assert.deepEqual(await widget.evaluate((element) => element.filter.colours), [searched.colour.name]);
    assert.ok(onlyThatColour.results.every((result) => result.product.colour === searched.colour.name));
    assert.deepEqual(problems, []);
    await page.close();
  });
});
