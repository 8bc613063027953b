//! `cargo xtask bench-polyglot`: the hello service of every language template, side by
//! side in one run.
//!
//! - **scaffold and build**: `tessera new LANG LANG-hello` in a scratch app, `idle = "1s"`
//!   added to the service, then `tessera build APP --service LANG-hello --force
//!   --no-cache`, timed, with the toolchains of `cargo xtask toolchains` first on PATH and
//!   empty Go and zig caches, so every language builds from nothing but its installed
//!   toolchain (a new service directory also means an empty cargo target directory);
//! - **compile**: `xtask bench-polyglot-compile` (hidden, run from the release build)
//!   loads each component into a tessera-runtime `Runtime` whose compile cache is empty,
//!   as a deploy does, and times it in-process;
//! - **requests**: one `tessera up` serves every service plus `primer`, a service that
//!   stays loaded; per language, its first request after the deploy, warm requests on one
//!   kept-alive connection, and cold requests after each idle unload (as `scale/cold.rs`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tessera_runtime::{
    CodeSource, Limits, Runtime, RuntimeConfig, ServiceConfig, ServiceDataAccess,
};

use super::client::Connection;
use super::probe::{self, Startup};
use super::report::{self, format_duration, render_table};
use super::scale::{
    COLD_COUNT, COLD_SUM, Latencies, Metrics, difference, up_command, wait_service_unloaded,
};
use super::servers::{ScratchDir, Server, free_port};
use super::{TESSERA, parse_flags, toml_string, version_of};
use crate::process::{repo_root, target_dir};
use crate::toolchains;

/// The section this command owns in BENCHMARKS.md.
const SECTION_HEADING: &str = "## Polyglot: hello in five languages";

const USAGE: &str = "usage: cargo xtask bench-polyglot [--cold N] [--requests N] \
                     [--languages a,b,...]";

/// The hidden subcommand that times Wasmtime's compile in the release build of xtask.
pub const COMPILE_COMMAND: &str = "bench-polyglot-compile";

/// The scratch app's name (its metrics label) and the service that stays loaded: the
/// first request on each new connection goes to it, so a timed request is never the
/// connection's first.
const APP: &str = "polyglot";
const PRIMER: &str = "primer";
const PRIMER_ROUTE: &str = "/primer";
/// The line added to each language's service, right after its `routes`.
const IDLE_LINE: &str = "idle = \"1s\"";

/// Unreported requests before the warm measurement.
const WARMUP_REQUESTS: usize = 20;
/// Every request and read gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `tessera up` compiles every component before it listens; interpreters are big.
const UP_TIMEOUT: Duration = Duration::from_secs(900);
/// The reaper unmaps the code just after flipping the gauge; let it finish.
const AFTER_UNLOAD: Duration = Duration::from_millis(10);

/// A language template and the word its hello answer names the language with.
#[derive(Debug, PartialEq, Eq)]
struct Language {
    template: &'static str,
    word: &'static str,
}

const LANGUAGES: &[Language] = &[
    Language {
        template: "rust",
        word: "Rust",
    },
    Language {
        template: "python",
        word: "Python",
    },
    Language {
        template: "js",
        word: "JavaScript",
    },
    Language {
        template: "c",
        word: "C",
    },
    Language {
        template: "go",
        word: "Go",
    },
];

impl Language {
    fn service(&self) -> String {
        format!("{}-hello", self.template)
    }

    fn route(&self) -> String {
        format!("/{}-hello", self.template)
    }

    /// Whether a hello answer names this language ("Hello from Go! This is …").
    fn greets(&self, body: &[u8]) -> bool {
        String::from_utf8_lossy(body).contains(&format!(" from {}!", self.word))
    }

    /// The tools its build uses: (label, program, arguments that print the version).
    fn tools(&self) -> &'static [(&'static str, &'static str, &'static [&'static str])] {
        match self.template {
            "rust" => &[("rustc", "rustc", &["--version"])],
            "python" => &[("componentize-py", "componentize-py", &["--version"])],
            "js" => &[("jco", "jco", &["--version"])],
            "c" => &[
                ("zig", "python", &["-m", "ziglang", "version"]),
                ("wasm-tools", "wasm-tools", &["--version"]),
            ],
            "go" => &[
                ("go", "go", &["version"]),
                ("wasm-tools", "wasm-tools", &["--version"]),
            ],
            _ => &[],
        }
    }
}

