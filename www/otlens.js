// otlens: photo search for a shop page, running entirely in the shopper's browser.
//
// Usage (one script tag, then the element anywhere on the page):
//   <script type="module" src="otlens.js"></script>
//   <ot-lens src="catalog/manifest.json" max-results="12"></ot-lens>
//
// Attributes (all optional):
//   src          URL of the catalog manifest written by `otlens build-index` / `otlens demo`,
//                relative to the page.                          Default: "catalog/manifest.json"
//   max-results  How many products to show per search (1-100).  Default: 12
//   columns      Number of result columns (1-12).                Default: as many 10rem columns as fit
//   product      A product id: show the products most like it ("similar items" on a product page) instead
//                of a photo search. Loads only the catalog, not the model.      Default: absent
//   theme        "light", "dark", or "auto" (follows the shopper's system setting).  Default: "light"
//   locale       BCP 47 locale for prices (e.g. "ko-KR").       Default: the nearest lang attribute, else the
//                                                                browser's language
//   lang         Language of the widget's text: "ko" (Korean) or anything else (English).
//                                                              Default: the nearest lang attribute (this element's
//                                                              or the page's), else the browser's language
//   label        Text of the file button.                       Default: "Choose a photo" / "사진 선택"
//   gpu          Where the model runs. "auto": on the GPU (WebGPU) when the browser has a hardware adapter
//                that gives the CPU path's embedding and is faster than it, else on the CPU (tract);
//                "always": on any adapter that gives the same embedding (for testing); "off": on the CPU.
//                                                                                    Default: "auto"
//   threads      How many threads the CPU path (tract) runs on. "auto": one per core (at most 4) when the
//                page is cross-origin isolated, which shared wasm memory needs (serve the page with
//                "Cross-Origin-Opener-Policy: same-origin" and "Cross-Origin-Embedder-Policy: require-corp"
//                or "credentialless"; see the README), else one; "off": one.          Default: "auto"
//   offline      Present: keep the widget, the page and the catalog on the device (otlens-sw.js, a service
//                worker, next to this file), so search works offline after one visit. Read the top of
//                otlens-sw.js before turning it on: its folder must contain the page. Default: absent
//
// Events (bubbling, composed), on the element:
//   otlens-ready    detail: {products, model, manifest, backend, threads, threadsReason?, relaxedSimd, ranged}
//                                                          model and catalog loaded and checked (again after a
//                                                          restart); model is null with `product`; backend is
//                                                          "tract": the GPU path starts after; threads: how
//                                                          many tract runs on (and if one, why); relaxedSimd:
//                                                          tract is the build for browsers with relaxed SIMD
//                                                          (fused multiply-adds); ranged: the catalog's lists
//                                                          download as searches reach them (Range requests)
//   otlens-backend  detail: {backend, adapter?, dispatches?, weights?, threads?, reason?}  where the model
//                                                          runs from now on: "webgpu" (with the adapter's name,
//                                                          kernel launches per photo, and weights "f16" or
//                                                          "f32") or "tract" (with its threads and the reason)
//   otlens-results  detail: {results, timings, photo, colour}  results: [{product, score}], best first; photo
//                                                          and colour ({name?, rgb}: the photo's main colour,
//                                                          named as the catalog names colours) are absent for
//                                                          "more like this"; timings: {decode_ms, embed_ms,
//                                                          search_ms, total_ms, backend, lists_ms}
//                                                          (lists_ms: fetching a ranged catalog's lists)
//   otlens-select   detail: {product}                     a result was chosen; cancelable: preventDefault()
//                                                          keeps the link from being followed (for routers)
//   otlens-error    detail: {message, fatal}              fatal: the widget could not start, or its engine
//                                                          kept crashing; it shows a Try again button
//   otlens-offline  detail: {saved, message?}             with `offline`: whether the catalog was saved for
//                                                          offline use (tried again on each load)
//
// Property `backend`: the last otlens-backend detail (or {backend: "tract", threads} before it).
// Property `colourWeight`: how results are matched, 0 (by shape, the default) to 1 (by colour); the
// "Match by" slider sets it. Only catalogs built with colours (otlens build-index does) show the slider.
// Property `region`: the part of the photo searched, [x, y, width, height] as fractions; the crop box over
// the photo sets it (drag it or its corners, or focus it and use the arrow keys, Shift to resize).
// Methods: search(blob) -> Promise<{results, timings}> (also shows them), similar(productId) -> the same for
// "more like this", embed(blob) -> Promise<Float32Array>. Property `filter`: {categories, colours, brands,
// min_price, max_price, in_stock}, each optional; setting it searches again, as the filter controls do.
// One search runs at a time. One given while one runs waits; a newer one replaces the waiting one, whose
// promise rejects with an AbortError. If the engine crashes, the widget restarts it by itself.
// Styling: CSS custom properties --otlens-accent, --otlens-text, --otlens-muted, --otlens-surface,
// --otlens-radius on the element; ::part(button | camera | drop-zone | photo | crop | filters | chip | status |
// offline | results | result | more).
//
// The model, index and wasm are loaded in a Web Worker (otlens-worker.js, next to this file);
// decoding and inference run there, so the page stays responsive. Serve otlens.js,
// otlens-worker.js and pkg/ from the shop's own origin: browsers start workers only from it.

const DEFAULT_SRC = "catalog/manifest.json";
const DEFAULT_MAX_RESULTS = 12;
// A worker that dies (a Rust panic, a wasm trap) is replaced; one that dies this often is given up.
const MAX_RESTARTS = 3;
const RESTART_WINDOW_MS = 60_000;

