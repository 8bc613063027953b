//! Every HTTP header the platform reads or writes, named once. `x-tessera-*` headers are
//! the platform's own: from outside, a client may send only the ones it uses to talk to
//! the gateway ([`CLIENT_SETTABLE`]); every other one, and every CloudEvents `ce-*`
//! header, is stripped from outside requests so no client can pose as the platform
//! ([`is_platform_only`]).

/// The request id, made by the gateway (or kept from the client) and sent back.
pub const REQUEST_ID: &str = "x-request-id";
/// Pins a request to one revision (client), and names the revision that answered
/// (response).
pub const REVISION: &str = "x-tessera-revision";
/// `x-tessera-async: 1` asks to run the request later (client).
pub const ASYNC: &str = "x-tessera-async";
/// Where to `POST` an async invocation's result (client).
pub const CALLBACK: &str = "x-tessera-callback";
/// The id of an accepted async invocation (response).
pub const INVOCATION: &str = "x-tessera-invocation";
/// Which attempt an event delivery is, counted from 1 (platform to guest).
pub const ATTEMPT: &str = "x-tessera-attempt";
/// The node that delivers an event, by its id (platform to guest).
pub const NODE: &str = "x-tessera-node";
/// Says an internal call was refused by the caller's open circuit (platform to guest).
pub const CIRCUIT: &str = "x-tessera-circuit";
/// How deep in a chain of internal calls a request is (platform to guest).
pub const CALL_DEPTH: &str = "x-tessera-call-depth";
/// `app/service` of the service making an internal call (platform to guest).
pub const CALLER: &str = "x-tessera-caller";

/// The prefix of the platform's own headers.
pub const PLATFORM_PREFIX: &str = "x-tessera-";
/// The prefix of CloudEvents attributes in the HTTP binding.
pub const CLOUD_EVENT_PREFIX: &str = "ce-";
/// The platform headers a client may send.
pub const CLIENT_SETTABLE: &[&str] = &[REVISION, ASYNC, CALLBACK];

/// Whether only the platform may set `name` (lowercase) on a request to a guest.
pub fn is_platform_only(name: &str) -> bool {
    name.starts_with(CLOUD_EVENT_PREFIX)
        || (name.starts_with(PLATFORM_PREFIX) && !CLIENT_SETTABLE.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_may_set_only_the_gateways_own_headers() {
        for name in [REVISION, ASYNC, CALLBACK, "content-type", REQUEST_ID] {
            assert!(!is_platform_only(name), "{name}");
        }
        for name in [
            ATTEMPT,
            NODE,
            CALLER,
            CALL_DEPTH,
            CIRCUIT,
            INVOCATION,
            "ce-id",
            "x-tessera-new",
        ] {
            assert!(is_platform_only(name), "{name}");
        }
    }
}
