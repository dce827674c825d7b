//! `Polyval`'s fast backend (where the CPU has one) against the portable RustCrypto `polyval`
//! crate, for any key, any data and any split into calls at 16-byte boundaries.

use dfs_crypto::Polyval;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fast_backend_agrees_with_portable(
        h in any::<[u8; 16]>(),
        data in proptest::collection::vec(any::<u8>(), 0..4200),
        cuts in proptest::collection::vec(0usize..300, 0..4),
    ) {
        let mut fast = Polyval::new(&h);
        let mut slow = Polyval::portable(&h);
        let mut rest = &data[..];
        for cut in cuts {
            let (head, tail) = rest.split_at((cut * 16).min(rest.len() / 16 * 16));
            fast.update_padded(head);
            slow.update_padded(head);
            rest = tail;
        }
        fast.update_padded(rest);
        slow.update_padded(rest);
        prop_assert_eq!(fast.finalize(), slow.finalize());
    }
}

/// Edge values of the field: all-zero and all-one keys and blocks, through whole batches.
#[test]
fn extreme_values_agree() {
    for h in [[0u8; 16], [0xff; 16], {
        let mut one = [0u8; 16];
        one[0] = 1;
        one
    }] {
        for fill in [0u8, 0xff, 0x80] {
            let data = vec![fill; 4096 + 48];
            let mut fast = Polyval::new(&h);
            let mut slow = Polyval::portable(&h);
            fast.update_padded(&data);
            slow.update_padded(&data);
            assert_eq!(fast.finalize(), slow.finalize(), "h {h:?} fill {fill:#x}");
        }
    }
}

/// The differential tests above compare two backends only where the fast one is selected:
/// check that it is, wherever the CPU supports it.
#[cfg(target_arch = "x86_64")]
#[test]
fn fast_backend_is_selected_where_supported() {
    let supported = !cfg!(dfs_crypto_portable)
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("vpclmulqdq")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    let want = if supported {
        "vpclmulqdq-avx512"
    } else {
        "portable"
    };
    assert_eq!(Polyval::new(&[1; 16]).backend(), want);
}
