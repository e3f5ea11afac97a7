//! The transport's settings: where the servers are, the credentials, TLS, and the durable mode's
//! stream; and the subjects and JetStream names they give a topic.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use interrole_core::{InstanceId, Topic};

/// How a client proves who it is to the NATS server.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// Nothing (a server without authorization).
    #[default]
    None,
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An NKey seed (`SU...`).
    NKey(String),
    /// A credentials file (a JWT and an NKey seed, as `nsc` writes them).
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .finish_non_exhaustive(),
            Self::Token(_) => f.write_str("Token(..)"),
            Self::NKey(_) => f.write_str("NKey(..)"),
            Self::CredsFile(p) => f.debug_tuple("CredsFile").field(p).finish(),
        }
    }
}

/// TLS settings, as async-nats offers them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NatsTls {
    /// Refuse a server that does not offer TLS.
    pub required: bool,
    /// Trust the certificates of this PEM file (a private CA), beside the system's.
    pub root_certificates: Option<PathBuf>,
    /// Present this client certificate and key (PEM files) for mutual TLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// TLS required, trusting the certificates of the PEM file `roots` (and the system's).
    pub fn trusting(roots: impl Into<PathBuf>) -> Self {
        Self {
            required: true,
            root_certificates: Some(roots.into()),
            client_certificate: None,
        }
    }

    /// These settings, presenting `cert` and `key` (PEM files) for mutual TLS.
    pub fn with_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self
    }
}

/// The durable mode's stream settings (see the crate docs).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Durable {
    /// Copies of the stream in a cluster (1, 3 or 5). Default 1.
    pub replicas: usize,
    /// Events older than this are dropped from the stream. Default 24 h.
    pub max_age: Duration,
    /// The most bytes the stream keeps (-1: no limit). Default -1.
    pub max_bytes: i64,
    /// Keep the stream in memory instead of files. Default false.
    pub memory: bool,
    /// How long the stream remembers message ids to drop duplicates. Default 2 min.
    pub duplicate_window: Duration,
}

impl Default for Durable {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: -1,
            memory: false,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl Durable {
    /// The default settings with `replicas` copies.
    pub fn replicated(replicas: usize) -> Self {
        Self {
            replicas: replicas.max(1),
            ..Self::default()
        }
    }
}

/// Where the NATS servers are and how to use them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsOptions {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); several for a cluster. A new
    /// connection tries them in a random order.
    pub servers: Vec<String>,
    /// The first token of every subject. Default `interrole`.
    pub prefix: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// How long connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How often the client pings the server; a server that does not answer two pings in a
    /// row is considered lost. Default 2 s.
    pub ping_interval: Duration,
    /// JetStream durable mode; `None` (the default) for core NATS.
    pub durable: Option<Durable>,
}

impl NatsOptions {
    /// Options for the servers of `urls`, a comma-separated list (`nats://a:4222,nats://b:4222`).
    pub fn new(urls: &str) -> Self {
        Self {
            servers: urls
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            prefix: "interrole".into(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(2),
            durable: None,
        }
    }

    /// These options in durable mode (JetStream).
    pub fn with_durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    /// The JetStream stream of `topic` in durable mode.
    pub fn stream_name(&self, topic: &Topic) -> String {
        format!(
            "{}_{}",
            sanitize(&self.prefix).to_ascii_uppercase(),
            sanitize(topic.as_str())
        )
    }

    /// These options with `prefix`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// These options with `auth`.
    pub fn with_auth(mut self, auth: NatsAuth) -> Self {
        self.auth = auth;
        self
    }

    /// These options with `tls`.
    pub fn with_tls(mut self, tls: NatsTls) -> Self {
        self.tls = tls;
        self
    }

    /// The multicast subject of `topic`.
    pub fn topic_subject(&self, topic: &Topic) -> String {
        format!("{}.t.{}", self.prefix, topic.as_str())
    }

    /// The subject of what is directed to `instance` on `topic`.
    pub fn instance_subject(&self, topic: &Topic, instance: &InstanceId) -> String {
        format!("{}.i.{}.{}", self.prefix, topic.as_str(), instance.as_str())
    }
}

/// A name JetStream accepts: `A-Z a-z 0-9 - _`, anything else as `_`.
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
