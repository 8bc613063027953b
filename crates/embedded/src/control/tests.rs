//! Unit tests of the control store: what a deploy, a traffic change, a rollback or a
//! removal leaves behind, what is refused, and that it all survives a reopen.

use std::ops::Range;

use tempfile::TempDir;

use super::schema::SCHEMA_VERSION;
use super::{ARTIFACTS_DIR, ControlStore, DATABASE_FILE};
use tessera_store::{
    AppState, ChangeKind, DeployOptions, DeployOutcome, RevisionConfig, ScalingConfig,
    ServiceDeploy, ServiceState, StoreError,
};

fn store() -> (TempDir, ControlStore) {
    let dir = TempDir::new().expect("create temp dir");
    let store = ControlStore::open(dir.path()).expect("open store");
    (dir, store)
}

fn config(routes: &[&str]) -> RevisionConfig {
    RevisionConfig {
        routes: routes.iter().map(|r| r.to_string()).collect(),
        memory: 64 * 1024 * 1024,
        timeout_ms: 30_000,
        outbound: Vec::new(),
        callbacks: Vec::new(),
        env: Vec::new(),
        config: Vec::new(),
        buckets: Vec::new(),
        migrations: Vec::new(),
        cron: Vec::new(),
        subscriptions: Vec::new(),
        scaling: ScalingConfig::default(),
    }
}

/// Stores a distinct component for `tag` and returns its digest.
fn artifact(store: &ControlStore, tag: &str) -> String {
    store
        .put_artifact(format!("\0asm component {tag}").as_bytes())
        .expect("put artifact")
}

fn svc(name: &str, sha256: &str, routes: &[&str]) -> ServiceDeploy {
    ServiceDeploy {
        name: name.to_owned(),
        sha256: sha256.to_owned(),
        config: config(routes),
    }
}

fn deploy(store: &ControlStore, app: &str, services: &[ServiceDeploy]) -> DeployOutcome {
    store
        .deploy(app, services, &DeployOptions::default())
        .expect("deploy")
}

fn canary(share: u8) -> DeployOptions {
    DeployOptions {
        traffic: Some(share),
        ..DeployOptions::default()
    }
}

fn service(store: &ControlStore, app: &str, service: &str) -> ServiceState {
    let app = store.app(app).expect("read app").expect("app exists");
    app.services
        .into_iter()
        .find(|s| s.name == service)
        .expect("service exists")
}

fn ids(state: &ServiceState) -> Vec<u32> {
    state.revisions.iter().map(|r| r.id).collect()
}

fn names(app: &AppState) -> Vec<&str> {
    app.services.iter().map(|s| s.name.as_str()).collect()
}

fn outcome(
    app: &str,
    created: &[(&str, u32)],
    unchanged: &[&str],
    removed: &[&str],
) -> DeployOutcome {
    DeployOutcome {
        app: app.to_owned(),
        created: created.iter().map(|(s, id)| (s.to_string(), *id)).collect(),
        unchanged: unchanged.iter().map(|s| s.to_string()).collect(),
        removed: removed.iter().map(|s| s.to_string()).collect(),
    }
}

// --- Opening ---

#[test]
fn open_creates_the_data_directory_database_and_artifact_directory() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("nested").join("data");
    let store = ControlStore::open(&dir).expect("open");
    assert!(dir.join(DATABASE_FILE).is_file());
    assert!(dir.join(ARTIFACTS_DIR).is_dir());

    let conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    // Per-connection settings, so they are read from the store's own connection:
    // synchronous = FULL (2), so acknowledged changes survive a power cut, and foreign
    // keys enforced.
    let conn = store.conn();
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .unwrap();
    assert_eq!(synchronous, 2);
    let foreign_keys: bool = conn
        .pragma_query_value(None, "foreign_keys", |row| row.get(0))
        .unwrap();
    assert!(foreign_keys);
}

