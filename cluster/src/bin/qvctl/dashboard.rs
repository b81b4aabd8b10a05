//! `qvctl dashboard`: a web UI served on the operator's own machine (ADR 27), like
//! `kubectl proxy`. The browser talks HTTP to this process on loopback; this process talks to
//! the cluster over QUIC with the operator's certificate, so the servers get no new
//! network-facing login. Pages are static files embedded in the binary (no CDN, no build
//! step); they read JSON from `/api/...` and follow `/api/stream` (server-sent events from
//! the watch API) to update without reloading.
//!
//! Who may use it: requests must name this server in `Host` (a page of another site that
//! resolves its own name to 127.0.0.1 — DNS rebinding — is refused), and changes (`POST`)
//! must carry the token embedded in the page this server served (`X-Qvdc-Token`), which
//! another site's page cannot read; a cross-site form cannot send the header at all.

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use qvdc_cluster::{
    client::{Client, ClientError},
    follow::{Follower, FOLLOW_WAIT_MS},
    output::{self, Format},
};
use qvdc_transport::{
    http::{self, HttpRequest, HttpResponse},
    protocol::{
        ApiErrorKind, ApiRequest, ApiResponse, DesiredPower, PoolScope, PoolSource, PoolSpec,
        VmDisk, VmSpec, VolumeFormat,
    },
};
use serde::Deserialize;
use tokio::sync::{mpsc, Mutex};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
/// The largest form body taken.
const BODY_MAX: usize = 64 * 1024;
/// Event-stream subscribers at once (each holds a connection and a blocking query).
const STREAMS_MAX: usize = 16;

struct Dashboard {
    /// For reads and changes, one at a time (a person clicks; this is no load balancer).
    client: Mutex<Client>,
    /// Makes a client for each event stream, so a blocking query never holds up a page.
    connect: Box<dyn Fn() -> anyhow::Result<Client> + Send + Sync>,
    /// The `Host` values requests may carry: this server's address, by IP or as localhost.
    hosts: Vec<String>,
    /// Proves a change comes from a page this server served.
    token: String,
    streams: Arc<tokio::sync::Semaphore>,
}

fn error(status: u16, message: impl Into<String>) -> HttpResponse {
    let body = serde_json::json!({ "error": message.into() });
    HttpResponse::json(status, body.to_string())
}

fn status_of(e: &ClientError) -> u16 {
    match e {
        ClientError::Rejected(api) => match api.kind {
            ApiErrorKind::NotFound => 404,
            ApiErrorKind::AlreadyExists => 409,
            ApiErrorKind::Unavailable => 503,
            ApiErrorKind::Internal => 500,
            ApiErrorKind::Invalid => 400,
        },
        ClientError::Forbidden(_) => 403,
        ClientError::Timeout { .. } => 504,
        ClientError::Unreachable { .. } => 502,
        _ => 502,
    }
}

