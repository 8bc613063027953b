//! The semantics of [`ControlState`] and [`ArtifactStore`] as a test suite every backend
//! runs unchanged: the embedded store today, the JetStream store in a cluster. A backend's
//! test calls [`run`] with a function that hands each test a fresh, empty backend; backend
//! specifics (files, schema, reopening) stay in the backend's own tests, which may reuse
//! the helpers below.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_model::{MissedTicks, Origin, RoutePrefix};

use crate::{
    AppState, ArtifactStore, ChangeKind, ControlState, CronTrigger, DeployOptions, DeployOutcome,
    RevisionConfig, Scaling, ServiceDeploy, ServiceState, StoreError, Subscription,
};

/// What the suite exercises: the control state and the artifacts of one backend.
pub trait Control: ControlState + ArtifactStore {}

impl<T: ControlState + ArtifactStore> Control for T {}

/// One test of the suite.
pub struct Test {
    pub name: &'static str,
    pub run: fn(&dyn Control),
}

/// Runs every test of the suite in turn, each on a fresh, empty backend that `fresh`
/// creates and hands to the test. A failing test panics; the name printed last before the
/// panic is the failing test's.
pub fn run(fresh: impl Fn(&dyn Fn(&dyn Control))) {
    for test in TESTS {
        eprintln!("conformance: control state: {}", test.name);
        fresh(&|backend| (test.run)(backend));
    }
}

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        /// Every test of the suite, in the order [`run`] runs them.
        pub const TESTS: &[Test] = &[$(Test { name: stringify!($name), run: $name }),*];
    };
}

tests![
    artifacts_are_content_addressed_and_idempotent,
    malformed_digests_never_form_a_path,
    missing_artifact_is_reported_by_its_digest,
    first_deploy_creates_revision_one_with_all_traffic,
    apps_are_listed_sorted_by_name,
    redeploying_the_same_component_and_config_changes_nothing,
    a_new_component_or_a_new_config_creates_a_revision_with_all_traffic,
    canary_splits_traffic_between_the_new_and_the_previous_primary_revision,
    canary_share_outside_1_to_99_is_refused,
    deploy_with_a_missing_artifact_changes_nothing,
    route_claimed_by_another_app_is_refused_and_nothing_changes,
    route_claimed_by_another_service_of_the_same_app_is_refused,
    route_moved_between_services_in_one_deploy_is_not_a_conflict,
    whole_app_deploy_removes_services_it_no_longer_names,
    only_deploys_the_named_services_and_leaves_the_others_as_they_are,
    inconsistent_deploy_requests_are_refused,
    revision_ids_are_never_reused_after_pruning,
    revision_ids_continue_after_the_app_is_removed_and_deployed_again,
    default_keep_is_ten_revisions,
    pruning_never_removes_revisions_that_carry_traffic,
    set_traffic_splits_and_drops_zero_shares,
    invalid_traffic_is_refused_and_the_split_stays,
    traffic_shift_that_would_take_a_claimed_route_is_refused,
    unknown_app_or_service_is_reported_by_name,
    rollback_goes_to_the_newest_revision_older_than_the_primary,
    rollback_during_a_canary_goes_behind_the_primary_and_ends_the_canary,
    rollback_to_a_named_revision_sends_it_all_traffic,
    rollback_that_would_take_a_claimed_route_is_refused,
    remove_app_deletes_the_app_keeps_artifacts_and_frees_its_routes,
    many_threads_can_deploy_at_once,
    every_commit_is_a_change_and_an_apps_generation_only_grows,
    a_deploy_prepared_against_a_stale_generation_conflicts_and_changes_nothing,
    secrets_are_per_service_listed_by_name_and_purged_with_the_app,
    every_setting_of_a_revision_round_trips,
];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A revision config with these routes and defaults elsewhere.
pub fn config(routes: &[&str]) -> RevisionConfig {
    let mut config = RevisionConfig::new(
        routes
            .iter()
            .map(|r| RoutePrefix::new(r).expect("a valid route"))
            .collect(),
    );
    config.limits.memory = 64 * 1024 * 1024;
    config
}