#[test]
fn database_written_by_a_newer_tessera_is_refused() {
    let tmp = TempDir::new().unwrap();
    drop(ControlStore::open(tmp.path()).unwrap());
    let conn = rusqlite::Connection::open(tmp.path().join(DATABASE_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);

    let err = ControlStore::open(tmp.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedSchema { found: 99, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

// --- Artifacts ---

#[test]
fn put_artifact_returns_the_sha256_and_stores_the_bytes() {
    let (_dir, store) = store();
    let sha = store.put_artifact(b"abc").unwrap();
    assert_eq!(
        sha,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(store.has_artifact(&sha));
    let path = store.artifact_path(&sha).unwrap();
    assert_eq!(
        path,
        store.dir().join(ARTIFACTS_DIR).join(format!("{sha}.wasm"))
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"abc");
}

#[test]
fn putting_the_same_bytes_again_is_idempotent_and_leaves_no_temporary_files() {
    let (_dir, store) = store();
    let first = store.put_artifact(b"component").unwrap();
    let second = store.put_artifact(b"component").unwrap();
    assert_eq!(first, second);
    let other = store.put_artifact(b"another component").unwrap();
    assert_ne!(first, other);

    let mut entries: Vec<String> = std::fs::read_dir(store.dir().join(ARTIFACTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    let mut expected = vec![format!("{first}.wasm"), format!("{other}.wasm")];
    expected.sort();
    assert_eq!(entries, expected);
}

#[test]
fn malformed_digests_never_form_a_path() {
    let (_dir, store) = store();
    let valid = store.put_artifact(b"abc").unwrap();
    for bad in [
        "",
        "../control.db",
        "../../../../etc/passwd",
        &valid.to_uppercase(),
        &valid[..63],
        &format!("{valid}0"),
        &format!("{}/", &valid[..63]),
    ] {
        assert!(!store.has_artifact(bad), "{bad:?}");
        let err = store.artifact_path(bad).unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidDigest(d) if d == bad),
            "{err:?}"
        );
    }
}

#[test]
fn missing_artifact_is_reported_by_its_digest() {
    let (_dir, store) = store();
    let missing = "0".repeat(64);
    assert!(!store.has_artifact(&missing));
    let err = store.artifact_path(&missing).unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchArtifact(d) if *d == missing),
        "{err:?}"
    );
}

// --- Deploy ---

#[test]
fn first_deploy_creates_revision_one_with_all_traffic() {
    let (_dir, store) = store();
    let web = artifact(&store, "web");
    let api = artifact(&store, "api");
    let mut api_deploy = svc("api", &api, &["/api"]);
    api_deploy.config.outbound = vec!["https://example.com".into()];
    api_deploy.config.env = vec![("B".into(), "2".into()), ("A".into(), "1".into())];

    let before = super::ops::now();
    let out = deploy(
        &store,
        "shop",
        &[svc("web", &web, &["/"]), api_deploy.clone()],
    );
    assert_eq!(out, outcome("shop", &[("api", 1), ("web", 1)], &[], &[]));

    let app = store.app("shop").unwrap().unwrap();
    assert_eq!(names(&app), ["api", "web"]);
    let api_state = &app.services[0];
    assert_eq!(api_state.traffic, [(1, 100)]);
    let primary = api_state.primary().unwrap();
    assert_eq!(primary.id, 1);
    assert_eq!(primary.sha256, api);
    // The config comes back exactly as given, env order included.
    assert_eq!(primary.config, api_deploy.config);
    assert!(primary.created_at >= before && primary.created_at <= super::ops::now());
}

#[test]
fn apps_are_listed_sorted_by_name() {
    let (_dir, store) = store();
    let sha = artifact(&store, "x");
    deploy(&store, "zeta", &[svc("web", &sha, &["/z"])]);
    deploy(&store, "alpha", &[svc("web", &sha, &["/a"])]);
    deploy(&store, "mid", &[svc("web", &sha, &["/m"])]);
    let apps = store.apps().unwrap();
    let listed: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(listed, ["alpha", "mid", "zeta"]);
    assert_eq!(store.app("nope").unwrap(), None);
}

#[test]
fn redeploying_the_same_component_and_config_changes_nothing() {
    let (_dir, store) = store();
    let sha = artifact(&store, "web");
    deploy(&store, "shop", &[svc("web", &sha, &["/"])]);
    let before = store.app("shop").unwrap();

    let out = deploy(&store, "shop", &[svc("web", &sha, &["/"])]);
    assert_eq!(out, outcome("shop", &[], &["web"], &[]));
    assert_eq!(store.app("shop").unwrap(), before);
}

#[test]
fn a_new_component_or_a_new_config_creates_a_revision_with_all_traffic() {
    let (_dir, store) = store();
    let v1 = artifact(&store, "v1");
    let v2 = artifact(&store, "v2");
    deploy(&store, "shop", &[svc("web", &v1, &["/"])]);

    let out = deploy(&store, "shop", &[svc("web", &v2, &["/"])]);
    assert_eq!(out.created, [("web".to_owned(), 2)]);
    let web = service(&store, "shop", "web");
    assert_eq!(web.traffic, [(2, 100)]);
    assert_eq!(web.primary().unwrap().sha256, v2);

    // Same component, different memory limit: still a new revision.
    let mut bigger = svc("web", &v2, &["/"]);
    bigger.config.memory *= 2;
    let out = deploy(&store, "shop", &[bigger.clone()]);
    assert_eq!(out.created, [("web".to_owned(), 3)]);
    let web = service(&store, "shop", "web");
    assert_eq!(ids(&web), [1, 2, 3]);
    assert_eq!(web.traffic, [(3, 100)]);
    assert_eq!(web.primary().unwrap().config, bigger.config);
}

#[test]
fn canary_splits_traffic_between_the_new_and_the_previous_primary_revision() {
    let (_dir, store) = store();
    let v1 = artifact(&store, "v1");
    let v2 = artifact(&store, "v2");
    let v3 = artifact(&store, "v3");
    let api = artifact(&store, "api");
    deploy(&store, "shop", &[svc("web", &v1, &["/"])]);

    // A service deployed for the first time gets everything, canary or not.
    let out = store
        .deploy(
            "shop",
            &[svc("web", &v2, &["/"]), svc("api", &api, &["/api"])],
            &canary(20),
        )
        .unwrap();
    assert_eq!(out.created, [("api".to_owned(), 1), ("web".to_owned(), 2)]);
    let web = service(&store, "shop", "web");
    assert_eq!(web.traffic, [(1, 80), (2, 20)]);
    assert_eq!(web.primary().unwrap().id, 1);
    assert_eq!(service(&store, "shop", "api").traffic, [(1, 100)]);

    // A second canary replaces the first: the primary keeps the rest and revision 2
    // stops receiving traffic.
    store
        .deploy(
            "shop",
            &[svc("web", &v3, &["/"]), svc("api", &api, &["/api"])],
            &canary(30),
        )
        .unwrap();
    let web = service(&store, "shop", "web");
    assert_eq!(web.traffic, [(1, 70), (3, 30)]);
    assert_eq!(ids(&web), [1, 2, 3]);
}

#[test]
fn canary_share_outside_1_to_99_is_refused() {
    let (_dir, store) = store();
    let v1 = artifact(&store, "v1");
    let v2 = artifact(&store, "v2");
    deploy(&store, "shop", &[svc("web", &v1, &["/"])]);
    for share in [0, 100, 200] {
        let err = store
            .deploy("shop", &[svc("web", &v2, &["/"])], &canary(share))
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidTraffic(_)), "{err:?}");
        assert!(err.to_string().contains(&share.to_string()), "{err}");
    }
    assert_eq!(ids(&service(&store, "shop", "web")), [1]);
}

#[test]
fn deploy_with_a_missing_artifact_changes_nothing() {
    let (_dir, store) = store();
    let v1 = artifact(&store, "v1");
    let v2 = artifact(&store, "v2");
    let missing = "f".repeat(64);
    deploy(&store, "shop", &[svc("web", &v1, &["/"])]);
    let before = store.apps().unwrap();

    let err = store
        .deploy(
            "shop",
            &[svc("web", &v2, &["/"]), svc("api", &missing, &["/api"])],
            &DeployOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchArtifact(d) if *d == missing),
        "{err:?}"
    );
    assert_eq!(store.apps().unwrap(), before);

    let err = store
        .deploy(
            "new",
            &[svc("web", &missing, &["/new"])],
            &DeployOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchArtifact(_)), "{err:?}");
    assert_eq!(store.app("new").unwrap(), None);

    let err = store
        .deploy(
            "new",
            &[svc("web", "../etc", &["/new"])],
            &DeployOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidDigest(_)), "{err:?}");
}

