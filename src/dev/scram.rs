//! SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) for the dev
//! backends and the load test: the server side the dev backends verify a
//! client's proof with ([`ScramServer`]), and a client ([`ScramClient`])
//! for the load test's `--mech scram-sha-256`.
//!
//! The primitives (PBKDF2, HMAC, SHA) come from `ring`, which the TLS
//! stack already builds. The salted password of the dev password is
//! derived once per salt and kept ([`SaltedCache`]): the dev backends stand
//! in for real ones under load, and a per-login PBKDF2 would make them,
//! not the director, the bottleneck. Channel binding is not supported
//! (`n` or `y` GS2 flags only), as behind mailpin.

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use zeroize::Zeroizing;

/// Iterations of the dev backends' salted password (RFC 7677's minimum).
pub const DEV_ITERATIONS: u32 = 4096;

/// Which SCRAM hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-1.
    Sha1,
    /// SCRAM-SHA-256.
    Sha256,
}

impl ScramHash {
    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            ScramHash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            ScramHash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            ScramHash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => hmac::HMAC_SHA256,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            ScramHash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => &digest::SHA256,
        }
    }

    fn len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }
}

/// The keys derived from a password and a salt.
#[derive(Clone)]
pub struct ScramKeys {
    client_key: Zeroizing<Vec<u8>>,
    stored_key: Vec<u8>,
    server_key: Zeroizing<Vec<u8>>,
}

impl ScramKeys {
    /// Derives the keys of `password` with `salt` and `iterations`.
    pub fn derive(hash: ScramHash, password: &[u8], salt: &[u8], iterations: NonZeroU32) -> Self {
        let mut salted = Zeroizing::new(vec![0; hash.len()]);
        pbkdf2::derive(hash.pbkdf2(), iterations, salt, password, &mut salted);
        let key = hmac::Key::new(hash.hmac(), &salted);
        let client_key = Zeroizing::new(hmac::sign(&key, b"Client Key").as_ref().to_vec());
        let server_key = Zeroizing::new(hmac::sign(&key, b"Server Key").as_ref().to_vec());
        let stored_key = digest::digest(hash.digest(), &client_key).as_ref().to_vec();
        ScramKeys {
            client_key,
            stored_key,
            server_key,
        }
    }

    fn signature(&self, hash: ScramHash, key: &[u8], auth_message: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hash.hmac(), key), auth_message)
            .as_ref()
            .to_vec()
    }

    fn server_signature(&self, hash: ScramHash, auth_message: &[u8]) -> String {
        STANDARD.encode(self.signature(hash, &self.server_key, auth_message))
    }
}

/// Remembers the keys derived for one password by (hash, salt,
/// iterations), so a load of logins derives them once.
#[derive(Default)]
pub struct SaltedCache {
    entries: Vec<(ScramHash, Vec<u8>, u32, ScramKeys)>,
}

impl SaltedCache {
    /// The keys of `password` for this hash, salt and iteration count.
    pub fn keys(
        &mut self,
        hash: ScramHash,
        password: &[u8],
        salt: &[u8],
        iterations: NonZeroU32,
    ) -> ScramKeys {
        if let Some((_, _, _, keys)) = self
            .entries
            .iter()
            .find(|(h, s, i, _)| *h == hash && s == salt && *i == iterations.get())
        {
            return keys.clone();
        }
        let keys = ScramKeys::derive(hash, password, salt, iterations);
        if self.entries.len() < 16 {
            self.entries
                .push((hash, salt.to_vec(), iterations.get(), keys.clone()));
        }
        keys
    }
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    // The system random source does not fail on Linux; a zero nonce would
    // only weaken a dev login.
    let _ = ring::rand::SystemRandom::new().fill(&mut raw);
    STANDARD.encode(raw)
}

fn attribute(message: &str, name: char) -> Option<&str> {
    message
        .split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The server side of one SCRAM exchange with a fixed salt.
pub struct ScramServer {
    hash: ScramHash,
    keys: ScramKeys,
    salt: Vec<u8>,
    state: ServerState,
}

enum ServerState {
    First,
    Final {
        user: String,
        gs2: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Verified {
        user: String,
    },
    Done,
}

/// What the server says next.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// A challenge (raw, to be base64-encoded on the wire).
    Challenge(Vec<u8>),
    /// The exchange succeeded for this user.
    Success(String),
    /// The exchange failed.
    Failure,
}

impl ScramServer {
    /// A server checking against `keys` derived with `salt`.
    pub fn new(hash: ScramHash, keys: ScramKeys, salt: &[u8]) -> ScramServer {
        ScramServer {
            hash,
            keys,
            salt: salt.to_vec(),
            state: ServerState::First,
        }
    }

    /// Takes the client's next (decoded) message.
    pub fn step(&mut self, message: &[u8]) -> ServerStep {
        let Ok(message) = std::str::from_utf8(message) else {
            return ServerStep::Failure;
        };
        match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::First => {
                let mut parts = message.splitn(3, ',');
                let (Some(flag), Some(authzid), Some(bare)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return ServerStep::Failure;
                };
                if flag != "n" && flag != "y" {
                    return ServerStep::Failure;
                }
                let (Some(user), Some(cnonce)) = (attribute(bare, 'n'), attribute(bare, 'r'))
                else {
                    return ServerStep::Failure;
                };
                let user = user.replace("=2C", ",").replace("=3D", "=");
                let nonce = format!("{cnonce}{}", nonce());
                let server_first = format!(
                    "r={nonce},s={},i={DEV_ITERATIONS}",
                    STANDARD.encode(&self.salt)
                );
                self.state = ServerState::Final {
                    user,
                    gs2: format!("{flag},{authzid},"),
                    client_first_bare: bare.to_owned(),
                    server_first: server_first.clone(),
                    nonce,
                };
                ServerStep::Challenge(server_first.into_bytes())
            }
            ServerState::Final {
                user,
                gs2,
                client_first_bare,
                server_first,
                nonce,
            } => {
                let Some((without_proof, proof)) = message.rsplit_once(",p=") else {
                    return ServerStep::Failure;
                };
                if attribute(without_proof, 'r') != Some(nonce.as_str())
                    || attribute(without_proof, 'c') != Some(STANDARD.encode(&gs2).as_str())
                {
                    return ServerStep::Failure;
                }
                let Ok(proof) = STANDARD.decode(proof) else {
                    return ServerStep::Failure;
                };
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let signature =
                    self.keys
                        .signature(self.hash, &self.keys.stored_key, auth_message.as_bytes());
                if proof.len() != signature.len() {
                    return ServerStep::Failure;
                }
                let client_key: Vec<u8> =
                    proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
                let stored = digest::digest(self.hash.digest(), &client_key);
                if stored.as_ref() != self.keys.stored_key.as_slice() {
                    return ServerStep::Failure;
                }
                let verifier = self
                    .keys
                    .server_signature(self.hash, auth_message.as_bytes());
                self.state = ServerState::Verified { user };
                ServerStep::Challenge(format!("v={verifier}").into_bytes())
            }
            ServerState::Verified { user } if message.is_empty() => ServerStep::Success(user),
            _ => ServerStep::Failure,
        }
    }
}

