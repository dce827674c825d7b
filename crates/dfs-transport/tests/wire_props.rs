//! Property tests of the wire format: every message round-trips; truncated, bit-flipped,
//! dropped, reordered or random bytes never panic the decoder and never yield a frame that was
//! not sent.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use dfs_transport::NodeId;
use dfs_transport::wire::{
    ConnKind, Frame, FrameDecoder, FrameKind, FrameSealer, FrameSplitter, FrameVerifier, Hello,
    SessionKeys, TAG_LEN,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::codec::Decoder;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping,
    Put {
        key: String,
        len: u64,
        replicas: Vec<[u8; 32]>,
    },
    Get {
        key: String,
        offset: Option<u64>,
    },
    Reply(Result<Vec<u8>, String>),
    Nested(Vec<(u16, i64, bool)>),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        Just(Msg::Ping),
        (
            ".{0,40}",
            any::<u64>(),
            prop::collection::vec(any::<[u8; 32]>(), 0..4)
        )
            .prop_map(|(key, len, replicas)| Msg::Put { key, len, replicas }),
        (".{0,40}", any::<Option<u64>>()).prop_map(|(key, offset)| Msg::Get { key, offset }),
        prop::result::maybe_ok(prop::collection::vec(any::<u8>(), 0..300), ".{0,20}")
            .prop_map(Msg::Reply),
        prop::collection::vec(any::<(u16, i64, bool)>(), 0..20).prop_map(Msg::Nested),
    ]
}

const KEY: [u8; 32] = [7; 32];
const MAX: usize = 64 * 1024;

fn seal_all(frames: &[(FrameKind, Vec<u8>)]) -> (BytesMut, Vec<usize>) {
    let mut sealer = FrameSealer::new(KEY);
    let mut out = BytesMut::new();
    let mut ends = Vec::new();
    for (kind, payload) in frames {
        sealer.encode_to(*kind, payload, &mut out).unwrap();
        ends.push(out.len());
    }
    (out, ends)
}

/// Feed `bytes` to a fresh decoder in pieces split at `cuts`; all frames until the first error.
fn decode_all(
    bytes: &[u8],
    cuts: &[usize],
    eof: bool,
) -> (Vec<Frame>, Option<dfs_transport::TransportError>) {
    decode_all_max(bytes, cuts, eof, MAX)
}

