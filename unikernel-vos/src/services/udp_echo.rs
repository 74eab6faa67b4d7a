//! UDP echo (RFC 862) on port 7: sends every datagram back to its sender.

use crate::executor;
use crate::net::Net;
use alloc::rc::Rc;
use alloc::vec;
use core::cell::RefCell;
use smoltcp::socket::udp;

/// UDP port served.
pub const PORT: u16 = 7;

/// Serves UDP echo on port `port` of `net` until the kernel stops; ends only if that NIC is
/// gone or UDP port 7 is taken.
pub async fn serve(net: Rc<RefCell<Net>>, port: usize) -> Result<(), &'static str> {
    let handle = {
        let mut n = net.borrow_mut();
        let Some(p) = n.ports.get_mut(port) else {
            return Err("no such NIC");
        };
        let meta = || vec![udp::PacketMetadata::EMPTY; 8];
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(meta(), vec![0; 8192]),
            udp::PacketBuffer::new(meta(), vec![0; 8192]),
        );
        if s.bind(PORT).is_err() {
            return Err("UDP port 7 is taken");
        }
        p.sockets.add(s)
    };
    let mut buf = vec![0u8; 2048];
    loop {
        {
            let mut n = net.borrow_mut();
            let Some(p) = n.ports.get_mut(port) else {
                return Err("no such NIC");
            };
            let s = p.sockets.get_mut::<udp::Socket>(handle);
            while s.can_recv() && s.can_send() {
                match s.recv_slice(&mut buf) {
                    Ok((len, meta)) => {
                        let _ = s.send_slice(&buf[..len], meta.endpoint);
                        executor::progress();
                    }
                    Err(_) => break,
                }
            }
        }
        executor::yield_now().await;
    }
}
