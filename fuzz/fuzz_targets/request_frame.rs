//! Guards a node's request path against hostile peers: the role gate on a frame's first
//! body byte, the frame decoder for `Request`, and the stream reader that bounds a frame
//! before it is buffered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_fuzz::{round_trips, runtime};
use qvdc_transport::{
    codec::{self, CodecError},
    protocol::Request,
    quic::{self, PEER_REQUEST_BYTES_MAX},
    tls::{PeerIdentity, Role},
};

/// What `quic::read_request_from` does with a frame it read, under every role: a request
/// that gets through was one the role may send.
fn gate_and_decode(frame: &[u8]) {
    for role in [Role::Server, Role::Host, Role::Operator] {
        let peer = PeerIdentity {
            role,
            name: "fuzz".into(),
            serial: "01".into(),
        };
        if let Ok(request) = quic::gate_and_decode(frame, &peer) {
            let needed = Request::needs_role(request.tag()).map(|(needed, _)| needed);
            assert_eq!(needed, Some(role), "{request:?} got through for a {role}");
            round_trips(&request);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The input as a frame's version and body, as read off a stream.
    gate_and_decode(data);

    runtime().block_on(async {
        // The input as the raw stream a host or an operator sends: length prefix first.
        let mut stream = data;
        match codec::read_frame_bytes(&mut stream, PEER_REQUEST_BYTES_MAX).await {
            Ok(frame) => {
                assert!(frame.len() <= PEER_REQUEST_BYTES_MAX);
                assert_eq!(frame.as_slice(), &data[4..4 + frame.len()]);
                gate_and_decode(&frame);
            }
            Err(CodecError::FrameTooLarge { bytes, limit }) => {
                assert!(bytes > limit);
                assert_eq!(limit, PEER_REQUEST_BYTES_MAX);
            }
            Err(CodecError::Io(_)) => {}
            Err(other) => panic!("the stream reader only fails on size or I/O: {other}"),
        }

        // The input as a whole frame, prefixed by its true length: read back exactly, or
        // refused by its announced length alone.
        let length = u32::try_from(data.len()).expect("inputs are far below 4 GiB");
        let mut framed = length.to_be_bytes().to_vec();
        framed.extend_from_slice(data);
        let mut stream = framed.as_slice();
        let read = codec::read_frame_bytes(&mut stream, PEER_REQUEST_BYTES_MAX).await;
        if data.len() <= PEER_REQUEST_BYTES_MAX {
            assert_eq!(read.expect("a frame within the limit reads"), data);
            assert!(stream.is_empty());
        } else {
            assert!(matches!(read, Err(CodecError::FrameTooLarge { .. })));
        }
    });
});
