//! Background work behind one abstraction (as Garage's `Worker`): each job (failure probes,
//! gossip, partition transfer, hinted handoff, cleanup, anti-entropy, readiness) is a
//! [`Worker`] that does one step of work at a time, and one [`Runner`] runs them all: it waits
//! between steps, stops them when the shutdown token is cancelled (a step in progress is
//! dropped at its next await point), drains them within a deadline, and records each one's
//! state in [`Statuses`] so an admin call can show it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a worker's last step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// It did some work.
    Busy,
    /// There was nothing to do.
    Idle,
    /// It is finished for good; the runner stops calling it.
    Done,
}

/// One background job. Steps must leave the job's state consistent at every await point,
/// since shutdown drops a step in progress.
pub trait Worker: Send + 'static {
    /// A short name, for logs and [`Statuses`].
    fn name(&self) -> &'static str;

    /// How long to wait before the next step (read before every step).
    fn wait(&self) -> Duration;

    /// Does one step of work.
    fn step(&mut self) -> BoxFuture<'_, WorkerState>;
}

/// What the runner knows of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The state its last step returned (`None` before the first step).
    pub state: Option<WorkerState>,
    /// Steps completed.
    pub steps: u64,
    /// Whether it has stopped (done, or shut down).
    pub stopped: bool,
    /// Steps that panicked; the runner logs each, backs off and steps the worker again.
    pub panics: u64,
}

/// Every worker's status, by name; cheap to clone and shared with whoever reports it.
#[derive(Debug, Clone, Default)]
pub struct Statuses(Arc<Mutex<BTreeMap<&'static str, WorkerStatus>>>);

impl Statuses {
    /// A copy of every worker's status.
    pub fn snapshot(&self) -> BTreeMap<&'static str, WorkerStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, name: &'static str, f: impl FnOnce(&mut WorkerStatus)) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(name).or_insert(WorkerStatus {
            state: None,
            steps: 0,
            stopped: false,
            panics: 0,
        }));
    }
}

/// Runs workers until the shutdown token is cancelled. See the module docs.
pub struct Runner {
    tasks: JoinSet<()>,
    statuses: Statuses,
    shutdown: CancellationToken,
}

impl Runner {
    pub fn new(shutdown: CancellationToken) -> Runner {
        Runner { tasks: JoinSet::new(), statuses: Statuses::default(), shutdown }
    }

    /// The shutdown token, for workers that check it between synchronous pieces of work.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The statuses of the workers this runner runs.
    pub fn statuses(&self) -> Statuses {
        self.statuses.clone()
    }

    /// Starts a worker: wait, step, record, repeat until it is done or shutdown. A step that
    /// panics does not end the worker silently: the panic is logged and counted, and the
    /// worker is stepped again after a backoff (1 s, doubling up to a minute), like a
    /// supervisor restarting a failed job.
    pub fn spawn(&mut self, mut worker: impl Worker) {
        use futures::FutureExt as _;
        let (statuses, shutdown) = (self.statuses.clone(), self.shutdown.clone());
        let name = worker.name();
        statuses.update(name, |_| {});
        self.tasks.spawn(async move {
            let mut backoff = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(worker.wait() + backoff) => {}
                }
                let step = std::panic::AssertUnwindSafe(worker.step()).catch_unwind();
                let state = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    state = step => state,
                };
                let state = match state {
                    Ok(state) => {
                        backoff = Duration::ZERO;
                        state
                    }
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                        tracing::error!(worker = name, %message, ?backoff, "a background worker's step panicked; stepping it again after the backoff (a bug: please report it)");
                        statuses.update(name, |s| s.panics += 1);
                        continue;
                    }
                };
                statuses.update(name, |s| {
                    s.state = Some(state);
                    s.steps += 1;
                });
                if state == WorkerState::Done {
                    break;
                }
            }
            statuses.update(name, |s| s.stopped = true);
        });
    }

    /// Cancels the shutdown token and waits up to `deadline` for every worker to stop.
    pub async fn drain(mut self, deadline: Duration) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(?deadline, "background workers did not stop in time; abandoning them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy twice, then idle, then done; or, with `hang`, a step that never ends; with
    /// `panic_at`, that step panics.
    struct Counter {
        steps: u32,
        hang: bool,
        panic_at: Option<u32>,
    }

    impl Worker for Counter {
        fn name(&self) -> &'static str {
            if self.hang {
                "hang"
            } else {
                "counter"
            }
        }

        fn wait(&self) -> Duration {
            Duration::from_millis(100)
        }

        fn step(&mut self) -> BoxFuture<'_, WorkerState> {
            Box::pin(async move {
                if self.hang {
                    std::future::pending::<()>().await;
                }
                self.steps += 1;
                if self.panic_at == Some(self.steps) {
                    panic!("step {} fails", self.steps);
                }
                match self.steps {
                    1 | 2 => WorkerState::Busy,
                    3 => WorkerState::Idle,
                    _ => WorkerState::Done,
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_runner_steps_a_worker_until_done_and_records_its_state() {
        let mut runner = Runner::new(CancellationToken::new());
        runner.spawn(Counter { steps: 0, hang: false, panic_at: None });
        let statuses = runner.statuses();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = &statuses.snapshot()["counter"];
        assert_eq!((s.state, s.steps, s.stopped), (Some(WorkerState::Busy), 2, false));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = &statuses.snapshot()["counter"];
        assert_eq!((s.state, s.steps, s.stopped), (Some(WorkerState::Done), 4, true));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_a_step_in_progress_within_the_deadline() {
        let mut runner = Runner::new(CancellationToken::new());
        runner.spawn(Counter { steps: 0, hang: true, panic_at: None });
        let statuses = runner.statuses();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!statuses.snapshot()["hang"].stopped);
        let start = tokio::time::Instant::now();
        runner.drain(Duration::from_secs(5)).await;
        assert!(start.elapsed() < Duration::from_secs(1), "a hanging step does not delay it");
        let s = &statuses.snapshot()["hang"];
        assert_eq!((s.state, s.steps, s.stopped), (None, 0, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_step_is_counted_and_the_worker_goes_on_after_a_backoff() {
        let mut runner = Runner::new(CancellationToken::new());
        runner.spawn(Counter { steps: 0, hang: false, panic_at: Some(2) });
        let statuses = runner.statuses();
        // Step 1 at 100 ms; step 2 panics at 200 ms; the backoff (1 s) delays step 3.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = &statuses.snapshot()["counter"];
        assert_eq!((s.steps, s.panics, s.stopped), (1, 1, false));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = &statuses.snapshot()["counter"];
        assert_eq!((s.state, s.panics, s.stopped), (Some(WorkerState::Done), 1, true));
    }
}
