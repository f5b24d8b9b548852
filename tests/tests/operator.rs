//! The operator against a real API server: each test runs the controllers in-process, scoped to
//! its own namespace, and checks what lands in the cluster.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_crds::config::CONFIG_FILE_NAME;
use sluice_crds::{ApiRole, DataApi, KeyHashes, RuntimeConfig, resolve};
use sluice_operator::keys::KEY_DATA_KEY;
use sluice_operator::resources::RESTART_HASH_ANNOTATION;
use sluice_operator::{Settings, status};
use sluice_tests::controlplane::ControlPlane;
use sluice_tests::crds::install_crds;

const WAIT: Duration = Duration::from_secs(60);

/// A test namespace with the operator running for it; the operator stops with the test.
struct Harness {
    client: Client,
    namespace: String,
    operator: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.operator.abort();
    }
}

async fn harness(prefix: &str) -> Harness {
    install_crds();
    let cp = ControlPlane::shared();
    let namespace = cp.namespace(prefix).await;
    let client = cp.client();
    let settings = Settings {
        runtime_image: "sluice-runtime:test".into(),
        resync: Duration::from_secs(2),
        concurrency: 16,
    };
    let operator = tokio::spawn(sluice_operator::run(client.clone(), settings, Some(namespace.clone())));
    Harness {
        client,
        namespace,
        operator,
    }
}

impl Harness {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn apply_yaml<K>(&self, yaml: &str) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let object: K = serde_yaml::from_str(yaml).unwrap();
        self.api::<K>()
            .patch(
                &object.name_any(),
                &PatchParams::apply("test").force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {yaml}: {e}"))
    }

    async fn dsn_secret(&self, name: &str, url: &str) {
        self.apply_yaml::<Secret>(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {name} }}\nstringData: {{ url: \"{url}\" }}"
        ))
        .await;
    }
}

/// Polls `check` until it yields a value, failing the test after [`WAIT`] with `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition<'a>(
    api: &'a DataApi,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    api.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

async fn wait_condition(h: &Harness, name: &str, type_: &str, status: &str) -> DataApi {
    let apis = h.api::<DataApi>();
    eventually(&format!("DataApi {name} {type_}={status}"), || async {
        let api = apis.get(name).await.ok()?;
        let current = condition(&api, type_)?;
        (current.status == status && current.observed_generation == api.metadata.generation).then_some(api)
    })
    .await
}

const DATA_API: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: DataApi
metadata: { name: sales }
spec:
  database: { engine: postgres, connectionSecretRef: { name: sales-db, key: url } }
  auth: { anonymousRole: viewer }
  runtime: { replicas: 2 }
"#;

const VIEWER: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: viewer }
spec:
  dataApis: [sales]
  rules: [{ tables: [products], verbs: [read] }]
"#;

const ANALYST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: { name: analyst }
spec:
  dataApis: [sales]
  rules: [{ tables: [customers], verbs: [read], fields: { deny: [email] } }]
  apiKeys: [{ name: dashboard }]
"#;

async fn ready_sales(h: &Harness) -> DataApi {
    h.dsn_secret("sales-db", "postgres://u:p@db:5432/sales").await;
    h.apply_yaml::<ApiRole>(VIEWER).await;
    h.apply_yaml::<ApiRole>(ANALYST).await;
    h.apply_yaml::<DataApi>(DATA_API).await;
    wait_condition(h, "sales", status::READY, "True").await
}

async fn rendered_config(h: &Harness) -> RuntimeConfig {
    let secret = h.api::<Secret>().get("sluice-sales-config").await.unwrap();
    serde_json::from_str(&secret_text(&secret, CONFIG_FILE_NAME).unwrap()).unwrap()
}

