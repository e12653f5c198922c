//! One file per verb of `kanister-agent`: its flags and what it does.

pub(super) mod backup;
pub(super) mod cat;
pub(super) mod check;
pub(super) mod diff;
pub(super) mod forget;
pub(super) mod ls;
pub(super) mod maintain;
pub(super) mod prune;
pub(super) mod pull;
pub(super) mod push;
pub(super) mod repo;
pub(super) mod restore;
pub(super) mod serve;
pub(super) mod snapshots;
pub(super) mod task;