#[test]
fn route_claimed_by_another_app_is_refused_and_nothing_changes() {
    let (_dir, store) = store();
    let sha = artifact(&store, "x");
    deploy(&store, "shop", &[svc("web", &sha, &["/", "/api"])]);
    deploy(&store, "blog", &[svc("posts", &sha, &["/blog"])]);
    let before = store.apps().unwrap();

    let err = store
        .deploy(
            "blog",
            &[svc("posts", &sha, &["/blog", "/api"])],
            &DeployOptions::default(),
        )
        .unwrap_err();
    match &err {
        StoreError::RouteConflict {
            route,
            app,
            service,
        } => {
            assert_eq!(
                (route.as_str(), app.as_str(), service.as_str()),
                ("/api", "shop", "web")
            );
        }
        other => panic!("expected a route conflict, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "route `/api` is already claimed by service `web` of app `shop`"
    );
    assert_eq!(store.apps().unwrap(), before);

    // A new app is refused just the same and does not appear.
    let err = store
        .deploy(
            "other",
            &[svc("web", &sha, &["/"])],
            &DeployOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::RouteConflict { .. }), "{err:?}");
    assert_eq!(store.app("other").unwrap(), None);
}

#[test]
fn route_claimed_by_another_service_of_the_same_app_is_refused() {
    let (_dir, store) = store();
    let sha = artifact(&store, "x");
    deploy(
        &store,
        "shop",
        &[svc("web", &sha, &["/"]), svc("api", &sha, &["/api"])],
    );

    let only_api = DeployOptions {
        only: vec!["api".into()],
        ..DeployOptions::default()
    };
    let err = store
        .deploy("shop", &[svc("api", &sha, &["/api", "/"])], &only_api)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::RouteConflict { route, app, service }
            if route == "/" && app == "shop" && service == "web"),
        "{err:?}"
    );

    // Two services created by one deploy cannot share a route either.
    let err = store
        .deploy(
            "fresh",
            &[svc("a", &sha, &["/same"]), svc("b", &sha, &["/same"])],
            &DeployOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::RouteConflict { route, app, .. } if route == "/same" && app == "fresh"),
        "{err:?}"
    );
    assert_eq!(store.app("fresh").unwrap(), None);
}

#[test]
fn route_moved_between_services_in_one_deploy_is_not_a_conflict() {
    let (_dir, store) = store();
    let sha = artifact(&store, "x");
    deploy(
        &store,
        "shop",
        &[svc("old", &sha, &["/cart"]), svc("web", &sha, &["/"])],
    );

    // `/cart` moves from the removed `old` to a new `cart` service in the same deploy.
    let out = deploy(
        &store,
        "shop",
        &[svc("cart", &sha, &["/cart"]), svc("web", &sha, &["/"])],
    );
    assert_eq!(out, outcome("shop", &[("cart", 1)], &["web"], &["old"]));

    // And from one kept service to another: `web` gives up `/`, `home` takes it.
    let out = deploy(
        &store,
        "shop",
        &[
            svc("cart", &sha, &["/cart"]),
            svc("home", &sha, &["/"]),
            svc("web", &sha, &["/web"]),
        ],
    );
    assert_eq!(
        out,
        outcome("shop", &[("home", 1), ("web", 2)], &["cart"], &[])
    );
}

