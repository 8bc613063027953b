//! The SQL database's part of the suite: values, errors, batches, migrations, the fences,
//! deadlines and concurrent readers.

use std::time::{Duration, Instant};

use super::db_of;
use crate::{
    Changes, DataBackend, MAX_BATCH_STATEMENTS, MAX_RESULT_BYTES, MAX_SQL_VALUE_BYTES, Migration,
    SqlDatabase, SqlError, SqlValue, Statement,
};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

fn statement(sql: &str, params: Vec<SqlValue>) -> Statement {
    Statement {
        sql: sql.to_owned(),
        params,
    }
}

fn migration(name: &str, sql: &str) -> Migration {
    Migration {
        name: name.to_owned(),
        sql: sql.to_owned(),
    }
}

fn count(sql: &dyn SqlDatabase, table: &str) -> i64 {
    let rows = sql
        .query(&format!("SELECT count(*) FROM {table}"), &[], soon())
        .unwrap();
    match rows.rows[0][0] {
        SqlValue::Integer(n) => n,
        ref other => panic!("count(*) returned {other:?}"),
    }
}

/// Asserts that `sql` is refused as not permitted, and returns the message.
fn refused(db: &dyn SqlDatabase, sql: &str) -> String {
    match db.execute(sql, &[], soon()) {
        Err(SqlError::NotPermitted(message)) => message,
        other => panic!("{sql}: expected NotPermitted, got {other:?}"),
    }
}

/// A path outside every service's data, unique to this process and call, that a guest's
/// SQL must never be able to create.
fn outside_path(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "tessera-conformance-{}-{nanos}-{name}",
        std::process::id()
    ))
}

pub(super) fn typed_values_round_trip(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER, x REAL, name TEXT, data BLOB, missing TEXT)",
        &[],
        soon(),
    )
    .unwrap();
    let changes = db
        .execute(
            "INSERT INTO items (n, x, name, data, missing) VALUES (?1, ?2, ?3, ?4, ?5)",
            &[
                SqlValue::Integer(-42),
                SqlValue::Real(2.5),
                text("zürich"),
                SqlValue::Blob(vec![0, 159, 146, 150, 255]),
                SqlValue::Null,
            ],
            soon(),
        )
        .unwrap();
    assert_eq!(
        changes,
        Changes {
            rows_affected: 1,
            last_insert_id: Some(1)
        }
    );
    let rows = db
        .query(
            "SELECT id, n, x, name, data, missing FROM items WHERE n = ?",
            &[SqlValue::Integer(-42)],
            soon(),
        )
        .unwrap();
    assert_eq!(rows.columns, ["id", "n", "x", "name", "data", "missing"]);
    assert_eq!(
        rows.rows,
        [[
            SqlValue::Integer(1),
            SqlValue::Integer(-42),
            SqlValue::Real(2.5),
            text("zürich"),
            SqlValue::Blob(vec![0, 159, 146, 150, 255]),
            SqlValue::Null,
        ]]
    );
}

pub(super) fn execute_reports_rows_affected_and_only_its_own_insert_id(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)",
        &[],
        soon(),
    )
    .unwrap();
    for v in 0..3 {
        db.execute(
            "INSERT INTO t (v) VALUES (?)",
            &[SqlValue::Integer(v)],
            soon(),
        )
        .unwrap();
    }
    let changes = db
        .execute("UPDATE t SET v = v + 1 WHERE v > 0", &[], soon())
        .unwrap();
    assert_eq!(
        changes,
        Changes {
            rows_affected: 2,
            last_insert_id: None
        }
    );
    // A statement that changes nothing reports nothing, not the previous statement's count.
    let changes = db
        .execute("CREATE INDEX t_v ON t (v)", &[], soon())
        .unwrap();
    assert_eq!(
        changes,
        Changes {
            rows_affected: 0,
            last_insert_id: None
        }
    );
    let changes = db
        .execute("INSERT OR IGNORE INTO t (id, v) VALUES (1, 9)", &[], soon())
        .unwrap();
    assert_eq!(changes.rows_affected, 0);
    assert_eq!(changes.last_insert_id, None);
}

pub(super) fn query_with_returning_runs_on_the_writer(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        &[],
        soon(),
    )
    .unwrap();
    let rows = db
        .query(
            "INSERT INTO t (v) VALUES (?) RETURNING id, v",
            &[text("a")],
            soon(),
        )
        .unwrap();
    assert_eq!(rows.rows, [[SqlValue::Integer(1), text("a")]]);
    assert_eq!(count(db.as_ref(), "t"), 1);
}

