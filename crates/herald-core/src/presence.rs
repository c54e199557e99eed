//! Users and presence, as the cluster layer carries them between nodes: who is subscribed
//! where ([`PresenceEntry`]), join/leave events ([`PresenceEvent`]), the operator's actions
//! on a user ([`UserAction`]) and revocations ([`Revocation`], kept in [`Revocations`]).
//! See docs/presence.md for the contract.

use std::collections::{BTreeSet, HashMap};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One connection subscribed to a channel, as `Presence` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The connection's client id (unique in the cluster).
    pub client: String,
    /// The token's `sub`; empty for anonymous clients.
    pub user: String,
    /// The token's `info` claim as compact JSON text, if it had one.
    #[serde(default)]
    pub info: Option<String>,
    /// The node holding the connection.
    pub node: String,
    /// `websocket` or `sse`.
    pub protocol: String,
    /// When the connection subscribed to the channel (ms since the Unix epoch).
    pub since_unix_ms: u64,
}

/// A `Presence` answer: every client of the channel on the nodes that answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceAnswer {
    /// Sorted by client id.
    pub clients: Vec<PresenceEntry>,
    /// Nodes known to be alive that did not answer in time.
    #[serde(default)]
    pub missing_nodes: Vec<String>,
}

impl PresenceAnswer {
    /// Joins the answers of several nodes.
    pub fn merge(parts: impl IntoIterator<Item = PresenceAnswer>) -> Self {
        let mut out = Self::default();
        for part in parts {
            out.clients.extend(part.clients);
            out.missing_nodes.extend(part.missing_nodes);
        }
        out.clients.sort_by(|a, b| a.client.cmp(&b.client));
        out.clients.dedup_by(|a, b| a.client == b.client);
        out.missing_nodes.sort();
        out
    }

    /// Connections listed.
    pub fn connections(&self) -> u64 {
        self.clients.len() as u64
    }

    /// Distinct non-empty users listed (anonymous clients count as one user each).
    pub fn users(&self) -> u64 {
        let named: BTreeSet<&str> = self
            .clients
            .iter()
            .filter(|c| !c.user.is_empty())
            .map(|c| c.user.as_str())
            .collect();
        let anonymous = self.clients.iter().filter(|c| c.user.is_empty()).count();
        (named.len() + anonymous) as u64
    }
}

/// A client joined or left a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceKind {
    /// Subscribed.
    Join,
    /// Unsubscribed or disconnected.
    Leave,
}

impl PresenceKind {
    /// `join` or `leave`: the WebSocket `type` and the SSE event name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PresenceKind::Join => "join",
            PresenceKind::Leave => "leave",
        }
    }
}

/// A join or leave, relayed to every node with subscribers of the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// Join or leave.
    pub kind: PresenceKind,
    /// The channel.
    pub channel: String,
    /// The client id.
    pub client: String,
    /// The user (empty: anonymous).
    pub user: String,
    /// The token's `info` as compact JSON text.
    #[serde(default)]
    pub info: Option<String>,
    /// The node the client is on (peers skip their own events).
    pub node: String,
}

impl PresenceEvent {
    /// The event's JSON body (without `type`): what SSE sends as `data`.
    pub fn body(&self) -> serde_json::Value {
        let info = self
            .info
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "channel": self.channel, "client": self.client, "user": self.user, "info": info,
        })
    }
}

/// An operator's action on a user, applied by every node to the connections it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum UserAction {
    /// End every connection of the user.
    Disconnect {
        /// The user.
        user: String,
        /// Whether the client may reconnect.
        reconnect: bool,
        /// Shown to the client.
        reason: String,
    },
    /// Remove a channel from the user's connections.
    Unsubscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
    },
    /// Add a channel (from now) to the user's connections.
    Subscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
    },
    /// Remember a revocation and end the connections it covers.
    Revoke(Revocation),
}

/// How many connections an action reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionAnswer {
    /// Connections affected on the nodes that answered.
    pub connections: u64,
    /// Nodes known to be alive that did not answer in time.
    #[serde(default)]
    pub missing_nodes: Vec<String>,
}

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revoked {
    /// One token, by its `jti`.
    Token {
        /// The token id.
        jti: String,
    },
    /// Every token of a user issued before a time (tokens without `iat` included).
    User {
        /// The user.
        user: String,
        /// Unix seconds: tokens with `iat` before this are refused.
        issued_before: u64,
    },
}

