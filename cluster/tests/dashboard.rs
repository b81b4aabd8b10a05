//! The dashboard in a real headless browser (Debian's chromium driven through chromedriver,
//! both installed by scripts/setup.sh) against the `qvdc dev` sandbox: the pool detail page
//! shows the pool healthy on two hosts and failed with its error on the third; a pool
//! created through the form appears on the list without a reload; a host agent killed turns
//! Unreachable on the hosts page within the liveness time. And the dashboard refuses what
//! another site's page could send it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

mod support;

use support::{env_of, free_metrics_base, free_tcp_port, free_udp_run};

const QVDC: &str = env!("CARGO_BIN_EXE_qvdc");
const QVCTL: &str = env!("CARGO_BIN_EXE_qvctl");
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The control plane's liveness bound (`Timings::stale_after_ms`).
const LIVENESS: Duration = Duration::from_secs(3);

/// Kills the process when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `qvdc dev`, stopped with Ctrl-C (SIGINT) when dropped so it cleans up its mounts.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let started = Instant::now();
        while matches!(self.0.try_wait(), Ok(None)) && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qvctl(env: &[(String, String)], args: &[&str]) -> (bool, String) {
    let out = Command::new(QVCTL)
        .envs(env.iter().cloned())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn eventually<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 exchange on loopback; returns the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    // The head, then as many bytes as it says (a server may keep the connection open).
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&answer).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut body = Vec::new();
    match length {
        Some(length) => {
            body.resize(length, 0);
            let _ = stream.read_exact(&mut body);
        }
        None => {
            let _ = stream.read_to_end(&mut body);
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A W3C WebDriver session with chromedriver.
struct Browser {
    port: u16,
    session: String,
    _driver: Reaped,
}

impl Browser {
    fn start() -> Self {
        let port = free_tcp_port();
        let driver = Reaped(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver runs (scripts/setup.sh installs chromium-driver)"),
        );
        eventually("chromedriver answers", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1400,900"]
            }
        }}});
        let (status, body) = http(port, "POST", "/session", &[], &capabilities.to_string());
        assert_eq!(status, 200, "a browser session starts: {body}");
        let session: Value = serde_json::from_str(&body).unwrap();
        let session = session["value"]["sessionId"].as_str().unwrap().to_owned();
        Self {
            port,
            session,
            _driver: driver,
        }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, text) = http(self.port, method, &path, &[], &body);
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 {
            return Err(text);
        }
        Ok(value["value"].clone())
    }

    /// Does `act` on the element `css` finds, finding it again if the page redrew it in
    /// between (a live page replaces its content when news arrives).
    fn on_element(&self, css: &str, act: &str, body: Value) {
        for _ in 0..20 {
            let element = self.element(css);
            let shown = format!("document.querySelector('{css}')?.scrollIntoView(); return 0");
            self.script(&shown);
            match self.try_call("POST", &format!("/element/{element}/{act}"), body.clone()) {
                Ok(_) => return,
                Err(e) if e.contains("stale element") || e.contains("not interactable") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{act} on {css}: {e}"),
            }
        }
        panic!("{css} kept being redrawn");
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({ "text": text }));
    }

    fn click(&self, css: &str) {
        self.on_element(css, "click", json!({}));
    }

    fn element_exists(&self, css: &str) -> bool {
        let script = format!("return document.querySelector('{css}') !== null");
        self.script(&script) == json!(true)
    }

    /// The rows of table `css` as the page shows them, cell texts.
    fn rows(&self, css: &str) -> Vec<Vec<String>> {
        let script = format!(
            "return [...document.querySelectorAll('{css} tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
        );
        serde_json::from_value(self.script(&script)).unwrap_or_default()
    }

    fn screenshot(&self, to: &Path) {
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = decode_base64(png.as_str().unwrap());
        std::fs::write(to, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = http(self.port, "DELETE", &path, &[], "");
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn the_dashboard_shows_pool_health_per_host_takes_forms_and_follows_liveness_live() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root (the sandbox's dir pools bind-mount)");
        assert!(
            std::env::var_os("QVDC_REQUIRE_REAL").is_none(),
            "QVDC_REQUIRE_REAL is set: this test must run"
        );
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = scratch.path().join("sandbox");
    let mut dev = Command::new(QVDC)
        .args(["dev", "--dir", sandbox.to_str().unwrap(), "--hosts", "3"])
        .args(["--base-port", &free_udp_run().to_string()])
        .args(["--metrics-port", &free_metrics_base().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = dev.stdout.take().unwrap();
    let dev = Dev(dev);
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("qvdc dev ended early").unwrap();
        if line.contains("Press Ctrl-C") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "qvdc dev did not come up"
        );
    }
    std::thread::spawn(move || for _ in lines {});
    let env = env_of(&sandbox);
    eventually("every host Ready", Duration::from_secs(30), || {
        let (ok, text) = qvctl(&env, &["host", "list"]);
        (ok && text.matches("Ready").count() == 3).then_some(())
    });
    // host-3 refuses a pool source inside its own data directory, which hosts 1 and 2 take.
    let export = sandbox.join("host-3").join("export");
    std::fs::create_dir_all(&export).unwrap();
    let path = export.display().to_string();
    let (ok, text) = qvctl(
        &env,
        &[
            "pool",
            "create",
            "shared",
            "--type",
            "dir",
            "--path",
            &path,
            "--hosts",
            "host-1,host-2,host-3",
        ],
    );
    assert!(ok, "{text}");

    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let _dashboard = Reaped(
        Command::new(QVCTL)
            .envs(env.iter().cloned())
            .args(["dashboard", "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the dashboard answers", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let base = format!("http://{listen}/");

    // What another site's page could send is refused: a change without the page's token, and
    // any request naming another host (DNS rebinding).
    let form =
        json!({"name": "evil", "type": "dir", "path": "/etc", "hosts": "host-1"}).to_string();
    let (status, body) = http(
        port,
        "POST",
        "/api/pools",
        &[("Content-Type", "application/json")],
        &form,
    );
    assert_eq!(status, 403, "a change without the token: {body}");
    let (status, _) = http(
        port,
        "GET",
        "/api/pools",
        &[("Host", "attacker.example:80")],
        "",
    );
    assert_eq!(status, 403, "a request for another host name");
    let (_, pools) = http(port, "GET", "/api/pools", &[], "");
    assert!(!pools.contains("evil"), "nothing was created: {pools}");

    let browser = Browser::start();
    // The seed's aggregate: healthy on host-1 and host-2, failed with its error on host-3.
    browser.go(&format!("{base}#/pools/shared"));
    let rows = eventually("the pool's per-host table", Duration::from_secs(30), || {
        let rows = browser.rows("#pool-hosts");
        let state = |host: &str| rows.iter().find(|r| r[0] == host).cloned();
        let healthy = |host| state(host).is_some_and(|r| r[1] == "HEALTHY");
        let failed = state("host-3").is_some_and(|r| r[1] == "ERROR" && !r[6].is_empty());
        (healthy("host-1") && healthy("host-2") && failed).then_some(rows)
    });
    eprintln!("pool detail page: {rows:?}");
    if let Some(to) = std::env::var_os("QVDC_DASHBOARD_SCREENSHOT") {
        browser.screenshot(Path::new(&to));
    }

    // A pool created through the form shows on the list without a reload (the marker set
    // on the loaded page survives).
    browser.go(&format!("{base}#/pools"));
    eventually("the pools page", Duration::from_secs(10), || {
        (!browser.rows("#pools-table").is_empty()).then_some(())
    });
    browser.script("window.loadedOnce = 42; return 0");
    let formed = scratch.path().join("formed");
    std::fs::create_dir_all(&formed).unwrap();
    browser.type_into("#pool-form input[name=name]", "formed");
    browser.type_into("#pool-form input[name=path]", formed.to_str().unwrap());
    browser.type_into("#pool-form input[name=hosts]", "host-1");
    browser.click("#pool-form button");
    eventually("the new pool on the list", Duration::from_secs(15), || {
        browser
            .rows("#pools-table")
            .iter()
            .any(|r| r[0] == "formed")
            .then_some(())
    });
    assert_eq!(
        browser.script("return window.loadedOnce"),
        json!(42),
        "the page was reloaded"
    );

    // Its page assigns it to another host through a form, and a VM is created through one.
    browser.go(&format!("{base}#/pools/formed"));
    eventually("the new pool's page", Duration::from_secs(10), || {
        (!browser.rows("#pool-hosts").is_empty()).then_some(())
    });
    browser.type_into("#assign-form input[name=hosts]", "host-2");
    browser.click("#assign-form button");
    eventually(
        "host-2 in the pool's table",
        Duration::from_secs(15),
        || {
            let rows = browser.rows("#pool-hosts");
            rows.iter().any(|r| r[0] == "host-2").then_some(())
        },
    );
    browser.go(&format!("{base}#/vms"));
    eventually("the VMs page", Duration::from_secs(10), || {
        browser.element_exists("#vm-form").then_some(())
    });
    browser.type_into("#vm-form input[name=name]", "from-form");
    browser.type_into(
        "#vm-form input[name=memory_mib]",
        "\u{e003}\u{e003}\u{e003}64",
    );
    browser.type_into("#vm-form input[name=host]", "host-1");
    browser.click("#vm-form input[name=start]");
    browser.click("#vm-form button");
    eventually(
        "the new VM running on the list",
        Duration::from_secs(20),
        || {
            let rows = browser.rows("#vms-table");
            rows.iter()
                .any(|r| r[0] == "from-form" && r[1] == "host-1" && r[3] == "running")
                .then_some(())
        },
    );

    // A host agent killed: Unreachable on the hosts page within the liveness time.
    browser.go(&format!("{base}#/hosts"));
    eventually("the hosts page", Duration::from_secs(10), || {
        (browser.rows("#hosts-table").len() == 3).then_some(())
    });
    browser.script("window.loadedOnce = 43; return 0");
    let nodes: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(sandbox.join("nodes.json")).unwrap())
            .unwrap();
    let host_2 = nodes.iter().find(|n| n["id"] == "host-2").unwrap()["pid"]
        .as_i64()
        .unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host_2 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The leader declares it Unreachable 3 s after its last heartbeat; the page follows
    // within one reported-state round (200 ms) and a redraw.
    eventually(
        "host-2 Unreachable on the page",
        LIVENESS + Duration::from_secs(1),
        || {
            browser
                .rows("#hosts-table")
                .iter()
                .any(|r| r[0] == "host-2" && r[1] == "Unreachable")
                .then_some(())
        },
    );
    let shown = killed.elapsed();
    assert_eq!(
        browser.script("return window.loadedOnce"),
        json!(43),
        "the page was reloaded"
    );
    eprintln!(
        "host-2 killed: Unreachable on the page after {} ms (liveness bound {} ms)",
        shown.as_millis(),
        LIVENESS.as_millis()
    );
    drop(browser);
    drop(dev);
}
