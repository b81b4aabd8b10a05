//! The one place that knows how messages become bytes: a length-prefixed, versioned frame
//! around a bincode body, with a hard size limit checked before anything is allocated.
//!
//! Frame layout: `[u32 BE body length][u16 BE protocol version][bincode body]`, where the
//! length counts the version and the body. Swapping the encoding means changing this file only.
//!
//! Everything a peer sends is bounded before it costs memory: the announced length is
//! checked against the caller's limit, the buffer grows only as bytes really arrive, and
//! messages that contain themselves (a stale read of a request, a batch of commands) may
//! nest only [`NESTING_DEPTH_MAX`] deep, so a small frame cannot exhaust the decoder's stack.

use std::cell::Cell;

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{PROTOCOL_VERSION, PROTOCOL_VERSION_OLDEST};

/// The largest frame (version + body) either side accepts. Raft snapshots are the largest
/// messages; 16 MiB leaves room for clusters far beyond the walking skeleton.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
const LENGTH_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;
/// How deep a message may contain messages of its own kind. Legitimate messages nest once
/// or twice (a stale read of a request; a batch of once-only commands); without a bound,
/// a 10 KB frame of nested variants overflows a 2 MiB stack while being decoded.
pub const NESTING_DEPTH_MAX: u32 = 4;
/// The first allocation for a frame's body; it grows as the peer actually sends bytes, so
/// announcing a large frame and sending nothing pins no more than this.
const READ_CHUNK_BYTES: usize = 64 * 1024;

thread_local! {
    /// How many [`nested`] fields the decoder is inside on this thread. Decoding is
    /// synchronous, so the count always returns to zero when a decode ends.
    static NESTING: Cell<u32> = const { Cell::new(0) };
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {bytes} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { bytes: usize, limit: usize },
    #[error("frame of {bytes} bytes is too short to hold a protocol version")]
    FrameTooShort { bytes: usize },
    #[error(
        "peer speaks protocol version {got}, newer than this build's {ours} (qvdc {release}): \
         upgrade this side to a release that speaks {got} (docs/compatibility.md)"
    )]
    PeerNewer {
        got: u16,
        ours: u16,
        release: &'static str,
    },
    #[error(
        "peer speaks protocol version {got}, older than the oldest this build (qvdc {release}) \
         accepts, {oldest}: upgrade the peer (docs/compatibility.md)"
    )]
    PeerOlder {
        got: u16,
        oldest: u16,
        release: &'static str,
    },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("a {kind} frame of {bytes} bytes exceeds the {limit} bytes allowed for it")]
    KindTooLarge {
        kind: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Deserializes a field that holds a message of its own kind (use it as
/// `#[serde(deserialize_with = "codec::nested")]`), refusing to go deeper than
/// [`NESTING_DEPTH_MAX`] such fields.
pub fn nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            NESTING.with(|depth| depth.set(depth.get() - 1));
        }
    }
    let depth = NESTING.with(|depth| {
        depth.set(depth.get() + 1);
        depth.get()
    });
    let _level = Level;
    if depth > NESTING_DEPTH_MAX {
        return Err(serde::de::Error::custom(format!(
            "messages nested more than {NESTING_DEPTH_MAX} deep"
        )));
    }
    T::deserialize(deserializer)
}

/// The variant index a bincode body starts with, if it is an enum's small variant (bincode
/// writes indexes below 251 as one byte). Lets a reader refuse a message kind before it
/// decodes any of it.
pub fn peek_variant(body: &[u8]) -> Option<u8> {
    body.first().copied().filter(|tag| *tag < 251)
}

/// The largest value written to disk: a snapshot of the whole desired state. It is not
/// bound by the frame, since snapshots travel between nodes in chunks; this only keeps a
/// corrupt length from asking for more memory than any real state needs.
pub const STORED_BYTES_MAX: usize = 1024 * 1024 * 1024;

fn stored_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<STORED_BYTES_MAX>()
}

/// Encodes a value for disk: the same encoding as [`to_bytes`], bound by
/// [`STORED_BYTES_MAX`] instead of the frame.
pub fn to_stored_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, stored_config())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes what [`to_stored_bytes`] wrote; trailing bytes are an error.
pub fn from_stored_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_exactly(bytes, stored_config())
}

