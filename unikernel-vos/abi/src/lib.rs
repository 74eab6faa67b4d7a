//! # dvs-vos-abi — the contract between the host and a VOS instance
//!
//! Two typed values cross the host/guest boundary, both encoded with postcard:
//! - [`boot::BootConfig`]: what the host tells a VOS at boot (DC, endpoints, services, addresses,
//!   knobs). The host builds and validates it, and passes it as one kernel command-line word
//!   `dvs.cfg=<hex>` ([`boot::BootConfig::to_cmdline_word`]); the guest decodes it with
//!   [`boot::BootConfig::from_cmdline`] and never parses ad-hoc text.
//! - [`control::ControlRecord`]: what the guest tells the host on its control channel (a serial
//!   line of its own, apart from the human console): ready, service up/down, fatal errors,
//!   counters, benchmark reports. Records are COBS-framed (a `0x00` ends each one), so a reader
//!   can resynchronise after garbage ([`control::RecordReader`]).
//!
//! The crate is `no_std` + `alloc` so that the guest kernel and the host build the same code.
//! Everything read from the other side is untrusted: decoders return errors, never panic.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod boot;
pub mod control;

pub use boot::{BootConfig, Cidr, ConfigError, IpConfig, Service};
pub use control::{ControlRecord, Counters, Ready, RecordReader, Report};
