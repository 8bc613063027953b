//! The service's own SQL database (`tessera:sql/sql@0.1.0`), with SQLite semantics.
//!
//! Parameters are [`Value`]s, most easily written with [`params!`](crate::params); columns of
//! a result are found by name with [`Rows::get`] or [`Row::get`].
//!
//! ```no_run
//! use tessera_guest::{params, sql};
//!
//! let changes = sql::execute(
//!     "INSERT INTO users (name, email) VALUES (?, ?)",
//!     &params!["Grace Hopper", "grace@example.com"],
//! )?;
//! let rows = sql::query("SELECT name FROM users WHERE id = ?", &params![changes.last_insert_id])?;
//! let name = rows.get(0, "name").and_then(sql::Value::as_text);
//! # let _ = name;
//! # Ok::<(), sql::Error>(())
//! ```

pub use crate::bindings::tessera::sql::sql::{
    Changes, Error, Rows, Statement, Value, batch, execute, query,
};

/// A list of [`Value`]s, each converted with `Value::from`: `params![42, "Ada", None::<i64>]`.
#[macro_export]
macro_rules! params {
    () => {
        ::std::vec::Vec::<$crate::sql::Value>::new()
    };
    ($($value:expr),+ $(,)?) => {
        ::std::vec![$($crate::sql::Value::from($value)),+]
    };
}

impl Value {
    /// Whether this is SQL `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The integer, if this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(value) => Some(*value),
            _ => None,
        }
    }

    /// The number as a float, if this is a real or an integer (SQLite mixes them freely).
    pub fn as_real(&self) -> Option<f64> {
        match self {
            Value::Real(value) => Some(*value),
            // Precision loss past 2^53 is what SQLite itself does when it converts.
            Value::Integer(value) => Some(*value as f64),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(value) => Some(value),
            _ => None,
        }
    }

    /// The bytes, if this is a blob.
    pub fn as_blob(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(value) => Some(value),
            _ => None,
        }
    }
}

/// Converts Rust values to SQL values: integers to `integer`, floats to `real`, strings to
/// `text`, bytes to `blob`, `bool` to 0 or 1 (as SQLite stores it) and `None` to `null`.
macro_rules! value_from {
    ($($ty:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$ty> for Value {
            fn from($v: $ty) -> Value {
                $e
            }
        })*
    };
}

value_from! {
    i64 => |v| Value::Integer(v),
    i32 => |v| Value::Integer(v.into()),
    u32 => |v| Value::Integer(v.into()),
    f64 => |v| Value::Real(v),
    f32 => |v| Value::Real(v.into()),
    bool => |v| Value::Integer(v.into()),
    &str => |v| Value::Text(v.to_string()),
    &String => |v| Value::Text(v.clone()),
    String => |v| Value::Text(v),
    &[u8] => |v| Value::Blob(v.to_vec()),
    Vec<u8> => |v| Value::Blob(v),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

impl Statement {
    /// A statement with its parameters, for [`batch`].
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }
}

impl Rows {
    /// The position of the column called `name`, if the result has one.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|column| column == name)
    }

    /// The value in row `row` (counting from 0) of the column called `column`.
    pub fn get(&self, row: usize, column: &str) -> Option<&Value> {
        self.rows.get(row)?.get(self.column(column)?)
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows in order, each able to look its values up by column name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }
}

/// One row of [`Rows`].
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl<'a> Row<'a> {
    /// The value of the column called `column`.
    pub fn get(&self, column: &str) -> Option<&'a Value> {
        let index = self.columns.iter().position(|name| name == column)?;
        self.values.get(index)
    }

    /// The values in column order.
    pub fn values(&self) -> &'a [Value] {
        self.values
    }
}

impl Error {
    /// The WIT case name, such as `constraint-violation`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidStatement(_) => "invalid-statement",
            Error::ConstraintViolation(_) => "constraint-violation",
            Error::NotPermitted(_) => "not-permitted",
            Error::TooLarge(_) => "too-large",
            Error::Timeout(_) => "timeout",
            Error::Io(_) => "io",
        }
    }

    /// What went wrong, for humans.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidStatement(message)
            | Error::ConstraintViolation(message)
            | Error::NotPermitted(message)
            | Error::TooLarge(message)
            | Error::Timeout(message)
            | Error::Io(message) => message,
        }
    }
}
