//! The top-level error, and the exit codes it maps to (documented in docs/exit-codes.md).

use crate::dest::DestError;
use crate::pg::PgError;
use crate::protocol::ProtocolError;

/// Exit codes. Stable: scripts may depend on them.
pub mod exit {
    /// The backup is complete and verified.
    pub const OK: i32 = 0;
    /// The backup failed while running (a child died, a file could not be copied, WAL missing...).
    pub const FAILED: i32 = 1;
    /// Bad command line or connection string.
    pub const USAGE: i32 = 2;
    /// Could not connect or authenticate.
    pub const CONNECT: i32 = 3;
    /// The server cannot be backed up as it is: version, settings, privileges, tablespaces.
    pub const SERVER: i32 = 4;
    /// DEST is in the way or cannot be written (exists and is not empty, not a directory,
    /// no space left), is (in) one of the server's own directories, or is in use by another run.
    pub const DEST: i32 = 5;
    /// The backup completed and is kept, but data pages failed their checksum on the server
    /// (the server's files are corrupt; the copy holds the same bytes).
    pub const CHECKSUM: i32 = 6;
    /// Interrupted by SIGHUP (128 + 1), SIGINT (128 + 2) or SIGTERM (128 + 15). A signal
    /// ignored when pgbb started (`nohup`) stays ignored and interrupts nothing.
    pub const SIGHUP: i32 = 129;
    pub const SIGINT: i32 = 130;
    pub const SIGTERM: i32 = 143;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error("{role} sent a bad line: {source}")]
    Protocol {
        role: String,
        #[source]
        source: ProtocolError,
    },
    #[error("could not start a child process: {0}")]
    Spawn(std::io::Error),
    #[error("{role} died unexpectedly ({status}); the backup is incomplete")]
    ChildDied { role: String, status: String },
    #[error("{role} failed: {message}")]
    ChildFailed { role: String, message: String, code: Option<i32> },
    #[error("could not copy \"{path}\": {message}")]
    FileFailed { path: String, message: String },
    #[error("WAL needed to restore the backup is missing from DEST/pg_wal: {missing}; it was probably removed from the server before it could be copied (use a replication slot: give the role REPLICATION, or raise wal_keep_size / max_slot_wal_keep_size)")]
    WalIncomplete { missing: String },
    #[error("the replication slot {0} was invalidated during the backup (max_slot_wal_keep_size): WAL the backup needs may be gone")]
    SlotLost(String),
    #[error("the backup is inconsistent: {0}")]
    Inconsistent(String),
    #[error("interrupted by {0}; the backup was aborted")]
    Interrupted(&'static str),
    #[error("{0}")]
    Io(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Pg(PgError::BadDsn(_) | PgError::BadEnv(_)) => exit::USAGE,
            Error::Pg(PgError::Connect { .. } | PgError::Tls { .. }) => exit::CONNECT,
            Error::Pg(
                PgError::TooOld(_)
                | PgError::WalLevel(_)
                | PgError::Privileges { .. }
                | PgError::Unsupported(_)
                | PgError::Compression(_),
            ) => exit::SERVER,
            Error::Pg(PgError::Query { code: Some(c), .. }) if c == "42501" => exit::SERVER,
            Error::Dest(_) => exit::DEST,
            // A child that failed on DEST (no space...) exits with that code.
            Error::ChildFailed { code: Some(exit::DEST), .. } => exit::DEST,
            Error::Interrupted(sig) => crate::signals::exit_code(sig),
            _ => exit::FAILED,
        }
    }

    /// What to do about it, when there is something useful to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Pg(PgError::Connect { .. }) => Some("check the connection string, that the server is running and accepts connections (pg_hba.conf), and the password (PGPASSWORD or the DSN)"),
            Error::ChildFailed { code: Some(exit::DEST), .. } => {
                Some("free some space or choose another DEST, then run pgbb again")
            }
            Error::ChildDied { .. } | Error::ChildFailed { .. } => {
                Some("nothing was kept; look at the messages above, then run pgbb again")
            }
            Error::Dest(d) if d.is_no_space() => Some("free some space or choose another DEST, then run pgbb again"),
            _ => None,
        }
    }
}
