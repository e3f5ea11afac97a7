//! The server's configuration: a TOML file, every field optional with a documented default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use interrole_relay::frame::FrameLimits;
use interrole_relay::sas::{KeySet, Right, Rights, SasKey};
use interrole_relay::url::UrlLimits;
use serde::Deserialize;

/// The commented default configuration, as printed by `interrole-relay generate-config`. It
/// parses to [`Config::default`].
pub const DEFAULT_CONFIG_TOML: &str = r#"# interrole-relay configuration. Every field is optional; the values below are the defaults.

# The address to listen on.
listen = "0.0.0.0:9400"

# How long a graceful shutdown waits for connections to close, in seconds.
shutdown_timeout_secs = 5

# Shared access signature keys. Without any key every handshake needing a token is refused (401).
# rights: a comma-separated list of listen, send, manage (manage implies both); default manage.
# scope: limit the key to a path and the paths below it.
# [[keys]]
# name = "RootManageSharedAccessKey"
# key = "change-me"
# rights = "manage"
# scope = "orders"

# TLS: with a certificate and its private key (both PEM files), the port accepts TLS only
# (wss://, https://) and rendezvous addresses say wss://. Give both or neither.
# [tls]
# cert = "/etc/interrole/relay.crt"
# key = "/etc/interrole/relay.key"

[limits]
# The longest HTTP request head (request line and headers), in bytes.
max_header_bytes = 32768
# The longest request target, in bytes.
max_target_bytes = 16384
# The longest decoded path, in bytes.
max_path_bytes = 1024
# How long a client has to send its request head, in seconds.
handshake_timeout_secs = 10
# A connection that sends nothing (not even a pong) for this long is closed; it is pinged after
# half of it. In seconds.
idle_timeout_secs = 120
# How long a subscriber has to send its RESUME frame, in seconds.
resume_timeout_secs = 10
# The most concurrent connections (HTTP and WebSocket); over it, handshakes are answered 503.
max_connections = 10000
# The most multicast paths held at once; a connection to one more is closed with 1013.
max_paths = 10000
# The most subscriber connections per path; one more is closed with 1013.
max_subscribers_per_path = 10000
# The most Hybrid Connections listeners per path; one more is refused 403
# (MaximumListenersPerEndpoint).
max_hc_listeners_per_path = 25
# How long a listener has to accept or reject a sender, in seconds (the sender gets 504 after it).
accept_timeout_secs = 20
# How long an HTTP sender waits for the listener's response, in seconds (504 after it).
request_timeout_secs = 60
# The largest envelope a publisher may send, in bytes; a larger one is refused with REJECT 1.
max_envelope_bytes = 1048576
# The longest multicast WebSocket message, version byte included, in bytes (close 1009 over it).
max_message_bytes = 4195328
# The most frames in one multicast message (close 1009 over it).
max_frames_per_message = 8192
# The most events one publisher connection may publish per second (a token bucket holding one
# second's worth); over it, events are refused with REJECT 4 BUSY, and clients resend them.
# 0: no limit.
max_publish_rate = 0
# The read buffer of each WebSocket connection, in bytes: small keeps idle subscribers cheap.
ws_read_buffer_bytes = 4096

[subscribers]
# How many events may wait in one subscriber's send queue.
queue_len = 16384
# What happens when that queue is full: "drop-oldest" (drop queued events and send MISSED) or
# "disconnect" (close the subscriber with 4000).
slow_consumer = "drop-oldest"

[replay]
# The replay window per path: at most this many events,
max_events = 65536
# this many envelope bytes,
max_bytes = 16777216
# and events at most this old, in seconds.
max_age_secs = 60
"#;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address to listen on (default `0.0.0.0:9400`).
    pub listen: SocketAddr,
    /// How long a graceful shutdown waits for connections to close, in seconds (default 5).
    pub shutdown_timeout_secs: u64,
    /// The shared access signature keys (default none).
    pub keys: Vec<KeyConfig>,
    /// TLS on the port (default none: plain TCP).
    pub tls: Option<TlsConfig>,
    /// Connection and message limits.
    pub limits: Limits,
    /// Subscriber queues.
    pub subscribers: Subscribers,
    /// The replay window.
    pub replay: Replay,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9400)),
            shutdown_timeout_secs: 5,
            keys: Vec::new(),
            tls: None,
            limits: Limits::default(),
            subscribers: Subscribers::default(),
            replay: Replay::default(),
        }
    }
}

