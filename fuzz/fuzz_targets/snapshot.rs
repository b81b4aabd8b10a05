//! Guards the state machine against a damaged or hostile snapshot: a snapshot's data as a
//! follower installs it from the leader, the stored snapshot record as a node reads it at
//! start, a backup file as `qvdc restore` reads it, and the desired state inside them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_fuzz::round_trips;
use qvdc_raft::{backup, store, DesiredState};
use qvdc_transport::codec;

fuzz_target!(|data: &[u8]| {
    let _ = store::decode_snapshot(data);
    let _ = store::decode_stored_snapshot(data);
    let _ = backup::decode(data);
    if let Ok(state) = codec::from_bytes::<DesiredState>(data) {
        round_trips(&state);
    }
});
