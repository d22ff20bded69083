//! The security material of a cluster, kept by every pass before anything else: the token
//! Secrets (created once) and the hashed token file, the cluster CA (created once) and the nodes'
//! certificate (issued, and issued again before it expires, when what it must say changes, or
//! when the CA changed), or with `spec.tls.issuerRef` the cert-manager `Certificate` that writes
//! it; and the operator's own way in to the nodes' admin API (an admin certificate it issues
//! itself, in memory, or the admin token with cert-manager).
//!
//! A new certificate reaches the pods through the hash of `tls.crt` in the pod template: the
//! rollout (`crate::rollout`) restarts them onto it one at a time. Old and new certificates
//! come from the same CA, so nodes on either trust each other throughout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dynamo_api::security::{self, Ca, CertRequest, Credentials, Role};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::{apply, publish, Context};
use crate::admin::Access;
use crate::crd::{DynamoCluster, TlsStatus};
use crate::error::{Error, Result};
use crate::render::security::{
    self as names, admin_token_secret_name, ca_secret_name, cert_hash, client_token_secret_name,
    node_cert_request, node_server_name, request_hash, tls_secret_name, CA_CERT_KEY, CA_KEY_KEY,
    CA_LIFETIME, CERT_REQUEST_ANNOTATION, TLS_CERT_KEY, TLS_KEY_KEY, TOKEN_KEY,
};
use crate::render::MANAGER;

/// Lifetime of the admin certificate the operator issues itself (kept in memory only).
pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The operator's admin certificate is issued again once less than this is left.
const ADMIN_CERT_RENEW: Duration = Duration::from_secs(12 * 3600);
/// Subject name of the operator's admin certificate.
pub const ADMIN_CERT_NAME: &str = "dynamo-operator";

/// The operator's admin certificate for one cluster.
struct AdminIdentity {
    /// Fingerprint of the CA that issued it.
    ca_fingerprint: String,
    /// When it expires.
    not_after: SystemTime,
    credentials: Arc<Credentials>,
}

/// The operator's admin certificates, one per cluster (`namespace/name`). Lost on restart,
/// issued again on the next pass.
#[derive(Default)]
pub struct AdminIdentities(Mutex<HashMap<String, AdminIdentity>>);

/// What the rest of the pass needs from the security material.
#[derive(Debug, Clone, Default)]
pub struct Secured {
    /// How to reach the nodes' admin API; `None` before there is a CA to verify them with.
    pub access: Option<Access>,
    /// [`cert_hash`] of the nodes' certificate; `None` while cert-manager has not written it.
    pub tls_hash: Option<String>,
    /// For `status.tls`.
    pub status: Option<TlsStatus>,
    /// Time until the operator renews the nodes' certificate.
    pub renew_in: Option<Duration>,
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok().filter(|s| !s.trim().is_empty())
}

fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Creates `secret` unless it exists; returns the one stored (ours, or one created before).
async fn create_once(api: &Api<Secret>, secret: &Secret) -> Result<(Secret, bool)> {
    let name = secret.name_any();
    if let Some(existing) = api.get_opt(&name).await.map_err(Error::kube("get", "Secret", &name))? {
        return Ok((existing, false));
    }
    let params = PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() };
    match api.create(&params, secret).await {
        Ok(created) => Ok((created, true)),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok((api.get(&name).await.map_err(Error::kube("get", "Secret", &name))?, false))
        }
        Err(e) => Err(Error::kube("create", "Secret", &name)(e)),
    }
}

/// A token Secret: created with a random token when absent (unless `write` is false; the name
/// is then added to `created`), else read.
async fn token(
    cluster: &DynamoCluster,
    api: &Api<Secret>,
    name: String,
    write: bool,
    created: &mut Vec<String>,
) -> Result<Option<String>> {
    let existing = api.get_opt(&name).await.map_err(Error::kube("get", "Secret", &name))?;
    let secret = match existing {
        Some(s) => s,
        None if !write => return Ok(None),
        None => {
            let fresh = names::token_secret(cluster, name.clone(), &security::generate_token());
            let (secret, new) = create_once(api, &fresh).await?;
            if new {
                created.push(name.clone());
            }
            secret
        }
    };
    text(&secret, TOKEN_KEY).map(|t| Some(t.trim().to_string())).ok_or_else(|| {
        Error::Security(format!(
            "Secret {name} has no '{TOKEN_KEY}': delete it and the operator creates a new token"
        ))
    })
}