#[tokio::test]
async fn a_data_api_with_two_roles_becomes_ready_with_its_children() {
    let h = harness("op-ready").await;
    let api = ready_sales(&h).await;

    let deployment = h.api::<Deployment>().get("sluice-sales").await.unwrap();
    let service = h.api::<Service>().get("sluice-sales").await.unwrap();
    let budget = h.api::<PodDisruptionBudget>().get("sluice-sales").await.unwrap();
    for meta in [&deployment.metadata, &service.metadata, &budget.metadata] {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("DataApi", "sales", Some(true))
        );
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "sluice-operator"
        );
    }
    let pod = deployment.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let env = pod.containers[0].env.clone().unwrap();
    let dsn = env.iter().find(|e| e.name == "SLUICE_DATABASE_URL").unwrap();
    assert_eq!(
        dsn.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name,
        "sales-db"
    );
    assert_eq!(deployment.status.as_ref().unwrap().available_replicas, Some(2));

    // The rendered config is exactly what resolve() gives for these objects and key.
    let key_secret = eventually("the generated key", || async {
        h.api::<Secret>().get_opt("analyst-key-dashboard").await.ok().flatten()
    })
    .await;
    let key = secret_text(&key_secret, KEY_DATA_KEY).unwrap();
    assert!(
        key.starts_with(sluice_crds::API_KEY_PREFIX) && key.len() >= sluice_crds::API_KEY_PREFIX.len() + 43,
        "{key}"
    );
    let roles = [
        h.api::<ApiRole>().get("viewer").await.unwrap(),
        h.api::<ApiRole>().get("analyst").await.unwrap(),
    ];
    let mut hashes = KeyHashes::new();
    hashes.insert_plaintext("analyst", "dashboard", &key);
    assert_eq!(rendered_config(&h).await, resolve(&api, &roles, &hashes).unwrap());
    assert!(
        !serde_json::to_string(&rendered_config(&h).await)
            .unwrap()
            .contains(&key),
        "only hashes leave the key Secret"
    );

    let status = api.status.clone().unwrap();
    assert_eq!(status.bound_roles, ["analyst", "viewer"]);
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://sluice-sales.{}.svc", h.namespace).as_str())
    );
    for type_ in [status::CONFIG_VALID, status::AVAILABLE] {
        assert_eq!(condition(&api, type_).unwrap().status, "True", "{type_}");
    }
    assert_eq!(
        condition(&api, status::PROGRESSING).unwrap().reason,
        status::reason::ROLLOUT_COMPLETE
    );

    let role = eventually("ApiRole analyst status", || async {
        let role = h.api::<ApiRole>().get("analyst").await.ok()?;
        role.status.clone().filter(|s| s.keys == Some(1))
    })
    .await;
    assert_eq!(role.bound_data_apis, ["sales"]);
    assert_eq!(role.key_secrets, ["analyst-key-dashboard"]);
}

/// The DataApi `name` as a watch sees it, change by change; `watching` fires once the watch is
/// established, so no later write can be missed.
fn data_api_states(
    apis: Api<DataApi>,
    name: &str,
    watching: tokio::sync::oneshot::Sender<()>,
) -> impl futures::Stream<Item = DataApi> {
    use futures::StreamExt;
    use kube::runtime::watcher;

    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut watching = Some(watching);
    watcher(apis, config).filter_map(move |event| {
        let api = match event.expect("the DataApi watch works") {
            watcher::Event::InitDone => {
                if let Some(watching) = watching.take() {
                    let _ = watching.send(());
                }
                None
            }
            watcher::Event::Apply(api) | watcher::Event::InitApply(api) => Some(api),
            watcher::Event::Init | watcher::Event::Delete(_) => None,
        };
        futures::future::ready(api)
    })
}