#[test]
fn whole_app_deploy_removes_services_it_no_longer_names() {
    let (_dir, store) = store();
    let sha = artifact(&store, "x");
    deploy(
        &store,
        "shop",
        &[
            svc("a", &sha, &["/a"]),
            svc("b", &sha, &["/b"]),
            svc("c", &sha, &["/c"]),
        ],
    );
    let out = deploy(&store, "shop", &[svc("b", &sha, &["/b"])]);
    assert_eq!(out, outcome("shop", &[], &["b"], &["a", "c"]));
    assert_eq!(names(&store.app("shop").unwrap().unwrap()), ["b"]);
}

#[test]
fn only_deploys_the_named_services_and_leaves_the_others_as_they_are() {
    let (_dir, store) = store();
    let v1 = artifact(&store, "v1");
    let v2 = artifact(&store, "v2");
    deploy(
        &store,
        "shop",
        &[
            svc("a", &v1, &["/a"]),
            svc("b", &v1, &["/b"]),
            svc("c", &v1, &["/c"]),
        ],
    );
    let before_b = service(&store, "shop", "b");

    // Both `a` and `b` have new components, but only `a` is selected; `c` is not even
    // given and is kept.
    let options = DeployOptions {
        only: vec!["a".into()],
        ..DeployOptions::default()
    };
    let out = store
        .deploy(
            "shop",
            &[svc("a", &v2, &["/a"]), svc("b", &v2, &["/b"])],
            &options,
        )
        .unwrap();
    assert_eq!(out, outcome("shop", &[("a", 2)], &[], &[]));
    let app = store.app("shop").unwrap().unwrap();
    assert_eq!(names(&app), ["a", "b", "c"]);
    assert_eq!(service(&store, "shop", "b"), before_b);
    assert_eq!(service(&store, "shop", "a").primary().unwrap().sha256, v2);
}

#[test]
fn inconsistent_deploy_requests_are_refused() {
    let (_dir, store) = store();
    let sha = artifact(&store, "x");
    let options = DeployOptions {
        only: vec!["api".into()],
        ..DeployOptions::default()
    };
    let err = store
        .deploy("shop", &[svc("web", &sha, &["/"])], &options)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotInDeploy { app, service } if app == "shop" && service == "api"),
        "{err:?}"
    );

    let err = store
        .deploy(
            "shop",
            &[svc("web", &sha, &["/"]), svc("web", &sha, &["/web"])],
            &DeployOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateService { .. }),
        "{err:?}"
    );

    let err = store
        .deploy("shop", &[], &DeployOptions::default())
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::EmptyDeploy(app) if app == "shop"),
        "{err:?}"
    );
    assert_eq!(store.apps().unwrap(), []);
}

// --- Revision ids and pruning ---

/// Deploys versions `versions` of `shop/web`, each with its own component, returning
/// the revision ids created.
fn deploy_versions(store: &ControlStore, versions: Range<u32>, keep: usize) -> Vec<u32> {
    let options = DeployOptions {
        keep,
        ..DeployOptions::default()
    };
    versions
        .map(|version| {
            let sha = artifact(store, &format!("web v{version}"));
            let out = store
                .deploy("shop", &[svc("web", &sha, &["/"])], &options)
                .unwrap();
            out.created[0].1
        })
        .collect()
}

#[test]
fn revision_ids_are_never_reused_after_pruning() {
    let (_dir, store) = store();
    assert_eq!(deploy_versions(&store, 1..5, 2), [1, 2, 3, 4]);
    assert_eq!(ids(&service(&store, "shop", "web")), [3, 4]);
    assert_eq!(deploy_versions(&store, 5..6, 2), [5]);
    assert_eq!(ids(&service(&store, "shop", "web")), [4, 5]);
}

#[test]
fn revision_ids_continue_after_the_app_is_removed_and_deployed_again() {
    let (_dir, store) = store();
    assert_eq!(deploy_versions(&store, 1..4, 0), [1, 2, 3]);
    assert!(store.remove_app("shop").unwrap());
    let sha = artifact(&store, "again");
    let out = deploy(&store, "shop", &[svc("web", &sha, &["/"])]);
    assert_eq!(out.created, [("web".to_owned(), 4)]);
    let web = service(&store, "shop", "web");
    assert_eq!(ids(&web), [4]);
    assert_eq!(web.traffic, [(4, 100)]);
}

#[test]
fn default_keep_is_ten_revisions() {
    let (_dir, store) = store();
    deploy_versions(&store, 1..13, 0);
    assert_eq!(
        ids(&service(&store, "shop", "web")),
        (3..=12).collect::<Vec<_>>()
    );
}

