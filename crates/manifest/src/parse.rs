//! Walks the span-carrying TOML tree of a manifest and builds the validated model.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use std::time::Duration;

use tessera_model::bounds::{
    check_async_rate, check_async_stored, check_backoff, check_batch, check_concurrency,
    check_idle, check_max_attempts, check_memory, check_queue, check_queue_timeout, check_reuse,
    check_reuse_concurrency, check_reuse_idle, check_subscription_concurrency, check_timeout,
};
use tessera_model::{check_bucket, check_env_name, check_trigger_path};

use crate::{
    BuildSpec, CronTrigger, Manifest, ManifestError, MissedTicks, Origin, RevisionConfig,
    RoutePrefix, Scaling, ServiceSpec, Subscription, check_name, parse_duration, parse_size,
};

type Value<'i> = Spanned<DeValue<'i>>;

/// Shared context for error reporting.
struct Cx<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Cx<'_> {
    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ManifestError {
        let (line, column) = position(self.text, span.start);
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn str<'v>(&self, value: &'v Value<'_>, key: &str) -> Result<&'v str, ManifestError> {
        value.get_ref().as_str().ok_or_else(|| {
            self.error(
                value.span(),
                key,
                format!("expected a string, found {}", value.get_ref().type_str()),
            )
        })
    }

    fn table<'v, 'i>(
        &self,
        value: &'v Value<'i>,
        key: &str,
    ) -> Result<&'v DeTable<'i>, ManifestError> {
        value.get_ref().as_table().ok_or_else(|| {
            self.error(
                value.span(),
                key,
                format!("expected a table, found {}", value.get_ref().type_str()),
            )
        })
    }

    fn array<'v, 'i>(
        &self,
        value: &'v Value<'i>,
        key: &str,
    ) -> Result<&'v DeArray<'i>, ManifestError> {
        value.get_ref().as_array().ok_or_else(|| {
            self.error(
                value.span(),
                key,
                format!("expected an array, found {}", value.get_ref().type_str()),
            )
        })
    }

    /// An array whose every element is a string, with each element's span.
    fn strings<'v>(
        &self,
        value: &'v Value<'_>,
        key: &str,
    ) -> Result<Vec<(&'v str, Range<usize>)>, ManifestError> {
        self.array(value, key)?
            .iter()
            .map(|item| Ok((self.str(item, key)?, item.span())))
            .collect()
    }

    /// A key the table `value` (at `base`) must have: `missing KEY: HINT` otherwise.
    fn required<T>(
        &self,
        found: Option<T>,
        value: &Value<'_>,
        base: &str,
        key: &str,
        hint: &str,
    ) -> Result<T, ManifestError> {
        found.ok_or_else(|| {
            self.error(
                value.span(),
                &format!("{base}.{key}"),
                format!("missing {key}{hint}"),
            )
        })
    }

    fn unknown_key(&self, span: Range<usize>, key: &str, expected: &[&str]) -> ManifestError {
        self.error(
            span,
            key,
            format!("unknown key; expected one of: {}", expected.join(", ")),
        )
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

const ROOT_KEYS: &[&str] = &["app", "services", "environments"];
const APP_KEYS: &[&str] = &["name", "host"];
const SERVICE_KEYS: &[&str] = &[
    "component",
    "routes",
    "memory",
    "timeout",
    "concurrency",
    "queue",
    "queue_timeout",
    "idle",
    "reuse",
    "reuse_concurrency",
    "reuse_idle",
    "outbound",
    "callbacks",
    "env",
    "config",
    "buckets",
    "migrations",
    "cron",
    "subscribe",
    "build",
    "async",
];
const ASYNC_KEYS: &[&str] = &["rate", "stored"];
const BUILD_KEYS: &[&str] = &["command", "workdir", "watch"];
const CRON_KEYS: &[&str] = &["schedule", "path", "missed"];
const SUBSCRIBE_KEYS: &[&str] = &[
    "topic",
    "path",
    "queue",
    "max_attempts",
    "backoff",
    "max_backoff",
    "concurrency",
    "batch",
];

/// Whether a manifest without services is an error (`up`, `deploy`, `build`) or a valid
/// start (`tessera new` adds the first one).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Services {
    Required,
    MayBeNone,
}

