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
//!
//! Still to come (see DESIGN.md): the phase engine, the controller and `kanctl`.

pub mod crd;
pub mod functions;
pub mod render;
pub mod validate;
