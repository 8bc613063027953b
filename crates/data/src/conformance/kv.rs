//! The key-value store's part of the suite: values, buckets, listing, counters,
//! compare-and-swap, batches and limits.

use std::sync::Arc;

use super::kv_of;
use crate::{DataBackend, KvError, LIST_PAGE, MAX_BATCH_KEYS, MAX_KEY_BYTES, MAX_VALUE_BYTES};

pub(super) fn set_get_exists_delete_round_trip(data: &dyn DataBackend) {
    let kv = kv_of(data);
    assert_eq!(kv.get("default", "a").unwrap(), None);
    assert!(!kv.exists("default", "a").unwrap());

    kv.set("default", "a", b"one").unwrap();
    assert_eq!(
        kv.get("default", "a").unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert!(kv.exists("default", "a").unwrap());

    kv.set("default", "a", b"two").unwrap();
    assert_eq!(
        kv.get("default", "a").unwrap().as_deref(),
        Some(&b"two"[..])
    );

    // An empty value is a value, not an absent key.
    kv.set("default", "empty", b"").unwrap();
    assert_eq!(kv.get("default", "empty").unwrap(), Some(Vec::new()));

    kv.delete("default", "a").unwrap();
    assert_eq!(kv.get("default", "a").unwrap(), None);
    assert!(!kv.exists("default", "a").unwrap());
    // Deleting an absent key is not an error.
    kv.delete("default", "a").unwrap();
}

pub(super) fn buckets_are_separate_namespaces(data: &dyn DataBackend) {
    let kv = kv_of(data);
    kv.set("default", "k", b"d").unwrap();
    kv.set("sessions", "k", b"s").unwrap();
    assert_eq!(kv.get("default", "k").unwrap().unwrap(), b"d");
    assert_eq!(kv.get("sessions", "k").unwrap().unwrap(), b"s");
    kv.delete("sessions", "k").unwrap();
    assert_eq!(kv.get("default", "k").unwrap().unwrap(), b"d");
}

pub(super) fn list_keys_pages_in_byte_order_with_cursors(data: &dyn DataBackend) {
    let kv = kv_of(data);
    let total = LIST_PAGE * 2 + 37;
    let entries: Vec<(String, Vec<u8>)> = (0..total)
        .map(|i| (format!("key-{i:05}"), i.to_string().into_bytes()))
        .collect();
    for chunk in entries.chunks(MAX_BATCH_KEYS) {
        kv.set_many("default", chunk).unwrap();
    }
    kv.set("other", "key-zzz", b"not listed").unwrap();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let (keys, next) = kv.list_keys("default", cursor.as_deref()).unwrap();
        pages += 1;
        assert!(keys.len() <= LIST_PAGE);
        if next.is_some() {
            assert_eq!(keys.len(), LIST_PAGE);
            assert_eq!(next.as_ref(), keys.last());
        }
        seen.extend(keys);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = entries.into_iter().map(|(k, _)| k).collect();
    assert_eq!(seen, expected);
}

pub(super) fn list_keys_orders_by_bytes_not_by_locale(data: &dyn DataBackend) {
    let kv = kv_of(data);
    for key in ["b", "a", "B", "é", "aa"] {
        kv.set("default", key, b"x").unwrap();
    }
    let (keys, cursor) = kv.list_keys("default", None).unwrap();
    assert_eq!(keys, ["B", "a", "aa", "b", "é"]);
    assert_eq!(cursor, None);
    let (keys, _) = kv.list_keys("default", Some("aa")).unwrap();
    assert_eq!(keys, ["b", "é"]);
}

pub(super) fn concurrent_increments_lose_no_update(data: &dyn DataBackend) {
    let kv = kv_of(data);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let kv = Arc::clone(&kv);
            scope.spawn(move || {
                for _ in 0..500 {
                    kv.increment("default", "counter", 1).unwrap();
                }
            });
        }
    });
    assert_eq!(kv.increment("default", "counter", 0).unwrap(), 4000);
    // Counters are stored as decimal text, so a plain get reads them.
    assert_eq!(kv.get("default", "counter").unwrap().unwrap(), b"4000");
}

