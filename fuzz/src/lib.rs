//! What the fuzz targets share: the checks every decoded value must pass, and one runtime
//! for the decoders that read from a stream.

use std::{fmt::Debug, sync::OnceLock};

use qvdc_transport::codec;
use serde::{de::DeserializeOwned, Serialize};

// qvdc builds with `--cfg tokio_unstable` (.cargo/config.toml). cargo-fuzz sets RUSTFLAGS
// itself, which replaces that setting unless RUSTFLAGS already holds it; scripts/fuzz.sh
// sets it. Without it the targets would fuzz a differently configured build.
#[cfg(not(tokio_unstable))]
compile_error!(
    "build the fuzz targets with RUSTFLAGS=\"--cfg tokio_unstable\", as scripts/fuzz.sh does"
);

/// A current-thread runtime, built once per process: the in-memory readers never wait, so
/// a `block_on` per input costs next to nothing.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// A value that was decoded must encode, and decode again to itself: a node that accepts a
/// message or a record and then writes it (to its log, or on to a peer) must be able to
/// read back what it wrote.
pub fn round_trips<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = codec::to_bytes(value).expect("a decoded value encodes");
    let again: T = codec::from_bytes(&bytes).expect("an encoded value decodes");
    assert_eq!(
        &again, value,
        "decoding what was encoded gives the same value"
    );
}