// What the widget says, in English and Korean. Messages from the engine (why a photo was refused) stay
// in English: they are precise, and a translation of each would drift from the code that raises it.
const STRINGS = {
  en: {
    choosePhoto: "Choose a photo",
    dropHint: "or drop a photo here",
    yourPhoto: "Your photo",
    takePhoto: "Take a photo",
    cropBox: "Search area",
    cropHelp: "Drag the box or its corners to search part of the photo; with the keyboard, arrow keys move it "
      + "and Shift with arrow keys resizes it.",
    wholePhoto: "Whole photo",
    detectedColour: (name) => `Colour: ${name}`,
    onlyColour: (name) => `Show only ${name}`,
    matchBy: "Match by",
    shape: "Shape",
    colourEnd: "Colour",
    blend: (percent) => (percent === 0 ? "shape only" : percent === 100 ? "colour only" : `${percent}% colour`),
    results: "Search results",
    tryAgain: "Try again",
    loading: "Loading visual search…",
    restarting: "Restarting visual search…",
    ready: (products) => `Visual search ready: ${products} products.`,
    restarted: "Visual search could not handle that photo and has restarted; please try another one.",
    couldNotStart: "Visual search could not start",
    stoppedWorking: "Visual search stopped working",
    unavailable: "Visual search is not available; press “Try again” to reload it.",
    queued: "Your photo will be searched as soon as visual search has loaded…",
    searching: "Searching…",
    unusablePhoto: (reason) => `This photo can't be used: ${reason}`,
    searchFailed: (reason) => `The search failed: ${reason}`,
    dropAFile: "Drop a photo file (for example a JPEG from your computer).",
    preparing: "Preparing the model…",
    downloading: (part, amount) => `Downloading ${part}… ${amount} MB`,
    parts: { "search engine": "search engine", model: "model", catalog: "catalog" },
    resultCount: (count, formatted) => (count === 1 ? "1 result" : `${formatted} results`),
    took: (ms) => ` in ${ms} ms`,
    productPhoto: (title) => (title ? `Photo: ${title}` : "Product photo"),
    similarity: (percent) => `Similarity ${percent}%`,
    filters: "Filters",
    category: "Category",
    colour: "Colour",
    brand: "Brand",
    price: (currency) => (currency ? `Price (${currency})` : "Price"),
    minPrice: "From",
    maxPrice: "To",
    inStock: "In stock only",
    clearFilters: "Clear filters",
    noMatches: "No products match these filters.",
    moreLikeThis: "More like this",
    moreLike: (title) => `More like this: ${title}`,
    similarCount: (count, formatted, title) =>
      `${count === 1 ? "1 result" : `${formatted} results`} like “${title}”`,
    soldOut: "Sold out",
    saved: "Saved on this device: photo search also works offline.",
    offline: "You are offline: searching the catalog saved on this device.",
    offlineUnsaved:
      "you are offline, and visual search is not saved on this device; connect to the internet and try again",
    storageFull:
      "Not saved for offline use: this device's storage is full. Search works while you are online, " +
      "and saving is tried again on your next visit.",
    notSaved: (reason) => `Not saved for offline use: ${reason}`,
  },
  ko: {
    choosePhoto: "사진 선택",
    dropHint: "또는 여기에 사진을 끌어다 놓으세요",
    yourPhoto: "내 사진",
    takePhoto: "사진 촬영",
    cropBox: "검색 영역",
    cropHelp: "상자나 모서리를 끌어 사진의 일부만 검색하세요. 키보드에서는 화살표 키로 옮기고 Shift+화살표 키로 "
      + "크기를 바꿉니다.",
    wholePhoto: "사진 전체",
    detectedColour: (name) => `색상: ${name}`,
    onlyColour: (name) => `${name}만 보기`,
    matchBy: "일치 기준",
    shape: "모양",
    colourEnd: "색상",
    blend: (percent) => (percent === 0 ? "모양만" : percent === 100 ? "색상만" : `색상 ${percent}%`),
    results: "검색 결과",
    tryAgain: "다시 시도",
    loading: "이미지 검색을 불러오는 중…",
    restarting: "이미지 검색을 다시 시작하는 중…",
    ready: (products) => `이미지 검색 준비 완료: 상품 ${products}개.`,
    restarted: "이미지 검색이 이 사진을 처리하지 못해 다시 시작했습니다. 다른 사진으로 시도해 주세요.",
    couldNotStart: "이미지 검색을 시작할 수 없습니다",
    stoppedWorking: "이미지 검색이 작동을 멈췄습니다",
    unavailable: "이미지 검색을 사용할 수 없습니다. “다시 시도”를 눌러 다시 불러오세요.",
    queued: "이미지 검색이 준비되는 대로 사진을 검색합니다…",
    searching: "검색 중…",
    unusablePhoto: (reason) => `이 사진은 사용할 수 없습니다: ${reason}`,
    searchFailed: (reason) => `검색하지 못했습니다: ${reason}`,
    dropAFile: "사진 파일을 놓아 주세요(예: 컴퓨터의 JPEG 파일).",
    preparing: "모델을 준비하는 중…",
    downloading: (part, amount) => `${part} 내려받는 중… ${amount} MB`,
    parts: { "search engine": "검색 엔진", model: "모델", catalog: "카탈로그" },
    resultCount: (count, formatted) => `결과 ${formatted}개`,
    took: (ms) => ` · ${ms} ms`,
    productPhoto: (title) => (title ? `사진: ${title}` : "상품 사진"),
    similarity: (percent) => `유사도 ${percent}%`,
    filters: "필터",
    category: "카테고리",
    colour: "색상",
    brand: "브랜드",
    price: (currency) => (currency ? `가격 (${currency})` : "가격"),
    minPrice: "최저",
    maxPrice: "최고",
    inStock: "재고 있는 상품만",
    clearFilters: "필터 해제",
    noMatches: "필터에 맞는 상품이 없습니다.",
    moreLikeThis: "비슷한 상품",
    moreLike: (title) => `비슷한 상품: ${title}`,
    similarCount: (count, formatted, title) => `“${title}”와(과) 비슷한 결과 ${formatted}개`,
    soldOut: "품절",
    saved: "이 기기에 저장됨: 오프라인에서도 사진으로 검색할 수 있습니다.",
    offline: "오프라인 상태입니다: 이 기기에 저장된 카탈로그에서 검색합니다.",
    offlineUnsaved: "오프라인 상태이고 이미지 검색이 이 기기에 저장되어 있지 않습니다. 인터넷에 연결한 뒤 다시 시도해 주세요",
    storageFull:
      "오프라인용으로 저장하지 못했습니다: 기기의 저장 공간이 가득 찼습니다. 온라인에서는 검색할 수 있으며, " +
      "다음 방문 때 다시 저장합니다.",
    notSaved: (reason) => `오프라인용으로 저장하지 못했습니다: ${reason}`,
  },
};

// One service worker registration per page, and one save per catalog, however many widgets show it and
// however often an engine restarts. A save that failed, or found the shopper offline, is tried again.
let serviceWorker = null;
const saves = new Map(); // manifest URL -> Promise of {saved, offline?, storageFull?, message?}

function saveForOffline(manifestUrl, engineFiles) {
  if (!saves.has(manifestUrl)) {
    const outcome = askServiceWorkerToSave(manifestUrl, engineFiles).catch((error) => ({
      saved: false,
      message: error.message || String(error),
    }));
    saves.set(manifestUrl, outcome);
    outcome.then(({ saved, offline }) => {
      if (!saved || offline) saves.delete(manifestUrl);
    });
  }
  return saves.get(manifestUrl);
}

/**
 * Asks otlens-sw.js to keep the widget, this page and a catalog, and resolves with its answer. `engineFiles`: the
 * files of the engine build that runs (one or several threads, plain or relaxed SIMD), so that it runs offline too.
 */
async function askServiceWorkerToSave(manifestUrl, engineFiles) {
  if (!("serviceWorker" in navigator)) throw new Error("this browser has no service workers");
  serviceWorker ??= navigator.serviceWorker.register(new URL("otlens-sw.js", import.meta.url));
  const registration = await serviceWorker;
  // Browsers may turn service workers off (private windows, policies, automation).
  if (!registration) throw new Error("this browser does not allow service workers here");
  // Waiting for a worker that will never control this page would wait forever.
  if (!location.href.startsWith(registration.scope)) {
    const scope = registration.scope;
    throw new Error(`otlens-sw.js controls only pages under ${scope}; serve it from this page's folder or above`);
  }
  const { active } = await navigator.serviceWorker.ready;
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = ({ data }) => resolve(data);
    const pageUrl = location.href.split("#")[0];
    // What the page needs to look right offline too: its style sheets, icons and web app manifest.
    const selector = 'link[rel~="stylesheet"], link[rel~="icon"], link[rel="manifest"]';
    const links = document.querySelectorAll(selector);
    const pageFiles = [...links].map((link) => link.href).filter((href) => href.startsWith(location.origin));
    active.postMessage({ type: "save", manifestUrl, pageUrl, pageFiles, engineFiles }, [channel.port2]);
  });
}

