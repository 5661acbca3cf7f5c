use sluice_sdk::{Filter, export_filter};
struct J;
impl Filter for J {
    type Config = ();
    fn new(_: ()) -> Result<Self, String> {
        Ok(J)
    }
}
export_filter!(J);
pub fn touch() {
    let _ = rsa::RsaPublicKey::new;
    let _ = p256::ecdsa::VerifyingKey::from_sec1_bytes;
    let _ = ed25519_dalek::VerifyingKey::from_bytes;
}
