//! The readiness watcher: a background watch of a cluster's pods that records every change of
//! each pod's readiness with its time, so a test can tell afterwards how many nodes were down at
//! once during a rollout and how often each pod was restarted.
//!
//! The record ([`ReadinessLog`]) is pure and judged by pure functions: a pod is in one of the
//! [`PodState`]s; a pod that is terminating, deleted or not yet recreated counts as not Ready
//! for a member that should exist; a restart is a new pod object (a new UID) under a name
//! already seen. [`ReadinessWatcher`] feeds it from a kube `watcher` and also publishes the
//! addresses of the Ready pods, which [`crate::traffic`] sends its requests to.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where a pod (by name) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Exists, not Ready (starting, or its process is down).
    NotReady,
    /// Ready condition True, not being deleted.
    Ready,
    /// Being deleted (`deletionTimestamp` set): going down, whatever its condition says.
    Terminating,
    /// No pod object of this name.
    Gone,
}

/// One observed change of a pod name's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Since the log began.
    pub at: Duration,
    /// Pod name (the member).
    pub pod: String,
    /// UID of the pod object the state is about (for [`PodState::Gone`], the one deleted).
    pub uid: String,
    /// Its new state.
    pub state: PodState,
}

/// The moment the most members were not Ready at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peak {
    /// How many.
    pub count: usize,
    /// When (since the log began); zero when the peak was already there at the start.
    pub at: Duration,
    /// Which ones.
    pub pods: Vec<String>,
}

/// Every readiness change of the pods of one label selector, from a starting snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadinessLog {
    /// The pods at the start: name -> (uid, state).
    initial: BTreeMap<String, (String, PodState)>,
    /// Changes in the order observed.
    changes: Vec<Change>,
}

impl ReadinessLog {
    /// A log starting from these pods: (name, uid, state).
    pub fn new(initial: impl IntoIterator<Item = (String, String, PodState)>) -> ReadinessLog {
        ReadinessLog {
            initial: initial.into_iter().map(|(name, uid, state)| (name, (uid, state))).collect(),
            changes: Vec::new(),
        }
    }

    /// Records that pod `pod` (object `uid`) is now in `state`; returns whether that was a
    /// change. A [`PodState::Gone`] about an object that is no longer the pod of that name (its
    /// successor was seen first) is not one.
    pub fn record(&mut self, at: Duration, pod: &str, uid: &str, state: PodState) -> bool {
        let current = self.current_of(pod);
        let changed = match (&current, state) {
            (Some((cur_uid, _)), PodState::Gone) => cur_uid == uid,
            (None, PodState::Gone) => false,
            (Some((cur_uid, cur_state)), state) => cur_uid != uid || *cur_state != state,
            (None, _) => true,
        };
        if changed {
            self.changes.push(Change { at, pod: pod.into(), uid: uid.into(), state });
        }
        changed
    }

    /// The latest (uid, state) of a pod name, `None` if never seen or gone.
    fn current_of(&self, pod: &str) -> Option<(String, PodState)> {
        let latest = match self.changes.iter().rev().find(|c| c.pod == pod) {
            Some(c) => Some((c.uid.clone(), c.state)),
            None => self.initial.get(pod).cloned(),
        };
        latest.filter(|(_, state)| *state != PodState::Gone)
    }

    /// Every pod name's latest (uid, state), gone ones left out.
    pub fn current(&self) -> BTreeMap<String, (String, PodState)> {
        let mut now = self.initial.clone();
        for c in &self.changes {
            now.insert(c.pod.clone(), (c.uid.clone(), c.state));
        }
        now.retain(|_, (_, state)| *state != PodState::Gone);
        now
    }