/// A revision config with every setting away from its default.
pub fn full_config() -> RevisionConfig {
    let mut cfg = config(&["/cart", "/basket"]);
    cfg.outbound = vec![Origin::parse("https://example.com").unwrap()];
    cfg.callbacks = vec![Origin::parse("https://hooks.example.com").unwrap()];
    cfg.env = vec![("B".into(), "2".into()), ("A".into(), "1".into())];
    cfg.config = vec![("currency".into(), "EUR".into())];
    cfg.buckets = vec!["sessions".into()];
    cfg.migrations = vec!["0001_init.sql".into()];
    cfg.cron = vec![CronTrigger {
        schedule: "@every 2s".into(),
        path: "/tick".into(),
        missed: MissedTicks::RunOnce,
    }];
    cfg.subscriptions = vec![Subscription {
        topic: "orders.created".into(),
        path: "/on-order".into(),
        queue: Some("workers".into()),
        max_attempts: 3,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
        concurrency: 4,
        batch: 8,
    }];
    cfg.scaling = Scaling {
        concurrency: 8,
        queue: 0,
        queue_timeout: Duration::from_millis(250),
        idle: None,
        async_rate: 7,
        async_stored: 2 << 20,
    };
    cfg
}

/// Stores a distinct component for `tag` and returns its digest.
pub fn artifact(store: &dyn Control, tag: &str) -> String {
    store
        .put_artifact(format!("\0asm component {tag}").as_bytes())
        .expect("put artifact")
}

/// A service of a deploy with a default config.
pub fn svc(name: &str, sha256: &str, routes: &[&str]) -> ServiceDeploy {
    ServiceDeploy {
        name: name.to_owned(),
        sha256: sha256.to_owned(),
        config: config(routes),
    }
}

