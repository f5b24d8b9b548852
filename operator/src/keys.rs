//! API keys: generated once into a Secret per key (see [`sluice_crds::generate_api_key`]), read
//! back only to hash them (see [`crate::secrets`]).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sluice_crds::ApiRole;
use sluice_crds::apirole::generated_key_secret_name;

/// The data key holding the API key in a generated Secret.
pub const KEY_DATA_KEY: &str = "api-key";

/// The Secret a generated key lives in, owned by its role so it goes when the role goes.
pub fn key_secret(role: &ApiRole, key_name: &str, key: &str) -> Secret {
    let role_name = role.name_any();
    Secret {
        metadata: ObjectMeta {
            name: Some(generated_key_secret_name(&role_name, key_name)),
            namespace: role.namespace(),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".to_owned(), "sluice".to_owned()),
                ("app.kubernetes.io/managed-by".to_owned(), "sluice-operator".to_owned()),
                ("sluice.dev/api-role".to_owned(), role_name),
                ("sluice.dev/api-key".to_owned(), key_name.to_owned()),
            ])),
            owner_references: Some(vec![
                role.controller_owner_ref(&()).expect("a stored ApiRole has a uid"),
            ]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            KEY_DATA_KEY.to_owned(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_secret_is_owned_by_its_role() {
        let mut role: ApiRole = serde_yaml::from_str(
            "apiVersion: sluice.dev/v1alpha1\nkind: ApiRole\nmetadata: { name: analyst, namespace: team-a, uid: u-1 }\nspec: { dataApis: [sales] }",
        )
        .unwrap();
        role.metadata.uid = Some("u-1".into());

        let secret = key_secret(&role, "dashboard", "sluice_abc");

        assert_eq!(secret.metadata.name.as_deref(), Some("analyst-key-dashboard"));
        assert_eq!(secret.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        assert_eq!(secret.data.unwrap()[KEY_DATA_KEY].0, b"sluice_abc");
    }
}
