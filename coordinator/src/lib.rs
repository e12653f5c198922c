//! The Kanister coordinator: the Kubernetes side of the project.
//!
//! Parts, in dependency order:
//!
//! - [`crd`]: the custom resources `ActionSet`, `Blueprint` and `Profile` (group
//!   `cr.kanister.io/v1alpha1`) with upstream Kanister's field names, and their CRDs (written to
//!   `deploy/crds/` by the `crdgen` binary).
//! - [`render`]: the blueprint template renderer: Go `text/template` semantics (through the
//!   `gotmpl` crate) with `missingkey=error`, the sprig functions real blueprints use, Go time
//!   layouts, and the template parameters (`.Object`, `.StatefulSet`, `.Secrets`, `.Profile`,
//!   `.Phases`, ...) with upstream names.
//! - [`functions`]: the catalogue of Kanister functions and their arguments.
//! - [`validate`]: static checks of a Blueprint, reporting every problem with its location.
//! - [`cluster`]: the `Cluster` interface, the only code that talks to Kubernetes, with a real
//!   (`kube`) and a local (processes on this machine) implementation.
//! - [`output`]: the `###Phase-output###:` protocol parsed from command output and pod logs.
//! - [`engine`]: the phase engine: runs ActionSets (actions concurrently, phases in order,
//!   defer phase always), records status and events, cancellation, timeouts, restart recovery.
//!
//! - [`controller`]: the `kube::runtime::Controller` that hands ActionSet changes to the engine.
//!
//! - [`api`]: the gRPC API (`kanister.coordinator.v1`) that `kanctl` speaks, acting on the
//!   custom resources through the `Cluster` interface.
//! - [`kanctl`]: the command-line client: flags to ActionSets, output, watch, connection.

pub mod api;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod functions;
pub mod kanctl;
pub mod leader;
pub mod output;
pub mod render;
pub mod validate;
