//! What guest SQL may do: the policy behind the SQLite authorizer installed on every
//! connection. SQLite consults it while preparing each statement (and each statement of
//! a trigger or view the statement reaches), so a refused statement never runs.

use rusqlite::hooks::AuthAction;

/// Tables, indexes, triggers and views whose names start with this belong to Tessera.
pub(super) const RESERVED_PREFIX: &str = "_tessera";

/// Pragmas that only describe the schema or check the database; with any argument they
/// read and never change anything.
const INTROSPECTION_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// The authorizer's answer for one action.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    Allow,
    /// Let the statement run but leave this part out (SQLite's `SQLITE_IGNORE`).
    Ignore,
    /// Refuse the statement; the reason is shown to the guest.
    Deny(String),
}

/// Whether an action changes the schema: such statements are replicated as their text,
/// since a changeset of rows does not carry them.
pub(super) fn changes_schema(action: &AuthAction<'_>) -> bool {
    use AuthAction as A;
    matches!(
        action,
        A::CreateTable { .. }
            | A::DropTable { .. }
            | A::AlterTable { .. }
            | A::CreateIndex { .. }
            | A::DropIndex { .. }
            | A::CreateTrigger { .. }
            | A::DropTrigger { .. }
            | A::CreateView { .. }
            | A::DropView { .. }
            | A::CreateVtable { .. }
            | A::DropVtable { .. }
    )
}

/// Decides one action of guest SQL.
pub(super) fn decide(action: &AuthAction<'_>) -> Decision {
    use AuthAction as A;
    match *action {
        A::Attach { .. } | A::Detach { .. } => Decision::Deny(
            "ATTACH, DETACH and VACUUM (which attaches a scratch database) are not permitted: a service reaches only its own database"
                .to_owned(),
        ),
        A::Transaction { .. } | A::Savepoint { .. } => Decision::Deny(
            "BEGIN, COMMIT, ROLLBACK and SAVEPOINT are not permitted: use batch to run statements in one transaction"
                .to_owned(),
        ),
        A::Pragma {
            pragma_name,
            pragma_value,
        } => pragma(pragma_name, pragma_value),
        A::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            Decision::Deny("load_extension is not permitted".to_owned())
        }
        // Temporary objects live in one connection, and calls of a service are served by
        // several, so a temporary table would appear and vanish at random; the cluster
        // backend's pooled connections would behave the same way.
        A::CreateTempTable { .. }
        | A::CreateTempIndex { .. }
        | A::CreateTempTrigger { .. }
        | A::CreateTempView { .. }
        | A::DropTempTable { .. }
        | A::DropTempIndex { .. }
        | A::DropTempTrigger { .. }
        | A::DropTempView { .. } => Decision::Deny(
            "temporary tables, indexes, triggers and views are not permitted: calls may run on different connections"
                .to_owned(),
        ),
        // ANALYZE without arguments visits every table; skipping Tessera's keeps it usable.
        A::Analyze { table_name } if reserved(table_name) => Decision::Ignore,
        A::Read { table_name, .. }
        | A::Insert { table_name }
        | A::Update { table_name, .. }
        | A::Delete { table_name }
        | A::CreateTable { table_name }
        | A::DropTable { table_name }
        | A::AlterTable { table_name, .. }
        | A::CreateVtable { table_name, .. }
        | A::DropVtable { table_name, .. } => check_names(&[table_name]),
        A::CreateIndex {
            index_name,
            table_name,
        }
        | A::DropIndex {
            index_name,
            table_name,
        } => check_names(&[index_name, table_name]),
        A::CreateTrigger {
            trigger_name,
            table_name,
        }
        | A::DropTrigger {
            trigger_name,
            table_name,
        } => check_names(&[trigger_name, table_name]),
        A::CreateView { view_name } | A::DropView { view_name } => check_names(&[view_name]),
        A::Reindex { index_name } => check_names(&[index_name]),
        // An action this SQLite knows but rusqlite does not: refuse what we cannot judge.
        A::Unknown { code, .. } => Decision::Deny(format!("SQL action {code} is not permitted")),
        _ => Decision::Allow,
    }
}

fn pragma(name: &str, value: Option<&str>) -> Decision {
    let allowed = INTROSPECTION_PRAGMAS
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p));
    if !allowed {
        return Decision::Deny(format!(
            "PRAGMA {name} is not permitted: only the read-only pragmas {} are",
            INTROSPECTION_PRAGMAS.join(", ")
        ));
    }
    // The argument of these pragmas names a table or an index.
    match value {
        Some(value) => {
            check_names(&[value.trim_matches(|c| matches!(c, '"' | '\'' | '`' | '[' | ']'))])
        }
        None => Decision::Allow,
    }
}

fn check_names(names: &[&str]) -> Decision {
    match names.iter().find(|name| reserved(name)) {
        Some(name) => Decision::Deny(format!(
            "`{name}` is reserved for Tessera: names starting with `{RESERVED_PREFIX}` cannot be used"
        )),
        None => Decision::Allow,
    }
}

/// Whether a name is in Tessera's reserved namespace; SQLite names are case-insensitive.
pub(super) fn reserved(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name.as_bytes()[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_match_case_insensitively() {
        assert!(reserved("_tessera_kv"));
        assert!(reserved("_TESSERA_migrations"));
        assert!(!reserved("tessera"));
        assert!(!reserved("_tess"));
        assert!(!reserved("ünïcode"));
    }

    #[test]
    fn introspection_pragmas_pass_but_not_on_reserved_tables() {
        let table_info = |value| AuthAction::Pragma {
            pragma_name: "TABLE_INFO",
            pragma_value: value,
        };
        assert_eq!(decide(&table_info(Some("users"))), Decision::Allow);
        assert!(matches!(
            decide(&table_info(Some("\"_tessera_kv\""))),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide(&AuthAction::Pragma {
                pragma_name: "journal_mode",
                pragma_value: None
            }),
            Decision::Deny(_)
        ));
    }
}