pub(super) fn errors_fall_into_the_right_cases(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        &[],
        soon(),
    )
    .unwrap();
    db.execute("INSERT INTO t (name) VALUES ('a')", &[], soon())
        .unwrap();

    let err = db
        .execute("INSERT INTO t (name) VALUES ('a')", &[], soon())
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::Constraint(m) if m.contains("UNIQUE")),
        "{err:?}"
    );
    let err = db
        .execute("INSERT INTO t (name) VALUES (NULL)", &[], soon())
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::Constraint(m) if m.contains("NOT NULL")),
        "{err:?}"
    );

    let err = db.query("SELEC 1", &[], soon()).unwrap_err();
    assert!(
        matches!(&err, SqlError::InvalidStatement(m) if m.contains("syntax error")),
        "{err:?}"
    );
    let err = db.query("SELECT * FROM nowhere", &[], soon()).unwrap_err();
    assert!(
        matches!(&err, SqlError::InvalidStatement(m) if m.contains("no such table")),
        "{err:?}"
    );
    let err = db
        .query("SELECT missing_column FROM t", &[], soon())
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::InvalidStatement(m) if m.contains("no such column")),
        "{err:?}"
    );

    let err = db
        .query("SELECT ?1, ?2", &[SqlValue::Integer(1)], soon())
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::InvalidStatement(m) if m == "the statement has 2 parameters but 1 value was given"),
        "{err:?}"
    );
    let err = db
        .execute("DELETE FROM t", &[SqlValue::Null], soon())
        .unwrap_err();
    assert!(matches!(err, SqlError::InvalidStatement(_)), "{err:?}");

    let err = db.query("", &[], soon()).unwrap_err();
    assert!(matches!(err, SqlError::InvalidStatement(_)), "{err:?}");
}

pub(super) fn several_statements_in_one_call_are_refused(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute("CREATE TABLE t (v INTEGER)", &[], soon())
        .unwrap();
    let err = db
        .execute("INSERT INTO t VALUES (1); DELETE FROM t", &[], soon())
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::InvalidStatement(m) if m.contains("one statement")),
        "{err:?}"
    );
    assert_eq!(count(db.as_ref(), "t"), 0);
    // Trailing semicolons, whitespace and comments are not another statement.
    db.execute(
        "INSERT INTO t VALUES (1); ; -- done\n /* really */ ",
        &[],
        soon(),
    )
    .unwrap();
    assert_eq!(count(db.as_ref(), "t"), 1);
}

pub(super) fn oversized_values_and_results_are_refused(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute("CREATE TABLE blobs (data BLOB)", &[], soon())
        .unwrap();
    let err = db
        .execute(
            "INSERT INTO blobs VALUES (?)",
            &[SqlValue::Blob(vec![0; MAX_SQL_VALUE_BYTES + 1])],
            soon(),
        )
        .unwrap_err();
    assert!(matches!(err, SqlError::TooLarge(_)), "{err:?}");
    // A value computed inside SQLite hits SQLITE_LIMIT_LENGTH.
    let err = db
        .query(
            &format!("SELECT zeroblob({})", MAX_SQL_VALUE_BYTES + 1),
            &[],
            soon(),
        )
        .unwrap_err();
    assert!(matches!(err, SqlError::TooLarge(_)), "{err:?}");

    // Three 12 MiB rows: each fits, together they pass the result limit.
    let row = 12 << 20;
    assert!(3 * row > MAX_RESULT_BYTES);
    let err = db
        .query(
            &format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT zeroblob({row}) FROM n"
            ),
            &[],
            soon(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::TooLarge(m) if m.contains("result")),
        "{err:?}"
    );
}

