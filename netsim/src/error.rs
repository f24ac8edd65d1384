//! One error type for the harness: every failed command says which command, in which namespace,
//! and what it printed.

use thiserror::Error;

use crate::scenario::ScenarioError;

/// Why a netsim run (or one of its steps) failed.
#[derive(Debug, Error)]
pub enum NetsimError {
    /// A program could not be started at all.
    #[error("cannot start `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A program exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {output}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (and stdout).
        output: String,
    },
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The scenario file is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The harness needs root, `ip` and `nft`.
    #[error("environment: {0}")]
    Environment(String),
    /// A required binary is missing.
    #[error("binary {path} not found: {hint}")]
    MissingBinary {
        /// Where it was looked for.
        path: String,
        /// How to get it.
        hint: String,
    },
    /// A router does not behave as its label says.
    #[error("NAT self-test failed: {0}")]
    SelfTest(String),
    /// A program printed something unexpected.
    #[error("{what}: expected {expected}, got {got:?}")]
    Unexpected {
        /// Which output.
        what: String,
        /// What was expected.
        expected: String,
        /// What was seen.
        got: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
    /// The run was interrupted by a signal.
    #[error("interrupted")]
    Interrupted,
}

impl NetsimError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias.
pub type Result<T, E = NetsimError> = std::result::Result<T, E>;
