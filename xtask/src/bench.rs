//! `cargo xtask bench`: tessera vs `wasmtime serve` vs native hyper on the same hello world.
//!
//! A harness, not a test: it prints a table and records it in BENCHMARKS.md. Servers run as
//! child processes on free loopback ports and are always killed when the harness ends.

mod client;
pub mod cluster;
pub mod data;
pub mod events;
mod js;
pub mod polyglot;
mod probe;
mod report;
pub mod scale;
mod servers;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::guests::{self, WASM_TARGET};
use crate::native;
use crate::process::{cargo_step, repo_root, target_dir, tessera_release_binary};
use probe::Startup;
use report::{Report, Row};
use servers::{DEFAULT_WASMTIME, ScratchDir, Server, free_port};
use wrk::WrkResult;

/// Tessera may compile the component on its first start, which can take a while.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Unreported load before each measured run, so no server is measured while still warming
/// up (lazy initialisation, instance pools, CPU frequency).
const WARMUP: Duration = Duration::from_secs(1);

const TESSERA: &str = "tessera";
const TESSERA_REUSE: &str = "tessera, reuse = 128";
const WASMTIME: &str = "wasmtime serve";
const WASMTIME_REUSE: &str = "wasmtime serve, reuse 128";
const TESSERA_P3: &str = "tessera, WASI 0.3, reuse 128 × 16";
const WASMTIME_P3: &str = "wasmtime serve -Sp3, reuse 128 × 16";
const TESSERA_JS: &str = "tessera, JavaScript (jco)";
const WORKERD: &str = "workerd";
const NATIVE: &str = "native hyper";

const TESSERA_DESCRIPTION: &str = "`tessera up APP --listen 127.0.0.1:PORT` (release build, \
    RUST_LOG=warn), APP's tessera.toml routing `/` to one service, the `hello` component of \
    crates/test-programs";
const TESSERA_REUSE_DESCRIPTION: &str = "the same, with `reuse = 128` on the service: an \
    instance serves up to 128 requests, one at a time, instead of one";
const WASMTIME_DESCRIPTION: &str =
    "`wasmtime serve -Scli --addr 127.0.0.1:PORT hello.wasm`, the same component";
const WASMTIME_REUSE_DESCRIPTION: &str = "the same with `--max-instance-reuse-count 128` \
    (wasmtime 49 and later; skipped when the CLI lacks the flag)";
const TESSERA_P3_DESCRIPTION: &str = "`tessera up` as above serving the WASI 0.3 `p3` \
    component of crates/test-programs-p3 (`wasi:http/handler@0.3.0`, whose `/` answers the \
    same body) with `reuse = 128` and `reuse_concurrency = 16`";
const WASMTIME_P3_DESCRIPTION: &str = "`wasmtime serve -Scli -Sp3 --addr 127.0.0.1:PORT p3.wasm`, \
    the same component with wasmtime's defaults for 0.3 (128 requests per instance, 16 at once)";
const TESSERA_JS_DESCRIPTION: &str = "`tessera up` as above serving a JavaScript fetch \
    handler that answers the same body, built with `tessera new js` and `tessera build` \
    (jco, StarlingMonkey, WASI 0.2), a fresh instance per request: a jco 1.35 component \
    answers only the first request of an instance, so it cannot be reused";
const WORKERD_DESCRIPTION: &str = "Cloudflare's `workerd serve config.capnp` (npm `workerd`): \
    the same handler as one ES-module worker on 127.0.0.1:PORT";
const NATIVE_DESCRIPTION: &str = "hyper 1 + hyper-util auto (HTTP/1.1 keep-alive), tokio \
    multi-thread runtime, no WebAssembly (`xtask bench-native-server`, release build)";

