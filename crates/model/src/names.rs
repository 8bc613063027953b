//! Names and addresses a revision's settings are made of: app, service and bucket names,
//! configuration keys, route prefixes and the origins a service may call. Each type or
//! check holds its rule once, for the manifest and the API alike.

/// A route: an optional host name and a path prefix. The prefix matches itself and
/// everything below it on a segment boundary (`/hello` matches `/hello` and `/hello/x`,
/// not `/helloworld`). Written `/hello` (any host) or `shop.localhost/hello` (only
/// requests for that host).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutePrefix {
    text: String,
    /// Byte offset where the path starts in `text` (0 when there is no host).
    path_start: usize,
}

impl RoutePrefix {
    /// Checks the shape of a route: an optional lowercase host name, then a path that
    /// starts with `/`, has no trailing `/` (except the root), and no query, fragment,
    /// empty segment or whitespace.
    pub fn new(route: &str) -> Result<Self, String> {
        let path_start = if route.starts_with('/') {
            0
        } else {
            let host = route.split('/').next().unwrap_or_default();
            check_host(host).map_err(|m| format!("route `{route}`: {m}"))?;
            host.len()
        };
        let text = if path_start == route.len() {
            // `shop.localhost` alone means the whole host.
            format!("{route}/")
        } else {
            route.to_string()
        };
        let prefix = &text[path_start..];
        if !prefix.starts_with('/') {
            return Err(format!(
                "route `{route}` must be a path starting with `/`, optionally after a host name"
            ));
        }
        if prefix.len() > 1 && prefix.ends_with('/') {
            return Err(format!(
                "route `{route}` must not end with `/` (a prefix already matches everything below it)"
            ));
        }
        if prefix.contains("//") {
            return Err(format!("route `{route}` has an empty path segment"));
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
        {
            return Err(format!("route `{route}` must not contain {c:?}"));
        }
        Ok(RoutePrefix { text, path_start })
    }

    /// The route as written (normalised: a bare host gets its `/`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host this route is bound to, if any.
    pub fn host(&self) -> Option<&str> {
        (self.path_start > 0).then(|| &self.text[..self.path_start])
    }

    /// The path prefix.
    pub fn path(&self) -> &str {
        &self.text[self.path_start..]
    }

    /// The same path bound to `host`.
    pub fn with_host(&self, host: &str) -> Result<Self, String> {
        RoutePrefix::new(&format!("{host}{}", self.path()))
    }

    /// Whether `path` (without query) falls under this prefix; the host is matched by
    /// the router, not here.
    pub fn matches(&self, path: &str) -> bool {
        let prefix = self.path();
        if prefix == "/" {
            return path.starts_with('/');
        }
        match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl std::fmt::Display for RoutePrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Names of apps and services become DNS labels (`<service>.internal`), so they follow
/// the label rules: lowercase letters, digits and `-`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid name `{name}`: use 1-63 lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

/// Configuration keys and secret names: 1-128 ASCII letters, digits, `_`, `-` and `.`,
/// the characters every backend and every language's config conventions accept.
pub fn check_config_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid key `{key}`: use 1-128 ASCII letters, digits, `_`, `-` and `.`"
        ))
    }
}

/// Host names in routes: lowercase DNS names (letters, digits, `-`, `.`), no port.
pub fn check_host(host: &str) -> Result<(), String> {
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host name (lowercase letters, digits, `-` and `.`, no port)"
        ))
    }
}

/// An origin a service may call: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    /// Lowercased host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Origin {
    /// Parses `http://host[:port]` or `https://host[:port]`, optionally with a trailing `/`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(format!(
                "origin `{text}` must start with `http://` or `https://`"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(format!("origin `{text}` has no host"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "origin `{text}` must be scheme, host and port only (no path, query or user)"
            ));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = split_host_port(rest)
            .ok_or_else(|| format!("origin `{text}` has an invalid host or port"))?;
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(default_port),
        })
    }

    /// Whether a request to `scheme://host:port` is covered by this origin.
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.port == port && self.host.eq_ignore_ascii_case(host)
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into its parts.
pub fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !host_ok {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}
