//! Guards a host agent's start against a damaged fence file: the highest leadership the
//! host obeyed, read back from disk as `TERM NODE`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_host::FileFence;

fuzz_target!(|data: &[u8]| {
    // `load` reads the file as UTF-8 text; other bytes are an I/O error before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fence = FileFence::new("fence".into());
    if let Ok(leadership) = fence.parse(text) {
        // What parses is what `save` would have written for it, give or take whitespace
        // and leading zeros or a plus sign.
        let written = format!("{} {}\n", leadership.term, leadership.node);
        assert_eq!(fence.parse(&written).ok(), Some(leadership));
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words.len(), 2);
    }
});