// A constructed style sheet, not a <style> element: a page whose Content-Security-Policy allows no
// inline styles still styles the widget.
// theme="dark" (and theme="auto" on a dark system): light text on the page's dark background.
const DARK_COLOURS = `
    --accent: var(--otlens-accent, #a8c7fa);
    --on-accent: #062e6f;
    --text: var(--otlens-text, #e3e3e3);
    --muted: var(--otlens-muted, #c4c7c5);
    --surface: var(--otlens-surface, #1f1f1f);
    --border: #8e918f;
    --border-soft: #444746;
    --image-background: #2d2f31;
    --error: #f2b8b5;
    color-scheme: dark;`;
const STYLES = new CSSStyleSheet();
STYLES.replaceSync(`
  :host {
    --accent: var(--otlens-accent, #0b57d0);
    --on-accent: #ffffff;
    --text: var(--otlens-text, #1f1f1f);
    --muted: var(--otlens-muted, #5f6368);
    --surface: var(--otlens-surface, #ffffff);
    --radius: var(--otlens-radius, 12px);
    --border: #747775;
    --border-soft: #e3e3e3;
    --image-background: #f4f4f4;
    --error: #b3261e;
    display: block;
    color: var(--text);
    font: inherit;
  }
  :host([theme="dark"]) {${DARK_COLOURS} }
  @media (prefers-color-scheme: dark) { :host([theme="auto"]) {${DARK_COLOURS} } }
  [hidden] { display: none !important; }
  .visually-hidden {
    position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; border: 0;
    overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap;
  }
  .drop {
    display: flex; flex-wrap: wrap; align-items: center; gap: 1rem;
    padding: 1.25rem; border: 2px dashed var(--border); border-radius: var(--radius);
    background: var(--surface); transition: border-color .15s, background .15s;
  }
  .drop.over { border-color: var(--accent); background: color-mix(in srgb, var(--accent) 8%, var(--surface)); }
  .button {
    display: inline-flex; align-items: center; gap: .5rem; cursor: pointer;
    padding: .7rem 1.2rem; border-radius: 999px; border: 0;
    background: var(--accent); color: var(--on-accent); font: inherit; font-weight: 600;
  }
  .button:hover { filter: brightness(1.1); }
  input:focus-visible + .button, .button:focus-visible { outline: 3px solid var(--accent); outline-offset: 3px; }
  .hint { margin: 0; color: var(--muted); }
  .camera { background: var(--surface); color: var(--accent); border: 2px solid var(--accent); }
  .query { display: flex; flex-wrap: wrap; align-items: flex-start; gap: .75rem 1.25rem; margin: 1rem 0 0; }
  .query figcaption { display: flex; flex-direction: column; align-items: flex-start; gap: .5rem; flex: 1 1 12rem;
    color: var(--muted); font-size: .9em; }
  .frame { position: relative; max-width: 100%; line-height: 0; touch-action: none; user-select: none; }
  .frame canvas { display: block; max-width: 100%; height: auto; max-height: 240px; }
  .crop {
    position: absolute; box-sizing: border-box; cursor: move; border: 2px solid #fff;
    outline: 2px solid #000; box-shadow: 0 0 0 100vmax rgb(0 0 0 / .35);
  }
  .frame { overflow: hidden; } /* the box's shadow dims the rest of the photo, and only the photo */
  .crop:focus-visible { border-color: var(--accent); outline: 3px solid var(--accent); outline-offset: 2px; }
  .handle {
    position: absolute; width: 22px; height: 22px; box-sizing: border-box; /* inside the box: never clipped */
    border: 2px solid #000; background: #fff; border-radius: 50%;
  }
  .handle[data-corner="nw"] { left: 0; top: 0; cursor: nwse-resize; }
  .handle[data-corner="ne"] { right: 0; top: 0; cursor: nesw-resize; }
  .handle[data-corner="sw"] { left: 0; bottom: 0; cursor: nesw-resize; }
  .handle[data-corner="se"] { right: 0; bottom: 0; cursor: nwse-resize; }
  .crop-help { margin: 0; }
  .whole { font: inherit; cursor: pointer; padding: .3rem .8rem; border-radius: 999px; border: 1px solid var(--border);
    background: var(--surface); color: var(--text); }
  .whole:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
  .blend-ends { display: flex; align-items: center; gap: .5rem; font-size: .9em; }
  .blend input { accent-color: var(--accent); width: 9rem; }
  .loading { margin: .75rem 0 0; color: var(--muted); font-size: .9em; }
  .loading progress { display: block; width: 100%; height: .5rem; margin-top: .3rem; accent-color: var(--accent); }
  .status-row { display: flex; align-items: center; gap: .75rem; margin: .75rem 0; }
  .status { min-height: 1.4em; margin: 0; font-weight: 600; }
  .status.error { color: var(--error); }
  .timing { margin-left: .5rem; color: var(--muted); font-weight: 400; font-size: .85em; }
  .retry { font: inherit; cursor: pointer; }
  .offline { margin: -.25rem 0 .75rem; color: var(--muted); font-size: .85em; }
  .filters { display: flex; flex-wrap: wrap; align-items: flex-end; gap: .75rem 1.5rem; margin: 1rem 0 0; }
  .filters fieldset { border: 0; margin: 0; padding: 0; min-width: 0; }
  .filters legend { padding: 0; margin-bottom: .35rem; color: var(--muted); font-size: .85em; font-weight: 600; }
  .chip-list { display: flex; flex-wrap: wrap; gap: .4rem; }
  .chip, .more {
    display: inline-flex; align-items: center; gap: .35rem; cursor: pointer; font: inherit; font-size: .9em;
    padding: .35rem .8rem; border-radius: 999px; border: 1px solid var(--border);
    background: var(--surface); color: var(--text);
  }
  .chip[aria-pressed="true"] { background: var(--accent); border-color: var(--accent); color: var(--on-accent); }
  .swatch { width: .9em; height: .9em; border-radius: 50%; border: 1px solid var(--border); }
  .price-inputs { display: flex; gap: .5rem; }
  .price-inputs label { display: flex; flex-direction: column; gap: .15rem; font-size: .85em; color: var(--muted); }
  .price-inputs input, .stock input { accent-color: var(--accent); }
  .price-inputs input {
    width: 7rem; font: inherit; font-size: 1.1em; padding: .35rem .5rem; border: 1px solid var(--border);
    border-radius: 8px; background: var(--surface); color: var(--text);
  }
  .stock { display: flex; align-items: center; gap: .4rem; padding: .35rem 0; }
  .clear {
    font: inherit; cursor: pointer; padding: .35rem 0; border: 0; background: none;
    color: var(--accent); text-decoration: underline;
  }
  .chip:focus-visible, .more:focus-visible, .clear:focus-visible, .filters input:focus-visible {
    outline: 3px solid var(--accent); outline-offset: 2px;
  }
  .results {
    list-style: none; margin: 0; padding: 0;
    display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(10rem, 1fr));
  }
  .results.columns { grid-template-columns: repeat(var(--columns), minmax(0, 1fr)); }
  .results:focus { outline: none; }
  .results[aria-busy="true"] { opacity: .5; }
  .result {
    display: flex; flex-direction: column; gap: .5rem; height: 100%; box-sizing: border-box;
    padding: .6rem; border-radius: var(--radius); background: var(--surface); border: 1px solid var(--border-soft);
  }
  .result:has(a.link:hover) { border-color: var(--accent); }
  .link { display: flex; flex-direction: column; gap: .2rem; flex: 1; color: inherit; text-decoration: none; }
  a.link:focus-visible { outline: 3px solid var(--accent); outline-offset: 4px; border-radius: 4px; }
  .more { align-self: flex-start; font-size: .85em; padding: .3rem .7rem; }
  .result img {
    width: 100%; aspect-ratio: 1; object-fit: contain; border-radius: calc(var(--radius) - 4px);
    background: var(--image-background); margin-bottom: .3rem;
  }
  .sold-out { color: var(--error); font-size: .85em; font-weight: 600; }
  .title { font-weight: 600; line-height: 1.25; }
  .brand, .meta { color: var(--muted); font-size: .85em; }
  .price { font-weight: 700; }
  .score { margin-top: auto; color: var(--muted); font-size: .8em; }
`);