pub(crate) fn parse(
    text: &str,
    file: &Path,
    required: Services,
) -> Result<Manifest, ManifestError> {
    let cx = Cx { text, file };
    let root = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.error(span, "", e.message().trim_end().to_string())
    })?;

    let mut app = None;
    let mut services = None;
    let mut environments = None;
    for (key, value) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "app" => app = Some(value),
            "services" => services = Some(value),
            "environments" => environments = Some(value),
            other => return Err(cx.unknown_key(key.span(), other, ROOT_KEYS)),
        }
    }
    let app = app.ok_or_else(|| cx.error(0..0, "app", "missing [app] table"))?;
    let (app_name, host) = parse_app(&cx, app)?;

    let empty = toml::de::DeTable::new();
    let table = match services {
        Some(services) => {
            let table = cx.table(services, "services")?;
            if table.is_empty() && required == Services::Required {
                return Err(cx.error(
                    services.span(),
                    "services",
                    "no services: declare at least one [services.<name>] table",
                ));
            }
            table
        }
        None if required == Services::Required => {
            return Err(cx.error(
                text.len()..text.len(),
                "services",
                "no services: declare at least one [services.<name>] table",
            ));
        }
        None => &empty,
    };

    let dir = file.parent().unwrap_or(Path::new("."));
    let mut specs = Vec::with_capacity(table.len());
    // Which service claimed each route first, to report conflicts.
    let mut claimed: BTreeMap<RoutePrefix, String> = BTreeMap::new();
    for (name, value) in table.iter() {
        let mut claims = RouteClaims {
            app_host: host.as_deref(),
            claimed: &mut claimed,
        };
        let spec = parse_service(&cx, dir, name, value, &mut claims)?;
        specs.push(spec);
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    let environments = match environments {
        Some(value) => parse_environments(&cx, value, &specs)?,
        None => BTreeMap::new(),
    };
    Ok(Manifest {
        path: file.to_path_buf(),
        app: app_name,
        host,
        services: specs,
        environments,
    })
}

/// `[environments.NAME.SERVICE]` tables of configuration overrides.
fn parse_environments(
    cx: &Cx<'_>,
    value: &Value<'_>,
    services: &[ServiceSpec],
) -> Result<crate::Environments, ManifestError> {
    let mut environments = BTreeMap::new();
    for (env, env_value) in cx.table(value, "environments")?.iter() {
        let env_name = env.get_ref().as_ref();
        let env_path = format!("environments.{env_name}");
        check_name(env_name).map_err(|m| cx.error(env.span(), &env_path, m))?;
        let mut overrides = BTreeMap::new();
        for (service, values) in cx.table(env_value, &env_path)?.iter() {
            let service_name = service.get_ref().as_ref();
            let path = format!("{env_path}.{service_name}");
            if !services.iter().any(|s| s.name == service_name) {
                return Err(cx.error(
                    service.span(),
                    &path,
                    format!("no service `{service_name}` is declared in [services]"),
                ));
            }
            overrides.insert(service_name.to_string(), config_table(cx, values, &path)?);
        }
        environments.insert(env_name.to_string(), overrides);
    }
    Ok(environments)
}

/// A table of configuration values: strings, or numbers and booleans (kept as written),
/// since `wasi:config` serves every value as a string.
fn config_table(
    cx: &Cx<'_>,
    value: &Value<'_>,
    path: &str,
) -> Result<Vec<(String, String)>, ManifestError> {
    let mut config = Vec::new();
    for (key, val) in cx.table(value, path)?.iter() {
        let key_name = key.get_ref().as_ref();
        let key_path = format!("{path}.{key_name}");
        crate::check_config_key(key_name).map_err(|m| cx.error(key.span(), &key_path, m))?;
        let text = match val.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) => i.as_str().to_string(),
            DeValue::Float(f) => f.as_str().to_string(),
            DeValue::Boolean(b) => b.to_string(),
            other => {
                return Err(cx.error(
                    val.span(),
                    &key_path,
                    format!(
                        "expected a string, number or boolean, found {}",
                        other.type_str()
                    ),
                ));
            }
        };
        config.push((key_name.to_string(), text));
    }
    config.sort();
    Ok(config)
}

