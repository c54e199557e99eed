//! Per-namespace rules: who may read a channel, and how much history it offers.

use std::{collections::HashMap, time::Duration};

use herald_core::ChannelName;

use crate::{AuthError, Principal, Verifier};

/// Rules of one namespace (channels named `<namespace>:...`), or of channels without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceRule {
    /// Clients without a token may subscribe.
    pub anonymous: bool,
    /// Most messages a client may resume over (at most the node's history size).
    pub history_size: Option<usize>,
    /// Oldest message a client may resume to (at most the node's history TTL).
    pub history_ttl: Option<Duration>,
    /// `Presence` and `PresenceStats` answer for its channels.
    pub presence: bool,
    /// Subscribers of its channels get join/leave events.
    pub join_leave: bool,
    /// Clients may publish to its channels (with a token's `publish` grant, or the publish
    /// hook's consent).
    pub publish: bool,
    /// The application's subscribe hook decides who may subscribe (instead of `anonymous`
    /// and the token's `channels`).
    pub subscribe_hook: bool,
    /// The application's publish hook decides client publishes (instead of the token's
    /// `publish` grant).
    pub publish_hook: bool,
}

impl Default for NamespaceRule {
    fn default() -> Self {
        Self {
            anonymous: true,
            history_size: None,
            history_ttl: None,
            presence: false,
            join_leave: false,
            publish: false,
            subscribe_hook: false,
            publish_hook: false,
        }
    }
}

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A namespace name is not a valid channel-name prefix.
    #[error(
        "namespace {0:?}: a namespace is 1-64 characters of A-Z a-z 0-9 _ - @ . = (no ':'); channels `<namespace>:...` belong to it"
    )]
    BadNamespace(String),
    /// Tokens are required somewhere but no key is configured.
    #[error(
        "{0} requires a token but no key is configured: set HERALD_AUTH_HMAC_SECRET or HERALD_AUTH_JWKS_FILE, or make it anonymous"
    )]
    TokenWithoutKeys(String),
    /// A limit is zero.
    #[error("namespace {0:?}: history_size must be at least 1 and history_ttl at least 1s")]
    BadLimit(String),
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The channel's namespace needs a token and the client has none.
    #[error(
        "channel {0} requires a token: send one (Authorization: Bearer, ?token=, or the auth command)"
    )]
    TokenRequired(String),
    /// The client's token does not grant this channel.
    #[error("your token does not grant channel {0}")]
    Forbidden(String),
    /// The channel's namespace does not take publishes from clients.
    #[error("clients may not publish to channel {0}: its namespace does not allow it")]
    PublishDisabled(String),
    /// The client's token does not grant publishing to this channel.
    #[error("your token does not grant publishing to channel {0} (its `publish` claim)")]
    PublishForbidden(String),
}

impl Denied {
    /// Machine-readable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::TokenRequired(_) => "token_required",
            Denied::Forbidden(_) => "channel_forbidden",
            Denied::PublishDisabled(_) => "publish_disabled",
            Denied::PublishForbidden(_) => "publish_forbidden",
        }
    }
}

/// The verifier plus per-namespace rules.
#[derive(Debug, Default)]
pub struct Policy {
    verifier: Option<Verifier>,
    default: NamespaceRule,
    namespaces: HashMap<String, NamespaceRule>,
}

impl Policy {
    /// Everyone may read everything; tokens are not checked. The default of a new node.
    pub fn open() -> Self {
        Self::default()
    }

    /// Builds a policy. `default` applies to channels whose namespace has no rule.
    pub fn new(
        verifier: Option<Verifier>,
        default: NamespaceRule,
        namespaces: HashMap<String, NamespaceRule>,
    ) -> Result<Self, PolicyError> {
        for (name, rule) in &namespaces {
            if name.is_empty()
                || name.len() > 64
                || name.contains(':')
                || ChannelName::validate(name).is_err()
            {
                return Err(PolicyError::BadNamespace(name.chars().take(64).collect()));
            }
            if verifier.is_none() && !rule.anonymous {
                return Err(PolicyError::TokenWithoutKeys(format!("namespace {name:?}")));
            }
            check_limits(name, rule)?;
        }
        if verifier.is_none() && !default.anonymous {
            return Err(PolicyError::TokenWithoutKeys(
                "the default namespace".into(),
            ));
        }
        check_limits("", &default)?;
        Ok(Self {
            verifier,
            default,
            namespaces,
        })
    }

