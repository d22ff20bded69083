//! The cluster secret (it seals client contexts; every node must share it). Created once with
//! a random value when absent and never rewritten, so a user may also create it beforehand.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::ResourceExt;
use rand::RngCore;

use super::{child_meta, common_labels, secret_name};
use crate::crd::{DynamoCluster, RetentionPolicy};

/// Key of the secret value in the Secret.
pub const SECRET_KEY: &str = "secret";

/// 32 random bytes from the OS generator, hex-encoded (64 characters).
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The Secret `<cluster>-secret` holding `value`. It is owned by the cluster (deleted with it)
/// only when the cluster's volumes are too (`whenDeleted: Delete`): volumes kept for a later
/// cluster of the same name keep their secret with them, so old client contexts stay valid.
pub fn cluster_secret(cluster: &DynamoCluster, value: &str) -> Secret {
    let mut metadata =
        child_meta(cluster, secret_name(&cluster.name_any()), common_labels(&cluster.name_any()));
    if cluster.spec.persistent_volume_claim_retention_policy.when_deleted == RetentionPolicy::Retain
    {
        metadata.owner_references = None;
    }
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::cluster;

    #[test]
    fn secrets_are_random_and_long() {
        let (a, b) = (random_secret(), random_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn secret_follows_the_deletion_policy() {
        let mut c = cluster(&[("a", 1)]);
        let kept = cluster_secret(&c, "s3cret");
        assert_eq!(kept.metadata.name.as_deref(), Some("demo-secret"));
        assert_eq!(kept.metadata.owner_references, None);
        assert_eq!(kept.data.unwrap()["secret"].0, b"s3cret");
        c.spec.persistent_volume_claim_retention_policy.when_deleted = RetentionPolicy::Delete;
        assert_eq!(cluster_secret(&c, "x").metadata.owner_references.unwrap().len(), 1);
    }
}