fn parse_app(cx: &Cx<'_>, value: &Value<'_>) -> Result<(String, Option<String>), ManifestError> {
    let table = cx.table(value, "app")?;
    let mut name = None;
    let mut host = None;
    for (key, value) in table.iter() {
        match key.get_ref().as_ref() {
            "name" => {
                let text = cx.str(value, "app.name")?;
                check_name(text).map_err(|m| cx.error(value.span(), "app.name", m))?;
                name = Some(text.to_string());
            }
            "host" => {
                let text = cx.str(value, "app.host")?;
                crate::check_host(text).map_err(|m| cx.error(value.span(), "app.host", m))?;
                host = Some(text.to_string());
            }
            other => {
                return Err(cx.unknown_key(key.span(), &format!("app.{other}"), APP_KEYS));
            }
        }
    }
    let name = name.ok_or_else(|| cx.error(value.span(), "app.name", "missing app name"))?;
    Ok((name, host))
}

/// Where a service's routes are checked against the others': the app's host (which binds
/// every route without a host of its own) and which service claimed each route first.
struct RouteClaims<'a> {
    app_host: Option<&'a str>,
    claimed: &'a mut BTreeMap<RoutePrefix, String>,
}

// A little over 80 lines: one match arm per key of a service, each a call or two, so the
// list of keys reads in one place.
fn parse_service(
    cx: &Cx<'_>,
    dir: &Path,
    name: &Spanned<std::borrow::Cow<'_, str>>,
    value: &Value<'_>,
    claims: &mut RouteClaims<'_>,
) -> Result<ServiceSpec, ManifestError> {
    let service = name.get_ref().as_ref();
    let base = format!("services.{service}");
    check_name(service).map_err(|m| cx.error(name.span(), &base, m))?;
    let table = cx.table(value, &base)?;

    let mut component = None;
    let mut routes = None;
    let mut revision = RevisionConfig::new(Vec::new());
    let mut migrations = Vec::new();
    let mut build = None;
    for (key, value) in table.iter() {
        let key_name = key.get_ref().as_ref();
        let path = format!("{base}.{key_name}");
        match key_name {
            "component" => {
                let text = cx.str(value, &path)?;
                if text.trim().is_empty() {
                    return Err(cx.error(value.span(), &path, "component path is empty"));
                }
                component = Some(dir.join(text));
            }
            "routes" => routes = Some(parse_routes(cx, value, &path, service, claims)?),
            "memory" => {
                let bytes = size(cx, value, &path)?;
                revision.limits.memory =
                    check_memory(bytes).map_err(|m| cx.error(value.span(), &path, m))?;
            }
            "timeout" => revision.limits.timeout = duration(cx, value, &path, check_timeout)?,
            "concurrency" | "queue" | "queue_timeout" | "idle" | "async" => {
                parse_scaling(cx, key_name, value, &path, &mut revision.scaling)?;
            }
            "reuse" => revision.reuse.requests = integer(cx, value, &path, check_reuse)?,
            "reuse_concurrency" => {
                revision.reuse.concurrency = integer(cx, value, &path, check_reuse_concurrency)?;
            }
            "reuse_idle" => revision.reuse.idle = duration(cx, value, &path, check_reuse_idle)?,
            "outbound" => revision.outbound = origins(cx, value, &path)?,
            "callbacks" => revision.callbacks = origins(cx, value, &path)?,
            "env" => revision.env = parse_env(cx, value, &path)?,
            "config" => revision.config = config_table(cx, value, &path)?,
            "buckets" => {
                for (text, span) in cx.strings(value, &path)? {
                    check_bucket(text, &revision.buckets).map_err(|m| cx.error(span, &path, m))?;
                    revision.buckets.push(text.to_string());
                }
            }
            "migrations" => migrations = parse_migrations(cx, dir, value, &path)?,
            "cron" => {
                for (index, item) in cx.array(value, &path)?.iter().enumerate() {
                    let trigger = parse_cron(cx, item, &format!("{path}[{index}]"))?;
                    revision.cron.push(trigger);
                }
            }
            "subscribe" => revision.subscriptions = parse_subscriptions(cx, value, &path)?,
            "build" => build = Some(parse_build(cx, dir, value, &path)?),
            other => {
                return Err(cx.unknown_key(key.span(), &format!("{base}.{other}"), SERVICE_KEYS));
            }
        }
    }

    let component = cx.required(
        component,
        value,
        &base,
        "component",
        ": the path of the service's .wasm file",
    )?;
    revision.routes = cx.required(
        routes,
        value,
        &base,
        "routes",
        ": the path prefixes this service answers, e.g. [\"/hello\"]",
    )?;
    Ok(ServiceSpec {
        name: service.to_string(),
        component,
        revision,
        migrations,
        build,
    })
}

