//! Test harness: writes apps into temp directories, runs the real `tessera` binary on
//! 127.0.0.1:0, and collects what it prints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workspace root, where guest components are built.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

/// Path of a guest component from `crates/test-programs`, built by `cargo xtask guests`.
pub fn guest(name: &str) -> PathBuf {
    // Where cargo put them: `CARGO_TARGET_DIR` (relative to the workspace) or `target`.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), |dir| workspace().join(dir));
    let path = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.exists(),
        "guest component {} is missing: build the guests with `cargo xtask guests`",
        path.display()
    );
    path
}

/// An app directory with a manifest, in a temp directory removed on drop.
pub struct App {
    pub dir: tempfile::TempDir,
}

impl App {
    /// Writes `manifest` as the app's tessera.toml. `{guest:NAME}` placeholders become
    /// the absolute paths of test guests.
    pub fn new(manifest: &str) -> App {
        let app = App {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        app.write_manifest(manifest);
        app
    }

    /// Replaces the app's tessera.toml, expanding `{guest:NAME}` placeholders.
    pub fn write_manifest(&self, manifest: &str) {
        let mut text = manifest.to_string();
        while let Some(start) = text.find("{guest:") {
            let end = start + text[start..].find('}').expect("closing brace");
            let name = &text[start + 7..end];
            let path = guest(name).display().to_string();
            text.replace_range(start..=end, &path);
        }
        std::fs::write(self.path().join("tessera.toml"), text).expect("write manifest");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `tessera up` on this app.
    pub fn up(&self) -> Node {
        Node::up(self.path(), &[])
    }
}

/// Output lines collected from a child process.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(&self, stream: impl std::io::Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until a line contains `needle` and returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(line) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A running `tessera up`, killed on drop.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin (control API) address, for `tessera serve`.
    pub admin: Option<SocketAddr>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Node {
    pub fn up(app: &Path, extra: &[&str]) -> Node {
        Node::up_with_env(app, extra, &[])
    }

    /// Like [`Node::up`], with extra environment variables for the node process.
    pub fn up_with_env(app: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let mut command = tessera();
        command
            .envs(env.iter().copied())
            .arg("up")
            .arg(app)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra);
        Node::start(command)
    }

    /// Starts `tessera serve` on `data` with the given token.
    pub fn serve(data: &Path, token: &str) -> Node {
        Node::serve_with(data, token, &[])
    }

    /// Like [`Node::serve`], with extra arguments.
    pub fn serve_with(data: &Path, token: &str, extra: &[&str]) -> Node {
        Node::start(serve_command(data, token, extra))
    }

    /// Starts a node from a prepared command (see [`serve_command`]).
    pub fn start_command(command: Command) -> Node {
        Node::start(command)
    }

    fn start(mut command: Command) -> Node {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera");
        let stdout = Lines::default();
        let stderr = Lines::default();
        stdout.collect(child.stdout.take().unwrap());
        stderr.collect(child.stderr.take().unwrap());
        let marker = "gateway listening on http://";
        let Some(line) = stderr.wait_for(marker, Duration::from_secs(120)) else {
            let _ = child.kill();
            panic!("tessera did not start; stderr:\n{}", stderr.text());
        };
        let addr = address_after(&line, marker);
        let admin = stderr
            .wait_for("control API listening on http://", Duration::from_secs(1))
            .map(|line| address_after(&line, "control API listening on http://"));
        Node {
            child,
            addr,
            admin,
            stdout,
            stderr,
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("a serve node"))
    }

    /// Runs a CLI command against this node's control API.
    pub fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        tessera()
            .env("TESSERA_SERVER", self.admin_url(""))
            .env("TESSERA_TOKEN", token)
            .args(args)
            .output()
            .expect("run tessera")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM, as a process manager would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "tessera did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the node so far, from /proc.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address_after(line: &str, marker: &str) -> SocketAddr {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    let addr = rest.split(['/', ' ']).next().unwrap();
    addr.parse().unwrap()
}

/// The `tessera serve` command line on `data` with the given token and extra arguments.
pub fn serve_command(data: &Path, token: &str, extra: &[&str]) -> Command {
    let mut command = tessera();
    command
        .env("TESSERA_TOKEN", token)
        .arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(extra);
    command
}

/// The binary under test.
pub fn tessera() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.env("RUST_LOG", "info");
    command
}

/// Runs `tessera up` on an app expected to be refused; returns (status, stderr).
pub fn up_fails(app: &Path) -> (ExitStatus, String) {
    let output = tessera()
        .arg("up")
        .arg(app)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .expect("run tessera");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "tessera panicked instead of reporting an error:\n{stderr}"
    );
    (output.status, stderr)
}

/// A plain blocking HTTP/1.0 GET, for tests without an async runtime: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nhost: test\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response[9..12].parse().expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Reads a JSON error body and checks its shape: `{"error": {"code", "message",
/// "request_id"}}`; returns the code.
pub async fn error_code(response: reqwest::Response) -> String {
    let header_id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id on error responses")
        .to_str()
        .unwrap()
        .to_string();
    let json: serde_json::Value = response.json().await.expect("JSON error body");
    let error = &json["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert_eq!(
        error["request_id"].as_str(),
        Some(header_id.as_str()),
        "{json}"
    );
    error["code"].as_str().expect("error code").to_string()
}

/// The stdout of a command that must have succeeded (its stderr and stdout otherwise).
pub fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls until `check` holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The node's `/metrics`, read with `token`.
pub async fn scrape(node: &Node, token: &str) -> String {
    let r = client()
        .get(node.admin_url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the sample line starting with `series` (name and labels).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The value of one service's series of `metric` (revision r1, `extra` labels after it),
/// 0 when absent.
pub fn service_metric(metrics: &str, metric: &str, app: &str, service: &str, extra: &str) -> f64 {
    let series = format!(r#"{metric}{{app="{app}",service="{service}",revision="r1"{extra}}}"#);
    sample(metrics, &series).unwrap_or(0.0)
}

/// The instance id and request count of an `instance` or `p3` guest's answer (its last
/// two words), asked with `request_id`; the answer must be a 200.
pub async fn instance_served(node: &Node, path: &str, request_id: &str) -> (String, u32) {
    let r = client()
        .get(node.url(path))
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let text = r.text().await.unwrap();
    let mut words = text.split_whitespace().rev();
    let count = words.next().unwrap().parse().unwrap();
    let id = words.next().unwrap().to_string();
    (id, count)
}
