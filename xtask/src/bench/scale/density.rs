//! Density: thousands of services of one component on one `tessera serve` node, deployed
//! app by app with `tessera deploy`; the node's memory and open files idle, after a first
//! request to a thousand of them, and after those are unloaded again.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::super::client::Connection;
use super::super::report::{format_duration, render_table};
use super::super::servers::free_port;
use super::super::{TESSERA, toml_string};
use super::observe::{Memory, Metrics, open_files, open_files_limit};
use super::{HELLO_BODY, Latencies, Options, REQUEST_TIMEOUT, expect_body, kib, mib};
use crate::process::repo_root;

/// Each service unloads after this long without requests: long enough for a first request
/// to every touched service to finish before the earliest of them unloads.
const IDLE_SECS: u64 = 30;
/// How long after the last touch the bench waits for every service to be unloaded.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(IDLE_SECS + 60);

const LOADED: &str = "tessera_service_loaded";
const CODE_MEMORY: &str = "tessera_code_memory_bytes";

/// The node at one moment.
struct State {
    label: String,
    loaded: usize,
    memory: Memory,
    files: usize,
    code_bytes: u64,
}

pub struct Density {
    requested: usize,
    per_app: usize,
    /// Services deployed successfully.
    deployed: usize,
    /// Wall time of each `tessera deploy`, in order.
    deploys: Vec<Duration>,
    /// Why deploying stopped short of `requested`, if it did.
    failure: Option<String>,
    states: Vec<State>,
    /// The node's soft limit on open files (`None`: unlimited).
    files_limit: Option<u64>,
    /// The first request to each touched service, as far as they succeeded.
    first: Latencies,
    /// Why the first requests stopped short of every touched service, if they did.
    first_failure: Option<String>,
    /// Services loaded right after the first requests.
    loaded_after_first: usize,
    /// From the last first request until nothing was loaded.
    unload_wait: Option<Duration>,
    again: Option<Latencies>,
}

/// `sN`, the name and route of the N-th service, numbered across apps.
fn service(i: usize) -> String {
    format!("s{i}")
}

/// The services that get a request: `touch` of them, spread evenly over all deployed
/// ones (so over every app).
fn touched(deployed: usize, touch: usize) -> Vec<usize> {
    let touch = touch.min(deployed);
    (0..touch).map(|j| j * deployed / touch).collect()
}

/// The manifest of app `dK` holding services `first..first + count`.
fn manifest(app: usize, first: usize, count: usize, component: &str) -> String {
    let mut toml = format!("[app]\nname = \"d{app}\"\n");
    for i in first..first + count {
        let name = service(i);
        let _ = write!(
            toml,
            "\n[services.{name}]\ncomponent = {component}\nroutes = [\"/{name}\"]\nidle = \"{IDLE_SECS}s\"\n"
        );
    }
    toml
}

