//! The Kubernetes objects that run one DataApi, built as plain values from the DataApi and its
//! resolved config. Pure: no API calls, so every field is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use sluice_crds::config::{CONFIG_FILE_NAME, DATABASE_URL_ENV, JWT_HMAC_SECRET_ENV};
use sluice_crds::{DataApi, RuntimeConfig};

/// Port the runtime container listens on.
pub const RUNTIME_PORT: i32 = 8080;
/// Where the config Secret is mounted in the runtime container.
pub const CONFIG_MOUNT_PATH: &str = "/etc/sluice";
/// Annotation on the pod template whose change rolls the pods; it hashes only the inputs the
/// runtime cannot pick up by hot-reloading its config file.
pub const RESTART_HASH_ANNOTATION: &str = "sluice.dev/restart-hash";
/// User and group the runtime runs as (the distroless `nonroot` user).
const RUNTIME_UID: i64 = 65532;
/// Seconds a terminating pod gets beyond `spec.limits.shutdownTimeoutSeconds`: after the runtime
/// has closed its last connection it still flushes the audit log and exits, and the kubelet kills
/// it when the grace period ends.
const TERMINATION_GRACE_MARGIN_SECONDS: i64 = 10;

/// Names of the children of one DataApi.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildNames {
    /// Deployment and Service.
    pub workload: String,
    /// Secret holding the rendered runtime config.
    pub config_secret: String,
}

/// Longest DataApi name whose children's names stay valid (Service names are DNS-1035 labels
/// of at most 63 characters, and get the `sluice-` prefix).
pub const MAX_DATA_API_NAME_LEN: usize = 63 - "sluice-".len();

impl ChildNames {
    /// The children's names for the DataApi `name`.
    pub fn for_data_api(name: &str) -> Self {
        Self {
            workload: format!("sluice-{name}"),
            config_secret: format!("sluice-{name}-config"),
        }
    }
}

/// Why a DataApi's name cannot name its children, if it cannot.
pub fn check_name(name: &str) -> Result<(), String> {
    let dns_label = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-');
    if name.len() > MAX_DATA_API_NAME_LEN || !dns_label {
        return Err(format!(
            "DataApi name \"{name}\" must be a DNS-1035 label of at most {MAX_DATA_API_NAME_LEN} characters \
             (lowercase letters, digits and '-', starting with a letter) so that its Service \"sluice-<name>\" is valid; \
             recreate it under a shorter name"
        ));
    }
    Ok(())
}

/// Labels shared by every child of the DataApi `name`.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "sluice-runtime".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        ("app.kubernetes.io/component".to_owned(), "data-api".to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "sluice".to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "sluice-operator".to_owned()),
    ])
}

/// Labels that select the DataApi's pods; a subset of [`labels`] that never changes.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "sluice-runtime".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
    ])
}

fn metadata(api: &DataApi, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: api.namespace(),
        labels: Some(labels(&api.name_any())),
        owner_references: Some(vec![owner_reference(api)]),
        ..ObjectMeta::default()
    }
}

/// The owner reference that makes the garbage collector delete a child with its DataApi.
pub fn owner_reference(api: &DataApi) -> OwnerReference {
    api.controller_owner_ref(&())
        .expect("a DataApi read from the API server has a uid")
}

