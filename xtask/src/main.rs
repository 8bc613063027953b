//! `cargo xtask`: project automation (guest builds, the demo, every CI check, the benchmarks).

mod bench;
mod checks;
mod demo;
mod guests;
mod native;
mod process;
mod toolchains;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  guests                  build every guest component for wasm32-wasip2
  demo [ARGS...]          build everything, then serve examples/hello on 127.0.0.1:3000
                          (ARGS are passed on to `tessera up`)
  toolchains              install the guest toolchains of the Python, JavaScript, C
                          and Go templates into target/toolchains and print the PATH
                          that puts them first
  shop [ARGS...]          install the guest toolchains, build examples/shop (Python,
                          JavaScript, Go and C services) and serve it on 127.0.0.1:3000
  test                    run every check CI runs (guests, toolchains, fmt, clippy,
                          tests)
  bench [--duration SECS] [--connections N]
                          compare tessera, `wasmtime serve` and native hyper on a
                          hello world and update BENCHMARKS.md (default: 8 s, 32)
  bench-data [--ops N] [--cluster]
                          time N key-value gets and sets and SQL queries and inserts
                          inside a guest and natively on the same SQLite file, and
                          update BENCHMARKS.md (default: 5000); --cluster also times
                          SQL on three cluster nodes, and takeover by database size
  bench-events [--messages N] [--publishers P] [--concurrency C] [--batch B] [--cluster]
                          publish N messages from P threads to a subscribed hello
                          component on an in-process node, time publish to durable
                          ack, and update BENCHMARKS.md (default: 20000, 32, 128, 64);
                          --cluster also runs it on three cluster nodes sharing a
                          nats-server, side by side
  bench-scale [--services N] [--per-app N] [--touch N] [--cold N] [--requests N]
                          cold vs warm requests of a service that scales to zero, N
                          services on one node (deployed per-app at a time, then a
                          request to --touch of them), and internal calls vs direct
                          requests; update BENCHMARKS.md (default: 10000, 1000, 1000,
                          100 cold and 1000 warm requests)
  bench-polyglot [--cold N] [--requests N] [--languages a,b,...]
                          scaffold the hello service of each language template (rust,
                          python, js, c, go), build it from scratch, time Wasmtime's
                          compile, serve them all from one `tessera up`, time first,
                          warm and cold requests side by side, and update BENCHMARKS.md
                          (default: 20 cold and 500 warm requests, all five languages)
  bench-cluster [--deploys N] [--ops N] [--duration SECS] [--connections N]
                          three cluster nodes on three NATS servers and one embedded
                          node: deploy-to-served-everywhere over N deploys, key-value
                          get/set/increment embedded vs cluster, hello req/s of a
                          cluster node vs the embedded node, and a joining node's first
                          request; update BENCHMARKS.md (default: 20, 2000, 8 s, 32)
  help                    print this message";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprintln!("{USAGE}");
        bail!("no command given");
    };
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "guests" => {
            no_args(&command, &rest)?;
            guests::build()
        }
        "demo" => demo::run(&rest),
        "shop" => demo::shop(&rest),
        "toolchains" => {
            no_args(&command, &rest)?;
            toolchains::install()?;
            println!("export PATH={}", toolchains::path_var().to_string_lossy());
            println!(
                "export TESSERA_BUILD_CACHE={}",
                toolchains::build_cache().display()
            );
            Ok(())
        }
        "test" => {
            no_args(&command, &rest)?;
            checks::run()
        }
        "bench" => bench::run(&rest),
        "bench-data" => bench::data::run(&rest),
        "bench-cluster" => bench::cluster::run(&rest),
        "bench-scale" => bench::scale::run(&rest),
        "bench-polyglot" => bench::polyglot::run(&rest),
        // Hidden: `bench-polyglot` times Wasmtime's compile of each component in-process in
        // the release build of xtask.
        bench::polyglot::COMPILE_COMMAND => bench::polyglot::compile(&rest),
        // Hidden: `bench-data` runs its native half from the release build of xtask, so the
        // baseline is optimised code like tessera.
        "bench-data-native" => bench::data::native::run(&rest),
        "bench-events" => bench::events::run(&rest),
        // Hidden: `bench-events` runs the node in-process in the release build of xtask, so
        // what is measured is optimised code like tessera.
        "bench-events-node" => bench::events::node::run(&rest),
        // Hidden: `bench` starts the native baseline as a separate process so that it is
        // measured exactly like the other two servers.
        "bench-native-server" => {
            let [port] = rest.as_slice() else {
                bail!("usage: xtask bench-native-server PORT");
            };
            let port = port
                .parse()
                .with_context(|| format!("invalid port {port:?}"))?;
            native::serve(port)
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("{USAGE}");
            bail!("unknown command {other:?}")
        }
    }
}

fn no_args(command: &str, rest: &[String]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        eprintln!("{USAGE}");
        bail!("`{command}` takes no arguments, got {rest:?}")
    }
}

/// Command-line arguments for the option parsers' tests.
#[cfg(test)]
fn test_args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
