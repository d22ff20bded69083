//! Admission control: a node takes at most so many client requests at once, and serves at most
//! so many background requests of other nodes (partition transfer pages, Merkle exchanges) at
//! once, so background work yields to foreground latency (paper section 6.5). Past a limit a
//! call is refused at once with `RESOURCE_EXHAUSTED` ("node overloaded, retry with backoff"),
//! instead of queueing until everything times out; the client library and `dynamoctl` retry
//! those with jittered backoff. Replica calls that are part of a client request (replicate,
//! fetch, forwarded puts), gossip, pings, health and the admin API are never refused here: they
//! were admitted where the client request arrived, and membership must keep working under load.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::gate::Gate;
use crate::error::Error;

/// Which limit a method counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The client API.
    Client,
    /// Other nodes' background work served here.
    Background,
    /// Not limited.
    Free,
}

/// The class of a gRPC method, by its path (`/package.Service/Method`).
pub fn class(path: &str) -> Class {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match (service, method) {
        ("dynamo.client.v1.Client", _) => Class::Client,
        ("dynamo.internode.v1.Internode", "StreamPartition" | "MerkleHashes" | "MerkleItems") => {
            Class::Background
        }
        _ => Class::Free,
    }
}

/// The limits and their permits.
#[derive(Debug)]
pub struct Admission {
    client: Arc<Semaphore>,
    client_limit: usize,
    background: Arc<Semaphore>,
    background_limit: usize,
}

impl Admission {
    pub fn new(client: usize, background: usize) -> Admission {
        Admission {
            client: Arc::new(Semaphore::new(client)),
            client_limit: client,
            background: Arc::new(Semaphore::new(background)),
            background_limit: background,
        }
    }

    /// A permit for a call of `path`, held until its answer is sent; None for a free method.
    pub fn admit(&self, path: &str) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Error> {
        let (semaphore, limit, what) = match class(path) {
            Class::Free => return Ok(None),
            Class::Client => (&self.client, self.client_limit, "client requests"),
            Class::Background => (&self.background, self.background_limit, "background requests"),
        };
        semaphore.clone().try_acquire_owned().map(Some).map_err(|_| {
            Error::Overloaded(format!(
                "node overloaded: {limit} {what} are in progress, the most it takes at once; \
                 retry with backoff"
            ))
        })
    }
}

impl Gate for Admission {
    type Pass = Option<tokio::sync::OwnedSemaphorePermit>;

    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<Self::Pass, Error> {
        Admission::admit(self, req.uri().path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_calls_are_refused_at_once_and_admitted_again_after() {
        let a = Admission::new(2, 1);
        let get = "/dynamo.client.v1.Client/Get";
        let (p1, p2) = (a.admit(get).unwrap(), a.admit(get).unwrap());
        assert!(p1.is_some() && p2.is_some());
        let err = a.admit("/dynamo.client.v1.Client/Put").unwrap_err();
        assert!(matches!(err, Error::Overloaded(_)), "{err}");
        assert!(err.to_string().contains("retry with backoff"), "{err}");
        // Other classes have their own room, and free methods are never refused.
        let page = a.admit("/dynamo.internode.v1.Internode/StreamPartition").unwrap();
        assert!(page.is_some());
        assert!(a.admit("/dynamo.internode.v1.Internode/MerkleItems").is_err());
        assert!(a.admit("/dynamo.internode.v1.Internode/Replicate").unwrap().is_none());
        assert!(a.admit("/dynamo.internode.v1.Internode/Gossip").unwrap().is_none());
        assert!(a.admit("/grpc.health.v1.Health/Check").unwrap().is_none());
        drop(p1);
        assert!(a.admit(get).unwrap().is_some());
    }
}
