//! The servers under test: starting them, finding their binaries, and always stopping them.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where `cargo install wasmtime-cli@48.0.8 --locked --root /opt/bench/wasmtime` puts wasmtime.
pub const DEFAULT_WASMTIME: &str = "/opt/bench/wasmtime/bin/wasmtime";

/// A running server process. Dropping it kills the process, so no server outlives the
/// harness, whether it finishes or bails out half-way.
pub struct Server {
    name: String,
    port: u16,
    child: Child,
    log: PathBuf,
    spawned_at: Instant,
}

impl Server {
    /// Spawns `cmd`, sending its stdout and stderr to `log` so they don't interleave with
    /// the harness output (and can be shown when the server fails).
    pub fn spawn(name: &str, mut cmd: Command, port: u16, log: PathBuf) -> Result<Server> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {:?}", cmd.get_program()))?;
        Ok(Server {
            name: name.to_owned(),
            port,
            child,
            log,
            spawned_at,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, to read the server's memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// Fails (with the server's log) if the process has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited unexpectedly ({status})\n{}",
                self.name,
                self.log_tail()
            ),
            Err(err) => Err(err).with_context(|| format!("checking on {}", self.name)),
        }
    }

    /// Asks the server to stop with SIGTERM, as an operator would, and waits up to `grace`
    /// for it to exit, killing it after that. Unlike dropping the server, this lets it close
    /// its files properly, for a harness that reads them afterwards.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // std can only send SIGKILL; kill(1) is everywhere the harness runs and spares
        // xtask a libc dependency.
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed ({sent})", self.child.id());
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not exit within {grace:?} of SIGTERM and was killed\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the server's output, for error messages.
    pub fn log_tail(&self) -> String {
        const LINES: usize = 30;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LINES)..];
        if tail.is_empty() {
            format!("({} printed nothing)", self.name)
        } else {
            format!(
                "last output of {} ({}):\n  {}",
                self.name,
                self.log.display(),
                tail.join("\n  ")
            )
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Already-exited children make kill fail harmlessly; wait reaps the zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory (app manifest, server logs) removed when the harness ends. Declare it
/// before any [`Server`] so the servers are stopped before their files disappear.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn create() -> Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
        // A leftover from a crashed run with a recycled pid would only confuse things.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A currently free loopback port. Binding port 0 and releasing it leaves a tiny window for
/// another process to take it, which is acceptable for a benchmark harness.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a port")?;
    Ok(listener.local_addr()?.port())
}

/// The wasmtime CLI to compare against: `$WASMTIME`, else [`DEFAULT_WASMTIME`], else
/// `wasmtime` on `PATH`; `None` when there is none (the comparison is then skipped).
pub fn find_wasmtime() -> Result<Option<PathBuf>> {
    find_program("WASMTIME", DEFAULT_WASMTIME, "wasmtime")
}

/// A program to compare against: the path in `$VAR`, else `default`, else `name` on
/// `PATH`; `None` when there is none (its rows are then skipped).
pub fn find_program(var: &str, default: &str, name: &str) -> Result<Option<PathBuf>> {
    if let Some(explicit) = std::env::var_os(var) {
        let explicit = PathBuf::from(explicit);
        // An explicit choice that doesn't exist is a mistake worth reporting, not skipping.
        return match resolve_program(&explicit) {
            Some(path) => Ok(Some(path)),
            None => bail!("{var}={} does not exist", explicit.display()),
        };
    }
    let default = Path::new(default);
    if default.is_file() {
        return Ok(Some(default.to_path_buf()));
    }
    Ok(find_on_path(name))
}

/// A path as given when it names a file, else (for a bare name) its location on `PATH`.
pub fn resolve_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        program.is_file().then(|| program.to_path_buf())
    } else {
        find_on_path(program.to_str()?)
    }
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