/// Decodes one value that must fill `bytes` exactly.
fn decode_exactly<T: DeserializeOwned>(
    bytes: &[u8],
    config: impl bincode::config::Config,
) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Streams `value`'s encoding into `writer` without holding it in memory, whatever its
/// size (for fingerprints of the whole state).
pub fn encode_into<T: Serialize, W: std::io::Write>(
    value: &T,
    writer: &mut W,
) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, writer, bincode::config::standard())
        .map(drop)
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// How many bytes `value` encodes to, without encoding it into memory.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    encode_into(value, &mut count).expect("counting cannot fail");
    count.0
}

/// A SHA-256 digest of `value`'s encoding, cut to 16 bytes: what tells a retried request
/// (same encoding, same digest) from another request that reuses its id.
pub fn digest<T: Serialize>(value: &T) -> [u8; 16] {
    struct Hash(ring::digest::Context);
    impl std::io::Write for Hash {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hash = Hash(ring::digest::Context::new(&ring::digest::SHA256));
    encode_into(value, &mut hash).expect("hashing cannot fail");
    let full = hash.0.finish();
    full.as_ref()[..16]
        .try_into()
        .expect("SHA-256 has 32 bytes")
}

/// Encodes `value` as a bare bincode body (no length, no version) — for payloads that travel
/// inside another message, such as Raft RPCs, and for values stored on disk.
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let body = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if body.len() > FRAME_BYTES_MAX - VERSION_BYTES {
        return Err(CodecError::FrameTooLarge {
            bytes: body.len(),
            limit: FRAME_BYTES_MAX,
        });
    }
    Ok(body)
}

/// Decodes a bare bincode body written by [`to_bytes`]. Trailing bytes are an error: a frame
/// holds exactly one message.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_exactly(bytes, bincode_config())
}

/// Encodes one complete frame, prefix included.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let body = to_bytes(value)?;
    let length = body.len() + VERSION_BYTES;
    assert!(
        length <= FRAME_BYTES_MAX,
        "to_bytes enforces the frame limit"
    );
    let mut frame = Vec::with_capacity(LENGTH_BYTES + length);
    frame.extend_from_slice(
        &u32::try_from(length)
            .expect("bounded by FRAME_BYTES_MAX")
            .to_be_bytes(),
    );
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes the part of a frame after its length prefix: version, then body.
pub fn decode_frame_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(CodecError::FrameTooLarge {
            bytes: bytes.len(),
            limit: FRAME_BYTES_MAX,
        });
    }
    let Some((version, body)) = bytes.split_first_chunk::<VERSION_BYTES>() else {
        return Err(CodecError::FrameTooShort { bytes: bytes.len() });
    };
    let release = env!("CARGO_PKG_VERSION");
    match u16::from_be_bytes(*version) {
        got if got > PROTOCOL_VERSION => Err(CodecError::PeerNewer {
            got,
            ours: PROTOCOL_VERSION,
            release,
        }),
        got if got < PROTOCOL_VERSION_OLDEST => Err(CodecError::PeerOlder {
            got,
            oldest: PROTOCOL_VERSION_OLDEST,
            release,
        }),
        _ => from_bytes(body),
    }
}

/// Writes one frame to a stream.
pub async fn write_frame<W, T>(writer: &mut W, value: &T) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(value)?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame from a stream. The announced length is checked against
/// [`FRAME_BYTES_MAX`] before the buffer is allocated, so a hostile peer cannot make us
/// reserve more than the limit.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<T, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let bytes = read_frame_bytes(reader, FRAME_BYTES_MAX).await?;
    decode_frame_body(&bytes)
}

