//! The JavaScript rows of `cargo xtask bench`: one fetch handler answering the common
//! body, built as a component with jco (the JS template's toolchain) for tessera, and run
//! as an ES-module worker by Cloudflare's `workerd`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::servers::find_program;
use crate::native;
use crate::process::repo_root;
use crate::toolchains;

/// Where `npm install workerd` put it on the bench machine.
pub const DEFAULT_WORKERD: &str = "/opt/bench/workerd/node_modules/.bin/workerd";

/// The handler both servers run, in the service-worker form a jco component takes.
fn component_source() -> String {
    format!(
        "// The bench's JavaScript hello: the same response as every other server.\n\
         addEventListener('fetch', (event) => event.respondWith(\n  \
         new Response({body:?}, {{ headers: {{ 'content-type': 'text/plain' }} }})));\n",
        body = native::BODY
    )
}

/// The same handler as an ES module, the form workerd runs.
fn worker_source() -> String {
    format!(
        "// The bench's JavaScript hello: the same response as every other server.\n\
         export default {{\n  fetch() {{\n    \
         return new Response({body:?}, {{ headers: {{ 'content-type': 'text/plain' }} }});\n  \
         }},\n}};\n",
        body = native::BODY
    )
}

/// workerd: `$WORKERD`, else [`DEFAULT_WORKERD`], else `workerd` on PATH.
pub fn find_workerd() -> Result<Option<PathBuf>> {
    find_program("WORKERD", DEFAULT_WORKERD, "workerd")
}

/// Builds the handler into a component with `tessera new js` and `tessera build` in
/// `dir` (jco from `cargo xtask toolchains`, cached by `tessera build` like any service);
/// the component's path.
pub fn build_component(tessera: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tessera_cmd = |args: &[&str]| {
        let mut cmd = Command::new(tessera);
        cmd.args(args)
            .current_dir(dir)
            .env("PATH", toolchains::path_var())
            .env("TESSERA_BUILD_CACHE", toolchains::build_cache());
        cmd
    };
    run(
        tessera_cmd(&["new", "js", "jshello"]),
        "tessera new js jshello",
    )?;
    let source = dir.join("jshello/app.js");
    std::fs::write(&source, component_source())
        .with_context(|| format!("writing {}", source.display()))?;
    run(tessera_cmd(&["build"]), "tessera build (jco)")?;
    Ok(dir.join("jshello/jshello.wasm"))
}

/// `workerd serve` of the handler on `port`, its config and module written to `dir`.
pub fn workerd_command(workerd: &Path, dir: &Path, port: u16) -> Result<Command> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("worker.js"), worker_source())
        .with_context(|| format!("writing {}/worker.js", dir.display()))?;
    let config = format!(
        "using Workerd = import \"/workerd/workerd.capnp\";\n\n\
         const config :Workerd.Config = (\n  \
         services = [ (name = \"main\", worker = .hello) ],\n  \
         sockets = [ (name = \"http\", address = \"127.0.0.1:{port}\", http = (), service = \"main\") ],\n\
         );\n\n\
         const hello :Workerd.Worker = (\n  \
         modules = [ (name = \"worker\", esModule = embed \"worker.js\") ],\n  \
         compatibilityDate = \"2024-09-23\",\n\
         );\n"
    );
    let path = dir.join("config.capnp");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = Command::new(workerd);
    cmd.arg("serve").arg(&path).current_dir(repo_root());
    Ok(cmd)
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let output = cmd.output().with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
