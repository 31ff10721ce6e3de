#!/usr/bin/env node
// CPU profile of tract-wasm in headless Chromium: where one photo's embedding time goes, by wasm
// function (self time). Profile here rather than in Node: the same module compiles differently in
// the two engines (Chromium ran the matrix kernels 1.5-1.8x as long until patches/README.md's
// third tract-linalg change).
//
//   node bench/profile.mjs MODEL.onnx [--runs 20] [--top 25] [--out FILE.cpuprofile]
//
// Needs target/wasm32-unknown-unknown/wasm/otlens.wasm and target/release/otlens (./build.sh build)
// and tests/e2e/node_modules (npm ci). The module is bound again with its function names kept, so
// its timings match www/pkg's. The profile (--out) opens in Chromium DevTools' Performance panel.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { compiled, launchBrowser } from "../tests/e2e/helpers.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const WASM = join(ROOT, "target/wasm32-unknown-unknown/wasm/otlens.wasm");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { runs: { type: "string", default: "20" }, top: { type: "string", default: "25" }, out: { type: "string" } },
});
if (positionals.length !== 1) {
  console.error("usage: node bench/profile.mjs MODEL.onnx [--runs 20] [--top 25] [--out FILE.cpuprofile]");
  process.exit(2);
}

const pkg = mkdtempSync(join(tmpdir(), "otlens-profile-"));
process.on("exit", () => rmSync(pkg, { recursive: true, force: true }));
execFileSync("wasm-bindgen", ["--target", "web", "--keep-debug", "--out-dir", pkg, WASM], { stdio: "inherit" });
const files = {
  "/otlens.js": [join(pkg, "otlens.js"), "text/javascript"],
  "/otlens_bg.wasm": [join(pkg, "otlens_bg.wasm"), "application/wasm"],
  "/model.nnef.tgz": [compiled(resolve(positionals[0])), "application/octet-stream"],
  "/": [null, "text/html"],
};
// The page embeds a fixed 224x224 tensor (no photo decoding), the same one every run.
const PAGE = `<!doctype html><script type="module">
import init, { Model } from "/otlens.js";
await init({ module_or_path: "/otlens_bg.wasm" });
const model = new Model(new Uint8Array(await (await fetch("/model.nnef.tgz")).arrayBuffer()));
const input = Float32Array.from({ length: 3 * 224 * 224 }, (_, i) => Math.sin(i * 0.001));
window.embed = (runs) => {
  const times = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    model.run_tensor(input);
    times.push(performance.now() - start);
  }
  return times.sort((a, b) => a - b)[runs >> 1];
};
window.ready = true;
</script>`;
const server = createServer((request, response) => {
  const [path, type] = files[new URL(request.url, "http://localhost").pathname] ?? [];
  if (!type) return response.writeHead(404).end();
  response.writeHead(200, { "content-type": type }).end(path ? readFileSync(path) : PAGE);
});
await new Promise((done) => server.listen(0, "127.0.0.1", done));

const browser = await launchBrowser();
try {
  const page = await browser.context.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.waitForFunction(() => window.ready, null, { timeout: 120_000 });
  await page.evaluate(() => window.embed(3)); // warm-up: compiled code tiered up, buffers allocated
  const cdp = await browser.context.newCDPSession(page);
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 200 });
  await cdp.send("Profiler.start");
  const median = await page.evaluate((runs) => window.embed(runs), Number(values.runs));
  const { profile } = await cdp.send("Profiler.stop");
  if (values.out) writeFileSync(values.out, JSON.stringify(profile));
  console.log(`${positionals[0]}: median ${median.toFixed(1)} ms per embedding with the profiler sampling, ${values.runs} runs, 1 thread\n`);
  console.log(topSelfTime(profile, Number(values.top)));
} finally {
  await browser.close();
  server.close();
}

/** The functions with the most samples of their own, as "share  name" lines. */
function topSelfTime(profile, top) {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const self = new Map();
  for (const id of profile.samples) {
    const frame = byId.get(id).callFrame;
    // Rust's symbol hashes (::h0123…) make the names long and change with every build.
    const name = (frame.functionName || frame.url || "(anonymous)").replace(/::h[0-9a-f]{16}$/, "");
    self.set(name, (self.get(name) ?? 0) + 1);
  }
  return [...self]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([name, count]) => `${((100 * count) / profile.samples.length).toFixed(1).padStart(5)} %  ${name.slice(0, 140)}`)
    .join("\n");
}
