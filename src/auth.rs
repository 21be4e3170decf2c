//! One-time credentials: generated per transfer, checked as HTTP basic auth.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the secret.
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// Fresh credentials with a 256-bit random password.
    pub fn generate(username: &str) -> Credentials {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Credentials {
            username: username.to_string(),
            password: URL_SAFE_NO_PAD.encode(secret),
        }
    }

    /// The `Authorization` header value for these credentials.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }

    /// Does an `Authorization` header carry these credentials?
    /// Compared in constant time so the secret can't be guessed byte by byte.
    pub fn matches(&self, header: Option<&[u8]>) -> bool {
        let Some(h) = header else { return false };
        let expected = self.basic_header();
        constant_time_eq(h, expected.as_bytes())
    }

    /// For the Docker API's X-Registry-Auth (never a config file).
    pub fn docker(&self, server: &str) -> bollard::auth::DockerCredentials {
        bollard::auth::DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(server.to_string()),
            ..Default::default()
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_are_distinct_and_check() {
        let a = Credentials::generate("dos");
        let b = Credentials::generate("dos");
        assert_ne!(a.password, b.password);
        assert!(a.password.len() >= 43); // 256 bits in base64
        assert!(a.matches(Some(a.basic_header().as_bytes())));
        assert!(!a.matches(Some(b.basic_header().as_bytes())));
        assert!(!a.matches(None));
        assert!(!a.matches(Some(b"Basic")));
        assert!(!format!("{a:?}").contains(&a.password));
    }
}