pub fn measure(tessera: &Path, hello: &Path, scratch: &Path, options: &Options) -> Result<Density> {
    let gateway = free_port()?;
    let admin = free_port()?;
    let mut cmd = Command::new(tessera);
    cmd.arg("serve")
        .arg("--data")
        .arg(scratch.join("density-data"))
        .arg("--dev")
        .arg("--listen")
        .arg(format!("127.0.0.1:{gateway}"))
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "warn")
        .env_remove("TESSERA_TOKEN")
        .env_remove("TESSERA_MEMORY_BUDGET")
        .current_dir(repo_root());
    println!("==> density: tessera serve, gateway 127.0.0.1:{gateway}, admin 127.0.0.1:{admin}");
    // The readiness probe goes to the control API; the gateway serves nothing yet.
    let mut node = super::super::start(TESSERA, cmd, admin, "/v1/apps", scratch, "tessera-serve")?;
    let pid = node.server.pid();
    let files_limit = open_files_limit(pid)?;
    let mut states = vec![state(pid, admin, "fresh node, nothing deployed")?];

    let component = toml_string(&hello.display().to_string());
    let apps = options.services.div_ceil(options.per_app);
    let mut deploys = Vec::with_capacity(apps);
    let mut deployed = 0;
    let mut failure = None;
    for app in 0..apps {
        let count = options.per_app.min(options.services - deployed);
        let dir = scratch.join("density-apps").join(format!("d{app}"));
        write_manifest(&dir, &manifest(app, deployed, count, &component))?;
        let started = Instant::now();
        let output = Command::new(tessera)
            .arg("deploy")
            .arg(&dir)
            .arg("--server")
            .arg(format!("http://127.0.0.1:{admin}"))
            .env_remove("TESSERA_TOKEN")
            .stdin(Stdio::null())
            .output()
            .context("running tessera deploy")?;
        let elapsed = started.elapsed();
        node.server.ensure_running()?;
        if !output.status.success() {
            let message = format!(
                "`tessera deploy` of app d{app} ({count} services, {deployed} already on the \
                 node) failed after {} ({}): {}",
                format_duration(elapsed),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            println!("    {message}");
            failure = Some(message);
            break;
        }
        deployed += count;
        deploys.push(elapsed);
        println!(
            "    app d{app}: {count} services in {} ({deployed} on the node, VmRSS {})",
            format_duration(elapsed),
            mib(Memory::of(pid)?.rss)
        );
    }
    if deployed == 0 {
        bail!(
            "no service could be deployed: {}",
            failure.unwrap_or_default()
        );
    }
    // Freed memory of the deploys' checks settles back into the allocator.
    thread::sleep(Duration::from_secs(1));
    states.push(state(
        pid,
        admin,
        &format!("{deployed} services deployed, none loaded"),
    )?);

    let targets = touched(deployed, options.touch);
    println!(
        "==> density: first request to each of {} services",
        targets.len()
    );
    let (first, first_failure) = touch(gateway, &targets);
    let last_touch = Instant::now();
    node.server.ensure_running()?;
    let after_first = state(
        pid,
        admin,
        &format!("after one request to each of {} of them", first.n),
    )?;
    let loaded_after_first = after_first.loaded;
    states.push(after_first);
    if let Some(stopped) = &first_failure {
        println!("    stopped: {stopped}");
        return Ok(Density {
            requested: options.services,
            per_app: options.per_app,
            deployed,
            deploys,
            failure,
            states,
            files_limit,
            first,
            first_failure,
            loaded_after_first,
            unload_wait: None,
            again: None,
        });
    }

    println!("==> density: waiting for them to be unloaded (idle {IDLE_SECS} s)");
    let unload_wait = loop {
        let metrics = Metrics::scrape(admin)?;
        if metrics.count_equal(LOADED, &[], 1.0) == 0 {
            break last_touch.elapsed();
        }
        if last_touch.elapsed() > UNLOAD_TIMEOUT {
            bail!("services were still loaded {UNLOAD_TIMEOUT:?} after their last request");
        }
        thread::sleep(Duration::from_millis(500));
    };
    states.push(state(pid, admin, "after they were unloaded (idle)")?);

    println!(
        "==> density: a request to each of the {} again",
        targets.len()
    );
    let (again, again_failure) = touch(gateway, &targets);
    if let Some(failure) = again_failure {
        bail!("every service served a first request, but not a second: {failure}");
    }
    node.server.ensure_running()?;
    states.push(state(pid, admin, "after a second request to each")?);

    Ok(Density {
        requested: options.services,
        per_app: options.per_app,
        deployed,
        deploys,
        failure,
        states,
        files_limit,
        first,
        first_failure,
        loaded_after_first,
        unload_wait: Some(unload_wait),
        again: Some(again),
    })
}

fn write_manifest(dir: &Path, manifest: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("tessera.toml");
    std::fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))
}

/// One timed request to each service, in order, on one connection, until one fails:
/// the times of those that succeeded, and what went wrong with the one that did not.
fn touch(gateway: u16, targets: &[usize]) -> (Latencies, Option<String>) {
    let mut times = Vec::with_capacity(targets.len());
    let failure = (|| -> Result<()> {
        let mut conn = Connection::open(gateway, REQUEST_TIMEOUT)?;
        for &i in targets {
            let path = format!("/{}", service(i));
            let (elapsed, reply) = conn.timed_get(&path)?;
            expect_body(&path, &reply.body, HELLO_BODY)?;
            times.push(elapsed);
        }
        Ok(())
    })()
    .err()
    .map(|e| {
        format!(
            "the first request to service number {} of {} failed: {e:#}",
            times.len() + 1,
            targets.len()
        )
    });
    (Latencies::of(times), failure)
}

