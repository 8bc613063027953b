//! Unit tests of manifest parsing and validation: what users write, what they are told.

use std::path::Path;
use std::time::Duration;

use crate::{ManifestError, Origin, RoutePrefix, Scheme, parse};

fn ok(text: &str) -> crate::Manifest {
    parse(text, Path::new("/apps/demo/tessera.toml")).expect("manifest should parse")
}

/// Returns (line, column, key, message) of a manifest error.
fn err(text: &str) -> (usize, usize, String, String) {
    match parse(text, Path::new("/apps/demo/tessera.toml")) {
        Err(ManifestError::Invalid {
            line,
            column,
            key,
            message,
            ..
        }) => (line, column, key, message),
        other => panic!("expected an invalid-manifest error, got {other:?}"),
    }
}

const GOOD: &str = r#"
[app]
name = "hello"

[services.greeter]
component = "greeter.wasm"
routes = ["/hello"]
memory = "64MiB"
timeout = "5s"
outbound = ["https://api.example.com"]
env = { GREETING = "hi" }

[services.users]
component = "users/users.wasm"
routes = ["/users", "/people"]
"#;

#[test]
fn full_manifest_parses_with_defaults() {
    let m = ok(GOOD);
    assert_eq!(m.app, "hello");
    assert_eq!(m.services.len(), 2);
    let greeter = &m.services[0];
    assert_eq!(greeter.name, "greeter");
    assert_eq!(greeter.component, Path::new("/apps/demo/greeter.wasm"));
    assert_eq!(greeter.revision.limits.memory, 64 << 20);
    assert_eq!(greeter.revision.limits.timeout, Duration::from_secs(5));
    assert_eq!(
        greeter.revision.outbound,
        vec![Origin {
            scheme: Scheme::Https,
            host: "api.example.com".into(),
            port: 443
        }]
    );
    assert_eq!(greeter.revision.env, vec![("GREETING".into(), "hi".into())]);
    let users = &m.services[1];
    assert_eq!(users.revision.limits.memory, crate::DEFAULT_MEMORY);
    assert_eq!(users.revision.limits.timeout, crate::DEFAULT_TIMEOUT);
    assert!(users.revision.outbound.is_empty() && users.revision.env.is_empty());
    assert_eq!(users.revision.routes.len(), 2);
}

#[test]
fn syntax_error_has_line_and_column() {
    let (line, column, key, message) = err("[app]\nname = \"x\"\n[services.a\n");
    assert_eq!(line, 3);
    assert!(column >= 1);
    assert_eq!(key, "");
    assert!(!message.is_empty());
}

#[test]
fn bad_memory_names_key_and_line() {
    let text = GOOD.replace("\"64MiB\"", "\"64 parsecs\"");
    let (line, column, key, message) = err(&text);
    assert_eq!((line, column), (8, 10));
    assert_eq!(key, "services.greeter.memory");
    assert!(message.contains("unknown size unit"), "{message}");
}

#[test]
fn wrong_type_is_reported() {
    let text = GOOD.replace("timeout = \"5s\"", "timeout = 5");
    let (line, _, key, message) = err(&text);
    assert_eq!(line, 9);
    assert_eq!(key, "services.greeter.timeout");
    assert!(
        message.contains("expected a string, found integer"),
        "{message}"
    );
}

#[test]
fn unknown_key_is_an_error() {
    let text = GOOD.replace("memory = \"64MiB\"", "memroy = \"64MiB\"");
    let (line, column, key, message) = err(&text);
    assert_eq!((line, column), (8, 1));
    assert_eq!(key, "services.greeter.memroy");
    assert!(message.contains("expected one of"), "{message}");
}

#[test]
fn two_services_claiming_one_route_is_an_error() {
    let text = GOOD.replace("[\"/users\", \"/people\"]", "[\"/users\", \"/hello\"]");
    let (line, _, key, message) = err(&text);
    assert_eq!(line, 15);
    assert_eq!(key, "services.users.routes");
    assert!(
        message.contains("already claimed by service `greeter`"),
        "{message}"
    );
}

#[test]
fn missing_component_and_routes_are_named() {
    let (_, _, key, _) = err("[app]\nname = \"a\"\n[services.s]\nroutes = [\"/\"]\n");
    assert_eq!(key, "services.s.component");
    let (_, _, key, _) = err("[app]\nname = \"a\"\n[services.s]\ncomponent = \"s.wasm\"\n");
    assert_eq!(key, "services.s.routes");
    let (_, _, key, _) = err("[app]\nname = \"a\"\n");
    assert_eq!(key, "services");
}