#[test]
fn pruning_never_removes_revisions_that_carry_traffic() {
    let (_dir, store) = store();
    let keep_one = |traffic| DeployOptions {
        keep: 1,
        traffic,
        ..DeployOptions::default()
    };
    let v1 = artifact(&store, "v1");
    let v2 = artifact(&store, "v2");
    let v3 = artifact(&store, "v3");
    store
        .deploy("shop", &[svc("web", &v1, &["/"])], &keep_one(None))
        .unwrap();
    store
        .deploy("shop", &[svc("web", &v2, &["/"])], &keep_one(Some(10)))
        .unwrap();
    // Both revisions serve traffic, so both stay although only one should be kept.
    let web = service(&store, "shop", "web");
    assert_eq!(ids(&web), [1, 2]);
    assert_eq!(web.traffic, [(1, 90), (2, 10)]);

    // A new canary supersedes revision 2, which then carries no traffic and is pruned;
    // revision 1, still primary, stays.
    store
        .deploy("shop", &[svc("web", &v3, &["/"])], &keep_one(Some(50)))
        .unwrap();
    let web = service(&store, "shop", "web");
    assert_eq!(web.traffic, [(1, 50), (3, 50)]);
    assert_eq!(ids(&web), [1, 3]);

    store
        .deploy("shop", &[svc("web", &v2, &["/"])], &keep_one(None))
        .unwrap();
    let web = service(&store, "shop", "web");
    assert_eq!(ids(&web), [4]);
    assert_eq!(web.traffic, [(4, 100)]);
}

// --- Traffic ---

/// `shop/web` with revisions 1, 2 and 3, revision 3 taking all traffic.
fn three_revisions(store: &ControlStore) {
    for tag in ["v1", "v2", "v3"] {
        let sha = artifact(store, tag);
        deploy(store, "shop", &[svc("web", &sha, &["/"])]);
    }
}

#[test]
fn set_traffic_splits_and_drops_zero_shares() {
    let (_dir, store) = store();
    three_revisions(&store);
    let state = store
        .set_traffic("shop", "web", &[(3, 0), (1, 50), (2, 50)])
        .unwrap();
    assert_eq!(state.traffic, [(1, 50), (2, 50)]);
    // A tie goes to the newest revision.
    assert_eq!(state.primary().unwrap().id, 2);
    assert_eq!(service(&store, "shop", "web"), state);

    let state = store
        .set_traffic("shop", "web", &[(1, 75), (3, 25)])
        .unwrap();
    assert_eq!(state.primary().unwrap().id, 1);
}

#[test]
fn invalid_traffic_is_refused_and_the_split_stays() {
    let (_dir, store) = store();
    three_revisions(&store);
    let cases: &[(&[(u32, u8)], &str)] = &[
        (&[(1, 50), (2, 40)], "add up to 90"),
        (&[(1, 60), (2, 50)], "add up to 110"),
        (&[(1, 101)], "101"),
        (&[(1, 50), (9, 50)], "no revision 9"),
        (&[(1, 50), (1, 50)], "more than once"),
        (&[], "add up to 0"),
    ];
    for (weights, message) in cases {
        let err = store.set_traffic("shop", "web", weights).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidTraffic(_)),
            "{weights:?}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(message) && text.contains("`web`"), "{text}");
    }
    assert_eq!(service(&store, "shop", "web").traffic, [(3, 100)]);
}

#[test]
fn traffic_shift_that_would_take_a_claimed_route_is_refused() {
    let (_dir, store) = store();
    let v1 = artifact(&store, "v1");
    let v2 = artifact(&store, "v2");
    deploy(&store, "shop", &[svc("web", &v1, &["/shop"])]);
    // The canary claims `/blog`, but while it is not primary its routes are not current,
    // so the blog can take `/blog`.
    store
        .deploy("shop", &[svc("web", &v2, &["/shop", "/blog"])], &canary(10))
        .unwrap();
    deploy(&store, "blog", &[svc("posts", &v1, &["/blog"])]);

    let err = store
        .set_traffic("shop", "web", &[(1, 40), (2, 60)])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::RouteConflict { route, app, service }
            if route == "/blog" && app == "blog" && service == "posts"),
        "{err:?}"
    );
    assert_eq!(service(&store, "shop", "web").traffic, [(1, 90), (2, 10)]);
}

#[test]
fn unknown_app_or_service_is_reported_by_name() {
    let (_dir, store) = store();
    three_revisions(&store);
    let err = store.set_traffic("nope", "web", &[(1, 100)]).unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchApp(a) if a == "nope"),
        "{err:?}"
    );
    let err = store.rollback("nope", "web", None).unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchApp(a) if a == "nope"),
        "{err:?}"
    );

    let err = store.set_traffic("shop", "cart", &[(1, 100)]).unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchService { app, service } if app == "shop" && service == "cart"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "app `shop` has no service `cart`");
    let err = store.rollback("shop", "cart", Some(1)).unwrap_err();
    assert!(matches!(err, StoreError::NoSuchService { .. }), "{err:?}");
}

// --- Rollback ---

#[test]
fn rollback_goes_to_the_newest_revision_older_than_the_primary() {
    let (_dir, store) = store();
    three_revisions(&store);
    let state = store.rollback("shop", "web", None).unwrap();
    assert_eq!(state.traffic, [(2, 100)]);
    let state = store.rollback("shop", "web", None).unwrap();
    assert_eq!(state.traffic, [(1, 100)]);

    let err = store.rollback("shop", "web", None).unwrap_err();
    assert!(
        matches!(&err, StoreError::NoEarlierRevision { app, service, primary: 1 }
            if app == "shop" && service == "web"),
        "{err:?}"
    );
    assert_eq!(service(&store, "shop", "web").traffic, [(1, 100)]);
}