/// A random token of 128 bits, in hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Dashboard {
    async fn ask(&self, request: ApiRequest) -> HttpResponse {
        let answer = self.client.lock().await.request(request).await;
        match answer {
            Ok(response) => HttpResponse::json(200, output::render(&response, Format::Json)),
            Err(e) => error(status_of(&e), e.to_string()),
        }
    }

    async fn request_id(&self) -> String {
        self.client.lock().await.new_request_id()
    }

    async fn route(self: Arc<Self>, request: HttpRequest) -> HttpResponse {
        let host = request.header("host").unwrap_or_default();
        if !self.hosts.iter().any(|h| h == host) {
            return error(
                403,
                format!(
                    "this dashboard answers only to {}; open it by that address",
                    self.hosts[0]
                ),
            );
        }
        let path: Vec<&str> = request.path.trim_matches('/').split('/').collect();
        let decoded: Vec<String> = path.iter().map(|p| http::percent_decode(p)).collect();
        let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
        if request.method == "POST" {
            if request.header("x-qvdc-token") != Some(self.token.as_str()) {
                return error(
                    403,
                    "a change must come from this dashboard's own page (missing or wrong X-Qvdc-Token); reload the page",
                );
            }
            return self.change(&segments, &request.body).await;
        }
        if request.method != "GET" {
            return error(405, format!("{} is not served here", request.method));
        }
        match segments.as_slice() {
            [""] | ["index.html"] => {
                let page = INDEX.replace("{{TOKEN}}", &self.token);
                HttpResponse::new(200, "text/html; charset=utf-8", page)
                    .with_header(
                        "content-security-policy",
                        "default-src 'self'; frame-ancestors 'none'",
                    )
                    .with_header("cache-control", "no-store")
            }
            ["app.js"] => HttpResponse::new(200, "text/javascript; charset=utf-8", SCRIPT),
            ["style.css"] => HttpResponse::new(200, "text/css; charset=utf-8", STYLE),
            ["api", "status"] => self.ask(ApiRequest::ClusterStatus).await,
            ["api", "hosts"] => self.ask(ApiRequest::HostList).await,
            ["api", "hosts", host] => {
                self.ask(ApiRequest::HostShow {
                    host: (*host).into(),
                })
                .await
            }
            ["api", "pools"] => self.ask(ApiRequest::PoolList).await,
            ["api", "pools", name] => {
                self.ask(ApiRequest::PoolShow {
                    name: (*name).into(),
                })
                .await
            }
            ["api", "volumes", pool] => {
                self.ask(ApiRequest::VolumeList {
                    pool: (*pool).into(),
                })
                .await
            }
            ["api", "vms"] => self.ask(ApiRequest::VmList).await,
            ["api", "vms", name] => {
                self.ask(ApiRequest::VmShow {
                    name: (*name).into(),
                })
                .await
            }
            ["api", "networks"] => self.ask(ApiRequest::NetworkList).await,
            ["api", "moves"] => self.ask(ApiRequest::Moves).await,
            ["api", "events"] => {
                let last = request
                    .param("last")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(50);
                let mut client = self.client.lock().await;
                let follower = Follower::last(&mut client, last).await;
                let page = match follower {
                    Ok(mut follower) => follower.next(&mut client, 0).await,
                    Err(e) => Err(e),
                };
                match page {
                    Ok(page) => HttpResponse::json(
                        200,
                        output::render(&ApiResponse::Events(page), Format::Json),
                    ),
                    Err(e) => error(status_of(&e), e.to_string()),
                }
            }
            ["api", "stream"] => self.stream().await,
            _ => error(404, format!("nothing at {}", request.path)),
        }
    }

    /// `/api/stream`: the watch API as server-sent events, one per change and per reported
    /// event, from now on; across leader changes and reconnections.
    async fn stream(&self) -> HttpResponse {
        let Ok(slot) = self.streams.clone().try_acquire_owned() else {
            return error(503, format!("{STREAMS_MAX} event streams are open already"));
        };
        let mut client = match (self.connect)() {
            Ok(client) => client,
            Err(e) => return error(502, e.to_string()),
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
        tokio::spawn(async move {
            let _slot = slot;
            let mut follower = tokio::select! {
                follower = Follower::now(&mut client) => follower,
                () = tx.closed() => return,
            };
            // Tells the page the stream is live (and keeps proxies from buffering).
            if tx.send(b": connected\n\n".to_vec()).await.is_err() {
                return;
            }
            loop {
                let page = tokio::select! {
                    page = follower.next(&mut client, FOLLOW_WAIT_MS) => page,
                    () = tx.closed() => return,
                };
                let mut chunk = String::new();
                match page {
                    Ok(page) => {
                        for change in &page.changes {
                            let data = serde_json::to_string(change).unwrap_or_default();
                            chunk.push_str(&format!("event: change\ndata: {data}\n\n"));
                        }
                        for event in &page.reported {
                            let data = serde_json::to_string(event).unwrap_or_default();
                            chunk.push_str(&format!("event: reported\ndata: {data}\n\n"));
                        }
                        if chunk.is_empty() {
                            chunk.push_str(": idle\n\n");
                        }
                    }
                    Err(e) => {
                        let data = serde_json::json!({ "error": e.to_string() });
                        chunk.push_str(&format!("event: trouble\ndata: {data}\n\n"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                if tx.send(chunk.into_bytes()).await.is_err() {
                    return; // the page went away
                }
            }
        });
        HttpResponse::stream("text/event-stream", rx)
    }

    async fn change(&self, path: &[&str], body: &[u8]) -> HttpResponse {
        let request_id = self.request_id().await;
        let request = match path {
            ["api", "pools"] => parse::<PoolForm>(body).and_then(|f| f.request(request_id)),
            ["api", "pools", pool, action @ ("assign" | "unassign")] => parse::<HostsForm>(body)
                .map(|f| {
                    let assign = *action == "assign";
                    ApiRequest::pool_hosts(request_id, (*pool).to_owned(), f.hosts(), assign)
                }),
            ["api", "vms"] => parse::<VmForm>(body).and_then(|f| f.request(request_id)),
            ["api", "vms", name, power @ ("start" | "stop")] => Ok(ApiRequest::VmSetPower {
                request_id,
                name: (*name).into(),
                power: if *power == "start" {
                    DesiredPower::Running
                } else {
                    DesiredPower::Stopped
                },
            }),
            _ => return error(404, "no such change"),
        };
        match request {
            Ok(request) => self.ask(request).await,
            Err(why) => error(400, why),
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("the form is not what was expected: {e}"))
}

/// A comma- or space-separated list of host names.
fn host_list(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Deserialize)]
struct HostsForm {
    hosts: String,
}

impl HostsForm {
    fn hosts(&self) -> Vec<String> {
        host_list(&self.hosts)
    }
}

#[derive(Deserialize)]
struct PoolForm {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    server: String,
    #[serde(default)]
    export: String,
    #[serde(default)]
    options: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    fs_type: String,
    #[serde(default)]
    local: bool,
    hosts: String,
}

impl PoolForm {
    fn request(self, request_id: String) -> Result<ApiRequest, String> {
        let needed = |value: String, what: &str| {
            if value.trim().is_empty() {
                Err(format!("a {} pool needs its {what}", self.kind))
            } else {
                Ok(value.trim().to_owned())
            }
        };
        let source = match self.kind.as_str() {
            "dir" => PoolSource::Dir {
                path: needed(self.path.clone(), "path")?,
            },
            "nfs" => PoolSource::Nfs {
                server: needed(self.server.clone(), "server")?,
                export: needed(self.export.clone(), "export")?,
                options: Some(self.options.trim().to_owned()).filter(|o| !o.is_empty()),
            },
            "block" => PoolSource::Block {
                device: needed(self.device.clone(), "device")?,
                fs_type: needed(self.fs_type.clone(), "filesystem type")?,
            },
            other => return Err(format!("pool type {other:?} is not dir, nfs or block")),
        };
        Ok(ApiRequest::PoolCreate {
            request_id,
            spec: PoolSpec {
                name: self.name.trim().to_owned(),
                source,
                scope: if self.local {
                    PoolScope::Local
                } else {
                    PoolScope::Shared
                },
            },
            hosts: host_list(&self.hosts),
        })
    }
}

#[derive(Deserialize)]
struct VmForm {
    name: String,
    vcpus: u32,
    memory_mib: u64,
    /// POOL/VOLUME, comma-separated.
    #[serde(default)]
    disks: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    start: bool,
}

impl VmForm {
    fn request(self, request_id: String) -> Result<ApiRequest, String> {
        let disks = self
            .disks
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| match d.split_once('/') {
                Some((pool, volume)) if !pool.is_empty() && !volume.is_empty() => Ok(VmDisk {
                    pool: pool.into(),
                    volume: volume.into(),
                    format: if volume.ends_with(".raw") || volume.ends_with(".img") {
                        VolumeFormat::Raw
                    } else {
                        VolumeFormat::Qcow2
                    },
                }),
                _ => Err(format!(
                    "disk {d:?} must be POOL/VOLUME, like shared/web.qcow2"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ApiRequest::VmCreate {
            request_id,
            spec: VmSpec {
                id: String::new(),
                name: self.name.trim().to_owned(),
                vcpus: self.vcpus,
                memory_bytes: self.memory_mib.saturating_mul(1 << 20),
                disks,
                nics: Vec::new(),
            },
            host: Some(self.host.trim().to_owned()).filter(|h| !h.is_empty()),
            start: self.start,
        })
    }
}

/// Runs the dashboard on `listen` until interrupted; opens a browser if `open`.
pub(crate) async fn run(
    listen: SocketAddr,
    open: bool,
    connect: Box<dyn Fn() -> anyhow::Result<Client> + Send + Sync>,
) -> anyhow::Result<ExitCode> {
    if !listen.ip().is_loopback() {
        eprintln!(
            "warning: the dashboard acts with your certificate for whoever reaches {listen}; \
             keep it on a loopback address unless that network is yours alone"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen}: {e} (pick another with --listen)")
    })?;
    let bound = listener.local_addr()?;
    let mut hosts = vec![bound.to_string()];
    if bound.ip().is_loopback() {
        hosts.push(format!("localhost:{}", bound.port()));
    }
    let client = connect()?;
    let dashboard = Arc::new(Dashboard {
        client: Mutex::new(client),
        connect,
        hosts,
        token: new_token(),
        streams: Arc::new(tokio::sync::Semaphore::new(STREAMS_MAX)),
    });
    let url = format!("http://{bound}/");
    println!("qvdc dashboard at {url} (Ctrl-C stops it)");
    if open {
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_err() {
            eprintln!("could not start a browser (xdg-open); open {url} yourself");
        }
    }
    let serving = http::serve(listener, BODY_MAX, move |request| {
        dashboard.clone().route(request)
    });
    tokio::select! {
        () = serving => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}