pub(super) fn a_failing_batch_names_its_statement_and_applies_nothing(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT UNIQUE)",
        &[],
        soon(),
    )
    .unwrap();
    let err = db
        .batch(
            &[
                statement("INSERT INTO accounts (owner) VALUES (?)", vec![text("ann")]),
                statement("INSERT INTO accounts (owner) VALUES (?)", vec![text("bob")]),
                statement("INSERT INTO accounts (owner) VALUES (?)", vec![text("ann")]),
            ],
            soon(),
        )
        .unwrap_err();
    assert!(matches!(err, SqlError::Constraint(_)), "{err:?}");
    assert!(err.to_string().starts_with("statement 3: "), "{err}");
    assert_eq!(count(db.as_ref(), "accounts"), 0);

    // The connection is usable afterwards and a good batch applies whole.
    let changes = db
        .batch(
            &[
                statement("INSERT INTO accounts (owner) VALUES (?)", vec![text("ann")]),
                statement("UPDATE accounts SET owner = upper(owner)", vec![]),
            ],
            soon(),
        )
        .unwrap();
    assert_eq!(
        changes,
        [
            Changes {
                rows_affected: 1,
                last_insert_id: Some(1)
            },
            Changes {
                rows_affected: 1,
                last_insert_id: None
            }
        ]
    );
    assert_eq!(count(db.as_ref(), "accounts"), 1);
}

pub(super) fn batch_limits_and_errors_are_numbered(data: &dyn DataBackend) {
    let db = db_of(data);
    let err = db
        .batch(
            &[statement("SELECT 1", vec![]), statement("BEGIN", vec![])],
            soon(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::NotPermitted(m) if m.starts_with("statement 2: ")),
        "{err:?}"
    );

    let many = vec![statement("SELECT 1", vec![]); MAX_BATCH_STATEMENTS + 1];
    assert!(matches!(
        db.batch(&many, soon()),
        Err(SqlError::TooLarge(_))
    ));
    assert_eq!(db.batch(&[], soon()).unwrap(), []);
}

pub(super) fn migrations_apply_once_in_order(data: &dyn DataBackend) {
    let db = db_of(data);
    let migrations = [
        migration(
            "0001_users.sql",
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);",
        ),
        migration(
            "0002_seed.sql",
            "INSERT INTO users (name) VALUES ('root');\nCREATE INDEX users_name ON users (name);",
        ),
    ];
    assert_eq!(
        db.migrate(&migrations).unwrap(),
        ["0001_users.sql", "0002_seed.sql"]
    );
    assert!(db.migrate(&migrations).unwrap().is_empty());
    assert_eq!(count(db.as_ref(), "users"), 1);

    let mut more = migrations.to_vec();
    more.push(migration(
        "0003_more.sql",
        "INSERT INTO users (name) VALUES ('two');",
    ));
    assert_eq!(db.migrate(&more).unwrap(), ["0003_more.sql"]);
    assert_eq!(count(db.as_ref(), "users"), 2);
}

pub(super) fn a_changed_migration_is_refused_before_anything_applies(data: &dyn DataBackend) {
    let db = db_of(data);
    db.migrate(&[migration("0001.sql", "CREATE TABLE a (v INTEGER);")])
        .unwrap();
    let err = db
        .migrate(&[
            migration("0001.sql", "CREATE TABLE a (v INTEGER, w INTEGER);"),
            migration("0002.sql", "CREATE TABLE b (v INTEGER);"),
        ])
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::MigrationChanged { name } if name == "0001.sql"),
        "{err:?}"
    );
    assert!(matches!(
        db.query("SELECT * FROM b", &[], soon()),
        Err(SqlError::InvalidStatement(_))
    ));
}

pub(super) fn a_failing_migration_leaves_no_partial_effect(data: &dyn DataBackend) {
    let db = db_of(data);
    let err = db
        .migrate(&[
            migration("0001.sql", "CREATE TABLE a (v INTEGER);"),
            migration(
                "0002.sql",
                "CREATE TABLE b (v INTEGER);\nINSERT INTO a VALUES (1);\nINSERT INTO nowhere VALUES (1);",
            ),
        ])
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::Migration { name, message } if name == "0002.sql" && message.contains("no such table")),
        "{err:?}"
    );
    assert!(err.to_string().contains("0002.sql"), "{err}");
    // The first migration stays applied; nothing of the second does.
    assert_eq!(count(db.as_ref(), "a"), 0);
    assert!(db.query("SELECT * FROM b", &[], soon()).is_err());

    // Fixed, it applies on the next run.
    let applied = db
        .migrate(&[
            migration("0001.sql", "CREATE TABLE a (v INTEGER);"),
            migration("0002.sql", "CREATE TABLE b (v INTEGER);"),
        ])
        .unwrap();
    assert_eq!(applied, ["0002.sql"]);
}

pub(super) fn migrations_cannot_escape_the_fence_either(data: &dyn DataBackend) {
    let db = db_of(data);
    let err = db
        .migrate(&[migration("0001.sql", "DELETE FROM _tessera_migrations;")])
        .unwrap_err();
    assert!(matches!(err, SqlError::Migration { .. }), "{err:?}");
    assert!(err.to_string().contains("reserved"), "{err}");
}