/// A revocation and when it lapses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What is revoked.
    #[serde(flatten)]
    pub what: Revoked,
    /// Unix seconds after which it is forgotten.
    pub until: u64,
}

/// Most bytes of a `jti`, a user id in a revocation.
pub const MAX_REVOCATION_KEY: usize = 256;

/// Why a revocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// Empty or too long key.
    #[error("{0}")]
    Invalid(String),
    /// The set holds its maximum.
    #[error("{0} revocations are held (HERALD_MAX_REVOCATIONS): wait for some to lapse")]
    Full(usize),
}

impl Revocation {
    /// Checks the key's size and that `until` is in the future.
    pub fn validate(&self, now: u64) -> Result<(), RevocationError> {
        let key = match &self.what {
            Revoked::Token { jti } => ("jti", jti),
            Revoked::User { user, .. } => ("user", user),
        };
        if key.1.is_empty() || key.1.len() > MAX_REVOCATION_KEY {
            return Err(RevocationError::Invalid(format!(
                "{} must be 1-{MAX_REVOCATION_KEY} bytes",
                key.0
            )));
        }
        if self.until <= now {
            return Err(RevocationError::Invalid(
                "until must be in the future".into(),
            ));
        }
        Ok(())
    }
}

/// The revocations this node knows, checked at every connect, subscribe and refresh.
/// Bounded: at most `max` live entries; lapsed ones are dropped when room is needed.
pub struct Revocations {
    max: usize,
    inner: Mutex<Sets>,
}

#[derive(Default)]
struct Sets {
    /// `jti` → until.
    tokens: HashMap<String, u64>,
    /// user → (issued_before, until).
    users: HashMap<String, (u64, u64)>,
}

impl Sets {
    fn len(&self) -> usize {
        self.tokens.len() + self.users.len()
    }

    fn prune(&mut self, now: u64) {
        self.tokens.retain(|_, until| *until > now);
        self.users.retain(|_, (_, until)| *until > now);
    }
}

/// A token as revocations see it.
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'a> {
    /// `sub`.
    pub user: &'a str,
    /// `jti`.
    pub jti: Option<&'a str>,
    /// `iat`.
    pub issued_at: Option<u64>,
}