/// The Secret carrying the rendered config. A Secret, not a ConfigMap: it holds key hashes.
pub fn config_secret(api: &DataApi, config: &RuntimeConfig) -> Secret {
    let names = ChildNames::for_data_api(&api.name_any());
    Secret {
        metadata: metadata(api, &names.config_secret),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            CONFIG_FILE_NAME.to_owned(),
            ByteString(config.to_canonical_json().into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// What the runtime pods need that the config file cannot carry, found by dereferencing the
/// DataApi's Secrets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodInputs {
    /// The runtime image.
    pub image: String,
    /// SHA-256 of the database URL's value, so a changed password rolls the pods.
    pub database_url_digest: Option<String>,
    /// SHA-256 of the JWT HMAC secret's value.
    pub jwt_secret_digest: Option<String>,
    /// `runtime.podTemplate.volumes`, checked to be valid Volumes (see [`pod_volumes`]).
    pub extra_volumes: Vec<Volume>,
}

/// The DataApi's extra pod volumes, or which one is malformed.
pub fn pod_volumes(api: &DataApi) -> Result<Vec<Volume>, String> {
    let raw = api
        .spec
        .runtime
        .pod_template
        .as_ref()
        .map(|t| t.volumes.as_slice())
        .unwrap_or_default();
    raw.iter()
        .enumerate()
        .map(|(index, volume)| {
            serde_json::from_value(volume.clone())
                .map_err(|e| format!("spec.runtime.podTemplate.volumes[{index}] is not a valid Volume: {e}"))
        })
        .collect()
}

/// The hash of everything that needs new pods to take effect: the image, the engine and how to
/// reach the database, pool settings, and the secret values passed as environment variables.
pub fn restart_hash(api: &DataApi, inputs: &PodInputs) -> String {
    let spec = &api.spec;
    let fingerprint = serde_json::json!({
        "image": inputs.image,
        "engine": spec.database.engine,
        "connectionSecretRef": spec.database.connection_secret_ref,
        "path": spec.database.path,
        "pool": spec.database.pool,
        "databaseUrl": inputs.database_url_digest,
        "jwtSecretRef": spec.auth.jwt.as_ref().and_then(|jwt| jwt.hmac_secret_ref.clone()),
        "jwtSecret": inputs.jwt_secret_digest,
        "restEnabled": spec.rest.enabled,
        "mcpEnabled": spec.mcp.enabled,
    });
    hex::encode(&Sha256::digest(fingerprint.to_string().as_bytes())[..16])
}

fn secret_env(name: &str, secret: &sluice_crds::common::SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("256Mi".to_owned()))])),
        ..ResourceRequirements::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The runtime Deployment.