impl Config {
    /// Parses a TOML configuration.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] when the text is not TOML, has unknown fields or values of the
    /// wrong type; [`ConfigError::UnknownRight`] or [`ConfigError::NoRights`] when a key's rights
    /// do not parse.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::parse(text, &e))?;
        config.key_set()?;
        Ok(config)
    }

    /// The keys as a [`KeySet`].
    ///
    /// # Errors
    /// [`ConfigError::UnknownRight`] or [`ConfigError::NoRights`] when a key's rights do not
    /// parse.
    pub fn key_set(&self) -> Result<KeySet, ConfigError> {
        let mut set = KeySet::new();
        for k in &self.keys {
            let rights = match &k.rights {
                Some(r) => parse_rights(r)?,
                None => Rights::MANAGE,
            };
            let mut key = SasKey::new(k.name.clone(), k.key.clone(), rights);
            if let Some(scope) = &k.scope {
                key = key.with_scope(scope);
            }
            set.insert(key);
        }
        Ok(set)
    }

    /// The shutdown wait as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not TOML, or not a configuration: a syntax error, an unknown field, a value of
    /// the wrong type, a missing field.
    #[error("{}{message}", position(*.line, *.column))]
    Parse {
        /// The line the error is on (from 1), when the parser says where.
        line: Option<usize>,
        /// The column the error is at (from 1, in characters), when the parser says where.
        column: Option<usize>,
        /// What is wrong, in one line.
        message: String,
    },
    /// A key flag without `=`.
    #[error("expected NAME=KEY[:rights][@/scope]")]
    KeySyntax,
    /// A key without a name or without a value.
    #[error("a key needs a name and a value")]
    EmptyKey,
    /// A right other than listen, send and manage.
    #[error("unknown right {0:?} (listen, send, manage)")]
    UnknownRight(String),
    /// A key with an empty list of rights.
    #[error("a key needs at least one right")]
    NoRights,
}

impl ConfigError {
    /// A TOML error, with its position in `text` as a line and a column.
    fn parse(text: &str, e: &toml::de::Error) -> Self {
        let at = e.span().and_then(|span| text.get(..span.start));
        Self::Parse {
            line: at.map(|before| before.matches('\n').count() + 1),
            column: at.map(|before| before.rsplit('\n').next().unwrap_or("").chars().count() + 1),
            message: e.message().trim().to_owned(),
        }
    }
}

/// `line L, column C: ` when the position is known.
fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!("line {line}, column {column}: "),
        _ => String::new(),
    }
}

/// Parses rights written `listen,send,manage` (any subset, any case).
///
/// # Errors
/// [`ConfigError::UnknownRight`] on an unknown right, [`ConfigError::NoRights`] on an empty list.
pub fn parse_rights(text: &str) -> Result<Rights, ConfigError> {
    let mut rights = Rights::NONE;
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let right: Right = part
            .parse()
            .map_err(|_| ConfigError::UnknownRight(part.to_owned()))?;
        rights = rights | right;
    }
    if rights == Rights::NONE {
        return Err(ConfigError::NoRights);
    }
    Ok(rights)
}

/// One shared access signature key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's name (`skn` in tokens).
    pub name: String,
    /// The key itself (its UTF-8 bytes are the HMAC key).
    pub key: String,
    /// `listen,send,manage`, any subset; default `manage`.
    #[serde(default)]
    pub rights: Option<String>,
    /// Limit the key to this path and the paths below it.
    #[serde(default)]
    pub scope: Option<String>,
}

