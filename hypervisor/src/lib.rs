//! # dvs-hypervisor — the node daemon and the `dvs` CLI
//!
//! The daemon (`dvs node`) keeps an image store and the node's volumes, boots instances through dvs-instance's backends, runs the node's proxy
//! and answers an HTTP/JSON API; the CLI talks to that API. See hypervisor/README.md.
#![warn(missing_docs)]

pub mod api;
pub mod apply;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod control;
mod control_api;
pub mod daemon;
pub mod images;
pub mod instances;
pub mod manifest;
pub mod metrics;
pub mod migrate;
pub mod validate;
pub mod volumes;