/// A whole-app deploy that must succeed.
pub fn deploy(store: &dyn Control, app: &str, services: &[ServiceDeploy]) -> DeployOutcome {
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

/// The state of a service that must exist.
pub fn service(store: &dyn Control, app: &str, service: &str) -> ServiceState {
    let app = store.app(app).expect("read app").expect("app exists");
    app.services
        .into_iter()
        .find(|s| s.name == service)
        .expect("service exists")
}

/// The ids of a service's retained revisions.
pub fn ids(state: &ServiceState) -> Vec<u32> {
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

// --- Artifacts ---

fn artifacts_are_content_addressed_and_idempotent(store: &dyn Control) {
    let sha = store.put_artifact(b"abc").unwrap();
    assert_eq!(
        sha,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(store.has_artifact(&sha));
    let path = store.artifact_path(&sha).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    assert_eq!(store.put_artifact(b"abc").unwrap(), sha);
    let other = store.put_artifact(b"another component").unwrap();
    assert_ne!(other, sha);
    assert_eq!(
        std::fs::read(store.artifact_path(&other).unwrap()).unwrap(),
        b"another component"
    );

    // A file staged by the caller becomes an artifact by its digest.
    let staged = store.staging_dir().join("upload-conformance");
    std::fs::create_dir_all(store.staging_dir()).unwrap();
    std::fs::write(&staged, b"staged").unwrap();
    // sha256("staged")
    let digest = "8d906d61f92c9696387e566ecee255b733c79536074173a8eab915bad2d1fa28";
    store.put_artifact_file(&staged, digest).unwrap();
    assert!(store.has_artifact(digest));
    assert_eq!(
        std::fs::read(store.artifact_path(digest).unwrap()).unwrap(),
        b"staged"
    );
}

fn malformed_digests_never_form_a_path(store: &dyn Control) {
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

fn missing_artifact_is_reported_by_its_digest(store: &dyn Control) {
    let missing = "0".repeat(64);
    assert!(!store.has_artifact(&missing));
    let err = store.artifact_path(&missing).unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchArtifact(d) if *d == missing),
        "{err:?}"
    );
}

// --- Deploy ---

fn first_deploy_creates_revision_one_with_all_traffic(store: &dyn Control) {
    let web = artifact(store, "web");
    let api = artifact(store, "api");
    let mut api_deploy = svc("api", &api, &["/api"]);
    api_deploy.config.outbound = vec![Origin::parse("https://example.com").unwrap()];
    api_deploy.config.env = vec![("B".into(), "2".into()), ("A".into(), "1".into())];

    let before = now();
    let out = deploy(
        store,
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
    assert!(primary.created_at >= before && primary.created_at <= now());
}

fn apps_are_listed_sorted_by_name(store: &dyn Control) {
    let sha = artifact(store, "x");
    deploy(store, "zeta", &[svc("web", &sha, &["/z"])]);
    deploy(store, "alpha", &[svc("web", &sha, &["/a"])]);
    deploy(store, "mid", &[svc("web", &sha, &["/m"])]);
    let apps = store.apps().unwrap();
    let listed: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(listed, ["alpha", "mid", "zeta"]);
    assert_eq!(store.app("nope").unwrap(), None);
}

fn redeploying_the_same_component_and_config_changes_nothing(store: &dyn Control) {
    let sha = artifact(store, "web");
    deploy(store, "shop", &[svc("web", &sha, &["/"])]);
    let before = store.app("shop").unwrap();

    let out = deploy(store, "shop", &[svc("web", &sha, &["/"])]);
    assert_eq!(out, outcome("shop", &[], &["web"], &[]));
    assert_eq!(store.app("shop").unwrap(), before);
}

fn a_new_component_or_a_new_config_creates_a_revision_with_all_traffic(store: &dyn Control) {
    let v1 = artifact(store, "v1");
    let v2 = artifact(store, "v2");
    deploy(store, "shop", &[svc("web", &v1, &["/"])]);

    let out = deploy(store, "shop", &[svc("web", &v2, &["/"])]);
    assert_eq!(out.created, [("web".to_owned(), 2)]);
    let web = service(store, "shop", "web");
    assert_eq!(web.traffic, [(2, 100)]);
    assert_eq!(web.primary().unwrap().sha256, v2);

    // Same component, different memory limit: still a new revision.
    let mut bigger = svc("web", &v2, &["/"]);
    bigger.config.limits.memory *= 2;
    let out = deploy(store, "shop", &[bigger.clone()]);
    assert_eq!(out.created, [("web".to_owned(), 3)]);
    let web = service(store, "shop", "web");
    assert_eq!(ids(&web), [1, 2, 3]);
    assert_eq!(web.traffic, [(3, 100)]);
    assert_eq!(web.primary().unwrap().config, bigger.config);
}

fn canary_splits_traffic_between_the_new_and_the_previous_primary_revision(store: &dyn Control) {
    let v1 = artifact(store, "v1");
    let v2 = artifact(store, "v2");
    let v3 = artifact(store, "v3");
    let api = artifact(store, "api");
    deploy(store, "shop", &[svc("web", &v1, &["/"])]);

    // A service deployed for the first time gets everything, canary or not.
    let out = store
        .deploy(
            "shop",
            &[svc("web", &v2, &["/"]), svc("api", &api, &["/api"])],
            &canary(20),
        )
        .unwrap();
    assert_eq!(out.created, [("api".to_owned(), 1), ("web".to_owned(), 2)]);
    let web = service(store, "shop", "web");
    assert_eq!(web.traffic, [(1, 80), (2, 20)]);
    assert_eq!(web.primary().unwrap().id, 1);
    assert_eq!(service(store, "shop", "api").traffic, [(1, 100)]);

    // A second canary replaces the first: the primary keeps the rest and revision 2
    // stops receiving traffic.
    store
        .deploy(
            "shop",
            &[svc("web", &v3, &["/"]), svc("api", &api, &["/api"])],
            &canary(30),
        )
        .unwrap();
    let web = service(store, "shop", "web");
    assert_eq!(web.traffic, [(1, 70), (3, 30)]);
    assert_eq!(ids(&web), [1, 2, 3]);
}

fn canary_share_outside_1_to_99_is_refused(store: &dyn Control) {
    let v1 = artifact(store, "v1");
    let v2 = artifact(store, "v2");
    deploy(store, "shop", &[svc("web", &v1, &["/"])]);
    for share in [0, 100, 200] {
        let err = store
            .deploy("shop", &[svc("web", &v2, &["/"])], &canary(share))
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidTraffic(_)), "{err:?}");
        assert!(err.to_string().contains(&share.to_string()), "{err}");
    }
    assert_eq!(ids(&service(store, "shop", "web")), [1]);
}

fn deploy_with_a_missing_artifact_changes_nothing(store: &dyn Control) {
    let v1 = artifact(store, "v1");
    let v2 = artifact(store, "v2");
    let missing = "f".repeat(64);
    deploy(store, "shop", &[svc("web", &v1, &["/"])]);
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

fn route_claimed_by_another_app_is_refused_and_nothing_changes(store: &dyn Control) {
    let sha = artifact(store, "x");
    deploy(store, "shop", &[svc("web", &sha, &["/", "/api"])]);
    deploy(store, "blog", &[svc("posts", &sha, &["/blog"])]);
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

fn route_claimed_by_another_service_of_the_same_app_is_refused(store: &dyn Control) {
    let sha = artifact(store, "x");
    deploy(
        store,
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

fn route_moved_between_services_in_one_deploy_is_not_a_conflict(store: &dyn Control) {
    let sha = artifact(store, "x");
    deploy(
        store,
        "shop",
        &[svc("old", &sha, &["/cart"]), svc("web", &sha, &["/"])],
    );

    // `/cart` moves from the removed `old` to a new `cart` service in the same deploy.
    let out = deploy(
        store,
        "shop",
        &[svc("cart", &sha, &["/cart"]), svc("web", &sha, &["/"])],
    );
    assert_eq!(out, outcome("shop", &[("cart", 1)], &["web"], &["old"]));

    // And from one kept service to another: `web` gives up `/`, `home` takes it.
    let out = deploy(
        store,
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

fn whole_app_deploy_removes_services_it_no_longer_names(store: &dyn Control) {
    let sha = artifact(store, "x");
    deploy(
        store,
        "shop",
        &[
            svc("a", &sha, &["/a"]),
            svc("b", &sha, &["/b"]),
            svc("c", &sha, &["/c"]),
        ],
    );
    let out = deploy(store, "shop", &[svc("b", &sha, &["/b"])]);
    assert_eq!(out, outcome("shop", &[], &["b"], &["a", "c"]));
    assert_eq!(names(&store.app("shop").unwrap().unwrap()), ["b"]);
}

fn only_deploys_the_named_services_and_leaves_the_others_as_they_are(store: &dyn Control) {
    let v1 = artifact(store, "v1");
    let v2 = artifact(store, "v2");
    deploy(
        store,
        "shop",
        &[
            svc("a", &v1, &["/a"]),
            svc("b", &v1, &["/b"]),
            svc("c", &v1, &["/c"]),
        ],
    );
    let before_b = service(store, "shop", "b");

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
    assert_eq!(service(store, "shop", "b"), before_b);
    assert_eq!(service(store, "shop", "a").primary().unwrap().sha256, v2);
}

fn inconsistent_deploy_requests_are_refused(store: &dyn Control) {
    let sha = artifact(store, "x");
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
pub fn deploy_versions(store: &dyn Control, versions: Range<u32>, keep: usize) -> Vec<u32> {
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

fn revision_ids_are_never_reused_after_pruning(store: &dyn Control) {
    assert_eq!(deploy_versions(store, 1..5, 2), [1, 2, 3, 4]);
    assert_eq!(ids(&service(store, "shop", "web")), [3, 4]);
    assert_eq!(deploy_versions(store, 5..6, 2), [5]);
    assert_eq!(ids(&service(store, "shop", "web")), [4, 5]);
}

fn revision_ids_continue_after_the_app_is_removed_and_deployed_again(store: &dyn Control) {
    assert_eq!(deploy_versions(store, 1..4, 0), [1, 2, 3]);
    assert!(store.remove_app("shop").unwrap());
    let sha = artifact(store, "again");
    let out = deploy(store, "shop", &[svc("web", &sha, &["/"])]);
    assert_eq!(out.created, [("web".to_owned(), 4)]);
    let web = service(store, "shop", "web");
    assert_eq!(ids(&web), [4]);
    assert_eq!(web.traffic, [(4, 100)]);
}

fn default_keep_is_ten_revisions(store: &dyn Control) {
    deploy_versions(store, 1..13, 0);
    assert_eq!(
        ids(&service(store, "shop", "web")),
        (3..=12).collect::<Vec<_>>()
    );
}

fn pruning_never_removes_revisions_that_carry_traffic(store: &dyn Control) {
    let keep_one = |traffic| DeployOptions {
        keep: 1,
        traffic,
        ..DeployOptions::default()
    };
    let v1 = artifact(store, "v1");
    let v2 = artifact(store, "v2");
    let v3 = artifact(store, "v3");
    store
        .deploy("shop", &[svc("web", &v1, &["/"])], &keep_one(None))
        .unwrap();
    store
        .deploy("shop", &[svc("web", &v2, &["/"])], &keep_one(Some(10)))
        .unwrap();
    // Both revisions serve traffic, so both stay although only one should be kept.
    let web = service(store, "shop", "web");
    assert_eq!(ids(&web), [1, 2]);
    assert_eq!(web.traffic, [(1, 90), (2, 10)]);

    // A new canary supersedes revision 2, which then carries no traffic and is pruned;
    // revision 1, still primary, stays.
    store
        .deploy("shop", &[svc("web", &v3, &["/"])], &keep_one(Some(50)))
        .unwrap();
    let web = service(store, "shop", "web");
    assert_eq!(web.traffic, [(1, 50), (3, 50)]);
    assert_eq!(ids(&web), [1, 3]);

    store
        .deploy("shop", &[svc("web", &v2, &["/"])], &keep_one(None))
        .unwrap();
    let web = service(store, "shop", "web");
    assert_eq!(ids(&web), [4]);
    assert_eq!(web.traffic, [(4, 100)]);
}

// --- Traffic ---

/// `shop/web` with revisions 1, 2 and 3, revision 3 taking all traffic.
pub fn three_revisions(store: &dyn Control) {
    for tag in ["v1", "v2", "v3"] {
        let sha = artifact(store, tag);
        deploy(store, "shop", &[svc("web", &sha, &["/"])]);
    }
}

fn set_traffic_splits_and_drops_zero_shares(store: &dyn Control) {
    three_revisions(store);
    let state = store
        .set_traffic("shop", "web", &[(3, 0), (1, 50), (2, 50)])
        .unwrap();
    assert_eq!(state.traffic, [(1, 50), (2, 50)]);
    // A tie goes to the newest revision.
    assert_eq!(state.primary().unwrap().id, 2);
    assert_eq!(service(store, "shop", "web"), state);

    let state = store
        .set_traffic("shop", "web", &[(1, 75), (3, 25)])
        .unwrap();
    assert_eq!(state.primary().unwrap().id, 1);
}

fn invalid_traffic_is_refused_and_the_split_stays(store: &dyn Control) {
    three_revisions(store);
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
    assert_eq!(service(store, "shop", "web").traffic, [(3, 100)]);
}

fn traffic_shift_that_would_take_a_claimed_route_is_refused(store: &dyn Control) {
    let v1 = artifact(store, "v1");
    let v2 = artifact(store, "v2");
    deploy(store, "shop", &[svc("web", &v1, &["/shop"])]);
    // The canary claims `/blog`, but while it is not primary its routes are not current,
    // so the blog can take `/blog`.
    store
        .deploy("shop", &[svc("web", &v2, &["/shop", "/blog"])], &canary(10))
        .unwrap();
    deploy(store, "blog", &[svc("posts", &v1, &["/blog"])]);

    let err = store
        .set_traffic("shop", "web", &[(1, 40), (2, 60)])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::RouteConflict { route, app, service }
            if route == "/blog" && app == "blog" && service == "posts"),
        "{err:?}"
    );
    assert_eq!(service(store, "shop", "web").traffic, [(1, 90), (2, 10)]);
}

fn unknown_app_or_service_is_reported_by_name(store: &dyn Control) {
    three_revisions(store);
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

fn rollback_goes_to_the_newest_revision_older_than_the_primary(store: &dyn Control) {
    three_revisions(store);
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
    assert_eq!(service(store, "shop", "web").traffic, [(1, 100)]);
}

fn rollback_during_a_canary_goes_behind_the_primary_and_ends_the_canary(store: &dyn Control) {
    three_revisions(store);
    let v4 = artifact(store, "v4");
    store
        .deploy("shop", &[svc("web", &v4, &["/"])], &canary(10))
        .unwrap();
    // Revision 3 is primary with 90%; rolling back goes behind it, to 2.
    let state = store.rollback("shop", "web", None).unwrap();
    assert_eq!(state.traffic, [(2, 100)]);
}

fn rollback_to_a_named_revision_sends_it_all_traffic(store: &dyn Control) {
    three_revisions(store);
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

fn rollback_that_would_take_a_claimed_route_is_refused(store: &dyn Control) {
    let v1 = artifact(store, "v1");
    let v2 = artifact(store, "v2");
    deploy(store, "shop", &[svc("web", &v1, &["/shop", "/blog"])]);
    deploy(store, "shop", &[svc("web", &v2, &["/shop"])]);
    deploy(store, "blog", &[svc("posts", &v1, &["/blog"])]);

    let err = store.rollback("shop", "web", None).unwrap_err();
    assert!(
        matches!(&err, StoreError::RouteConflict { route, app, .. } if route == "/blog" && app == "blog"),
        "{err:?}"
    );
    assert_eq!(service(store, "shop", "web").traffic, [(2, 100)]);
}

// --- Removal ---

fn remove_app_deletes_the_app_keeps_artifacts_and_frees_its_routes(store: &dyn Control) {
    let sha = artifact(store, "x");
    deploy(
        store,
        "shop",
        &[svc("web", &sha, &["/"]), svc("api", &sha, &["/api"])],
    );
    deploy(store, "blog", &[svc("posts", &sha, &["/blog"])]);

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
    let out = deploy(store, "other", &[svc("web", &sha, &["/", "/api"])]);
    assert_eq!(out.created, [("web".to_owned(), 1)]);
}

// --- Durability and concurrency ---

fn many_threads_can_deploy_at_once(store: &dyn Control) {
    let sha = artifact(store, "x");
    const THREADS: u64 = 8;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
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
                shared.config.limits.memory = (t + 1) << 20;
                deploy(store, "shared", &[shared]);
            });
        }
    });
    let apps = store.apps().unwrap();
    assert_eq!(apps.len(), THREADS as usize + 1);
    let shared = service(store, "shared", "web");
    assert_eq!(ids(&shared), (1..=THREADS as u32).collect::<Vec<_>>());
    assert_eq!(shared.traffic.len(), 1);
    assert_eq!(shared.traffic[0].1, 100);
}

fn every_commit_is_a_change_and_an_apps_generation_only_grows(store: &dyn Control) {
    let mut watch = store.watch();
    assert_eq!(*watch.borrow_and_update(), 0);
    let a = artifact(store, "a");
    deploy(store, "shop", &[svc("api", &a, &["/api"])]);
    let first = store.app("shop").unwrap().unwrap().generation;
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), first);

    // A deploy that changes nothing is no change.
    deploy(store, "shop", &[svc("api", &a, &["/api"])]);
    assert_eq!(store.app("shop").unwrap().unwrap().generation, first);
    assert!(!watch.has_changed().unwrap());

    let b = artifact(store, "b");
    deploy(store, "shop", &[svc("api", &b, &["/api"])]);
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
    deploy(store, "shop", &[svc("api", &a, &["/api"])]);
    assert!(store.app("shop").unwrap().unwrap().generation > generation + 1);
}

fn a_deploy_prepared_against_a_stale_generation_conflicts_and_changes_nothing(store: &dyn Control) {
    let a = artifact(store, "a");
    let b = artifact(store, "b");
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
    assert_eq!(ids(&service(store, "shop", "api")), vec![1]);

    // With the current generation it applies.
    let current = DeployOptions {
        if_generation: Some(generation),
        ..DeployOptions::default()
    };
    store
        .deploy("shop", &[svc("api", &b, &["/api"])], &current)
        .unwrap();
    assert_eq!(ids(&service(store, "shop", "api")), vec![1, 2]);
}

fn secrets_are_per_service_listed_by_name_and_purged_with_the_app(store: &dyn Control) {
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
    assert_eq!(store.secrets("shop", "cart").unwrap().len(), 1);
    store.purge_secrets("shop").unwrap();
    assert!(store.secrets("shop", "cart").unwrap().is_empty());
    assert!(store.secrets("shop", "users").unwrap().is_empty());
    assert_eq!(store.secrets("blog", "cart").unwrap().len(), 1);
}

fn every_setting_of_a_revision_round_trips(store: &dyn Control) {
    let sha = artifact(store, "full");
    let full = ServiceDeploy {
        name: "cart".into(),
        sha256: sha.clone(),
        config: full_config(),
    };
    let mut api = svc("api", &sha, &["/api"]);
    api.config.scaling.idle = Some(Duration::from_secs(1));
    deploy(store, "shop", &[full.clone(), api.clone()]);
    // The config comes back exactly as given, env order included.
    assert_eq!(
        service(store, "shop", "cart").revisions[0].config,
        full.config
    );
    assert_eq!(
        service(store, "shop", "api").revisions[0].config,
        api.config
    );
}
