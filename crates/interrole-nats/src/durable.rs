//! Durable mode (JetStream): a stream per topic, two durable consumers per instance, events
//! acknowledged to the bus once the stream has stored them, and to the stream once the bus has
//! them.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::Client;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use interrole_core::{InstanceId, OpenSpec};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::NatsError;
use crate::options::{Durable, NatsOptions, sanitize};
use crate::shared::{Outgoing, Shared, decode, fail, next_batch};

/// Durable consumers being made again from a stream sequence, by `{stream}/{consumer}`: should
/// that fail half-way, the next connection finishes it rather than start with new events.
pub(crate) type Resets = Mutex<HashMap<String, u64>>;

type Pull = consumer::Consumer<consumer::pull::Config>;

/// Checks that the server has JetStream, finds or makes the topic's stream and this instance's
/// consumers, then starts the reader and the writer of `rx`: `(reader, writer)`.
pub(crate) async fn start(
    client: &Client,
    options: &NatsOptions,
    durable: &Durable,
    spec: &OpenSpec,
    resets: &Resets,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: &Arc<Shared>,
) -> Result<(JoinHandle<()>, JoinHandle<()>), NatsError> {
    let info = client.server_info();
    if !info.jetstream {
        return Err(NatsError::JetStreamDisabled {
            server: info.server_name,
            host: info.host,
            port: info.port,
        });
    }
    let js = jetstream::new(client.clone());
    let (multicast, directed) = consumers(&js, options, durable, spec, resets).await?;
    let own = spec.instance.clone();
    let reader = tokio::spawn(read_loop(multicast, directed, own, shared.clone()));
    let writer = tokio::spawn(write_loop(js, spec.instance.clone(), rx, shared.clone()));
    Ok((reader, writer))
}

/// Creates (or finds) the topic's stream and this instance's two durable consumers.
async fn consumers(
    js: &jetstream::Context,
    options: &NatsOptions,
    durable: &Durable,
    spec: &OpenSpec,
    resets: &Resets,
) -> Result<(Pull, Pull), NatsError> {
    let name = options.stream_name(&spec.topic);
    let topic_subject = options.topic_subject(&spec.topic);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![
                topic_subject.clone(),
                format!("{}.i.{}.>", options.prefix, spec.topic.as_str()),
            ],
            storage: if durable.memory {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            num_replicas: durable.replicas,
            max_age: durable.max_age,
            max_bytes: durable.max_bytes,
            duplicate_window: durable.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|source| NatsError::Stream {
            name: name.clone(),
            source,
        })?;
    let consumer = |suffix: &str, filter: String| {
        let durable_name = format!("{}-{suffix}", sanitize(spec.instance.as_str()));
        let key = format!("{name}/{durable_name}");
        let stream = stream.clone();
        async move {
            let config = |deliver_policy| consumer::pull::Config {
                durable_name: Some(durable_name.clone()),
                filter_subject: filter.clone(),
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 20_000,
                ..Default::default()
            };
            let reset = |source| NatsError::ConsumerReset {
                name: durable_name.clone(),
                source,
            };
            let unfinished = resets.lock().get(&key).copied();
            let policy = unfinished.map_or(consumer::DeliverPolicy::New, |start_sequence| {
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            });
            let found: Pull = stream
                .get_or_create_consumer(&durable_name, config(policy))
                .await
                .map_err(|source| NatsError::Consumer {
                    name: durable_name.clone(),
                    source,
                })?;
            resets.lock().remove(&key);
            // The server's answer to finding or making it carries its state.
            let Some(start) = resume_from(found.cached_info()) else {
                return Ok(found);
            };
            // A previous connection of this instance left events delivered and not acknowledged
            // (or pull requests the server still serves): JetStream would hand them out again
            // only after the acknowledgement wait, behind newer ones, and this instance would
            // drop them as old. The consumer is made again from the first event not
            // acknowledged, which also ends the old connection's requests.
            tracing::debug!(consumer = %durable_name, start, "resuming a durable consumer from its acknowledgement floor");
            resets.lock().insert(key.clone(), start);
            stream.delete_consumer(&durable_name).await.map_err(reset)?;
            let made = stream
                .create_consumer(config(consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                }))
                .await
                .map_err(reset)?;
            resets.lock().remove(&key);
            Ok::<Pull, NatsError>(made)
        }
    };
    let multicast = consumer("t", topic_subject).await?;
    let directed = consumer("i", options.instance_subject(&spec.topic, &spec.instance)).await?;
    Ok((multicast, directed))
}

/// Where a durable consumer found at open must start again: the stream sequence after its
/// acknowledgement floor, when a previous connection left events delivered and not acknowledged or
/// pull requests waiting; `None` when it can go on as it is.
fn resume_from(info: &consumer::Info) -> Option<u64> {
    (info.num_ack_pending > 0 || info.num_waiting > 0).then(|| info.ack_floor.stream_sequence + 1)
}

/// Publishes to the stream in order; each event is acknowledged to the bus once stored.
async fn write_loop(
    js: jetstream::Context,
    // Every event a connection sends is its own instance's.
    sender: InstanceId,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    while let Some(batch) = next_batch(&mut rx).await {
        let n = batch.len() as u64;
        let mut pending = Vec::with_capacity(batch.len());
        for Outgoing {
            subject,
            seq,
            envelope: payload,
            ..
        } in batch
        {
            let mut headers = async_nats::HeaderMap::new();
            // The stream drops a message id it has seen: (sender, seq) de-duplication.
            headers.insert("Nats-Msg-Id", format!("{sender}:{seq}").as_str());
            match js.publish_with_headers(subject, headers, payload).await {
                Ok(ack) => pending.push((seq, ack)),
                Err(e) => return fail(&shared, NatsError::JetStreamPublish(e)),
            }
        }
        for (seq, ack) in pending {
            match ack.await {
                Ok(_) => {
                    if !shared.is_ending() {
                        shared.inbound().acknowledged(seq);
                    }
                }
                Err(e) => return fail(&shared, NatsError::NotStored(e)),
            }
        }
        shared.written(n);
    }
}

/// Reads both durable consumers, hands events to the inbound, then acknowledges them.
async fn read_loop(multicast: Pull, directed: Pull, own: InstanceId, shared: Arc<Shared>) {
    let open = |c: Pull| async move { c.messages().await };
    let (mut m, mut d) = match tokio::try_join!(open(multicast), open(directed)) {
        Ok(x) => x,
        Err(e) => {
            fail(&shared, NatsError::ConsumerMessages(e));
            return;
        }
    };
    loop {
        let next = tokio::select! {
            x = m.next() => x,
            x = d.next() => x,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "durable consumer");
                continue;
            }
            None => {
                fail(&shared, NatsError::ConsumerEnded);
                return;
            }
        };
        if shared.is_ending() {
            return;
        }
        match decode(&shared, &message.subject, message.payload.clone()) {
            // The stream holds this instance's own multicast events too: no echo.
            Some(event) if event.sender() == &own => {}
            Some(event) => shared.inbound().event(event),
            None => {}
        }
        if let Err(e) = message.ack().await {
            tracing::debug!(error = %e, "acknowledging a JetStream message");
        }
    }
}
