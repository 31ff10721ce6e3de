//! `otlens serve`: a small static file server for the demo and the browser tests.
//!
//! Always sends Content-Length (the widget shows download progress from it), answers
//! single-range requests with 206, and never serves anything outside the root folder.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::thread;

use anyhow::{anyhow, Context, Result};
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

/// Requests handled at once: enough for a page fetching model, index and thumbnails in parallel.
const WORKERS: usize = 4;

type Body = Box<dyn Read + Send>;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to serve.
    #[arg(long, default_value = "www")]
    pub root: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

pub fn run(args: Args) -> Result<()> {
    let root = args
        .root
        .canonicalize()
        .with_context(|| format!("cannot serve {}: no such folder", args.root.display()))?;
    let server = Server::http((args.host.as_str(), args.port))
        .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let port = server
        .server_addr()
        .to_ip()
        .map(|address| address.port())
        .context("the server has no IP address")?;
    // Tests and scripts wait for exactly this line.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "serving http://{}:{port}/", args.host)?;
    stdout.flush()?;
    drop(stdout);

    let server = Arc::new(server);
    let root = Arc::new(root);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = Arc::clone(&server);
            let root = Arc::clone(&root);
            thread::spawn(move || {
                for request in server.incoming_requests() {
                    respond(&root, request);
                }
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow!("a server thread stopped unexpectedly"))?;
    }
    Ok(())
}

fn respond(root: &Path, request: Request) {
    let url = request.url().to_owned();
    let response = match (request.method(), resolve(root, &url)) {
        (Method::Get | Method::Head, Target::File(path)) => file_response(&path, range_header(&request)),
        (Method::Get | Method::Head, Target::Redirect(location)) => {
            text(301, "moved").with_header(header("Location", &location))
        }
        (Method::Get | Method::Head, Target::NotFound) => text(404, "not found"),
        _ => text(405, "only GET and HEAD are supported").with_header(header("Allow", "GET, HEAD")),
    };
    if let Err(error) = request.respond(response) {
        eprintln!("{url}: {error}");
    }
}

enum Target {
    File(PathBuf),
    /// A folder asked for without its trailing slash: redirect so relative links work.
    Redirect(String),
    NotFound,
}

/// Maps a request path to a file under `root`, refusing `..`, encoded slashes and anything
/// (e.g. a symlink) that resolves outside the root.
fn resolve(root: &Path, url: &str) -> Target {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let Some(decoded) = percent_decode(path) else {
        return Target::NotFound;
    };
    let mut relative = PathBuf::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Target::NotFound,
            _ if segment.contains('\\') || segment.contains('\0') => return Target::NotFound,
            _ => relative.push(segment),
        }
    }
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Target::NotFound;
    }
    let Ok(mut full) = root.join(&relative).canonicalize() else {
        return Target::NotFound;
    };
    if !full.starts_with(root) {
        return Target::NotFound;
    }
    if full.is_dir() {
        if !path.ends_with('/') {
            // One leading slash: "//host/" would be read as another site.
            return Target::Redirect(format!("/{}/", path.trim_start_matches('/')));
        }
        full.push("index.html");
    }
    if full.is_file() {
        Target::File(full)
    } else {
        Target::NotFound
    }
}

/// `%XX` decoding of a URL path; None if it is malformed or not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

fn range_header(request: &Request) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| h.value.as_str().to_owned())
}

/// The requested byte range (inclusive) of a `len`-byte file, per RFC 9110.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    Whole,
    Part { first: u64, last: u64 },
    Unsatisfiable,
}

fn parse_range(header: Option<&str>, len: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Whole;
    };
    // Multiple ranges are rare (no browser sends them for media or fetch); a full answer is allowed.
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        (true, false) => last
            .parse::<u64>()
            .ok()
            .map(|suffix| (len.saturating_sub(suffix), len.saturating_sub(1))),
        (false, _) => first.parse::<u64>().ok().and_then(|first| {
            let last = if last.is_empty() {
                Some(u64::MAX)
            } else {
                last.parse().ok()
            };
            last.map(|last| (first, last.min(len.saturating_sub(1))))
        }),
        (true, true) => None,
    };
    match parsed {
        None => Range::Whole,
        Some((first, last)) if first <= last && first < len => Range::Part { first, last },
        Some(_) => Range::Unsatisfiable,
    }
}

fn file_response(path: &Path, range: Option<String>) -> Response<Body> {
    let opened = File::open(path).and_then(|file| {
        let len = file.metadata()?.len();
        Ok((file, len))
    });
    let (mut file, len) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return text(500, "cannot read the file");
        }
    };
    let (status, first, count) = match parse_range(range.as_deref(), len) {
        Range::Whole => (200, 0, len),
        Range::Part { first, last } => (206, first, last - first + 1),
        Range::Unsatisfiable => {
            return text(416, "range not satisfiable").with_header(header("Content-Range", &format!("bytes */{len}")))
        }
    };
    if let Err(error) = file.seek(SeekFrom::Start(first)) {
        eprintln!("{}: {error}", path.display());
        return text(500, "cannot read the file");
    }
    let body: Body = Box::new(file.take(count));
    let mut response = Response::new(StatusCode(status), Vec::new(), body, Some(count as usize), None)
        .with_header(header("Content-Type", content_type(path)))
        .with_header(header("Accept-Ranges", "bytes"))
        .with_header(header("Cache-Control", "no-cache"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        // Above this size tiny_http would switch to chunked encoding and drop Content-Length.
        .with_chunked_threshold(usize::MAX);
    if status == 206 {
        let last = first + count - 1;
        response.add_header(header("Content-Range", &format!("bytes {first}-{last}/{len}")));
    }
    response
}

fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("wasm") => "application/wasm",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn text(status: u16, message: &str) -> Response<Body> {
    let message = format!("{message}\n").into_bytes();
    let len = message.len();
    let body: Body = Box::new(std::io::Cursor::new(message));
    Response::new(
        StatusCode(status),
        vec![header("Content-Type", "text/plain; charset=utf-8")],
        body,
        Some(len),
        None,
    )
    .with_header(header("Cache-Control", "no-cache"))
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header names and values here are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 100), Range::Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Range::Part { first: 0, last: 9 });
        assert_eq!(parse_range(Some("bytes=90-"), 100), Range::Part { first: 90, last: 99 });
        assert_eq!(parse_range(Some("bytes=-10"), 100), Range::Part { first: 90, last: 99 });
        assert_eq!(parse_range(Some("bytes=-500"), 100), Range::Part { first: 0, last: 99 });
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100),
            Range::Part { first: 50, last: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0,5-9"), 100), Range::Whole);
        assert_eq!(parse_range(Some("items=0-9"), 100), Range::Whole);
        assert_eq!(parse_range(Some("bytes=x-9"), 100), Range::Whole);
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("catalog")).unwrap();
        std::fs::write(root.join("catalog/index.html"), "hi").unwrap();
        std::fs::write(root.join("a b.txt"), "x").unwrap();
        assert!(matches!(resolve(&root, "/a%20b.txt?v=1"), Target::File(_)));
        assert!(matches!(resolve(&root, "/catalog/"), Target::File(p) if p.ends_with("catalog/index.html")));
        assert!(matches!(resolve(&root, "/catalog"), Target::Redirect(l) if l == "/catalog/"));
        for hostile in [
            "/../etc/passwd",
            "/catalog/%2e%2e/%2e%2e/etc/passwd",
            "/%2e%2e%2fetc",
            "/..%5cetc",
            "/%zz",
            "/missing",
        ] {
            assert!(matches!(resolve(&root, hostile), Target::NotFound), "{hostile}");
        }
    }
}