/// `routes`: at least one, each bound to the app's host unless it names its own, none
/// claimed by another service.
fn parse_routes(
    cx: &Cx<'_>,
    value: &Value<'_>,
    path: &str,
    service: &str,
    claims: &mut RouteClaims<'_>,
) -> Result<Vec<RoutePrefix>, ManifestError> {
    let items = cx.strings(value, path)?;
    if items.is_empty() {
        return Err(cx.error(value.span(), path, "at least one route is required"));
    }
    let mut prefixes = Vec::with_capacity(items.len());
    for (text, span) in items {
        let mut prefix = RoutePrefix::new(text).map_err(|m| cx.error(span.clone(), path, m))?;
        if let (Some(host), None) = (claims.app_host, prefix.host()) {
            prefix = prefix
                .with_host(host)
                .map_err(|m| cx.error(span.clone(), path, m))?;
        }
        if let Some(owner) = claims.claimed.get(&prefix) {
            let message = if owner == service {
                format!("route `{prefix}` is listed twice")
            } else {
                format!("route `{prefix}` is already claimed by service `{owner}`")
            };
            return Err(cx.error(span, path, message));
        }
        claims.claimed.insert(prefix.clone(), service.to_string());
        prefixes.push(prefix);
    }
    Ok(prefixes)
}