    /// The changes, in order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The most `members` not Ready at one instant (absent, starting, terminating or down), and
    /// when: replays the log, counting after the start and after every change.
    pub fn max_not_ready(&self, members: &BTreeSet<String>) -> Peak {
        let mut states: BTreeMap<&str, PodState> =
            self.initial.iter().map(|(name, (_, state))| (name.as_str(), *state)).collect();
        let not_ready = |states: &BTreeMap<&str, PodState>| -> Vec<String> {
            members
                .iter()
                .filter(|m| states.get(m.as_str()) != Some(&PodState::Ready))
                .cloned()
                .collect()
        };
        let first = not_ready(&states);
        let mut peak = Peak { count: first.len(), at: Duration::ZERO, pods: first };
        for c in &self.changes {
            states.insert(&c.pod, c.state);
            let pods = not_ready(&states);
            if pods.len() > peak.count {
                peak = Peak { count: pods.len(), at: c.at, pods };
            }
        }
        peak
    }

    /// How many times each pod name was replaced by a new pod object (a new UID) during the
    /// log: a deleted and recreated StatefulSet pod counts once. A name first seen during the
    /// log (a new member) starts at zero.
    pub fn restarts(&self) -> BTreeMap<String, usize> {
        let mut uid: BTreeMap<&str, &str> =
            self.initial.iter().map(|(name, (u, _))| (name.as_str(), u.as_str())).collect();
        let mut restarts: BTreeMap<String, usize> =
            self.initial.keys().map(|name| (name.clone(), 0)).collect();
        for c in &self.changes {
            let count = restarts.entry(c.pod.clone()).or_default();
            match uid.insert(&c.pod, &c.uid) {
                Some(previous) if previous != c.uid => *count += 1,
                _ => {}
            }
        }
        restarts
    }

    /// How many times each pod name went from Ready to anything else (down, terminating,
    /// gone): also counts a process restarted inside the same pod object.
    pub fn downs(&self) -> BTreeMap<String, usize> {
        let mut state: BTreeMap<&str, PodState> =
            self.initial.iter().map(|(name, (_, s))| (name.as_str(), *s)).collect();
        let mut downs: BTreeMap<String, usize> =
            self.initial.keys().map(|name| (name.clone(), 0)).collect();
        for c in &self.changes {
            let count = downs.entry(c.pod.clone()).or_default();
            if state.insert(&c.pod, c.state) == Some(PodState::Ready) && c.state != PodState::Ready
            {
                *count += 1;
            }
        }
        downs
    }
}

impl fmt::Display for ReadinessLog {
    /// The timeline, one line per change, for failure messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, (uid, state)) in &self.initial {
            writeln!(f, "  start    {name} {state:?} (uid {})", short(uid))?;
        }
        for c in &self.changes {
            writeln!(
                f,
                "  {:>7.2}s {} {:?} (uid {})",
                c.at.as_secs_f64(),
                c.pod,
                c.state,
                short(&c.uid)
            )?;
        }
        Ok(())
    }
}

fn short(uid: &str) -> &str {
    uid.get(..8).unwrap_or(uid)
}

/// The state of a pod object.
pub fn state_of(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Terminating;
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded")) {
        return PodState::NotReady;
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        PodState::Ready
    } else {
        PodState::NotReady
    }
}

/// Pod name -> pod IP of the Ready pods.
pub type ReadyPods = BTreeMap<String, String>;

/// The background watch. Stop it with [`ReadinessWatcher::stop`] to get the log; dropping it
/// (a test that failed early) stops the watch too.
pub struct ReadinessWatcher {
    log: Arc<Mutex<ReadinessLog>>,
    ready: watch::Receiver<ReadyPods>,
    cancel: CancellationToken,
    /// Joined by `stop`; `None` after it.
    task: Option<JoinHandle<()>>,
}

