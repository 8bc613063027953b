//! Running `wrk` against a server and reading its summary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::servers::find_on_path;

/// Where Debian/Ubuntu's `wrk` package installs it.
const DEFAULT_WRK: &str = "/usr/bin/wrk";

/// The load generator's own threads; wrk requires at least one connection per thread.
const THREADS: u32 = 2;

/// The numbers the report needs from one wrk run.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub requests: u64,
    /// "Non-2xx or 3xx responses".
    pub bad_status: u64,
    /// connect, read, write, timeout.
    pub socket_errors: [u64; 4],
}

impl WrkResult {
    /// "0", or what went wrong, e.g. "12 non-2xx, 3 read".
    pub fn errors_summary(&self) -> String {
        let names = ["connect", "read", "write", "timeout"];
        let mut parts = Vec::new();
        if self.bad_status > 0 {
            parts.push(format!("{} non-2xx", self.bad_status));
        }
        for (count, name) in self.socket_errors.iter().zip(names) {
            if *count > 0 {
                parts.push(format!("{count} {name}"));
            }
        }
        if parts.is_empty() {
            "0".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

pub fn find() -> Result<PathBuf> {
    let default = Path::new(DEFAULT_WRK);
    if default.is_file() {
        return Ok(default.to_path_buf());
    }
    find_on_path("wrk").context("wrk not found; install it with `apt-get install -y wrk`")
}

/// The wrk arguments for a run, shown verbatim in the report.
pub fn args(connections: u32, duration: Duration, url: &str) -> Vec<String> {
    vec![
        format!("-t{}", THREADS.min(connections)),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
        "--latency".to_owned(),
        url.to_owned(),
    ]
}

/// Runs wrk and returns its parsed summary together with the raw output.
pub fn run(
    wrk: &Path,
    connections: u32,
    duration: Duration,
    url: &str,
) -> Result<(WrkResult, String)> {
    let args = args(connections, duration, url);
    let output = Command::new(wrk)
        .args(&args)
        .output()
        .with_context(|| format!("running {}", wrk.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "`wrk {}` failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let result = parse(&stdout).with_context(|| format!("reading wrk's output:\n{stdout}"))?;
    Ok((result, stdout))
}

/// Parses wrk's `--latency` summary.
pub fn parse(output: &str) -> Result<WrkResult> {
    let mut requests_per_sec = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut bad_status = 0;
    let mut socket_errors = [0; 4];
    let mut in_distribution = false;

    for line in output.lines() {
        let line = line.trim();
        if line == "Latency Distribution" {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            // "50%  123.00us"; the block ends at the first line that isn't a percentile.
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                [percentile, value] if percentile.ends_with('%') => {
                    match *percentile {
                        "50%" => p50 = Some(parse_time(value)?),
                        "99%" => p99 = Some(parse_time(value)?),
                        _ => {}
                    }
                    continue;
                }
                _ => in_distribution = false,
            }
        }
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(
                value
                    .trim()
                    .parse::<f64>()
                    .with_context(|| format!("bad Requests/sec {value:?}"))?,
            );
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            bad_status = value
                .trim()
                .parse()
                .with_context(|| format!("bad non-2xx count {value:?}"))?;
        } else if let Some(value) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for (slot, part) in socket_errors.iter_mut().zip(value.split(',')) {
                *slot = part
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("bad socket errors {value:?}"))?;
            }
        } else if line.contains(" requests in ") {
            // "123456 requests in 8.00s, 12.34MB read"
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }

    Ok(WrkResult {
        requests_per_sec: requests_per_sec.context("no Requests/sec line")?,
        p50: p50.context("no 50% line in the Latency Distribution")?,
        p99: p99.context("no 99% line in the Latency Distribution")?,
        requests: requests.context("no `N requests in` line")?,
        bad_status,
        socket_errors,
    })
}

/// wrk's time format: a number with `us`, `ms`, `s`, `m` or `h`.
fn parse_time(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("time without unit: {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad time {text:?}"))?;
    let seconds_per_unit = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("unknown time unit in {text:?}"),
    };
    Ok(Duration::from_secs_f64(number * seconds_per_unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Running 8s test @ http://127.0.0.1:40000/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   391.21us  201.55us   9.49ms   90.47%
    Req/Sec    40.31k     2.41k   45.01k    71.25%
  Latency Distribution
     50%  350.00us
     75%  420.00us
     90%  530.00us
     99%    1.21ms
  641872 requests in 8.00s, 54.48MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  80218.52
Transfer/sec:      6.81MB
";

    #[test]
    fn parses_full_summary() {
        let result = parse(SAMPLE).unwrap();
        assert_eq!(
            result,
            WrkResult {
                requests_per_sec: 80218.52,
                p50: Duration::from_micros(350),
                p99: Duration::from_micros(1210),
                requests: 641872,
                bad_status: 7,
                socket_errors: [0, 2, 0, 1],
            }
        );
        assert_eq!(result.errors_summary(), "7 non-2xx, 2 read, 1 timeout");
    }

    #[test]
    fn clean_run_has_no_errors() {
        let clean: String = SAMPLE
            .lines()
            .filter(|line| !line.contains("errors") && !line.contains("Non-2xx"))
            .map(|line| format!("{line}\n"))
            .collect();
        let result = parse(&clean).unwrap();
        assert_eq!(result.errors_summary(), "0");
    }

    #[test]
    fn missing_latency_block_is_an_error() {
        assert!(parse("Requests/sec: 1.0\n1 requests in 1.00s, 1KB read\n").is_err());
    }

    #[test]
    fn time_units() {
        assert_eq!(parse_time("2.00s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_time("1.50m").unwrap(), Duration::from_secs(90));
        assert!(parse_time("12").is_err());
        assert!(parse_time("3.0xs").is_err());
    }
}
