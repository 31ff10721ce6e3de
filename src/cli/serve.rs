//! `otlens serve`: a small static file server for the demo and the browser tests.
//!
//! Always sends Content-Length (the widget shows download progress from it), answers
//! single-range requests with 206, and never serves anything outside the root folder.
//! Files that `otlens build-index` names by their content may be cached for good; everything
//! else is fetched again on each load. Pages are cross-origin isolated (COOP and COEP headers)
//! unless told otherwise, so the widget runs its multi-threaded engine.
//!
//! Each connection gets its own thread, so a browser's idle keep-alive connections can never
//! starve new ones (a fixed worker pool did exactly that under six parallel page fetches).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Take, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

/// An idle keep-alive connection is closed after this long, ending its thread.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// A client that stops reading a response is dropped after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head (request line + headers) accepted; browsers send well under 8 KiB.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

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
    /// Leave out the Cross-Origin-Opener-Policy and Cross-Origin-Embedder-Policy headers, as a
    /// host that cannot send them would: pages are then not cross-origin isolated, and the
    /// widget runs on one thread.
    #[arg(long)]
    pub no_isolation: bool,
}

/// What is served, and how.
struct Site {
    root: PathBuf,
    /// Whether responses carry the headers that make a page cross-origin isolated.
    isolated: bool,
}

/// A page and its workers are cross-origin isolated (so wasm may share memory between
/// threads) only when the page is served with both. `require-corp` is met by every file here,
/// which all come from this origin.
const ISOLATION_HEADERS: [(&str, &str); 2] = [
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
];

pub fn run(args: Args) -> Result<()> {
    let root = args
        .root
        .canonicalize()
        .with_context(|| format!("cannot serve {}: no such folder", args.root.display()))?;
    let site = Site {
        root,
        isolated: !args.no_isolation,
    };
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let port = listener.local_addr()?.port();
    // Tests and scripts wait for exactly this line.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "serving http://{}:{port}/", args.host)?;
    stdout.flush()?;
    drop(stdout);
    accept_connections(&listener, Arc::new(site));
    Ok(())
}

/// Serves every connection on its own thread; runs until the process ends.
fn accept_connections(listener: &TcpListener, site: Arc<Site>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // Usually out of file descriptors: give open connections a moment to finish.
                eprintln!("cannot accept a connection: {error}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let site = Arc::clone(&site);
        if let Err(error) = thread::Builder::new()
            .name("otlens-serve".into())
            .spawn(move || serve_connection(stream, &site))
        {
            eprintln!("cannot start a connection thread: {error}");
        }
    }
}

/// Answers requests on one connection until the client closes it, asks to close, goes idle
/// for `IDLE_TIMEOUT`, or sends something this server will not read past.
fn serve_connection(mut stream: TcpStream, site: &Site) {
    let configured = stream
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true));
    if let Err(error) = configured {
        eprintln!("cannot configure a connection: {error}");
        return;
    }
    // Bytes read but not yet consumed: a pipelining client may send several requests at once.
    let mut buffered = Vec::with_capacity(4096);
    loop {
        let request = match read_request(&mut stream, &mut buffered) {
            Ok(Some(request)) => request,
            // Closed, idle or broken: nothing to answer.
            Ok(None) => return,
            Err(rejection) => {
                let _ = write_response(&mut stream, rejection.into_response(), false, false);
                close_gracefully(stream);
                return;
            }
        };
        let mut response = respond(&site.root, &request);
        if site.isolated {
            let isolation = ISOLATION_HEADERS.map(|(name, value)| (name, value.to_owned()));
            response.headers.extend(isolation);
        }
        let keep_alive = request.keep_alive;
        if let Err(error) = write_response(&mut stream, response, request.is_head, keep_alive) {
            // Browsers drop connections mid-download all the time (cancelled fetches, reloads).
            if !matches!(
                error.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                eprintln!("{}: {error}", request.target);
            }
            return;
        }
        if !keep_alive {
            close_gracefully(stream);
            return;
        }
    }
}

/// Closing a socket with unread input makes the kernel send a reset, which can destroy the
/// response still in flight; so stop sending, then read and drop what the client still sends.
fn close_gracefully(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = std::io::copy(&mut (&mut stream).take(1 << 20), &mut std::io::sink());
}

struct Request {
    method: String,
    target: String,
    range: Option<String>,
    is_head: bool,
    keep_alive: bool,
}

/// A request head this server refuses to read; the connection closes after the answer.
enum Rejection {
    Malformed,
    TooLarge,
}

impl Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Malformed => text(400, "malformed request"),
            Rejection::TooLarge => text(431, "request head too large"),
        }
    }
}

/// Reads one request head. `Ok(None)` when the connection ended or idled out before one arrived.
fn read_request(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> std::result::Result<Option<Request>, Rejection> {
    let mut chunk = [0u8; 4096];
    loop {
        if !buffered.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(buffered) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let request = to_request(&parsed);
                    buffered.drain(..head_len);
                    return Ok(Some(request));
                }
                Ok(httparse::Status::Partial) if buffered.len() >= MAX_HEAD_BYTES => return Err(Rejection::TooLarge),
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => return Err(Rejection::TooLarge),
                Err(_) => return Err(Rejection::Malformed),
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(read) => buffered.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
        }
    }
}