fn state(pid: u32, admin: u16, label: &str) -> Result<State> {
    let metrics = Metrics::scrape(admin)?;
    let state = State {
        label: label.to_owned(),
        loaded: metrics.count_equal(LOADED, &[], 1.0),
        memory: Memory::of(pid)?,
        files: open_files(pid)?,
        code_bytes: metrics.sum(CODE_MEMORY, &[]) as u64,
    };
    println!(
        "    {label}: {} loaded, VmRSS {}, VmHWM {}, {} open files",
        state.loaded,
        mib(state.memory.rss),
        mib(state.memory.hwm),
        state.files
    );
    Ok(state)
}

impl Density {
    pub fn memory_table(&self) -> String {
        let mut cells = vec![
            [
                "node",
                "services loaded",
                "loaded code",
                "VmRSS",
                "VmHWM",
                "open files",
            ]
            .map(str::to_owned),
        ];
        for s in &self.states {
            cells.push([
                s.label.clone(),
                s.loaded.to_string(),
                mib(s.code_bytes),
                mib(s.memory.rss),
                mib(s.memory.hwm),
                s.files.to_string(),
            ]);
        }
        render_table(&cells, &[0])
    }

    pub fn request_table(&self) -> String {
        let mut rows = vec![("first request to each (never loaded before)", &self.first)];
        if let Some(again) = &self.again {
            rows.push(("a request to each again (unloaded, reloaded)", again));
        }
        let mut cells = vec![["requests", "n", "total", "p50", "p99", "max"].map(str::to_owned)];
        for (label, l) in rows {
            cells.push([
                label.to_owned(),
                l.n.to_string(),
                format_duration(l.total),
                format_duration(l.p50),
                format_duration(l.p99),
                format_duration(l.max),
            ]);
        }
        render_table(&cells, &[0])
    }

    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let total: Duration = self.deploys.iter().sum();
        let mut sorted = self.deploys.clone();
        sorted.sort_unstable();
        match &self.failure {
            None => lines.push(format!(
                "deployed {} services as {} apps of up to {} in {} (`tessera deploy` of one \
                 app: first {}, median {}, last {})",
                self.deployed,
                self.deploys.len(),
                self.per_app,
                format_duration(total),
                format_duration(self.deploys[0]),
                format_duration(sorted[sorted.len() / 2]),
                format_duration(self.deploys[self.deploys.len() - 1]),
            )),
            Some(failure) => lines.push(format!(
                "only {} of {} services could be deployed (in {}): {failure}",
                self.deployed,
                self.requested,
                format_duration(total)
            )),
        }
        if let Some(failure) = &self.first_failure {
            lines.push(format!(
                "only {} services served their first request: {failure}",
                self.first.n
            ));
        }
        let per = |a: &State, b: &State, n: usize| {
            kib((a.memory.rss as f64 - b.memory.rss as f64) / n.max(1) as f64)
        };
        if let [fresh, idle, ..] = &self.states[..] {
            lines.push(format!(
                "memory per deployed, idle service: {} of VmRSS ({} for {} services)",
                per(idle, fresh, self.deployed),
                mib(idle.memory.rss.saturating_sub(fresh.memory.rss)),
                self.deployed
            ));
        }
        if let [_, idle, loaded, ..] = &self.states[..] {
            lines.push(format!(
                "memory per loaded service: {} of VmRSS over the idle node, {} of compiled code \
                 mapped ({} were loaded when measured)",
                per(loaded, idle, loaded.loaded),
                kib(loaded.code_bytes as f64 / loaded.loaded.max(1) as f64),
                self.loaded_after_first
            ));
        }
        if let ([_, idle, loaded, unloaded, ..], Some(wait)) = (&self.states[..], self.unload_wait)
        {
            lines.push(format!(
                "after the idle unload ({} after the last request) the node kept {} of VmRSS \
                 ({} per service that was loaded) and {} open files more than before the \
                 requests",
                format_duration(wait),
                mib(unloaded.memory.rss.saturating_sub(idle.memory.rss)),
                per(unloaded, idle, self.first.n),
                unloaded.files.saturating_sub(idle.files)
            ));
            let served = self.first.n.max(1) as f64;
            let kept = unloaded.files.saturating_sub(idle.files) as f64 / served;
            let while_loaded =
                loaded.files.saturating_sub(unloaded.files) as f64 / loaded.loaded.max(1) as f64;
            let mut line = format!(
                "open files: every service that has served a request keeps {kept:.1} files open \
                 for as long as the node runs (its SQLite data file, -wal and -shm), and \
                 {while_loaded:.1} more while its code is loaded"
            );
            match self.files_limit {
                Some(limit) if kept > 0.0 => {
                    let most = (limit.saturating_sub(idle.files as u64) as f64 / kept) as u64;
                    let _ = write!(
                        line,
                        "; under the node's limit of {limit} open files (soft RLIMIT_NOFILE, \
                         inherited), at most about {most} distinct services can serve a request \
                         in the life of one node process{}",
                        if most < self.deployed as u64 {
                            format!(", fewer than the {} deployed", self.deployed)
                        } else {
                            String::new()
                        }
                    );
                }
                Some(_) => {}
                None => line.push_str(" (the node's open files are unlimited)"),
            }
            lines.push(line);
        }
        lines
    }

    pub fn markdown(&self, md: &mut String) {
        let _ = writeln!(md, "### Density\n");
        let _ = writeln!(
            md,
            "A fresh `tessera serve --dev` node. `tessera deploy` deploys apps `d0`, `d1`, … \
             of {} services each (one deploy request per app keeps the request body well \
             under the API's limit), service `sN` on route `/sN` with `idle = \"{IDLE_SECS}s\"`, \
             every one the hello component (content-addressed: uploaded once, compiled \
             once; each later deploy only asks whether the node has it). A deploy's time \
             includes the CLI reading and hashing each service's component, the node \
             checking each against the compiled cache, one SQLite commit and the rebuild of \
             the whole routing table. Then one request to each of {} services spread evenly \
             over all apps, one after another on one connection: each loads that service \
             (its code mapped from the compiled cache) and, being its first, creates and \
             opens its SQLite data file; the first request that fails ends the measurement \
             and is reported. After the unload, one more request to each times a reload from \
             the cache alone. Memory is the node process's VmRSS and VmHWM from \
             `/proc/PID/status` (file-backed pages count once per mapping, and each loaded \
             service maps the shared compiled code on its own), open files \
             the entries of `/proc/PID/fd`, loaded code `{CODE_MEMORY}`.\n",
            self.per_app, self.first.n
        );
        let _ = writeln!(md, "{}", self.memory_table());
        let _ = writeln!(md, "{}", self.request_table());
        for line in self.lines() {
            let _ = writeln!(md, "- {line}");
        }
        md.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_services_spread_over_every_app() {
        assert_eq!(touched(10, 5), [0, 2, 4, 6, 8]);
        assert_eq!(touched(3, 5), [0, 1, 2]);
        let spread = touched(10_000, 1_000);
        assert_eq!(spread.len(), 1_000);
        assert_eq!((spread[1], spread[999]), (10, 9_990));
    }

    #[test]
    fn manifests_number_services_across_apps() {
        let toml = manifest(2, 2000, 2, "\"/h.wasm\"");
        assert_eq!(
            toml,
            "[app]\nname = \"d2\"\n\n[services.s2000]\ncomponent = \"/h.wasm\"\nroutes = [\"/s2000\"]\nidle = \"30s\"\n\n[services.s2001]\ncomponent = \"/h.wasm\"\nroutes = [\"/s2001\"]\nidle = \"30s\"\n"
        );
    }
}