#[test]
fn names_must_be_dns_labels() {
    let (_, _, key, _) =
        err("[app]\nname = \"Hello\"\n[services.s]\ncomponent = \"s\"\nroutes = [\"/\"]\n");
    assert_eq!(key, "app.name");
    let (_, _, key, _) =
        err("[app]\nname = \"a\"\n[services.My_Svc]\ncomponent = \"s\"\nroutes = [\"/\"]\n");
    assert_eq!(key, "services.My_Svc");
}

#[test]
fn route_shapes() {
    assert!(RoutePrefix::new("/").is_ok());
    assert!(RoutePrefix::new("/a/b").is_ok());
    assert!(RoutePrefix::new("A/x").is_err());
    assert!(RoutePrefix::new("shop.localhost:8080/x").is_err());
    assert!(RoutePrefix::new("/a/").is_err());
    assert!(RoutePrefix::new("/a?x").is_err());
    assert!(RoutePrefix::new("/a//b").is_err());
    let hello = RoutePrefix::new("/hello").unwrap();
    assert!(hello.matches("/hello"));
    assert!(hello.matches("/hello/x"));
    assert!(!hello.matches("/helloworld"));
    assert!(!hello.matches("/"));
    assert!(RoutePrefix::new("/").unwrap().matches("/anything"));
}

#[test]
fn origins() {
    let o = Origin::parse("http://127.0.0.1:8080").unwrap();
    assert!(o.allows(Scheme::Http, "127.0.0.1", 8080));
    assert!(!o.allows(Scheme::Https, "127.0.0.1", 8080));
    assert!(!o.allows(Scheme::Http, "127.0.0.1", 8081));
    let o = Origin::parse("https://API.example.com/").unwrap();
    assert!(o.allows(Scheme::Https, "api.example.com", 443));
    assert_eq!(Origin::parse("http://[::1]:9000").unwrap().host, "::1");
    assert!(Origin::parse("ftp://x").is_err());
    assert!(Origin::parse("https://x.com/path").is_err());
    assert!(Origin::parse("https://x.com:0").is_err());
}

#[test]
fn sizes_and_durations() {
    assert_eq!(crate::parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(crate::parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(crate::parse_size("1048576"), Ok(1 << 20));
    assert!(crate::parse_size("MiB").is_err());
    assert_eq!(
        crate::parse_duration("250ms"),
        Ok(Duration::from_millis(250))
    );
    assert!(crate::parse_duration("soon").is_err());
}

#[test]
fn error_display_names_file_line_and_key() {
    let text = GOOD.replace("\"64MiB\"", "\"lots\"");
    let e = parse(&text, Path::new("app/tessera.toml")).unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with("app/tessera.toml:8:10: `services.greeter.memory`: "),
        "{shown}"
    );
}

#[test]
fn routes_can_be_bound_to_a_host() {
    let r = RoutePrefix::new("shop.localhost/api").unwrap();
    assert_eq!((r.host(), r.path()), (Some("shop.localhost"), "/api"));
    assert!(r.matches("/api/x"));
    let bare = RoutePrefix::new("shop.localhost").unwrap();
    assert_eq!((bare.host(), bare.path()), (Some("shop.localhost"), "/"));
    assert_eq!(RoutePrefix::new("/api").unwrap().host(), None);

    let m = ok(&GOOD.replace(
        "name = \"hello\"",
        "name = \"hello\"\nhost = \"shop.localhost\"",
    ));
    assert_eq!(m.host.as_deref(), Some("shop.localhost"));
    assert_eq!(
        m.services[0].revision.routes[0].as_str(),
        "shop.localhost/hello"
    );
    let (_, _, key, _) =
        err(&GOOD.replace("name = \"hello\"", "name = \"hello\"\nhost = \"Shop:80\""));
    assert_eq!(key, "app.host");
}

const DATA: &str = r#"
[app]
name = "shop"

[services.cart]
component = "cart.wasm"
routes = ["/cart"]
buckets = ["sessions", "cache"]
migrations = ["migrations/0001_init.sql", "migrations/0002_more.sql"]

[services.cart.config]
currency = "EUR"
max_items = 50
tax = 0.2
beta = true

[environments.production.cart]
currency = "USD"
region = "us-east"
"#;

#[test]
fn data_keys_parse() {
    let m = ok(DATA);
    let cart = &m.services[0];
    assert_eq!(cart.revision.buckets, vec!["sessions", "cache"]);
    assert_eq!(
        cart.migrations,
        vec![
            Path::new("/apps/demo/migrations/0001_init.sql"),
            Path::new("/apps/demo/migrations/0002_more.sql")
        ]
    );
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        cart.revision.config,
        pairs(&[
            ("beta", "true"),
            ("currency", "EUR"),
            ("max_items", "50"),
            ("tax", "0.2")
        ])
    );
    assert_eq!(m.config_for(cart, None).unwrap(), cart.revision.config);
    assert_eq!(
        m.config_for(cart, Some("production")).unwrap(),
        pairs(&[
            ("beta", "true"),
            ("currency", "USD"),
            ("max_items", "50"),
            ("region", "us-east"),
            ("tax", "0.2")
        ])
    );
    let unknown = m.config_for(cart, Some("staging")).unwrap_err();
    assert!(
        unknown.contains("`staging` is not declared") && unknown.contains("production"),
        "{unknown}"
    );
}

