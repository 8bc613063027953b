//! The size and validation rules of service data, shared by every backend so that a
//! guest sees the same limits on a laptop and in a cluster. The runtime may also call
//! these to refuse a request before it reaches a backend.

use crate::{
    KvError, MAX_BATCH_KEYS, MAX_BATCH_STATEMENTS, MAX_KEY_BYTES, MAX_RESULT_BYTES, MAX_SQL_BYTES,
    MAX_SQL_VALUE_BYTES, MAX_VALUE_BYTES, SqlError, SqlValue,
};

/// A key must be non-empty and at most [`MAX_KEY_BYTES`] bytes of UTF-8.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidKey("key must not be empty".to_owned()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::InvalidKey(format!(
            "key is {} bytes long, more than the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// A value must be at most [`MAX_VALUE_BYTES`] bytes.
pub fn check_value(key: &str, value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::TooLarge(format!(
            "value of key `{}` is {} bytes, more than the limit of {MAX_VALUE_BYTES} bytes",
            shorten(key),
            value.len()
        )));
    }
    Ok(())
}

/// A batch call may name at most [`MAX_BATCH_KEYS`] keys.
pub fn check_batch_keys(count: usize) -> Result<(), KvError> {
    if count > MAX_BATCH_KEYS {
        return Err(KvError::TooLarge(format!(
            "batch names {count} keys, more than the limit of {MAX_BATCH_KEYS}"
        )));
    }
    Ok(())
}

/// Checks every key of a batch call.
pub fn check_keys(keys: &[String]) -> Result<(), KvError> {
    check_batch_keys(keys.len())?;
    keys.iter().try_for_each(|key| check_key(key))
}

/// Checks every key and value of a `set_many` call.
pub fn check_entries(entries: &[(String, Vec<u8>)]) -> Result<(), KvError> {
    check_batch_keys(entries.len())?;
    entries.iter().try_for_each(|(key, value)| {
        check_key(key)?;
        check_value(key, value)
    })
}

/// A statement's text must be at most [`MAX_SQL_BYTES`], and each text or blob
/// parameter at most [`MAX_SQL_VALUE_BYTES`].
pub fn check_statement(sql: &str, params: &[SqlValue]) -> Result<(), SqlError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(SqlError::TooLarge(format!(
            "statement is {} bytes long, more than the limit of {MAX_SQL_BYTES} bytes",
            sql.len()
        )));
    }
    for (index, param) in params.iter().enumerate() {
        let size = match param {
            SqlValue::Text(text) => text.len(),
            SqlValue::Blob(blob) => blob.len(),
            SqlValue::Null | SqlValue::Integer(_) | SqlValue::Real(_) => continue,
        };
        if size > MAX_SQL_VALUE_BYTES {
            return Err(SqlError::TooLarge(format!(
                "parameter {} is {size} bytes, more than the limit of {MAX_SQL_VALUE_BYTES} bytes",
                index + 1
            )));
        }
    }
    Ok(())
}

/// A batch may hold at most [`MAX_BATCH_STATEMENTS`] statements.
pub fn check_batch_statements(count: usize) -> Result<(), SqlError> {
    if count > MAX_BATCH_STATEMENTS {
        return Err(SqlError::TooLarge(format!(
            "batch holds {count} statements, more than the limit of {MAX_BATCH_STATEMENTS}"
        )));
    }
    Ok(())
}

/// Counts the approximate size of a query's result while its rows are read, so that a
/// backend can stop before holding more than [`MAX_RESULT_BYTES`].
#[derive(Debug, Default)]
pub struct ResultBudget {
    used: usize,
}

impl ResultBudget {
    pub fn new() -> ResultBudget {
        ResultBudget::default()
    }

    /// Bytes counted so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Counts a column name.
    pub fn add_column(&mut self, name: &str) -> Result<(), SqlError> {
        self.add(name.len())
    }

    /// Counts a value: its bytes for text and blobs, 8 for numbers, 1 for null.
    pub fn add_value(&mut self, value: &SqlValue) -> Result<(), SqlError> {
        self.add(match value {
            SqlValue::Null => 1,
            SqlValue::Integer(_) | SqlValue::Real(_) => 8,
            SqlValue::Text(text) => text.len(),
            SqlValue::Blob(blob) => blob.len(),
        })
    }

    fn add(&mut self, bytes: usize) -> Result<(), SqlError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > MAX_RESULT_BYTES {
            return Err(SqlError::TooLarge(format!(
                "query result exceeds the limit of {MAX_RESULT_BYTES} bytes; select fewer rows or columns"
            )));
        }
        Ok(())
    }
}

/// An app or service name used as a path component or namespace. Callers validate names
/// far more strictly (lowercase DNS labels); this is the last line of defence against a
/// name that would leave its directory or schema.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name must not be empty"));
    }
    if name.contains(['/', '\\', '\0']) || name.contains("..") || name == "." {
        return Err(format!("{kind} name `{name}` is not a plain name"));
    }
    Ok(())
}

/// A key cut down for an error message: keys may be 1 KiB, messages should not be.
fn shorten(key: &str) -> String {
    const SHOWN: usize = 64;
    if key.len() <= SHOWN {
        return key.to_owned();
    }
    let mut end = SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

/// What `increment` stores after adding `delta` to a key's value: the value must be a
/// counter as `increment` writes it (decimal ASCII, optionally signed, nothing else; an
/// absent key counts as 0) and the sum must fit 64 bits.
pub fn next_counter(key: &str, current: Option<&[u8]>, delta: i64) -> Result<i64, KvError> {
    let current = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| {
                KvError::NotAnInteger(format!(
                    "the value of key `{key}` is not a decimal integer, so it cannot be incremented"
                ))
            })?,
    };
    current.checked_add(delta).ok_or_else(|| {
        KvError::NotAnInteger(format!(
            "incrementing key `{key}` ({current}) by {delta} overflows a 64-bit integer"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_nonempty_and_at_most_the_limit() {
        assert!(check_key("a").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        let err = check_key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert!(matches!(err, KvError::InvalidKey(_)));
        assert!(err.to_string().contains("1025 bytes"), "{err}");
        assert!(matches!(check_key(""), Err(KvError::InvalidKey(_))));
    }

    #[test]
    fn names_that_could_leave_their_directory_are_refused() {
        assert!(check_name("app", "shop-1").is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b", "x..y"] {
            assert!(check_name("app", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn result_budget_stops_past_the_limit() {
        let mut budget = ResultBudget::new();
        let big = SqlValue::Blob(vec![0; MAX_RESULT_BYTES / 2]);
        budget.add_value(&big).unwrap();
        budget.add_value(&big).unwrap();
        let err = budget.add_value(&SqlValue::Null).unwrap_err();
        assert!(matches!(err, SqlError::TooLarge(_)));
    }
}
