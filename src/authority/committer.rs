//! Group commit for issuance: one thread signs and records every leaf, draining the
//! requests that queued while it was busy into one store write.
//!
//! Each issuance used to be its own store write and flush (or transaction), and concurrent
//! writes fought over the audit chain head. Here callers queue their leaves and wait; the
//! issuing thread takes everything queued (up to [`MAX_GROUP`] leaves), signs it and records
//! it with [`Authority::issue`], so the records, their audit entries and their instance
//! bindings of a whole group land in one durable write. A caller is answered only after that
//! write is durable; if the write fails, every caller of the group gets the failure (nobody is
//! answered without a durable record). A leaf refused on its own (an instance bound
//! elsewhere, a certificate that cannot be built) is refused alone: the others of its group
//! are issued.
//!
//! Async callers (the HTTP handlers) wait on a oneshot channel, so waiting takes no thread;
//! blocking callers wait on a plain channel. The queue is bounded: an async caller that finds
//! it full is told to retry ([`CommitError::Busy`]).

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use super::leaf::{LeafOutcome, LeafRequest};
use super::{Authority, AuthorityError};

/// Most leaves one group write holds: a bound on a write's size and on the wait of the first
/// caller in it (a batch request larger than this still goes in whole, alone).
pub(crate) const MAX_GROUP: usize = 1000;

/// What a group's write answers each caller: its own outcomes, in order, or the group's
/// failure (shared, since every caller of the group gets it).
pub(crate) type GroupResult = Result<Vec<LeafOutcome>, Arc<AuthorityError>>;

/// Why a request never reached a group write.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// The queue is full: the server has too much issuance work waiting.
    #[error("the server has too much issuance work queued; retry in a moment")]
    Busy,
    /// The issuing thread is gone (the CA is shutting down, or it failed).
    #[error("the issuing thread stopped")]
    Stopped,
    /// The group write failed; nothing of the group was recorded.
    #[error(transparent)]
    Failed(Arc<AuthorityError>),
}

/// Where a caller waits for its answer.
enum Reply {
    Blocking(SyncSender<GroupResult>),
    Async(tokio::sync::oneshot::Sender<GroupResult>),
}

