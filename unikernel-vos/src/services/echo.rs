//! Echo server: answers every sendrec with the same message, acknowledges sends by taking
//! them, counts messages and notifications, and offers its vcopy buffer to peers.

use crate::ipc::{self, IpcRef};
use alloc::rc::Rc;
use core::cell::Cell;
use m3ipc_core::Endpoint;

/// Counters of the echo servers.
#[derive(Default)]
pub struct EchoStats {
    /// Messages received (notifications not included).
    pub received: Cell<u64>,
    /// Replies sent.
    pub replied: Cell<u64>,
    /// Notifications received (the engine coalesces those from one source until received).
    pub notified: Cell<u64>,
    /// Calls that failed (receive or reply error).
    pub errors: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Serves endpoint `ep` forever.
pub async fn serve(ipc: IpcRef, ep: Endpoint, stats: Rc<EchoStats>) -> Result<(), &'static str> {
    loop {
        match ipc::receive(&ipc, ep, Endpoint::ANY, None).await {
            Ok((msg, _)) if msg.is_notify() => bump(&stats.notified),
            Ok((msg, needs_reply)) => {
                bump(&stats.received);
                if needs_reply {
                    match ipc::reply(&ipc, ep, msg.source, msg) {
                        Ok(()) => bump(&stats.replied),
                        Err(_) => bump(&stats.errors),
                    }
                }
            }
            Err(_) => {
                bump(&stats.errors);
                crate::executor::yield_now().await;
            }
        }
    }
}
