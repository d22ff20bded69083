//! Client traffic that follows the pods: the workload clients of `dynamo_tests::workload`, run
//! against the pods that are Ready now and restarted against the new set whenever it changes.
//!
//! A pod that is deleted and recreated comes back with another IP (the harness gives every pod
//! object its own address, as a CNI does), and the host cannot resolve the headless Service's
//! names, so a workload started against fixed addresses would lose its nodes one by one during
//! a rollout. Instead, every change of the Ready pods (from [`crate::readiness`]) stops the
//! current round of clients, which waits for their requests in flight and records them, and
//! starts a new round against the new set. Rounds share one [`Recorder`] and use distinct
//! client prefixes, so the values written stay unique and one history covers them all.

use std::sync::Arc;

use dynamo_tests::workload::{Endpoint, Recorder, Workload, WorkloadOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::readiness::ReadyPods;

/// The running traffic; [`Traffic::stop`] ends it after the requests in flight (dropping it
/// ends it too, without waiting).
pub struct Traffic {
    cancel: CancellationToken,
    /// Joined by `stop`; `None` after it.
    task: Option<JoinHandle<TrafficReport>>,
}

/// What the traffic did.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrafficReport {
    /// Rounds of clients started (one per set of Ready pods).
    pub rounds: usize,
}

impl Traffic {
    /// Starts clients shaped by `options` (round `i` uses the prefix `<prefix><i>-` and a seed
    /// derived from `options.seed`) against the Ready pods' `port`, recording into `recorder`.
    pub fn start(
        recorder: Arc<Recorder>,
        options: WorkloadOptions,
        port: u16,
        pods: watch::Receiver<ReadyPods>,
    ) -> Traffic {
        let cancel = CancellationToken::new();
        // Not detached: `stop` cancels and joins it.
        let task = tokio::spawn(run(recorder, options, port, pods, cancel.clone()));
        Traffic { cancel, task: Some(task) }
    }

    /// Stops the clients after their requests in flight (recorded) and reports.
    pub async fn stop(mut self) -> TrafficReport {
        self.cancel.cancel();
        match self.task.take() {
            None => TrafficReport::default(),
            Some(task) => match task.await {
                Ok(report) => report,
                // A client panicked: surface it in the test rather than losing it.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        // The clients stop after their current request; nobody waits for them here.
        self.cancel.cancel();
    }
}

async fn run(
    recorder: Arc<Recorder>,
    options: WorkloadOptions,
    port: u16,
    mut pods: watch::Receiver<ReadyPods>,
    cancel: CancellationToken,
) -> TrafficReport {
    let mut report = TrafficReport::default();
    loop {
        let ready = pods.borrow_and_update().clone();
        let endpoints: Vec<Endpoint> = ready
            .iter()
            .filter_map(|(name, ip)| {
                let client =
                    crate::access::client(&format!("{ip}:{port}"), options.timeout).ok()?;
                Some(Endpoint { node: name.clone(), client })
            })
            .collect();
        let workload = (!endpoints.is_empty()).then(|| {
            let round = WorkloadOptions {
                prefix: format!("{}{}-", options.prefix, report.rounds),
                seed: options.seed.wrapping_add(report.rounds as u64),
                ..options.clone()
            };
            report.rounds += 1;
            Workload::start(endpoints, &round, recorder.clone())
        });
        let stop = tokio::select! {
            () = cancel.cancelled() => true,
            changed = pods.changed() => changed.is_err(),
        };
        if let Some(workload) = workload {
            workload.stop().await;
        }
        if stop {
            return report;
        }
    }
}
