//! The operator library's one error type. Admin API failures are not here: the controller turns
//! them into conditions and events and retries, so they never fail a pass.

/// A failed step of a reconcile pass; the pass is retried after a back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action} {kind} {name}: {source}")]
    Kube {
        /// What was attempted (`apply`, `list`, `delete`, ...).
        action: &'static str,
        /// Kind of the object.
        kind: &'static str,
        /// Object name (or label selector for lists).
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The cluster's security material is unusable (a CA Secret without its key, cert-manager
    /// asked for but not installed, ...); the message says what to do.
    #[error("{0}")]
    Security(String),
    /// A DynamoCluster without a namespace: the CRD installed is not the namespaced one.
    #[error("DynamoCluster {0} has no namespace: reinstall the CRD from crds/dynamoclusters.yaml")]
    NoNamespace(String),
}

impl Error {
    /// Wraps a Kubernetes API error with what was being done.
    pub fn kube(
        action: &'static str,
        kind: &'static str,
        name: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Error {
        let name = name.into();
        move |source| Error::Kube { action, kind, name, source }
    }
}

/// Result of the operator library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