/// The admission and scale-to-zero keys of a service, and its `[async]` table.
fn parse_scaling(
    cx: &Cx<'_>,
    key: &str,
    value: &Value<'_>,
    path: &str,
    scaling: &mut Scaling,
) -> Result<(), ManifestError> {
    match key {
        "concurrency" => scaling.concurrency = integer(cx, value, path, check_concurrency)?,
        "queue" => scaling.queue = integer(cx, value, path, check_queue)?,
        "queue_timeout" => scaling.queue_timeout = duration(cx, value, path, check_queue_timeout)?,
        "idle" => {
            let text = cx.str(value, path)?;
            let idle = if text.trim() == "never" {
                None
            } else {
                let idle = parse_duration(text)
                    .map_err(|m| cx.error(value.span(), path, format!("{m}, or \"never\"")))?;
                Some(idle)
            };
            scaling.idle = check_idle(idle).map_err(|m| cx.error(value.span(), path, m))?;
        }
        _ => {
            for (key, item) in cx.table(value, path)?.iter() {
                let name = key.get_ref().as_ref();
                let key_path = format!("{path}.{name}");
                match name {
                    "rate" => scaling.async_rate = integer(cx, item, &key_path, check_async_rate)?,
                    "stored" => {
                        let bytes = size(cx, item, &key_path)?;
                        scaling.async_stored = check_async_stored(bytes)
                            .map_err(|m| cx.error(item.span(), &key_path, m))?;
                    }
                    other => {
                        return Err(cx.unknown_key(
                            key.span(),
                            &format!("{path}.{other}"),
                            ASYNC_KEYS,
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// A list of origins (`outbound`, `callbacks`).
fn origins(cx: &Cx<'_>, value: &Value<'_>, path: &str) -> Result<Vec<Origin>, ManifestError> {
    cx.strings(value, path)?
        .into_iter()
        .map(|(text, span)| Origin::parse(text).map_err(|m| cx.error(span, path, m)))
        .collect()
}

/// `env`: variables granted to the guest.
fn parse_env(
    cx: &Cx<'_>,
    value: &Value<'_>,
    path: &str,
) -> Result<Vec<(String, String)>, ManifestError> {
    let mut env = Vec::new();
    for (var, val) in cx.table(value, path)?.iter() {
        let var_name = var.get_ref().as_ref();
        let var_path = format!("{path}.{var_name}");
        check_env_name(var_name).map_err(|m| cx.error(var.span(), &var_path, m))?;
        let text = cx.str(val, &var_path)?;
        env.push((var_name.to_string(), text.to_string()));
    }
    Ok(env)
}

/// `migrations`: SQL files relative to the manifest, each once.
fn parse_migrations(
    cx: &Cx<'_>,
    dir: &Path,
    value: &Value<'_>,
    path: &str,
) -> Result<Vec<std::path::PathBuf>, ManifestError> {
    let mut migrations = Vec::new();
    for (text, span) in cx.strings(value, path)? {
        if text.trim().is_empty() {
            return Err(cx.error(span, path, "migration path is empty"));
        }
        let file = dir.join(text);
        if migrations.contains(&file) {
            return Err(cx.error(span, path, format!("migration `{text}` is listed twice")));
        }
        migrations.push(file);
    }
    Ok(migrations)
}

/// `[[services.NAME.subscribe]]`: one subscription per topic and queue.
fn parse_subscriptions(
    cx: &Cx<'_>,
    value: &Value<'_>,
    path: &str,
) -> Result<Vec<Subscription>, ManifestError> {
    let mut subscribe: Vec<Subscription> = Vec::new();
    for (index, item) in cx.array(value, path)?.iter().enumerate() {
        let item_path = format!("{path}[{index}]");
        let sub = parse_subscription(cx, item, &item_path)?;
        if subscribe
            .iter()
            .any(|s| s.topic == sub.topic && s.queue == sub.queue)
        {
            return Err(cx.error(
                item.span(),
                &item_path,
                format!("the service already subscribes to `{}`", sub.topic),
            ));
        }
        subscribe.push(sub);
    }
    Ok(subscribe)
}

/// `build = "command"`, or a table with `command`, `workdir` and `watch`.
fn parse_build(
    cx: &Cx<'_>,
    dir: &Path,
    value: &Value<'_>,
    base: &str,
) -> Result<BuildSpec, ManifestError> {
    let command_text = |item: &Value<'_>, key: &str| -> Result<String, ManifestError> {
        let text = cx.str(item, key)?;
        if text.trim().is_empty() {
            return Err(cx.error(item.span(), key, "the build command is empty"));
        }
        Ok(text.to_string())
    };
    if value.get_ref().as_str().is_some() {
        return Ok(BuildSpec {
            command: command_text(value, base)?,
            workdir: dir.to_path_buf(),
            watch: Vec::new(),
        });
    }
    let table = cx.table(value, base)?;
    let (mut command, mut workdir, mut watch) = (None, dir.to_path_buf(), Vec::new());
    for (key, item) in table.iter() {
        let name = key.get_ref().as_ref();
        let key_path = format!("{base}.{name}");
        match name {
            "command" => command = Some(command_text(item, &key_path)?),
            "workdir" => {
                let text = cx.str(item, &key_path)?;
                if text.trim().is_empty() || Path::new(text).is_absolute() {
                    return Err(cx.error(
                        item.span(),
                        &key_path,
                        "workdir must be a directory relative to the manifest",
                    ));
                }
                workdir = dir.join(text);
            }
            "watch" => {
                for (text, span) in cx.strings(item, &key_path)? {
                    crate::check_glob(text).map_err(|m| cx.error(span, &key_path, m))?;
                    watch.push(text.to_string());
                }
            }
            other => {
                return Err(cx.unknown_key(key.span(), &format!("{base}.{other}"), BUILD_KEYS));
            }
        }
    }
    let command = cx.required(
        command,
        value,
        base,
        "command",
        ": the shell command that writes the component",
    )?;
    Ok(BuildSpec {
        command,
        workdir,
        watch,
    })
}

/// A trigger's `path`: the route of the service it is delivered to.
fn trigger_path(cx: &Cx<'_>, value: &Value<'_>, key: &str) -> Result<String, ManifestError> {
    let text = cx.str(value, key)?;
    check_trigger_path(text).map_err(|m| cx.error(value.span(), key, m))?;
    Ok(text.to_string())
}

/// An integer checked by the model's `check` for its key.
fn integer(
    cx: &Cx<'_>,
    value: &Value<'_>,
    key: &str,
    check: fn(i64) -> Result<u32, String>,
) -> Result<u32, ManifestError> {
    let DeValue::Integer(i) = value.get_ref() else {
        return Err(cx.error(
            value.span(),
            key,
            format!("expected an integer, found {}", value.get_ref().type_str()),
        ));
    };
    let n = i
        .as_str()
        .parse::<i64>()
        .map_err(|_| cx.error(value.span(), key, format!("`{}` is too large", i.as_str())))?;
    check(n).map_err(|m| cx.error(value.span(), key, m))
}

/// A size: bytes as an integer, or text such as `"64MiB"`.
fn size(cx: &Cx<'_>, value: &Value<'_>, key: &str) -> Result<u64, ManifestError> {
    match value.get_ref() {
        DeValue::Integer(i) => i
            .as_str()
            .parse::<u64>()
            .map_err(|_| format!("`{}` is not a size", i.as_str())),
        DeValue::String(s) => parse_size(s),
        other => Err(format!(
            "expected a size such as \"64MiB\", found {}",
            other.type_str()
        )),
    }
    .map_err(|m| cx.error(value.span(), key, m))
}

/// A duration checked by the model's `check` for its key.
fn duration(
    cx: &Cx<'_>,
    value: &Value<'_>,
    key: &str,
    check: fn(Duration) -> Result<Duration, String>,
) -> Result<Duration, ManifestError> {
    let text = cx.str(value, key)?;
    let d = parse_duration(text).map_err(|m| cx.error(value.span(), key, m))?;
    // Settings are kept in whole milliseconds: checked as they will be stored, so `500us`
    // is refused as 0 rather than stored as 0.
    let d = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    check(d).map_err(|m| cx.error(value.span(), key, m))
}

fn parse_cron(cx: &Cx<'_>, value: &Value<'_>, base: &str) -> Result<CronTrigger, ManifestError> {
    let table = cx.table(value, base)?;
    let (mut schedule, mut path, mut missed) = (None, None, MissedTicks::Skip);
    for (key, item) in table.iter() {
        let name = key.get_ref().as_ref();
        let key_path = format!("{base}.{name}");
        match name {
            "schedule" => {
                let text = cx.str(item, &key_path)?;
                crate::check_schedule(text).map_err(|m| cx.error(item.span(), &key_path, m))?;
                schedule = Some(text.to_string());
            }
            "path" => path = Some(trigger_path(cx, item, &key_path)?),
            "missed" => {
                missed = match cx.str(item, &key_path)? {
                    "skip" => MissedTicks::Skip,
                    "once" => MissedTicks::RunOnce,
                    other => {
                        return Err(cx.error(
                            item.span(),
                            &key_path,
                            format!("`{other}` is not a policy; use \"skip\" or \"once\""),
                        ));
                    }
                }
            }
            other => return Err(cx.unknown_key(key.span(), &format!("{base}.{other}"), CRON_KEYS)),
        }
    }
    Ok(CronTrigger {
        schedule: cx.required(
            schedule,
            value,
            base,
            "schedule",
            ", e.g. \"*/5 * * * *\" or \"@every 30s\"",
        )?,
        path: cx.required(
            path,
            value,
            base,
            "path",
            ": the route each tick is POSTed to",
        )?,
        missed,
    })
}

fn parse_subscription(
    cx: &Cx<'_>,
    value: &Value<'_>,
    base: &str,
) -> Result<Subscription, ManifestError> {
    let table = cx.table(value, base)?;
    let (mut topic, mut path, mut queue) = (None, None, None);
    let mut sub = Subscription::new("", "");
    for (key, item) in table.iter() {
        let name = key.get_ref().as_ref();
        let key_path = format!("{base}.{name}");
        match name {
            "topic" => {
                let text = cx.str(item, &key_path)?;
                crate::check_topic(text).map_err(|m| cx.error(item.span(), &key_path, m))?;
                topic = Some(text.to_string());
            }
            "path" => path = Some(trigger_path(cx, item, &key_path)?),
            "queue" => {
                let text = cx.str(item, &key_path)?;
                check_name(text).map_err(|m| cx.error(item.span(), &key_path, m))?;
                queue = Some(text.to_string());
            }
            "max_attempts" => sub.max_attempts = integer(cx, item, &key_path, check_max_attempts)?,
            "backoff" => sub.backoff = duration(cx, item, &key_path, check_backoff)?,
            "max_backoff" => sub.max_backoff = duration(cx, item, &key_path, check_backoff)?,
            "concurrency" => {
                sub.concurrency = integer(cx, item, &key_path, check_subscription_concurrency)?;
            }
            "batch" => sub.batch = integer(cx, item, &key_path, check_batch)?,
            other => {
                return Err(cx.unknown_key(key.span(), &format!("{base}.{other}"), SUBSCRIBE_KEYS));
            }
        }
    }
    if sub.max_backoff < sub.backoff {
        sub.max_backoff = sub.backoff;
    }
    sub.topic = cx.required(topic, value, base, "topic", ", e.g. \"orders.created\"")?;
    sub.path = cx.required(
        path,
        value,
        base,
        "path",
        ": the route each message is POSTed to",
    )?;
    sub.queue = queue;
    Ok(sub)
}
