//! One async lock per object id, so that a fetch's commit, a local store, an incoming
//! replica and a delete of the same object happen one at a time, in the order they took the
//! lock. Without it a fetch that started before a local store could commit its older copy
//! over the newer one.
//!
//! Entries exist only while someone holds or waits for the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::id::ObjectId;

type Table = Mutex<HashMap<ObjectId, Arc<AsyncMutex<()>>>>;

/// The per-object lock table.
#[derive(Default)]
pub(crate) struct ObjectLocks {
    table: Arc<Table>,
}

impl ObjectLocks {
    /// Waits for exclusive use of `object`.
    pub(crate) async fn lock(&self, object: ObjectId) -> ObjectGuard {
        let lock = Arc::clone(
            lock_table(&self.table)
                .entry(object)
                .or_insert_with(|| Arc::new(AsyncMutex::new(()))),
        );
        let guard = lock.lock_owned().await;
        ObjectGuard {
            guard: Some(guard),
            object,
            table: Arc::clone(&self.table),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock_table(&self.table).len()
    }
}

fn lock_table(table: &Table) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Arc<AsyncMutex<()>>>> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Exclusive use of one object until dropped.
pub(crate) struct ObjectGuard {
    guard: Option<OwnedMutexGuard<()>>,
    object: ObjectId,
    table: Arc<Table>,
}

impl Drop for ObjectGuard {
    fn drop(&mut self) {
        // Release first, so the count below sees only the table's reference and waiters'.
        drop(self.guard.take());
        let mut table = lock_table(&self.table);
        if table
            .get(&self.object)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            table.remove(&self.object);
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
}