#[test]
fn data_key_errors_name_the_key() {
    let with = |extra: &str| {
        format!(
            "[app]\nname = \"a\"\n[services.s]\ncomponent = \"s.wasm\"\nroutes = [\"/s\"]\n{extra}"
        )
    };
    let (line, _, key, message) = err(&with("buckets = [\"default\"]"));
    assert_eq!((line, key.as_str()), (6, "services.s.buckets"));
    assert!(message.contains("always exists"), "{message}");
    let (_, _, key, message) = err(&with("buckets = [\"Bad_Name\"]"));
    assert_eq!(key, "services.s.buckets");
    assert!(message.contains("invalid name"), "{message}");
    let (line, _, key, message) = err(&with("[services.s.config]\n\"bad key\" = \"x\""));
    assert_eq!((line, key.as_str()), (7, "services.s.config.bad key"));
    assert!(message.contains("invalid key"), "{message}");
    let (_, _, key, message) = err(&with("config = { nested = { a = 1 } }"));
    assert_eq!(key, "services.s.config.nested");
    assert!(
        message.contains("expected a string, number or boolean"),
        "{message}"
    );
    let (line, _, key, message) = err(&with("[environments.prod.nope]\na = \"b\""));
    assert_eq!((line, key.as_str()), (6, "environments.prod.nope"));
    assert!(message.contains("no service `nope`"), "{message}");
    let (_, _, key, message) = err(&with("migrations = [\"a.sql\", \"a.sql\"]"));
    assert_eq!(key, "services.s.migrations");
    assert!(message.contains("twice"), "{message}");
}

#[test]
fn scaling_keys_parse_with_defaults() {
    let m = ok(GOOD);
    assert_eq!(m.services[0].revision.scaling, crate::Scaling::default());
    assert_eq!(
        crate::Scaling::default(),
        crate::Scaling {
            concurrency: 100,
            queue: 100,
            queue_timeout: Duration::from_secs(10),
            idle: Some(Duration::from_secs(300)),
            async_rate: 100,
            async_stored: 64 << 20,
        }
    );
    let m = ok(&GOOD.replace(
        "timeout = \"5s\"",
        "timeout = \"5s\"\nconcurrency = 8\nqueue = 0\nqueue_timeout = \"250ms\"\nidle = \"never\"",
    ));
    assert_eq!(
        m.services[0].revision.scaling,
        crate::Scaling {
            concurrency: 8,
            queue: 0,
            queue_timeout: Duration::from_millis(250),
            idle: None,
            ..crate::Scaling::default()
        }
    );
    let m = ok(&GOOD.replace("timeout = \"5s\"", "idle = \"90s\""));
    assert_eq!(
        m.services[0].revision.scaling.idle,
        Some(Duration::from_secs(90))
    );
}

#[test]
fn scaling_errors_name_the_key_and_line() {
    let with = |extra: &str| GOOD.replace("timeout = \"5s\"", extra);
    let (line, column, key, message) = err(&with("concurrency = 0"));
    assert_eq!((line, column), (9, 15));
    assert_eq!(key, "services.greeter.concurrency");
    assert!(message.contains("between 1 and 10000"), "{message}");
    let (line, _, key, message) = err(&with("queue = -1"));
    assert_eq!((line, key.as_str()), (9, "services.greeter.queue"));
    assert!(message.contains("between 0 and 100000"), "{message}");
    let (_, _, key, message) = err(&with("queue = \"16\""));
    assert_eq!(key, "services.greeter.queue");
    assert!(message.contains("expected an integer"), "{message}");
    let (_, _, key, message) = err(&with("queue_timeout = \"0s\""));
    assert_eq!(key, "services.greeter.queue_timeout");
    assert!(message.contains("more than 0"), "{message}");
    let (_, _, key, message) = err(&with("idle = \"0s\""));
    assert_eq!(key, "services.greeter.idle");
    assert!(message.contains("\"never\""), "{message}");
    let (_, _, key, message) = err(&with("idle = \"forever\""));
    assert_eq!(key, "services.greeter.idle");
    assert!(message.contains("not a duration"), "{message}");
}