fn to_request(parsed: &httparse::Request) -> Request {
    let method = parsed.method.unwrap_or_default().to_owned();
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let connection = header("Connection").unwrap_or_default().to_ascii_lowercase();
    let wants_close = connection.split(',').any(|token| token.trim() == "close");
    let wants_keep_alive = connection.split(',').any(|token| token.trim() == "keep-alive");
    // HTTP/1.1 keeps connections open by default, HTTP/1.0 only when asked.
    let persistent = if parsed.version == Some(1) {
        !wants_close
    } else {
        wants_keep_alive
    };
    // A request body (never sent with GET or HEAD by browsers) is not read, so the connection
    // cannot be reused after it.
    let has_body = header("Transfer-Encoding").is_some()
        || header("Content-Length").is_some_and(|len| len.trim().parse::<u64>() != Ok(0));
    Request {
        is_head: method == "HEAD",
        keep_alive: persistent && !has_body,
        method,
        target: parsed.path.unwrap_or("/").to_owned(),
        range: header("Range"),
    }
}

fn respond(root: &Path, request: &Request) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        let mut response = text(405, "only GET and HEAD are supported");
        response.headers.push(("Allow", "GET, HEAD".into()));
        return response;
    }
    match resolve(root, &request.target) {
        Target::File(path) => file_response(&path, request.range.as_deref()),
        Target::Redirect(location) => {
            let mut response = text(301, "moved");
            response.headers.push(("Location", location));
            response
        }
        Target::NotFound => text(404, "not found"),
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Text(Vec<u8>),
    /// A file already positioned at the first byte to send, limited to the bytes to send.
    File(Take<File>),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Text(bytes) => bytes.len() as u64,
            Body::File(file) => file.limit(),
        }
    }
}

/// Writes status line, headers (always with Content-Length) and, unless answering HEAD, the body.
fn write_response(stream: &mut TcpStream, response: Response, is_head: bool, keep_alive: bool) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    write!(out, "HTTP/1.1 {} {}\r\n", response.status, reason(response.status))?;
    for (name, value) in &response.headers {
        write!(out, "{name}: {value}\r\n")?;
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        out,
        "Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
        response.body.len()
    )?;
    if !is_head {
        match response.body {
            Body::Text(bytes) => out.write_all(&bytes)?,
            Body::File(mut file) => {
                let expected = file.limit();
                let sent = std::io::copy(&mut file, &mut out)?;
                if sent != expected {
                    // The file shrank while being sent: the promised Content-Length cannot be met.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file changed while it was being sent",
                    ));
                }
            }
        }
    }
    out.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
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

fn file_response(path: &Path, range: Option<&str>) -> Response {
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
    let (status, first, count) = match parse_range(range, len) {
        Range::Whole => (200, 0, len),
        Range::Part { first, last } => (206, first, last - first + 1),
        Range::Unsatisfiable => {
            let mut response = text(416, "range not satisfiable");
            response.headers.push(("Content-Range", format!("bytes */{len}")));
            return response;
        }
    };
    if let Err(error) = file.seek(SeekFrom::Start(first)) {
        eprintln!("{}: {error}", path.display());
        return text(500, "cannot read the file");
    }
    let mut headers = vec![
        ("Content-Type", content_type(path).to_owned()),
        ("Accept-Ranges", "bytes".to_owned()),
        ("Cache-Control", cache_control(path).to_owned()),
        ("X-Content-Type-Options", "nosniff".to_owned()),
    ];
    if status == 206 {
        let last = first + count - 1;
        headers.push(("Content-Range", format!("bytes {first}-{last}/{len}")));
    }
    Response {
        status,
        headers,
        body: Body::File(file.take(count)),
    }
}

