//! A small HTTP/1.1 server for what qvdc serves over HTTP: Prometheus metrics on nodes and
//! hosts, and the dashboard `qvctl dashboard` serves on the operator's machine.
//!
//! One request per connection (`Connection: close`), or one event stream. Everything a peer
//! sends is bounded before it is kept: the head to [`HEAD_BYTES_MAX`], the body to the
//! caller's limit, the time to send them to [`REQUEST_TIMEOUT_MS`], and the connections
//! served at once to [`CONNECTIONS_MAX`]. Anything else gets a 4xx answer naming what was
//! wrong.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};
use tracing::debug;

/// The longest request line and headers taken.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// How long a client gets to send its whole request.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Connections served at once; more wait to be accepted.
pub const CONNECTIONS_MAX: usize = 64;
/// How long one write of an answer may take before the client is given up.
const WRITE_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// What follows `?`, if anything (not decoded).
    pub query: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
    }
}

/// Decodes `%XX` escapes and `+` (a space, in forms); invalid escapes stay as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3) {
                Some(&[high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                    let digit = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
                    out.push(digit(high) * 16 + digit(low));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub enum HttpBody {
    Full(Vec<u8>),
    /// Chunks written as they come until the sender is dropped (server-sent events).
    Stream(mpsc::Receiver<Vec<u8>>),
}

pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: HttpBody,
}

impl HttpResponse {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: content_type.to_owned(),
            headers: Vec::new(),
            body: HttpBody::Full(body.into()),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub fn json(status: u16, json: String) -> Self {
        Self::new(status, "application/json", json)
    }

    pub fn stream(content_type: &str, chunks: mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type: content_type.to_owned(),
            headers: vec![("cache-control".into(), "no-store".into())],
            body: HttpBody::Stream(chunks),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        303 => "See Other",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Why a request could not be read: the status to answer with and what to say.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub u16, pub String);

/// Parses a request head (request line and headers, without the blank line).
pub fn parse_head(head: &[u8]) -> Result<HttpRequest, Refusal> {
    let bad = |what: &str| Refusal(400, what.to_owned());
    let head = std::str::from_utf8(head).map_err(|_| bad("the request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the request line is not METHOD TARGET HTTP/1.1"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(Refusal(
            505,
            format!("{version} is not served; use HTTP/1.1"),
        ));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("the method is not an HTTP method"));
    }
    if !target.starts_with('/') {
        return Err(bad("the target must be a path starting with /"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("a header line has no ':'"));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("a header name is not a token"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(HttpRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: Vec::new(),
    })
}

/// Reads one request from `stream`: its head, then a body of at most `body_max` bytes.
async fn read_request(stream: &mut TcpStream, body_max: usize) -> Result<HttpRequest, Refusal> {
    let mut buffer = Vec::with_capacity(1024);
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > HEAD_BYTES_MAX {
            return Err(Refusal(
                431,
                format!("the request head is longer than {HEAD_BYTES_MAX} bytes"),
            ));
        }
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Refusal(400, e.to_string()))?;
        if n == 0 {
            return Err(Refusal(400, "the connection closed mid-request".into()));
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let mut request = parse_head(&buffer[..end])?;
    if request.header("transfer-encoding").is_some() {
        return Err(Refusal(
            411,
            "chunked request bodies are not taken; send Content-Length".into(),
        ));
    }
    let lengths: Vec<&str> = request
        .headers
        .iter()
        .filter(|(name, _)| name == "content-length")
        .map(|(_, value)| value.as_str())
        .collect();
    let length = match lengths.as_slice() {
        [] => 0,
        [value] if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => value
            .parse::<usize>()
            .map_err(|_| Refusal(413, "Content-Length is too large".into()))?,
        [_] => return Err(Refusal(400, "Content-Length is not a number".into())),
        _ => {
            return Err(Refusal(
                400,
                "Content-Length is given more than once".into(),
            ))
        }
    };
    if length > body_max {
        return Err(Refusal(
            413,
            format!("the body is {length} bytes, more than the {body_max} taken"),
        ));
    }
    let mut body = buffer.split_off(end + 4);
    if body.len() > length {
        return Err(Refusal(400, "more bytes than Content-Length said".into()));
    }
    let missing = length - body.len();
    let mut rest = vec![0u8; missing];
    stream
        .read_exact(&mut rest)
        .await
        .map_err(|_| Refusal(400, "the body is shorter than Content-Length said".into()))?;
    body.extend(rest);
    request.body = body;
    Ok(request)
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(WRITE_TIMEOUT_MS),
            stream.write_all(bytes)
        )
        .await,
        Ok(Ok(()))
    )
}

async fn respond(stream: &mut TcpStream, response: HttpResponse) {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\nconnection: close\r\nx-content-type-options: nosniff\r\n",
        response.status,
        reason(response.status),
        response.content_type
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match response.body {
        HttpBody::Full(body) => {
            head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
            let mut bytes = head.into_bytes();
            bytes.extend(body);
            write_all(stream, &bytes).await;
        }
        HttpBody::Stream(mut chunks) => {
            head.push_str("\r\n");
            if !write_all(stream, head.as_bytes()).await {
                return;
            }
            while let Some(chunk) = chunks.recv().await {
                if !write_all(stream, &chunk).await {
                    return; // the reader left; dropping the receiver tells the sender
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// Serves `listener` until the task is dropped: each request is read (a body of at most
/// `body_max` bytes) and answered by `handler`.
pub async fn serve<H, F>(listener: TcpListener, body_max: usize, handler: H)
where
    H: Fn(HttpRequest) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let read = tokio::time::timeout(
                Duration::from_millis(REQUEST_TIMEOUT_MS),
                read_request(&mut stream, body_max),
            )
            .await;
            let response = match read {
                Ok(Ok(request)) => handler(request).await,
                Ok(Err(Refusal(status, why))) => HttpResponse::text(status, why),
                Err(_) => HttpResponse::text(408, "the request took too long to arrive"),
            };
            debug!(%peer, status = response.status, "HTTP request answered");
            respond(&mut stream, response).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_and_malformed_ones_refused_with_a_reason() {
        let request =
            parse_head(b"GET /api/pools?name=shared%2Dnfs&x HTTP/1.1\r\nHost: 127.0.0.1:8080")
                .unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/api/pools");
        assert_eq!(request.param("name").as_deref(), Some("shared-nfs"));
        assert_eq!(request.param("x").as_deref(), Some(""));
        assert_eq!(request.header("host"), Some("127.0.0.1:8080"));
        for bad in [
            &b"GET /"[..],
            b"GET / HTTP/1.1 extra",
            b"get / HTTP/1.1",
            b"GET relative HTTP/1.1",
            b"GET / HTTP/1.1\r\nno colon",
            b"GET / HTTP/1.1\r\nbad name: x",
            b"GET / HTTP/1.1\r\n\xff: x",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_head(b"GET / HTTP/2.0").unwrap_err().0, 505);
    }

    #[test]
    fn percent_decoding_takes_only_whole_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e2%9c%93"), "✓");
    }

    /// A client that sends an endless head, or a body bigger than allowed, is answered with
    /// the reason and the connection closed, without the server keeping what it sent.
    #[tokio::test]
    async fn oversized_requests_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, 1024, |request: HttpRequest| async move {
            HttpResponse::text(200, format!("{} bytes", request.body.len()))
        }));
        async fn exchange(addr: std::net::SocketAddr, bytes: Vec<u8>) -> String {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let _ = stream.write_all(&bytes).await;
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer).await;
            answer
        }
        let ok = exchange(
            addr,
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc".to_vec(),
        )
        .await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("3 bytes"),
            "{ok}"
        );
        let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'a', HEAD_BYTES_MAX + 10));
        assert!(exchange(addr, endless).await.starts_with("HTTP/1.1 431"));
        let big = b"POST / HTTP/1.1\r\ncontent-length: 5000\r\n\r\n".to_vec();
        assert!(exchange(addr, big).await.starts_with("HTTP/1.1 413"));
        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        assert!(exchange(addr, chunked).await.starts_with("HTTP/1.1 411"));
        let twice = b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec();
        assert!(exchange(addr, twice).await.starts_with("HTTP/1.1 400"));
        let signed = b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\na".to_vec();
        assert!(exchange(addr, signed).await.starts_with("HTTP/1.1 400"));
        server.abort();
    }
}
