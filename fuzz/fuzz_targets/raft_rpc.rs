//! Guards the Raft layer against its peers: the payload of a `Request::Raft` as a node
//! decodes it before answering (append-entries, votes, snapshot chunks, pre-votes), and
//! the answer as the asking node decodes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_raft::network;

fuzz_target!(|data: &[u8]| {
    let _ = network::decode_rpc(data);
    let _ = network::decode_reply(data);
});