#[test]
fn rollback_during_a_canary_goes_behind_the_primary_and_ends_the_canary() {
    let (_dir, store) = store();
    three_revisions(&store);
    let v4 = artifact(&store, "v4");
    store
        .deploy("shop", &[svc("web", &v4, &["/"])], &canary(10))
        .unwrap();
    // Revision 3 is primary with 90%; rolling back goes behind it, to 2.
    let state = store.rollback("shop", "web", None).unwrap();
    assert_eq!(state.traffic, [(2, 100)]);
}

#[test]
fn rollback_to_a_named_revision_sends_it_all_traffic() {
    let (_dir, store) = store();
    three_revisions(&store);
    let state = store.rollback("shop", "web", Some(1)).unwrap();
    assert_eq!(state.traffic, [(1, 100)]);
    // Rolling "forward" by id works the same way.
    let state = store.rollback("shop", "web", Some(3)).unwrap();
    assert_eq!(state.traffic, [(3, 100)]);

    let err = store.rollback("shop", "web", Some(7)).unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchRevision { app, service, revision: 7 }
            if app == "shop" && service == "web"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "service `web` of app `shop` has no revision 7"
    );
}

#[test]
fn rollback_that_would_take_a_claimed_route_is_refused() {
    let (_dir, store) = store();
    let v1 = artifact(&store, "v1");
    let v2 = artifact(&store, "v2");
    deploy(&store, "shop", &[svc("web", &v1, &["/shop", "/blog"])]);
    deploy(&store, "shop", &[svc("web", &v2, &["/shop"])]);
    deploy(&store, "blog", &[svc("posts", &v1, &["/blog"])]);

    let err = store.rollback("shop", "web", None).unwrap_err();
    assert!(
        matches!(&err, StoreError::RouteConflict { route, app, .. } if route == "/blog" && app == "blog"),
        "{err:?}"
    );
    assert_eq!(service(&store, "shop", "web").traffic, [(2, 100)]);
}

// --- Removal ---

#[test]
fn remove_app_deletes_the_app_keeps_artifacts_and_frees_its_routes() {
    let (_dir, store) = store();
    let sha = artifact(&store, "x");
    deploy(
        &store,
        "shop",
        &[svc("web", &sha, &["/"]), svc("api", &sha, &["/api"])],
    );
    deploy(&store, "blog", &[svc("posts", &sha, &["/blog"])]);

    assert!(store.remove_app("shop").unwrap());
    assert_eq!(store.app("shop").unwrap(), None);
    let apps = store.apps().unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].name, "blog");
    assert!(store.has_artifact(&sha));
    assert!(store.artifact_path(&sha).is_ok());

    assert!(!store.remove_app("shop").unwrap());
    assert!(!store.remove_app("never").unwrap());

    // Its routes are free again.
    let out = deploy(&store, "other", &[svc("web", &sha, &["/", "/api"])]);
    assert_eq!(out.created, [("web".to_owned(), 1)]);
}

// --- Durability and concurrency ---

#[test]
fn state_survives_reopening_the_store() {
    let tmp = TempDir::new().unwrap();
    let (sha, before) = {
        let store = ControlStore::open(tmp.path()).unwrap();
        three_revisions(&store);
        let sha = artifact(&store, "api");
        store
            .deploy(
                "shop",
                &[svc("api", &sha, &["/api"])],
                &DeployOptions {
                    only: vec!["api".into()],
                    ..DeployOptions::default()
                },
            )
            .unwrap();
        store
            .set_traffic("shop", "web", &[(2, 30), (3, 70)])
            .unwrap();
        deploy(&store, "gone", &[svc("web", &sha, &["/gone"])]);
        store.remove_app("gone").unwrap();
        (sha, store.apps().unwrap())
    };
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].services.len(), 2);

    let store = ControlStore::open(tmp.path()).unwrap();
    assert_eq!(store.apps().unwrap(), before);
    assert_eq!(
        std::fs::read(store.artifact_path(&sha).unwrap()).unwrap(),
        b"\0asm component api"
    );
    // Counters survive too: the next revision of `web` is 4, and the removed app's
    // service continues at 2.
    let v4 = artifact(&store, "v4");
    let out = store
        .deploy(
            "shop",
            &[svc("web", &v4, &["/"])],
            &DeployOptions {
                only: vec!["web".into()],
                ..DeployOptions::default()
            },
        )
        .unwrap();
    assert_eq!(out.created, [("web".to_owned(), 4)]);
    let out = deploy(&store, "gone", &[svc("web", &sha, &["/gone"])]);
    assert_eq!(out.created, [("web".to_owned(), 2)]);
}

#[test]
fn many_threads_can_deploy_at_once() {
    let (_dir, store) = store();
    let sha = artifact(&store, "x");
    const THREADS: u64 = 8;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let store = &store;
            let sha = &sha;
            scope.spawn(move || {
                // Each thread deploys its own app and a distinct version of one shared
                // service.
                deploy(
                    store,
                    &format!("app{t}"),
                    &[svc("web", sha, &[&format!("/app{t}")])],
                );
                let mut shared = svc("web", sha, &["/shared"]);
                shared.config.memory = (t + 1) << 20;
                deploy(store, "shared", &[shared]);
            });
        }
    });
    let apps = store.apps().unwrap();
    assert_eq!(apps.len(), THREADS as usize + 1);
    let shared = service(&store, "shared", "web");
    assert_eq!(ids(&shared), (1..=THREADS as u32).collect::<Vec<_>>());
    assert_eq!(shared.traffic.len(), 1);
    assert_eq!(shared.traffic[0].1, 100);
}

