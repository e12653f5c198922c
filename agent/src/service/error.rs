//! Errors of the gRPC service, and their one mapping to `tonic::Status`.

use std::sync::Arc;

use kanister_proto::agent::v1 as pb;
use prost::Message;

/// How a command run by an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailure {
    /// The program (never its arguments: they may hold secrets).
    pub program: String,
    /// Its exit status, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// Its last stderr lines, oldest first.
    pub stderr_tail: Vec<String>,
}

impl std::fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command {:?} ", self.program)?;
        match (self.exit_code, self.signal) {
            (Some(c), _) => write!(f, "exited with status {c}")?,
            (None, Some(s)) => write!(f, "was killed by signal {s}")?,
            _ => f.write_str("failed")?,
        }
        if self.stderr_tail.is_empty() {
            f.write_str(" and wrote nothing on stderr")
        } else {
            write!(f, "; its last stderr lines:\n{}", self.stderr_tail.join("\n"))
        }
    }
}

/// What the service can answer instead of a result. Cheap to clone: a finished operation's error
/// is handed to every caller that attaches to it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed or incomplete.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The caller did not prove who it is (token, TLS, client certificate).
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// Too many operations are running or queued.
    #[error("too many operations: {active} running or queued (limit {limit}); retry later")]
    Exhausted {
        /// Operations running or queued.
        active: usize,
        /// The limit.
        limit: usize,
    },
    /// The operation id is taken by an operation of another kind or with other parameters.
    #[error("operation {0:?} already exists with another kind or other parameters; choose a new id")]
    OpConflict(String),
    /// No operation has this id (never started, or forgotten after the retention period).
    #[error("no operation {0:?} (never started, or finished longer ago than the retention period)")]
    UnknownOp(String),
    /// The data path failed.
    #[error("{}", chain(.0))]
    Agent(Arc<crate::Error>),
    /// The command of the operation failed; nothing was written to the repository.
    #[error("{0}")]
    Command(CommandFailure),
    /// The operation was cancelled.
    #[error("the operation was cancelled")]
    Cancelled,
    /// The agent is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected failure inside the agent.
    #[error("internal error: {0}")]
    Internal(String),
    /// An error of a given operation: the same error, with the operation it ended.
    #[error("{error}")]
    Op {
        /// The operation's id.
        op_id: String,
        /// Its kind.
        kind: pb::OperationKind,
        /// What happened.
        error: Box<Error>,
    },
}

/// Result with the service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        Error::Agent(Arc::new(e))
    }
}

/// The message, its causes and the hint, on one line.
fn chain(e: &crate::Error) -> String {
    let mut s = crate::error::error_chain(e);
    if let Some(h) = e.hint() {
        s.push_str(" (hint: ");
        s.push_str(h);
        s.push(')');
    }
    s
}

impl Error {
    /// The error with the operation it ended.
    pub fn in_op(self, op_id: &str, kind: pb::OperationKind) -> Error {
        match self {
            e @ Error::Op { .. } => e,
            e => Error::Op { op_id: op_id.to_string(), kind, error: Box::new(e) },
        }
    }

    /// The error itself, without its operation.
    pub fn root(&self) -> &Error {
        match self {
            Error::Op { error, .. } => error.root(),
            e => e,
        }
    }

    /// Whether trying again (later, with a new operation id) may succeed.
    pub fn retryable(&self) -> bool {
        use crate::store::StoreError;
        match self.root() {
            Error::Exhausted { .. } | Error::ShuttingDown => true,
            Error::Agent(e) => matches!(**e, crate::Error::Store(StoreError::Backend { .. }) | crate::Error::Io { .. }),
            _ => false,
        }
    }

    fn code(&self) -> tonic::Code {
        use crate::store::StoreError;
        use tonic::Code;
        match self.root() {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Exhausted { .. } => Code::ResourceExhausted,
            Error::OpConflict(_) => Code::AlreadyExists,
            Error::UnknownOp(_) => Code::NotFound,
            Error::Command(_) => Code::Aborted,
            Error::Cancelled => Code::Cancelled,
            Error::ShuttingDown => Code::Unavailable,
            Error::Internal(_) | Error::Op { .. } => Code::Internal,
            Error::Agent(e) => match &**e {
                crate::Error::SnapshotNotFound(_) | crate::Error::NotARepository(_) => Code::NotFound,
                crate::Error::AmbiguousSnapshot { .. } | crate::Error::NoCredential => Code::InvalidArgument,
                crate::Error::Busy(_) => Code::Aborted,
                crate::Error::AlreadyInitialized(_) => Code::AlreadyExists,
                crate::Error::Format(kanister_repo::Error::WrongKey { .. }) => Code::PermissionDenied,
                crate::Error::Format(_) | crate::Error::MissingBlob { .. } | crate::Error::Damaged(_) => Code::DataLoss,
                crate::Error::Store(StoreError::NotFound(_) | StoreError::Truncated { .. }) => Code::DataLoss,
                crate::Error::Store(StoreError::Settings(_) | StoreError::CredentialsFile { .. }) => {
                    Code::InvalidArgument
                }
                crate::Error::Store(StoreError::Backend { .. }) => Code::Unavailable,
                crate::Error::InputCommand { .. } => Code::Aborted,
                crate::Error::WrongKind(_) => Code::FailedPrecondition,
                _ => Code::Internal,
            },
        }
    }

    fn details(&self) -> pb::OperationError {
        let mut d = pb::OperationError { retryable: self.retryable(), ..Default::default() };
        if let Error::Op { op_id, kind, .. } = self {
            d.op_id.clone_from(op_id);
            d.kind = *kind as i32;
            d.state = if matches!(self.root(), Error::Cancelled) {
                pb::OperationState::Cancelled
            } else {
                pb::OperationState::Failed
            } as i32;
        }
        if let Error::Command(c) = self.root() {
            d.exit_code = c.exit_code;
            d.signal = c.signal;
            d.stderr_tail.clone_from(&c.stderr_tail);
        }
        d
    }
}

/// The one mapping from the service's errors to gRPC statuses. The details carry an encoded
/// [`pb::OperationError`] (exit code, stderr tail, whether a retry may help).
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let details = e.details().encode_to_vec();
        tonic::Status::with_details(e.code(), e.to_string(), details.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_code_and_details() {
        let e = Error::Command(CommandFailure {
            program: "mysqldump".into(),
            exit_code: Some(2),
            signal: None,
            stderr_tail: vec!["Got error: 1049: Unknown database 'nope'".into()],
        })
        .in_op("op-1", pb::OperationKind::BackupStream);
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), tonic::Code::Aborted);
        assert!(s.message().contains("exited with status 2") && s.message().contains("Unknown database"), "{s:?}");
        let d = pb::OperationError::decode(s.details()).unwrap();
        assert_eq!((d.op_id.as_str(), d.exit_code, d.stderr_tail.len()), ("op-1", Some(2), 1));
        assert_eq!(d.state, pb::OperationState::Failed as i32);

        let c = tonic::Status::from(Error::Cancelled.in_op("op-2", pb::OperationKind::Check));
        assert_eq!(c.code(), tonic::Code::Cancelled);
        assert_eq!(
            tonic::Status::from(Error::Exhausted { active: 4, limit: 4 }).code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(tonic::Status::from(Error::Unauthenticated("wrong token")).code(), tonic::Code::Unauthenticated);
    }
}
