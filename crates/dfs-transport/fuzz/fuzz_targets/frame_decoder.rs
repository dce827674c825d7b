//! The frame decoder on arbitrary bytes: raw input fed in arbitrary pieces, and well-formed
//! sealed frames with one byte damaged. Never panics; never yields a frame that was not sent.
#![no_main]

use bytes::BytesMut;
use dfs_transport::wire::{FrameDecoder, FrameKind, FrameSealer};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const KEY: [u8; 32] = [0x42; 32];

fn kind(b: u8) -> FrameKind {
    match b % 5 {
        0 => FrameKind::Message,
        1 => FrameKind::Data,
        2 => FrameKind::End,
        3 => FrameKind::Abort,
        _ => FrameKind::Ping,
    }
}

/// Decode `bytes` fed in pieces of `step`; the frames before the first error.
fn decode(bytes: &[u8], step: usize, max: usize) -> Vec<(FrameKind, Vec<u8>)> {
    let mut dec = FrameDecoder::new(KEY, max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => out.push((f.kind, f.payload.to_vec())),
                Ok(None) => break,
                Err(_) => return out,
            }
        }
    }
    while let Ok(Some(f)) = dec.decode_eof(&mut buf) {
        out.push((f.kind, f.payload.to_vec()));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let step = usize::from(mode >> 1) + 1;
    if mode & 1 == 0 {
        // Raw bytes: whatever comes out must have passed the tag check under KEY, which random
        // input cannot do; a panic or an over-allocation is the bug we look for.
        let max = 1024 + usize::from(mode) * 64;
        let frames = decode(rest, step, max);
        assert!(frames.is_empty(), "random bytes produced an authenticated frame");
        return;
    }
    // Structured: split `rest` into frames, seal them, damage one byte, decode.
    let Some((&damage, rest)) = rest.split_first() else { return };
    let mut sent = Vec::new();
    let mut wire = BytesMut::new();
    let mut sealer = FrameSealer::new(KEY);
    for chunk in rest.chunks(97) {
        let k = kind(chunk[0]);
        sealer.encode_to(k, &chunk[1..], &mut wire).expect("seal");
        sent.push((k, chunk[1..].to_vec()));
    }
    let intact = decode(&wire, step, 4096);
    assert_eq!(intact, sent, "intact frames must round-trip");
    if !wire.is_empty() {
        let at = usize::from(damage) * wire.len() / 256;
        wire[at] ^= 1 << (damage % 8);
        let got = decode(&wire, step, 4096);
        assert!(got.len() < sent.len().max(1), "a damaged stream decoded in full");
        assert_eq!(&got[..], &sent[..got.len()], "a damaged stream produced altered frames");
    }
});
