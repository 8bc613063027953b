//! A client of the control API, for the CLI, the dashboard's tests and anyone scripting a
//! node: one place that knows the base address, the bearer token, the JSON error shape
//! and the newline-delimited streams.

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a call did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the node at {base}: {source}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error: its message and code when it sent the API's
    /// JSON error, the status alone otherwise.
    #[error("{}", api_error_text(*status, code, message))]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("the node answered with unexpected JSON: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the node closed the stream: {0}")]
    Stream(#[source] reqwest::Error),
}

fn api_error_text(status: StatusCode, code: &str, message: &str) -> String {
    if message.is_empty() {
        format!("the node answered {status}")
    } else {
        format!("{message} ({code})")
    }
}

impl ClientError {
    /// The error a non-success answer stands for.
    pub fn from_answer(status: StatusCode, body: &[u8]) -> ClientError {
        let (code, message) = match serde_json::from_slice::<Value>(body) {
            Ok(v) if v["error"]["message"].is_string() => (
                v["error"]["code"].as_str().unwrap_or_default().to_string(),
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            _ => (String::new(), String::new()),
        };
        ClientError::Api {
            status,
            code,
            message,
        }
    }
}

/// A body to send.
pub enum Payload<'a> {
    None,
    Json(&'a Value),
    /// Raw bytes with their content type.
    Bytes(reqwest::Body, &'a str),
}

/// A node's control API at `base` (e.g. `http://127.0.0.1:3001`).
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    /// The node's address, as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn response(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })
    }

    /// Sends a request with `headers` and returns the status and body, whatever the
    /// status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        payload: Payload<'_>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let mut request = self.request(method, path);
        request = match payload {
            Payload::None => request,
            Payload::Json(json) => request.json(json),
            Payload::Bytes(body, content_type) => {
                request.header("content-type", content_type).body(body)
            }
        };
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = self.response(request).await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(ClientError::Stream)?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends a request and decodes a successful answer; an error answer is
    /// [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        json: Option<&Value>,
    ) -> Result<T, ClientError> {
        let payload = json.map_or(Payload::None, Payload::Json);
        let (status, body) = self.send(method, path, payload, &[]).await?;
        if !status.is_success() {
            return Err(ClientError::from_answer(status, &body));
        }
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }

    /// GETs a stream of newline-delimited lines and hands each non-empty one to `each`
    /// as it arrives, until the node ends the stream or `each` fails.
    pub async fn stream_lines<E: From<ClientError>>(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut response = self.response(self.request(Method::GET, path)).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(ClientError::Stream)?;
            return Err(ClientError::from_answer(status, &body).into());
        }
        let mut pending = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ClientError::Stream)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = line.trim_ascii();
                // Blank lines are the node's keep-alives.
                if !line.is_empty() {
                    each(line)?;
                }
            }
        }
        Ok(())
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_the_json_error_or_fall_back_to_the_status() {
        let body = br#"{"error":{"code":"conflict","message":"app `shop` changed"}}"#;
        let err = ClientError::from_answer(StatusCode::CONFLICT, body);
        assert_eq!(err.to_string(), "app `shop` changed (conflict)");
        let err = ClientError::from_answer(StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(err.to_string(), "the node answered 502 Bad Gateway");
    }

    #[test]
    fn encoding_keeps_unreserved_characters_only() {
        assert_eq!(encode("a b/c~d"), "a%20b%2Fc~d");
    }
}
