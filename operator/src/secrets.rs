//! What the operator derives from Secrets — the digest of a connection string, the hash of an
//! API key — read once per Secret version.
//!
//! The operator watches Secrets' metadata only. A reconcile asks [`SecretDigests`], which reads
//! a Secret from the API server only when the watch shows a resourceVersion it has not read yet,
//! and keeps the SHA-256 digests of the Secret's values, never the values: thousands of DataApis
//! sharing one connection Secret cost one read, not one per reconcile.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use crate::context::get_cached;

/// A Secret, as the metadata store names it.
type SecretRef = ObjectRef<PartialObjectMeta<Secret>>;

fn secret_ref(namespace: &str, name: &str) -> SecretRef {
    ObjectRef::new(name).within(namespace)
}

/// The digests of one value of a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueDigests {
    /// SHA-256 (hex) of the value as stored: moves the pods when a connection string changes.
    pub exact: String,
    /// SHA-256 (hex) of the value without surrounding whitespace: an API key's hash, as the
    /// runtime compares it (a key pasted into a Secret often ends with a newline).
    pub trimmed: String,
}

impl ValueDigests {
    fn of(value: &[u8]) -> Self {
        let text = String::from_utf8_lossy(value);
        Self {
            exact: sha256_hex(text.as_bytes()),
            trimmed: sluice_crds::hash_api_key(text.trim()),
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a lookup of one key of one Secret found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No such Secret in the namespace.
    NoSecret,
    /// The Secret exists without that key.
    NoKey,
    /// The key's value, as digests.
    Value(ValueDigests),
}

/// How long a version read (or created) stays remembered while the watch has not shown its
/// Secret: the operator remembers a key Secret it creates before the watch brings it.
const UNWATCHED_GRACE: Duration = Duration::from_secs(60);
/// Versions of Secrets no longer watched that may pile up before they are forgotten; forgetting
/// goes through every version, so it runs once per this many more rather than on every read.
const FORGET_EVERY: usize = 256;

/// The digests of every value of one version of a Secret.
#[derive(Debug)]
struct ReadVersion {
    resource_version: Option<String>,
    values: BTreeMap<String, ValueDigests>,
    read_at: Instant,
}

impl ReadVersion {
    fn of(secret: &Secret) -> Self {
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(key, value)| (key, value.0.as_slice()));
        let string_data = secret
            .string_data
            .iter()
            .flatten()
            .map(|(key, value)| (key, value.as_bytes()));
        Self {
            resource_version: secret.resource_version(),
            values: string_data
                .chain(data)
                .map(|(key, value)| (key.clone(), ValueDigests::of(value)))
                .collect(),
            read_at: Instant::now(),
        }
    }

    fn find(&self, key: &str) -> Found {
        self.values.get(key).cloned().map_or(Found::NoKey, Found::Value)
    }
}

/// Secrets' metadata as watched, and the digests of the versions read so far.
pub struct SecretDigests {
    client: Client,
    metadata: Store<PartialObjectMeta<Secret>>,
    read: Mutex<ReadVersions>,
}

/// The versions read so far, by Secret.
#[derive(Default)]
struct ReadVersions {
    versions: HashMap<SecretRef, ReadVersion>,
    /// How many were kept the last time deleted Secrets were forgotten. Secrets created faster
    /// than the watch shows them are all kept, so the next pass waits for `FORGET_EVERY` more
    /// rather than running again on every record while the watch catches up.
    kept: usize,
}

impl SecretDigests {
    /// Digests read through `client`, for the Secrets whose metadata `metadata` holds.
    pub fn new(client: Client, metadata: Store<PartialObjectMeta<Secret>>) -> Self {
        Self {
            client,
            metadata,
            read: Mutex::default(),
        }
    }

    /// The watched metadata of Secret `name` in `namespace`.
    pub fn metadata(&self, namespace: &str, name: &str) -> Option<Arc<PartialObjectMeta<Secret>>> {
        self.metadata.get(&secret_ref(namespace, name))
    }

    /// The watched metadata of every Secret.
    pub fn all_metadata(&self) -> Vec<Arc<PartialObjectMeta<Secret>>> {
        self.metadata.state()
    }

