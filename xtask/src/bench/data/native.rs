//! `xtask bench-data-native SERVICES_DIR N`: the native half of `bench-data`, run from a
//! release build after tessera has stopped.
//!
//! It does the guest's operations on the file tessera left behind, first through
//! tessera-data and then through a bare rusqlite connection, and times the
//! `spawn_blocking` round trip the node makes for every guest data call. It prints one
//! JSON summary per line (the guest's format plus a `backend` field) for `bench-data` to
//! read, and its progress on stderr.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags, params};
use tessera_data::{DataBackend, ServiceData, SqlValue};
use tessera_embedded::EmbeddedData;

use super::{
    APP, BACKEND, BENCH_ROWS, OPS, RAW, SERVICE, SQL_INSERT, SQL_QUERY, Summary, VALUE_BYTES,
    WARMUP_OPS, summary_line,
};

/// The `backend` (and `op`) of the `spawn_blocking` round-trip result.
pub const HOP: &str = "spawn-blocking";

/// The guest reads and writes this bucket, and reads this key.
const BUCKET: &str = "default";
const GET_KEY: &str = "bench-key";

/// tessera-data's own statements for a get and for the write of a set (see
/// crates/data/src/embedded/kv.rs).
const KV_GET: &str = "SELECT value FROM _tessera_kv WHERE bucket = ?1 AND key = ?2";
const KV_PUT: &str = "INSERT INTO _tessera_kv (bucket, key, value, version) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value, version = excluded.version";

/// The deadline of SQL calls: far enough never to cut a measured call short.
const SQL_DEADLINE: Duration = Duration::from_secs(3600);

pub fn run(args: &[String]) -> Result<()> {
    let [services, ops] = args else {
        bail!("usage: xtask bench-data-native SERVICES_DIR N");
    };
    let ops: usize = ops
        .parse()
        .with_context(|| format!("invalid number of operations {ops:?}"))?;
    let services = PathBuf::from(services);
    let db = services.join(APP).join(format!("{SERVICE}.db"));
    if !db.is_file() {
        bail!(
            "{} does not exist; `cargo xtask bench-data` has the guest create it first",
            db.display()
        );
    }

    {
        let backend = EmbeddedData::new(services);
        let data = backend
            .open_service(APP, SERVICE)
            .context("opening the service's data through tessera-data")?;
        check_bench_rows(&data)?;
        measure(BACKEND, ops, |op, n| backend_op(&data, op, n))?;
        // The backend's connections close here, before the bare one opens.
    }

    let conn = open_raw(&db)?;
    // Raw sets write versions above every one tessera-data handed out, and record the last
    // one afterwards, so the file stays as consistent as the backend would leave it.
    let mut version: i64 = conn.query_row(
        "SELECT last FROM _tessera_kv_version WHERE id = 0",
        [],
        |row| row.get(0),
    )?;
    measure(RAW, ops, |op, n| raw_op(&conn, op, n, &mut version))?;
    conn.execute(
        "UPDATE _tessera_kv_version SET last = ?1 WHERE id = 0",
        [version],
    )?;

    let hop = measure_hop(ops)?;
    eprintln!("    {HOP} round trip: {}", summary_line(&hop));
    print_result(HOP, HOP, hop);
    Ok(())
}

/// Fails unless the guest left the rows `sql-query` reads, so both sides read the same.
fn check_bench_rows(data: &ServiceData) -> Result<()> {
    let deadline = Instant::now() + SQL_DEADLINE;
    let rows = data.sql.query(
        "SELECT COUNT(*) FROM bench WHERE id <= ?",
        &[SqlValue::Integer(BENCH_ROWS)],
        deadline,
    )?;
    match rows.rows.first().and_then(|row| row.first()) {
        Some(SqlValue::Integer(count)) if *count == BENCH_ROWS => Ok(()),
        other => bail!("expected {BENCH_ROWS} rows in the guest's `bench` table, found {other:?}"),
    }
}

/// A warm-up of every operation, then each measured once; prints the results.
fn measure(
    backend: &str,
    ops: usize,
    mut run: impl FnMut(&str, usize) -> Result<Vec<u64>>,
) -> Result<()> {
    eprintln!("==> native: {backend}, warm-up, {WARMUP_OPS} of each operation");
    for op in OPS {
        run(op, WARMUP_OPS).with_context(|| format!("warming up {op} with {backend}"))?;
    }
    for op in OPS {
        eprintln!("==> native: {backend} {op} x {ops}");
        let summary = Summary::from_durations(
            run(op, ops).with_context(|| format!("measuring {op} with {backend}"))?,
        );
        eprintln!("    {}", summary_line(&summary));
        print_result(backend, op, summary);
    }
    Ok(())
}

