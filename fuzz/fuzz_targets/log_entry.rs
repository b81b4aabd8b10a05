//! Guards a node's restart against a damaged log file: the records the Raft log store reads
//! back from its database (entries, vote, committed and purged log ids), the commands
//! entries carry, and the same bytes as a whole segment of the log's files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_fuzz::round_trips;
use qvdc_raft::{
    logfile::{Backend, LogFiles, SEGMENT_BYTES},
    types::{Entry, LogId, Vote},
    Command,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
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
    let segments = Arc::new(Mutex::new(BTreeMap::from([(1, data.to_vec())])));
    if let Ok((_, loaded)) = LogFiles::open(Backend::Memory(segments), SEGMENT_BYTES) {
        for (_, entry) in loaded.entries {
            if let Ok(entry) = codec::from_stored_bytes::<Entry>(&entry) {
                round_trips(&entry);
            }
        }
    }
});
