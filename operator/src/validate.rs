//! Rust-side validation of a `DynamoCluster`, mirroring the CRD's schema bounds and CEL rules
//! with the same messages. The API server enforces the CRD; the controller checks again (a CRD
//! installed from an older chart may lack a rule) and reports problems in the Degraded condition.

use std::collections::BTreeSet;

use crate::crd::{
    messages, DynamoClusterSpec, MAX_REPLICAS_PER_ZONE, MAX_STATEFULSET_NAME, MAX_ZONES,
};

/// Every problem found in a spec, each naming the field and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {}", problems.join("; "))]
pub struct InvalidSpec {
    /// One entry per problem, `field: what is wrong and what to do`.
    pub problems: Vec<String>,
}

/// Checks `spec` of the cluster named `name`; returns every problem, not only the first.
pub fn validate(name: &str, spec: &DynamoClusterSpec) -> Result<(), InvalidSpec> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: &str| problems.push(format!("{field}: {message}"));

    if spec.zones.is_empty() {
        problem("zones", "at least one zone is required");
    }
    if spec.zones.len() > MAX_ZONES {
        problem("zones", &format!("at most {MAX_ZONES} zones are supported"));
    }
    let mut seen = BTreeSet::new();
    for (i, zone) in spec.zones.iter().enumerate() {
        let field = format!("zones[{i}]");
        if !is_dns_label(&zone.name) {
            problem(
                &format!("{field}.name"),
                &format!(
                    "'{}' must be a DNS label: lower-case letters, digits and '-', starting and \
                     ending with a letter or digit",
                    zone.name
                ),
            );
        }
        if name.len() + 1 + zone.name.len() > MAX_STATEFULSET_NAME {
            problem(&format!("{field}.name"), messages::NAME_LENGTH);
        }
        if !seen.insert(zone.name.as_str()) {
            problem(
                "zones",
                &format!("{} ('{}' appears twice)", messages::UNIQUE_ZONES, zone.name),
            );
        }
        if !(0..=MAX_REPLICAS_PER_ZONE).contains(&zone.replicas) {
            problem(
                &format!("{field}.replicas"),
                &format!("{} must be between 0 and {MAX_REPLICAS_PER_ZONE}", zone.replicas),
            );
        }
    }

    let r = &spec.replication;
    if !(1..=16).contains(&r.n) {
        problem("replication.factor", "must be between 1 and 16");
    }
    if r.r < 1 || r.r > r.n {
        problem("replication.r", messages::R_LE_N);
    }
    if r.w < 1 || r.w > r.n {
        problem("replication.w", messages::W_LE_N);
    }
    let total = spec.total_replicas();
    if r.n > total {
        problem(
            "replication.factor",
            &format!("{} (factor={}, total replicas={total})", messages::N_LE_TOTAL, r.n),
        );
    }

    let q = spec.partitions;
    if !(1..=65536).contains(&q) || (q & (q - 1)) != 0 {
        problem("partitions", &format!("{} (got {q})", messages::PARTITIONS_POWER_OF_TWO));
    }
    if q < total {
        problem("partitions", &format!("{} ({q} < {total})", messages::PARTITIONS_GE_NODES));
    }

    if let Some(ms) = spec.node_config.request_timeout_ms {
        if !(1..=600_000).contains(&ms) {
            problem("nodeConfig.requestTimeoutMs", "must be between 1 and 600000");
        }
    }
    let l = &spec.node_config.limits;
    for (field, v) in [
        ("maxKeyBytes", l.max_key_bytes),
        ("maxValueBytes", l.max_value_bytes),
        ("maxSiblings", l.max_siblings),
        ("maxObjectBytes", l.max_object_bytes),
    ] {
        if v.is_some_and(|v| v < 1) {
            problem(&format!("nodeConfig.limits.{field}"), "must be at least 1");
        }
    }
    if spec.failure.force_remove_after().is_none() {
        problem(
            "failure.forceRemoveAfter",
            &format!("{} (got '{}')", messages::DURATION_FORMAT, spec.failure.force_remove_after),
        );
    }
    let tls = &spec.tls;
    let lifetime = tls.lifetime();
    match lifetime {
        Some(l) if l >= std::time::Duration::from_secs(120) => {}
        _ => problem(
            "tls.certificateLifetime",
            &format!("{} (got '{}')", messages::LIFETIME_FORMAT, tls.certificate_lifetime),
        ),
    }
    let renew_before = tls.renew_before();
    if let Some(text) = &tls.renew_before {
        if renew_before.is_none_or(|r| r < std::time::Duration::from_secs(60)) {
            problem(
                "tls.renewBefore",
                &format!("{} (got '{text}')", messages::RENEW_BEFORE_FORMAT),
            );
        }
    }
    if let (Some(l), Some(r), Some(_)) = (lifetime, renew_before, &tls.renew_before) {
        if r >= l {
            problem("tls.renewBefore", messages::RENEW_BEFORE_LT_LIFETIME);
        }
    }
    if tls.issuer_ref.as_ref().is_some_and(|i| i.name.is_empty()) {
        problem("tls.issuerRef.name", "must name a cert-manager Issuer or ClusterIssuer");
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec { problems })
    }
}

