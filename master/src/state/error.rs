//! The error every metadata operation returns: a Linux errno the client
//! receives, and a message saying what was wrong.

/// A namespace error: a Linux errno and a message saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    /// Linux errno sent to the client.
    pub errno: i32,
    /// What was wrong.
    pub message: String,
    /// Set when the error is "this master does not know session N".
    pub unknown_session: Option<u64>,
}

impl FsError {
    /// An error with `errno` and `message`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
            unknown_session: None,
        }
    }

    /// The caller's session is unknown to this master (see
    /// [`alces_proto::errno::session_unknown`]).
    pub fn session_unknown(session_id: u64) -> Self {
        let status = alces_proto::errno::session_unknown(session_id);
        Self {
            errno: alces_proto::errno::of(&status),
            message: status.message().to_string(),
            unknown_session: Some(session_id),
        }
    }

    /// The gRPC status carrying this error.
    pub fn to_status(&self) -> tonic::Status {
        match self.unknown_session {
            Some(sid) => alces_proto::errno::session_unknown(sid),
            None => alces_proto::errno::status(self.errno, self.message.clone()),
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for FsError {}

impl From<FsError> for tonic::Status {
    fn from(e: FsError) -> Self {
        e.to_status()
    }
}

/// Result of namespace operations.
pub type FsResult<T> = Result<T, FsError>;

/// Shorthand for building an [`FsError`].
pub fn err<T>(errno: i32, message: impl Into<String>) -> FsResult<T> {
    Err(FsError::new(errno, message))
}