const TEMPLATE = document.createElement("template");
TEMPLATE.innerHTML = `
<div class="drop" part="drop-zone">
  <input type="file" id="file" accept="image/*" class="visually-hidden">
  <label for="file" class="button" part="button">
    <svg aria-hidden="true" width="20" height="20" viewBox="0 0 24 24" fill="none" stroke="currentColor"
      stroke-width="2" stroke-linecap="round" stroke-linejoin="round">
      <path d="M4 8h3l2-3h6l2 3h3v11H4z"/><circle cx="12" cy="13" r="3.5"/>
    </svg>
    <span class="label"></span>
  </label>
  <input type="file" id="camera" accept="image/*" capture="environment" class="visually-hidden" hidden>
  <label for="camera" class="button camera" part="camera" hidden><span class="camera-label"></span></label>
  <p class="hint"></p>
</div>
<figure class="query" part="photo" hidden>
  <div class="frame">
    <canvas width="240" height="240"></canvas>
    <div class="crop" part="crop" tabindex="0" role="group" aria-describedby="crop-help">
      <span class="handle" data-corner="nw"></span><span class="handle" data-corner="ne"></span>
      <span class="handle" data-corner="sw"></span><span class="handle" data-corner="se"></span>
    </div>
  </div>
  <figcaption>
    <span class="photo-title"></span>
    <span class="crop-help" id="crop-help"></span>
    <button type="button" class="whole" hidden></button>
    <button type="button" class="chip detected" part="chip" hidden><span class="swatch"></span><span></span></button>
  </figcaption>
</figure>
<div class="loading">
  <label for="progress" class="progress-text"></label>
  <progress id="progress" max="1" value="0"></progress>
</div>
<div class="filters" part="filters" role="group" hidden>
  <fieldset class="categories"><legend></legend><div class="chip-list"></div></fieldset>
  <fieldset class="colours"><legend></legend><div class="chip-list"></div></fieldset>
  <fieldset class="brands"><legend></legend><div class="chip-list"></div></fieldset>
  <fieldset class="prices">
    <legend></legend>
    <div class="price-inputs">
      <label><span class="min-label"></span><input type="number" class="min-price" min="0" step="any"
        inputmode="decimal"></label>
      <label><span class="max-label"></span><input type="number" class="max-price" min="0" step="any"
        inputmode="decimal"></label>
    </div>
  </fieldset>
  <fieldset class="blend" hidden>
    <legend></legend>
    <span class="blend-ends"><span class="shape-end" aria-hidden="true"></span><input type="range" class="blend-input"
      min="0" max="100" step="10" value="0"><span class="colour-end" aria-hidden="true"></span></span>
  </fieldset>
  <label class="stock"><input type="checkbox" class="in-stock"><span></span></label>
  <button type="button" class="clear"></button>
</div>
<div class="status-row">
  <p class="status" part="status" role="status"
    aria-live="polite"><span class="message"></span><span class="timing"></span></p>
  <button type="button" class="retry" hidden></button>
</div>
<p class="offline" part="offline" hidden></p>
<ul class="results" part="results" tabindex="-1"></ul>
`;

const megabytes = (bytes) => (bytes / 1e6).toFixed(1);

/** An engine message as the end of a sentence: "the file is empty" -> "the file is empty." */
const sentence = (message) => {
  const trimmed = message.trim();
  return /[.!?]$/.test(trimmed) ? trimmed : `${trimmed}.`;
};

// The crop box: its smallest side and keyboard step (fractions of the photo), and how long after the last
// key press the region is searched.
const MIN_CROP = 0.1;
const CROP_STEP = 0.05;
const CROP_DELAY_MS = 400;
const WHOLE_PHOTO = [0, 0, 1, 1];

const clamp = (value, low, high) => Math.min(Math.max(value, low), high);

/** A crop box [x, y, width, height] moved by (dx, dy), staying inside the photo. */
function movedBox([x, y, width, height], dx, dy) {
  return [clamp(x + dx, 0, 1 - width), clamp(y + dy, 0, 1 - height), width, height];
}

/** A crop box with one corner ("nw", "ne", "sw" or "se") moved by (dx, dy); never below MIN_CROP a side. */
function resizedBox([x, y, width, height], corner, dx, dy) {
  let [left, top, right, bottom] = [x, y, x + width, y + height];
  if (corner.includes("w")) left = clamp(left + dx, 0, right - MIN_CROP);
  else right = clamp(right + dx, left + MIN_CROP, 1);
  if (corner.includes("n")) top = clamp(top + dy, 0, bottom - MIN_CROP);
  else bottom = clamp(bottom + dy, top + MIN_CROP, 1);
  return [left, top, right - left, bottom - top];
}

const isWholePhoto = (box) => box.every((value, i) => Math.abs(value - WHOLE_PHOTO[i]) < 1e-3);

const MAX_CHIPS = 12; // the most common values; a long tail of chips would bury the results
const PRICE_DELAY_MS = 400; // a price is searched once the shopper pauses typing

// The two price fields: their input, the filter's bound, and the end of the catalog's range they show.
const PRICE_FIELDS = [
  { input: ".min-price", bound: "min_price", end: "min" },
  { input: ".max-price", bound: "max_price", end: "max" },
];

/** A price bound from a field or a filter: a number, or undefined (no bound) for "" and anything invalid. */
const parsePrice = (value) =>
  value == null || value === "" || !Number.isFinite(Number(value)) ? undefined : Number(value);

/** A filter in the widget's hands: sets for the chips, numbers or undefined for the prices. */
function toFilterState(filter = {}) {
  const values = (list) => new Set(Array.isArray(list) ? list.map(String) : []);
  return {
    categories: values(filter.categories),
    colours: values(filter.colours),
    brands: values(filter.brands),
    min_price: parsePrice(filter.min_price),
    max_price: parsePrice(filter.max_price),
    in_stock: Boolean(filter.in_stock),
  };
}

/** Only http(s) links and images: product data comes from a file the page does not control. */
function safeUrl(url, base) {
  if (!url) return null;
  try {
    const resolved = new URL(url, base);
    return resolved.protocol === "http:" || resolved.protocol === "https:" ? resolved.href : null;
  } catch {
    return null;
  }
}

class OtLens extends HTMLElement {
  static observedAttributes = ["src", "label", "lang", "product", "columns"];

