//! The bookkeeping of membership: every node heard of, and the addresses being dialled.
//!
//! Peer lists come from the network, so everything here is bounded: at most
//! [`MAX_LEARNED`] nodes known but not connected (learned by hearsay, or departed;
//! connected nodes are always kept), at most [`MAX_DIALS`] addresses dialled at once,
//! the first [`MAX_LIST`] entries of a peer list, and addresses up to [`MAX_ADDR_LEN`]
//! bytes. A learned node whose address keeps failing is forgotten; the repair loop
//! redials the known nodes that are not connected.

use std::collections::{HashMap, HashSet};

use dfs_transport::NodeId;

use crate::wire::PeerAddr;

/// Nodes learned from peer lists (not connected) kept at most.
pub(crate) const MAX_LEARNED: usize = 1024;
/// Addresses dialled concurrently at most; the rest wait for a later repair round.
pub(crate) const MAX_DIALS: usize = 32;
/// Longest address accepted from a peer list (the transport's own handshake limit).
pub(crate) const MAX_ADDR_LEN: usize = 1024;
/// Entries of one peer list looked at; the rest are ignored (gossip repeats every second,
/// in another order each time, so a large network is still learned).
pub(crate) const MAX_LIST: usize = 1024;

/// Known nodes and in-flight dials.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    /// Every node heard of, with its address, and whether it is connected.
    known: HashMap<NodeId, Known>,
    /// How many of `known` are not connected.
    unconnected: usize,
    dialing: HashSet<String>,
}

#[derive(Debug)]
struct Known {
    addr: String,
    connected: bool,
}

/// What to do with a node named in a peer list.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    /// Dial this address (and call [`Membership::dial_ended`] when done).
    Dial(String),
    /// Nothing now: connected, already being dialled, over a bound, or invalid.
    Skip,
}

impl Membership {
    /// A node is connected at `addr`.
    pub(crate) fn connected(&mut self, id: NodeId, addr: &str) {
        let old = self.known.insert(
            id,
            Known {
                addr: addr.to_owned(),
                connected: true,
            },
        );
        if old.is_some_and(|k| !k.connected) {
            self.unconnected -= 1;
        }
    }

    /// A node's connection ended; it stays known, to be redialled, unless the bound on
    /// unconnected nodes is reached.
    pub(crate) fn disconnected(&mut self, id: &NodeId) {
        let full = self.unconnected >= MAX_LEARNED;
        match self.known.get_mut(id) {
            Some(k) if k.connected && full => {
                self.known.remove(id);
            }
            Some(k) if k.connected => {
                k.connected = false;
                self.unconnected += 1;
            }
            _ => {}
        }
    }

    /// A peer named node `p` (or the repair loop found it unconnected).
    pub(crate) fn learn(&mut self, p: &PeerAddr, is_self: bool) -> Learned {
        if is_self || p.addr.is_empty() || p.addr.len() > MAX_ADDR_LEN {
            return Learned::Skip;
        }
        match self.known.get(&p.id) {
            Some(k) if k.connected => return Learned::Skip,
            Some(_) => {}
            None => {
                if self.unconnected >= MAX_LEARNED {
                    return Learned::Skip;
                }
                self.unconnected += 1;
                self.known.insert(
                    p.id,
                    Known {
                        addr: p.addr.clone(),
                        connected: false,
                    },
                );
            }
        }
        if self.dialing.len() >= MAX_DIALS || !self.dialing.insert(p.addr.clone()) {
            return Learned::Skip;
        }
        Learned::Dial(p.addr.clone())
    }

    /// The dial of `p` ended; `joined` says whether node `p.id` is now connected. A node
    /// never reached at its address is forgotten (unless it connected meanwhile).
    pub(crate) fn dial_ended(&mut self, p: &PeerAddr, joined: bool) {
        self.dialing.remove(&p.addr);
        if !joined
            && self
                .known
                .get(&p.id)
                .is_some_and(|k| !k.connected && k.addr == p.addr)
        {
            self.known.remove(&p.id);
            self.unconnected -= 1;
        }
    }

    /// Known nodes that are not connected.
    pub(crate) fn missing(&self) -> Vec<PeerAddr> {
        self.known
            .iter()
            .filter(|(_, k)| !k.connected)
            .map(|(id, k)| PeerAddr {
                id: *id,
                addr: k.addr.clone(),
            })
            .collect()
    }

    /// Every known node with its address, and whether it is connected.
    #[cfg(test)]
    fn all(&self) -> impl Iterator<Item = (NodeId, &str, bool)> {
        self.known
            .iter()
            .map(|(id, k)| (*id, k.addr.as_str(), k.connected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u32) -> PeerAddr {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        PeerAddr {
            id: NodeId(id),
            addr: format!("10.0.0.1:{i}"),
        }
    }

    #[test]
    fn learned_nodes_and_dials_are_bounded() {
        let mut m = Membership::default();
        let mut dials = Vec::new();
        for i in 0..5000 {
            if let Learned::Dial(addr) = m.learn(&node(i), false) {
                dials.push((i, addr));
            }
        }
        assert_eq!(dials.len(), MAX_DIALS);
        assert_eq!(m.missing().len(), MAX_LEARNED);
        // Failed dials free their slots and forget the node; others get their turn.
        for (i, _) in &dials {
            m.dial_ended(&node(*i), false);
        }
        assert_eq!(m.missing().len(), MAX_LEARNED - MAX_DIALS);
        assert!(matches!(m.learn(&node(4999), false), Learned::Dial(_)));
        // Connected nodes are kept beyond the bound, and dropped when they leave while it
        // is reached.
        m.connected(node(9999).id, "10.0.0.2:1");
        assert_eq!(m.all().filter(|(_, _, c)| *c).count(), 1);
        assert_eq!(m.missing().len(), MAX_LEARNED - MAX_DIALS + 1);
        for i in 10_000..12_000 {
            m.connected(node(i).id, &node(i).addr);
            m.disconnected(&node(i).id);
        }
        assert_eq!(m.missing().len(), MAX_LEARNED);
        assert_eq!(m.all().count(), MAX_LEARNED + 1);
    }

    #[test]
    fn connected_self_invalid_and_duplicate_dials_are_skipped() {
        let mut m = Membership::default();
        let a = node(1);
        m.connected(a.id, &a.addr);
        assert_eq!(m.learn(&a, false), Learned::Skip);
        assert_eq!(m.learn(&node(2), true), Learned::Skip);
        let long = PeerAddr {
            addr: "x".repeat(MAX_ADDR_LEN + 1),
            ..node(3)
        };
        assert_eq!(m.learn(&long, false), Learned::Skip);
        assert!(m.missing().is_empty());
        assert_eq!(m.learn(&node(4), false), Learned::Dial(node(4).addr));
        assert_eq!(m.learn(&node(4), false), Learned::Skip, "already dialling");
        // It connected through another path while the dial failed: still known.
        m.connected(node(4).id, &node(4).addr);
        m.dial_ended(&node(4), false);
        assert_eq!(m.all().count(), 2);
        m.disconnected(&node(4).id);
        assert_eq!(m.missing(), vec![node(4)]);
    }
}
