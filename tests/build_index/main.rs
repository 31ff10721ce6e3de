//! The companion commands end to end: build-index on a small generated catalog with the
//! committed model, embed, serve (with Range requests), and the Fashion-MNIST demo.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use image::{Rgb, RgbImage};
use otlens::index::{Codec, FileEntry, Filter, Index, Manifest};
use otlens::model::{sha256_hex, Embedder};
use otlens::preprocess::{self, DecodeLimits};

const PHOTOS: usize = 8;

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0-int8-weights.onnx")
}

fn otlens(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_otlens")).args(args).output().unwrap();
    eprintln!("otlens {}\n{}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    output
}

/// `otlens build-index` with `flags` after the model, catalog, output folder and an embedding
/// cache beside the output folder (never the repository's).
fn build_index(model: &str, catalog: &Path, out: &Path, flags: &[&str]) -> Output {
    let cache = out.with_extension("cache");
    let mut args = vec![
        "build-index",
        "--model",
        model,
        "--catalog",
        catalog.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ];
    args.extend(flags);
    otlens(&args)
}

/// Eight clearly different garments-to-be: stripes, checks, dots, gradients.
fn photo(n: usize) -> RgbImage {
    let colours = [
        Rgb([200, 30, 40]),
        Rgb([30, 60, 190]),
        Rgb([240, 200, 40]),
        Rgb([20, 140, 60]),
    ];
    RgbImage::from_fn(180, 240, |x, y| {
        let on = match n {
            0 => (y / 20) % 2 == 0,
            1 => (x / 15) % 2 == 0,
            2 => (x / 30 + y / 30) % 2 == 0,
            3 => (x as i32 - 90).pow(2) + (y as i32 - 120).pow(2) < 70 * 70,
            4 => ((x + y) / 25) % 2 == 0,
            5 => (x % 40 < 12) && (y % 40 < 12),
            6 => y > 120,
            _ => (x * 7 + y * 13) % 97 < 40,
        };
        if on {
            colours[n % 4]
        } else if n < 4 {
            Rgb([245, 245, 240])
        } else {
            Rgb([30, 30, 35])
        }
    })
}

/// Writes the photos (JPEG and PNG) and a catalog naming them, plus one row whose photo is not an image.
fn write_catalog(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("photos")).unwrap();
    let mut csv = String::from("id,title,brand,price,currency,category,colour,url,image\n");
    for n in 0..PHOTOS {
        let file = format!("photos/p{n}.{}", if n % 2 == 0 { "jpg" } else { "png" });
        photo(n).save(dir.join(&file)).unwrap();
        // Ids with path characters must not leak into file names.
        csv += &format!(
            "../id {n}/x,Garment {n},Acme,{},KRW,Shirt,red,#p{n},{file}\n",
            10_000 + n
        );
    }
    std::fs::write(dir.join("photos/broken.jpg"), "this is not a photo").unwrap();
    csv += "broken,Broken photo,Acme,1,KRW,Shirt,red,#broken,photos/broken.jpg\n";
    csv += "no-title,,Acme,1,KRW,Shirt,red,#x,photos/p0.jpg\n";
    let path = dir.join("catalog.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

fn read_manifest(out: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// The index a catalog folder's manifest names.
fn read_index(out: &Path, manifest: &Manifest) -> Index {
    Index::from_bytes(&std::fs::read(out.join(&manifest.index.file)).unwrap()).unwrap()
}

#[test]
fn build_index_embed_and_serve() {
    let model_file = model_path();
    assert!(
        model_file.is_file(),
        "{} is missing: it is committed with the repository",
        model_file.display()
    );
    let model = model_file.to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let catalog = write_catalog(work.path());
    let out = work.path().join("site/catalog");
    let output = build_index(model, &catalog, &out, &[]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("photos embedded: {PHOTOS}, from the cache: 0")),
        "{stderr}"
    );
    assert!(stderr.contains("line 10: skipped product \"broken\""), "{stderr}");
    assert!(stderr.contains("line 11") && stderr.contains("no title"), "{stderr}");

    // The manifest describes the files exactly.
    let manifest = read_manifest(&out);
    let model_bytes = std::fs::read(&model_file).unwrap();
    let embedder = Embedder::from_bytes(&model_bytes).unwrap();
    assert_eq!(manifest.format, 1);
    assert_eq!(manifest.products, PHOTOS);
    assert_eq!(manifest.dims, embedder.info().dims);
    assert_eq!(manifest.arch, embedder.info().arch);
    assert_eq!(manifest.thumbnails, "thumbs/");
    // The model ships compiled for the widget, named by its own bytes.
    let shipped = std::fs::read(out.join(&manifest.model.file)).unwrap();
    assert_eq!(shipped, otlens::model::compile(&model_bytes).unwrap());
    assert_eq!(
        manifest.model.file,
        format!("model-{}.nnef.tgz", &sha256_hex(&shipped)[..8])
    );
    assert_eq!(Embedder::from_bytes(&shipped).unwrap().info(), embedder.info());
    for entry in [&manifest.model, &manifest.index] {
        let bytes = std::fs::read(out.join(&entry.file)).unwrap();
        assert_eq!(entry.bytes, bytes.len() as u64, "{}", entry.file);
        assert_eq!(entry.sha256, sha256_hex(&bytes), "{}", entry.file);
    }
    assert!(manifest.index.file.starts_with("index-") && manifest.index.file.ends_with(".otl"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    for field in ["format", "model", "index", "products", "dims", "arch", "thumbnails"] {
        assert!(json.get(field).is_some(), "manifest field {field}");
    }

    // Each product's own photo finds it first, and so does a smaller, recompressed copy.
    let index = read_index(&out, &manifest);
    // The index names the imported ONNX file, which the compiled one records as its source.
    assert_eq!(index.model_sha256(), embedder.info().sha256);
    assert_eq!(embedder.info().sha256, sha256_hex(&model_bytes));
    let limits = DecodeLimits::default();
    for n in 0..PHOTOS {
        let ext = if n % 2 == 0 { "jpg" } else { "png" };
        let own = std::fs::read(work.path().join(format!("photos/p{n}.{ext}"))).unwrap();
        let hits = index.search(&embedder.embed_photo(&own, &limits).unwrap(), 3, &Filter::ANY);
        assert_eq!(index.products()[hits[0].product].id, format!("../id {n}/x"), "{hits:?}");
        // Below 1, since the index stores a photo averaged with its mirror image ...
        assert!(hits[0].score > 0.97, "{hits:?}");

        // ... so that a shopper's photo of the garment facing the other way finds it with the
        // same score.
        let decoded = preprocess::decode(&own, &limits).unwrap();
        let stored = index.stored_vector(hits[0].product).unwrap();
        let catalog_embedding = embedder.embed_catalog_photo(&decoded).unwrap();
        let cosine = otlens::model::cosine(&stored, &catalog_embedding);
        assert!(
            cosine > 0.999,
            "product {n}: stored vector's cosine to its catalog embedding {cosine}"
        );
        let mirrored = embedder
            .embed_tensor(preprocess::to_mirrored_tensor(&decoded, &embedder.info().input))
            .unwrap();
        let mirror_hits = index.search(&mirrored, 3, &Filter::ANY);
        assert_eq!(mirror_hits[0].product, hits[0].product, "{mirror_hits:?}");
        assert!(
            (mirror_hits[0].score - hits[0].score).abs() < 2e-3,
            "{mirror_hits:?} {hits:?}"
        );

        let smaller = image::imageops::resize(&photo(n), 120, 160, image::imageops::FilterType::Triangle);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 60)
            .encode_image(&smaller)
            .unwrap();
        let hits = index.search(&embedder.embed_photo(&jpeg, &limits).unwrap(), 3, &Filter::ANY);
        assert_eq!(index.products()[hits[0].product].id, format!("../id {n}/x"), "{hits:?}");
    }

    // Thumbnails: small JPEGs named by the photo's sha256, never by the shop's ids.
    for (n, product) in index.products().iter().enumerate() {
        let ext = if n % 2 == 0 { "jpg" } else { "png" };
        let own = std::fs::read(work.path().join(format!("photos/p{n}.{ext}"))).unwrap();
        assert_eq!(product.thumbnail, format!("thumbs/{}.jpg", &sha256_hex(&own)[..16]));
        let thumbnail = image::open(out.join(&product.thumbnail)).unwrap();
        assert_eq!((thumbnail.width(), thumbnail.height()), (144, 192));
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging files left behind: {leftovers:?}");

    check_embed_command(model, work.path(), &embedder);
    check_serve(&out, &manifest, &index.products()[0].thumbnail);
    check_incremental_rebuild(model, work.path(), &catalog, &out, &manifest);
    check_failed_rebuild_keeps_the_previous_catalog(model, work.path(), &out);
    check_strict_reports_bad_rows_and_shared_photos(model, work.path());
    check_codecs(model, &catalog, work.path());
    check_scale_demo(&out, work.path());
}

/// `otlens demo scale` grows a catalog for benchmarks: the originals first, unchanged, then
/// noisy copies that stay near them, with the same model and thumbnails.
fn check_scale_demo(from: &Path, dir: &Path) {
    let source = read_manifest(from);
    let source_index = read_index(from, &source);
    let originals = source_index.len();
    let out = dir.join("scaled");
    let count = 3 * originals + 1;
    let output = otlens(&[
        "demo",
        "scale",
        "--from",
        from.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--codec",
        "int8",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest = read_manifest(&out);
    assert_eq!(manifest.products, count);
    assert_eq!(manifest.model, source.model);
    let index = read_index(&out, &manifest);
    assert_eq!(index.len(), count);
    assert_eq!(index.model_sha256(), source_index.model_sha256());
    for n in 0..count {
        let original = n % originals;
        let (product, source_product) = (&index.products()[n], &source_index.products()[original]);
        assert_eq!(product.thumbnail, source_product.thumbnail);
        assert!(out.join(&product.thumbnail).is_file(), "{}", product.thumbnail);
        let (vector, source_vector) = (
            index.stored_vector(n).unwrap(),
            source_index.stored_vector(original).unwrap(),
        );
        let cosine: f32 = vector.iter().zip(&source_vector).map(|(a, b)| a * b).sum();
        if n < originals {
            assert_eq!(product, source_product);
            assert!(cosine > 0.999, "product {n}: cosine {cosine}");
        } else {
            assert_eq!(product.id, format!("{}~{}", source_product.id, n / originals));
            assert!((0.85..0.99).contains(&cosine), "copy {n}: cosine {cosine}");
        }
    }
    let missing = otlens(&[
        "demo",
        "scale",
        "--from",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("manifest.json"),
        "{stderr}"
    );
}

fn check_codecs(model: &str, catalog: &Path, dir: &Path) {
    for (flags, codec) in [
        (&["--codec", "binary"][..], Codec::Binary),
        (
            &["--codec", "pq", "--pq-subspaces", "64"][..],
            Codec::ProductQuantised { subspaces: 64 },
        ),
    ] {
        let out = dir.join(format!("codec-{codec}"));
        let output = build_index(model, catalog, &out, flags);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let manifest = read_manifest(&out);
        let index = read_index(&out, &manifest);
        assert_eq!(index.codec(), codec);
        assert_eq!(index.len(), PHOTOS);
        assert_eq!(index.lists(), None, "a small catalog is scanned whole by default");
    }
    let out = dir.join("partitioned");
    let output = build_index(model, catalog, &out, &["--lists", "3", "--probe", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("grouped the products into 3 lists"), "{stderr}");
    let index = read_index(&out, &read_manifest(&out));
    assert_eq!(index.lists(), Some((3, 2)));
    for product in 0..index.len() {
        let stored = index.stored_vector(product).unwrap();
        assert_eq!(index.search(&stored, 1, &Filter::ANY)[0].product, product);
    }
    assert!(read_manifest(&out).lists.is_none());

    // Ranged: the same lists, as a head and a lists file the manifest names with its size and sha256.
    let output = build_index(model, catalog, &out, &["--lists", "3", "--probe", "2", "--ranged"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest = read_manifest(&out);
    let lists_entry = manifest.lists.clone().expect("a ranged catalog names its lists file");
    let lists_file = std::fs::read(out.join(&lists_entry.file)).unwrap();
    assert_eq!(lists_entry, FileEntry::content_named("lists", "otb", &lists_file));
    let mut head = read_index(&out, &manifest);
    assert!(head.is_ranged() && !head.is_loaded(0));
    head.load_lists_file(&lists_file).unwrap();
    assert_eq!(head.products(), index.products());
    for product in 0..head.len() {
        assert_eq!(head.stored_vector(product), index.stored_vector(product));
    }
    // Back to a whole index: the ranged version's files stay for pages still open on it.
    assert!(build_index(model, catalog, &out, &["--lists", "3"]).status.success());
    assert!(out.join(&lists_entry.file).is_file());
    let output = build_index(model, catalog, &dir.join("ranged-flat"), &["--ranged"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--ranged needs inverted lists"), "{stderr}");

    let output = build_index(
        model,
        catalog,
        &dir.join("codec-bad"),
        &["--codec", "pq", "--pq-subspaces", "1281"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("between 1 and 1280 subspaces"), "{stderr}");
}

fn check_embed_command(model: &str, dir: &Path, embedder: &Embedder) {
    let photo = dir.join("photos/p3.png");
    let output = otlens(&["embed", "--model", model, photo.to_str().unwrap()]);
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["model_sha256"], embedder.info().sha256);
    assert_eq!(json["embeddings"][0]["photo"], photo.to_str().unwrap());
    let printed: Vec<f32> = serde_json::from_value(json["embeddings"][0]["embedding"].clone()).unwrap();
    let expected = embedder
        .embed_photo(&std::fs::read(&photo).unwrap(), &DecodeLimits::default())
        .unwrap();
    assert_eq!(printed, expected, "printed floats round-trip exactly");

    let broken = dir.join("photos/broken.jpg");
    let output = otlens(&["embed", "--model", model, broken.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a supported image"));
}

/// Kills the server when the test ends, even on failure.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(root: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_otlens"))
        .args(["serve", "--root", root.to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("serving http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(base.starts_with("127.0.0.1:"), "{base}");
    Server { child, base }
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn http(base: &str, method: &str, path: &str, extra: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(base).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{extra}Connection: close\r\n\r\n",
        base
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn check_serve(out: &Path, manifest: &Manifest, thumbnail: &str) {
    std::fs::write(out.join("index.html"), "<!doctype html><title>shop</title>").unwrap();
    std::fs::write(out.join("otlens_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let server = start_server(out);

    let index_path = format!("/{}", manifest.index.file);
    let part = http(&server.base, "GET", &index_path, "Range: bytes=0-7\r\n");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, b"OTLENSIX");
    assert_eq!(part.header("Content-Length"), Some("8"));
    let total = manifest.index.bytes;
    assert_eq!(
        part.header("Content-Range"),
        Some(format!("bytes 0-7/{total}").as_str())
    );

    let tail = http(&server.base, "GET", &index_path, "Range: bytes=-4\r\n");
    let whole = http(&server.base, "GET", &index_path, "");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("Content-Length"), Some(total.to_string().as_str()));
    assert_eq!(whole.header("Content-Type"), Some("application/octet-stream"));
    // Named by their content, model, index and thumbnails never change; the manifest may.
    assert_eq!(
        whole.header("Cache-Control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(sha256_hex(&whole.body), manifest.index.sha256);
    assert_eq!(tail.body, whole.body[whole.body.len() - 4..]);
    let beyond = http(&server.base, "GET", &index_path, &format!("Range: bytes={total}-\r\n"));
    assert_eq!(beyond.status, 416);

    let head = http(&server.base, "HEAD", &format!("/{}", manifest.model.file), "");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Content-Length"),
        Some(manifest.model.bytes.to_string().as_str())
    );
    assert!(head.body.is_empty());

    let json = http(&server.base, "GET", "/manifest.json?cache=1", "");
    assert_eq!(json.header("Content-Type"), Some("application/json"));
    assert_eq!(json.header("Cache-Control"), Some("no-cache"));
    assert_eq!(
        http(&server.base, "GET", "/otlens_bg.wasm", "").header("Content-Type"),
        Some("application/wasm")
    );
    let home = http(&server.base, "GET", "/", "");
    assert_eq!(home.status, 200);
    assert_eq!(home.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        http(&server.base, "GET", "/thumbs", "").header("Location"),
        Some("/thumbs/")
    );
    assert_eq!(
        http(&server.base, "GET", &format!("/{thumbnail}"), "").header("Content-Type"),
        Some("image/jpeg")
    );
    for hostile in [
        "/../manifest.json",
        "/thumbs/%2e%2e/%2e%2e/catalog.csv",
        "/nothing-here",
    ] {
        assert_eq!(http(&server.base, "GET", hostile, "").status, 404, "{hostile}");
    }
    assert_eq!(
        http(&server.base, "POST", "/manifest.json", "Content-Length: 0\r\n").status,
        405
    );

    // Several clients at once.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let base = server.base.clone();
            let path = index_path.clone();
            std::thread::spawn(move || http(&base, "GET", &path, "").body.len())
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap() as u64, total);
    }
}

/// Rebuilding embeds only new and changed photos, publishes a new version beside the one
/// before it (so that open pages keep working) and removes the versions older than that.
fn check_incremental_rebuild(model: &str, dir: &Path, catalog: &Path, out: &Path, first: &Manifest) {
    let unchanged = build_index(model, catalog, out, &[]);
    assert!(unchanged.status.success());
    let stderr = String::from_utf8_lossy(&unchanged.stderr);
    assert!(
        stderr.contains(&format!("photos embedded: 0, from the cache: {PHOTOS}")),
        "{stderr}"
    );
    // The same photos give the very same index, so the same published version.
    assert_eq!(&read_manifest(out), first);

    // A changed photo is embedded again; its old thumbnail stays for pages on the first version.
    let old_thumbnail = read_index(out, first).products()[0].thumbnail.clone();
    let mut inverted = photo(0);
    image::imageops::invert(&mut inverted);
    inverted.save(dir.join("photos/p0.jpg")).unwrap();
    let changed = build_index(model, catalog, out, &[]);
    assert!(changed.status.success());
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(
        stderr.contains(&format!("photos embedded: 1, from the cache: {}", PHOTOS - 1)),
        "{stderr}"
    );
    let second = read_manifest(out);
    assert_ne!(second.index.file, first.index.file);
    let index = read_index(out, &second);
    assert_ne!(index.products()[0].thumbnail, old_thumbnail);
    assert_eq!(
        index.products()[1].thumbnail,
        read_index(out, first).products()[1].thumbnail
    );
    for file in [&first.index.file, &old_thumbnail, &index.products()[0].thumbnail] {
        assert!(out.join(file).is_file(), "{file}");
    }

    // A third version: the first one's files go, the second one's stay.
    let catalog_of_six = dir.join("six.csv");
    let header_and_six: Vec<String> = std::fs::read_to_string(catalog)
        .unwrap()
        .lines()
        .take(7)
        .map(str::to_owned)
        .collect();
    std::fs::write(&catalog_of_six, header_and_six.join("\n")).unwrap();
    let third = build_index(model, &catalog_of_six, out, &[]);
    assert!(third.status.success());
    assert_eq!(read_manifest(out).products, 6);
    assert!(!out.join(&first.index.file).exists());
    assert!(
        !out.join(&old_thumbnail).exists(),
        "the first version's own thumbnail is gone"
    );
    assert!(out.join(&second.index.file).is_file());
    assert!(
        out.join(&index.products()[7].thumbnail).is_file(),
        "the second version still uses it"
    );
    // Nothing half-written is left behind.
    let files = |folder: &Path| -> Vec<String> {
        std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert!(files(out).iter().all(|name| !name.starts_with('.')), "{:?}", files(out));
    assert!(files(&out.join("thumbs")).iter().all(|name| name.ends_with(".jpg")));
}

fn check_failed_rebuild_keeps_the_previous_catalog(model: &str, dir: &Path, out: &Path) {
    let before = read_manifest(out);
    let catalog = dir.join("all-broken.csv");
    std::fs::write(&catalog, "id,title,image\nb,Broken,photos/broken.jpg\n").unwrap();
    let output = build_index(model, &catalog, out, &[]);
    assert!(!output.status.success());
    assert_eq!(read_manifest(out), before);
    assert!(out.join(&before.index.file).is_file());
    let thumbnails: Vec<String> = read_index(out, &before)
        .products()
        .iter()
        .map(|p| p.thumbnail.clone())
        .collect();
    assert!(thumbnails.iter().all(|file| out.join(file).is_file()));
}

/// Bad rows and shared photos are reported by line; `--strict` turns them into a failing exit
/// code but the good rows are still published.
fn check_strict_reports_bad_rows_and_shared_photos(model: &str, dir: &Path) {
    std::fs::copy(dir.join("photos/p2.jpg"), dir.join("photos/copy-of-p2.jpg")).unwrap();
    let catalog = dir.join("messy.csv");
    std::fs::write(
        &catalog,
        "id,title,image\n\
         a,A,photos/p2.jpg\n\
         b,B,photos/missing.jpg\n\
         c,C,photos/copy-of-p2.jpg\n\
         d,D,photos/broken.jpg\n\
         a,A again,photos/p3.png\n\
         e,E,photos/p3.png\n",
    )
    .unwrap();
    for strict in [false, true] {
        let out = dir.join(format!("messy-{strict}"));
        let flags: &[&str] = if strict { &["--strict"] } else { &[] };
        let output = build_index(model, &catalog, &out, flags);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.success(), !strict, "{stderr}");
        for expected in [
            "line 3: skipped product \"b\"",
            "line 4: product \"c\" has the same photo as product \"a\" on line 2",
            "line 5: skipped product \"d\"",
            "line 6: duplicate id \"a\"",
        ] {
            assert!(stderr.contains(expected), "missing {expected:?} in {stderr}");
        }
        if strict {
            assert!(stderr.contains("4 rows were reported above (--strict)"), "{stderr}");
        }
        assert_eq!(read_manifest(&out).products, 3, "a, c and e are published either way");
    }
}

#[test]
fn fashion_mnist_demo_catalog() {
    let dataset = Path::new("/usr/share/datasets/fashion-mnist");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("catalog");
    let args = |dataset: &Path| {
        let list = [
            "demo",
            "fmnist",
            "--count",
            "12",
            "--dataset",
            dataset.to_str().unwrap(),
        ];
        let mut args: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        for (flag, value) in [
            ("--model", model_path()),
            ("--out", out.clone()),
            ("--work", work.path().join("w")),
        ] {
            args.push(flag.into());
            args.push(value.to_str().unwrap().into());
        }
        args
    };
    let missing = work.path().join("no-dataset");
    let output = otlens(&args(&missing).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("apt-get install dataset-fashion-mnist"));

    if !dataset.join("t10k-images-idx3-ubyte.gz").is_file() {
        eprintln!("skipped: Debian's dataset-fashion-mnist is not installed");
        return;
    }
    let output = otlens(&args(dataset).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success());
    let manifest = read_manifest(&out);
    assert_eq!(manifest.products, 12);
    let catalog = std::fs::read_to_string(work.path().join("w/catalog.csv")).unwrap();
    let mut lines = catalog.lines();
    assert_eq!(
        lines.next(),
        Some("id,title,brand,price,currency,category,colour,url,image,in_stock")
    );
    // Test image 0 of Fashion-MNIST is an ankle boot; its brand and stock are invented.
    let first = lines.next().unwrap();
    assert!(
        first.starts_with("fmnist-0000,Ankle boot No. 0000,Greyline,")
            && first.ends_with(",KRW,Ankle boot,grey,#product-fmnist-0000,images/0000.png,true"),
        "{first}"
    );
    let photo = image::open(work.path().join("w/images/0000.png")).unwrap();
    assert_eq!((photo.width(), photo.height()), (112, 112));
    let index = read_index(&out, &manifest);
    assert_eq!(index.products()[0].title, "Ankle boot No. 0000");
    assert_eq!(index.products()[0].currency, "KRW");
}
