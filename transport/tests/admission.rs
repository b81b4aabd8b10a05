//! A flood of handshakes that never complete (as from spoofed addresses) does not lock
//! honest peers out: past `HANDSHAKES_UNVALIDATED_MAX` in progress, a new attempt is
//! answered with a QUIC Retry, which an honest client answers at once and a spoofer cannot.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

mod support;

use qvdc_transport::{
    admission::{Admission, HANDSHAKES_UNVALIDATED_MAX},
    quic,
    tls::Role,
};
use support::Pki;

#[tokio::test]
async fn a_flood_of_unfinished_handshakes_gets_retries_and_honest_peers_get_in() {
    let pki = Pki::new();
    let (server, addr) = support::server(&pki.identity(Role::Server, "node-1"));
    let client_identity = pki.identity(Role::Operator, "operator");

    // The node's accept loop, counting the attempts sent away with a Retry.
    let retried = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(tokio::sync::Notify::new());
    let (retried_in, admitted_in) = (retried.clone(), admitted.clone());
    tokio::spawn(async move {
        let admission = Admission::default();
        while let Some(incoming) = server.accept().await {
            let validated = incoming.remote_address_validated();
            let Some(incoming) = admission.screen(incoming) else {
                assert!(!validated, "a validated address is never sent away");
                retried_in.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            let (admission, admitted) = (admission.clone(), admitted_in.clone());
            tokio::spawn(async move {
                if let Ok((_connection, peer, _place)) = admission.admit(incoming).await {
                    assert_eq!(peer.name, "operator");
                    admitted.notify_one();
                    std::future::pending::<()>().await;
                }
            });
        }
    });

    // Real clients' first packets, caught on a socket that never answers. Each attempt has
    // its own connection id (the server tells attempts apart by it).
    let flood = HANDSHAKES_UNVALIDATED_MAX + 36;
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap();
    let probe = support::client(&client_identity);
    let dialing: Vec<_> = (0..flood)
        .map(|_| {
            let probe = probe.clone();
            tokio::spawn(async move { probe.connect(trap_addr).await })
        })
        .collect();
    let mut initials = std::collections::BTreeMap::new();
    let mut buf = vec![0u8; 2048];
    while initials.len() < flood {
        let (len, _) = trap.recv_from(&mut buf).await.unwrap();
        // Long header: flags, version (4 bytes), destination id length, destination id.
        let dcid = buf[6..6 + buf[5] as usize].to_vec();
        initials.entry(dcid).or_insert_with(|| buf[..len].to_vec());
    }
    for dial in dialing {
        dial.abort();
    }

    // The flood: those packets from addresses that never go on with the handshake.
    let mut spoofed = Vec::new();
    for initial in initials.values() {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(initial, addr).await.unwrap();
        spoofed.push(socket);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let sent_away = retried.load(Ordering::SeqCst);
    assert!(
        sent_away >= flood - HANDSHAKES_UNVALIDATED_MAX - 4,
        "{sent_away} of {flood} unfinished handshakes were answered with a Retry"
    );

    // An honest client gets in during the flood, through a Retry of its own.
    let honest = support::client(&client_identity);
    let started = std::time::Instant::now();
    let connection = honest.connect(addr).await.unwrap();
    assert_eq!(quic::peer_identity(&connection).unwrap().name, "node-1");
    admitted.notified().await;
    assert!(
        retried.load(Ordering::SeqCst) > sent_away,
        "the honest client was retried too"
    );
    eprintln!(
        "{sent_away} of {flood} spoofed handshakes answered with a Retry; an honest client got in after {:?}",
        started.elapsed()
    );
}