#[test]
fn reuse_keys_parse_with_defaults_and_errors_name_the_key() {
    let m = ok(GOOD);
    assert_eq!(
        m.services[0].revision.reuse,
        crate::Reuse {
            requests: 1,
            concurrency: 1,
            idle: Duration::from_secs(1),
        }
    );
    let with = |extra: &str| GOOD.replace("timeout = \"5s\"", extra);
    let m = ok(&with(
        "reuse = 128\nreuse_concurrency = 16\nreuse_idle = \"250ms\"",
    ));
    assert_eq!(
        m.services[0].revision.reuse,
        crate::Reuse {
            requests: 128,
            concurrency: 16,
            idle: Duration::from_millis(250),
        }
    );
    let (line, column, key, message) = err(&with("reuse = 0"));
    assert_eq!((line, column), (9, 9));
    assert_eq!(key, "services.greeter.reuse");
    assert!(message.contains("between 1 and 1000000"), "{message}");
    let (_, _, key, message) = err(&with("reuse_concurrency = 1001"));
    assert_eq!(key, "services.greeter.reuse_concurrency");
    assert!(message.contains("between 1 and 1000"), "{message}");
    let (_, _, key, message) = err(&with("reuse_idle = \"2h\""));
    assert_eq!(key, "services.greeter.reuse_idle");
    assert!(message.contains("at most 1h"), "{message}");
}

#[test]
fn build_table_and_shorthand_parse() {
    let manifest = ok(r#"
[app]
name = "shop"

[services.cart]
component = "cart/cart.wasm"
routes = ["/cart"]
[services.cart.build]
command = "jco componentize app.js -o cart.wasm"
workdir = "cart"
watch = ["*.js", "wit/**/*.wit"]

[services.stats]
component = "stats.wasm"
routes = ["/stats"]
build = "make"
"#);
    let cart = manifest.services.iter().find(|s| s.name == "cart").unwrap();
    let build = cart.build.as_ref().expect("cart has a build");
    assert_eq!(build.command, "jco componentize app.js -o cart.wasm");
    assert_eq!(build.workdir, Path::new("/apps/demo/cart"));
    assert_eq!(build.watch, ["*.js", "wit/**/*.wit"]);
    let stats = manifest
        .services
        .iter()
        .find(|s| s.name == "stats")
        .unwrap();
    let build = stats.build.as_ref().expect("stats has a build");
    assert_eq!(
        (build.command.as_str(), build.workdir.as_path()),
        ("make", Path::new("/apps/demo"))
    );
    assert!(build.watch.is_empty());
}

#[test]
fn bad_build_tables_name_the_key() {
    let base =
        "[app]\nname = \"shop\"\n[services.cart]\ncomponent = \"c.wasm\"\nroutes = [\"/cart\"]\n";
    let cases = [
        (
            "[services.cart.build]\nworkdir = \"cart\"\n",
            "services.cart.build.command",
            "missing command",
        ),
        (
            "[services.cart.build]\ncommand = \" \"\n",
            "services.cart.build.command",
            "empty",
        ),
        (
            "[services.cart.build]\ncommand = \"make\"\nwatch = [\"../x\"]\n",
            "services.cart.build.watch",
            "leaves the work directory",
        ),
        (
            "[services.cart.build]\ncommand = \"make\"\nwatch = [\"src**/x\"]\n",
            "services.cart.build.watch",
            "whole path segment",
        ),
        (
            "[services.cart.build]\ncommand = \"make\"\nworkdir = \"/abs\"\n",
            "services.cart.build.workdir",
            "relative",
        ),
        (
            "[services.cart.build]\ncommand = \"make\"\nflags = 1\n",
            "services.cart.build.flags",
            "unknown key",
        ),
    ];
    for (extra, key, message) in cases {
        let (line, _, got_key, got) = err(&format!("{base}{extra}"));
        assert_eq!(got_key, key, "{extra}");
        assert!(got.contains(message), "{extra}: {got}");
        assert!(line >= 6, "{extra}: line {line}");
    }
}
