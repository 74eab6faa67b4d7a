//! Timing hooks of the switch: how long frames spend in it, and from a VM port to the peer-socket write that
//! carries them. The only place the switch reads a clock; it changes no routing decision.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use m3ipc_core::NodeId;

use super::Out;
use crate::counters::SwitchTiming;

/// Frames from VM ports waiting for their peer write, per peer, at most (older stamps are dropped then).
const MAX_WAITING: usize = 1 << 14;

/// The switch's timing state.
#[derive(Default)]
pub(super) struct Timing {
    pub(super) counters: SwitchTiming,
    /// When each frame from a VM port now in a peer's queue entered the switch, in queue order.
    waiting: HashMap<NodeId, VecDeque<Instant>>,
}

impl Timing {
    /// A frame from a VM port that entered at `t` is through; `new` are the outputs it made.
    pub(super) fn port_done(&mut self, t: Instant, new: &[Out]) {
        self.counters.port_frame.add(t.elapsed());
        for o in new {
            if let Out::Peer { node, .. } = o {
                let q = self.waiting.entry(*node).or_default();
                if q.len() >= MAX_WAITING {
                    q.clear();
                }
                q.push_back(t);
            }
        }
    }

    /// A frame from a peer that entered at `t` is through.
    pub(super) fn peer_done(&mut self, t: Instant) {
        self.counters.peer_frame.add(t.elapsed());
    }

    /// `frames` frames went out to `node` in one write (or were dropped there).
    pub(super) fn written(&mut self, node: NodeId, frames: u64) {
        let Some(q) = self.waiting.get_mut(&node) else {
            return;
        };
        let now = Instant::now();
        for _ in 0..frames {
            match q.pop_front() {
                Some(t) => self.counters.port_to_peer_write.add(now - t),
                None => break,
            }
        }
    }

    /// The link to `node` went down: its queue is gone.
    pub(super) fn forget(&mut self, node: NodeId) {
        self.waiting.remove(&node);
    }
}