impl KeyConfig {
    /// Parses the command-line form `NAME=KEY[:rights][@/scope]`.
    ///
    /// # Errors
    /// [`ConfigError::KeySyntax`] when there is no `=`, [`ConfigError::EmptyKey`] when the name or
    /// the key is empty. Text after the last `:` that does not parse as rights is part of the key.
    pub fn parse_flag(text: &str) -> Result<Self, ConfigError> {
        let (name, rest) = text.split_once('=').ok_or(ConfigError::KeySyntax)?;
        let (rest, scope) = match rest.rsplit_once("@/") {
            Some((r, s)) => (r, Some(s.trim_end_matches('/').to_owned())),
            None => (rest, None),
        };
        let (key, rights) = match rest.rsplit_once(':') {
            Some((k, r)) if parse_rights(r).is_ok() => (k, Some(r.to_owned())),
            _ => (rest, None),
        };
        if name.is_empty() || key.is_empty() {
            return Err(ConfigError::EmptyKey);
        }
        Ok(Self {
            name: name.to_owned(),
            key: key.to_owned(),
            rights,
            scope,
        })
    }
}

/// TLS on the listening port: a certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), the server's certificate first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Connection and message limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The longest request head, in bytes (default 32 KiB).
    pub max_header_bytes: usize,
    /// The longest request target, in bytes (default 16 KiB).
    pub max_target_bytes: usize,
    /// The longest decoded path, in bytes (default 1024).
    pub max_path_bytes: usize,
    /// The time to send the request head, in seconds (default 10).
    pub handshake_timeout_secs: u64,
    /// Idle connections are pinged after half of this and closed after it, in seconds
    /// (default 120).
    pub idle_timeout_secs: u64,
    /// The time a subscriber has to send RESUME, in seconds (default 10).
    pub resume_timeout_secs: u64,
    /// The most concurrent connections (default 10 000).
    pub max_connections: usize,
    /// The most multicast paths (default 10 000).
    pub max_paths: usize,
    /// The most subscribers per path (default 10 000).
    pub max_subscribers_per_path: usize,
    /// The most Hybrid Connections listeners per path (default 25).
    pub max_hc_listeners_per_path: usize,
    /// The time a listener has to accept or reject a sender, in seconds (default 20).
    pub accept_timeout_secs: u64,
    /// The time an HTTP sender waits for the listener's response, in seconds (default 60).
    pub request_timeout_secs: u64,
    /// The largest envelope, in bytes (default 1 MiB).
    pub max_envelope_bytes: usize,
    /// The longest multicast message, in bytes (default 4 MiB + 1 KiB).
    pub max_message_bytes: usize,
    /// The most frames per multicast message (default 8192).
    pub max_frames_per_message: usize,
    /// The most events one publisher connection may publish per second, as a token bucket
    /// holding one second's worth; over it, events are refused with REJECT 4 BUSY (default 0:
    /// no limit).
    pub max_publish_rate: u32,
    /// The read buffer of each WebSocket connection, in bytes (default 4096). Allocated per
    /// connection: it dominates the memory of many idle subscribers.
    pub ws_read_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_target_bytes: 16 * 1024,
            max_path_bytes: 1024,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 120,
            resume_timeout_secs: 10,
            max_connections: 10_000,
            max_paths: 10_000,
            max_subscribers_per_path: 10_000,
            max_hc_listeners_per_path: 25,
            accept_timeout_secs: 20,
            request_timeout_secs: 60,
            max_envelope_bytes: 1024 * 1024,
            max_message_bytes: 4 * 1024 * 1024 + 1024,
            max_frames_per_message: 8192,
            max_publish_rate: 0,
            ws_read_buffer_bytes: 4096,
        }
    }
}

impl Limits {
    /// The frame decoder's limits.
    pub fn frame_limits(&self) -> FrameLimits {
        let base = FrameLimits::for_envelope(self.max_envelope_bytes);
        let at_least = base
            .max_frame
            .saturating_add(2 + interrole_relay::frame::MAX_VARINT_LEN);
        base.with_max_message(self.max_message_bytes.max(at_least))
            .with_max_frames(self.max_frames_per_message)
    }

