//! Guards the HTTP server of `/metrics` (network-facing on nodes and hosts) and the
//! dashboard: a request head is parsed into a request or refused with a status, never a
//! panic, and what it accepts keeps its shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qvdc_transport::http::{parse_head, percent_decode};

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(request) => {
            assert!(request.path.starts_with('/'), "{request:?}");
            assert!(!request.method.is_empty());
            for (name, _) in &request.headers {
                assert_eq!(name, &name.to_ascii_lowercase());
            }
            let _ = request.param("name");
        }
        Err(refusal) => assert!((400..600).contains(&refusal.0), "{refusal:?}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = percent_decode(text);
    }
});
