//! The one tower layer that puts a check in front of a gRPC router ([`Gate`]): who may call
//! (`auth`) and whether there is room for the call (`admission`). A refused call gets the
//! check's error as its gRPC status before any handler runs; what an admitted call's check
//! returns (a concurrency permit) is held until its answer is sent.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use crate::error::Error;

/// A check of every call.
pub trait Gate: Send + Sync + 'static {
    /// Kept until the call's answer is sent.
    type Pass: Send + 'static;

    /// Admits the call (and may annotate its extensions) or refuses it.
    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<Self::Pass, Error>;
}

/// The layer putting gate `G` in front of a router.
#[derive(Debug)]
pub struct GateLayer<G>(pub Arc<G>);

impl<G> Clone for GateLayer<G> {
    fn clone(&self) -> Self {
        GateLayer(self.0.clone())
    }
}

impl<S, G> tower::Layer<S> for GateLayer<G> {
    type Service = Gated<S, G>;

    fn layer(&self, inner: S) -> Gated<S, G> {
        Gated { inner, gate: self.0.clone() }
    }
}

/// See [`GateLayer`].
#[derive(Debug)]
pub struct Gated<S, G> {
    inner: S,
    gate: Arc<G>,
}

impl<S: Clone, G> Clone for Gated<S, G> {
    fn clone(&self) -> Self {
        Gated { inner: self.inner.clone(), gate: self.gate.clone() }
    }
}

impl<S, G, B, R> tower::Service<http::Request<B>> for Gated<S, G>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    G: Gate,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.gate.admit(&mut req) {
            Ok(pass) => {
                let answer = self.inner.call(req);
                Box::pin(async move {
                    let answer = answer.await;
                    drop(pass);
                    answer
                })
            }
            Err(e) => {
                let status: tonic::Status = e.into();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