/// A file named by its content never changes: a repeat visit then loads the model and index
/// from the browser's cache without asking. Anything else is revalidated, so a new
/// `manifest.json` or widget is seen at once.
fn cache_control(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    let in_thumbs = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|folder| folder == "thumbs");
    let hex = |digits: &str| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit());
    let catalog_file = ["model-", "index-", "lists-"].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(digits, _)| digits.len() >= 8 && hex(digits))
    });
    let thumbnail = in_thumbs
        && name
            .strip_suffix(".jpg")
            .is_some_and(|digits| digits.len() == 16 && hex(digits));
    if catalog_file || thumbnail {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
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

fn text(status: u16, message: &str) -> Response {
    Response {
        status,
        headers: vec![
            ("Content-Type", "text/plain; charset=utf-8".to_owned()),
            ("Cache-Control", "no-cache".to_owned()),
        ],
        body: Body::Text(format!("{message}\n").into_bytes()),
    }
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
    fn only_content_named_files_are_immutable() {
        for (path, immutable) in [
            ("catalog/model-9f6daa4d.nnef.tgz", true),
            ("catalog/index-f53e8002.otl", true),
            ("catalog/lists-0a1b2c3d.otb", true),
            ("catalog/thumbs/0123456789abcdef.jpg", true),
            ("catalog/manifest.json", false),
            ("catalog/thumbs/12.jpg", false),
            ("catalog/index-latest.otl", false),
            ("catalog/model-.onnx", false),
            ("thumbs.jpg", false),
            ("otlens.js", false),
            ("pkg/otlens_bg.wasm", false),
        ] {
            let expected = if immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            assert_eq!(cache_control(Path::new(path)), expected, "{path}");
        }
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

    /// Starts the server on a free loopback port; its thread ends with the test process.
    fn start(root: &Path, isolated: bool) -> std::net::SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let address = listener.local_addr().unwrap();
        let site = Arc::new(Site {
            root: root.to_path_buf(),
            isolated,
        });
        thread::spawn(move || accept_connections(&listener, site));
        address
    }

    fn connect(address: std::net::SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream
    }

    /// Reads exactly one response (head + Content-Length body) from a kept-alive connection.
    fn read_response(stream: &mut TcpStream, is_head: bool) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).expect("response within 5 s"),
                1,
                "connection closed early"
            );
            raw.push(byte[0]);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        assert!(parsed.parse(&raw).unwrap().is_complete());
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let mut body = vec![0; if is_head { 0 } else { len }];
        stream.read_exact(&mut body).unwrap();
        (parsed.code.unwrap(), headers, body)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn eight_keep_alive_connections_are_all_answered() {
        let root = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.path().join("big.bin"), &big).unwrap();
        std::fs::write(root.path().join("index.html"), "<!doctype html>").unwrap();
        let address = start(&root.path().canonicalize().unwrap(), true);

        let mut connections: Vec<TcpStream> = (0..8).map(|_| connect(address)).collect();
        // Two rounds: the second proves every connection stays open and is served again.
        for round in 0..2 {
            for (i, stream) in connections.iter_mut().enumerate() {
                let path = if i % 2 == 0 { "/big.bin" } else { "/" };
                write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            }
            for (i, stream) in connections.iter_mut().enumerate() {
                let (status, headers, body) = read_response(stream, false);
                assert_eq!(status, 200, "round {round}, connection {i}");
                assert_eq!(header(&headers, "connection"), Some("keep-alive"));
                assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
                assert_eq!(header(&headers, "cross-origin-opener-policy"), Some("same-origin"));
                assert_eq!(header(&headers, "cross-origin-embedder-policy"), Some("require-corp"));
                if i % 2 == 0 {
                    assert_eq!(body, big);
                    assert_eq!(header(&headers, "content-type"), Some("application/octet-stream"));
                } else {
                    assert_eq!(body, b"<!doctype html>");
                    assert_eq!(header(&headers, "content-type"), Some("text/html; charset=utf-8"));
                }
            }
        }
    }

    #[test]
    fn ranges_head_and_refusals_over_one_connection() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.txt"), "0123456789").unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        let address = start(&root.path().canonicalize().unwrap(), false);
        let mut stream = connect(address);

        // Pipelined: both requests arrive before either is answered.
        write!(
            stream,
            "GET /a.txt HTTP/1.1\r\nRange: bytes=2-4\r\n\r\nHEAD /a.txt HTTP/1.1\r\n\r\n"
        )
        .unwrap();
        let (status, headers, body) = read_response(&mut stream, false);
        assert_eq!((status, body.as_slice()), (206, b"234".as_slice()));
        assert_eq!(header(&headers, "content-range"), Some("bytes 2-4/10"));
        let (status, headers, _) = read_response(&mut stream, true);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-length"), Some("10"));
        assert_eq!(header(&headers, "cross-origin-embedder-policy"), None, "--no-isolation");

        write!(stream, "GET /a.txt HTTP/1.1\r\nRange: bytes=10-\r\n\r\n").unwrap();
        let (status, headers, _) = read_response(&mut stream, false);
        assert_eq!(status, 416);
        assert_eq!(header(&headers, "content-range"), Some("bytes */10"));

        write!(stream, "GET /sub HTTP/1.1\r\n\r\n").unwrap();
        let (status, headers, _) = read_response(&mut stream, false);
        assert_eq!((status, header(&headers, "location")), (301, Some("/sub/")));

        write!(stream, "DELETE /a.txt HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let (status, headers, _) = read_response(&mut stream, false);
        assert_eq!((status, header(&headers, "allow")), (405, Some("GET, HEAD")));
        assert_eq!(stream.read(&mut [0u8; 1]).unwrap(), 0, "closed after Connection: close");

        let mut huge = connect(address);
        let padding = "x".repeat(MAX_HEAD_BYTES);
        // The server may answer and close before all of it is written.
        let _ = write!(huge, "GET / HTTP/1.1\r\nX-Padding: {padding}\r\n\r\n");
        assert_eq!(read_response(&mut huge, false).0, 431);

        let mut garbage = connect(address);
        garbage.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut garbage, false).0, 400);
    }
}
