//! The way to one host's agent. In production the node hands the tree a QUIC connection
//! wrapped as a [`HostLink`]; a test hands it anything that answers commands, so the whole
//! tree runs without a network.

use std::{future::Future, pin::Pin, sync::Arc};

use qvdc_transport::protocol::{CommandResult, HostCommand};

/// What a link's call resolves to: the host's answer, or why it could not be had (the
/// command may or may not have reached the host).
pub type Call = Pin<Box<dyn Future<Output = Result<CommandResult, String>> + Send>>;

/// Sends commands to one host and brings back its answers.
pub trait HostLink: Send + Sync + 'static {
    /// Sends `command` and waits for the host's answer (the caller bounds the wait).
    fn call(&self, command: HostCommand) -> Call;
}

/// A shared link; a host's latest one replaces the earlier.
pub type Link = Arc<dyn HostLink>;
