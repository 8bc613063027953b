//! The semantics of [`DataBackend`], [`KvStore`] and [`SqlDatabase`] as a test suite every
//! backend runs unchanged: the embedded SQLite files today, the cluster's replicated
//! databases later. A backend's test calls [`run`] with a function that hands each test a
//! fresh, empty backend; backend specifics (files, handles kept open, reopening) stay in the
//! backend's own tests.

mod kv;
mod sql;

use std::sync::Arc;

use crate::{DataBackend, KvStore, SqlDatabase};

/// One test of the suite.
pub struct Test {
    pub name: &'static str,
    /// `kv` or `sql`: which handle the test exercises.
    pub kind: &'static str,
    pub run: fn(&dyn DataBackend),
}

/// Runs every test of the suite in turn, each on a fresh, empty backend that `fresh`
/// creates and hands to the test. A failing test panics; the name printed last before the
/// panic is the failing test's.
pub fn run(fresh: impl Fn(&dyn Fn(&dyn DataBackend))) {
    run_only(&["kv", "sql"], fresh);
}

/// Like [`run`], only the tests of the given kinds (`kv`, `sql`): for a backend that
/// does not offer every handle yet.
pub fn run_only(kinds: &[&str], fresh: impl Fn(&dyn Fn(&dyn DataBackend))) {
    for test in TESTS.iter().filter(|t| kinds.contains(&t.kind)) {
        eprintln!("conformance: data: {}", test.name);
        fresh(&|backend| (test.run)(backend));
    }
}

/// The key-value store of service `web` of app `shop`.
fn kv_of(data: &dyn DataBackend) -> Arc<dyn KvStore> {
    data.open_service("shop", "web").unwrap().kv
}

/// The SQL database of service `web` of app `shop`.
fn db_of(data: &dyn DataBackend) -> Arc<dyn SqlDatabase> {
    data.open_service("shop", "web").unwrap().sql
}

macro_rules! tests {
    ($($module:ident :: $name:ident),* $(,)?) => {
        /// Every test of the suite, in the order [`run`] runs them.
        pub const TESTS: &[Test] = &[$(Test { name: stringify!($name), kind: stringify!($module), run: $module::$name }),*];
    };
}

tests![
    kv::set_get_exists_delete_round_trip,
    kv::buckets_are_separate_namespaces,
    kv::list_keys_pages_in_byte_order_with_cursors,
    kv::list_keys_orders_by_bytes_not_by_locale,
    kv::concurrent_increments_lose_no_update,
    kv::increment_starts_from_zero_and_accepts_negative_deltas,
    kv::increment_of_a_non_integer_value_fails_and_keeps_the_value,
    kv::increment_overflow_fails_and_keeps_the_value,
    kv::competing_swaps_with_the_same_version_have_exactly_one_winner,
    kv::swap_with_none_requires_the_key_to_be_absent,
    kv::a_deleted_and_recreated_key_does_not_match_its_old_version,
    kv::every_write_changes_the_version,
    kv::oversized_keys_and_values_get_clear_errors,
    kv::batch_operations_read_write_and_delete_several_keys,
    kv::set_many_with_one_bad_entry_writes_nothing,
    kv::batches_over_the_key_limit_are_refused,
    kv::services_of_one_app_do_not_see_each_others_keys,
    sql::typed_values_round_trip,
    sql::execute_reports_rows_affected_and_only_its_own_insert_id,
    sql::query_with_returning_runs_on_the_writer,
    sql::errors_fall_into_the_right_cases,
    sql::several_statements_in_one_call_are_refused,
    sql::oversized_values_and_results_are_refused,
    sql::a_failing_batch_names_its_statement_and_applies_nothing,
    sql::batch_limits_and_errors_are_numbered,
    sql::migrations_apply_once_in_order,
    sql::a_changed_migration_is_refused_before_anything_applies,
    sql::a_failing_migration_leaves_no_partial_effect,
    sql::migrations_cannot_escape_the_fence_either,
    sql::the_authorizer_refuses_what_could_escape_the_service,
    sql::introspection_pragmas_are_allowed,
    sql::vacuum_into_a_file_is_refused_and_creates_nothing,
    sql::guest_sql_does_not_see_kv_data_but_kv_still_works,
    sql::a_runaway_query_stops_at_the_deadline_and_the_connection_recovers,
    sql::concurrent_readers_and_writers_see_committed_data,
    sql::quick_queries_read_on_a_free_reader_and_give_up_what_they_should_not_run,
];
