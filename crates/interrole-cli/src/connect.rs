//! Building buses on the server the global options name, and waiting, bounded, for them to open.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use interrole::nats::NatsOptions;
use interrole::relay::Credentials;
use interrole::{Bus, InstanceId, Topic, TransportErrorKind};

use crate::args::ConnectionArgs;
use crate::error::CliError;

/// The server every bus of this process connects to.
#[derive(Debug, Clone)]
enum Server {
    Relay {
        url: String,
        credentials: Credentials,
    },
    Nats {
        url: String,
    },
}

/// What the global options say: the server, the topic, the instance, the connection's bound.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    server: Server,
    /// `--topic`, checked.
    pub(crate) topic: Option<Topic>,
    /// `--instance`, or one made up for this process.
    pub(crate) instance: InstanceId,
    /// `--connect-timeout`: the longest wait for a connection (and for `publish`'s
    /// acknowledgements).
    pub(crate) connect_timeout: Duration,
}

impl Endpoint {
    /// Checks the global options.
    ///
    /// # Errors
    /// No server or a bad key, instance id or topic.
    pub(crate) fn from_args(args: &ConnectionArgs) -> Result<Self, CliError> {
        let server = match (&args.relay, &args.nats) {
            (Some(url), _) => Server::Relay {
                url: url.clone(),
                credentials: match &args.key {
                    Some(key) => {
                        Credentials::parse_key(key).map_err(|e| CliError::Key(e.to_string()))?
                    }
                    None => Credentials::None,
                },
            },
            (None, Some(_)) if args.key.is_some() => return Err(CliError::KeyWithoutRelay),
            (None, Some(url)) => Server::Nats { url: url.clone() },
            (None, None) => return Err(CliError::NoServer),
        };
        let topic = match &args.topic {
            Some(t) => Some(Topic::new(t).map_err(|source| CliError::Name {
                what: "--topic",
                source,
            })?),
            None => None,
        };
        let instance = match &args.instance {
            Some(id) => id.clone(),
            None => generated_instance(),
        };
        let instance = InstanceId::new(&instance).map_err(|source| CliError::Name {
            what: "--instance",
            source,
        })?;
        Ok(Self {
            server,
            topic,
            instance,
            connect_timeout: args.connect_timeout,
        })
    }

    /// The server's URL, for messages.
    pub(crate) fn server_url(&self) -> &str {
        match &self.server {
            Server::Relay { url, .. } | Server::Nats { url } => url,
        }
    }

    /// Builds a bus for `instance` on `topic` (`None`: the bus's default). It connects in the
    /// background: see [`Endpoint::wait_opened`].
    ///
    /// # Errors
    /// A bad relay URL.
    pub(crate) fn build(
        &self,
        instance: &InstanceId,
        topic: Option<&Topic>,
    ) -> Result<Bus, CliError> {
        let builder = Bus::builder().instance(instance.as_str());
        let builder = match topic {
            Some(t) => builder.topic(t.as_str()),
            None => builder,
        };
        let builder = match &self.server {
            Server::Relay { url, credentials } => builder.relay(url, credentials.clone()),
            Server::Nats { url } => builder.nats(NatsOptions::new(url)),
        };
        builder.build().map_err(|source| CliError::Build {
            server: self.server_url().to_owned(),
            source,
        })
    }

    /// Waits until `bus` is connected, at most `--connect-timeout`.
    ///
    /// # Errors
    /// The connection was refused for good, or did not open in time: then the error says the
    /// last reason an attempt failed (a refused connection, refused credentials), so that the
    /// user sees why rather than only that it took too long.
    pub(crate) async fn wait_opened(&self, bus: &Bus) -> Result<(), CliError> {
        let Some(host) = bus.host() else {
            return Ok(());
        };
        match host.wait_opened(self.connect_timeout).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == TransportErrorKind::Timeout => {
                let last = host
                    .status()
                    .error
                    .map_or_else(|| e.to_string(), |last| format!("last error: {last}"));
                Err(CliError::ConnectTimeout {
                    server: self.server_url().to_owned(),
                    timeout: self.connect_timeout,
                    last,
                })
            }
            Err(source) => Err(CliError::Connect {
                server: self.server_url().to_owned(),
                source,
            }),
        }
    }
}

impl Endpoint {
    /// Builds a bus and waits until it is connected (see [`Endpoint::wait_opened`]); closes it
    /// when it does not connect.
    ///
    /// # Errors
    /// As [`Endpoint::build`] and [`Endpoint::wait_opened`].
    pub(crate) async fn open(
        &self,
        instance: &InstanceId,
        topic: Option<&Topic>,
    ) -> Result<Bus, CliError> {
        let bus = self.build(instance, topic)?;
        if let Err(e) = self.wait_opened(&bus).await {
            bus.close().await;
            return Err(e);
        }
        Ok(bus)
    }
}

/// `cli-` and 8 hex digits, random enough that two commands started together differ.
pub(crate) fn generated_instance() -> String {
    format!("cli-{}", random_hex())
}

/// 8 random hex digits (from the standard library's randomly keyed hasher, mixed with the
/// process id and the time).
pub(crate) fn random_hex() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hash = RandomState::new().hash_one((std::process::id(), nanos));
    format!("{:08x}", hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_instances_are_valid_and_differ() {
        let a = generated_instance();
        let b = generated_instance();
        assert!(a.starts_with("cli-") && a.len() == 12, "{a}");
        assert!(InstanceId::new(&a).is_ok());
        assert_ne!(a, b);
    }
}