/// [`decode_all`] with another maximum payload.
fn decode_all_max(
    bytes: &[u8],
    cuts: &[usize],
    eof: bool,
    max: usize,
) -> (Vec<Frame>, Option<dfs_transport::TransportError>) {
    let mut dec = FrameDecoder::new(KEY, max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut at = 0;
    for p in points {
        buf.extend_from_slice(&bytes[at..p]);
        at = p;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    if eof {
        loop {
            match dec.decode_eof(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Message),
        Just(FrameKind::Data),
        Just(FrameKind::End),
        Just(FrameKind::Abort),
        Just(FrameKind::Ping),
    ]
}

fn frames() -> impl Strategy<Value = Vec<(FrameKind, Vec<u8>)>> {
    prop::collection::vec((kind(), prop::collection::vec(any::<u8>(), 0..2000)), 1..6)
}

/// Largest payload of the large-frame tests.
const BIG_MAX: usize = 300 * 1024;

/// Frames large enough to be hashed while they arrive (a 64 KiB step or more), mixed with
/// small ones; payloads are a cheap pattern seeded per frame.
fn big_frames() -> impl Strategy<Value = Vec<(FrameKind, Vec<u8>)>> {
    prop::collection::vec(
        (kind(), 0usize..=BIG_MAX, any::<u8>()).prop_map(|(k, len, seed)| {
            let payload = (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect();
            (k, payload)
        }),
        1..4,
    )
}

proptest! {
    #[test]
    fn messages_round_trip(msgs in prop::collection::vec(msg(), 1..8), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let encoded: Vec<(FrameKind, Vec<u8>)> = msgs
            .iter()
            .map(|m| (FrameKind::Message, postcard::to_stdvec(m).unwrap()))
            .collect();
        let (bytes, ends) = seal_all(&encoded);
        // The encoded length is exactly header + payload + tag.
        let mut prev = 0;
        for ((_, p), end) in encoded.iter().zip(&ends) {
            prop_assert_eq!(end - prev, 5 + p.len() + TAG_LEN);
            prev = *end;
        }
        let (got, err) = decode_all(&bytes, &cuts, true);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(got.len(), msgs.len());
        for (f, m) in got.iter().zip(&msgs) {
            prop_assert_eq!(f.kind, FrameKind::Message);
            prop_assert_eq!(&postcard::from_bytes::<Msg>(&f.payload).unwrap(), m);
        }
    }

    #[test]
    fn truncated_streams_never_panic_nor_invent(fs in frames(), cut in any::<usize>(), cuts in prop::collection::vec(any::<usize>(), 0..4)) {
        let (bytes, ends) = seal_all(&fs);
        let cut = cut % (bytes.len() + 1);
        let (got, err) = decode_all(&bytes[..cut], &cuts, true);
        // Exactly the frames wholly inside the prefix, in order, then an error iff a frame was cut.
        let whole = ends.iter().filter(|e| **e <= cut).count();
        prop_assert_eq!(got.len(), whole);
        for (f, (k, p)) in got.iter().zip(&fs) {
            prop_assert_eq!(f.kind, *k);
            prop_assert_eq!(&f.payload[..], &p[..]);
        }
        let cut_mid_frame = !ends.contains(&cut) && cut != 0;
        prop_assert_eq!(err.is_some(), cut_mid_frame, "{:?}", err);
    }

    #[test]
    fn bit_flips_are_always_detected(fs in frames(), bit in any::<usize>(), cuts in prop::collection::vec(any::<usize>(), 0..4)) {
        let (mut bytes, ends) = seal_all(&fs);
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let (got, err) = decode_all(&bytes, &cuts, true);
        // Frames before the flipped one may come out (unchanged); never the flipped one or any
        // after it, and the stream always ends in an error.
        let hit = ends.iter().position(|e| bit / 8 < *e).unwrap();
        prop_assert!(got.len() <= hit);
        for (f, (k, p)) in got.iter().zip(&fs) {
            prop_assert_eq!(f.kind, *k);
            prop_assert_eq!(&f.payload[..], &p[..]);
        }
        prop_assert!(err.is_some());
    }

    #[test]
    fn dropped_reordered_or_replayed_frames_are_detected(fs in prop::collection::vec((kind(), prop::collection::vec(any::<u8>(), 0..100)), 3..6), pick in 0usize..3) {
        let (bytes, ends) = seal_all(&fs);
        let frame = |i: usize| &bytes[if i == 0 { 0 } else { ends[i - 1] }..ends[i]];
        let mut tampered = Vec::new();
        match pick {
            // Drop frame 1.
            0 => { tampered.extend_from_slice(frame(0)); tampered.extend_from_slice(frame(2)); }
            // Swap frames 1 and 2.
            1 => { tampered.extend_from_slice(frame(0)); tampered.extend_from_slice(frame(2)); tampered.extend_from_slice(frame(1)); }
            // Replay frame 0.
            _ => { tampered.extend_from_slice(frame(0)); tampered.extend_from_slice(frame(0)); }
        }
        let (got, err) = decode_all(&tampered, &[], true);
        prop_assert_eq!(got.len(), 1);
        let is_integrity = matches!(err, Some(dfs_transport::TransportError::Integrity { seq: 1 }));
        prop_assert!(is_integrity, "{:?}", err);
    }

    #[test]
    fn split_then_verify_in_any_order_matches_the_decoder(fs in frames(), bit in any::<Option<usize>>(), order in any::<u64>()) {
        let (mut bytes, _) = seal_all(&fs);
        if let Some(bit) = bit {
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        let (expected, expected_err) = decode_all(&bytes, &[], true);
        // Split everything first, verify in a scrambled order, release in sequence until the
        // first failure: the same frames as the inline decoder, the same error.
        let mut splitter = FrameSplitter::new(MAX);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut raw = Vec::new();
        let split_err = loop {
            match splitter.decode_eof(&mut buf) {
                Ok(Some(f)) => raw.push(f),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        let verifier = FrameVerifier::new(KEY);
        let mut results: Vec<Option<_>> = (0..raw.len()).map(|_| None).collect();
        let mut idx: Vec<usize> = (0..raw.len()).collect();
        idx.sort_by_key(|i| (*i as u64).wrapping_mul(order | 1).rotate_left(17));
        for i in idx {
            results[i] = Some(verifier.verify(raw[i].clone()));
        }
        let mut got = Vec::new();
        let mut err = split_err;
        for r in results {
            match r.unwrap() {
                Ok(f) => got.push(f),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(err.map(|e| e.to_string()), expected_err.map(|e| e.to_string()));
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn large_frames_hashed_while_arriving_match_a_whole_verify(fs in big_frames(), bit in any::<Option<usize>>(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let (mut bytes, ends) = seal_all(&fs);
        if let Some(bit) = bit {
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        // Reference: split everything, verify each whole frame at once.
        let mut splitter = FrameSplitter::new(BIG_MAX);
        let mut buf = BytesMut::from(&bytes[..]);
        let verifier = FrameVerifier::new(KEY);
        let mut expected = Vec::new();
        let mut expected_err = None;
        loop {
            match splitter.decode_eof(&mut buf) {
                Ok(Some(f)) => match verifier.verify(f) {
                    Ok(f) => expected.push(f),
                    Err(e) => {
                        expected_err = Some(e);
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    expected_err = Some(e);
                    break;
                }
            }
        }
        // The decoder, fed in pieces (so large frames are hashed step by step as they arrive).
        let (got, err) = decode_all_max(&bytes, &cuts, true, BIG_MAX);
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(err.map(|e| e.to_string()), expected_err.map(|e| e.to_string()));
        match bit {
            None => prop_assert_eq!(got.len(), fs.len()),
            Some(bit) => {
                let bit = bit % (bytes.len() * 8);
                let hit = ends.iter().position(|e| bit / 8 < *e).unwrap();
                prop_assert!(got.len() <= hit);
            }
        }
    }

}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096), cuts in prop::collection::vec(any::<usize>(), 0..4)) {
        let _ = decode_all(&bytes, &cuts, true);
        let _ = Hello::decode(&bytes);
    }

    #[test]
    fn hello_round_trips_and_survives_damage(addr in ".{0,60}", auth in any::<bool>(), max in any::<u32>(), cut in any::<usize>(), bit in any::<usize>()) {
        let h = Hello { kind: ConnKind::Substream, auth, node_id: NodeId([3; 32]), nonce: [9; 32], max_frame_len: max, addr };
        let bytes = h.encode();
        let (back, used) = Hello::decode(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&back, &h);
        let _ = Hello::decode(&bytes[..cut % (bytes.len() + 1)]);
        let mut flipped = bytes.clone();
        let bit = bit % (bytes.len() * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        let _ = Hello::decode(&flipped);
    }

    #[test]
    fn overlong_hello_addresses_are_cut_at_a_character(addr in ".{1000,1100}") {
        let h = Hello { kind: ConnKind::Control, auth: false, node_id: NodeId([3; 32]), nonce: [9; 32], max_frame_len: 1 << 20, addr };
        let (back, _) = Hello::decode(&h.encode()).unwrap();
        prop_assert!(back.addr.len() <= dfs_transport::wire::MAX_ADDR_LEN);
        prop_assert!(h.addr.starts_with(&back.addr));
        prop_assert!(h.addr.len() <= dfs_transport::wire::MAX_ADDR_LEN || h.addr[back.addr.len()..].chars().next().map_or(0, char::len_utf8) + back.addr.len() > dfs_transport::wire::MAX_ADDR_LEN);
    }

    #[test]
    fn proofs_depend_on_every_hello_byte_and_the_secret(bit in 0usize..(82 * 8)) {
        let a = Hello { kind: ConnKind::Control, auth: true, node_id: NodeId([1; 32]), nonce: [2; 32], max_frame_len: 1 << 20, addr: "x".into() }.encode();
        let b = Hello { kind: ConnKind::Control, auth: true, node_id: NodeId([4; 32]), nonce: [5; 32], max_frame_len: 1 << 20, addr: "y".into() }.encode();
        let secret = dfs_transport::NetworkSecret::from_bytes([8; 32]);
        let dialer = SessionKeys::derive(Some(&secret), &a, &b, true);
        let acceptor = SessionKeys::derive(Some(&secret), &a, &b, false);
        prop_assert!(acceptor.verify_proof(&dialer.our_proof));
        prop_assert!(dialer.verify_proof(&acceptor.our_proof));
        prop_assert_eq!(dialer.send, acceptor.recv);
        prop_assert_eq!(dialer.recv, acceptor.send);
        // A reflected proof is refused.
        prop_assert!(!dialer.verify_proof(&dialer.our_proof));
        // Any altered byte of the transcript, or another secret, breaks the proof.
        let mut a2 = a.clone();
        a2[bit / 8] ^= 1 << (bit % 8);
        let altered = SessionKeys::derive(Some(&secret), &a2, &b, false);
        prop_assert!(!altered.verify_proof(&dialer.our_proof));
        let other = SessionKeys::derive(Some(&dfs_transport::NetworkSecret::from_bytes([9; 32])), &a, &b, false);
        prop_assert!(!other.verify_proof(&dialer.our_proof));
    }
}

#[test]
fn oversized_length_is_refused_before_allocating() {
    let mut dec = FrameDecoder::new(KEY, MAX);
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    let err = dec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, dfs_transport::TransportError::FrameTooLarge { len, max } if len == u64::from(u32::MAX) - 1 - TAG_LEN as u64 && max == MAX)
    );
    assert!(
        buf.capacity() < 1024,
        "allocated {} bytes for a refused frame",
        buf.capacity()
    );
}

/// A length prefix alone does not make the decoder reserve a maximum-size frame: it reserves
/// the whole frame only once the first 64 KiB of it arrived, and still decodes it.
#[test]
fn a_length_prefix_alone_reserves_no_large_buffer() {
    let key = [7u8; 32];
    let payload = vec![5u8; 1 << 20];
    let mut wire = BytesMut::new();
    FrameSealer::new(key)
        .encode_to(FrameKind::Data, &payload, &mut wire)
        .unwrap();
    let mut decoder = FrameDecoder::new(key, 1 << 20);
    let mut buf = BytesMut::from(&wire[..4]);
    assert!(decoder.decode(&mut buf).unwrap().is_none());
    assert!(
        buf.capacity() <= 64 * 1024,
        "4 bytes reserved {} bytes",
        buf.capacity()
    );
    buf.extend_from_slice(&wire[4..64 * 1024]);
    assert!(decoder.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() >= wire.len(), "{}", buf.capacity());
    buf.extend_from_slice(&wire[64 * 1024..]);
    let frame = decoder.decode(&mut buf).unwrap().expect("a whole frame");
    assert_eq!(frame.kind, FrameKind::Data);
    assert_eq!(&frame.payload[..], &payload[..]);
}

/// The frame tag as `PROTOCOL.md` section 3 defines it, written again from the spec with the
/// RustCrypto `polyval` crate (an implementation independent of `dfs-crypto`'s).
fn spec_tag(key: &[u8; 32], kind: u8, seq: u64, payload: &[u8]) -> [u8; TAG_LEN] {
    use polyval::universal_hash::UniversalHash;
    let h = blake3::derive_key("dfs-transport v2 frame hash key", key);
    let pad_key = blake3::derive_key("dfs-transport v2 frame pad key", key);
    let h: [u8; 16] = h[..16].try_into().unwrap();
    let mut poly = polyval::Polyval::new(&h.into());
    poly.update_padded(payload);
    let mut last = [0u8; 16];
    last[..8].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    last[8] = kind;
    poly.update_padded(&last);
    let pad = blake3::keyed_hash(&pad_key, &seq.to_be_bytes());
    let mut tag: [u8; 16] = poly.finalize().into();
    for (t, p) in tag.iter_mut().zip(pad.as_bytes()) {
        *t ^= p;
    }
    tag
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every sealed frame is `header || payload || tag` with the tag of the spec.
    #[test]
    fn sealed_frames_carry_the_spec_tag(
        key in any::<[u8; 32]>(),
        fs in prop::collection::vec(
            (kind(), prop_oneof![
                prop::collection::vec(any::<u8>(), 0..100),
                prop::collection::vec(any::<u8>(), 500..2100),
            ]),
            1..6,
        ),
    ) {
        let mut sealer = FrameSealer::new(key);
        for (seq, (kind, payload)) in fs.iter().enumerate() {
            let mut out = BytesMut::new();
            sealer.encode_to(*kind, payload, &mut out).unwrap();
            let want = spec_tag(&key, *kind as u8, seq as u64, payload);
            prop_assert_eq!(&out[out.len() - TAG_LEN..], &want[..]);
            prop_assert_eq!(&out[5..out.len() - TAG_LEN], &payload[..]);
        }
    }
}

/// POLYVAL pads the payload with zeros, so the tag binds the payload's length separately: a
/// frame extended or cut by zero bytes under the original tag is refused.
#[test]
fn zero_padding_does_not_forge_a_frame() {
    for (payload, forged) in [
        (&b"ab"[..], &b"ab\0"[..]),
        (&b"ab\0"[..], &b"ab"[..]),
        (&b""[..], &[0u8; 16][..]),
    ] {
        let (bytes, _) = seal_all(&[(FrameKind::Data, payload.to_vec())]);
        let tag = &bytes[bytes.len() - TAG_LEN..];
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&((1 + forged.len() + TAG_LEN) as u32).to_be_bytes());
        frame.extend_from_slice(&[FrameKind::Data as u8]);
        frame.extend_from_slice(forged);
        frame.extend_from_slice(tag);
        let (got, err) = decode_all(&frame, &[], true);
        assert!(got.is_empty());
        assert!(
            matches!(
                err,
                Some(dfs_transport::TransportError::Integrity { seq: 0 })
            ),
            "{err:?}"
        );
    }
}

/// The test vector of `PROTOCOL.md` section 3.
#[test]
fn protocol_md_frame_vector() {
    let key = [0x07; 32];
    let mut sealer = FrameSealer::new(key);
    let mut out = BytesMut::new();
    sealer
        .encode_to(FrameKind::Message, b"hello", &mut out)
        .unwrap();
    sealer
        .encode_to(FrameKind::Data, &[0xab; 40], &mut out)
        .unwrap();
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    let want = concat!(
        "00000016",
        "02",
        "68656c6c6f",
        "353e1e915f9bca4725bf079c9c569b24",
        "00000039",
        "04",
        "abababababababababababababababababababababababababababababababababababababababab",
        "d2d1915950063aac33c8444000afc4f0",
    );
    assert_eq!(hex, want);
}
