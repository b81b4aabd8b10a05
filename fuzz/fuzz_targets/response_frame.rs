//! Guards clients and hosts against a hostile or broken node: the frame decoder for
//! `Response`, which every operator tool, host agent and passing-on follower reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_fuzz::round_trips;
use qvdc_transport::{codec, protocol::Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = codec::decode_frame_body::<Response>(data) {
        round_trips(&response);
    }
});