/// Keeps the cluster's security material (see the module docs). With `write` false (a paused
/// cluster) nothing is created or renewed; what exists is read.
pub async fn ensure(
    ctx: &Context,
    cluster: &DynamoCluster,
    ns: &str,
    write: bool,
) -> Result<Secured> {
    let name = cluster.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut created = Vec::new();
    let admin_token =
        token(cluster, &secrets, admin_token_secret_name(&name), write, &mut created).await?;
    let client_token =
        token(cluster, &secrets, client_token_secret_name(&name), write, &mut created).await?;
    if !created.is_empty() {
        let note =
            format!("created {} with a random token (key {TOKEN_KEY})", created.join(" and "));
        publish(ctx, cluster, EventType::Normal, "TokenCreated", "CreateSecret", note).await;
    }
    if let (true, Some(admin), Some(client)) = (write, &admin_token, &client_token) {
        apply(&secrets, &names::tokens_secret(cluster, admin, client)).await?;
    }
    match cluster.spec.tls.issuer_ref.clone() {
        None => own_certificate(ctx, cluster, &secrets, write).await,
        Some(issuer) => {
            if write {
                let certificate = names::certificate(cluster, &issuer, &ctx.options);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), ns, &names::certificate_resource());
                let certificate_name = certificate.name_any();
                api.patch(
                    &certificate_name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&certificate),
                )
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => Error::Security(format!(
                        "spec.tls.issuerRef is set but cert-manager's Certificate resource \
                         (cert-manager.io/v1) is not installed: install cert-manager, or unset \
                         issuerRef to have the operator issue the certificate ({})",
                        s.message
                    )),
                    e => Error::kube("apply", "Certificate", &certificate_name)(e),
                })?;
            }
            let tls = secrets.get_opt(&tls_secret_name(&name)).await.map_err(Error::kube(
                "get",
                "Secret",
                tls_secret_name(&name),
            ))?;
            let issuer_name = format!("{}/{}", issuer.kind.as_str(), issuer.name);
            Ok(issued_by_cert_manager(cluster, tls.as_ref(), admin_token, issuer_name))
        }
    }
}

/// What a Secret written by cert-manager gives: the certificate's hash and expiry, and the
/// admin token with the CA from `ca.crt` as the operator's way in.
fn issued_by_cert_manager(
    cluster: &DynamoCluster,
    tls: Option<&Secret>,
    admin_token: Option<String>,
    issuer: String,
) -> Secured {
    let secret_name = tls_secret_name(&cluster.name_any());
    let mut status = TlsStatus { secret_name, issuer, ..TlsStatus::default() };
    let cert = tls.and_then(|s| text(s, TLS_CERT_KEY));
    let ca = tls.and_then(|s| text(s, CA_CERT_KEY));
    let (Some(cert), Some(ca)) = (cert, ca) else {
        return Secured { status: Some(status), ..Secured::default() };
    };
    status.not_after = security::not_after(&cert).ok().map(rfc3339);
    status.hash = Some(cert_hash(&cert));
    let credentials =
        Credentials { ca_pem: Some(ca), identity: None, token: admin_token, server_name: None };
    Secured {
        access: Some(Access {
            credentials: Arc::new(credentials),
            server_name: Some(node_server_name(cluster)),
        }),
        tls_hash: Some(cert_hash(&cert)),
        status: Some(status),
        renew_in: None,
    }
}

/// Why the nodes' certificate in `tls` must be issued again, if it must.
pub fn renewal_reason(
    tls: Option<&Secret>,
    ca: &Ca,
    request: &CertRequest,
    renew_before: Duration,
    now: SystemTime,
) -> Option<String> {
    let Some(tls) = tls else { return Some("there was none".into()) };
    let Some(cert) = text(tls, TLS_CERT_KEY) else {
        return Some(format!("the Secret had no {TLS_CERT_KEY}"));
    };
    if text(tls, TLS_KEY_KEY).is_none() {
        return Some(format!("the Secret had no {TLS_KEY_KEY}"));
    }
    if text(tls, CA_CERT_KEY).as_deref() != Some(ca.cert_pem()) {
        return Some("the cluster CA changed".into());
    }
    let recorded = tls.annotations().get(CERT_REQUEST_ANNOTATION).map(String::as_str);
    if recorded != Some(request_hash(request).as_str()) {
        return Some("its names or lifetime changed".into());
    }
    let Ok(expires) = security::not_after(&cert) else {
        return Some(format!("its {TLS_CERT_KEY} could not be read"));
    };
    (expires <= now + renew_before).then(|| format!("it expires at {}", rfc3339(expires)))
}