    /// The request target limits.
    pub fn url_limits(&self) -> UrlLimits {
        UrlLimits::default()
            .with_max_target(self.max_target_bytes)
            .with_max_path(self.max_path_bytes)
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    /// The time a listener has to accept or reject a sender.
    pub fn accept_timeout(&self) -> Duration {
        Duration::from_secs(self.accept_timeout_secs)
    }

    /// The time an HTTP sender waits for its response.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The RESUME timeout.
    pub fn resume_timeout(&self) -> Duration {
        Duration::from_secs(self.resume_timeout_secs)
    }
}

/// What happens to a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Drop the oldest queued events and tell the subscriber with MISSED frames.
    #[default]
    DropOldest,
    /// Close the subscriber with 4000.
    Disconnect,
}

/// Subscriber queues.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Subscribers {
    /// Events waiting per subscriber (default 16,384).
    pub queue_len: usize,
    /// The slow-consumer policy (default drop-oldest).
    pub slow_consumer: SlowConsumerPolicy,
}

impl Default for Subscribers {
    fn default() -> Self {
        Self {
            queue_len: 16_384,
            slow_consumer: SlowConsumerPolicy::DropOldest,
        }
    }
}

/// The replay window per path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replay {
    /// The most events kept (default 65,536; 0 disables replay).
    pub max_events: usize,
    /// The most envelope bytes kept (default 16 MiB).
    pub max_bytes: usize,
    /// The oldest event kept, in seconds (default 60).
    pub max_age_secs: u64,
}

impl Default for Replay {
    fn default() -> Self {
        Self {
            max_events: 65_536,
            max_bytes: 16 * 1024 * 1024,
            max_age_secs: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_parses_to_the_defaults() {
        assert_eq!(
            Config::from_toml(DEFAULT_CONFIG_TOML).unwrap(),
            Config::default()
        );
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn tls_needs_both_files() {
        let c = Config::from_toml("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(
            (tls.cert, tls.key),
            (PathBuf::from("c.pem"), PathBuf::from("k.pem"))
        );
        assert!(Config::from_toml("[tls]\ncert = \"c.pem\"\n").is_err());
        assert!(Config::from_toml("[tls]\nkey = \"k.pem\"\n").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Config::from_toml("listn = \"1.2.3.4:5\"").is_err());
    }

    #[test]
    fn parse_errors_say_where_on_one_line() {
        let e =
            Config::from_toml("listen = \"0.0.0.0:1\"\n[limits]\nmax_paths = \"x\"\n").unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Parse {
                    line: Some(3),
                    column: Some(13),
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("line 3, column 13: invalid type"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(KeyConfig::parse_flag("nokey"), Err(ConfigError::KeySyntax));
        assert_eq!(KeyConfig::parse_flag("=k"), Err(ConfigError::EmptyKey));
        assert_eq!(parse_rights(" , "), Err(ConfigError::NoRights));
        assert_eq!(
            parse_rights("fly"),
            Err(ConfigError::UnknownRight("fly".into()))
        );
    }

    #[test]
    fn key_flags_parse() {
        let k = KeyConfig::parse_flag("root=abc").unwrap();
        assert_eq!(
            (k.name.as_str(), k.key.as_str(), k.rights, k.scope),
            ("root", "abc", None, None)
        );
        let k = KeyConfig::parse_flag("l=a:b:listen,send@/orders/eu").unwrap();
        assert_eq!(k.key, "a:b");
        assert_eq!(k.rights.as_deref(), Some("listen,send"));
        assert_eq!(k.scope.as_deref(), Some("orders/eu"));
        assert!(KeyConfig::parse_flag("nokey").is_err());
        assert_eq!(parse_rights("Listen").unwrap(), Rights::LISTEN);
        assert!(parse_rights("fly").is_err());
    }

    #[test]
    fn keys_from_toml() {
        let c = Config::from_toml(
            "[[keys]]\nname = \"a\"\nkey = \"k\"\nrights = \"listen\"\nscope = \"x\"\n",
        )
        .unwrap();
        let set = c.key_set().unwrap();
        assert_eq!(set.get("a").unwrap().rights(), Rights::LISTEN);
        assert!(
            Config::from_toml("[[keys]]\nname = \"a\"\nkey = \"k\"\nrights = \"x\"\n").is_err()
        );
    }
}