fn print_result(backend: &str, op: &str, summary: Summary) {
    let mut json = summary.to_json(op);
    json["backend"] = backend.into();
    println!("{json}");
}

/// The guest's operations through tessera-data, with keys and names of their own.
fn backend_op(data: &ServiceData, op: &str, n: usize) -> Result<Vec<u64>> {
    let value = [b'x'; VALUE_BYTES];
    let deadline = Instant::now() + SQL_DEADLINE;
    match op {
        "kv-get" => {
            data.kv.set(BUCKET, GET_KEY, &value)?;
            time(n, |_| {
                data.kv.get(BUCKET, GET_KEY)?;
                Ok(())
            })
        }
        "kv-set" => time(n, |i| {
            data.kv.set(BUCKET, &format!("native-{i}"), &value)?;
            Ok(())
        }),
        "sql-query" => time(n, |i| {
            data.sql
                .query(SQL_QUERY, &[SqlValue::Integer(bench_id(i))], deadline)?;
            Ok(())
        }),
        "sql-insert" => time(n, |i| {
            let params = [SqlValue::Text(format!("native-{i}")), SqlValue::Real(0.5)];
            data.sql.execute(SQL_INSERT, &params, deadline)?;
            Ok(())
        }),
        other => bail!("no operation called {other}"),
    }
}

/// A connection set up as tessera-data sets up its writer, minus the fence.
fn open_raw(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "{} is not in WAL mode (journal mode {mode})",
            path.display()
        );
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// The least SQLite work for each operation: cached statements on one connection.
fn raw_op(conn: &Connection, op: &str, n: usize, version: &mut i64) -> Result<Vec<u64>> {
    let value = [b'x'; VALUE_BYTES];
    match op {
        "kv-get" => time(n, |_| {
            let _value: Vec<u8> = conn
                .prepare_cached(KV_GET)?
                .query_row(params![BUCKET, GET_KEY], |row| row.get(0))?;
            Ok(())
        }),
        "kv-set" => time(n, |i| {
            *version += 1;
            conn.prepare_cached(KV_PUT)?.execute(params![
                BUCKET,
                format!("raw-{i}"),
                &value[..],
                *version
            ])?;
            Ok(())
        }),
        "sql-query" => time(n, |i| {
            let _row: (i64, String, f64) = conn
                .prepare_cached(SQL_QUERY)?
                .query_row([bench_id(i)], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
            Ok(())
        }),
        "sql-insert" => time(n, |i| {
            conn.prepare_cached(SQL_INSERT)?
                .execute(params![format!("raw-{i}"), 0.5])?;
            Ok(())
        }),
        other => bail!("no operation called {other}"),
    }
}

/// `spawn_blocking` of an empty closure, awaited from a task on a worker of a multi-thread
/// runtime, as the node awaits each backend call: the thread hop alone.
fn measure_hop(ops: usize) -> Result<Summary> {
    eprintln!("==> native: {HOP} round trip x {ops}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .build()
        .context("starting a tokio runtime")?;
    let durations = runtime.block_on(async move {
        tokio::spawn(async move {
            for _ in 0..WARMUP_OPS {
                tokio::task::spawn_blocking(|| ()).await?;
            }
            let mut durations = Vec::with_capacity(ops);
            for _ in 0..ops {
                let start = Instant::now();
                tokio::task::spawn_blocking(|| ()).await?;
                durations.push(nanos(start.elapsed()));
            }
            Ok::<_, tokio::task::JoinError>(durations)
        })
        .await
    })??;
    Ok(Summary::from_durations(durations))
}

/// Runs `op(0..n)`, returning each call's duration in nanoseconds, like `time` in data.rs.
fn time(n: usize, mut op: impl FnMut(usize) -> Result<()>) -> Result<Vec<u64>> {
    let mut durations = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        op(i)?;
        durations.push(nanos(start.elapsed()));
    }
    Ok(durations)
}

/// The id `sql-query` reads in its `i`th operation, as the guest cycles them.
fn bench_id(i: usize) -> i64 {
    i64::try_from(i).unwrap_or(0) % BENCH_ROWS + 1
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