    /// The digests of `key` in Secret `name` of `namespace`. A Secret the watch has not shown is
    /// missing (its creation wakes the reconcilers that asked); one whose watched version was
    /// read before is answered from memory; otherwise it is read from the API server's watch
    /// cache once.
    pub async fn lookup(&self, namespace: &str, name: &str, key: &str) -> Result<Found, kube::Error> {
        let reference = secret_ref(namespace, name);
        let Some(watched) = self.metadata.get(&reference) else {
            return Ok(Found::NoSecret);
        };
        if let Some(found) = self.remembered(&reference, watched.resource_version().as_deref(), key) {
            return Ok(found);
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = get_cached(&secrets, name).await? else {
            return Ok(Found::NoSecret);
        };
        let read = ReadVersion::of(&secret);
        let found = read.find(key);
        self.record(reference, read);
        Ok(found)
    }

    /// Records the values of `secret` as the API server returned it (after the operator created
    /// it, say), so that version is never read back.
    pub fn remember(&self, secret: &Secret) {
        let reference = secret_ref(&secret.namespace().unwrap_or_default(), &secret.name_any());
        self.record(reference, ReadVersion::of(secret));
    }

    fn record(&self, reference: SecretRef, read: ReadVersion) {
        let mut read_versions = self.read.lock().expect("the Secret digests are never poisoned");
        let ReadVersions { versions, kept } = &mut *read_versions;
        // Deleted Secrets are forgotten once the record outgrows the Secrets that exist; a
        // Secret just created may not be watched yet, and is kept.
        if versions.len() > self.metadata.len().max(*kept) + FORGET_EVERY {
            versions.retain(|reference, read| {
                self.metadata.get(reference).is_some() || read.read_at.elapsed() < UNWATCHED_GRACE
            });
            *kept = versions.len();
        }
        versions.insert(reference, read);
    }

    fn remembered(&self, reference: &SecretRef, resource_version: Option<&str>, key: &str) -> Option<Found> {
        let read_versions = self.read.lock().expect("the Secret digests are never poisoned");
        let read = read_versions.versions.get(reference)?;
        (resource_version.is_some() && read.resource_version.as_deref() == resource_version).then(|| read.find(key))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    use super::*;

    fn secret(resource_version: &str, values: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("team-a".into()),
                resource_version: Some(resource_version.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                values
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), ByteString(value.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn watched(writer: &mut Writer<PartialObjectMeta<Secret>>, secret: &Secret) {
        let metadata = PartialObjectMeta::<Secret> {
            metadata: secret.metadata.clone(),
            ..PartialObjectMeta::default()
        };
        writer.apply_watcher_event(&watcher::Event::Apply(metadata));
    }

    /// Digests whose every read from the API server fails: nothing listens on port 1, so a
    /// lookup answers only from memory or errs.
    fn digests_without_api_server() -> (SecretDigests, Writer<PartialObjectMeta<Secret>>) {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a valid URL"));
        let client = Client::try_from(config).expect("a client for any URL");
        let writer = Writer::default();
        (SecretDigests::new(client, writer.as_reader()), writer)
    }

    #[test]
    fn digests_each_value_as_stored_and_trimmed() {
        let read = ReadVersion::of(&secret("7", &[("api-key", "sluice_abc\n")]));

        let Found::Value(digests) = read.find("api-key") else {
            panic!("the key is in the Secret");
        };
        assert_eq!(digests.exact, sha256_hex(b"sluice_abc\n"));
        assert_eq!(digests.trimmed, sluice_crds::hash_api_key("sluice_abc"));
        assert_eq!(read.find("url"), Found::NoKey);
    }

    #[tokio::test]
    async fn a_secret_the_watch_has_not_shown_is_missing_without_a_read() {
        let (digests, _writer) = digests_without_api_server();

        let found = digests.lookup("team-a", "db", "url").await.expect("no read is needed");

        assert_eq!(found, Found::NoSecret);
    }

    #[tokio::test]
    async fn a_remembered_version_is_answered_from_memory_and_a_new_one_is_read() {
        let (digests, mut writer) = digests_without_api_server();
        let created = secret("7", &[("url", "postgres://a")]);
        digests.remember(&created);
        watched(&mut writer, &created);

        let found = digests
            .lookup("team-a", "db", "url")
            .await
            .expect("version 7 is in memory");
        assert_eq!(found, Found::Value(ValueDigests::of(b"postgres://a")));
        let found = digests
            .lookup("team-a", "db", "password")
            .await
            .expect("version 7 is in memory");
        assert_eq!(found, Found::NoKey);

        watched(&mut writer, &secret("8", &[("url", "postgres://b")]));
        let read = digests.lookup("team-a", "db", "url").await;
        assert!(read.is_err(), "version 8 must be read from the API server: {read:?}");
    }

    #[tokio::test]
    async fn forgetting_waits_for_more_versions_while_the_watch_catches_up() {
        let (digests, _writer) = digests_without_api_server();
        for index in 0..=2 * FORGET_EVERY {
            let mut created = secret("1", &[("api-key", "sluice_abc")]);
            created.metadata.name = Some(format!("key-{index}"));
            digests.remember(&created);
        }

        // One pass, at the first record past FORGET_EVERY, kept every Secret (none is watched
        // yet, all are new), so the next waits for FORGET_EVERY more instead of running on
        // every record after it.
        let read = digests.read.lock().expect("not poisoned");
        assert_eq!(read.kept, FORGET_EVERY + 1);
        assert_eq!(read.versions.len(), 2 * FORGET_EVERY + 1);
    }

    #[tokio::test]
    async fn secrets_created_faster_than_the_watch_shows_them_stay_remembered() {
        let (digests, mut writer) = digests_without_api_server();
        let created: Vec<Secret> = (0..2 * FORGET_EVERY)
            .map(|index| {
                let mut created = secret("1", &[("api-key", "sluice_abc")]);
                created.metadata.name = Some(format!("key-{index}"));
                created
            })
            .collect();
        for secret in &created {
            digests.remember(secret);
        }
        for secret in &created {
            watched(&mut writer, secret);
        }

        for secret in &created {
            let name = secret.metadata.name.as_deref().unwrap_or_default();
            let found = digests.lookup("team-a", name, "api-key").await;
            assert!(
                matches!(found, Ok(Found::Value(_))),
                "{name} was forgotten before the watch showed it: {found:?}"
            );
        }
    }
}
