//! One async lock per object id, so that a fetch's commit, a local store, an incoming
//! replica and a delete of the same object happen one at a time, in the order they took the
//! lock. Without it a fetch that started before a local store could commit its older copy
//! over the newer one.
//!
//! The table holds weak references: an entry lives while someone holds or waits for the
//! lock; a released or abandoned entry is removed by the guard's drop, or swept once the
//! table has doubled since the last sweep (a waiter cancelled mid-wait).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::id::ObjectId;

#[derive(Default)]
struct Table {
    locks: HashMap<ObjectId, Weak<AsyncMutex<()>>>,
    /// Sweep dead entries when the table reaches this size.
    sweep_at: usize,
}

/// The per-object lock table.
#[derive(Default)]
pub(crate) struct ObjectLocks {
    table: Arc<Mutex<Table>>,
}

impl ObjectLocks {
    /// Waits for exclusive use of `object`.
    pub(crate) async fn lock(&self, object: ObjectId) -> ObjectGuard {
        let lock = {
            let mut table = lock_table(&self.table);
            match table.locks.get(&object).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(AsyncMutex::new(()));
                    table.locks.insert(object, Arc::downgrade(&lock));
                    if table.locks.len() >= table.sweep_at {
                        table.locks.retain(|_, lock| lock.strong_count() > 0);
                        table.sweep_at = (table.locks.len() * 2).max(64);
                    }
                    lock
                }
            }
        };
        let guard = lock.lock_owned().await;
        ObjectGuard {
            guard: Some(guard),
            object,
            table: Arc::clone(&self.table),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock_table(&self.table).locks.len()
    }
}

fn lock_table(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Exclusive use of one object until dropped.
pub(crate) struct ObjectGuard {
    guard: Option<OwnedMutexGuard<()>>,
    object: ObjectId,
    table: Arc<Mutex<Table>>,
}

impl Drop for ObjectGuard {
    fn drop(&mut self) {
        // Release first, so that only waiters keep the lock alive.
        drop(self.guard.take());
        let mut table = lock_table(&self.table);
        if table
            .locks
            .get(&self.object)
            .is_some_and(|lock| lock.strong_count() == 0)
        {
            table.locks.remove(&self.object);
        }
    }
}

/// The replications of one object this node has in flight (a `store`'s or a
/// `replicate`'s), so that a `delete(Everywhere)` can stop them and wait for the ones that
/// already sent their trailer before it asks the peers to delete: a replica committed after
/// the peer's delete would revive the file there.
#[derive(Default)]
pub(crate) struct Sending {
    /// Cancelled by a delete: attempts not past their trailer give up, no new one starts.
    pub(crate) void: tokio_util::sync::CancellationToken,
    /// Attempts alive, per peer.
    active: Mutex<HashMap<dfs_transport::NodeId, usize>>,
    idle: tokio::sync::Notify,
}

/// One replication attempt to `peer`, counted while alive.
pub(crate) struct Attempt {
    sending: Arc<Sending>,
    peer: dfs_transport::NodeId,
}

impl Sending {
    /// Counts an attempt to `peer` until the returned guard is dropped.
    pub(crate) fn attempt(self: &Arc<Self>, peer: dfs_transport::NodeId) -> Attempt {
        *lock_any(&self.active).entry(peer).or_default() += 1;
        Attempt {
            sending: Arc::clone(self),
            peer,
        }
    }

    /// Waits until no attempt is alive or `deadline`; the peers still being sent to.
    pub(crate) async fn settled(
        &self,
        deadline: tokio::time::Instant,
    ) -> Vec<dfs_transport::NodeId> {
        loop {
            let idle = self.idle.notified();
            let busy: Vec<_> = lock_any(&self.active).keys().copied().collect();
            if busy.is_empty() {
                return busy;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return lock_any(&self.active).keys().copied().collect();
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let mut active = lock_any(&self.sending.active);
        if let Some(n) = active.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.peer);
            }
        }
        drop(active);
        self.sending.idle.notify_waiters();
    }
}

/// The replications in flight per object.
#[derive(Default)]
pub(crate) struct Outgoing {
    table: Mutex<HashMap<ObjectId, Vec<Weak<Sending>>>>,
}

impl Outgoing {
    /// Registers a replication of `object` (its caller holds the object's lock, so a delete
    /// that comes later finds it).
    pub(crate) fn register(&self, object: ObjectId, sending: &Arc<Sending>) {
        let mut table = lock_any(&self.table);
        table.retain(|_, list| {
            list.retain(|s| s.strong_count() > 0);
            !list.is_empty()
        });
        table
            .entry(object)
            .or_default()
            .push(Arc::downgrade(sending));
    }

    /// Voids the replications of `object` registered so far and returns them (the caller
    /// holds the object's lock).
    pub(crate) fn void(&self, object: &ObjectId) -> Vec<Arc<Sending>> {
        let list = lock_any(&self.table).remove(object).unwrap_or_default();
        let live: Vec<_> = list.iter().filter_map(Weak::upgrade).collect();
        for sending in &live {
            sending.void.cancel();
        }
        live
    }
}

fn lock_any<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_no_leftover_entries() {
        let locks = Arc::new(ObjectLocks::default());
        let a = ObjectId([1; 32]);
        let first = locks.lock(a).await;
        let other = locks.lock(ObjectId([2; 32])).await;
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { locks.lock(a).await })
        };
        // The waiter cannot get in while `first` is held.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter gets the lock once it is released")
            .unwrap();
        assert_eq!(locks.len(), 2);
        drop(second);
        drop(other);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiters_leave_nothing_behind_for_long() {
        let locks = ObjectLocks::default();
        for i in 0..200u8 {
            let held = locks.lock(ObjectId([i; 32])).await;
            let mut waiter = Box::pin(locks.lock(ObjectId([i; 32])));
            // Poll the waiter once (it queues), then abandon it after the holder is gone.
            assert!(futures::poll!(waiter.as_mut()).is_pending());
            drop(held);
            drop(waiter);
        }
        // Abandoned entries are dead and swept as the table grows: it stays small.
        assert!(locks.len() <= 128, "{} entries", locks.len());
        let live = locks.lock(ObjectId([7; 32])).await;
        drop(live);
        assert!(
            lock_table(&locks.table)
                .locks
                .values()
                .all(|l| l.strong_count() == 0)
        );
    }
}
