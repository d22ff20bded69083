//! Leader election with a `coordination.k8s.io/v1` Lease, so the chart can run two replicas and
//! only one reconciles. The leader renews `holderIdentity`'s `renewTime` every retry period; a
//! standby takes the lease over once the record has not changed for `leaseDurationSeconds` *as
//! measured on its own clock* (remote timestamps are never compared with local time, so clock
//! skew between machines cannot elect two leaders). A leader that cannot renew within the renew
//! deadline (shorter than the lease duration) stops its work before anyone may take over, and
//! the process exits so Kubernetes restarts it as a standby. On shutdown the lease is released.
//! Writes use the Lease's resourceVersion: of two racing candidates only one succeeds.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio_util::sync::CancellationToken;

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps working without a successful renewal; less than the duration.
    pub renew_deadline: Duration,
    /// Time between attempts (renewals, or tries to acquire).
    pub retry_period: Duration,
}

/// Why leadership ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Renewal failed or another replica holds the lease now.
    #[error("lost the leader lease {namespace}/{name}: {why}; exiting so Kubernetes restarts this replica as a standby")]
    Lost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// What happened.
        why: String,
    },
}

/// What to do with the lease as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    Acquire,
    /// Someone else holds a live lease.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// Decides from the lease, our identity, and how long the record has been seen unchanged.
