//! Logging set-up shared by `qvdc` and `qhost`: human-readable lines, or one JSON object per
//! event (`--log-format json`) for log shippers. `RUST_LOG` filters either way.

/// How log events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people, coloured at a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level, and the spans it happened in.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format {other:?} is neither text nor json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Installs the process's logger: to stderr if `stderr`, else stdout; `default_filter`
/// unless `RUST_LOG` says otherwise.
pub fn init(format: LogFormat, default_filter: &str, stderr: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let terminal = if stderr {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    };
    // Colour only for a person at a terminal: a log file or a pipe gets plain text.
    let colour = terminal && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (format, stderr) {
        (LogFormat::Text, true) => builder
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .init(),
        (LogFormat::Text, false) => builder.with_ansi(colour).init(),
        (LogFormat::Json, true) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .init(),
        (LogFormat::Json, false) => builder.json().flatten_event(true).init(),
    }
}