  #root;
  #worker = null;
  #state = "idle"; // idle | loading | ready | failed | disconnected
  #manifestUrl = null;
  #nextId = 1;
  #pending = new Map();
  #queuedPhoto = null;
  #latestSearch = 0;
  #inFlight = null; // the search request the worker is running
  #waiting = null; // {photo, resolve, reject}: the newest photo given while one was running
  #restarts = []; // times of automatic restarts, for MAX_RESTARTS
  #restarting = false; // the worker being loaded replaces one that crashed
  #previews = 0; // photos shown so far: a slow decode must not replace a newer photo's preview
  #query = null; // what the results are for, searched again when the filter changes: {photo} or {product, title}
  #filter = toFilterState();
  #facets = null; // what the catalog can be filtered by (from the engine)
  #backend = { backend: "tract" }; // where the model runs: the last "backend" detail from the worker
  #cropBox = WHOLE_PHOTO; // the crop box as drawn, [x, y, width, height] in fractions of the photo
  #region = WHOLE_PHOTO; // the region searched
  #cropTimer = 0;
  #colourWeight = 0; // 0: match by shape, 1: by colour
  #hasColours = false; // the catalog stores its products' colours
  #photoColour = null; // {name?, rgb} of the searched photo
  #priceTimer = 0;
  #readyPromise;
  #resolveReady;
  #rejectReady;