pub(super) fn increment_starts_from_zero_and_accepts_negative_deltas(data: &dyn DataBackend) {
    let kv = kv_of(data);
    assert_eq!(kv.increment("default", "n", 5).unwrap(), 5);
    assert_eq!(kv.increment("default", "n", -7).unwrap(), -2);
    kv.set("default", "m", b"41").unwrap();
    assert_eq!(kv.increment("default", "m", 1).unwrap(), 42);
}

pub(super) fn increment_of_a_non_integer_value_fails_and_keeps_the_value(data: &dyn DataBackend) {
    let kv = kv_of(data);
    kv.set("default", "name", b"alice").unwrap();
    let err = kv.increment("default", "name", 1).unwrap_err();
    assert!(matches!(err, KvError::NotAnInteger(_)), "{err:?}");
    assert!(err.to_string().contains("`name`"), "{err}");
    assert_eq!(kv.get("default", "name").unwrap().unwrap(), b"alice");

    kv.set("default", "spaced", b" 1").unwrap();
    assert!(matches!(
        kv.increment("default", "spaced", 1),
        Err(KvError::NotAnInteger(_))
    ));
}

pub(super) fn increment_overflow_fails_and_keeps_the_value(data: &dyn DataBackend) {
    let kv = kv_of(data);
    kv.set("default", "max", i64::MAX.to_string().as_bytes())
        .unwrap();
    let err = kv.increment("default", "max", 1).unwrap_err();
    assert!(matches!(err, KvError::NotAnInteger(_)), "{err:?}");
    assert!(err.to_string().contains("overflow"), "{err}");
    assert_eq!(
        kv.get("default", "max").unwrap().unwrap(),
        i64::MAX.to_string().into_bytes()
    );
}

