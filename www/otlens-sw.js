// otlens service worker: after one visit, visual search works offline.
//
// `<ot-lens offline>` registers it from next to otlens.js. A service worker controls only pages in its
// own folder and below, so serve the otlens files from the page's folder or above (the demo serves
// everything from the site root), and do not use it on a site that already has a service worker with
// that scope: registering this one would replace it.
//
// It keeps one cache per version of this file ("otlens-<VERSION>"); a new version deletes the older
// caches when it takes over. In it:
// - the widget (otlens.js, otlens-worker.js, the WebGPU module, and the engine's files it ran from: pkg/ or
//   pkg-threads/, plain or relaxed-SIMD build) and the page that showed it, with its style sheets, icons and
//   web app manifest;
// - each catalog the widget has loaded and checked: manifest, model and index, saved when the widget
//   asks. Files go in first and the manifest last, so a cached manifest always names cached files, and
//   the model and index are checked against the manifest's sha256 before they are kept. When a newer
//   version of a catalog is saved, the older version's files and thumbnails are deleted;
// - product thumbnails of saved catalogs, as they are shown.
// Answers come from the network first, so an online shopper always gets the shop's newest files; the
// cache answers when the network fails. Model and index files are named by their sha256 and never
// change, so they come from the cache first.

const VERSION = "1";
const CACHE = `otlens-${VERSION}`;
// With the WebGPU module (otlens_gpu*), which the worker loads only when the browser has an adapter. The
// engine's wasm comes with the widget's list of the files it ran from: only the build this browser runs.
const SHELL = [
  "pkg/otlens.js",
  "pkg/otlens_gpu_bg.wasm",
  "pkg/otlens_gpu.js",
  "otlens-worker.js",
  "otlens.js",
].map((file) => new URL(file, self.location).href);
// `otlens build-index` names model and index files after the first 8 hex digits of their sha256.
const CONTENT_ADDRESSED = /\/(model|index)-[0-9a-f]{8,}(\.[a-z]+)+$/;

self.addEventListener("install", () => self.skipWaiting());

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      const names = await caches.keys();
      const older = names.filter((name) => name.startsWith("otlens-") && name !== CACHE);
      await Promise.all(older.map((name) => caches.delete(name)));
      await self.clients.claim();
    })(),
  );
});

self.addEventListener("fetch", (event) => {
  const { request } = event;
  // Range requests get partial answers that must not be stored or served as whole files.
  if (request.method !== "GET" || request.headers.has("Range")) return;
  if (new URL(request.url).origin !== self.location.origin) return;
  event.respondWith(respond(event));
});

async function respond(event) {
  const { request } = event;
  const cache = await caches.open(CACHE);
  if (CONTENT_ADDRESSED.test(new URL(request.url).pathname)) {
    const cached = await cache.match(request);
    if (cached) return cached;
  }
  let response;
  try {
    response = await fetch(request);
  } catch (error) {
    const cached = await cache.match(request);
    if (cached) return cached;
    throw error;
  }
  if (response.status === 200 && request.destination === "image" && (await isThumbnail(request.url))) {
    // A full disk only means this thumbnail is not kept for offline use.
    event.waitUntil(cache.put(request, response.clone()).catch(() => {}));
  }
  return response;
}

let thumbnailFolders = null; // of the saved catalogs; recomputed after each save

async function isThumbnail(url) {
  thumbnailFolders ??= (async () => {
    const cache = await caches.open(CACHE);
    const manifests = (await cache.keys()).filter((request) => new URL(request.url).pathname.endsWith(".json"));
    const folders = await Promise.all(
      manifests.map(async (request) => {
        const manifest = await readManifest(await cache.match(request));
        return manifest?.thumbnails ? new URL(manifest.thumbnails, request.url).href : null;
      }),
    );
    return folders.filter(Boolean);
  })();
  return (await thumbnailFolders).some((folder) => url.startsWith(folder));
}

async function readManifest(response) {
  try {
    const manifest = await response.json();
    return manifest?.model?.file && manifest?.index?.file ? manifest : null;
  } catch {
    return null;
  }
}

self.addEventListener("message", (event) => {
  if (event.data?.type !== "save") return;
  const [reply] = event.ports;
  event.waitUntil(
    save(event.data).then(
      (outcome) => reply.postMessage(outcome),
      (error) =>
        reply.postMessage({
          saved: false,
          storageFull: error.name === "QuotaExceededError",
          message: error.message || String(error),
        }),
    ),
  );
});

/** Saves the widget, the page and a catalog for offline use, replacing an older version of the catalog. */
async function save({ manifestUrl, pageUrl, pageFiles = [], engineFiles = [] }) {
  const cache = await caches.open(CACHE);
  let manifestResponse;
  try {
    manifestResponse = await fetchOk(manifestUrl);
  } catch (error) {
    // Offline, the widget has just loaded the saved copy: nothing to update.
    if (error instanceof TypeError && (await cache.match(manifestUrl))) return { saved: true, offline: true };
    throw error;
  }
  const manifest = await readManifest(manifestResponse.clone());
  if (!manifest) throw new Error(`${manifestUrl} is not a catalog manifest`);
  const added = []; // catalog files this save stores, deleted again if it fails: no cached manifest names them
  try {
    for (const entry of [manifest.model, manifest.index]) {
      const url = new URL(entry.file, manifestUrl).href;
      if (await cache.match(url)) continue;
      const response = await fetchOk(url);
      const actual = await sha256(await response.clone().arrayBuffer());
      if (entry.sha256 && actual !== entry.sha256.toLowerCase()) {
        throw new Error(`${url} is not the file the catalog manifest lists (sha256 ${actual.slice(0, 12)}…)`);
      }
      added.push(url);
      await cache.put(url, response);
    }
    // All fetched before any is stored, so the cached widget files come from one deployment.
    const sameOrigin = (url) => new URL(url).origin === self.location.origin;
    const widgetAndPage = [...SHELL, ...engineFiles.filter(sameOrigin), pageUrl, ...pageFiles];
    const fresh = await Promise.all(widgetAndPage.map(async (url) => [url, await fetchOk(url)]));
    for (const [url, response] of fresh) await cache.put(url, response);
  } catch (error) {
    await Promise.all(added.map((url) => cache.delete(url)));
    throw error;
  }

  const previous = await cache.match(manifestUrl).then((response) => response && readManifest(response));
  await cache.put(manifestUrl, manifestResponse);
  thumbnailFolders = null;
  if (previous) await deleteOlderVersion(cache, manifestUrl, previous, manifest);
  return { saved: true };
}

/** Once a catalog's new version is saved, the files only its older version used are deleted. */
async function deleteOlderVersion(cache, manifestUrl, previous, manifest) {
  const kept = new Set([manifest.model, manifest.index].map((entry) => new URL(entry.file, manifestUrl).href));
  const stale = [previous.model, previous.index]
    .map((entry) => new URL(entry.file, manifestUrl).href)
    .filter((url) => !kept.has(url));
  if (previous.index.file !== manifest.index.file && previous.thumbnails) {
    const folder = new URL(previous.thumbnails, manifestUrl).href;
    for (const request of await cache.keys()) if (request.url.startsWith(folder)) stale.push(request.url);
  }
  await Promise.all(stale.map((url) => cache.delete(url)));
}

async function fetchOk(url) {
  // "no-cache": revalidate with the server, so a save never stores a copy the HTTP cache kept.
  const response = await fetch(url, { cache: "no-cache" });
  if (!response.ok) throw new Error(`could not download ${url}: HTTP ${response.status}`);
  return response;
}

async function sha256(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}