// The store is shared between request handlers and its errors travel through `anyhow`;
// this fails to compile if either stops being possible.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    shareable::<ControlStore>();
    error::<StoreError>();
};

#[test]
fn unreadable_stored_config_names_the_revision() {
    let tmp = TempDir::new().unwrap();
    let store = ControlStore::open(tmp.path()).unwrap();
    let sha = artifact(&store, "x");
    deploy(&store, "shop", &[svc("web", &sha, &["/"])]);
    let conn = rusqlite::Connection::open(tmp.path().join(DATABASE_FILE)).unwrap();
    conn.execute("UPDATE revisions SET config = 'not json'", [])
        .unwrap();
    let err = store.apps().unwrap_err();
    assert!(
        matches!(&err, StoreError::CorruptConfig { app, service, revision: 1, .. }
            if app == "shop" && service == "web"),
        "{err:?}"
    );
}

#[test]
fn secrets_are_per_service_listed_by_name_and_purged_with_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let store = ControlStore::open(dir.path()).unwrap();
    store
        .set_secret("shop", "cart", "API_KEY", "s3cret")
        .unwrap();
    store.set_secret("shop", "cart", "TOKEN", "t1").unwrap();
    store.set_secret("shop", "cart", "TOKEN", "t2").unwrap();
    store
        .set_secret("shop", "users", "API_KEY", "other")
        .unwrap();
    store.set_secret("blog", "cart", "API_KEY", "blog").unwrap();
    let names: Vec<String> = store
        .secret_names("shop", "cart")
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["API_KEY", "TOKEN"]);
    assert_eq!(
        store.secrets("shop", "cart").unwrap(),
        vec![
            ("API_KEY".into(), "s3cret".into()),
            ("TOKEN".into(), "t2".into())
        ]
    );
    assert!(store.delete_secret("shop", "cart", "TOKEN").unwrap());
    assert!(!store.delete_secret("shop", "cart", "TOKEN").unwrap());
    drop(store);
    // Durable across reopening.
    let store = ControlStore::open(dir.path()).unwrap();
    assert_eq!(store.secrets("shop", "cart").unwrap().len(), 1);
    store.purge_secrets("shop").unwrap();
    assert!(store.secrets("shop", "cart").unwrap().is_empty());
    assert!(store.secrets("shop", "users").unwrap().is_empty());
    assert_eq!(store.secrets("blog", "cart").unwrap().len(), 1);
}

#[test]
fn data_config_round_trips_through_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = ControlStore::open(dir.path()).unwrap();
    let sha = store.put_artifact(b"component").unwrap();
    let mut cfg = config(&["/cart"]);
    cfg.config = vec![("currency".into(), "EUR".into())];
    cfg.buckets = vec!["sessions".into()];
    cfg.migrations = vec!["0001_init.sql".into()];
    cfg.cron = vec![tessera_store::CronConfig {
        schedule: "@every 2s".into(),
        path: "/tick".into(),
        run_missed: true,
    }];
    cfg.subscriptions = vec![tessera_store::SubscriptionConfig {
        topic: "orders.created".into(),
        path: "/on-order".into(),
        queue: Some("workers".into()),
        max_attempts: 3,
        backoff_ms: 1000,
        max_backoff_ms: 60_000,
        concurrency: 4,
        batch: 8,
    }];
    let deploy = ServiceDeploy {
        name: "cart".into(),
        sha256: sha,
        config: cfg.clone(),
    };
    store
        .deploy("shop", &[deploy], &DeployOptions::default())
        .unwrap();
    drop(store);
    let store = ControlStore::open(dir.path()).unwrap();
    let app = store.app("shop").unwrap().unwrap();
    assert_eq!(app.services[0].primary().unwrap().config, cfg);
}

#[test]
fn scaling_settings_round_trip_and_older_revisions_get_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let store = ControlStore::open(dir.path()).unwrap();
    let sha = artifact(&store, "scaling");
    let mut web = svc("web", &sha, &["/"]);
    web.config.scaling = ScalingConfig {
        concurrency: 8,
        queue: 0,
        queue_timeout_ms: 250,
        idle_ms: None,
        async_rate: 7,
        async_stored: 2 << 20,
    };
    let mut api = svc("api", &sha, &["/api"]);
    api.config.scaling.idle_ms = Some(1000);
    deploy(&store, "shop", &[web.clone(), api]);
    assert_eq!(
        service(&store, "shop", "web").revisions[0].config,
        web.config
    );

    // A revision written before these settings existed has none of the keys.
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let old = r#"{"routes":["/api"],"memory":1048576,"timeout_ms":1000,"outbound":[],"env":[]}"#;
    conn.execute(
        "UPDATE revisions SET config = ?1 WHERE service = 'api'",
        [old],
    )
    .unwrap();
    let api = service(&store, "shop", "api");
    assert_eq!(api.revisions[0].config.scaling, ScalingConfig::default());
}

// --- Changes and generations ---