#[derive(Debug)]
struct Options {
    /// Cold requests per language (each after waiting for an idle unload).
    cold: usize,
    /// Warm requests per language.
    requests: usize,
    languages: Vec<&'static Language>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            cold: 20,
            requests: 500,
            languages: LANGUAGES.iter().collect(),
        };
        parse_flags(args, |flag, value| {
            match flag {
                "--cold" => options.cold = count(flag, value, 10_000)?,
                "--requests" => options.requests = count(flag, value, 1_000_000)?,
                "--languages" => options.languages = languages(value)?,
                _ => bail!("unknown bench-polyglot option {flag:?}; {USAGE}"),
            }
            Ok(())
        })?;
        Ok(options)
    }

    fn command_line(&self) -> String {
        let languages: Vec<&str> = self.languages.iter().map(|l| l.template).collect();
        format!(
            "cargo xtask bench-polyglot --cold {} --requests {} --languages {}",
            self.cold,
            self.requests,
            languages.join(",")
        )
    }
}

fn count(flag: &str, value: &str, max: usize) -> Result<usize> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .with_context(|| format!("{flag} takes a whole number from 1 to {max}, not {value:?}"))
}

/// `rust,go`: known templates, each once, in the order given.
fn languages(list: &str) -> Result<Vec<&'static Language>> {
    let mut chosen: Vec<&'static Language> = Vec::new();
    for name in list.split(',').map(str::trim) {
        let Some(language) = LANGUAGES.iter().find(|l| l.template == name) else {
            let known: Vec<&str> = LANGUAGES.iter().map(|l| l.template).collect();
            bail!(
                "--languages: unknown language {name:?}; the languages are {}",
                known.join(", ")
            );
        };
        if chosen.contains(&language) {
            bail!("--languages: {name} is listed twice");
        }
        chosen.push(language);
    }
    Ok(chosen)
}

/// What one language measured.
#[derive(Debug, Clone)]
struct Measured {
    bytes: u64,
    build: Duration,
    compile: Duration,
    first: Duration,
    warm: Latencies,
    cold: Latencies,
    /// Mean `tessera_cold_start_seconds` of the service over its cold requests.
    load: Duration,
}

/// A language that was built, waiting for the rest of its measurements.
struct Built {
    language: &'static Language,
    component: PathBuf,
    bytes: u64,
    build: Duration,
}

pub fn run(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    let tessera = super::build()?;
    let primer = super::guest_component("hello")?;
    toolchains::install()?;

    // Declared before the node so it outlives it (locals drop in reverse order).
    let scratch = ScratchDir::create()?;
    let machine = report::machine();
    let app = scratch.path().join(APP);
    write_manifest(&app, &primer)?;

    let mut failures = Vec::new();
    let mut built = Vec::new();
    for &language in &options.languages {
        match prepare(&tessera, &app, scratch.path(), language) {
            Ok(b) => built.push(b),
            Err(err) => {
                println!("    {}: {err:#}", language.word);
                failures.push((language, format!("{err:#}")));
            }
        }
    }
    ensure!(!built.is_empty(), "no language could be built");

    let components: Vec<&Path> = built.iter().map(|b| b.component.as_path()).collect();
    let compiles = compile_times(scratch.path(), &components)?;
    let (rows, startup) =
        serve_and_measure(&tessera, &app, scratch.path(), &built, &compiles, &options)?;

    let section = Section {
        date: report::utc_now(),
        machine,
        command: options.command_line(),
        versions: versions(&tessera, &options.languages),
        rows,
        failures,
        startup,
    };
    println!();
    print!("{}", section.table());
    for line in section.lines() {
        println!("{line}");
    }
    let path = repo_root().join("BENCHMARKS.md");
    report::update_benchmarks_md(&path, SECTION_HEADING, &section.markdown())?;
    println!("\nupdated {}", path.display());
    Ok(())
}