pub fn decide(lease: Option<&Lease>, identity: &str, unchanged_for: Duration) -> Decision {
    let Some(lease) = lease else { return Decision::Create };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    if holder.is_empty() || unchanged_for >= duration {
        return Decision::Acquire;
    }
    Decision::Follow { holder }
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last lease record seen (holder, renew time, transitions) and when it was first seen,
    /// on the local monotonic clock.
    seen: Mutex<Option<(String, Instant)>>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn record_key(lease: &Lease) -> String {
    let spec = lease.spec.clone().unwrap_or_default();
    format!(
        "{}|{:?}|{:?}",
        spec.holder_identity.unwrap_or_default(),
        spec.renew_time.map(|t| t.0.to_string()),
        spec.lease_transitions
    )
}

impl LeaderElector {
    /// An elector using `client` for the Lease API.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        LeaderElector { api, config, seen: Mutex::new(None) }
    }

    /// The election settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn unchanged_for(&self, lease: Option<&Lease>) -> Duration {
        let Some(lease) = lease else { return Duration::ZERO };
        let key = record_key(lease);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match &*seen {
            Some((k, at)) if *k == key => at.elapsed(),
            _ => {
                *seen = Some((key, Instant::now()));
                Duration::ZERO
            }
        }
    }

    fn spec(&self, acquire_time: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs() as i32),
            acquire_time,
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to become or stay leader. `Ok(true)` when we hold the lease afterwards;
    /// `Ok(false)` when another replica does (or won a race).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.config.name).await?;
        let decision =
            decide(lease.as_ref(), &self.config.identity, self.unchanged_for(lease.as_ref()));
        let result = match (decision, lease) {
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(Some(now()), 0)),
                };
                self.api.create(&PostParams::default(), &lease).await.map(|_| ())
            }
            (Decision::Renew, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let mut spec = self.spec(old.acquire_time, old.lease_transitions.unwrap_or(0));
                spec.preferred_holder = old.preferred_holder;
                spec.strategy = old.strategy;
                lease.spec = Some(spec);
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Decision::Acquire, Some(mut lease)) => {
                let transitions =
                    lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0) + 1;
                lease.spec = Some(self.spec(Some(now()), transitions));
                tracing::info!(lease = %self.config.name, identity = %self.config.identity, "taking over the leader lease");
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Decision::Follow { .. }, _) | (_, None) => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            // Someone else wrote first (create or update raced): not leader this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (empty holder) if we hold it, so a standby takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        lease.spec = Some(spec);
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits to become leader, then runs `work` (given a token cancelled when it must stop)
    /// while renewing. Returns `Ok` after `shutdown` (work stopped, lease released) and an error
    /// when leadership is lost (work stopped first).
    pub async fn run<F, Fut>(
        &self,
        shutdown: CancellationToken,
        on_change: impl Fn(bool),
        work: F,
    ) -> Result<(), LeaderError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let c = &self.config;
        tracing::info!(lease = %format!("{}/{}", c.namespace, c.name), identity = %c.identity, "waiting to become leader");
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot read or write the lease; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(c.retry_period) => {}
            }
        }
        tracing::info!(identity = %c.identity, "became leader");
        on_change(true);
        let work_token = shutdown.child_token();
        let work = work(work_token.clone());
        tokio::pin!(work);
        let mut renewed = Instant::now();
        let lost = loop {
            tokio::select! {
                _ = &mut work => break None,
                _ = tokio::time::sleep(c.retry_period) => {
                    if shutdown.is_cancelled() {
                        continue; // the work is stopping; wait for it
                    }
                    match self.try_acquire_or_renew().await {
                        Ok(true) => renewed = Instant::now(),
                        Ok(false) => break Some("another replica holds it".to_string()),
                        Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                    }
                    if renewed.elapsed() > c.renew_deadline {
                        break Some(format!("not renewed for {:?}", renewed.elapsed()));
                    }
                }
            }
        };
        on_change(false);
        if let Some(why) = lost {
            work_token.cancel();
            work.await;
            return Err(LeaderError::Lost {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                why,
            });
        }
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the leader lease; a standby takes over when it expires");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeApiServer;

    fn lease(holder: Option<&str>, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta { name: Some("l".into()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(duration),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        let s = Duration::from_secs;
        assert_eq!(decide(None, "me", s(0)), Decision::Create);
        assert_eq!(decide(Some(&lease(Some("me"), 15)), "me", s(100)), Decision::Renew);
        assert_eq!(
            decide(Some(&lease(Some("other"), 15)), "me", s(14)),
            Decision::Follow { holder: "other".into() }
        );
        assert_eq!(decide(Some(&lease(Some("other"), 15)), "me", s(15)), Decision::Acquire);
        assert_eq!(decide(Some(&lease(None, 15)), "me", s(0)), Decision::Acquire);
        assert_eq!(decide(Some(&lease(Some(""), 15)), "me", s(0)), Decision::Acquire);
    }

    fn config(identity: &str) -> LeaseConfig {
        LeaseConfig {
            name: "dynamo-operator".into(),
            namespace: "ops".into(),
            identity: identity.into(),
            // The Lease holds whole seconds: 1 s is the shortest lease there is.
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(800),
            retry_period: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_takeover_after_expiry() {
        let server = FakeApiServer::start();
        let a = LeaderElector::new(server.client(), config("a"));
        let b = LeaderElector::new(server.client(), config("b"));
        assert!(a.try_acquire_or_renew().await.unwrap(), "a creates the lease");
        assert!(!b.try_acquire_or_renew().await.unwrap(), "b follows a live lease");
        assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
        let held: Lease = server
            .get("/apis/coordination.k8s.io/v1/namespaces/ops/leases/dynamo-operator")
            .unwrap();
        assert_eq!(held.spec.as_ref().unwrap().holder_identity.as_deref(), Some("a"));

        // a stops renewing; b sees the record unchanged for a lease duration and takes over.
        assert!(!b.try_acquire_or_renew().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(b.try_acquire_or_renew().await.unwrap(), "b takes the expired lease");
        let held: Lease = server
            .get("/apis/coordination.k8s.io/v1/namespaces/ops/leases/dynamo-operator")
            .unwrap();
        let spec = held.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert!(!a.try_acquire_or_renew().await.unwrap(), "a sees b and follows");
    }

    #[tokio::test]
    async fn run_works_while_leader_and_releases_on_shutdown() {
        let server = FakeApiServer::start();
        let a = LeaderElector::new(server.client(), config("a"));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let worked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = worked.clone();
        let run = a.run(
            shutdown,
            |_| {},
            |token| async move {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.cancel();
                token.cancelled().await;
            },
        );
        let result = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("run returns on shutdown");
        assert!(result.is_ok());
        assert!(worked.load(std::sync::atomic::Ordering::SeqCst));
        let held: Lease = server
            .get("/apis/coordination.k8s.io/v1/namespaces/ops/leases/dynamo-operator")
            .unwrap();
        assert_eq!(held.spec.unwrap().holder_identity, None, "released for a standby");
        let b = LeaderElector::new(server.client(), config("b"));
        assert!(b.try_acquire_or_renew().await.unwrap(), "a released lease is taken at once");
    }

    #[tokio::test]
    async fn a_leader_that_loses_the_lease_stops_its_work() {
        let server = FakeApiServer::start();
        let a = LeaderElector::new(server.client(), config("a"));
        let path = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/dynamo-operator";
        let srv = server.clone();
        let run = a.run(
            CancellationToken::new(),
            |_| {},
            |token| async move {
                // Someone else grabs the lease behind a's back.
                let mut lease: Lease = srv.get(path).unwrap();
                lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
                srv.put(path, &lease);
                token.cancelled().await;
            },
        );
        let result =
            tokio::time::timeout(Duration::from_secs(10), run).await.expect("the work is stopped");
        let err = result.unwrap_err();
        assert!(err.to_string().contains("another replica holds it"), "{err}");
    }
}