/// The client side of one SCRAM exchange (no channel binding).
pub struct ScramClient {
    hash: ScramHash,
    gs2: String,
    client_first_bare: String,
    nonce: String,
    expected_verifier: Option<String>,
}

impl ScramClient {
    /// Starts a login of `user`; returns the client and its first message.
    pub fn start(hash: ScramHash, user: &str) -> (ScramClient, String) {
        let nonce = nonce();
        let name = user.replace('=', "=3D").replace(',', "=2C");
        let client_first_bare = format!("n={name},r={nonce}");
        let gs2 = "n,,".to_owned();
        let first = format!("{gs2}{client_first_bare}");
        (
            ScramClient {
                hash,
                gs2,
                client_first_bare,
                nonce,
                expected_verifier: None,
            },
            first,
        )
    }

    /// Answers the server-first message with the client-final message,
    /// deriving the keys through `cache`; `None` if the server-first
    /// message is malformed or does not extend our nonce.
    pub fn client_final(
        &mut self,
        server_first: &str,
        password: &[u8],
        cache: &mut SaltedCache,
    ) -> Option<String> {
        let nonce = attribute(server_first, 'r')?;
        if !nonce.starts_with(&self.nonce) {
            return None;
        }
        let salt = STANDARD.decode(attribute(server_first, 's')?).ok()?;
        let iterations = NonZeroU32::new(attribute(server_first, 'i')?.parse().ok()?)?;
        let keys = cache.keys(self.hash, password, &salt, iterations);
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(&self.gs2));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = keys.signature(self.hash, &keys.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = keys
            .client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.expected_verifier = Some(format!(
            "v={}",
            keys.server_signature(self.hash, auth_message.as_bytes())
        ));
        Some(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Whether the server-final message proves the server knew the keys.
    pub fn server_final_ok(&self, server_final: &str) -> bool {
        self.expected_verifier.as_deref() == Some(server_final)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(hash: ScramHash, server_password: &[u8], client_password: &[u8]) -> ServerStep {
        let salt = b"dev-salt";
        let iterations = NonZeroU32::new(DEV_ITERATIONS).unwrap();
        let keys = ScramKeys::derive(hash, server_password, salt, iterations);
        let mut server = ScramServer::new(hash, keys, salt);
        let (mut client, first) = ScramClient::start(hash, "us,er");
        let ServerStep::Challenge(server_first) = server.step(first.as_bytes()) else {
            panic!("server-first");
        };
        let server_first = String::from_utf8(server_first).unwrap();
        let mut cache = SaltedCache::default();
        let last = client
            .client_final(&server_first, client_password, &mut cache)
            .expect("client-final");
        match server.step(last.as_bytes()) {
            ServerStep::Challenge(v) => {
                assert!(client.server_final_ok(std::str::from_utf8(&v).unwrap()));
                server.step(b"")
            }
            other => other,
        }
    }

    #[test]
    fn good_and_bad_proofs() {
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            assert_eq!(
                run(hash, b"dev", b"dev"),
                ServerStep::Success("us,er".into())
            );
            assert_eq!(run(hash, b"dev", b"wrong"), ServerStep::Failure);
        }
    }

    #[test]
    fn rfc_7677_example_client_proof() {
        // RFC 7677 §3: user "user", password "pencil".
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = ScramKeys::derive(
            ScramHash::Sha256,
            b"pencil",
            &salt,
            NonZeroU32::new(4096).unwrap(),
        );
        let mut client = ScramClient {
            hash: ScramHash::Sha256,
            gs2: "n,,".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            expected_verifier: None,
        };
        let mut cache = SaltedCache::default();
        cache
            .entries
            .push((ScramHash::Sha256, salt.clone(), 4096, keys));
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = client
            .client_final(server_first, b"pencil", &mut cache)
            .unwrap();
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(client.server_final_ok("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
    }
}