impl ReadinessWatcher {
    /// Starts watching the pods of `namespace` matching `selector`; returns once the initial
    /// list is in (the log's starting snapshot).
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        selector: &str,
    ) -> anyhow::Result<ReadinessWatcher> {
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let log = Arc::new(Mutex::new(ReadinessLog::default()));
        let (ready_tx, ready) = watch::channel(ReadyPods::new());
        let (started_tx, started) = oneshot::channel();
        let cancel = CancellationToken::new();
        let config = watcher::Config::default().labels(selector);
        // Not detached: `stop` cancels and joins it.
        let task = tokio::spawn(watch_pods(
            api,
            config,
            log.clone(),
            ready_tx,
            started_tx,
            cancel.clone(),
        ));
        let watcher = ReadinessWatcher { log, ready, cancel, task: Some(task) };
        tokio::time::timeout(Duration::from_secs(30), started)
            .await
            .context("the pod watch did not list the pods within 30 s")?
            .context("the pod watch ended before listing the pods")?;
        Ok(watcher)
    }

    /// A copy of the log so far.
    pub fn log(&self) -> ReadinessLog {
        lock(&self.log).clone()
    }

    /// The Ready pods' addresses, updated on every change.
    pub fn ready_pods(&self) -> watch::Receiver<ReadyPods> {
        self.ready.clone()
    }

    /// Stops the watch; the full log.
    pub async fn stop(mut self) -> ReadinessLog {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        lock(&self.log).clone()
    }
}

impl Drop for ReadinessWatcher {
    fn drop(&mut self) {
        // The task ends at its next event or at once if idle; nobody waits for it here.
        self.cancel.cancel();
    }
}

fn lock(log: &Mutex<ReadinessLog>) -> MutexGuard<'_, ReadinessLog> {
    // Each update is one call on the log: a panic cannot leave it half-updated.
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn watch_pods(
    api: Api<Pod>,
    config: watcher::Config,
    log: Arc<Mutex<ReadinessLog>>,
    ready: watch::Sender<ReadyPods>,
    started: oneshot::Sender<()>,
    cancel: CancellationToken,
) {
    let start = Instant::now();
    let mut started = Some(started);
    let mut stream = watcher(api, config).default_backoff().boxed();
    // The pods as last seen, and those of a re-list in progress.
    let mut known: BTreeMap<String, Pod> = BTreeMap::new();
    let mut listing: BTreeMap<String, Pod> = BTreeMap::new();
    let mut last_error = String::new();
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            event = stream.next() => event,
        };
        let at = start.elapsed();
        match event {
            None => break,
            Some(Err(e)) => {
                let e = e.to_string();
                if e != last_error {
                    eprintln!("readiness watcher: {e} (retrying)");
                    last_error = e;
                }
                continue;
            }
            Some(Ok(Event::Init)) => listing.clear(),
            Some(Ok(Event::InitApply(pod))) => {
                listing.insert(pod.name_any(), pod);
            }
            Some(Ok(Event::InitDone)) => {
                let mut log = lock(&log);
                if let Some(started) = started.take() {
                    *log = ReadinessLog::new(
                        listing.values().map(|p| (p.name_any(), uid(p), state_of(p))),
                    );
                    let _ = started.send(());
                } else {
                    // A re-list after the watch broke: what is not listed was deleted meanwhile.
                    for (name, pod) in &known {
                        if !listing.contains_key(name) {
                            log.record(at, name, &uid(pod), PodState::Gone);
                        }
                    }
                    for (name, pod) in &listing {
                        log.record(at, name, &uid(pod), state_of(pod));
                    }
                }
                known = std::mem::take(&mut listing);
            }
            Some(Ok(Event::Apply(pod))) => {
                lock(&log).record(at, &pod.name_any(), &uid(&pod), state_of(&pod));
                known.insert(pod.name_any(), pod);
            }
            Some(Ok(Event::Delete(pod))) => {
                lock(&log).record(at, &pod.name_any(), &uid(&pod), PodState::Gone);
                known.remove(&pod.name_any());
            }
        }
        let now: ReadyPods = known
            .iter()
            .filter(|(_, p)| state_of(p) == PodState::Ready)
            .filter_map(|(name, p)| Some((name.clone(), p.status.as_ref()?.pod_ip.clone()?)))
            .collect();
        ready.send_if_modified(|old| {
            let changed = *old != now;
            *old = now;
            changed
        });
    }
}