impl Revocations {
    /// An empty set holding at most `max` entries.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            inner: Mutex::new(Sets::default()),
        }
    }

    /// Adds (or extends) a revocation. A repeat of a known one keeps the later `until` (and,
    /// for a user, the later `issued_before`).
    pub fn insert(&self, r: &Revocation, now: u64) -> Result<(), RevocationError> {
        let mut sets = self.inner.lock();
        let known = match &r.what {
            Revoked::Token { jti } => sets.tokens.contains_key(jti),
            Revoked::User { user, .. } => sets.users.contains_key(user),
        };
        if !known && sets.len() >= self.max {
            sets.prune(now);
            if sets.len() >= self.max {
                return Err(RevocationError::Full(self.max));
            }
        }
        match &r.what {
            Revoked::Token { jti } => {
                let until = sets.tokens.entry(jti.clone()).or_insert(0);
                *until = (*until).max(r.until);
            }
            Revoked::User {
                user,
                issued_before,
            } => {
                let e = sets.users.entry(user.clone()).or_insert((0, 0));
                *e = (e.0.max(*issued_before), e.1.max(r.until));
            }
        }
        Ok(())
    }

    /// Whether `token` is revoked at `now`.
    pub fn is_revoked(&self, token: TokenRef<'_>, now: u64) -> bool {
        let sets = self.inner.lock();
        if let Some(jti) = token.jti
            && sets.tokens.get(jti).is_some_and(|until| *until > now)
        {
            return true;
        }
        !token.user.is_empty()
            && sets.users.get(token.user).is_some_and(|(before, until)| {
                *until > now && token.issued_at.is_none_or(|iat| iat < *before)
            })
    }

    /// Whether `r` covers `token`.
    pub fn covers(r: &Revocation, token: TokenRef<'_>) -> bool {
        match &r.what {
            Revoked::Token { jti } => token.jti == Some(jti.as_str()),
            Revoked::User {
                user,
                issued_before,
            } => user == token.user && token.issued_at.is_none_or(|iat| iat < *issued_before),
        }
    }

    /// Entries held (lapsed ones included until pruned).
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops lapsed entries.
    pub fn prune(&self, now: u64) {
        self.inner.lock().prune(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok<'a>(user: &'a str, jti: Option<&'a str>, iat: Option<u64>) -> TokenRef<'a> {
        TokenRef {
            user,
            jti,
            issued_at: iat,
        }
    }

    #[test]
    fn tokens_and_users_are_revoked_until_they_lapse() {
        let r = Revocations::new(10);
        let jti = Revocation {
            what: Revoked::Token { jti: "t1".into() },
            until: 100,
        };
        r.insert(&jti, 0).unwrap();
        assert!(r.is_revoked(tok("a", Some("t1"), Some(5)), 50));
        assert!(!r.is_revoked(tok("a", Some("t1"), Some(5)), 100));
        assert!(!r.is_revoked(tok("a", Some("t2"), Some(5)), 50));
        let user = Revocation {
            what: Revoked::User {
                user: "bob".into(),
                issued_before: 40,
            },
            until: 200,
        };
        r.insert(&user, 0).unwrap();
        assert!(r.is_revoked(tok("bob", None, Some(39)), 50));
        assert!(r.is_revoked(tok("bob", None, None), 50));
        assert!(!r.is_revoked(tok("bob", None, Some(40)), 50));
        assert!(!r.is_revoked(tok("alice", None, Some(1)), 50));
        assert!(!r.is_revoked(tok("bob", None, Some(1)), 200));
        // A later cut-off for the same user replaces the earlier one.
        r.insert(
            &Revocation {
                what: Revoked::User {
                    user: "bob".into(),
                    issued_before: 60,
                },
                until: 150,
            },
            0,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert!(r.is_revoked(tok("bob", None, Some(59)), 180));
    }

    #[test]
    fn the_set_is_bounded_and_frees_lapsed_entries() {
        let r = Revocations::new(3);
        let t = |j: &str, until| Revocation {
            what: Revoked::Token { jti: j.into() },
            until,
        };
        r.insert(&t("a", 10), 0).unwrap();
        r.insert(&t("b", 100), 0).unwrap();
        r.insert(&t("c", 100), 0).unwrap();
        assert_eq!(r.insert(&t("d", 100), 5), Err(RevocationError::Full(3)));
        // A known one can still be extended.
        r.insert(&t("b", 200), 5).unwrap();
        // Once "a" lapsed, there is room.
        r.insert(&t("d", 100), 20).unwrap();
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn bad_revocations_are_refused() {
        let r = Revocation {
            what: Revoked::Token { jti: String::new() },
            until: 10,
        };
        assert!(r.validate(0).is_err());
        let r = Revocation {
            what: Revoked::User {
                user: "x".repeat(300),
                issued_before: 1,
            },
            until: 10,
        };
        assert!(r.validate(0).is_err());
        let r = Revocation {
            what: Revoked::Token { jti: "ok".into() },
            until: 10,
        };
        assert!(r.validate(10).is_err());
        assert!(r.validate(9).is_ok());
    }

    #[test]
    fn merged_presence_counts_users() {
        let e = |c: &str, u: &str| PresenceEntry {
            client: c.into(),
            user: u.into(),
            info: None,
            node: "n".into(),
            protocol: "websocket".into(),
            since_unix_ms: 0,
        };
        let a = PresenceAnswer {
            clients: vec![e("2", "bob"), e("1", "alice")],
            missing_nodes: vec![],
        };
        let b = PresenceAnswer {
            clients: vec![e("3", "bob"), e("4", ""), e("5", "")],
            missing_nodes: vec!["x".into()],
        };
        let m = PresenceAnswer::merge([a, b]);
        assert_eq!(m.connections(), 5);
        assert_eq!(m.users(), 4);
        assert_eq!(m.clients[0].client, "1");
        assert_eq!(m.missing_nodes, ["x"]);
    }
}
