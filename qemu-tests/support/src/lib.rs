//! # dvs-test-support — role doubles, the cluster fixture and its check runner
//!
//! - [`roles`] (binary `dvs-double`): host programs run as machines that play roles a real VOS never
//!   plays (spoofer, ARP probe, console liar, garbage sender) and the benchmark baselines without a VM
//!   (`host-echo`, `host-bench`); each reports through the control channel like a guest ([`double`]).
//! - [`cluster`]: N nodes as network namespaces on a bridge, their daemons as children, all torn down on
//!   drop ([`netns`] guards); [`api`]: a blocking typed client with [`api::Api::wait_view`] (long polls on
//!   an instance's revision); [`wait::eventually`] for state without a change feed.
//! - [`runner`]: an ordered runner of named checks printing libtest-style lines; [`http`]: a blocking
//!   HTTP/1.1 client with one timeout per exchange, for the checks of the web server.
//!
//! The cluster test itself is `tests/cluster.rs` (`make cluster-test`).
#![warn(missing_docs)]

pub mod api;
pub mod arp;
pub mod cluster;
pub mod double;
pub mod http;
pub mod netns;
pub mod roles;
pub mod runner;
pub mod vos;
pub mod wait;
