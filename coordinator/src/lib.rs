//! The Kanister coordinator: the Kubernetes side of the project.
//!
//! It will hold the CRD types (`ActionSet`, `Blueprint`, `Profile`), the blueprint template
//! renderer, the phase engine and the controller, and the `kanctl` CLI. See DESIGN.md.