struct Options {
    duration: Duration,
    connections: u32,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            duration: Duration::from_secs(8),
            connections: 32,
        };
        parse_flags(args, |flag, value| {
            match flag {
                "--duration" => {
                    let secs: u64 = value.parse().context("--duration takes whole seconds")?;
                    if secs == 0 {
                        bail!("--duration must be at least 1 second");
                    }
                    options.duration = Duration::from_secs(secs);
                }
                "--connections" => {
                    options.connections = value.parse().context("--connections takes a number")?;
                    if options.connections == 0 {
                        bail!("--connections must be at least 1");
                    }
                }
                _ => bail!(
                    "unknown bench option {flag:?}; usage: cargo xtask bench [--duration SECS] [--connections N]"
                ),
            }
            Ok(())
        })?;
        Ok(options)
    }
}

/// Walks options given as `--flag VALUE` or `--flag=VALUE`, handing each to `apply`.
/// Takes a valueless `switch` (such as `--cluster`) out of `args`: whether it was there,
/// and the rest for [`parse_flags`].
fn take_switch(args: &[String], switch: &str) -> (bool, Vec<String>) {
    let rest: Vec<String> = args
        .iter()
        .filter(|a| a.as_str() != switch)
        .cloned()
        .collect();
    (rest.len() != args.len(), rest)
}

fn parse_flags(args: &[String], mut apply: impl FnMut(&str, &str) -> Result<()>) -> Result<()> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if !arg.starts_with("--") {
            bail!("unexpected argument {arg:?}: options are --flag VALUE or --flag=VALUE");
        }
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, value),
            None => {
                let value = iter
                    .next()
                    .with_context(|| format!("{arg} needs a value"))?;
                (arg.as_str(), value.as_str())
            }
        };
        apply(flag, value)?;
    }
    Ok(())
}

/// A server that is up, with how its start looked.
struct Running {
    server: Server,
    startup: Startup,
}