/// Every distinct `(ConfigValid, Progressing, Ready)` status triple a watch sees on DataApi `name`,
/// in order, until `Ready=True` for the current generation. `watching` fires once the watch is
/// established, so no later write can be missed.
async fn condition_walk(
    apis: Api<DataApi>,
    name: String,
    watching: tokio::sync::oneshot::Sender<()>,
) -> Vec<(String, String, String)> {
    use futures::StreamExt;

    let mut states = std::pin::pin!(data_api_states(apis, &name, watching));
    let mut walk: Vec<(String, String, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Ok(Some(api)) = tokio::time::timeout_at(deadline, states.next()).await {
        let status_of = |type_: &str| condition(&api, type_).map(|c| c.status.clone()).unwrap_or_default();
        let step = (
            status_of(status::CONFIG_VALID),
            status_of(status::PROGRESSING),
            status_of(status::READY),
        );
        if walk.last() != Some(&step) {
            walk.push(step.clone());
        }
        let current = condition(&api, status::READY).is_some_and(|c| c.observed_generation == api.metadata.generation);
        if step.2 == "True" && current {
            return walk;
        }
    }
    panic!("DataApi {name} did not become Ready within {WAIT:?}; statuses seen: {walk:?}");
}

#[tokio::test]
async fn conditions_walk_from_config_valid_through_progressing_to_ready() {
    let h = harness("op-walk").await;
    h.dsn_secret("sales-db", "postgres://u:p@db:5432/sales").await;
    h.apply_yaml::<ApiRole>(VIEWER).await;
    let (established, watch_ready) = tokio::sync::oneshot::channel();
    let walking = tokio::spawn(condition_walk(h.api::<DataApi>(), "sales".into(), established));
    watch_ready.await.expect("the watch starts");
    h.apply_yaml::<DataApi>(DATA_API).await;

    let walk = walking.await.unwrap();

    let rolling_out = ("True".to_owned(), "True".to_owned(), "False".to_owned());
    let ready = ("True".to_owned(), "False".to_owned(), "True".to_owned());
    assert!(
        walk.contains(&rolling_out),
        "ConfigValid=True, Progressing=True, Ready=False never seen: {walk:?}"
    );
    assert_eq!(walk.last(), Some(&ready), "{walk:?}");
    let progressing_at = walk.iter().position(|step| *step == rolling_out).unwrap();
    assert!(
        walk[progressing_at..].iter().all(|(valid, _, _)| valid == "True"),
        "{walk:?}"
    );
}

/// Every (ConfigValid reason, Ready status) the DataApi `name` shows from when the watch is
/// established (`watching` fires) until the task is aborted.
async fn record_statuses(
    apis: Api<DataApi>,
    name: String,
    watching: tokio::sync::oneshot::Sender<()>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    use futures::StreamExt;

    let mut states = std::pin::pin!(data_api_states(apis, &name, watching));
    while let Some(api) = states.next().await {
        let config_valid = condition(&api, status::CONFIG_VALID).map(|c| c.reason.clone());
        let ready = condition(&api, status::READY).map(|c| c.status.clone());
        seen.lock()
            .unwrap()
            .push((config_valid.unwrap_or_default(), ready.unwrap_or_default()));
    }
}

/// Generating a key is the operator's own work: waiting for it is not reported as a problem,
/// neither on a new DataApi nor on a Ready one whose role gains a key.
#[tokio::test]
async fn waiting_for_a_generated_key_is_not_reported_and_a_ready_data_api_stays_ready() {
    let h = harness("op-keywait").await;
    h.dsn_secret("sales-db", "postgres://u:p@db:5432/sales").await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (established, watch_ready) = tokio::sync::oneshot::channel();
    let recording = tokio::spawn(record_statuses(
        h.api::<DataApi>(),
        "sales".into(),
        established,
        seen.clone(),
    ));
    watch_ready.await.expect("the watch starts");
    h.apply_yaml::<ApiRole>(VIEWER).await;
    h.apply_yaml::<ApiRole>(ANALYST).await;
    h.apply_yaml::<DataApi>(DATA_API).await;
    wait_condition(&h, "sales", status::READY, "True").await;
    let on_creation: Vec<_> = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        on_creation
            .iter()
            .all(|(config_valid, _)| config_valid != status::reason::KEY_PENDING),
        "a new DataApi reported waiting for its role's key: {on_creation:?}"
    );

    h.api::<ApiRole>()
        .patch(
            "analyst",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "apiKeys": [{ "name": "dashboard" }, { "name": "ci" }] } })),
        )
        .await
        .unwrap();
    eventually("the config to carry the new key", || async {
        let config = rendered_config(&h).await;
        config.api_keys.iter().any(|key| key.id == "analyst/ci").then_some(())
    })
    .await;
    // Any status write the change caused comes with or before the config.
    tokio::time::sleep(Duration::from_secs(2)).await;
    recording.abort();
    let on_new_key = seen.lock().unwrap().clone();
    assert!(
        on_new_key.iter().all(|(_, ready)| ready == "True"),
        "the DataApi left Ready while its role gained a key: {on_new_key:?}"
    );
}

