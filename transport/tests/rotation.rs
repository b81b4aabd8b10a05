//! A certificate replaced while an endpoint runs is what the next connection presents, on
//! both sides: no session resumption carries the old one over.

use qvdc_transport::{
    quic,
    tls::{self, Identity, IssueOptions, Reload, Role},
    Endpoint,
};

#[tokio::test]
async fn the_next_connection_presents_the_rotated_certificates_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::init_ca(dir.path()).unwrap();
    let load = |role, name: &str| {
        let (cert, key) = tls::issue(dir.path(), role, name).unwrap();
        Identity::load(&ca, &cert, &key).unwrap()
    };
    let server_identity = load(Role::Server, "node-1");
    let client_identity = load(Role::Host, "host-1");
    let server = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &server_identity, true).unwrap();
    let addr = server.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let connection = incoming.await.unwrap();
            seen_tx
                .send(quic::peer_identity(&connection).unwrap().serial)
                .unwrap();
        }
    });
    let client = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &client_identity, false).unwrap();
    let mut connect = async || {
        let connection = client.connect(addr).await.unwrap();
        let server_serial = quic::peer_identity(&connection).unwrap().serial;
        // Long enough for session tickets, if any were sent, to arrive.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        (server_serial, seen.recv().await.unwrap())
    };

    let before = connect().await;
    assert_eq!(before, connect().await, "nothing rotated yet");
    let replace = IssueOptions {
        replace: true,
        ..IssueOptions::default()
    };
    tls::issue_with(dir.path(), Role::Server, "node-1", replace).unwrap();
    tls::issue_with(dir.path(), Role::Host, "host-1", replace).unwrap();
    for identity in [&server_identity, &client_identity] {
        assert!(matches!(
            identity.reload().unwrap(),
            Reload::Replaced { .. }
        ));
    }
    let after = connect().await;
    assert_eq!(
        after,
        (
            server_identity.serial().unwrap(),
            client_identity.serial().unwrap()
        )
    );
    assert_ne!(
        after.0, before.0,
        "the server's new certificate is presented"
    );
    assert_ne!(
        after.1, before.1,
        "the client's new certificate is presented"
    );
}
