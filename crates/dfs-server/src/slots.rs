//! Slots for the peer requests that move file bytes (`Config::max_incoming_transfers`): at
//! most `limit` at once on the node, and at most a share of `max(1, limit / 2)` held by
//! any one peer, so that a single peer keeping its transfers going (a followed put says
//! `Waiting` for as long as its source is slow) cannot hold every slot. The same mechanism
//! bounds the `Get` offers waiting for their requester's `Proceed`.
//!
//! A request takes its peer's share first, then a node-wide slot, so one waiting beyond its
//! peer's share holds nothing. The per-peer table only has entries for peers holding or
//! waiting for a slot: the last one out removes the entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dfs_transport::NodeId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Why no slot was given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The peer holds its whole share (the number) until the deadline.
    PeerShare(usize),
    /// The node serves its whole limit (the number) until the deadline.
    Node(usize),
    /// The slots were closed.
    Closed,
}

/// The node's transfer slots.
pub(crate) struct TransferSlots {
    node: Semaphore,
    limit: usize,
    share: usize,
    peers: Mutex<HashMap<NodeId, Arc<Semaphore>>>,
}

/// One slot, given back when dropped.
pub(crate) struct Slot<'a> {
    // (Fields drop in this order: the permits, then the table entry.)
    _node: SemaphorePermit<'a>,
    _peer: OwnedSemaphorePermit,
    _entry: Entry<'a>,
}

/// A use of a peer's entry; the last one removes it.
struct Entry<'a> {
    share: Option<Arc<Semaphore>>,
    peer: NodeId,
    slots: &'a TransferSlots,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        drop(self.share.take());
        let mut peers = lock(&self.slots.peers);
        if peers
            .get(&self.peer)
            .is_some_and(|share| Arc::strong_count(share) == 1)
        {
            peers.remove(&self.peer);
        }
    }
}

impl TransferSlots {
    /// `limit` slots (at least 1), a peer's share being half of them (at least 1).
    pub(crate) fn new(limit: usize) -> Self {
        Self::with_share(limit, limit / 2)
    }

    /// `limit` slots (at least 1), at most `share` of them (at least 1) for one peer.
    pub(crate) fn with_share(limit: usize, share: usize) -> Self {
        let limit = limit.max(1);
        TransferSlots {
            node: Semaphore::new(limit),
            limit,
            share: share.clamp(1, limit),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until `peer` is below its share and the node below its limit, up to
    /// `deadline`.
    pub(crate) async fn acquire(
        &self,
        peer: NodeId,
        deadline: Instant,
    ) -> Result<Slot<'_>, Refused> {
        let share = Arc::clone(
            lock(&self.peers)
                .entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(self.share))),
        );
        let entry = Entry {
            share: Some(Arc::clone(&share)),
            peer,
            slots: self,
        };
        let peer_permit = match tokio::time::timeout_at(deadline, share.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(Refused::Closed),
            Err(_) => return Err(Refused::PeerShare(self.share)),
        };
        let node_permit = match tokio::time::timeout_at(deadline, self.node.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(Refused::Closed),
            Err(_) => return Err(Refused::Node(self.limit)),
        };
        Ok(Slot {
            _node: node_permit,
            _peer: peer_permit,
            _entry: entry,
        })
    }

    #[cfg(test)]
    fn peers_tracked(&self) -> usize {
        lock(&self.peers).len()
    }
}

fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn a_peer_gets_half_the_slots_and_the_table_empties() {
        let slots = TransferSlots::new(4);
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let a1 = slots.acquire(a, soon()).await.unwrap();
        let a2 = slots.acquire(a, soon()).await.unwrap();
        assert_eq!(
            slots.acquire(a, soon()).await.err(),
            Some(Refused::PeerShare(2))
        );
        let b1 = slots.acquire(b, soon()).await.unwrap();
        let b2 = slots.acquire(b, soon()).await.unwrap();
        assert_eq!(
            slots.acquire(b, soon()).await.err(),
            Some(Refused::PeerShare(2))
        );
        assert_eq!(slots.peers_tracked(), 2);
        drop((a1, b1));
        let c = NodeId([3; 32]);
        let c1 = slots.acquire(c, soon()).await.unwrap();
        let c2 = slots.acquire(c, soon()).await.unwrap();
        assert_eq!(slots.acquire(a, soon()).await.err(), Some(Refused::Node(4)));
        drop((a2, b2, c1, c2));
        assert_eq!(slots.peers_tracked(), 0);
    }

    #[tokio::test]
    async fn one_slot_is_every_peers_share() {
        let slots = TransferSlots::new(1);
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let a1 = slots.acquire(a, soon()).await.unwrap();
        assert_eq!(slots.acquire(b, soon()).await.err(), Some(Refused::Node(1)));
        assert_eq!(
            slots.peers_tracked(),
            1,
            "a refused peer leaves no entry behind"
        );
        drop(a1);
        drop(slots.acquire(b, soon()).await.unwrap());
        assert_eq!(slots.peers_tracked(), 0);
    }
}
