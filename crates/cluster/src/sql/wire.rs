//! SQL calls forwarded to a database's writer over NATS request/reply, and their answers,
//! as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera_data::{Changes, Migration, Rows, SqlError, SqlValue, Statement};

/// A call a node hands to the writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Call {
    Query {
        sql: String,
        params: Vec<Value>,
    },
    Execute {
        sql: String,
        params: Vec<Value>,
    },
    Batch {
        statements: Vec<(String, Vec<Value>)>,
    },
    Migrate {
        migrations: Vec<(String, String)>,
    },
}

/// A call with how long the caller will wait for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Forwarded {
    /// The same for every time one call is sent.
    pub id: String,
    pub budget_ms: u64,
    pub call: Call,
}

/// What a call returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
    },
    Changes(Vec<(u64, Option<i64>)>),
    Applied(Vec<String>),
    Error {
        kind: String,
        message: String,
        #[serde(default)]
        name: Option<String>,
    },
    /// The node asked is not the writer (any more): ask again.
    NotWriter,
}

pub(crate) fn value(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(n) => json!({ "i": n }),
        SqlValue::Real(x) => json!({ "r": x }),
        SqlValue::Text(s) => json!({ "t": s }),
        SqlValue::Blob(b) => json!({ "b": hex::encode(b) }),
    }
}

pub(crate) fn from_value(v: &Value) -> Result<SqlValue, String> {
    if v.is_null() {
        return Ok(SqlValue::Null);
    }
    let bad = || format!("not a SQL value: {v}");
    let object = v.as_object().ok_or_else(bad)?;
    let (kind, inner) = object.iter().next().ok_or_else(bad)?;
    Ok(match kind.as_str() {
        "i" => SqlValue::Integer(inner.as_i64().ok_or_else(bad)?),
        "r" => SqlValue::Real(inner.as_f64().ok_or_else(bad)?),
        "t" => SqlValue::Text(inner.as_str().ok_or_else(bad)?.to_owned()),
        "b" => SqlValue::Blob(hex::decode(inner.as_str().ok_or_else(bad)?).map_err(|_| bad())?),
        _ => return Err(bad()),
    })
}

pub(crate) fn values(params: &[SqlValue]) -> Vec<Value> {
    params.iter().map(value).collect()
}

pub(crate) fn from_values(params: &[Value]) -> Result<Vec<SqlValue>, SqlError> {
    params
        .iter()
        .map(from_value)
        .collect::<Result<_, _>>()
        .map_err(SqlError::Io)
}

impl Call {
    pub(crate) fn batch(statements: &[Statement]) -> Call {
        Call::Batch {
            statements: statements
                .iter()
                .map(|s| (s.sql.clone(), values(&s.params)))
                .collect(),
        }
    }

    pub(crate) fn migrate(migrations: &[Migration]) -> Call {
        Call::Migrate {
            migrations: migrations
                .iter()
                .map(|m| (m.name.clone(), m.sql.clone()))
                .collect(),
        }
    }
}

pub(crate) fn rows_answer(rows: Rows) -> Answer {
    Answer::Rows {
        columns: rows.columns,
        rows: rows
            .rows
            .iter()
            .map(|row| row.iter().map(value).collect())
            .collect(),
    }
}

pub(crate) fn changes_answer(changes: &[Changes]) -> Answer {
    Answer::Changes(
        changes
            .iter()
            .map(|c| (c.rows_affected, c.last_insert_id))
            .collect(),
    )
}

pub(crate) fn error_answer(error: SqlError) -> Answer {
    let (kind, name) = match &error {
        SqlError::InvalidStatement(_) => ("invalid_statement", None),
        SqlError::Constraint(_) => ("constraint", None),
        SqlError::NotPermitted(_) => ("not_permitted", None),
        SqlError::TooLarge(_) => ("too_large", None),
        SqlError::Timeout(_) => ("timeout", None),
        SqlError::Io(_) => ("io", None),
        SqlError::MigrationChanged { name } => ("migration_changed", Some(name.clone())),
        SqlError::Migration { name, .. } => ("migration", Some(name.clone())),
    };
    let message = match &error {
        SqlError::Migration { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Answer::Error {
        kind: kind.to_owned(),
        message,
        name,
    }
}

/// The error an answer carries, as the caller's own.
pub(crate) fn answer_error(kind: &str, message: String, name: Option<String>) -> SqlError {
    match kind {
        "invalid_statement" => SqlError::InvalidStatement(message),
        "constraint" => SqlError::Constraint(message),
        "not_permitted" => SqlError::NotPermitted(message),
        "too_large" => SqlError::TooLarge(message),
        "timeout" => SqlError::Timeout(message),
        "migration_changed" => SqlError::MigrationChanged {
            name: name.unwrap_or_default(),
        },
        "migration" => SqlError::Migration {
            name: name.unwrap_or_default(),
            message,
        },
        _ => SqlError::Io(message),
    }
}

pub(crate) fn into_rows(columns: Vec<String>, rows: Vec<Vec<Value>>) -> Result<Rows, SqlError> {
    Ok(Rows {
        columns,
        rows: rows
            .iter()
            .map(|row| from_values(row))
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) fn into_changes(changes: Vec<(u64, Option<i64>)>) -> Vec<Changes> {
    changes
        .into_iter()
        .map(|(rows_affected, last_insert_id)| Changes {
            rows_affected,
            last_insert_id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_errors_survive_the_wire() {
        for v in [
            SqlValue::Null,
            SqlValue::Integer(-7),
            SqlValue::Real(2.5),
            SqlValue::Text("ü".into()),
            SqlValue::Blob(vec![0, 255]),
        ] {
            assert_eq!(from_value(&value(&v)).unwrap(), v);
        }
        assert!(from_value(&json!({"x": 1})).is_err());
        let answer = error_answer(SqlError::Migration {
            name: "001.sql".into(),
            message: "boom".into(),
        });
        let Answer::Error {
            kind,
            message,
            name,
        } = answer
        else {
            panic!()
        };
        assert!(matches!(
            answer_error(&kind, message, name),
            SqlError::Migration { name, message } if name == "001.sql" && message == "boom"
        ));
    }
}