/// The operator's own CA and certificate: `<cluster>-ca` (created once) and `<cluster>-tls`
/// (issued when [`renewal_reason`] says so), and an admin certificate for itself.
async fn own_certificate(
    ctx: &Context,
    cluster: &DynamoCluster,
    secrets: &Api<Secret>,
    write: bool,
) -> Result<Secured> {
    let name = cluster.name_any();
    let ca_name = ca_secret_name(&name);
    let ca_secret =
        match secrets.get_opt(&ca_name).await.map_err(Error::kube("get", "Secret", &ca_name))? {
            Some(s) => s,
            None if !write => return Ok(Secured::default()),
            None => {
                let ca = Ca::generate(&crate::render::dynamo_cluster_name(cluster), CA_LIFETIME)
                    .map_err(|e| Error::Security(format!("cannot create the cluster CA: {e}")))?;
                let fresh = names::ca_secret(cluster, ca.cert_pem(), ca.key_pem());
                let (secret, created) = create_once(secrets, &fresh).await?;
                if created {
                    let note = format!(
                        "created the cluster CA in {ca_name} (fingerprint {})",
                        ca.fingerprint()
                    );
                    publish(ctx, cluster, EventType::Normal, "CACreated", "CreateSecret", note)
                        .await;
                }
                secret
            }
        };
    let unreadable = |what: String| {
        Error::Security(format!(
            "Secret {ca_name} {what}: restore it (every node's certificate comes from it), or \
             delete it and the operator creates a new CA (clients must then trust the new one)"
        ))
    };
    let (Some(ca_cert), Some(ca_key)) =
        (text(&ca_secret, CA_CERT_KEY), text(&ca_secret, CA_KEY_KEY))
    else {
        return Err(unreadable(format!("lacks {CA_CERT_KEY} or {CA_KEY_KEY}")));
    };
    let ca =
        Ca::from_pem(&ca_cert, &ca_key).map_err(|e| unreadable(format!("is not a CA: {e}")))?;

    let tls_name = tls_secret_name(&name);
    let mut tls =
        secrets.get_opt(&tls_name).await.map_err(Error::kube("get", "Secret", &tls_name))?;
    let tls_spec = &cluster.spec.tls;
    let (Some(request), Some(renew_before)) =
        (node_cert_request(cluster, &ctx.options), tls_spec.renew_before())
    else {
        // validate() refuses such a spec before a pass gets here.
        return Err(Error::Security("spec.tls has a lifetime that is not a duration".into()));
    };
    let now = SystemTime::now();
    if let (true, Some(reason)) =
        (write, renewal_reason(tls.as_ref(), &ca, &request, renew_before, now))
    {
        let issued = ca
            .issue(&request)
            .map_err(|e| Error::Security(format!("cannot issue the nodes' certificate: {e}")))?;
        let secret = names::tls_secret(
            cluster,
            ca.cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
            &request_hash(&request),
        );
        tls = Some(apply(secrets, &secret).await?);
        let (reason_code, verb) = if reason == "there was none" {
            ("CertificateIssued", "issued")
        } else {
            ("CertificateRenewed", "renewed")
        };
        let note = format!(
            "{verb} the nodes' certificate in {tls_name} ({reason}); valid until {}; the nodes \
             restart onto it one at a time",
            rfc3339(issued.not_after)
        );
        tracing::info!(cluster = %crate::crd::display_name(cluster), "{note}");
        publish(ctx, cluster, EventType::Normal, reason_code, "IssueCertificate", note).await;
    }
    let cert = tls.as_ref().and_then(|s| text(s, TLS_CERT_KEY));
    let expires = cert.as_deref().and_then(|c| security::not_after(c).ok());
    let renew_at = expires.map(|e| e.checked_sub(renew_before).unwrap_or(e));
    let status = TlsStatus {
        secret_name: tls_name,
        issuer: "operator".into(),
        not_after: expires.map(rfc3339),
        renewal_time: renew_at.map(rfc3339),
        hash: cert.as_deref().map(cert_hash),
    };
    let credentials = admin_credentials(ctx, cluster, &ca, now)?;
    Ok(Secured {
        access: Some(Access { credentials, server_name: Some(node_server_name(cluster)) }),
        tls_hash: cert.as_deref().map(cert_hash),
        status: Some(status),
        renew_in: renew_at.map(|at| at.duration_since(now).unwrap_or_default()),
    })
}

