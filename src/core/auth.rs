//! Users and their authentication.

use crate::config::Config;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub tags: Vec<String>,
}

impl User {
    pub fn is_administrator(&self) -> bool {
        self.tags.iter().any(|t| t == "administrator")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("user '{0}' - invalid credentials")]
    InvalidCredentials(String),
    #[error("user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
}

#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: HashMap<String, (String, User)>,
    loopback_only: Vec<String>,
}

impl Users {
    pub fn from_config(config: &Config) -> Self {
        Users {
            by_name: config
                .users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        (
                            u.password.clone(),
                            User {
                                name: u.name.clone(),
                                tags: u.tags.clone(),
                            },
                        ),
                    )
                })
                .collect(),
            loopback_only: config.server.loopback_users.clone(),
        }
    }

    /// Checks a name and password for a client connecting from `peer`.
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<User, AuthError> {
        let Some((expected, user)) = self.by_name.get(name) else {
            return Err(AuthError::InvalidCredentials(name.to_owned()));
        };
        if !constant_time_eq(expected.as_bytes(), password.as_bytes()) {
            return Err(AuthError::InvalidCredentials(name.to_owned()));
        }
        if self.loopback_only.iter().any(|u| u == name) && !peer.is_loopback() {
            return Err(AuthError::LoopbackOnly(name.to_owned()));
        }
        Ok(user.clone())
    }
}

/// Compares without an early exit, so timing does not reveal how much of a password matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG;

    #[test]
    fn guest_is_loopback_only() {
        let users = Users::from_config(&Config::parse(DEFAULT_CONFIG).unwrap());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(users.authenticate("guest", "guest", local).is_ok());
        assert_eq!(
            users.authenticate("guest", "guest", remote),
            Err(AuthError::LoopbackOnly("guest".into()))
        );
        assert!(users.authenticate("guest", "nope", local).is_err());
        assert!(users.authenticate("nobody", "guest", local).is_err());
    }
}