/// RFC 1123 label: what Kubernetes accepts in names built from it.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ZoneSpec;

    fn spec(zones: &[(&str, i32)]) -> DynamoClusterSpec {
        DynamoClusterSpec::with_zones(zones.iter().map(|(n, r)| ZoneSpec::new(n, *r)).collect())
    }

    fn problems(name: &str, spec: &DynamoClusterSpec) -> String {
        validate(name, spec).expect_err("spec should be rejected").to_string()
    }

    #[test]
    fn the_example_shape_is_valid() {
        assert_eq!(validate("demo", &spec(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)])), Ok(()));
    }

    #[test]
    fn no_zones_is_rejected() {
        let mut s = spec(&[]);
        s.replication.n = 1;
        s.replication.r = 1;
        s.replication.w = 1;
        assert!(problems("demo", &s).contains("zones: at least one zone is required"));
    }

    #[test]
    fn duplicate_zone_names_are_rejected() {
        let msg = problems("demo", &spec(&[("zone-a", 2), ("zone-a", 1)]));
        assert!(msg.contains("zone names must be unique ('zone-a' appears twice)"), "{msg}");
    }

    #[test]
    fn r_and_w_must_be_within_n() {
        let mut s = spec(&[("a", 3)]);
        s.replication.r = 4;
        s.replication.w = 0;
        let msg = problems("demo", &s);
        assert!(
            msg.contains("replication.r: replication.r must be between 1 and replication.factor"),
            "{msg}"
        );
        assert!(
            msg.contains("replication.w: replication.w must be between 1 and replication.factor"),
            "{msg}"
        );
    }

    #[test]
    fn factor_must_not_exceed_the_nodes() {
        let msg = problems("demo", &spec(&[("a", 1), ("b", 1)]));
        assert!(msg.contains("replication.factor must not exceed the total replicas"), "{msg}");
        assert!(msg.contains("(factor=3, total replicas=2)"), "{msg}");
    }

    #[test]
    fn partitions_must_be_a_power_of_two_and_cover_the_nodes() {
        let mut s = spec(&[("a", 3)]);
        s.partitions = 100;
        assert!(problems("demo", &s).contains("partitions must be a power of two"));
        s.partitions = 0;
        assert!(problems("demo", &s).contains("(got 0)"));
        s.partitions = 2;
        assert!(problems("demo", &s).contains("partitions must be at least the total replicas"));
        s.partitions = 1 << 17;
        assert!(problems("demo", &s).contains("(got 131072)"));
    }

    #[test]
    fn zone_names_must_be_dns_labels_short_enough_for_the_statefulset() {
        let msg = problems("demo", &spec(&[("Zone_A", 3)]));
        assert!(msg.contains("zones[0].name: 'Zone_A' must be a DNS label"), "{msg}");
        // "demo" + "-" + zone must fit in 52 characters.
        let long = "z".repeat(48);
        let msg = problems("demo", &spec(&[(&long, 3)]));
        assert!(msg.contains("at most 51 characters"), "{msg}");
        assert_eq!(validate("demo", &spec(&[(&"z".repeat(47), 3)])), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = spec(&[("a", 1)]);
        s.partitions = 3;
        s.replication.r = 5;
        let err = validate("demo", &s).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
    }

    #[test]
    fn negative_replicas_and_limits_are_rejected() {
        let mut s = spec(&[("a", 3), ("b", -1)]);
        s.node_config.limits.max_siblings = Some(0);
        s.node_config.request_timeout_ms = Some(0);
        let msg = problems("demo", &s);
        assert!(msg.contains("zones[1].replicas: -1 must be between 0 and 1000"), "{msg}");
        assert!(msg.contains("nodeConfig.limits.maxSiblings: must be at least 1"), "{msg}");
        assert!(msg.contains("nodeConfig.requestTimeoutMs"), "{msg}");
    }
}
