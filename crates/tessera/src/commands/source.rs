//! `tessera new` and `tessera build`: working on an app's sources.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tessera_devkit::{BuildOptions, BuildOutcome};

#[derive(Args)]
pub struct NewArgs {
    /// The language: rust, python, js, c or go.
    template: String,
    /// The service's name (a DNS label: lowercase letters, digits, hyphens); it is also
    /// its directory and its route, `/<name>`.
    name: String,
    /// The app directory; its tessera.toml is created when there is none.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

pub fn new(args: NewArgs) -> anyhow::Result<()> {
    let made = tessera_devkit::new_service(&args.dir, &args.template, &args.name)?;
    let verb = if made.created_manifest {
        "created"
    } else {
        "updated"
    };
    println!(
        "{} service `{}` in {} ({} files); {verb} {}",
        args.template,
        args.name,
        made.dir.display(),
        made.files,
        made.manifest.display()
    );
    println!(
        "next: `tessera build {}` then `tessera up {}`, and GET {}",
        args.dir.display(),
        args.dir.display(),
        made.route
    );
    Ok(())
}

#[derive(Args)]
pub struct BuildArgs {
    /// The app directory (holding tessera.toml) or the manifest file itself.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Build only these services.
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,
    /// Build even when the sources did not change.
    #[arg(long)]
    pub force: bool,
    /// Do not read or write the shared output cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Show the build tools' output as they run (otherwise only when one fails).
    #[arg(long, short)]
    pub verbose: bool,
}

pub fn build(args: &BuildArgs) -> anyhow::Result<()> {
    let manifest = tessera_manifest::load(&args.dir)?;
    let options = BuildOptions {
        services: args.services.clone(),
        force: args.force,
        cache: if args.no_cache {
            None
        } else {
            tessera_devkit::default_cache_dir()
        },
        verbose: args.verbose,
    };
    let mut report = |service: &str, outcome: Option<&BuildOutcome>| match outcome {
        None => eprintln!("building {service} …"),
        Some(BuildOutcome::Built { took, bytes }) => eprintln!(
            "built {service} in {:.1}s ({})",
            took.as_secs_f64(),
            size(*bytes)
        ),
        Some(BuildOutcome::Cached { bytes }) => {
            eprintln!(
                "{service}: sources unchanged, output from the cache ({})",
                size(*bytes)
            )
        }
        Some(BuildOutcome::UpToDate { bytes }) => {
            eprintln!("{service}: up to date ({})", size(*bytes))
        }
        Some(BuildOutcome::NoBuild) => eprintln!("{service}: no build declared; skipped"),
    };
    tessera_devkit::build(&manifest, &options, &mut report)
        .with_context(|| format!("building {}", manifest.path.display()))?;
    Ok(())
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