impl Reply {
    fn send(self, r: GroupResult) {
        // A caller that went away (client disconnected) simply does not read its answer;
        // its certificates are recorded all the same.
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(r);
            }
            Reply::Async(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// One caller's leaves and where its answer goes.
struct Job {
    requests: Vec<LeafRequest>,
    reply: Reply,
}

/// The issuing thread and its queue. Dropping it stops the thread (after the group in hand)
/// and waits for it, so the store is released when its owner is dropped.
pub(crate) struct GroupCommitter {
    queue: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommitter")
    }
}

impl GroupCommitter {
    /// Starts the issuing thread for `authority`, with room for `queue_depth` waiting callers.
    /// The thread holds the authority weakly, so it never keeps it alive.
    pub(crate) fn start(
        authority: &Arc<Authority>,
        queue_depth: usize,
    ) -> std::io::Result<GroupCommitter> {
        let (tx, rx) = mpsc::sync_channel(queue_depth.max(1));
        let weak = Arc::downgrade(authority);
        let thread = std::thread::Builder::new()
            .name("lanyard-issue".into())
            .spawn(move || run(&weak, &rx))?;
        Ok(GroupCommitter {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    /// Issues `requests` in the next group write and waits (blocking this thread) until it
    /// is durable; waits for room when the queue is full.
    pub(crate) fn issue_blocking(
        &self,
        requests: Vec<LeafRequest>,
    ) -> Result<Vec<LeafOutcome>, CommitError> {
        let queue = self.queue.as_ref().ok_or(CommitError::Stopped)?;
        let (tx, rx) = mpsc::sync_channel(1);
        queue
            .send(Job {
                requests,
                reply: Reply::Blocking(tx),
            })
            .map_err(|_| CommitError::Stopped)?;
        rx.recv()
            .map_err(|_| CommitError::Stopped)?
            .map_err(CommitError::Failed)
    }

    /// Issues `requests` in the next group write and waits (without a thread) until it is
    /// durable; [`CommitError::Busy`] at once when the queue is full.
    pub(crate) async fn issue(
        &self,
        requests: Vec<LeafRequest>,
    ) -> Result<Vec<LeafOutcome>, CommitError> {
        let queue = self.queue.as_ref().ok_or(CommitError::Stopped)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            requests,
            reply: Reply::Async(tx),
        };
        queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => CommitError::Busy,
            TrySendError::Disconnected(_) => CommitError::Stopped,
        })?;
        rx.await
            .map_err(|_| CommitError::Stopped)?
            .map_err(CommitError::Failed)
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has answered what it holds.
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The issuing thread: waits for a first job, takes whatever else queued meanwhile, and
/// writes them as one group.
fn run(authority: &Weak<Authority>, queue: &Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut leaves = first.requests.len();
        let mut jobs = vec![first];
        while leaves < MAX_GROUP {
            match queue.try_recv() {
                Ok(j) => {
                    leaves += j.requests.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let Some(a) = authority.upgrade() else {
            for j in jobs {
                j.reply.send(Err(Arc::new(AuthorityError::NoActive)));
            }
            return;
        };
        commit_group(&a, jobs);
    }
}

/// Signs and records one group and answers each of its callers.
fn commit_group(authority: &Authority, jobs: Vec<Job>) {
    let mut sizes = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut all = Vec::new();
    for j in jobs {
        sizes.push(j.requests.len());
        replies.push(j.reply);
        all.extend(j.requests);
    }
    // A panic in signing must not leave the callers waiting forever nor stop issuance for
    // good: it fails this group, and the thread goes on with the next.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| authority.issue(&all)))
        .unwrap_or_else(|_| {
            Err(AuthorityError::Store(crate::store::StoreError::Backend(
                "issuance failed unexpectedly".into(),
            )))
        });
    match result {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for (n, reply) in sizes.into_iter().zip(replies) {
                reply.send(Ok(outcomes.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for reply in replies {
                reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::tests::{request, setup};
    use super::*;
    use crate::ids::Guid;

    fn instance_request(instance: &str, owner: &str) -> LeafRequest {
        let mut r = request(Duration::from_secs(600));
        r.kind = crate::store::CertificateKind::Instance;
        let g = |s: &str| s.parse::<Guid>().unwrap();
        r.instance = Some(super::super::InstanceIds {
            instance: g(instance),
            app: g("a0000000-0000-4000-8000-000000000001"),
            space: g("50000000-0000-4000-8000-000000000001"),
            organization: g("0f000000-0000-4000-8000-000000000001"),
        });
        r.requested_by = owner.into();
        r
    }

    #[test]
    fn concurrent_callers_are_answered_each_with_their_own_durable_records() {
        let (store, a) = setup();
        let a = Arc::new(a);
        let c = Arc::new(GroupCommitter::start(&a, 64).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let reqs = vec![request(Duration::from_secs(600)); 1 + i % 3];
                    (reqs.len(), c.issue_blocking(reqs).unwrap())
                })
            })
            .collect();
        for h in handles {
            let (n, outcomes) = h.join().unwrap();
            assert_eq!(outcomes.len(), n);
            for o in outcomes {
                let issued = o.unwrap();
                assert!(store
                    .get_certificate(&issued.record.serial)
                    .unwrap()
                    .is_some());
            }
        }
    }

    #[test]
    fn a_leaf_refused_in_a_group_does_not_fail_the_others() {
        let (store, a) = setup();
        let a = Arc::new(a);
        let c = GroupCommitter::start(&a, 8).unwrap();
        let guid = "10000000-0000-4000-8000-000000000001";
        let mine = c
            .issue_blocking(vec![instance_request(guid, "spiffe://t/cell/a")])
            .unwrap();
        assert!(mine[0].is_ok());
        let out = c
            .issue_blocking(vec![
                request(Duration::from_secs(600)),
                instance_request(guid, "spiffe://t/cell/b"),
                request(Duration::from_secs(600)),
            ])
            .unwrap();
        assert!(out[0].is_ok() && out[2].is_ok());
        assert!(out[1].is_err(), "the instance is bound to another cell");
        for o in [&out[0], &out[2]] {
            let serial = o.as_ref().unwrap().record.serial;
            assert!(store.get_certificate(&serial).unwrap().is_some());
        }
    }

    #[test]
    fn a_failed_group_write_fails_every_caller_in_it() {
        let (store, a) = setup();
        let a = Arc::new(a);
        // Retire nothing, but make the active generation unusable for the store: the write
        // is refused as not active, so every caller of the group gets the failure.
        let (id, _) = a.active().unwrap();
        let mut gens = store.load_generations().unwrap();
        for g in &mut gens.records {
            if g.id == id {
                g.state = crate::store::GenerationState::Retiring;
            }
        }
        store
            .save_authorities(&gens.records, gens.bundle_sequence, &[])
            .unwrap();
        let c = Arc::new(GroupCommitter::start(&a, 8).unwrap());
        // Several callers at once (whichever groups they land in), one of them with several
        // requests: each is told the write failed, none is answered a certificate.
        let callers: Vec<_> = (1..=3)
            .map(|n| {
                let c = c.clone();
                std::thread::spawn(move || {
                    c.issue_blocking(vec![request(Duration::from_secs(600)); n])
                })
            })
            .collect();
        for caller in callers {
            let out = caller.join().unwrap();
            assert!(matches!(out, Err(CommitError::Failed(_))), "{out:?}");
        }
    }

    #[tokio::test]
    async fn dropping_the_committer_ends_its_thread_and_releases_the_authority() {
        let (_store, a) = setup();
        let a = Arc::new(a);
        let c = GroupCommitter::start(&a, 8).unwrap();
        let out = c
            .issue(vec![request(Duration::from_secs(600))])
            .await
            .unwrap();
        assert!(out[0].is_ok());
        drop(c);
        assert_eq!(Arc::strong_count(&a), 1);
    }
}
