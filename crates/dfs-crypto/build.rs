//! Declares the crate's cfg flags: `--cfg dfs_crypto_portable` disables the hand-written VAES
//! backend (used to test the portable path on CPUs that have VAES).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(dfs_crypto_portable)");
}
