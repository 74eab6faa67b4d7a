//! The VOS's services, chosen by `svc=` on the command line.

pub mod echo;
pub mod http;
pub mod ipc_bench;
pub mod udp_echo;