pub(super) fn the_authorizer_refuses_what_could_escape_the_service(data: &dyn DataBackend) {
    let db = db_of(data);
    let outside = outside_path("stolen.db");

    let message = refused(
        db.as_ref(),
        &format!("ATTACH '{}' AS other", outside.display()),
    );
    assert!(message.contains("ATTACH"), "{message}");
    for sql in ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s", "RELEASE s"] {
        let message = refused(db.as_ref(), sql);
        assert!(message.contains("batch"), "{sql}: {message}");
    }
    let message = refused(db.as_ref(), "PRAGMA journal_mode = DELETE");
    assert!(message.contains("journal_mode"), "{message}");
    refused(db.as_ref(), "PRAGMA writable_schema = ON");
    refused(db.as_ref(), "PRAGMA foreign_keys = OFF");
    refused(db.as_ref(), "SELECT load_extension('/tmp/evil')");

    let err = db
        .query("SELECT * FROM _tessera_kv", &[], soon())
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::NotPermitted(m) if m.contains("`_tessera_kv` is reserved")),
        "{err:?}"
    );
    refused(db.as_ref(), "DROP TABLE _tessera_kv");
    refused(db.as_ref(), "DELETE FROM _TESSERA_KV");
    refused(db.as_ref(), "CREATE TABLE _tessera_mine (v INTEGER)");
    refused(db.as_ref(), "ALTER TABLE _tessera_kv ADD COLUMN x");
    refused(db.as_ref(), "CREATE INDEX sneaky ON _tessera_kv (value)");
    refused(db.as_ref(), "CREATE TEMP TABLE scratch (v INTEGER)");

    // A view or trigger cannot launder access to Tessera's tables either.
    db.execute("CREATE TABLE t (v INTEGER)", &[], soon())
        .unwrap();
    refused(
        db.as_ref(),
        "CREATE TRIGGER leak AFTER INSERT ON _tessera_kv BEGIN DELETE FROM t; END",
    );
    // SQLite checks a view's or trigger's body when it is used, not when it is created:
    // every use passes the authorizer, so such objects are harmless but useless.
    db.execute("CREATE VIEW peek AS SELECT * FROM _tessera_kv", &[], soon())
        .unwrap();
    assert!(matches!(
        db.query("SELECT * FROM peek", &[], soon()),
        Err(SqlError::NotPermitted(_))
    ));
    db.execute(
        "CREATE TRIGGER wipe AFTER INSERT ON t BEGIN DELETE FROM _tessera_kv; END",
        &[],
        soon(),
    )
    .unwrap();
    assert!(matches!(
        db.execute("INSERT INTO t VALUES (1)", &[], soon()),
        Err(SqlError::NotPermitted(_))
    ));
    assert_eq!(count(db.as_ref(), "t"), 0);

    assert!(!outside.exists());
}

pub(super) fn vacuum_into_a_file_is_refused_and_creates_nothing(data: &dyn DataBackend) {
    let db = db_of(data);
    let target = outside_path("copy.db");
    let err = db
        .execute(&format!("VACUUM INTO '{}'", target.display()), &[], soon())
        .unwrap_err();
    assert!(matches!(err, SqlError::NotPermitted(_)), "{err:?}");
    assert!(err.to_string().contains("VACUUM"), "{err}");
    // Plain VACUUM attaches a scratch database too, so it is refused the same way.
    assert!(matches!(
        db.execute("VACUUM", &[], soon()),
        Err(SqlError::NotPermitted(_))
    ));
    assert!(!target.exists());
}

pub(super) fn introspection_pragmas_are_allowed(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)",
        &[],
        soon(),
    )
    .unwrap();
    let rows = db.query("PRAGMA table_info(t)", &[], soon()).unwrap();
    assert_eq!(rows.rows.len(), 2);
    let rows = db.query("PRAGMA integrity_check", &[], soon()).unwrap();
    assert_eq!(rows.rows, [[text("ok")]]);
    assert!(matches!(
        db.query("PRAGMA table_info(_tessera_kv)", &[], soon()),
        Err(SqlError::NotPermitted(_))
    ));
    // The schema is readable, which is how tools list a service's tables.
    let rows = db
        .query(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = 't'",
            &[],
            soon(),
        )
        .unwrap();
    assert_eq!(rows.rows, [[text("t")]]);
}

