//! `interrole publish` and `interrole request`: JSON given on the command line, sent as a raw
//! event with the JSON codec, so that any observer of the tag decodes it as its own type.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use interrole::{Codec, Headers, InstanceId, PublishError, RawEvent, RequestError, TypeTag};

use crate::connect::Endpoint;
use crate::error::CliError;
use crate::format::Payload;

/// The contract version of what the command line sends.
const VERSION: u32 = 1;
/// How long a publish waits before trying again when the outbox is full.
const BACK_OFF: Duration = Duration::from_millis(1);

/// `value` as a raw event of `tag`, with the JSON codec.
fn raw(tag: &TypeTag, value: &serde_json::Value) -> RawEvent {
    RawEvent {
        tag: tag.clone(),
        version: VERSION,
        codec: Codec::Json,
        payload: Bytes::from(value.to_string()),
    }
}

/// Publishes `value` as an event of `tag`, `count` times, then waits (at most
/// `--connect-timeout`) until the server has acknowledged every one.
///
/// # Errors
/// The connection did not open, a publish failed, or what was published was not acknowledged
/// in time.
pub(crate) async fn publish(
    endpoint: &Endpoint,
    tag: &TypeTag,
    value: &serde_json::Value,
    count: u64,
) -> Result<(), CliError> {
    let bus = endpoint
        .open(&endpoint.instance, endpoint.topic.as_ref())
        .await?;
    let event = raw(tag, value);
    let mut published = 0;
    while published < count {
        match bus.publish_raw(event.clone(), Headers::new()) {
            Ok(_) => published += 1,
            Err(PublishError::OutboxFull { .. }) => tokio::time::sleep(BACK_OFF).await,
            Err(e) => {
                bus.close().await;
                return Err(CliError::Publish(e));
            }
        }
    }
    if !bus.drain(endpoint.connect_timeout).await {
        return Err(CliError::NotAcknowledged(endpoint.connect_timeout));
    }
    eprintln!(
        "publish: {count} event{} of {tag} ({} bytes of JSON) acknowledged by {}",
        if count == 1 { "" } else { "s" },
        event.payload.len(),
        endpoint.server_url()
    );
    Ok(())
}

/// Sends `value` as a request of `tag` to `to`, waits at most `timeout` for the reply, and
/// prints the reply's payload on standard output (JSON, or hex when its codec does not describe
/// itself) and where it came from on standard error.
///
/// # Errors
/// The connection did not open, the request could not be sent or was refused, no reply came
/// in time, or standard output failed.
pub(crate) async fn request(
    endpoint: &Endpoint,
    to: &InstanceId,
    tag: &TypeTag,
    value: &serde_json::Value,
    timeout: Duration,
) -> Result<(), CliError> {
    let bus = endpoint
        .open(&endpoint.instance, endpoint.topic.as_ref())
        .await?;
    let started = Instant::now();
    let result = bus.request_raw(to, raw(tag, value), timeout).await;
    let elapsed = started.elapsed();
    bus.close().await;
    let reply = match result {
        Ok(reply) => reply,
        Err(RequestError::Timeout(timeout)) => {
            return Err(CliError::NoReply {
                to: to.clone(),
                tag: tag.clone(),
                timeout,
            });
        }
        Err(source) => {
            return Err(CliError::Request {
                to: to.clone(),
                source,
            });
        }
    };
    eprintln!(
        "request: reply from {} in {:.1} ms: tag={} version={} codec={}",
        reply.sender(),
        elapsed.as_secs_f64() * 1000.0,
        reply.type_tag(),
        reply.version(),
        reply.codec()
    );
    let line = match Payload::of_event(&reply) {
        Payload::Json(v) => v.to_string(),
        Payload::Hex(h) => h,
        Payload::Unreadable(detail) => {
            return Err(CliError::Reply {
                to: to.clone(),
                detail,
            });
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
