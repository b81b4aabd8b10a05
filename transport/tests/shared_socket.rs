//! Many peers of one process on one socket (the host swarm's agents): each endpoint made by
//! `Endpoint::sharing` presents its own certificate, issued in memory by the cluster's CA,
//! and the other side tells them apart by it.

mod support;

use qvdc_transport::{
    quic,
    tls::{Ca, Role},
};
use support::Pki;

#[tokio::test]
async fn endpoints_sharing_a_socket_present_their_own_identities() {
    let pki = Pki::new();
    let server_identity = pki.identity(Role::Server, "node-1");
    let (server, addr) = support::server(&server_identity);
    let ca = Ca::open(pki.dir.path()).unwrap();
    let names = ["host-1", "host-2", "host-3"];
    let identities: Vec<_> = names
        .iter()
        .map(|name| ca.identity(Role::Host, name, 1).unwrap())
        .collect();
    // In memory only: nothing of the swarm's certificates lands next to the CA's files.
    for name in names {
        assert!(!pki.dir.path().join(format!("{name}.crt")).exists());
    }

    let first = support::client(&identities[0]);
    let socket = first.local_addr().unwrap();
    let mut endpoints = vec![first.clone()];
    for identity in &identities[1..] {
        let shared = first.sharing(identity).unwrap();
        assert_eq!(shared.local_addr().unwrap(), socket, "one socket");
        endpoints.push(shared);
    }
    let accepting = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let connection = server.accept().await.unwrap().await.unwrap();
            let peer = quic::peer_identity(&connection).unwrap();
            seen.push((peer.role, peer.name, connection.remote_address()));
        }
        seen
    });
    let mut connections = Vec::new();
    for endpoint in &endpoints {
        connections.push(endpoint.connect(addr).await.unwrap());
    }
    let seen = accepting.await.unwrap();
    for ((role, name, from), expected) in seen.iter().zip(names) {
        assert_eq!(
            (*role, name.as_str(), *from),
            (Role::Host, expected, socket)
        );
    }
}

#[test]
fn in_memory_identities_refuse_what_issued_files_refuse() {
    let pki = Pki::new();
    let ca = Ca::open(pki.dir.path()).unwrap();
    assert!(ca.identity(Role::Host, "../escape", 1).is_err());
    assert!(ca.identity(Role::Host, "host-1", 0).is_err());
    let identity = ca.identity(Role::Operator, "alice", 30).unwrap();
    let peer = identity.peer_identity().unwrap();
    assert_eq!((peer.role, peer.name.as_str()), (Role::Operator, "alice"));
    // Nothing to reload: it has no files.
    assert_eq!(
        identity.reload().unwrap(),
        qvdc_transport::tls::Reload::Unchanged
    );
}