pub fn run(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    // Look for the tools before spending minutes on builds.
    let wrk = wrk::find()?;
    let wasmtime = servers::find_wasmtime()?;
    let mut notes = Vec::new();
    if wasmtime.is_none() {
        let note = format!(
            "wasmtime serve was skipped: no $WASMTIME, no {DEFAULT_WASMTIME} and no `wasmtime` \
             on PATH; install it with `cargo install wasmtime-cli@48.0.8 --locked --root /opt/bench/wasmtime`"
        );
        println!("note: {note}");
        notes.push(note);
    }

    let tessera = build()?;
    let hello = guest_component("hello")?;
    let p3 = guest_component("p3")?;

    // Declared before the servers so it outlives them (locals drop in reverse order).
    let scratch = ScratchDir::create()?;
    let app_dir = scratch.path().join("app");
    // Shared by both starts of tessera, so the second finds the first one's compile cache.
    let data_dir = scratch.path().join("data");
    write_app(&app_dir, &hello, "")?;
    let reuse_app_dir = scratch.path().join("app-reuse");
    write_app(&reuse_app_dir, &hello, "reuse = 128\n")?;
    let p3_app_dir = scratch.path().join("app-p3");
    write_app(&p3_app_dir, &p3, "reuse = 128\nreuse_concurrency = 16\n")?;

    // Taken now, after the builds, so the load average reflects the machine we measure on.
    let machine = report::machine();
    println!("==> starting servers");
    let mut running = vec![start_tessera(
        TESSERA,
        &tessera,
        &app_dir,
        &data_dir,
        scratch.path(),
        "tessera-1",
    )?];
    running.push(start_tessera(
        TESSERA_REUSE,
        &tessera,
        &reuse_app_dir,
        &scratch.path().join("data-reuse"),
        scratch.path(),
        "tessera-reuse",
    )?);
    running.push(start_tessera(
        TESSERA_P3,
        &tessera,
        &p3_app_dir,
        &scratch.path().join("data-p3"),
        scratch.path(),
        "tessera-p3",
    )?);
    if let Some(wasmtime) = &wasmtime {
        let port = free_port()?;
        let mut cmd = Command::new(wasmtime);
        cmd.args(["serve", "-Scli", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(&hello);
        running.push(start(WASMTIME, cmd, port, "/", scratch.path(), "wasmtime")?);
        if supports(wasmtime, "--max-instance-reuse-count") {
            let port = free_port()?;
            let mut cmd = Command::new(wasmtime);
            cmd.args([
                "serve",
                "-Scli",
                "--max-instance-reuse-count",
                "128",
                "--addr",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg(&hello);
            running.push(start(
                WASMTIME_REUSE,
                cmd,
                port,
                "/",
                scratch.path(),
                "wasmtime-reuse",
            )?);
        } else {
            let note = "wasmtime serve with reuse was skipped: this wasmtime has no \
                `--max-instance-reuse-count` (it came in 49)"
                .to_owned();
            println!("note: {note}");
            notes.push(note);
        }
        if supports(wasmtime, "--max-instance-concurrent-reuse-count") {
            let port = free_port()?;
            let mut cmd = Command::new(wasmtime);
            cmd.args(["serve", "-Scli", "-Sp3", "--addr"])
                .arg(format!("127.0.0.1:{port}"))
                .arg(&p3);
            running.push(start(
                WASMTIME_P3,
                cmd,
                port,
                "/",
                scratch.path(),
                "wasmtime-p3",
            )?);
        } else {
            let note = "wasmtime serve -Sp3 was skipped: this wasmtime cannot reuse a 0.3 \
                instance concurrently (that came in 49)"
                .to_owned();
            println!("note: {note}");
            notes.push(note);
        }
    }
    match js::build_component(&tessera, &scratch.path().join("js")) {
        Ok(component) => {
            let js_app_dir = scratch.path().join("app-js");
            write_app(&js_app_dir, &component, "")?;
            running.push(start_tessera(
                TESSERA_JS,
                &tessera,
                &js_app_dir,
                &scratch.path().join("data-js"),
                scratch.path(),
                "tessera-js",
            )?);
        }
        Err(error) => {
            let note = format!(
                "the JavaScript rows were skipped: {error:#} (run `cargo xtask toolchains` for jco)"
            );
            println!("note: {note}");
            notes.push(note);
        }
    }
    let workerd = js::find_workerd()?;
    match &workerd {
        Some(workerd) => {
            let port = free_port()?;
            let cmd = js::workerd_command(workerd, &scratch.path().join("workerd"), port)?;
            running.push(start(WORKERD, cmd, port, "/", scratch.path(), "workerd")?);
        }
        None => {
            let note = format!(
                "workerd was skipped: no $WORKERD, no {} and no `workerd` on PATH; install it \
                 with `npm install --prefix /opt/bench/workerd workerd`",
                js::DEFAULT_WORKERD
            );
            println!("note: {note}");
            notes.push(note);
        }
    }
    let port = free_port()?;
    let mut cmd = Command::new(target_dir().join("release").join("xtask"));
    cmd.args(["bench-native-server", &port.to_string()]);
    running.push(start(NATIVE, cmd, port, "/", scratch.path(), "native")?);

    for r in &running {
        if r.startup.body != native::BODY {
            let note = format!(
                "{} serves {:?}, not {:?}, so the comparison is not like for like",
                r.server.name(),
                r.startup.body,
                native::BODY
            );
            println!("warning: {note}");
            notes.push(note);
        }
    }

    // Same data dir, so whatever tessera cached on its first start is reused. A data
    // directory belongs to one process (the node locks it): the first one stops first, and
    // the restarted one is the tessera under load.
    println!("==> restarting tessera to time a start with a warm compile cache");
    let first = running.remove(0);
    let first_startup = first.startup.clone();
    drop(first);
    let restarted = start_tessera(
        TESSERA,
        &tessera,
        &app_dir,
        &data_dir,
        scratch.path(),
        "tessera-2",
    )?;
    let warm_startup = restarted.startup.clone();
    running.insert(0, restarted);

    let mut results = Vec::new();
    for r in &mut running {
        results.push(load(&wrk, &options, r)?);
    }

    let mut startups = vec![
        ("tessera, first start".to_owned(), first_startup),
        (
            "tessera, restart (compile cache warm)".to_owned(),
            warm_startup,
        ),
    ];
    for r in &running[2..] {
        let label = if r.server.name().starts_with(WASMTIME) {
            // wasmtime's CLI caches compiled code on disk by default (~/.cache/wasmtime), so
            // its start is only cold the very first time it sees this component.
            format!("{} (its own compile cache, usually warm)", r.server.name())
        } else {
            r.server.name().to_owned()
        };
        startups.push((label, r.startup.clone()));
    }
    let result_for = |name: &str| {
        running
            .iter()
            .zip(&results)
            .find(|(r, _)| r.server.name() == name)
            .map(|(_, result)| result.clone())
    };
    let row = |name: &str, description: &str| Row {
        server: name.to_owned(),
        description: description.to_owned(),
        result: result_for(name),
    };

    let mut versions = vec![version_of(&tessera, TESSERA)];
    if let Some(wasmtime) = &wasmtime {
        versions.push(version_of(wasmtime, "wasmtime"));
    }
    if let Some(workerd) = &workerd {
        versions.push(version_of(workerd, "workerd"));
    }
    versions.push(version_of(Path::new("rustc"), "rustc"));

    let report = Report {
        date: report::utc_now(),
        machine,
        versions,
        command: format!(
            "cargo xtask bench --duration {} --connections {}",
            options.duration.as_secs(),
            options.connections
        ),
        wrk_command: wrk_command_line(&options, "http://127.0.0.1:PORT/"),
        warmup: WARMUP,
        body: native::BODY.to_owned(),
        rows: vec![
            row(TESSERA, TESSERA_DESCRIPTION),
            row(TESSERA_REUSE, TESSERA_REUSE_DESCRIPTION),
            row(WASMTIME, WASMTIME_DESCRIPTION),
            row(WASMTIME_REUSE, WASMTIME_REUSE_DESCRIPTION),
            row(TESSERA_P3, TESSERA_P3_DESCRIPTION),
            row(WASMTIME_P3, WASMTIME_P3_DESCRIPTION),
            row(TESSERA_JS, TESSERA_JS_DESCRIPTION),
            row(WORKERD, WORKERD_DESCRIPTION),
            row(NATIVE, NATIVE_DESCRIPTION),
        ],
        startups,
        notes,
    };

    println!();
    print!("{}", report.table());
    println!();
    for line in report.ratios() {
        println!("{line}");
    }
    println!();
    for line in report.startup_lines() {
        println!("{line}");
    }

    let path = repo_root().join("BENCHMARKS.md");
    report::update_benchmarks_md(&path, report::SECTION_HEADING, &report.markdown())?;
    println!("\nupdated {}", path.display());
    // `running` and then `scratch` drop here: servers are killed, the scratch dir removed.
    Ok(())
}

/// Whether `program serve --help` lists `flag`.
fn supports(program: &Path, flag: &str) -> bool {
    Command::new(program)
        .args(["serve", "--help"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// Builds the guests, tessera and a release xtask (for the native baselines: this process
/// is usually an unoptimised debug build, which would handicap them); returns tessera.
fn build() -> Result<PathBuf> {
    guests::build()?;
    cargo_step(&["build", "--release", "-p", "tessera", "-p", "xtask"])?;
    Ok(tessera_release_binary())
}

/// The built component of the `NAME` bin of crates/test-programs or crates/test-programs-p3.
fn guest_component(name: &str) -> Result<PathBuf> {
    let path = target_dir()
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!(
            "{} was not built; the bench needs the `{name}` bin of crates/test-programs",
            path.display()
        );
    }
    Ok(path)
}

/// A warm-up, then the measured wrk run against one server.
fn load(wrk: &Path, options: &Options, r: &mut Running) -> Result<WrkResult> {
    let name = r.server.name().to_owned();
    let url = format!("http://127.0.0.1:{}/", r.server.port());
    println!("==> {name}: {} s warm-up", WARMUP.as_secs());
    wrk::run(wrk, options.connections, WARMUP, &url)
        .with_context(|| format!("warming up {name}"))?;
    println!("==> {name}: {}", wrk_command_line(options, &url));
    let (result, raw) = wrk::run(wrk, options.connections, options.duration, &url)
        .with_context(|| format!("loading {name}"))?;
    for line in raw.lines() {
        println!("    {line}");
    }
    // A server that crashed under load would make its numbers meaningless.
    r.server.ensure_running()?;
    Ok(result)
}

fn wrk_command_line(options: &Options, url: &str) -> String {
    format!(
        "wrk {}",
        wrk::args(options.connections, options.duration, url).join(" ")
    )
}

/// The app tessera serves in the bench: one service on `/`, the test-programs hello world,
/// with `extra` lines in its table.
fn write_app(app_dir: &Path, hello: &Path, extra: &str) -> Result<()> {
    std::fs::create_dir_all(app_dir).with_context(|| format!("creating {}", app_dir.display()))?;
    let manifest = format!(
        "[app]\nname = \"bench\"\n\n[services.hello]\ncomponent = {}\nroutes = [\"/\"]\n{extra}",
        toml_string(&hello.display().to_string())
    );
    let path = app_dir.join("tessera.toml");
    std::fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))
}

/// A TOML basic string, escaped so any path survives.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts `tessera up APP` on a fresh port and waits for it to serve `GET /`; `name` is
/// its row in the report.
fn start_tessera(
    name: &str,
    tessera: &Path,
    app_dir: &Path,
    data_dir: &Path,
    logs: &Path,
    log_name: &str,
) -> Result<Running> {
    let port = free_port()?;
    let cmd = tessera_command(tessera, app_dir, data_dir, port);
    start(name, cmd, port, "/", logs, log_name)
}

/// `tessera up APP_DIR` serving on `port`, with its node state in `data_dir`.
fn tessera_command(tessera: &Path, app_dir: &Path, data_dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(tessera);
    cmd.arg("up")
        .arg(app_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        // Any free port: the control API is not under test and must not collide.
        .args(["--admin", "127.0.0.1:0"])
        .arg("--data")
        .arg(data_dir)
        // Per-request logging would dominate a hello world.
        .env("RUST_LOG", "warn")
        .current_dir(repo_root());
    cmd
}

/// Spawns a server that will listen on `port` and waits until it answers `GET ready_path`
/// with 200.
fn start(
    name: &str,
    cmd: Command,
    port: u16,
    ready_path: &str,
    logs: &Path,
    log_name: &str,
) -> Result<Running> {
    let log = logs.join(format!("{log_name}.log"));
    let mut server = Server::spawn(name, cmd, port, log)?;
    let startup = probe::startup(&mut server, ready_path, READY_TIMEOUT)?;
    println!(
        "    {name} on 127.0.0.1:{port}: listening after {}, first GET {ready_path} {}, then median {}",
        report::format_duration(startup.listening),
        report::format_duration(startup.first_request),
        report::format_duration(startup.median_after)
    );
    Ok(Running { server, startup })
}

/// The first line of `PROGRAM --version`, or a placeholder when it has none.
fn version_of(program: &Path, name: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(|line| line.trim().to_owned())
        })
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| format!("{name} (version unknown)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_args as args;

    #[test]
    fn options_defaults_and_overrides() {
        let o = Options::parse(&[]).unwrap();
        assert_eq!((o.duration.as_secs(), o.connections), (8, 32));
        let o = Options::parse(&args(&["--duration", "3", "--connections=64"])).unwrap();
        assert_eq!((o.duration.as_secs(), o.connections), (3, 64));
        assert!(Options::parse(&args(&["--duration"])).is_err());
        assert!(Options::parse(&args(&["--duration", "0"])).is_err());
        assert!(Options::parse(&args(&["--threads", "2"])).is_err());
        assert!(Options::parse(&args(&["8"])).is_err());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("/a/b.wasm"), "\"/a/b.wasm\"");
        assert_eq!(toml_string("C:\\x\"y"), "\"C:\\\\x\\\"y\"");
    }
}
