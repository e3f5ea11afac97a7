//! The command line's surface: global connection options and one subcommand, parsed by clap.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use interrole::{InstanceId, TypeTag};
use interrole_relay::sas::parse_duration;

/// The interrole command line: tail, publish, request and bench on an interrole relay or NATS.
#[derive(Debug, Parser)]
#[command(name = "interrole", version)]
pub(crate) struct Cli {
    #[command(flatten, next_help_heading = "Connection")]
    pub(crate) connection: ConnectionArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the buses connect, and as what.
#[derive(Debug, Args)]
pub(crate) struct ConnectionArgs {
    /// The interrole relay, e.g. `ws://127.0.0.1:9400` (`wss://` for TLS).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "INTERROLE_RELAY",
        conflicts_with = "nats"
    )]
    pub(crate) relay: Option<String>,
    /// The relay's shared access key, `NAME=KEY` (without it: no token).
    #[arg(
        long,
        global = true,
        value_name = "NAME=KEY",
        env = "INTERROLE_KEY",
        hide_env_values = true
    )]
    pub(crate) key: Option<String>,
    /// A NATS server, e.g. `nats://127.0.0.1:4222` (comma-separated for a cluster).
    #[arg(long, global = true, value_name = "URL", env = "INTERROLE_NATS")]
    pub(crate) nats: Option<String>,
    /// The topic (default: the bus's default topic, `interrole`; for `bench`, a topic of its own).
    #[arg(long, global = true, value_name = "TOPIC")]
    pub(crate) topic: Option<String>,
    /// The instance id this command speaks as (default: `cli-` and 8 random hex digits).
    #[arg(long, global = true, value_name = "ID")]
    pub(crate) instance: Option<String>,
    /// How long to wait for the connection before giving up: `500ms`, `10s`, `1m`.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Prints every event on the topic as it arrives.
    Tail {
        /// One JSON object per event and line.
        #[arg(long)]
        json: bool,
        /// Exits after this many events.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Publishes an event with the JSON codec to every instance on the topic.
    Publish {
        /// The event's type tag, e.g. `orders.created`.
        #[arg(long, value_parser = parse_tag)]
        tag: TypeTag,
        /// The event, as JSON.
        #[arg(long, value_name = "JSON", value_parser = parse_json)]
        json: serde_json::Value,
        /// How many times to publish it.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
    },
    /// Sends a request with the JSON codec to one instance and prints its reply.
    Request {
        /// The instance that serves the request.
        #[arg(long, value_name = "INSTANCE", value_parser = parse_instance)]
        to: InstanceId,
        /// The request's type tag.
        #[arg(long, value_parser = parse_tag)]
        tag: TypeTag,
        /// The request, as JSON.
        #[arg(long, value_name = "JSON", value_parser = parse_json)]
        json: serde_json::Value,
        /// How long to wait for the reply: `500ms`, `2s`, `1m`.
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Measures a publisher and S subscriber buses in this process, checking every delivery.
    Bench(BenchArgs),
    /// Prints a shared access signature token (as `interrole-relay token`).
    Token {
        /// The key's name.
        #[arg(long)]
        key_name: String,
        /// The key.
        #[arg(long)]
        key: String,
        /// The resource, e.g. `https://relay.example/orders`.
        #[arg(long)]
        resource: String,
        /// How long the token is valid: `90s`, `30m`, `1h`, `7d`, or seconds.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// `interrole bench`'s options.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Events to publish.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) events: u64,
    /// Subscriber buses, each its own connection.
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) subscribers: u64,
    /// Payload bytes of each event (at least 16: its sequence number and send time).
    #[arg(long, value_name = "BYTES", default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub(crate) size: u64,
}

/// A type tag, checked as the bus checks it.
fn parse_tag(text: &str) -> Result<TypeTag, String> {
    TypeTag::new(text).map_err(|e| e.to_string())
}

/// An instance id, checked as the bus checks it.
fn parse_instance(text: &str) -> Result<InstanceId, String> {
    InstanceId::new(text).map_err(|e| e.to_string())
}

/// A JSON value.
fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn relay_and_nats_exclude_each_other() {
        let both = Cli::try_parse_from([
            "interrole",
            "--relay",
            "ws://h",
            "--nats",
            "nats://h",
            "tail",
        ]);
        assert_eq!(
            both.map(|_| ()).unwrap_err().kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
    }
}