#[tokio::test]
async fn a_missing_dsn_secret_is_reported_and_fixed_by_creating_it() {
    let h = harness("op-secret").await;
    h.apply_yaml::<ApiRole>(VIEWER).await;
    h.apply_yaml::<DataApi>(DATA_API).await;

    let api = wait_condition(&h, "sales", status::CONFIG_VALID, "False").await;
    let invalid = condition(&api, status::CONFIG_VALID).unwrap();
    assert_eq!(invalid.reason, status::reason::SECRET_NOT_FOUND);
    assert_eq!(
        invalid.message,
        format!(
            "spec.database.connectionSecretRef: secret \"sales-db\" not found in namespace {}; create it with key \"url\"",
            h.namespace
        )
    );
    assert_eq!(condition(&api, status::READY).unwrap().status, "False");
    assert!(
        h.api::<Deployment>().get_opt("sluice-sales").await.unwrap().is_none(),
        "no Deployment while invalid"
    );

    h.apply_yaml::<Secret>("apiVersion: v1\nkind: Secret\nmetadata: { name: sales-db }\nstringData: { other: x }")
        .await;
    let api = eventually("SecretKeyMissing", || async {
        let api = h.api::<DataApi>().get("sales").await.ok()?;
        (condition(&api, status::CONFIG_VALID)?.reason == status::reason::SECRET_KEY_MISSING).then_some(api)
    })
    .await;
    assert_eq!(
        condition(&api, status::CONFIG_VALID).unwrap().message,
        format!(
            "spec.database.connectionSecretRef: secret \"sales-db\" has no key \"url\" in namespace {}",
            h.namespace
        )
    );

    h.dsn_secret("sales-db", "postgres://u:p@db/sales").await;
    wait_condition(&h, "sales", status::READY, "True").await;
}

#[tokio::test]
async fn an_invalid_config_over_serving_pods_keeps_them_and_says_so() {
    let h = harness("op-held").await;
    let ready = ready_sales(&h).await;
    let deployment = h.api::<Deployment>().get("sluice-sales").await.unwrap();

    h.api::<Secret>()
        .delete("sales-db", &DeleteParams::default())
        .await
        .unwrap();
    let api = wait_condition(&h, "sales", status::CONFIG_VALID, "False").await;

    let available = condition(&api, status::AVAILABLE).unwrap();
    assert_eq!(
        (
            available.status.as_str(),
            available.reason.as_str(),
            available.message.as_str()
        ),
        ("True", status::reason::REPLICAS_AVAILABLE, "2/2 replicas available")
    );
    let progressing = condition(&api, status::PROGRESSING).unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", status::reason::ROLLOUT_HELD)
    );
    let not_ready = condition(&api, status::READY).unwrap();
    assert_eq!(
        (not_ready.status.as_str(), not_ready.reason.as_str()),
        ("False", status::reason::SECRET_NOT_FOUND)
    );
    assert!(
        not_ready
            .message
            .ends_with("; the pods keep serving the last valid configuration"),
        "{}",
        not_ready.message
    );
    let (was, now) = (ready.status.unwrap(), api.status.clone().unwrap());
    assert_eq!((now.replicas, now.ready_replicas), (Some(2), Some(2)));
    assert_eq!(
        (&now.url, &now.rest_url, &now.mcp_url, &now.bound_roles),
        (&was.url, &was.rest_url, &was.mcp_url, &was.bound_roles)
    );
    let kept = h.api::<Deployment>().get("sluice-sales").await.unwrap();
    assert_eq!(
        template_hash(&kept),
        template_hash(&deployment),
        "the pods were left alone"
    );

    h.dsn_secret("sales-db", "postgres://u:p@db:5432/sales").await;
    let api = wait_condition(&h, "sales", status::READY, "True").await;
    assert_eq!(
        condition(&api, status::PROGRESSING).unwrap().reason,
        status::reason::ROLLOUT_COMPLETE
    );
}

async fn resource_versions(h: &Harness) -> Vec<(String, String)> {
    let rv = |kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (
            format!("{kind}/{}", meta.name.clone().unwrap()),
            meta.resource_version.clone().unwrap(),
        )
    };
    vec![
        rv("DataApi", &h.api::<DataApi>().get("sales").await.unwrap().metadata),
        rv("ApiRole", &h.api::<ApiRole>().get("analyst").await.unwrap().metadata),
        rv(
            "Deployment",
            &h.api::<Deployment>().get("sluice-sales").await.unwrap().metadata,
        ),
        rv(
            "Service",
            &h.api::<Service>().get("sluice-sales").await.unwrap().metadata,
        ),
        rv(
            "PodDisruptionBudget",
            &h.api::<PodDisruptionBudget>()
                .get("sluice-sales")
                .await
                .unwrap()
                .metadata,
        ),
        rv(
            "Secret",
            &h.api::<Secret>().get("sluice-sales-config").await.unwrap().metadata,
        ),
        rv(
            "Secret",
            &h.api::<Secret>().get("analyst-key-dashboard").await.unwrap().metadata,
        ),
    ]
}

