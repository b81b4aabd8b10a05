//! The one-request-per-stream pattern over real loopback QUIC ends every stream cleanly:
//! neither side stops a stream it has read, so a request costs no STOP_SENDING frames (each
//! would be one more frame to send, acknowledge and process, on every request).

use qvdc_transport::{
    quic,
    tls::{self, Identity, Role},
    Endpoint,
};

fn identity(dir: &std::path::Path, ca: &std::path::Path, role: Role, name: &str) -> Identity {
    let (cert, key) = tls::issue(dir, role, name).unwrap();
    Identity::load(ca, &cert, &key).unwrap()
}

#[tokio::test]
async fn a_request_and_its_answer_stop_no_stream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::init_ca(dir.path()).unwrap();
    let server_identity = identity(dir.path(), &ca, Role::Server, "node-1");
    let client_identity = identity(dir.path(), &ca, Role::Operator, "operator");
    let server = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &server_identity, true).unwrap();
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        while let Ok((send, mut recv)) = connection.accept_bi().await {
            let n: u64 = quic::read_request(&mut recv).await.unwrap();
            quic::respond(send, &(n + 1)).await.unwrap();
        }
        connection.stats()
    });

    let client = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &client_identity, false).unwrap();
    let connection = client.connect(addr).await.unwrap();
    const CALLS: u64 = 50;
    for n in 0..CALLS {
        let answer: u64 = quic::call(&connection, &n).await.unwrap();
        assert_eq!(answer, n + 1);
    }
    // Let the last frames land before reading the counters.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let client_stats = connection.stats();
    connection.close(0u32.into(), b"done");
    let server_stats = serving.await.unwrap();

    println!(
        "{CALLS} requests: client sent {} datagrams, server {}",
        client_stats.udp_tx.datagrams, server_stats.udp_tx.datagrams
    );
    assert_eq!(
        client_stats.frame_tx.stream, CALLS,
        "one STREAM frame per request"
    );
    assert_eq!(
        (
            client_stats.frame_tx.stop_sending,
            server_stats.frame_tx.stop_sending
        ),
        (0, 0),
        "STOP_SENDING frames sent by client and server over {CALLS} requests"
    );
}