/// The app before any language is added: only the primer, the `hello` component of
/// crates/test-programs, which keeps the default `idle` and so stays loaded.
fn write_manifest(app: &Path, primer: &Path) -> Result<()> {
    std::fs::create_dir_all(app).with_context(|| format!("creating {}", app.display()))?;
    let text = format!(
        "[app]\nname = \"{APP}\"\n\n[services.{PRIMER}]\ncomponent = {}\nroutes = [\"{PRIMER_ROUTE}\"]\n",
        toml_string(&primer.display().to_string())
    );
    let path = app.join("tessera.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Scaffolds, configures and builds one language's service; on failure the manifest is
/// put back as it was, so the others still run.
fn prepare(
    tessera: &Path,
    app: &Path,
    scratch: &Path,
    language: &'static Language,
) -> Result<Built> {
    let manifest = app.join("tessera.toml");
    let before = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let result = scaffold_and_build(tessera, app, scratch, language);
    if result.is_err() {
        std::fs::write(&manifest, before)
            .with_context(|| format!("restoring {}", manifest.display()))?;
    }
    result
}

fn scaffold_and_build(
    tessera: &Path,
    app: &Path,
    scratch: &Path,
    language: &'static Language,
) -> Result<Built> {
    let service = language.service();
    let mut new = Command::new(tessera);
    new.args(["new", language.template, &service, "--dir"])
        .arg(app);
    run_quietly(
        &format!("tessera new {} {service}", language.template),
        &mut new,
    )?;

    let manifest = app.join("tessera.toml");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(&manifest, with_idle(&text, &service)?)?;

    let build = build_service(tessera, app, scratch, language)?;
    let component = app.join(&service).join(format!("{service}.wasm"));
    let bytes = std::fs::metadata(&component)
        .with_context(|| format!("the build left no {}", component.display()))?
        .len();
    println!("    built in {}, {}", format_duration(build), size(bytes));
    Ok(Built {
        language,
        component,
        bytes,
        build,
    })
}

/// `text` with [`IDLE_LINE`] right after the `routes` line of `[services.NAME]`.
fn with_idle(text: &str, service: &str) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let header = format!("[services.{service}]");
    let start = lines
        .iter()
        .position(|line| line.trim() == header)
        .with_context(|| format!("the manifest has no {header}"))?;
    let table = lines[start + 1..]
        .iter()
        .take_while(|line| !line.trim_start().starts_with('['));
    let mut routes = None;
    for (i, line) in table.enumerate() {
        match line.split('=').next().map(str::trim) {
            Some("idle") => bail!("{header} already has an idle setting"),
            Some("routes") if line.trim_end().ends_with(']') => routes = Some(start + 1 + i),
            _ => {}
        }
    }
    let routes = routes.with_context(|| format!("{header} has no one-line routes"))?;
    let mut out: Vec<&str> = lines[..=routes].to_vec();
    out.push(IDLE_LINE);
    out.extend(&lines[routes + 1..]);
    Ok(out.join("\n") + "\n")
}

/// `tessera build`, from scratch, timed: forced, without the output cache, with empty Go
/// and zig caches of its own.
fn build_service(
    tessera: &Path,
    app: &Path,
    scratch: &Path,
    language: &Language,
) -> Result<Duration> {
    let service = language.service();
    let caches = scratch.join("tool-caches").join(language.template);
    let mut cmd = Command::new(tessera);
    cmd.arg("build")
        .arg(app)
        .args(["--service", &service, "--force", "--no-cache"])
        .env("PATH", toolchains::path_var())
        .env("GOCACHE", caches.join("go"))
        .env("ZIG_GLOBAL_CACHE_DIR", caches.join("zig"))
        .env("ZIG_LOCAL_CACHE_DIR", caches.join("zig-local"));
    let started = Instant::now();
    run_quietly(
        &format!("tessera build --service {service} --force --no-cache"),
        &mut cmd,
    )?;
    Ok(started.elapsed())
}

/// Runs a command with its output captured; a failure carries the output's last lines.
fn run_quietly(label: &str, cmd: &mut Command) -> Result<String> {
    println!("==> {label}");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{label}`"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!(
            "`{label}` failed ({}):\n{}",
            output.status,
            last_lines(&text, 25)
        );
    }
    Ok(text)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wasmtime's compile of each component, timed by `xtask bench-polyglot-compile` in the
/// release build of xtask.
fn compile_times(scratch: &Path, components: &[&Path]) -> Result<Vec<Duration>> {
    let xtask = target_dir().join("release").join("xtask");
    println!(
        "==> {} {COMPILE_COMMAND} ({} components)",
        xtask.display(),
        components.len()
    );
    let output = Command::new(&xtask)
        .arg(COMPILE_COMMAND)
        .arg(scratch.join("compile-caches"))
        .args(components)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", xtask.display()))?;
    if !output.status.success() {
        bail!("xtask {COMPILE_COMMAND} failed ({})", output.status);
    }
    let times = parse_compile_times(&String::from_utf8_lossy(&output.stdout), components.len())?;
    for (component, took) in components.iter().zip(&times) {
        println!("    {}: {}", component.display(), format_duration(*took));
    }
    Ok(times)
}

/// The `compiled NANOS PATH` lines of `bench-polyglot-compile`, in order.
fn parse_compile_times(text: &str, expected: usize) -> Result<Vec<Duration>> {
    let times: Vec<Duration> = text
        .lines()
        .filter_map(|line| line.strip_prefix("compiled "))
        .map(|rest| {
            let nanos = rest.split(' ').next().unwrap_or_default();
            nanos
                .parse()
                .map(Duration::from_nanos)
                .with_context(|| format!("bad compile time {nanos:?}"))
        })
        .collect::<Result<_>>()?;
    ensure!(
        times.len() == expected,
        "{COMPILE_COMMAND} timed {} components, not {expected}",
        times.len()
    );
    Ok(times)
}

/// Hidden `xtask bench-polyglot-compile CACHE_ROOT FILE...`: for each file, a runtime
/// with an empty compile cache in `CACHE_ROOT/<index>` loads it (compile, write the cache,
/// pre-instantiate) as a deploy does; prints `compiled NANOS FILE`.
pub fn compile(args: &[String]) -> Result<()> {
    let [root, files @ ..] = args else {
        bail!("usage: xtask {COMPILE_COMMAND} CACHE_ROOT FILE...");
    };
    ensure!(
        !files.is_empty(),
        "usage: xtask {COMPILE_COMMAND} CACHE_ROOT FILE..."
    );
    for (i, file) in files.iter().enumerate() {
        let took = compile_once(&Path::new(root).join(i.to_string()), Path::new(file))?;
        println!("compiled {} {file}", took.as_nanos());
    }
    Ok(())
}

fn compile_once(cache_dir: &Path, file: &Path) -> Result<Duration> {
    let _ = std::fs::remove_dir_all(cache_dir);
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir.to_path_buf()),
        ..RuntimeConfig::default()
    })
    .context("starting the WebAssembly runtime")?;
    let config = ServiceConfig {
        app: APP.to_owned(),
        name: "compile".to_owned(),
        limits: Limits::default(),
        outbound: Vec::new(),
        env: Vec::new(),
        data: ServiceDataAccess::default(),
        reuse: Default::default(),
        observer: Default::default(),
    };
    let (_, report) = runtime
        .load_service_file(config, file)
        .with_context(|| format!("loading {}", file.display()))?;
    ensure!(
        report.source == CodeSource::Compiled,
        "{} came from a compile cache that should have been empty",
        file.display()
    );
    Ok(report.elapsed)
}

/// Starts one `tessera up` with every built service and measures each one's requests.
fn serve_and_measure(
    tessera: &Path,
    app: &Path,
    scratch: &Path,
    built: &[Built],
    compiles: &[Duration],
    options: &Options,
) -> Result<(Vec<(&'static Language, Measured)>, Startup)> {
    let gateway = free_port()?;
    let admin = free_port()?;
    let cmd = up_command(tessera, app, &scratch.join("data"), gateway, admin);
    println!(
        "==> tessera up on 127.0.0.1:{gateway} ({} services + {PRIMER})",
        built.len()
    );
    let mut server = Server::spawn(TESSERA, cmd, gateway, scratch.join("tessera-up.log"))?;
    let startup = probe::startup(&mut server, PRIMER_ROUTE, UP_TIMEOUT)?;
    println!("    listening after {}", format_duration(startup.listening));
    let mut rows = Vec::new();
    for (b, &compile) in built.iter().zip(compiles) {
        let requests = measure_requests(&mut server, admin, b.language, options)?;
        rows.push((
            b.language,
            Measured {
                bytes: b.bytes,
                build: b.build,
                compile,
                first: requests.first,
                warm: requests.warm,
                cold: requests.cold,
                load: requests.load,
            },
        ));
    }
    server.ensure_running()?;
    Ok((rows, startup))
}

struct Requests {
    first: Duration,
    warm: Latencies,
    cold: Latencies,
    load: Duration,
}

fn measure_requests(
    server: &mut Server,
    admin: u16,
    language: &Language,
    options: &Options,
) -> Result<Requests> {
    let port = server.port();
    println!(
        "==> {}: first request, {WARMUP_REQUESTS} + {} warm, {} cold GET {}",
        language.word,
        options.requests,
        options.cold,
        language.route()
    );
    let mut conn = primed(port)?;
    let first = timed_hello(&mut conn, language)?;
    for _ in 0..WARMUP_REQUESTS {
        timed_hello(&mut conn, language)?;
    }
    let warm = (0..options.requests)
        .map(|_| timed_hello(&mut conn, language))
        .collect::<Result<Vec<_>>>()?;
    drop(conn);
    let warm = Latencies::of(warm);
    let (cold, load) = cold_requests(admin, port, language, options.cold)?;
    server.ensure_running()?;
    println!(
        "    first {}, warm p50 {}, cold p50 {} (server-side load {})",
        format_duration(first),
        format_duration(warm.p50),
        format_duration(cold.p50),
        format_duration(load)
    );
    Ok(Requests {
        first,
        warm,
        cold,
        load,
    })
}

/// A new connection whose first request went to the primer.
fn primed(port: u16) -> Result<Connection> {
    let mut conn = Connection::open(port, REQUEST_TIMEOUT)?;
    conn.timed_get(PRIMER_ROUTE)?;
    Ok(conn)
}

/// `GET /LANG-hello`, timed; it must be a 200 that names the language.
fn timed_hello(conn: &mut Connection, language: &Language) -> Result<Duration> {
    let route = language.route();
    let (elapsed, reply) = conn.timed_get(&route)?;
    if !language.greets(&reply.body) {
        bail!(
            "GET {route} answered {:?}, which does not say \"from {}!\"",
            String::from_utf8_lossy(&reply.body),
            language.word
        );
    }
    Ok(elapsed)
}

/// `n` cold requests, each after the service's idle unload; returns them and the mean
/// server-side load. The node must count one load per cold request.
fn cold_requests(
    admin: u16,
    port: u16,
    language: &Language,
    n: usize,
) -> Result<(Latencies, Duration)> {
    let service = language.service();
    let labels = [("app", APP), ("service", service.as_str())];
    let mut before = None;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let metrics = wait_service_unloaded(admin, APP, &service)?;
        before.get_or_insert(metrics);
        thread::sleep(AFTER_UNLOAD);
        let mut conn = primed(port)?;
        times.push(timed_hello(&mut conn, language)?);
        if (i + 1) % 10 == 0 {
            println!("    {} of {n} cold", i + 1);
        }
    }
    let before = before.context("no cold request was made")?;
    let end = Metrics::scrape(admin)?;
    let loads = end.sum(COLD_COUNT, &labels) - before.sum(COLD_COUNT, &labels);
    let seconds = end.sum(COLD_SUM, &labels) - before.sum(COLD_SUM, &labels);
    if loads != n as f64 {
        bail!("{n} cold requests made the node load `{service}` {loads} times");
    }
    Ok((
        Latencies::of(times),
        Duration::from_secs_f64(seconds / loads),
    ))
}

/// `tessera`'s version and each chosen language's tools', run with the toolchains on PATH.
fn versions(tessera: &Path, languages: &[&Language]) -> Vec<String> {
    let mut versions = vec![version_of(tessera, TESSERA)];
    for language in languages {
        for &(label, program, args) in language.tools() {
            let line = Command::new(program)
                .args(args)
                .env("PATH", toolchains::path_var())
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| version_line(label, &String::from_utf8_lossy(&out.stdout)))
                .unwrap_or_else(|| format!("{label} (version unknown)"));
            if !versions.contains(&line) {
                versions.push(line);
            }
        }
    }
    versions
}

/// The first line of a tool's version output, prefixed with its name unless it has it.
fn version_line(label: &str, output: &str) -> String {
    let line = output.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        None => format!("{label} (version unknown)"),
        Some(line) if line.starts_with(label) => line.to_owned(),
        Some(line) => format!("{label} {line}"),
    }
}

/// Component sizes: KiB below a MiB.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}

/// `a / b` as a ratio.
fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
}

struct Section {
    date: String,
    machine: String,
    command: String,
    versions: Vec<String>,
    rows: Vec<(&'static Language, Measured)>,
    failures: Vec<(&'static Language, String)>,
    startup: Startup,
}

impl Section {
    fn table(&self) -> String {
        let header = [
            "language",
            "component",
            "build",
            "compile",
            "first request",
            "warm p50",
            "warm p99",
            "cold p50",
            "cold p99",
            "cold − warm (p50)",
        ];
        let mut cells = vec![header.map(str::to_owned).to_vec()];
        for (language, m) in &self.rows {
            cells.push(vec![
                language.word.to_owned(),
                size(m.bytes),
                format_duration(m.build),
                format_duration(m.compile),
                format_duration(m.first),
                format_duration(m.warm.p50),
                format_duration(m.warm.p99),
                format_duration(m.cold.p50),
                format_duration(m.cold.p99),
                difference(m.cold.p50, m.warm.p50),
            ]);
        }
        for (language, _) in &self.failures {
            let mut row = vec![language.word.to_owned(), "failed".to_owned()];
            row.resize(header.len(), "-".to_owned());
            cells.push(row);
        }
        render_table(&cells, &[0])
    }

    /// Each language's cold p50 as a multiple of Rust's.
    fn ratio_line(&self) -> String {
        let Some((_, rust)) = self.rows.iter().find(|(l, _)| l.template == "rust") else {
            return "cold p50 relative to Rust: not available, Rust was not measured".to_owned();
        };
        let others: Vec<String> = self
            .rows
            .iter()
            .filter(|(l, _)| l.template != "rust")
            .map(|(l, m)| format!("{} {}", l.word, ratio(m.cold.p50, rust.cold.p50)))
            .collect();
        if others.is_empty() {
            return "cold p50 relative to Rust: no other language was measured".to_owned();
        }
        format!(
            "cold p50 relative to Rust's ({}): {}",
            format_duration(rust.cold.p50),
            others.join(", ")
        )
    }

    fn lines(&self) -> Vec<String> {
        let mut lines = vec![self.ratio_line()];
        let loads: Vec<String> = self
            .rows
            .iter()
            .map(|(l, m)| format!("{} {}", l.word, format_duration(m.load)))
            .collect();
        lines.push(format!(
            "server side, mean `tessera_cold_start_seconds` over the cold requests (mapping \
             the compiled code from the cache and pre-instantiating it): {}",
            loads.join(", ")
        ));
        lines.push(format!(
            "`tessera up` listened {} after it was started (its deploy compiled every \
             component, one after the other, before binding)",
            format_duration(self.startup.listening)
        ));
        for (language, error) in &self.failures {
            let first = error.lines().next().unwrap_or_default();
            lines.push(format!("{} was not measured: {first}", language.word));
        }
        lines
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "{SECTION_HEADING}\n");
        let _ = writeln!(md, "Measured {} on {}.\n", self.date, self.machine);
        let _ = writeln!(
            md,
            "Command: `{}`. Each language's template, scaffolded with `tessera new LANG \
             LANG-hello` into one scratch app, answers `GET /LANG-hello` with `Hello from \
             <Language>! This is LANG-hello, visit N.`: it reads wasi:config and increments \
             a counter in its key-value store, a durable SQLite write, on every request, \
             the same work in every language. Every response is checked to be a 200 that \
             names its language.\n",
            self.command
        );
        let _ = writeln!(md, "{}", COLUMNS.trim_start());
        let _ = writeln!(md, "{}", self.table());
        for line in self.lines() {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(md, "\nVersions: {}.", self.versions.join("; "));
        md
    }
}

const COLUMNS: &str = "
- **component**: the size of the built component file.
- **build**: `tessera build APP --service LANG-hello --force --no-cache`, wall time, from \
  scratch: a new service directory (so cargo's target directory is empty too), empty Go \
  and zig caches (`GOCACHE`, `ZIG_GLOBAL_CACHE_DIR`), the toolchains of `cargo xtask \
  toolchains` first on PATH. componentize-py (CPython) and jco (StarlingMonkey) bring \
  their interpreter prebuilt; Rust compiles its dependencies, Go its standard library and \
  zig wasi-libc.
- **compile**: Wasmtime turning the component into native code as a deploy does, measured \
  in-process: `xtask bench-polyglot-compile` (release build) creates a tessera-runtime \
  `Runtime` with an empty compile cache and times `load_service_file` (validate, compile, \
  write the cache, pre-instantiate; reading the file excluded), once per component. \
  Wasmtime compiles functions in parallel on every core.
- **first request**: the service's first request after `tessera up` deployed it (its \
  code mapped from the compile cache, its data files created and opened).
- **warm**: then 20 unreported and the measured requests back to back on the same \
  kept-alive connection.
- **cold**: each after `/metrics` on the admin listener shows the service unloaded \
  (`idle = \"1s\"`, the reaper looks every second), on a new connection whose first \
  request went to `primer`, a service that stays loaded (the `hello` component of \
  crates/test-programs). The node must count exactly one load per cold request.
- All requests go through one `tessera up` (release build, RUST_LOG=warn) serving every \
  language at once, one at a time, timed from writing the request to having read the \
  whole response. Percentiles are nearest-rank, so with fewer than 100 samples p99 is the \
  largest.
";

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_args as args;

    fn templates(options: &Options) -> Vec<&str> {
        options.languages.iter().map(|l| l.template).collect()
    }

    #[test]
    fn options_defaults_overrides_and_errors() {
        let o = Options::parse(&[]).unwrap();
        assert_eq!((o.cold, o.requests), (20, 500));
        assert_eq!(templates(&o), ["rust", "python", "js", "c", "go"]);
        let o = Options::parse(&args(&[
            "--cold=5",
            "--requests",
            "50",
            "--languages",
            "go, rust",
        ]))
        .unwrap();
        assert_eq!((o.cold, o.requests), (5, 50));
        assert_eq!(templates(&o), ["go", "rust"]);
        assert_eq!(
            o.command_line(),
            "cargo xtask bench-polyglot --cold 5 --requests 50 --languages go,rust"
        );
        for bad in [
            &["--cold", "0"][..],
            &["--requests", "many"],
            &["--languages", "rust,cobol"],
            &["--languages", "go,go"],
            &["--languages", ""],
            &["--services", "3"],
            &["rust"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    const MANIFEST: &str = "[app]\nname = \"polyglot\"\n\n[services.primer]\ncomponent = \"/h.wasm\"\nroutes = [\"/primer\"]\n\n# Made by `tessera new go go-hello`; `tessera build` runs its build.\n[services.go-hello]\ncomponent = \"go-hello/go-hello.wasm\"\nroutes = [\"/go-hello\"]\n\n[services.go-hello.build]\ncommand = \"sh build.sh\"\nroutes_note = 1\n";

    #[test]
    fn idle_goes_after_the_routes_of_that_service_only() {
        let edited = with_idle(MANIFEST, "go-hello").unwrap();
        let expected = MANIFEST.replace(
            "routes = [\"/go-hello\"]\n",
            "routes = [\"/go-hello\"]\nidle = \"1s\"\n",
        );
        assert_eq!(edited, expected);
        assert_eq!(edited.matches("idle").count(), 1);
        let twice = with_idle(&with_idle(MANIFEST, "primer").unwrap(), "go-hello").unwrap();
        assert_eq!(twice.matches(IDLE_LINE).count(), 2);
        assert!(with_idle(&edited, "go-hello").is_err(), "already has idle");
        assert!(with_idle(MANIFEST, "go").is_err(), "no such service");
        let no_routes = "[services.a]\ncomponent = \"a.wasm\"\n\n[services.b]\nroutes = [\"/b\"]\n";
        assert!(
            with_idle(no_routes, "a").is_err(),
            "routes of another table"
        );
    }

    #[test]
    fn answers_must_name_the_language() {
        let c = &LANGUAGES[3];
        assert_eq!(
            (c.service(), c.route()),
            ("c-hello".to_owned(), "/c-hello".to_owned())
        );
        assert!(c.greets(b"Hello from C! This is c-hello, visit 3.\n"));
        assert!(!c.greets(b"Hello from Cobol! This is c-hello, visit 3.\n"));
        assert!(!LANGUAGES[4].greets(b"Hello from Rust! This is go-hello, visit 1.\n"));
    }

    #[test]
    fn compile_times_are_parsed_in_order() {
        let text = "compiled 1500000 /tmp/a b/x.wasm\nnoise\ncompiled 20 /y.wasm\n";
        assert_eq!(
            parse_compile_times(text, 2).unwrap(),
            [Duration::from_micros(1500), Duration::from_nanos(20)]
        );
        assert!(parse_compile_times(text, 3).is_err());
        assert!(parse_compile_times("compiled x /a.wasm\n", 1).is_err());
    }

    #[test]
    fn versions_sizes_and_ratios_read_well() {
        assert_eq!(version_line("jco", "1.35.0\n"), "jco 1.35.0");
        assert_eq!(
            version_line("go", "go version go1.27.3 linux/amd64\n"),
            "go version go1.27.3 linux/amd64"
        );
        assert_eq!(version_line("zig", "\n"), "zig (version unknown)");
        assert_eq!(size(300 * 1024), "300 KiB");
        assert_eq!(size(38 << 20), "38.0 MiB");
        assert_eq!(
            ratio(Duration::from_millis(3), Duration::from_millis(2)),
            "1.50×"
        );
    }

    fn measured(cold_ms: u64) -> Measured {
        let ms = Duration::from_millis;
        Measured {
            bytes: 2 << 20,
            build: Duration::from_secs(42),
            compile: ms(1500),
            first: ms(9),
            warm: Latencies::of(vec![ms(1), ms(2)]),
            cold: Latencies::of(vec![ms(cold_ms)]),
            load: ms(1),
        }
    }

    fn section(rows: Vec<(&'static Language, Measured)>) -> Section {
        Section {
            date: "2026-11-30 00:00 UTC".to_owned(),
            machine: "2 cores".to_owned(),
            command: "cargo xtask bench-polyglot".to_owned(),
            versions: vec!["rustc 1.0".to_owned()],
            rows,
            failures: vec![(&LANGUAGES[2], "`tessera build` failed\nmore".to_owned())],
            startup: Startup {
                listening: Duration::from_secs(3),
                first_request: Duration::ZERO,
                ready: Duration::ZERO,
                median_after: Duration::ZERO,
                body: String::new(),
            },
        }
    }

    #[test]
    fn table_has_a_row_per_language_and_failures_last() {
        let s = section(vec![
            (&LANGUAGES[0], measured(4)),
            (&LANGUAGES[1], measured(10)),
        ]);
        let table = s.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(
            lines[0].starts_with("| language   | component |"),
            "{table}"
        );
        assert_eq!(
            lines[2],
            "| Rust       |   2.0 MiB | 42.00 s |  1.50 s |       9.00 ms |  1.00 ms |  2.00 ms |  4.00 ms |  4.00 ms |          +3.00 ms |"
        );
        assert!(
            lines[4].starts_with("| JavaScript |    failed |       - |"),
            "{table}"
        );
        assert_eq!(
            s.ratio_line(),
            "cold p50 relative to Rust's (4.00 ms): Python 2.50×"
        );
        let md = s.markdown();
        assert!(md.starts_with("## Polyglot: hello in five languages\n\nMeasured 2026-11-30"));
        assert!(md.contains("- JavaScript was not measured: `tessera build` failed\n"));
        assert!(md.ends_with("Versions: rustc 1.0.\n"));
    }

    #[test]
    fn ratio_needs_rust() {
        let s = section(vec![(&LANGUAGES[1], measured(10))]);
        assert!(s.ratio_line().contains("Rust was not measured"));
        let s = section(vec![(&LANGUAGES[0], measured(10))]);
        assert!(s.ratio_line().contains("no other language"));
    }
}