    /// Whether tokens are verified on this node.
    pub fn verifies_tokens(&self) -> bool {
        self.verifier.is_some()
    }

    /// Whether some channel needs a token.
    pub fn requires_tokens(&self) -> bool {
        !self.default.anonymous || self.namespaces.values().any(|r| !r.anonymous)
    }

    /// The clock skew allowed on token times.
    pub fn leeway(&self) -> Duration {
        self.verifier
            .as_ref()
            .map(Verifier::leeway)
            .unwrap_or_default()
    }

    /// Checks a token. Without configured keys tokens are ignored (`Ok(None)`), so clients
    /// may send one to any node.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Option<Principal>, AuthError> {
        match (token, &self.verifier) {
            (Some(t), Some(v)) => v.verify(t).map(Some),
            _ => Ok(None),
        }
    }

    /// The rule of `channel`'s namespace.
    pub fn rule(&self, channel: &ChannelName) -> &NamespaceRule {
        channel
            .as_str()
            .split_once(':')
            .and_then(|(ns, _)| self.namespaces.get(ns))
            .unwrap_or(&self.default)
    }

    /// Whether `who` may subscribe to `channel`. Where the namespace has a subscribe hook,
    /// the hook decides: this answers `Ok` and the caller must ask it.
    pub fn authorize(&self, who: Option<&Principal>, channel: &ChannelName) -> Result<(), Denied> {
        let rule = self.rule(channel);
        if rule.anonymous || rule.subscribe_hook {
            return Ok(());
        }
        match who {
            None => Err(Denied::TokenRequired(channel.to_string())),
            Some(p) if p.channels.iter().any(|pat| pat.matches(channel)) => Ok(()),
            Some(_) => Err(Denied::Forbidden(channel.to_string())),
        }
    }
}

impl Policy {
    /// Whether `who` may publish to `channel` from a client connection: the namespace must
    /// allow client publishes, and then the token's `publish` grant decides (on a node that
    /// verifies tokens) or the publish hook does (where the namespace has one: this answers
    /// `Ok` and the caller must ask it). A node without keys takes any client publish its
    /// namespaces allow.
    pub fn authorize_publish(
        &self,
        who: Option<&Principal>,
        channel: &ChannelName,
    ) -> Result<(), Denied> {
        let rule = self.rule(channel);
        if !rule.publish {
            return Err(Denied::PublishDisabled(channel.to_string()));
        }
        if rule.publish_hook || self.verifier.is_none() {
            return Ok(());
        }
        match who {
            None => Err(Denied::TokenRequired(channel.to_string())),
            Some(p) if p.publish.iter().any(|pat| pat.matches(channel)) => Ok(()),
            Some(_) => Err(Denied::PublishForbidden(channel.to_string())),
        }
    }

    /// Whether some namespace (or the default) uses a subscribe or publish hook.
    pub fn uses_hooks(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.namespaces.values())
            .any(|r| r.subscribe_hook || r.publish_hook)
    }
}