pub fn deployment(api: &DataApi, inputs: &PodInputs) -> Deployment {
    let name = api.name_any();
    let names = ChildNames::for_data_api(&name);
    let spec = &api.spec;
    let overrides = spec.runtime.pod_template.clone().unwrap_or_default();

    let mut env = Vec::new();
    if let Some(secret) = &spec.database.connection_secret_ref {
        env.push(secret_env(DATABASE_URL_ENV, secret));
    }
    if let Some(secret) = spec.auth.jwt.as_ref().and_then(|jwt| jwt.hmac_secret_ref.as_ref()) {
        env.push(secret_env(JWT_HMAC_SECRET_ENV, secret));
    }
    env.push(EnvVar {
        name: "SLUICE_LOG_FORMAT".to_owned(),
        value: Some("json".to_owned()),
        ..EnvVar::default()
    });

    let mut volume_mounts = vec![
        VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_MOUNT_PATH.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    volume_mounts.extend(overrides.volume_mounts.iter().cloned());
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            // Mounted whole, not through subPath, so the kubelet refreshes the file when the
            // operator rewrites the Secret and the runtime can hot-reload it.
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.config_secret.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    volumes.extend(inputs.extra_volumes.iter().cloned());

    let container = Container {
        name: "runtime".to_owned(),
        image: Some(inputs.image.clone()),
        args: Some(vec![
            "serve".to_owned(),
            "--config".to_owned(),
            format!("{CONFIG_MOUNT_PATH}/{CONFIG_FILE_NAME}"),
            "--listen".to_owned(),
            format!("0.0.0.0:{RUNTIME_PORT}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: RUNTIME_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: Some(env),
        resources: Some(spec.runtime.resources.clone().unwrap_or_else(default_resources)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    };

    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels(&name));
    let mut pod_annotations = overrides.annotations.clone();
    pod_annotations.insert(RESTART_HASH_ANNOTATION.to_owned(), restart_hash(api, inputs));

    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        automount_service_account_token: Some(false),
        service_account_name: overrides.service_account_name.clone(),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNTIME_UID),
            run_as_group: Some(RUNTIME_UID),
            fs_group: Some(RUNTIME_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        node_selector: (!overrides.node_selector.is_empty()).then(|| overrides.node_selector.clone()),
        tolerations: non_empty(overrides.tolerations.clone()),
        affinity: overrides.affinity.clone(),
        topology_spread_constraints: non_empty(overrides.topology_spread_constraints.clone()),
        priority_class_name: overrides.priority_class_name.clone(),
        image_pull_secrets: non_empty(overrides.image_pull_secrets.clone()),
        termination_grace_period_seconds: Some(
            i64::from(spec.limits.shutdown_timeout_seconds) + TERMINATION_GRACE_MARGIN_SECONDS,
        ),
        ..PodSpec::default()
    };

    Deployment {
        metadata: metadata(api, &names.workload),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.runtime.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn non_empty<T>(list: Vec<T>) -> Option<Vec<T>> {
    if list.is_empty() { None } else { Some(list) }
}

/// The Service in front of the runtime pods.
pub fn service(api: &DataApi) -> Service {
    let name = api.name_any();
    Service {
        metadata: metadata(api, &ChildNames::for_data_api(&name).workload),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// A PodDisruptionBudget keeping all but one pod up during voluntary disruptions, when there
/// is more than one replica (with one, a PDB would block node drains forever).
pub fn disruption_budget(api: &DataApi) -> Option<PodDisruptionBudget> {
    (api.spec.runtime.replicas > 1).then(|| {
        let name = api.name_any();
        PodDisruptionBudget {
            metadata: metadata(api, &ChildNames::for_data_api(&name).workload),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&name)),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            status: None,
        }
    })
}

/// In-cluster URLs of a DataApi's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    /// The Service's base URL.
    pub base: String,
    /// REST base URL, when REST is enabled.
    pub rest: Option<String>,
    /// MCP endpoint URL, when MCP is enabled.
    pub mcp: Option<String>,
    /// OpenAPI document URL, when REST is enabled.
    pub openapi: Option<String>,
}

/// The in-cluster URLs of `api`'s endpoints.
pub fn urls(api: &DataApi) -> Urls {
    let base = format!(
        "http://{}.{}.svc",
        ChildNames::for_data_api(&api.name_any()).workload,
        api.namespace().unwrap_or_default()
    );
    let rest = api
        .spec
        .rest
        .enabled
        .then(|| format!("{base}{}", api.spec.rest.base_path.trim_end_matches('/')));
    Urls {
        openapi: rest.as_ref().map(|rest| format!("{rest}/openapi.json")),
        mcp: api.spec.mcp.enabled.then(|| format!("{base}{}", api.spec.mcp.path)),
        rest,
        base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::KeyHashes;

    fn sales(extra: &str) -> DataApi {
        let mut api: DataApi = serde_yaml::from_str(&format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: DataApi
metadata: {{ name: sales, namespace: team-a }}
spec:
  database: {{ engine: postgres, connectionSecretRef: {{ name: sales-db, key: url }} }}
  auth: {{ jwt: {{ issuer: i, audiences: [a], hmacSecretRef: {{ name: jwt, key: secret }} }} }}
{extra}"#
        ))
        .unwrap();
        api.metadata.uid = Some("uid-1".into());
        api
    }

    fn inputs() -> PodInputs {
        PodInputs {
            image: "sluice-runtime:test".into(),
            ..PodInputs::default()
        }
    }

    fn pod(deployment: &Deployment) -> PodSpec {
        deployment.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn pods_run_restricted() {
        let pod = pod(&deployment(&sales(""), &inputs()));
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();

        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn secrets_reach_the_pod_as_references_and_config_as_a_read_only_mount() {
        let pod = pod(&deployment(&sales(""), &inputs()));
        let container = &pod.containers[0];
        let env = container.env.as_ref().unwrap();
        let reference = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .unwrap()
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .clone()
                .unwrap()
        };

        assert_eq!(
            (reference(DATABASE_URL_ENV).name, reference(DATABASE_URL_ENV).key),
            ("sales-db".into(), "url".into())
        );
        assert_eq!(reference(JWT_HMAC_SECRET_ENV).name, "jwt");
        assert!(
            env.iter().all(|e| e.value.as_deref() != Some("url")),
            "no secret values inline"
        );
        let mount = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "config")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (CONFIG_MOUNT_PATH, Some(true))
        );
        assert!(mount.sub_path.is_none(), "subPath mounts never see Secret updates");
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "config")
            .unwrap();
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("sluice-sales-config")
        );
        assert_eq!(
            container.args.as_ref().unwrap()[..3],
            [
                "serve".to_owned(),
                "--config".to_owned(),
                format!("{CONFIG_MOUNT_PATH}/{CONFIG_FILE_NAME}")
            ]
        );
        assert_eq!(
            container
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            container
                .liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
    }

    #[test]
    fn children_carry_labels_and_a_controller_owner_reference() {
        let api = sales("");
        let config = sluice_crds::resolve(&api, &[], &KeyHashes::new()).unwrap();
        let secret = config_secret(&api, &config);
        let deployment = deployment(&api, &inputs());
        let service = service(&api);

        for meta in [&secret.metadata, &deployment.metadata, &service.metadata] {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("DataApi", "uid-1", Some(true))
            );
            assert_eq!(meta.labels.as_ref().unwrap()["app.kubernetes.io/instance"], "sales");
            assert_eq!(
                meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
                "sluice-operator"
            );
        }
        let stored = String::from_utf8(secret.data.unwrap()[CONFIG_FILE_NAME].0.clone()).unwrap();
        assert_eq!(serde_json::from_str::<RuntimeConfig>(&stored).unwrap(), config);
        assert_eq!(service.spec.unwrap().selector.unwrap(), selector_labels("sales"));
    }

    #[test]
    fn overrides_are_merged_but_cannot_weaken_security_or_steal_labels() {
        let api = sales(
            r#"  runtime:
    replicas: 3
    image: custom:1
    podTemplate:
      labels: { team: a, "app.kubernetes.io/instance": evil }
      nodeSelector: { pool: data }
      volumes: [{ name: data, emptyDir: {} }]
      volumeMounts: [{ name: data, mountPath: /data }]"#,
        );
        let inputs = PodInputs {
            extra_volumes: pod_volumes(&api).unwrap(),
            ..inputs()
        };
        let deployment = deployment(&api, &inputs);
        let template = deployment.spec.as_ref().unwrap().template.clone();
        let labels = template.metadata.unwrap().labels.unwrap();
        let pod = template.spec.unwrap();

        assert_eq!(labels["team"], "a");
        assert_eq!(labels["app.kubernetes.io/instance"], "sales");
        assert_eq!(pod.node_selector.unwrap()["pool"], "data");
        assert!(pod.volumes.unwrap().iter().any(|v| v.name == "data"));
        assert_eq!(deployment.spec.unwrap().replicas, Some(3));
        assert_eq!(
            pod.containers[0]
                .security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
    }

    #[test]
    fn a_malformed_extra_volume_is_reported_not_dropped() {
        let api = sales("  runtime:\n    podTemplate:\n      volumes: [{ name: data, emptyDir: 5 }]");

        let error = pod_volumes(&api).unwrap_err();

        assert!(
            error.starts_with("spec.runtime.podTemplate.volumes[0] is not a valid Volume"),
            "{error}"
        );
    }

    #[test]
    fn restart_hash_changes_only_for_what_needs_new_pods() {
        let base = restart_hash(&sales(""), &inputs());

        let mut role_like_change = sales("  rateLimit: { requestsPerMinute: 5 }\n  rest: { defaultPageSize: 7 }");
        role_like_change.spec.database.include = vec!["orders".into()];
        assert_eq!(
            restart_hash(&role_like_change, &inputs()),
            base,
            "hot-reloadable fields must not roll pods"
        );

        let new_image = PodInputs {
            image: "sluice-runtime:next".into(),
            ..inputs()
        };
        assert_ne!(restart_hash(&sales(""), &new_image), base);
        let new_password = PodInputs {
            database_url_digest: Some("other".into()),
            ..inputs()
        };
        assert_ne!(restart_hash(&sales(""), &new_password), base);
        let mut new_secret = sales("");
        new_secret.spec.database.connection_secret_ref.as_mut().unwrap().name = "sales-db-v2".into();
        assert_ne!(restart_hash(&new_secret, &inputs()), base);
    }

    #[test]
    fn pods_are_given_time_to_finish_requests_before_they_are_killed() {
        let default = pod(&deployment(&sales(""), &inputs()));
        assert_eq!(default.termination_grace_period_seconds, Some(20 + 10));
        let patient = pod(&deployment(
            &sales("  limits: { shutdownTimeoutSeconds: 45 }"),
            &inputs(),
        ));
        assert_eq!(patient.termination_grace_period_seconds, Some(45 + 10));
    }

    #[test]
    fn disruption_budget_only_with_more_than_one_replica() {
        assert!(disruption_budget(&sales("")).is_none());
        let budget = disruption_budget(&sales("  runtime: { replicas: 2 }")).unwrap();
        assert_eq!(budget.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn urls_follow_the_service_and_paths() {
        let urls = urls(&sales("  rest: { basePath: /v2/ }\n  mcp: { enabled: false }"));

        assert_eq!(urls.base, "http://sluice-sales.team-a.svc");
        assert_eq!(urls.rest.as_deref(), Some("http://sluice-sales.team-a.svc/v2"));
        assert_eq!(
            urls.openapi.as_deref(),
            Some("http://sluice-sales.team-a.svc/v2/openapi.json")
        );
        assert_eq!(urls.mcp, None);
    }

    #[test]
    fn names_that_cannot_name_a_service_are_refused_with_the_limit() {
        assert!(check_name("sales").is_ok());
        assert!(check_name(&"a".repeat(MAX_DATA_API_NAME_LEN)).is_ok());
        let error = check_name(&"a".repeat(MAX_DATA_API_NAME_LEN + 1)).unwrap_err();
        assert!(error.contains("at most 56 characters"), "{error}");
        assert!(check_name("sales.eu").is_err());
        assert!(check_name("9lives").is_err());
    }
}
