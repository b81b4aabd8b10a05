//! The one-request-per-stream pattern over real loopback QUIC ends every stream cleanly:
//! neither side stops a stream it has read, so a request costs no STOP_SENDING frames (each
//! would be one more frame to send, acknowledge and process, on every request).

mod support;

use qvdc_transport::{quic, tls::Role};
use support::Pki;

#[tokio::test]
async fn a_request_and_its_answer_stop_no_stream() {
    let pki = Pki::new();
    let (server, addr) = support::server(&pki.identity(Role::Server, "node-1"));
    let client = support::client(&pki.identity(Role::Operator, "operator"));
    let serving = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        while let Ok((send, mut recv)) = connection.accept_bi().await {
            let n: u64 = quic::read_request(&mut recv).await.unwrap();
            quic::respond(send, &(n + 1)).await.unwrap();
        }
        connection.stats()
    });

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

/// A peer that asks and never reads the answer holds the answering task only for
/// `RESPONSE_WRITE_TIMEOUT_MS`: the answer is larger than the peer's receive window, so
/// writing it stalls, and then gives up with an error that says why.
#[tokio::test]
async fn an_answer_nobody_reads_is_given_up_after_the_write_timeout() {
    let pki = Pki::new();
    let (server, addr) = support::server(&pki.identity(Role::Server, "node-1"));
    let client = support::client(&pki.identity(Role::Operator, "operator"));
    let serving = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        let (send, mut recv) = connection.accept_bi().await.unwrap();
        let _: u64 = quic::read_request(&mut recv).await.unwrap();
        let large = vec![7u8; 4 * quic::STREAM_RECEIVE_WINDOW_BYTES as usize];
        let started = std::time::Instant::now();
        let result = quic::respond(send, &large).await;
        (result, started.elapsed(), connection)
    });
    let connection = client.connect(addr).await.unwrap();
    let (mut send, _unread) = connection.open_bi().await.unwrap();
    let frame = qvdc_transport::codec::encode_frame(&1u64).unwrap();
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();

    let (result, took, _connection) = serving.await.unwrap();
    let error = result.unwrap_err().to_string();
    assert!(error.contains("answer not taken within"), "{error}");
    let bound = std::time::Duration::from_millis(quic::RESPONSE_WRITE_TIMEOUT_MS);
    assert!(
        took >= bound && took < bound + std::time::Duration::from_secs(2),
        "{took:?}"
    );
}