  constructor() {
    super();
    this.#root = this.attachShadow({ mode: "open" });
    this.#root.adoptedStyleSheets = [STYLES];
    this.#root.append(TEMPLATE.content.cloneNode(true));
    this.#newReadyPromise();
    for (const input of this.#root.querySelectorAll('input[type="file"]')) {
      input.addEventListener("change", () => {
        if (input.files.length) this.#searchFromUi(input.files[0]);
        // Choosing the same file again must search again.
        input.value = "";
      });
    }
    // Phones and tablets get a camera button too; on a desktop it would open the same file picker.
    if (matchMedia("(pointer: coarse)").matches) {
      this.#$("#camera").hidden = false;
      this.#$(".camera").hidden = false;
    }
    this.#wireCrop();
    this.#$(".whole").addEventListener("click", () => {
      this.region = WHOLE_PHOTO;
      this.#$(".crop").focus(); // the button just pressed is hidden now
    });
    this.#$(".detected").addEventListener("click", () => {
      const name = this.#photoColour?.name;
      if (!name) return;
      if (this.#filter.colours.has(name)) this.#filter.colours.delete(name);
      else this.#filter.colours.add(name);
      this.#renderFilters();
      this.#showPhotoColour();
      this.#searchAgain();
    });
    const blend = this.#$(".blend-input");
    blend.addEventListener("input", () => blend.setAttribute("aria-valuetext", this.#text.blend(Number(blend.value))));
    blend.addEventListener("change", () => {
      this.#colourWeight = Number(blend.value) / 100;
      this.#searchAgain();
    });
    this.#$(".retry").addEventListener("click", () => this.#start());
    this.#wireFilters();
    this.#wireDropZone(this.#$(".drop"));
    this.addEventListener("paste", (event) => {
      const file = Array.from(event.clipboardData?.files ?? [])[0];
      if (file) {
        event.preventDefault();
        this.#searchFromUi(file);
      }
    });
    this.#renderText();
  }

  connectedCallback() {
    this.#renderText(); // the page's language is known only once the element is in it
    this.#applyColumns();
    if (this.#state === "idle" || this.#state === "disconnected") this.#start();
  }

  disconnectedCallback() {
    // A removed widget frees its worker and the model's memory; it reloads if put back.
    this.#stop();
    this.#state = "disconnected";
  }

  attributeChangedCallback(name, oldValue, newValue) {
    if (name === "label" || name === "lang") this.#renderText();
    if (name === "columns") this.#applyColumns();
    if (oldValue === newValue || !this.isConnected || this.#state === "idle") return;
    // With a product, the widget needs no model; without one it does: a mode change reloads.
    const modeChanged = name === "product" && (oldValue === null || newValue === null);
    if (name === "src" || modeChanged) return this.#start();
    if (name === "product" && this.#state === "ready") this.similar(newValue).catch(() => {});
  }

  /** Resolves with {products, model, manifest} once the widget can search. */
  get ready() {
    return this.#readyPromise;
  }

  get backend() {
    return this.#backend;
  }

  /** How results are matched: 0 (by shape) to 1 (by colour). Setting it searches again. */
  get colourWeight() {
    return this.#colourWeight;
  }

  set colourWeight(value) {
    this.#colourWeight = clamp(Number(value) || 0, 0, 1);
    this.#renderBlend();
    this.#searchAgain();
  }

  /** The searched part of the photo, [x, y, width, height] in fractions. Setting it searches that part. */
  get region() {
    return [...this.#region];
  }

  set region(value) {
    const [x, y, width, height] = Array.isArray(value) && value.length === 4 ? value.map(Number) : WHOLE_PHOTO;
    // Inside the photo and at least MIN_CROP a side; a box running off the photo is cut at its edge.
    const [left, top] = [clamp(x, 0, 1 - MIN_CROP), clamp(y, 0, 1 - MIN_CROP)];
    const box = [left, top, clamp(width, MIN_CROP, 1 - left), clamp(height, MIN_CROP, 1 - top)];
    this.#cropBox = box.every(Number.isFinite) ? box : WHOLE_PHOTO;
    this.#drawCrop();
    this.#searchRegion();
  }

  get maxResults() {
    const value = Number.parseInt(this.getAttribute("max-results") ?? "", 10);
    return Number.isFinite(value) ? Math.min(Math.max(value, 1), 100) : DEFAULT_MAX_RESULTS;
  }

  /** Searches with a photo (Blob or File), shows the results and resolves with them. */
  async search(photo) {
    await this.ready;
    this.#showPreview(photo);
    return this.#run({ type: "search", photo }, { photo });
  }

  /** The crop box moved: its region of the open photo is searched, unless it is the one already shown. */
  #searchRegion() {
    const box = this.#cropBox;
    if (box.every((value, i) => value === this.#region[i])) return;
    this.#region = box;
    this.#$(".whole").hidden = isWholePhoto(box);
    if (this.#state !== "ready" || !this.#query?.photo) return;
    this.#run({ type: "region", region: isWholePhoto(box) ? undefined : box }, this.#query).catch(() => {});
  }

  #wireCrop() {
    const box = this.#$(".crop");
    const frame = this.#$(".frame");
    let drag = null;
    box.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      box.setPointerCapture(event.pointerId);
      const { corner } = event.target.dataset;
      drag = { corner, x: event.clientX, y: event.clientY, start: this.#cropBox, size: frame.getBoundingClientRect() };
    });
    box.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const dx = (event.clientX - drag.x) / drag.size.width;
      const dy = (event.clientY - drag.y) / drag.size.height;
      this.#cropBox = drag.corner ? resizedBox(drag.start, drag.corner, dx, dy) : movedBox(drag.start, dx, dy);
      this.#drawCrop();
    });
    const drop = () => {
      if (!drag) return;
      drag = null;
      this.#searchRegion();
    };
    box.addEventListener("pointerup", drop);
    box.addEventListener("pointercancel", drop);
    box.addEventListener("keydown", (event) => {
      const step = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[event.key];
      if (!step) return;
      event.preventDefault();
      const [dx, dy] = step.map((direction) => direction * CROP_STEP);
      this.#cropBox = event.shiftKey ? resizedBox(this.#cropBox, "se", dx, dy) : movedBox(this.#cropBox, dx, dy);
      this.#drawCrop();
      clearTimeout(this.#cropTimer);
      this.#cropTimer = setTimeout(() => this.#searchRegion(), CROP_DELAY_MS);
    });
  }

  #drawCrop() {
    const [x, y, width, height] = this.#cropBox;
    const box = this.#$(".crop");
    const percent = (fraction) => `${(fraction * 100).toFixed(2)}%`;
    box.style.left = percent(x); // the CSSOM, which a style-src policy does not block
    box.style.top = percent(y);
    box.style.width = percent(width);
    box.style.height = percent(height);
    const size = isWholePhoto(this.#cropBox)
      ? this.#text.wholePhoto
      : `${Math.round(width * 100)}% × ${Math.round(height * 100)}%`;
    box.setAttribute("aria-label", `${this.#text.cropBox}: ${size}`);
  }

  /** The searched photo's colour as a chip; pressing it shows only products of that colour. */
  #showPhotoColour() {
    const chip = this.#$(".detected");
    const colour = this.#photoColour;
    chip.hidden = !colour?.name;
    if (chip.hidden) return;
    chip.querySelector(".swatch").style.background = `rgb(${colour.rgb.join(" ")})`;
    chip.lastElementChild.textContent = this.#text.detectedColour(colour.name);
    const filtering = this.#filter.colours.has(colour.name);
    chip.setAttribute("aria-pressed", String(filtering));
    chip.title = this.#text.onlyColour(colour.name);
  }

  #renderBlend() {
    const text = this.#text;
    const fieldset = this.#$(".blend");
    fieldset.hidden = !this.#hasColours;
    fieldset.querySelector("legend").textContent = text.matchBy;
    this.#$(".shape-end").textContent = text.shape;
    this.#$(".colour-end").textContent = text.colourEnd;
    const input = this.#$(".blend-input");
    input.setAttribute("aria-label", text.matchBy);
    input.value = String(Math.round(this.#colourWeight * 100));
    input.setAttribute("aria-valuetext", text.blend(Number(input.value)));
  }

  /** Shows the products most like the one with this id ("more like this") and resolves with them. */
  async similar(productId) {
    await this.ready;
    this.#hidePreview();
    return this.#run({ type: "similar", product: String(productId) }, { product: String(productId) });
  }

  /** The filter searches use: {categories, colours, brands, min_price, max_price, in_stock}. */
  get filter() {
    const filter = this.#filter;
    return {
      categories: [...filter.categories],
      colours: [...filter.colours],
      brands: [...filter.brands],
      min_price: filter.min_price,
      max_price: filter.max_price,
      in_stock: filter.in_stock,
    };
  }

  set filter(value) {
    this.#filter = toFilterState(value ?? {});
    this.#renderFilters();
    this.#searchAgain();
  }

  /** The embedding of a photo, as the search computes it. */
  async embed(photo) {
    await this.ready;
    return (await this.#request({ type: "embed", photo })).embedding;
  }

  #$(selector) {
    return this.#root.querySelector(selector);
  }

  /** The strings of the widget's language: `lang` on it or an ancestor (ko or en), else the browser's. */
  get #text() {
    return this.#language().toLowerCase().startsWith("ko") ? STRINGS.ko : STRINGS.en;
  }

  /** The nearest lang attribute (this element's or an ancestor's), else the browser's language. */
  #language() {
    return this.closest("[lang]")?.lang || navigator.language || "en";
  }

  #renderText() {
    const text = this.#text;
    this.#renderFilters();
    this.#$(".label").textContent = this.getAttribute("label") || text.choosePhoto;
    this.#$(".hint").textContent = text.dropHint;
    this.#$(".photo-title").textContent = text.yourPhoto;
    this.#$(".camera-label").textContent = text.takePhoto;
    this.#$(".crop-help").textContent = text.cropHelp;
    this.#$(".whole").textContent = text.wholePhoto;
    this.#renderBlend();
    this.#drawCrop();
    this.#showPhotoColour();
    this.#$(".retry").textContent = text.tryAgain;
    this.#$(".results").setAttribute("aria-label", text.results);
    if (this.#state === "idle") this.#$(".progress-text").textContent = text.loading;
  }

  #newReadyPromise() {
    this.#readyPromise = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // Nobody need await `ready`: a failed start is shown in the widget and sent as otlens-error.
    this.#readyPromise.catch(() => {});
  }

  #start() {
    this.#stop();
    if (this.#state !== "idle") {
      this.#rejectReady(new Error("visual search was restarted"));
      this.#newReadyPromise();
    }
    this.#state = "loading";
    this.#manifestUrl = new URL(this.getAttribute("src") || DEFAULT_SRC, document.baseURI).href;
    this.#$(".loading").hidden = false;
    this.#$(".retry").hidden = true;
    this.#setStatus(this.#restarting ? this.#text.restarting : this.#text.loading);
    this.#worker = new Worker(new URL("otlens-worker.js", import.meta.url), { type: "module" });
    this.#worker.onmessage = ({ data }) => this.#onWorkerMessage(data);
    this.#worker.onerror = (event) => {
      event.preventDefault();
      if (this.#state === "ready") return this.#restart(event.message || "the search worker stopped");
      this.#fail(event.message || "the search worker could not start (are otlens-worker.js and pkg/ deployed?)");
    };
    const productMode = this.hasAttribute("product");
    this.#$(".drop").hidden = productMode;
    this.#worker.postMessage({
      type: "load",
      manifestUrl: this.#manifestUrl,
      withModel: !productMode,
      gpu: ["always", "off"].includes(this.getAttribute("gpu")) ? this.getAttribute("gpu") : "auto",
      threads: this.getAttribute("threads") === "off" ? "off" : "auto",
    });
  }

  #stop() {
    this.#worker?.terminate();
    this.#worker = null;
    this.#inFlight = null;
    this.#waiting?.reject(new Error("the search was cancelled"));
    this.#waiting = null;
    for (const { reject } of this.#pending.values()) reject(new Error("the search was cancelled"));
    this.#pending.clear();
  }

  /** The engine died while searching: a fresh worker takes over, unless it keeps dying. */
  #restart(message) {
    const now = performance.now();
    this.#restarts = this.#restarts.filter((time) => now - time < RESTART_WINDOW_MS);
    if (this.#restarts.length >= MAX_RESTARTS) return this.#fail(message, this.#text.stoppedWorking);
    this.#restarts.push(now);
    this.#emit("otlens-error", { message, fatal: false });
    this.#query = null; // the new engine has not seen the photo
    this.#$(".results").replaceChildren();
    this.#$(".results").removeAttribute("aria-busy");
    this.#restarting = true;
    this.#start();
  }

  #fail(message, heading = this.#text.couldNotStart) {
    // Offline, every download fails; the cause the shopper can act on is the connection.
    if (this.#state === "loading" && !navigator.onLine) message = this.#text.offlineUnsaved;
    this.#stop();
    this.#state = "failed";
    this.#queuedPhoto = null;
    this.#restarting = false;
    this.#$(".loading").hidden = true;
    this.#$(".results").removeAttribute("aria-busy");
    this.#setStatus(`${heading}: ${sentence(message)}`, { error: true });
    this.#rejectReady(new Error(message));
    this.#$(".retry").hidden = false;
    this.#emit("otlens-error", { message, fatal: true });
  }

  /** Runs a search request, shows its results unless a newer one was started, and resolves with them. */
  async #run(message, query) {
    const id = ++this.#latestSearch;
    this.#query = query;
    this.#setStatus(this.#text.searching);
    this.#$(".results").setAttribute("aria-busy", "true");
    try {
      const response = await this.#searchLatest(message);
      if (id === this.#latestSearch) this.#showResults(response, query);
      return { results: response.results, timings: response.timings };
    } catch (error) {
      // After a fatal error the status already says that the widget must be reloaded.
      if (id === this.#latestSearch && this.#state === "ready") {
        const reason = sentence(error.message);
        this.#setStatus(query.photo ? this.#text.unusablePhoto(reason) : this.#text.searchFailed(reason), {
          error: true,
        });
        // Results of the previous search under this message would look like answers to this one.
        this.#$(".results").replaceChildren();
        this.#$(".results").removeAttribute("aria-busy");
        this.#query = null;
      }
      throw error;
    }
  }

  /** The filter changed: the shown results are searched again with it (the photo is not decoded again). */
  #searchAgain() {
    this.#$(".clear").hidden = !this.#filterIsSet();
    // A search that has not been sent yet will use the new filter anyway.
    if (this.#state !== "ready" || !this.#query || (this.#waiting && this.#waiting.message.type !== "refine")) {
      return;
    }
    const query = this.#query;
    const message = query.photo ? { type: "refine" } : { type: "similar", product: query.product };
    this.#run(message, query).catch(() => {});
  }

  /**
   * Sends a search to the worker, one at a time: one given while another runs waits, and a newer one
   * replaces it, so rapid uploads never queue up work whose results nobody will see. The filter is read
   * when the request is sent.
   */
  #searchLatest(message) {
    if (this.#inFlight) {
      this.#waiting?.reject(new DOMException("a newer search replaced this one", "AbortError"));
      return new Promise((resolve, reject) => (this.#waiting = { message, resolve, reject }));
    }
    const colourWeight = this.#colourWeight;
    const request = this.#request({ ...message, k: this.maxResults, filter: this.filter, colourWeight });
    this.#inFlight = request;
    const next = () => {
      if (this.#inFlight !== request) return; // the worker was stopped meanwhile
      this.#inFlight = null;
      const waiting = this.#waiting;
      this.#waiting = null;
      if (waiting) this.#searchLatest(waiting.message).then(waiting.resolve, waiting.reject);
    };
    request.then(next, next);
    return request;
  }

  #request(message) {
    if (!this.#worker) return Promise.reject(new Error("visual search is not running"));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...message, id });
    });
  }

  #onWorkerMessage(data) {
    switch (data.type) {
      case "progress":
        return this.#showProgress(data);
      case "ready":
        this.#state = "ready";
        this.#$(".loading").hidden = true;
        this.#setStatus(
          this.#restarting ? this.#text.restarted : this.#text.ready(data.products.toLocaleString(this.#locale())),
        );
        this.#restarting = false;
        this.#facets = data.facets;
        this.#hasColours = data.colours;
        this.#renderFilters();
        this.#renderBlend();
        this.#backend = { backend: data.backend, threads: data.threads };
        this.#resolveReady({ products: data.products, model: data.model, manifest: data.manifest });
        this.#emit("otlens-ready", {
          products: data.products,
          model: data.model,
          manifest: data.manifest,
          backend: data.backend,
          threads: data.threads,
          threadsReason: data.threadsReason,
          relaxedSimd: data.relaxedSimd,
          ranged: data.ranged,
        });
        if (this.hasAttribute("product")) this.similar(this.getAttribute("product")).catch(() => {});
        if (this.#queuedPhoto) {
          const photo = this.#queuedPhoto;
          this.#queuedPhoto = null;
          this.#searchFromUi(photo);
        }
        if (this.hasAttribute("offline")) this.#showSaved(this.#manifestUrl, data.engineFiles);
        return;
      case "backend": {
        const { type, ...detail } = data;
        this.#backend = detail;
        return this.#emit("otlens-backend", detail);
      }
      case "error": {
        const request = this.#pending.get(data.id);
        this.#pending.delete(data.id);
        request?.reject(new Error(data.message));
        if (data.fatal) {
          return this.#state === "ready" ? this.#restart(data.message) : this.#fail(data.message);
        }
        return this.#emit("otlens-error", { message: data.message, fatal: false });
      }
      default: {
        const request = this.#pending.get(data.id);
        this.#pending.delete(data.id);
        request?.resolve(data);
      }
    }
  }

  /** Saves what this widget loaded for offline use; the shopper sees whether it worked. */
  async #showSaved(manifestUrl, engineFiles) {
    const note = this.#$(".offline");
    const outcome = await saveForOffline(manifestUrl, engineFiles);
    if (manifestUrl !== this.#manifestUrl) return; // another catalog was loaded meanwhile
    const text = this.#text;
    if (outcome.saved) {
      note.textContent = outcome.offline ? text.offline : text.saved;
      this.#emit("otlens-offline", { saved: true });
    } else {
      note.textContent = outcome.storageFull ? text.storageFull : text.notSaved(sentence(outcome.message));
      this.#emit("otlens-offline", { saved: false, message: note.textContent });
    }
    note.hidden = false;
  }

  #showProgress({ label, loaded, total }) {
    const text = this.#text;
    const line = this.#$(".progress-text");
    const bar = this.#$("progress");
    if (label === "preparing") {
      line.textContent = text.preparing;
      bar.removeAttribute("value");
      return;
    }
    const amount = total ? `${megabytes(loaded)} / ${megabytes(total)}` : megabytes(loaded);
    line.textContent = text.downloading(text.parts[label] ?? label, amount);
    if (total) {
      bar.max = total;
      bar.value = loaded;
    } else {
      bar.removeAttribute("value");
    }
  }

  #wireFilters() {
    this.#$(".clear").addEventListener("click", () => {
      this.filter = {};
      this.#$(".results").focus(); // the button just pressed is hidden now
    });
    this.#$(".in-stock").addEventListener("change", (event) => {
      this.#filter.in_stock = event.target.checked;
      this.#searchAgain();
    });
    for (const field of PRICE_FIELDS) {
      const input = this.#$(field.input);
      input.addEventListener("input", () => {
        clearTimeout(this.#priceTimer);
        this.#priceTimer = setTimeout(() => {
          // An unfinished or invalid number reads as "" and sets no bound.
          this.#filter[field.bound] = parsePrice(input.value);
          this.#searchAgain();
        }, PRICE_DELAY_MS);
      });
    }
  }

  #filterIsSet() {
    const filter = this.#filter;
    return (
      filter.categories.size + filter.colours.size + filter.brands.size > 0 ||
      filter.min_price !== undefined ||
      filter.max_price !== undefined ||
      filter.in_stock
    );
  }

  /** Chips, price fields and the stock switch for what this catalog can be filtered by. */
  #renderFilters() {
    const box = this.#$(".filters");
    const facets = this.#facets;
    if (!facets) return;
    const text = this.#text;
    box.setAttribute("aria-label", text.filters);
    const chips = (selector, legend, values, chosen, swatches) => {
      const fieldset = this.#$(selector);
      fieldset.querySelector("legend").textContent = legend;
      fieldset.hidden = values.length < 2;
      const buttons = values.slice(0, MAX_CHIPS).map(({ value }) => {
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        chip.setAttribute("part", "chip");
        chip.setAttribute("aria-pressed", String(chosen.has(value)));
        if (swatches && CSS.supports("color", value)) {
          const swatch = document.createElement("span");
          swatch.className = "swatch";
          swatch.style.background = value; // the CSSOM, which a style-src policy does not block
          chip.append(swatch);
        }
        chip.append(value);
        chip.addEventListener("click", () => {
          if (chosen.has(value)) chosen.delete(value);
          else chosen.add(value);
          chip.setAttribute("aria-pressed", String(chosen.has(value)));
          this.#searchAgain();
        });
        return chip;
      });
      fieldset.querySelector(".chip-list").replaceChildren(...buttons);
    };
    chips(".categories", text.category, facets.categories, this.#filter.categories, false);
    chips(".colours", text.colour, facets.colours, this.#filter.colours, true);
    chips(".brands", text.brand, facets.brands, this.#filter.brands, false);

    const prices = this.#$(".prices");
    const range = facets.price;
    prices.hidden = !range || range.min === range.max;
    prices.querySelector("legend").textContent = text.price(facets.currency);
    this.#$(".min-label").textContent = text.minPrice;
    this.#$(".max-label").textContent = text.maxPrice;
    const number = new Intl.NumberFormat(this.#locale());
    for (const field of PRICE_FIELDS) {
      const input = this.#$(field.input);
      input.placeholder = range ? number.format(range[field.end]) : "";
      input.value = this.#filter[field.bound] ?? "";
    }
    const stock = this.#$(".stock");
    stock.hidden = !facets.sold_out;
    stock.querySelector("span").textContent = text.inStock;
    this.#$(".in-stock").checked = this.#filter.in_stock;
    this.#$(".clear").textContent = text.clearFilters;
    this.#$(".clear").hidden = !this.#filterIsSet();
    box.hidden = [...box.querySelectorAll("fieldset, .stock")].every((part) => part.hidden);
  }

  #applyColumns() {
    const list = this.#$(".results");
    const columns = Number.parseInt(this.getAttribute("columns") ?? "", 10);
    const fixed = columns >= 1 && columns <= 12;
    list.classList.toggle("columns", fixed);
    if (fixed) list.style.setProperty("--columns", String(columns));
  }

  #wireDropZone(zone) {
    let depth = 0; // dragenter/dragleave fire for every child crossed
    zone.addEventListener("dragenter", (event) => {
      event.preventDefault();
      depth += 1;
      zone.classList.add("over");
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(depth - 1, 0);
      if (depth === 0) zone.classList.remove("over");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      depth = 0;
      zone.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) this.#searchFromUi(file);
      else this.#setStatus(this.#text.dropAFile, { error: true });
    });
  }

  /** A photo chosen in the UI: errors are shown in the widget, never thrown at the page. */
  #searchFromUi(photo) {
    if (this.hasAttribute("product")) return; // similar items only: no photo input, no model
    if (this.#state === "failed") {
      return this.#setStatus(this.#text.unavailable, { error: true });
    }
    if (this.#state !== "ready") {
      this.#queuedPhoto = photo;
      this.#showPreview(photo);
      return this.#setStatus(this.#text.queued);
    }
    this.search(photo).catch(() => {});
  }

  /** Results that come from no photo must not be shown under the last one. */
  #hidePreview() {
    this.#previews += 1; // a preview still decoding is not shown either
    this.#$(".query").hidden = true;
  }

  /**
   * The photo, whole and small, on a canvas (a blob: image would need the page's CSP to allow blob: images),
   * with the crop box over it, back on the whole photo.
   */
  async #showPreview(photo) {
    const figure = this.#$(".query");
    const canvas = figure.querySelector("canvas");
    const preview = ++this.#previews;
    this.#cropBox = WHOLE_PHOTO;
    this.#region = WHOLE_PHOTO;
    this.#photoColour = null;
    this.#$(".whole").hidden = true;
    this.#drawCrop();
    this.#showPhotoColour();
    let bitmap;
    try {
      // Decoded off the main thread, and at preview size (twice the shown size, for sharp screens).
      bitmap = await createImageBitmap(photo, { resizeHeight: 480, resizeQuality: "medium" });
    } catch {
      // A file that is not a displayable image simply shows no preview.
      if (preview === this.#previews) figure.hidden = true;
      return;
    }
    if (preview === this.#previews) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      figure.hidden = false;
    }
    bitmap.close();
  }

  #setStatus(message, { error = false, timing = "" } = {}) {
    const status = this.#$(".status");
    status.classList.toggle("error", error);
    status.querySelector(".message").textContent = message;
    status.querySelector(".timing").textContent = timing;
  }

  #locale() {
    return this.getAttribute("locale") || this.#language();
  }

  #formatPrice(price, currency) {
    if (price == null) return "";
    const locale = this.#locale();
    if (currency) {
      try {
        // Intl knows each currency's minor unit: KRW and JPY get no decimals, EUR two.
        return new Intl.NumberFormat(locale, { style: "currency", currency }).format(price);
      } catch {
        // An unknown currency code: show the amount and the code as given.
      }
    }
    return `${new Intl.NumberFormat(locale).format(price)} ${currency}`.trim();
  }

  #showResults({ results, timings, product, colour }, query) {
    if (query.photo) {
      this.#photoColour = colour ?? null;
      this.#showPhotoColour();
    }
    const list = this.#$(".results");
    list.replaceChildren(...results.map((result) => this.#renderResult(result)));
    list.removeAttribute("aria-busy");
    const text = this.#text;
    const formatted = results.length.toLocaleString(this.#locale());
    const timing = text.took(Math.round(timings.total_ms ?? timings.embed_ms));
    if (!results.length && this.#filterIsSet()) this.#setStatus(text.noMatches);
    else if (product) {
      this.#setStatus(text.similarCount(results.length, formatted, product.title || product.id), { timing });
    }
    else this.#setStatus(text.resultCount(results.length, formatted), { timing });
    const detail = query.photo ? { results, timings, photo: query.photo, colour } : { results, timings };
    this.#emit("otlens-results", detail);
  }

  #renderResult({ product, score }) {
    const item = document.createElement("li");
    item.className = "result";
    item.setAttribute("part", "result");
    // Product links are the shop's pages (relative to this page); thumbnails sit beside the manifest.
    const href = safeUrl(product.url, document.baseURI);
    const card = document.createElement(href ? "a" : "div");
    card.className = "link";
    if (href) {
      card.href = href;
      card.addEventListener("click", (event) => {
        if (!this.#emit("otlens-select", { product }, { cancelable: true })) event.preventDefault();
      });
    }
    const thumbnail = safeUrl(product.thumbnail, this.#manifestUrl);
    if (thumbnail) {
      const img = document.createElement("img");
      img.src = thumbnail;
      img.alt = this.#text.productPhoto(product.title);
      img.decoding = "async";
      card.append(img);
    }
    const add = (className, text) => {
      if (!text) return;
      const span = document.createElement("span");
      span.className = className;
      span.textContent = text;
      card.append(span);
    };
    add("title", product.title || product.id);
    add("brand", product.brand);
    add("price", this.#formatPrice(product.price, product.currency));
    add("meta", [product.category, product.colour].filter(Boolean).join(" · "));
    if (product.sold_out) add("sold-out", this.#text.soldOut);
    add("score", this.#text.similarity(Math.round(Math.max(score, 0) * 100)));
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.setAttribute("part", "more");
    more.textContent = this.#text.moreLikeThis;
    more.setAttribute("aria-label", this.#text.moreLike(product.title || product.id));
    more.addEventListener("click", async () => {
      const shown = this.similar(product.id);
      // The pressed button is replaced with the new results: keyboard focus continues at the list.
      await shown.finally(() => this.#$(".results").focus()).catch(() => {});
    });
    item.append(card, more);
    return item;
  }

  /** Dispatches a widget event; false when a cancelable one was cancelled. */
  #emit(type, detail, { cancelable = false } = {}) {
    return this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true, cancelable }));
  }
}

if (!customElements.get("ot-lens")) customElements.define("ot-lens", OtLens);

export { OtLens };
