//! Guards a node's restart against a damaged log file: the records the Raft log store reads
//! back from its database (entries, vote, committed and purged log ids), and the commands
//! entries carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_fuzz::round_trips;
use qvdc_raft::{
    types::{Entry, LogId, Vote},
    Command,
};
use qvdc_transport::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = codec::from_stored_bytes::<Entry>(data) {
        round_trips(&entry);
    }
    if let Ok(command) = codec::from_stored_bytes::<Command>(data) {
        round_trips(&command);
    }
    if let Ok(vote) = codec::from_stored_bytes::<Vote>(data) {
        round_trips(&vote);
    }
    if let Ok(log_id) = codec::from_stored_bytes::<Option<LogId>>(data) {
        round_trips(&log_id);
    }
    if let Ok(log_id) = codec::from_stored_bytes::<LogId>(data) {
        round_trips(&log_id);
    }
});
