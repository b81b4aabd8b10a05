//! Guards a host agent against whoever holds the leader's connection: the frame decoder for
//! `HostCommand`, the one message a host reads on a stream the leader opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_fuzz::round_trips;
use qvdc_transport::{codec, protocol::HostCommand};

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = codec::decode_frame_body::<HostCommand>(data) {
        // The label names the command in logs and traces; every kind has one.
        assert!(!command.kind.label().is_empty());
        round_trips(&command);
    }
});