/// Reads the part of one frame after its length prefix (version and body), refusing a
/// frame that announces more than `limit` bytes. The buffer grows only as the peer sends,
/// in steps of at most [`READ_CHUNK_BYTES`].
pub async fn read_frame_bytes<R>(reader: &mut R, limit: usize) -> Result<Vec<u8>, CodecError>
where
    R: AsyncRead + Unpin,
{
    assert!(
        limit <= FRAME_BYTES_MAX,
        "no reader accepts more than a frame"
    );
    let mut prefix = [0u8; LENGTH_BYTES];
    reader.read_exact(&mut prefix).await?;
    let length = u32::from_be_bytes(prefix) as usize;
    if length > limit {
        return Err(CodecError::FrameTooLarge {
            bytes: length,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(length.min(READ_CHUNK_BYTES));
    while bytes.len() < length {
        let want = (length - bytes.len()).min(READ_CHUNK_BYTES);
        bytes.reserve(want);
        let start = bytes.len();
        bytes.resize(start + want, 0);
        let got = reader.read(&mut bytes[start..]).await?;
        bytes.truncate(start + got);
        if got == 0 {
            return Err(CodecError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    assert_eq!(bytes.len(), length);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Ping { id: u64 },
        Blob(Vec<u8>),
    }

    #[tokio::test]
    async fn frame_round_trips_through_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &Sample::Ping { id: 7 }).await.unwrap();
        let got: Sample = read_frame(&mut b).await.unwrap();
        assert_eq!(got, Sample::Ping { id: 7 });
    }

    #[tokio::test]
    async fn announced_length_over_the_limit_is_rejected_before_allocation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let length = u32::try_from(FRAME_BYTES_MAX + 1).unwrap();
        a.write_all(&length.to_be_bytes()).await.unwrap();
        let err = read_frame::<_, Sample>(&mut b).await.unwrap_err();
        assert!(
            matches!(err, CodecError::FrameTooLarge { bytes, .. } if bytes == FRAME_BYTES_MAX + 1)
        );
    }

    #[test]
    fn message_over_the_limit_is_not_encoded() {
        let err = encode_frame(&Sample::Blob(vec![0; FRAME_BYTES_MAX])).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::FrameTooLarge { .. } | CodecError::Encode(_)
            ),
            "{err}"
        );
    }

    #[test]
    fn versions_outside_the_accepted_range_are_refused_with_the_side_to_upgrade() {
        let with_version = |version: u16| {
            let mut frame = encode_frame(&Sample::Ping { id: 1 }).unwrap();
            frame[LENGTH_BYTES..LENGTH_BYTES + VERSION_BYTES]
                .copy_from_slice(&version.to_be_bytes());
            decode_frame_body::<Sample>(&frame[LENGTH_BYTES..])
        };
        let newer = with_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert!(
            matches!(newer, CodecError::PeerNewer { got, ours: PROTOCOL_VERSION, .. }
                if got == PROTOCOL_VERSION + 1),
            "{newer}"
        );
        assert!(newer.to_string().contains("upgrade this side"), "{newer}");
        let older = with_version(PROTOCOL_VERSION_OLDEST - 1).unwrap_err();
        assert!(
            matches!(older, CodecError::PeerOlder { got, oldest: PROTOCOL_VERSION_OLDEST, .. }
                if got == PROTOCOL_VERSION_OLDEST - 1),
            "{older}"
        );
        assert!(older.to_string().contains("upgrade the peer"), "{older}");
        for version in PROTOCOL_VERSION_OLDEST..=PROTOCOL_VERSION {
            assert_eq!(with_version(version).unwrap(), Sample::Ping { id: 1 });
        }
    }

    #[test]
    fn garbage_and_truncated_bodies_are_typed_errors() {
        let frame = encode_frame(&Sample::Blob(vec![1, 2, 3, 4])).unwrap();
        let body = &frame[LENGTH_BYTES..];
        for cut in 0..body.len() {
            assert!(
                decode_frame_body::<Sample>(&body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut garbage = PROTOCOL_VERSION.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 32]);
        assert!(matches!(
            decode_frame_body::<Sample>(&garbage),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn huge_length_inside_the_body_does_not_allocate_past_the_limit() {
        // A Vec<u8> whose varint length claims u32::MAX elements.
        let mut body = vec![1u8]; // variant Blob
        body.push(252);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            from_bytes::<Sample>(&body),
            Err(CodecError::Malformed(_))
        ));
    }
}