async fn set_image(h: &Harness, data_api: &str, image: &str) {
    h.api::<DataApi>()
        .patch(
            data_api,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "runtime": { "image": image } } })),
        )
        .await
        .unwrap();
}

/// `(type, reason)` of the events about the object `kind`/`name`, oldest first.
async fn events_about(h: &Harness, kind: &str, name: &str) -> Vec<(String, String)> {
    let events = h.api::<Event>().list(&Default::default()).await.unwrap();
    let mut about: Vec<&Event> = events
        .items
        .iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .collect();
    about.sort_by_key(|e| e.metadata.creation_timestamp.clone());
    about
        .into_iter()
        .map(|e| {
            (
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
            )
        })
        .collect()
}

async fn wait_event(h: &Harness, kind: &str, name: &str, reason: &str) -> Vec<(String, String)> {
    eventually(&format!("a {reason} event about {kind} {name}"), || async {
        let events = events_about(h, kind, name).await;
        events.iter().any(|(_, r)| r == reason).then_some(events)
    })
    .await
}

#[tokio::test]
async fn events_tell_what_changed_and_no_op_reconciles_stay_quiet() {
    let h = harness("op-events").await;
    h.apply_yaml::<ApiRole>(VIEWER).await;
    h.apply_yaml::<ApiRole>(ANALYST).await;
    h.apply_yaml::<DataApi>(DATA_API).await;

    let events = wait_event(&h, "DataApi", "sales", "SecretNotFound").await;
    assert!(
        events.contains(&("Warning".into(), "SecretNotFound".into())),
        "{events:?}"
    );
    wait_event(&h, "ApiRole", "analyst", "KeyGenerated").await;

    h.dsn_secret("sales-db", "postgres://u:p@db/sales").await;
    wait_condition(&h, "sales", status::READY, "True").await;
    let events = wait_event(&h, "DataApi", "sales", "Created").await;
    assert!(
        events.contains(&("Normal".into(), status::reason::RESOLVED.into())),
        "config turned valid: {events:?}"
    );

    // Several resyncs of unchanged objects publish nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = events_about(&h, "DataApi", "sales").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        events_about(&h, "DataApi", "sales").await,
        settled,
        "no-op reconciles published events"
    );

    set_image(&h, "sales", "sluice-runtime:next").await;
    wait_event(&h, "DataApi", "sales", "RollingOut").await;
}

#[tokio::test]
async fn reconciling_an_unchanged_object_writes_nothing() {
    let h = harness("op-idem").await;
    ready_sales(&h).await;
    // Let the rollout's last status updates settle before taking the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = resource_versions(&h).await;

    // The harness resyncs every 2 s: several full reconciles of both objects happen here.
    tokio::time::sleep(Duration::from_secs(7)).await;

    assert_eq!(
        resource_versions(&h).await,
        before,
        "a no-op reconcile changed an object"
    );
}

fn template_hash(deployment: &Deployment) -> (Option<i64>, String) {
    let annotations = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    (
        deployment.metadata.generation,
        annotations[RESTART_HASH_ANNOTATION].clone(),
    )
}

#[tokio::test]
async fn a_role_change_rewrites_only_the_config_and_an_image_change_rolls_the_pods() {
    let h = harness("op-roll").await;
    ready_sales(&h).await;
    let deployment = h.api::<Deployment>().get("sluice-sales").await.unwrap();
    let config_before = rendered_config(&h).await;

    h.api::<ApiRole>()
        .patch("analyst", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "rules": [{ "tables": ["customers"], "verbs": ["read"], "fields": { "deny": ["email", "phone"] } }] } })))
        .await
        .unwrap();
    let config_after = eventually("the config Secret to carry the new rule", || async {
        let config = rendered_config(&h).await;
        (config != config_before).then_some(config)
    })
    .await;
    let deny = &config_after.roles["analyst"].rules[0].fields.as_ref().unwrap().deny;
    assert_eq!(deny, &["email", "phone"]);
    let unchanged = h.api::<Deployment>().get("sluice-sales").await.unwrap();
    assert_eq!(
        template_hash(&unchanged),
        template_hash(&deployment),
        "a role change must not roll the pods"
    );
    assert_eq!(
        unchanged.spec.as_ref().unwrap().template,
        deployment.spec.as_ref().unwrap().template
    );

    set_image(&h, "sales", "sluice-runtime:next").await;
    let rolled = eventually("the Deployment to roll", || async {
        let d = h.api::<Deployment>().get("sluice-sales").await.ok()?;
        (template_hash(&d).1 != template_hash(&deployment).1).then_some(d)
    })
    .await;
    let pod = rolled.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("sluice-runtime:next"));
}

