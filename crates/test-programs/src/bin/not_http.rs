//! `not_http`: a plain WASI command component (it exports `wasi:cli/run`, not the HTTP
//! incoming handler), which Tessera must refuse to serve with a clear error.

fn main() {
    println!("this component is a command, not an HTTP service");
}
