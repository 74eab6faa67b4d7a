//! Echo server: answers every sendrec with the same message, acknowledges sends by taking
//! them, counts, and offers its vcopy buffer to peers.

use crate::ipc::{self, IpcRef};
use alloc::rc::Rc;
use core::cell::Cell;
use m3ipc_core::Endpoint;

/// Counters of one echo server.
#[derive(Default)]
pub struct EchoStats {
    /// Messages received.
    pub received: Cell<u64>,
    /// Replies sent.
    pub replied: Cell<u64>,
    /// Calls that failed (receive or reply error).
    pub errors: Cell<u64>,
}

/// Serves endpoint `ep` forever.
pub async fn serve(ipc: IpcRef, ep: Endpoint, stats: Rc<EchoStats>) {
    loop {
        match ipc::receive(&ipc, ep, Endpoint::ANY, None).await {
            Ok((msg, needs_reply)) => {
                stats.received.set(stats.received.get() + 1);
                if needs_reply {
                    match ipc::reply(&ipc, ep, msg.source, msg) {
                        Ok(()) => stats.replied.set(stats.replied.get() + 1),
                        Err(_) => stats.errors.set(stats.errors.get() + 1),
                    }
                }
            }
            Err(_) => {
                stats.errors.set(stats.errors.get() + 1);
                crate::executor::yield_now().await;
            }
        }
    }
}
