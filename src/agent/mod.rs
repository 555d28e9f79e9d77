//! The cell agent (contract section 5).

use std::path::Path;

/// Agent failures with their exit code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration problem (exit 2).
    #[error("{0}")]
    Config(String),
    /// Runtime failure (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl AgentError {
    /// Process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_) => 2,
            AgentError::Runtime(_) => 1,
        }
    }
}

/// Runs the agent with the config at `path`.
pub async fn run(path: &Path) -> Result<(), AgentError> {
    Err(AgentError::Runtime(format!(
        "the cell agent is not available in this build yet (config {})",
        path.display()
    )))
}
