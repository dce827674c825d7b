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