pub(super) fn competing_swaps_with_the_same_version_have_exactly_one_winner(
    data: &dyn DataBackend,
) {
    let kv = kv_of(data);
    kv.set("default", "doc", b"v0").unwrap();
    let (_, version) = kv.get_versioned("default", "doc").unwrap().unwrap();

    let wins: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let kv = Arc::clone(&kv);
                scope.spawn(move || {
                    let value = format!("writer {i}");
                    kv.compare_and_swap("default", "doc", Some(version), value.as_bytes())
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(wins.iter().filter(|&&won| won).count(), 1, "{wins:?}");
    let winner = wins.iter().position(|&won| won).unwrap();
    let (value, new_version) = kv.get_versioned("default", "doc").unwrap().unwrap();
    assert_eq!(value, format!("writer {winner}").into_bytes());
    assert_ne!(new_version, version);
}

pub(super) fn swap_with_none_requires_the_key_to_be_absent(data: &dyn DataBackend) {
    let kv = kv_of(data);
    assert!(
        kv.compare_and_swap("default", "new", None, b"first")
            .unwrap()
    );
    assert_eq!(kv.get("default", "new").unwrap().unwrap(), b"first");
    // Now the key exists, so a second create-if-absent loses.
    assert!(
        !kv.compare_and_swap("default", "new", None, b"second")
            .unwrap()
    );
    assert_eq!(kv.get("default", "new").unwrap().unwrap(), b"first");
}

pub(super) fn a_deleted_and_recreated_key_does_not_match_its_old_version(data: &dyn DataBackend) {
    let kv = kv_of(data);
    kv.set("default", "k", b"same").unwrap();
    let (_, old) = kv.get_versioned("default", "k").unwrap().unwrap();
    kv.delete("default", "k").unwrap();
    kv.set("default", "k", b"same").unwrap();
    assert!(
        !kv.compare_and_swap("default", "k", Some(old), b"stale")
            .unwrap()
    );
    // Swapping with an expected version on an absent key fails too.
    kv.delete("default", "k").unwrap();
    assert!(
        !kv.compare_and_swap("default", "k", Some(old), b"stale")
            .unwrap()
    );
    assert_eq!(kv.get("default", "k").unwrap(), None);
}

pub(super) fn every_write_changes_the_version(data: &dyn DataBackend) {
    let kv = kv_of(data);
    kv.set("default", "k", b"a").unwrap();
    let (_, v1) = kv.get_versioned("default", "k").unwrap().unwrap();
    kv.set("default", "k", b"a").unwrap();
    let (_, v2) = kv.get_versioned("default", "k").unwrap().unwrap();
    kv.increment("default", "n", 1).unwrap();
    kv.set("default", "k", b"b").unwrap();
    let (_, v3) = kv.get_versioned("default", "k").unwrap().unwrap();
    assert!(v1 < v2 && v2 < v3, "{v1} {v2} {v3}");
    assert!(kv.compare_and_swap("default", "k", Some(v3), b"c").unwrap());
}

pub(super) fn oversized_keys_and_values_get_clear_errors(data: &dyn DataBackend) {
    let kv = kv_of(data);
    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    let err = kv.set("default", &long_key, b"v").unwrap_err();
    assert!(matches!(err, KvError::InvalidKey(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "key is 1025 bytes long, more than the limit of 1024 bytes"
    );
    assert!(matches!(
        kv.get("default", &long_key),
        Err(KvError::InvalidKey(_))
    ));
    assert!(matches!(kv.get("default", ""), Err(KvError::InvalidKey(_))));

    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    let err = kv.set("default", "big", &big).unwrap_err();
    assert!(matches!(err, KvError::TooLarge(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "value of key `big` is 1048577 bytes, more than the limit of 1048576 bytes"
    );
    assert!(matches!(
        kv.compare_and_swap("default", "big", None, &big),
        Err(KvError::TooLarge(_))
    ));
    assert_eq!(kv.get("default", "big").unwrap(), None);

    // Exactly at the limits is fine.
    let key = "k".repeat(MAX_KEY_BYTES);
    kv.set("default", &key, &big[..MAX_VALUE_BYTES]).unwrap();
    assert_eq!(
        kv.get("default", &key).unwrap().unwrap().len(),
        MAX_VALUE_BYTES
    );
}

pub(super) fn batch_operations_read_write_and_delete_several_keys(data: &dyn DataBackend) {
    let kv = kv_of(data);
    let entries = vec![
        ("a".to_owned(), b"1".to_vec()),
        ("b".to_owned(), b"2".to_vec()),
        ("c".to_owned(), b"3".to_vec()),
    ];
    kv.set_many("default", &entries).unwrap();
    let keys: Vec<String> = ["c", "missing", "a"].map(String::from).to_vec();
    assert_eq!(
        kv.get_many("default", &keys).unwrap(),
        [Some(b"3".to_vec()), None, Some(b"1".to_vec())]
    );

    kv.delete_many(
        "default",
        &["a".to_owned(), "c".to_owned(), "nope".to_owned()],
    )
    .unwrap();
    let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    assert_eq!(
        kv.get_many("default", &all).unwrap(),
        [None, Some(b"2".to_vec()), None]
    );
}

pub(super) fn set_many_with_one_bad_entry_writes_nothing(data: &dyn DataBackend) {
    let kv = kv_of(data);
    let entries = vec![
        ("ok".to_owned(), b"1".to_vec()),
        ("big".to_owned(), vec![0; MAX_VALUE_BYTES + 1]),
    ];
    assert!(matches!(
        kv.set_many("default", &entries),
        Err(KvError::TooLarge(_))
    ));
    assert_eq!(kv.get("default", "ok").unwrap(), None);
}

pub(super) fn batches_over_the_key_limit_are_refused(data: &dyn DataBackend) {
    let kv = kv_of(data);
    let keys: Vec<String> = (0..=MAX_BATCH_KEYS).map(|i| format!("k{i}")).collect();
    let err = kv.get_many("default", &keys).unwrap_err();
    assert!(matches!(err, KvError::TooLarge(_)), "{err:?}");
    assert!(err.to_string().contains("1001 keys"), "{err}");
    assert!(matches!(
        kv.delete_many("default", &keys),
        Err(KvError::TooLarge(_))
    ));
}

pub(super) fn services_of_one_app_do_not_see_each_others_keys(data: &dyn DataBackend) {
    let web = data.open_service("shop", "web").unwrap().kv;
    let api = data.open_service("shop", "api").unwrap().kv;
    web.set("default", "secret", b"web's").unwrap();
    assert_eq!(api.get("default", "secret").unwrap(), None);
    api.set("default", "secret", b"api's").unwrap();
    assert_eq!(web.get("default", "secret").unwrap().unwrap(), b"web's");
    assert_eq!(api.get("default", "secret").unwrap().unwrap(), b"api's");
    assert_eq!(api.list_keys("default", None).unwrap().0, ["secret"]);
}