/// The operator reads a Secret once per version: a new value must still reach the pods (a new
/// connection string rolls them) and the config (a new key's hash).
#[tokio::test]
async fn a_changed_secret_value_rolls_the_pods_or_rehashes_the_key() {
    let h = harness("op-rotate").await;
    ready_sales(&h).await;
    let deployment = h.api::<Deployment>().get("sluice-sales").await.unwrap();

    h.dsn_secret("sales-db", "postgres://u:rotated@db:5432/sales").await;
    eventually("the Deployment to roll for the new connection string", || async {
        let d = h.api::<Deployment>().get("sluice-sales").await.ok()?;
        (template_hash(&d).1 != template_hash(&deployment).1).then_some(())
    })
    .await;

    let partner_key = |value: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{ name: partner-key }}\nstringData: {{ key: \"{value}\" }}")
    };
    h.apply_yaml::<Secret>(&partner_key("sluice_partner_one\\n")).await;
    h.api::<ApiRole>()
        .patch(
            "viewer",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "apiKeys": [{ "name": "partner", "secretRef": { "name": "partner-key", "key": "key" } }] } })),
        )
        .await
        .unwrap();
    let partner_hash = || async {
        let config = rendered_config(&h).await;
        config
            .api_keys
            .iter()
            .find(|k| k.id == "viewer/partner")
            .map(|k| k.sha256.clone())
    };
    let expected = sluice_crds::hash_api_key("sluice_partner_one");
    eventually("the partner key's hash, without its newline", || async {
        (partner_hash().await? == expected).then_some(())
    })
    .await;

    h.apply_yaml::<Secret>(&partner_key("sluice_partner_two")).await;
    let expected = sluice_crds::hash_api_key("sluice_partner_two");
    eventually("the rotated partner key's hash", || async {
        (partner_hash().await? == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_data_api_leaves_no_children() {
    let h = harness("op-delete").await;
    ready_sales(&h).await;

    h.api::<DataApi>()
        .delete("sales", &DeleteParams::background())
        .await
        .unwrap();

    eventually("the garbage collector to remove every child", || async {
        let gone = h.api::<Deployment>().get_opt("sluice-sales").await.ok()?.is_none()
            && h.api::<Service>().get_opt("sluice-sales").await.ok()?.is_none()
            && h.api::<PodDisruptionBudget>()
                .get_opt("sluice-sales")
                .await
                .ok()?
                .is_none()
            && h.api::<Secret>().get_opt("sluice-sales-config").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_key_secret_is_regenerated_with_a_new_key_and_removed_keys_are_revoked() {
    let h = harness("op-keys").await;
    h.apply_yaml::<ApiRole>(ANALYST).await;
    let secrets = h.api::<Secret>();
    let first = eventually("the generated key", || async {
        secrets.get_opt("analyst-key-dashboard").await.ok().flatten()
    })
    .await;

    secrets
        .delete("analyst-key-dashboard", &DeleteParams::default())
        .await
        .unwrap();
    let second = eventually("the key to be regenerated", || async {
        let secret = secrets.get_opt("analyst-key-dashboard").await.ok().flatten()?;
        (secret.metadata.uid != first.metadata.uid).then_some(secret)
    })
    .await;
    assert_ne!(secret_text(&first, KEY_DATA_KEY), secret_text(&second, KEY_DATA_KEY));

    h.api::<ApiRole>()
        .patch(
            "analyst",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "apiKeys": null } })),
        )
        .await
        .unwrap();
    eventually("the removed key to be revoked", || async {
        secrets
            .get_opt("analyst-key-dashboard")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let role = eventually("the role to report it is bound to nothing", || async {
        let role = h.api::<ApiRole>().get("analyst").await.ok()?;
        role.status.clone().filter(|s| s.keys == Some(0))
    })
    .await;
    let ready = role.conditions.iter().find(|c| c.type_ == status::READY).unwrap();
    assert_eq!(ready.reason, status::reason::DATA_API_NOT_FOUND);
    assert!(ready.message.contains("\"sales\" not found"), "{}", ready.message);
}

#[tokio::test]
async fn odd_specs_end_in_a_clear_condition() {
    let h = harness("op-odd").await;
    h.dsn_secret("db", "postgres://u:p@db/x").await;
    let long_name = "a".repeat(60);
    let cases = [
        (
            long_name.as_str(),
            "  database: { engine: postgres, connectionSecretRef: { name: db, key: url } }",
            status::reason::INVALID_NAME,
        ),
        (
            "anon",
            "  database: { engine: postgres, connectionSecretRef: { name: db, key: url } }\n  auth: { anonymousRole: ghost }",
            status::reason::INVALID_SPEC,
        ),
        (
            "jwt",
            "  database: { engine: postgres, connectionSecretRef: { name: db, key: url } }\n  auth: { jwt: { issuer: i, audiences: [a], hmacSecretRef: { name: nope, key: k } } }",
            status::reason::SECRET_NOT_FOUND,
        ),
        (
            "keyref",
            "  database: { engine: postgres, connectionSecretRef: { name: db, key: url } }",
            status::reason::SECRET_NOT_FOUND,
        ),
    ];
    h.apply_yaml::<ApiRole>(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRole\nmetadata: { name: byo }\nspec: { dataApis: [keyref, missing-api], apiKeys: [{ name: ci, secretRef: { name: ci-token, key: token } }] }",
    )
    .await;
    for (name, spec, _) in &cases {
        h.apply_yaml::<DataApi>(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: {{ name: {name} }}\nspec:\n{spec}"
        ))
        .await;
    }
    for (name, _, reason) in cases {
        let api = wait_condition(&h, name, status::CONFIG_VALID, "False").await;
        let invalid = condition(&api, status::CONFIG_VALID).unwrap();
        assert_eq!(invalid.reason, reason, "{name}: {}", invalid.message);
        assert!(!invalid.message.is_empty());
    }
    let role = eventually("ApiRole byo to report the missing DataApi", || async {
        let role = h.api::<ApiRole>().get("byo").await.ok()?;
        role.status.clone().filter(|s| !s.conditions.is_empty())
    })
    .await;
    assert!(
        role.conditions[0].message.contains("\"missing-api\" not found"),
        "{}",
        role.conditions[0].message
    );

    // Empty lists everywhere are a valid, if useless, configuration.
    h.apply_yaml::<ApiRole>(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRole\nmetadata: { name: empty }\nspec: { dataApis: [empty-lists], rules: [], apiKeys: [], subjects: { jwtRoles: [] } }",
    )
    .await;
    h.apply_yaml::<DataApi>(
        "apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: { name: empty-lists }\nspec:\n  database: { engine: postgres, connectionSecretRef: { name: db, key: url }, schemas: [], include: [], exclude: [] }\n  queries: []\n  auth: { anonymousRole: empty }",
    )
    .await;
    let api = wait_condition(&h, "empty-lists", status::READY, "True").await;
    assert_eq!(api.status.unwrap().bound_roles, ["empty"]);

    // Fixing one object fixes it alone; the others were never stalled by it.
    h.apply_yaml::<Secret>(
        "apiVersion: v1\nkind: Secret\nmetadata: { name: ci-token }\nstringData: { token: byo-secret-token }",
    )
    .await;
    wait_condition(&h, "keyref", status::READY, "True").await;

    let created = h
        .api::<DataApi>()
        .create(
            &PostParams::default(),
            &serde_yaml::from_str("apiVersion: sluice.dev/v1alpha1\nkind: DataApi\nmetadata: { name: huge }\nspec: { database: { engine: sqlite, path: /x }, runtime: { replicas: 5 } }").unwrap(),
        )
        .await;
    let error = created.expect_err("the API server refuses SQLite with several replicas");
    assert!(
        error.to_string().contains("SQLite is a single-writer file database"),
        "{error}"
    );
}

/// The value under `key` in `secret`, as text.
fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    Some(String::from_utf8_lossy(&value.0).into_owned())
}
