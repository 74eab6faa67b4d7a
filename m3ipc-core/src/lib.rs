//! # m3ipc-core — the M3-IPC protocol and a sans-IO IPC engine
//!
//! The single home of the M3-IPC contract (see `DESIGN.md`): ids ([`DcId`], [`Endpoint`], [`NodeId`]),
//! the fixed-size [`Message`], the wire frame ([`wire`]) with its strict decoder, the error codes
//! ([`ErrorCode`]) and the [`engine`]: the state machine of endpoints, rendezvous, replies, notifications,
//! timeouts, vcopy and migration redirects. It never does I/O and never reads a clock: the caller feeds it
//! frames and `now`, and takes frames, timeouts and events out (the smoltcp / quinn-proto pattern), so the
//! same code runs in the guest kernel and in host tools, and is tested once, on the host.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod engine;
pub mod error;
pub mod ids;
pub mod message;
pub mod time;
pub mod wire;

pub use engine::{Completion, Engine, EngineConfig, Event, Stats, VcopyRequest};
pub use error::{ErrorCode, IpcError};
pub use ids::{DcId, Endpoint, NodeId};
pub use message::Message;
pub use time::Instant;
