//! Signature algorithms and verification keys.
//!
//! A key is bound to one family (HMAC, RSA, ECDSA P-256, Ed25519) by how it was given, and a
//! token's `alg` must belong to its key's family: a public RSA key can never be used as an HMAC
//! secret, whatever the token claims (the classic algorithm-confusion attack).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use sha2::{Sha256, Sha384, Sha512};

/// A JWS algorithm Sluice verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC with SHA-256.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The algorithm named in a JOSE header or a config.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "HS256" => Self::Hs256,
            "HS384" => Self::Hs384,
            "HS512" => Self::Hs512,
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    fn family(self) -> Family {
        match self {
            Self::Hs256 | Self::Hs384 | Self::Hs512 => Family::Hmac,
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512 => Family::Rsa,
            Self::Es256 => Family::P256,
            Self::EdDsa => Family::Ed25519,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    P256,
    Ed25519,
}

/// Key material.
#[derive(Clone)]
pub enum KeyMaterial {
    /// A shared secret.
    Hmac(Vec<u8>),
    /// An RSA public key.
    Rsa(Box<RsaPublicKey>),
    /// A P-256 public key.
    P256(p256::ecdsa::VerifyingKey),
    /// An Ed25519 public key.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.write_str(match self {
            Self::Hmac(_) => "Hmac(..)",
            Self::Rsa(_) => "Rsa(..)",
            Self::P256(_) => "P256(..)",
            Self::Ed25519(_) => "Ed25519(..)",
        })
    }
}

impl KeyMaterial {
    fn family(&self) -> Family {
        match self {
            Self::Hmac(_) => Family::Hmac,
            Self::Rsa(_) => Family::Rsa,
            Self::P256(_) => Family::P256,
            Self::Ed25519(_) => Family::Ed25519,
        }
    }

    /// A public key in PEM: SubjectPublicKeyInfo (`PUBLIC KEY`) for RSA, P-256 and Ed25519, or
    /// PKCS#1 (`RSA PUBLIC KEY`).
    pub fn from_public_pem(pem: &str) -> Result<Self, String> {
        if pem.contains("RSA PUBLIC KEY") {
            return RsaPublicKey::from_pkcs1_pem(pem)
                .map(|key| Self::Rsa(Box::new(key)))
                .map_err(|err| format!("not a PKCS#1 RSA public key: {err}"));
        }
        if let Ok(key) = RsaPublicKey::from_public_key_pem(pem) {
            return Ok(Self::Rsa(Box::new(key)));
        }
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Self::P256(key));
        }
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Self::Ed25519(key));
        }
        Err("not a PEM public key of a supported type (RSA, EC P-256 or Ed25519); private keys are refused".into())
    }

    /// A key from one JWK (RFC 7517): `RSA`, `EC` with `P-256`, `OKP` with `Ed25519`, or `oct`.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, String> {
        let field = |name: &str| -> Result<Vec<u8>, String> {
            let text =
                jwk.get(name).and_then(|value| value.as_str()).ok_or_else(|| format!("JWK without \"{name}\""))?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|err| format!("JWK \"{name}\" is not base64url: {err}"))
        };
        match jwk.get("kty").and_then(|kty| kty.as_str()) {
            Some("RSA") => {
                let n = rsa::BigUint::from_bytes_be(&field("n")?);
                let e = rsa::BigUint::from_bytes_be(&field("e")?);
                RsaPublicKey::new(n, e).map(|key| Self::Rsa(Box::new(key))).map_err(|err| format!("bad RSA JWK: {err}"))
            }
            Some("EC") => {
                let curve = jwk.get("crv").and_then(|crv| crv.as_str()).unwrap_or_default();
                if curve != "P-256" {
                    return Err(format!("EC JWK on curve {curve:?}: only P-256 is supported"));
                }
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("P-256 JWK coordinates must be 32 bytes".into());
                }
                let point =
                    p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
                p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map(Self::P256)
                    .map_err(|err| format!("bad P-256 JWK: {err}"))
            }
            Some("OKP") => {
                let curve = jwk.get("crv").and_then(|crv| crv.as_str()).unwrap_or_default();
                if curve != "Ed25519" {
                    return Err(format!("OKP JWK on curve {curve:?}: only Ed25519 is supported"));
                }
                let bytes: [u8; 32] = field("x")?.try_into().map_err(|_| "Ed25519 JWK \"x\" must be 32 bytes")?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map(Self::Ed25519)
                    .map_err(|err| format!("bad Ed25519 JWK: {err}"))
            }
            Some("oct") => Ok(Self::Hmac(field("k")?)),
            other => Err(format!("JWK key type {other:?} is not supported")),
        }
    }

    /// Whether `signature` over `signing_input` is valid under `algorithm` with this key. An
    /// algorithm of another family than the key's never verifies.
    pub fn verify(&self, algorithm: Algorithm, signing_input: &[u8], signature: &[u8]) -> bool {
        if algorithm.family() != self.family() {
            return false;
        }
        match (self, algorithm) {
            (Self::Hmac(secret), Algorithm::Hs256) => hmac_ok::<Hmac<Sha256>>(secret, signing_input, signature),
            (Self::Hmac(secret), Algorithm::Hs384) => hmac_ok::<Hmac<Sha384>>(secret, signing_input, signature),
            (Self::Hmac(secret), Algorithm::Hs512) => hmac_ok::<Hmac<Sha512>>(secret, signing_input, signature),
            (Self::Rsa(key), Algorithm::Rs256) => pkcs1::<Sha256>(key, signing_input, signature),
            (Self::Rsa(key), Algorithm::Rs384) => pkcs1::<Sha384>(key, signing_input, signature),
            (Self::Rsa(key), Algorithm::Rs512) => pkcs1::<Sha512>(key, signing_input, signature),
            (Self::Rsa(key), Algorithm::Ps256) => pss::<Sha256>(key, signing_input, signature),
            (Self::Rsa(key), Algorithm::Ps384) => pss::<Sha384>(key, signing_input, signature),
            (Self::Rsa(key), Algorithm::Ps512) => pss::<Sha512>(key, signing_input, signature),
            (Self::P256(key), Algorithm::Es256) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(signing_input, &signature).is_ok()),
            (Self::Ed25519(key), Algorithm::EdDsa) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_strict(signing_input, &signature).is_ok()),
            _ => false,
        }
    }
}

fn hmac_ok<M: Mac + hmac::digest::KeyInit>(secret: &[u8], input: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as Mac>::new_from_slice(secret) else { return false };
    mac.update(input);
    // Constant-time comparison.
    mac.verify_slice(signature).is_ok()
}

fn pkcs1<D>(key: &RsaPublicKey, input: &[u8], signature: &[u8]) -> bool
where
    D: sha2::Digest + sha2::digest::const_oid::AssociatedOid,
{
    let verifier = rsa::pkcs1v15::VerifyingKey::<D>::new(key.clone());
    rsa::pkcs1v15::Signature::try_from(signature).is_ok_and(|signature| verifier.verify(input, &signature).is_ok())
}

fn pss<D>(key: &RsaPublicKey, input: &[u8], signature: &[u8]) -> bool
where
    D: sha2::Digest + sha2::digest::FixedOutputReset,
{
    let verifier = rsa::pss::VerifyingKey::<D>::new(key.clone());
    rsa::pss::Signature::try_from(signature).is_ok_and(|signature| verifier.verify(input, &signature).is_ok())
}
