//! Bad apps are refused before anything is served, with an error that says where and why.

use crate::util::{App, guest, up_fails};

fn refused(manifest: &str) -> String {
    let app = App::new(manifest);
    let (status, stderr) = up_fails(app.path());
    assert!(!status.success(), "tessera accepted a bad app:\n{stderr}");
    stderr
}

#[test]
fn an_invalid_manifest_names_file_line_column_and_key() {
    let stderr = refused(
        r#"[app]
name = "bad"

[services.greeter]
component = "{guest:hello}"
memory = "lots"
routes = ["/"]
"#,
    );
    assert!(
        stderr.contains("tessera.toml:6:10: `services.greeter.memory`: `lots` is not a size"),
        "{stderr}"
    );

    let stderr = refused("[app]\nname = \"bad\"\n[services.x\n");
    assert!(stderr.contains("tessera.toml:3:"), "{stderr}");
}

#[test]
fn two_services_claiming_the_same_route_is_an_error() {
    let stderr = refused(
        r#"[app]
name = "dup"

[services.one]
component = "{guest:hello}"
routes = ["/same"]

[services.two]
component = "{guest:hello}"
routes = ["/other", "/same"]
"#,
    );
    assert!(
        stderr.contains("`services.two.routes`: route `/same` is already claimed by service `one`"),
        "{stderr}"
    );
}

#[test]
fn a_missing_component_file_names_the_service() {
    let stderr = refused(
        r#"[app]
name = "missing"

[services.ghost]
component = "nowhere/ghost.wasm"
routes = ["/"]
"#,
    );
    assert!(
        stderr.contains("service `ghost`: cannot read component"),
        "{stderr}"
    );
    assert!(stderr.contains("ghost.wasm"), "{stderr}");
}

#[test]
fn files_that_are_not_http_components_are_refused_with_the_reason() {
    let app = App::new(
        r#"[app]
name = "junk"

[services.junk]
component = "junk.wasm"
routes = ["/"]
"#,
    );
    std::fs::write(app.path().join("junk.wasm"), b"definitely not wasm").unwrap();
    let (status, stderr) = up_fails(app.path());
    assert!(!status.success());
    assert!(
        stderr.contains("service `junk`: ") && stderr.contains("is not a WebAssembly component"),
        "{stderr}"
    );

    // A core module (the output of a wasm32-wasip1 build) is not a component.
    std::fs::write(app.path().join("junk.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let (_, stderr) = up_fails(app.path());
    assert!(stderr.contains("wasm-tools component new"), "{stderr}");

    // A component that is a command, not an HTTP handler.
    std::fs::copy(guest("not_http"), app.path().join("junk.wasm")).unwrap();
    let (status, stderr) = up_fails(app.path());
    assert!(!status.success());
    assert!(
        stderr.contains("service `junk`") && stderr.contains("wasi:http/incoming-handler"),
        "{stderr}"
    );
}
