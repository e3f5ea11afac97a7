//! Core NATS mode: the topic's multicast subject and the instance's directed subject, events
//! acknowledged once a round trip to the server confirms it has them, refusals from the server's
//! "no responders" answers.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use interrole_core::OpenSpec;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::NatsError;
use crate::options::NatsOptions;
use crate::shared::{Outgoing, Shared, decode, fail, next_batch};

/// Subscribes to the connection's subjects, waits until the server has them, then starts the
/// reader and the writer of `rx`: `(reader, writer)`.
pub(crate) async fn start(
    client: &Client,
    options: &NatsOptions,
    spec: &OpenSpec,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: &Arc<Shared>,
) -> Result<(JoinHandle<()>, JoinHandle<()>), NatsError> {
    let multicast = client
        .subscribe(options.topic_subject(&spec.topic))
        .await
        .map_err(NatsError::Subscribe)?;
    let directed = client
        .subscribe(options.instance_subject(&spec.topic, &spec.instance))
        .await
        .map_err(NatsError::Subscribe)?;
    let prefix = client.new_inbox();
    let refused = client
        .subscribe(format!("{prefix}.*"))
        .await
        .map_err(NatsError::Subscribe)?;
    let refusals = Refusals {
        prefix,
        subscriber: refused,
    };
    let trips = RoundTrips::subscribe(client).await?;
    // The subscriptions are registered once the server has answered a round trip.
    round_trip(client).await?;
    let reader = tokio::spawn(read_loop(multicast, directed, shared.clone()));
    let writer = tokio::spawn(write_loop(
        client.clone(),
        rx,
        refusals,
        trips,
        shared.clone(),
    ));
    Ok((reader, writer))
}

/// A round trip to the server: a request to a subject nobody serves, which the server answers
/// with "no responders" once it has processed everything this client sent before. (The client's
/// `flush` only writes the socket.)
async fn round_trip(client: &Client) -> Result<(), NatsError> {
    use async_nats::RequestErrorKind;
    let request = client.request(client.new_inbox(), Bytes::new());
    match tokio::time::timeout(Duration::from_secs(10), request).await {
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => Err(NatsError::RoundTripTimeout),
        Ok(Err(e)) => Err(NatsError::RoundTrip(e)),
        Err(_) => Err(NatsError::RoundTripTimeout),
    }
}

/// Where the server's answers to the writer's round trips arrive: `{prefix}.{n}`, in order.
#[derive(Debug)]
struct RoundTrips {
    prefix: String,
    answers: async_nats::Subscriber,
}

impl RoundTrips {
    /// Subscribes before the connection's first round trip, which registers it too.
    async fn subscribe(client: &Client) -> Result<Self, NatsError> {
        let prefix = client.new_inbox();
        let answers = client
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(NatsError::Subscribe)?;
        Ok(Self { prefix, answers })
    }
}

/// Where the server's "no responders" answers to directed events arrive: `{prefix}.{seq}`.
#[derive(Debug)]
struct Refusals {
    prefix: String,
    subscriber: async_nats::Subscriber,
}

impl Refusals {
    /// Reports every refusal that has arrived, without waiting.
    fn report(&mut self, shared: &Shared) {
        use futures::FutureExt;
        while let Some(Some(message)) = self.subscriber.next().now_or_never() {
            if message.status != Some(async_nats::StatusCode::NO_RESPONDERS) {
                continue;
            }
            let seq = message
                .subject
                .rsplit('.')
                .next()
                .and_then(|s| s.parse::<u64>().ok());
            let Some(seq) = seq else { continue };
            if !shared.is_ending() {
                shared
                    .inbound()
                    .rejected(seq, NatsError::NoResponders.into());
            }
        }
    }
}

/// How many published batches may wait for their round trip at once: the next batch goes out
/// while the server answers for the previous ones.
const ROUND_TRIPS_IN_FLIGHT: usize = 32;

/// How long the server has to answer a round trip.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes in order; behind each batch, a round trip to the server, whose answer acknowledges
/// the batch to the bus. The next batch does not wait for that answer (up to
/// [`ROUND_TRIPS_IN_FLIGHT`] batches): the answers come back in order, on a subscription of
/// their own, and are awaited beside the publishing.
async fn write_loop(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut refusals: Refusals,
    trips: RoundTrips,
    shared: Arc<Shared>,
) {
    let RoundTrips {
        prefix: trip_prefix,
        mut answers,
    } = trips;
    // (events, last sequence number) of each batch whose round trip is out, in order.
    let (sent_tx, mut sent_rx) = mpsc::channel::<(u64, u64)>(ROUND_TRIPS_IN_FLIGHT);
    let refusal_prefix = refusals.prefix.clone();
    let publishing = shared.clone();
    let publish = async move {
        let shared = publishing;
        let mut trip = 0u64;
        while let Some(batch) = next_batch(&mut rx).await {
            let mut last = 0;
            let n = batch.len() as u64;
            for Outgoing {
                subject,
                seq,
                envelope,
                directed,
            } in batch
            {
                // A directed event carries a reply subject, so that the server says at once
                // when nobody subscribes to its target's subject ("no responders").
                let published = if directed {
                    let reply = format!("{refusal_prefix}.{seq}");
                    client.publish_with_reply(subject, reply, envelope).await
                } else {
                    client.publish(subject, envelope).await
                };
                if let Err(e) = published {
                    fail(&shared, NatsError::Publish(e));
                    return false;
                }
                last = seq;
            }
            // A message to a subject nobody serves, which the server answers with "no
            // responders" once it has processed everything before it.
            trip += 1;
            let reply = format!("{trip_prefix}.{trip}");
            if let Err(e) = client
                .publish_with_reply(client.new_inbox(), reply, Bytes::new())
                .await
            {
                fail(&shared, NatsError::Publish(e));
                return false;
            }
            if sent_tx.send((n, last)).await.is_err() {
                return false;
            }
        }
        true
    };
    let acknowledge = async move {
        while let Some((n, last)) = sent_rx.recv().await {
            match tokio::time::timeout(ROUND_TRIP_TIMEOUT, answers.next()).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    fail(&shared, NatsError::SubscriptionEnded);
                    return;
                }
                Err(_) => {
                    fail(&shared, NatsError::RoundTripTimeout);
                    return;
                }
            }
            // The server answered the round trip after everything before it, and the client
            // hands messages to subscriptions in the order they arrive: every refusal of this
            // batch is waiting, and is reported before the acknowledgement that covers it.
            refusals.report(&shared);
            shared.written(n);
            if !shared.is_ending() {
                shared.inbound().acknowledged(last);
            }
        }
    };
    tokio::pin!(publish, acknowledge);
    tokio::select! {
        // Nothing more to publish: the answers still out are awaited, and acknowledged unless
        // the connection is ending. (After a failure to publish, the connection is failed.)
        clean = &mut publish => if clean { acknowledge.await },
        // Awaiting an answer failed: the writer stops at once.
        () = &mut acknowledge => {}
    }
}

/// Hands what arrives on both subscriptions to the inbound.
async fn read_loop(
    mut multicast: async_nats::Subscriber,
    mut directed: async_nats::Subscriber,
    shared: Arc<Shared>,
) {
    loop {
        let message = tokio::select! {
            m = multicast.next() => m,
            m = directed.next() => m,
        };
        let Some(message) = message else {
            fail(&shared, NatsError::SubscriptionEnded);
            return;
        };
        if shared.is_ending() {
            return;
        }
        if let Some(event) = decode(&shared, &message.subject, message.payload) {
            shared.inbound().event(event);
        }
    }
}