/// The operator's admin certificate for `cluster`, from the cache while it is from this CA and
/// has more than [`ADMIN_CERT_RENEW`] left, else issued afresh.
fn admin_credentials(
    ctx: &Context,
    cluster: &DynamoCluster,
    ca: &Ca,
    now: SystemTime,
) -> Result<Arc<Credentials>> {
    let key = crate::crd::display_name(cluster);
    let fingerprint = ca.fingerprint();
    let mut cache = ctx.admin_identities.0.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cached) = cache.get(&key) {
        if cached.ca_fingerprint == fingerprint && cached.not_after > now + ADMIN_CERT_RENEW {
            return Ok(cached.credentials.clone());
        }
    }
    let issued =
        ca.issue(&CertRequest::client(ADMIN_CERT_NAME, Role::Admin, ADMIN_CERT_LIFETIME)).map_err(
            |e| Error::Security(format!("cannot issue the operator's admin certificate: {e}")),
        )?;
    let credentials = Arc::new(Credentials {
        ca_pem: Some(ca.cert_pem().to_string()),
        identity: Some((issued.cert_pem, issued.key_pem)),
        token: None,
        server_name: None,
    });
    cache.insert(
        key,
        AdminIdentity {
            ca_fingerprint: fingerprint,
            not_after: issued.not_after,
            credentials: credentials.clone(),
        },
    );
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::cluster;
    use crate::render::RenderOptions;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_certificate_is_renewed_for_each_reason_and_only_then() {
        let c = cluster(&[("zone-a", 1)]);
        let ca = Ca::generate("demo.default", CA_LIFETIME).unwrap();
        let request = node_cert_request(&c, &RenderOptions::default()).unwrap();
        let issued = ca.issue(&request).unwrap();
        let hash = request_hash(&request);
        let secret = |ca_pem: &str, annotation: &str| {
            names::tls_secret(&c, ca_pem, &issued.cert_pem, &issued.key_pem, annotation)
        };
        let now = SystemTime::now();
        let renew_before = request.lifetime / 3;
        let reason =
            |s: Option<&Secret>, at: SystemTime| renewal_reason(s, &ca, &request, renew_before, at);

        assert_eq!(reason(None, now).as_deref(), Some("there was none"));
        assert_eq!(reason(Some(&secret(ca.cert_pem(), &hash)), now), None);
        // Just before the renewal time, and just after.
        let renew_at = issued.not_after - renew_before;
        assert_eq!(reason(Some(&secret(ca.cert_pem(), &hash)), renew_at - HOUR), None);
        let late = reason(Some(&secret(ca.cert_pem(), &hash)), renew_at + HOUR).unwrap();
        assert!(late.starts_with("it expires at "), "{late}");
        let other = Ca::generate("demo.default", CA_LIFETIME).unwrap();
        assert_eq!(
            reason(Some(&secret(other.cert_pem(), &hash)), now).as_deref(),
            Some("the cluster CA changed")
        );
        assert_eq!(
            reason(Some(&secret(ca.cert_pem(), "old")), now).as_deref(),
            Some("its names or lifetime changed")
        );
        let mut broken = secret(ca.cert_pem(), &hash);
        broken.data.as_mut().unwrap().remove(TLS_KEY_KEY);
        assert_eq!(reason(Some(&broken), now).as_deref(), Some("the Secret had no tls.key"));
    }

    #[test]
    fn cert_manager_secrets_give_the_token_and_the_ca() {
        let c = cluster(&[("zone-a", 1)]);
        let none = issued_by_cert_manager(&c, None, Some("t".into()), "Issuer/ca".into());
        assert!(none.access.is_none() && none.tls_hash.is_none());
        assert_eq!(none.status.unwrap().issuer, "Issuer/ca");

        let ca = Ca::generate("demo.default", CA_LIFETIME).unwrap();
        let issued = ca.issue(&node_cert_request(&c, &RenderOptions::default()).unwrap()).unwrap();
        let secret = names::tls_secret(&c, ca.cert_pem(), &issued.cert_pem, &issued.key_pem, "");
        let got = issued_by_cert_manager(&c, Some(&secret), Some("t".into()), "Issuer/ca".into());
        let access = got.access.unwrap();
        assert_eq!(access.credentials.token.as_deref(), Some("t"));
        assert_eq!(access.credentials.ca_pem.as_deref(), Some(ca.cert_pem()));
        assert!(access.credentials.identity.is_none());
        assert_eq!(access.server_name.as_deref(), Some("demo.default.svc"));
        assert_eq!(got.tls_hash, Some(cert_hash(&issued.cert_pem)));
        assert!(got.status.unwrap().not_after.is_some());
    }
}