fn check_limits(name: &str, rule: &NamespaceRule) -> Result<(), PolicyError> {
    if rule.history_size == Some(0) || rule.history_ttl.is_some_and(|t| t < Duration::from_secs(1))
    {
        return Err(PolicyError::BadLimit(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthConfig, ChannelPattern};

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(&AuthConfig {
            hmac_secrets: vec![b"0123456789abcdef0123456789abcdef".to_vec()],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn namespaces_decide_anonymous_access() {
        let private = NamespaceRule {
            anonymous: false,
            ..Default::default()
        };
        let ns = HashMap::from([
            ("public".to_owned(), NamespaceRule::default()),
            ("chat".to_owned(), private),
        ]);
        let p = Policy::new(Some(verifier()), private, ns).unwrap();
        let who = Principal {
            user: "u1".into(),
            channels: vec![ChannelPattern::parse("chat:room1", "u1").unwrap()],
            publish: Vec::new(),
            expires_at: u64::MAX,
            token_id: None,
            issued_at: None,
            info: None,
        };
        assert_eq!(p.authorize(None, &ch("public:news")), Ok(()));
        assert_eq!(
            p.authorize(None, &ch("chat:room1")),
            Err(Denied::TokenRequired("chat:room1".into()))
        );
        assert_eq!(p.authorize(Some(&who), &ch("chat:room1")), Ok(()));
        assert_eq!(
            p.authorize(Some(&who), &ch("chat:room2")),
            Err(Denied::Forbidden("chat:room2".into()))
        );
        // No namespace: the default rule (private here).
        assert!(p.authorize(None, &ch("plain")).is_err());
        // "public" only as a namespace, not as a prefix of another one.
        assert!(p.authorize(None, &ch("publicity:x")).is_err());
    }

    #[test]
    fn refuses_unusable_policies() {
        let private = NamespaceRule {
            anonymous: false,
            ..Default::default()
        };
        assert!(matches!(
            Policy::new(None, private, HashMap::new()),
            Err(PolicyError::TokenWithoutKeys(_))
        ));
        for bad in ["", "a:b", "a*", "a b"] {
            let ns = HashMap::from([(bad.to_owned(), NamespaceRule::default())]);
            assert!(
                matches!(
                    Policy::new(None, NamespaceRule::default(), ns),
                    Err(PolicyError::BadNamespace(_))
                ),
                "{bad}"
            );
        }
        let zero = NamespaceRule {
            history_size: Some(0),
            ..Default::default()
        };
        let ns = HashMap::from([("x".to_owned(), zero)]);
        assert!(Policy::new(None, NamespaceRule::default(), ns).is_err());
    }

    #[test]
    fn client_publishes_need_the_namespace_and_the_grant() {
        let chat = NamespaceRule {
            publish: true,
            ..Default::default()
        };
        let hooked = NamespaceRule {
            publish: true,
            publish_hook: true,
            ..Default::default()
        };
        let ns = HashMap::from([("chat".to_owned(), chat), ("app".to_owned(), hooked)]);
        let p = Policy::new(Some(verifier()), NamespaceRule::default(), ns.clone()).unwrap();
        let who = Principal {
            user: "u1".into(),
            channels: Vec::new(),
            publish: vec![ChannelPattern::parse("chat:{sub}-*", "u1").unwrap()],
            expires_at: u64::MAX,
            token_id: None,
            issued_at: None,
            info: None,
        };
        assert_eq!(p.authorize_publish(Some(&who), &ch("chat:u1-x")), Ok(()));
        assert_eq!(
            p.authorize_publish(Some(&who), &ch("chat:u2-x")),
            Err(Denied::PublishForbidden("chat:u2-x".into()))
        );
        assert_eq!(
            p.authorize_publish(None, &ch("chat:u1-x")),
            Err(Denied::TokenRequired("chat:u1-x".into()))
        );
        assert_eq!(
            p.authorize_publish(Some(&who), &ch("news:x")),
            Err(Denied::PublishDisabled("news:x".into()))
        );
        // The hook decides in its namespace.
        assert_eq!(p.authorize_publish(None, &ch("app:x")), Ok(()));
        assert!(p.uses_hooks());
        // Without keys, the namespace alone decides.
        let open = Policy::new(None, NamespaceRule::default(), ns).unwrap();
        assert_eq!(open.authorize_publish(None, &ch("chat:any")), Ok(()));
        assert!(open.authorize_publish(None, &ch("news:x")).is_err());
    }

    #[test]
    fn tokens_are_ignored_without_keys() {
        assert_eq!(Policy::open().authenticate(Some("anything")), Ok(None));
    }
}
