//! The Kanister data mover.
//!
//! It moves database dumps and volume contents into a deduplicated, compressed, encrypted
//! repository in an object store, and back. The format lives in the IO-free `kanister-repo`
//! crate; this crate adds the IO around it:
//!
//! - [`store`]: object stores named by URL (`file://`, `s3://`, `az://`, `gs://`).
//! - [`repository`]: opening a repository, its index, snapshots, markers and prune marks.
//! - [`push`] / [`pull`]: the streaming pipelines, bounded in memory, parallel on all cores.
//! - [`packer`]: deduplication, packing and uploading, shared by every backup pipeline.
//! - [`tree`]: volume (directory tree) backup, restore and browsing.
//! - [`check`] / [`prune`]: verification and space reclamation (its module docs hold the
//!   garbage-collection protocol); [`exclusive`]: the maintenance lock that keeps prunes apart.
//! - [`progress`]: live counters for progress reports.
//! - [`cli`]: the `kanister-agent` command line; [`kando`]: upstream's in-pod helper.
//! - [`service`]: `kanister-agent serve`, the gRPC API (`kanister.agent.v1`) the coordinator drives.

pub mod check;
pub mod childenv;
pub mod cli;
pub mod dumpcheck;
pub mod error;
pub mod exclusive;
pub mod kando;
pub mod packer;
pub mod progress;
pub mod prune;
pub mod pull;
pub mod push;
pub mod repair;
pub mod repository;
pub mod service;
pub mod store;
pub mod task;
pub mod tree;

pub use error::{Error, Result};
