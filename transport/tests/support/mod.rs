//! A cluster CA in a temporary directory and loopback endpoints with its certificates,
//! shared by the transport's integration tests.

use std::{net::SocketAddr, path::PathBuf};

use qvdc_transport::{
    tls::{self, Identity, Role},
    Endpoint,
};

/// A CA and the certificates issued by it, in a directory removed on drop.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls::init_ca(dir.path()).unwrap();
        Self { dir, ca }
    }

    /// Issues a certificate and loads it.
    pub(crate) fn identity(&self, role: Role, name: &str) -> Identity {
        let (cert, key) = tls::issue(self.dir.path(), role, name).unwrap();
        Identity::load(&self.ca, &cert, &key).unwrap()
    }
}

/// An endpoint on loopback that accepts connections, and its address.
pub(crate) fn server(identity: &Identity) -> (Endpoint, SocketAddr) {
    let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), identity, true).unwrap();
    let addr = endpoint.local_addr().unwrap();
    (endpoint, addr)
}

/// An endpoint on loopback that only dials.
pub(crate) fn client(identity: &Identity) -> Endpoint {
    Endpoint::bind("127.0.0.1:0".parse().unwrap(), identity, false).unwrap()
}