pub(super) fn guest_sql_does_not_see_kv_data_but_kv_still_works(data: &dyn DataBackend) {
    let service = data.open_service("shop", "web").unwrap();
    service.kv.set("default", "k", b"v").unwrap();
    assert!(
        service
            .sql
            .query("SELECT count(*) FROM _tessera_kv", &[], soon())
            .is_err()
    );
    // Refusals on the same connections leave the key-value store working.
    assert_eq!(service.kv.get("default", "k").unwrap().unwrap(), b"v");
    service.kv.set("default", "k2", b"v2").unwrap();
}

pub(super) fn a_runaway_query_stops_at_the_deadline_and_the_connection_recovers(
    data: &dyn DataBackend,
) {
    let db = db_of(data);
    let forever =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";

    let started = Instant::now();
    let err = db
        .query(forever, &[], started + Duration::from_millis(200))
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, SqlError::Timeout(m) if m.contains("exceeded the request deadline")),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // The same for a statement on the writer, inside a batch.
    db.execute("CREATE TABLE t (v INTEGER)", &[], soon())
        .unwrap();
    let started = Instant::now();
    let err = db
        .batch(
            &[
                statement("INSERT INTO t VALUES (1)", vec![]),
                statement(
                    "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n",
                    vec![],
                ),
            ],
            started + Duration::from_millis(200),
        )
        .unwrap_err();
    assert!(matches!(err, SqlError::Timeout(_)), "{err:?}");
    assert!(err.to_string().starts_with("statement 2: "), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Both kinds of connection work afterwards, with no stale deadline.
    let rows = db.query("SELECT 1 + 1", &[], soon()).unwrap();
    assert_eq!(rows.rows, [[SqlValue::Integer(2)]]);
    assert_eq!(count(db.as_ref(), "t"), 0);
    db.execute("INSERT INTO t VALUES (2)", &[], soon()).unwrap();
    assert_eq!(count(db.as_ref(), "t"), 1);

    let err = db.query("SELECT 1", &[], Instant::now()).unwrap_err();
    assert!(matches!(err, SqlError::Timeout(_)), "{err:?}");
}

pub(super) fn concurrent_readers_and_writers_see_committed_data(data: &dyn DataBackend) {
    let db = db_of(data);
    db.execute("CREATE TABLE t (v INTEGER)", &[], soon())
        .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let db = db.clone();
            scope.spawn(move || {
                for v in 0..50 {
                    db.execute("INSERT INTO t VALUES (?)", &[SqlValue::Integer(v)], soon())
                        .unwrap();
                }
            });
        }
        for _ in 0..6 {
            let db = db.clone();
            scope.spawn(move || {
                for _ in 0..50 {
                    db.query("SELECT count(*) FROM t", &[], soon()).unwrap();
                }
            });
        }
    });
    assert_eq!(count(db.as_ref(), "t"), 200);
}

pub(super) fn quick_queries_read_on_a_free_reader_and_give_up_what_they_should_not_run(
    data: &dyn DataBackend,
) {
    let db = db_of(data);
    db.execute("CREATE TABLE t (n INTEGER)", &[], soon())
        .unwrap();
    db.execute("INSERT INTO t VALUES (1), (2)", &[], soon())
        .unwrap();
    let budget = Duration::from_millis(50);
    // No reader has been opened yet: not tried.
    assert!(db.query_quick("SELECT n FROM t", &[], budget).is_none());
    db.query("SELECT n FROM t", &[], soon()).unwrap();

    let rows = db
        .query_quick("SELECT n FROM t ORDER BY n", &[], budget)
        .expect("a free reader answers a read")
        .unwrap();
    assert_eq!(rows.rows, [[SqlValue::Integer(1)], [SqlValue::Integer(2)]]);
    // Errors of the statement itself are answers too.
    let error = db.query_quick("SELECT nope FROM t", &[], budget).unwrap();
    assert!(error.is_err());

    // A statement that writes is left to `query`, and nothing was written.
    assert!(
        db.query_quick("INSERT INTO t VALUES (3) RETURNING n", &[], budget)
            .is_none()
    );
    assert_eq!(count(db.as_ref(), "t"), 2);

    // A long read is stopped at the budget and left to `query`.
    let long = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                SELECT count(*) FROM (SELECT x FROM c LIMIT 100000000)";
    let started = Instant::now();
    assert!(
        db.query_quick(long, &[], Duration::from_millis(5))
            .is_none()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