#[test]
fn every_commit_is_a_change_and_an_apps_generation_only_grows() {
    let (_dir, store) = store();
    let mut watch = store.watch();
    assert_eq!(*watch.borrow_and_update(), 0);
    let a = artifact(&store, "a");
    deploy(&store, "shop", &[svc("api", &a, &["/api"])]);
    let first = store.app("shop").unwrap().unwrap().generation;
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), first);

    // A deploy that changes nothing is no change.
    deploy(&store, "shop", &[svc("api", &a, &["/api"])]);
    assert_eq!(store.app("shop").unwrap().unwrap().generation, first);
    assert!(!watch.has_changed().unwrap());

    let b = artifact(&store, "b");
    deploy(&store, "shop", &[svc("api", &b, &["/api"])]);
    store.set_secret("shop", "api", "TOKEN", "x").unwrap();
    store.rollback("shop", "api", None).unwrap();
    let generation = store.app("shop").unwrap().unwrap().generation;
    assert!(generation > first);

    let batch = store.changes(0).unwrap();
    assert!(!batch.gap);
    let kinds: Vec<_> = batch.changes.iter().map(|c| c.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            ChangeKind::App,
            ChangeKind::App,
            ChangeKind::Secrets(Some("api".into())),
            ChangeKind::App
        ]
    );
    assert!(batch.changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(batch.last, generation);
    assert_eq!(*watch.borrow_and_update(), generation);
    let rest = store.changes(batch.changes[1].seq).unwrap();
    assert_eq!(rest.changes.len(), 2);
    let none = store.changes(batch.last).unwrap();
    assert!(none.changes.is_empty());
    assert_eq!(none.last, batch.last);

    // Removed and deployed again, the app never shows an earlier generation.
    assert!(store.remove_app("shop").unwrap());
    deploy(&store, "shop", &[svc("api", &a, &["/api"])]);
    assert!(store.app("shop").unwrap().unwrap().generation > generation + 1);
}

#[test]
fn a_deploy_prepared_against_a_stale_generation_conflicts_and_changes_nothing() {
    let (_dir, store) = store();
    let a = artifact(&store, "a");
    let b = artifact(&store, "b");
    let fresh = DeployOptions {
        if_generation: Some(0),
        ..DeployOptions::default()
    };
    store
        .deploy("shop", &[svc("api", &a, &["/api"])], &fresh)
        .unwrap();
    // A second deploy that also saw the app absent loses.
    let err = store
        .deploy("shop", &[svc("api", &b, &["/api"])], &fresh)
        .unwrap_err();
    let generation = store.app("shop").unwrap().unwrap().generation;
    assert!(
        matches!(&err, StoreError::Conflict { app, expected: 0, found } if app == "shop" && *found == generation),
        "{err:?}"
    );
    assert!(err.to_string().contains("deploy again"), "{err}");
    assert_eq!(ids(&service(&store, "shop", "api")), vec![1]);

    // With the current generation it applies.
    let current = DeployOptions {
        if_generation: Some(generation),
        ..DeployOptions::default()
    };
    store
        .deploy("shop", &[svc("api", &b, &["/api"])], &current)
        .unwrap();
    assert_eq!(ids(&service(&store, "shop", "api")), vec![1, 2]);
}

#[test]
fn changes_and_generations_survive_reopening_and_old_history_reports_a_gap() {
    let tmp = TempDir::new().unwrap();
    let store = ControlStore::open(tmp.path()).unwrap();
    let a = artifact(&store, "a");
    deploy(&store, "shop", &[svc("api", &a, &["/api"])]);
    let generation = store.app("shop").unwrap().unwrap().generation;
    drop(store);
    let store = ControlStore::open(tmp.path()).unwrap();
    assert_eq!(*store.watch().borrow(), generation);
    assert_eq!(store.app("shop").unwrap().unwrap().generation, generation);

    // Forget the first change as a full history would: asking from before it is a gap.
    store.set_secret("shop", "api", "A", "1").unwrap();
    store
        .conn()
        .execute("DELETE FROM changes WHERE seq = ?1", [generation as i64])
        .unwrap();
    assert!(store.changes(0).unwrap().gap);
    assert!(!store.changes(generation).unwrap().gap);
}

#[test]
fn apps_stored_before_generations_existed_get_distinct_ones() {
    let tmp = TempDir::new().unwrap();
    let store = ControlStore::open(tmp.path()).unwrap();
    let a = artifact(&store, "a");
    deploy(&store, "shop", &[svc("api", &a, &["/api"])]);
    deploy(&store, "blog", &[svc("web", &a, &["/blog"])]);
    drop(store);
    // Back to the schema before changes were recorded.
    let conn = rusqlite::Connection::open(tmp.path().join(DATABASE_FILE)).unwrap();
    conn.execute_batch(
        "DROP TABLE changes; ALTER TABLE apps DROP COLUMN generation; PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(conn);

    let store = ControlStore::open(tmp.path()).unwrap();
    let generations: Vec<u64> = store.apps().unwrap().iter().map(|a| a.generation).collect();
    assert_eq!(generations, vec![1, 2], "one change per app, in name order");
    assert_eq!(*store.watch().borrow(), 2);
    let b = artifact(&store, "b");
    deploy(&store, "shop", &[svc("api", &b, &["/api"])]);
    assert_eq!(store.app("shop").unwrap().unwrap().generation, 3);
}
