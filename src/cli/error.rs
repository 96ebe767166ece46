//! The error type of the command-line tool.

/// What can go wrong in a subcommand; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Api(#[from] qapi::ApiError),

    #[error(transparent)]
    Graph(#[from] qgraph::GraphError),

    #[error(transparent)]
    Quant(#[from] qtensor::QError),

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> CliError {
        CliError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
