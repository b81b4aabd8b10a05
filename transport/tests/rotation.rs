//! A certificate replaced while an endpoint runs is what the next connection presents, on
//! both sides: no session resumption carries the old one over.

mod support;

use qvdc_transport::{
    quic,
    tls::{self, IssueOptions, Reload, Role},
};
use support::Pki;

#[tokio::test]
async fn the_next_connection_presents_the_rotated_certificates_on_both_sides() {
    let pki = Pki::new();
    let server_identity = pki.identity(Role::Server, "node-1");
    let client_identity = pki.identity(Role::Host, "host-1");
    let (server, addr) = support::server(&server_identity);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let connection = incoming.await.unwrap();
            seen_tx
                .send(quic::peer_identity(&connection).unwrap().serial)
                .unwrap();
        }
    });
    let client = support::client(&client_identity);
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
    tls::issue_with(pki.dir.path(), Role::Server, "node-1", replace).unwrap();
    tls::issue_with(pki.dir.path(), Role::Host, "host-1", replace).unwrap();
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