fn uid(pod: &Pod) -> String {
    pod.uid().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use PodState::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn members(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn three_ready() -> ReadinessLog {
        ReadinessLog::new(["a", "b", "c"].map(|n| (n.to_string(), format!("{n}1"), Ready)))
    }

    /// Pod `name` deleted and recreated as object `new_uid`, Ready again at `t + 3`.
    fn restart(log: &mut ReadinessLog, t: u64, name: &str, old_uid: &str, new_uid: &str) {
        log.record(s(t), name, old_uid, Terminating);
        log.record(s(t + 1), name, old_uid, Gone);
        log.record(s(t + 2), name, new_uid, NotReady);
        log.record(s(t + 3), name, new_uid, Ready);
    }

    #[test]
    fn a_rollout_one_pod_at_a_time_has_one_down_and_one_restart_each() {
        let mut log = three_ready();
        restart(&mut log, 10, "a", "a1", "a2");
        restart(&mut log, 20, "b", "b1", "b2");
        restart(&mut log, 30, "c", "c1", "c2");
        let peak = log.max_not_ready(&members(&["a", "b", "c"]));
        assert_eq!(peak.count, 1);
        assert_eq!(peak.pods, ["a"]);
        assert_eq!(peak.at, s(10));
        let once: BTreeMap<String, usize> = ["a", "b", "c"].map(|n| (n.to_string(), 1)).into();
        assert_eq!(log.restarts(), once);
        assert_eq!(log.downs(), once);
    }

    #[test]
    fn overlapping_restarts_are_caught() {
        let mut log = three_ready();
        log.record(s(10), "a", "a1", Terminating);
        log.record(s(11), "a", "a1", Gone);
        log.record(s(12), "a", "a2", NotReady);
        // b goes before a's replacement is Ready.
        log.record(s(13), "b", "b1", Terminating);
        log.record(s(14), "a", "a2", Ready);
        let peak = log.max_not_ready(&members(&["a", "b", "c"]));
        assert_eq!(peak, Peak { count: 2, at: s(13), pods: vec!["a".into(), "b".into()] });
    }

    #[test]
    fn an_absent_member_counts_as_not_ready() {
        // c's pod does not exist at the start (being recreated): with b down, two are out.
        let mut log = ReadinessLog::new([
            ("a".to_string(), "a1".to_string(), Ready),
            ("b".to_string(), "b1".to_string(), Ready),
        ]);
        assert_eq!(log.max_not_ready(&members(&["a", "b", "c"])).count, 1);
        log.record(s(1), "b", "b1", NotReady);
        let peak = log.max_not_ready(&members(&["a", "b", "c"]));
        assert_eq!((peak.count, peak.pods), (2, vec!["b".into(), "c".into()]));
        // A pod that is not a member (a node being added) is not counted.
        log.record(s(2), "d", "d1", NotReady);
        assert_eq!(log.max_not_ready(&members(&["a", "b", "c"])).count, 2);
        assert_eq!(log.restarts().get("d"), Some(&0));
    }

    #[test]
    fn a_process_restart_is_a_down_but_not_a_restart_of_the_pod() {
        let mut log = three_ready();
        log.record(s(1), "a", "a1", NotReady);
        log.record(s(2), "a", "a1", Ready);
        assert_eq!(log.restarts()["a"], 0);
        assert_eq!(log.downs()["a"], 1);
    }

    #[test]
    fn unchanged_states_and_stale_deletions_are_not_recorded() {
        let mut log = three_ready();
        assert!(!log.record(s(1), "a", "a1", Ready));
        // The replacement seen before the old object's deletion (a re-list): the deletion is
        // about an object that is no longer the pod of that name.
        assert!(log.record(s(2), "a", "a2", NotReady));
        assert!(!log.record(s(3), "a", "a1", Gone));
        assert!(!log.record(s(4), "x", "x1", Gone));
        assert_eq!(log.changes().len(), 1);
        assert_eq!(log.restarts()["a"], 1);
        assert_eq!(log.current()["a"], ("a2".to_string(), NotReady));
    }

    #[test]
    fn a_pod_replaced_twice_counts_two_restarts() {
        let mut log = three_ready();
        restart(&mut log, 10, "a", "a1", "a2");
        restart(&mut log, 20, "a", "a2", "a3");
        assert_eq!(log.restarts()["a"], 2);
        assert_eq!(log.restarts()["b"], 0);
        let text = log.to_string();
        assert!(text.contains("a Terminating (uid a2)"), "{text}");
    }
}
