//! The multicast rules a client in any language relies on (docs/protocol.md, sections 3 to 9):
//! READY means live, a refused event's resend is handled as new, ACKs never go backwards, a
//! message refused for a limit has none of its frames acted on, and the publish rate's BUSY.

mod common;

use std::time::Duration;

use common::*;
use futures::SinkExt;
use interrole_core::InstanceId;
use interrole_relay::frame::{Frame, MessageBuilder, RejectCode};
use interrole_relay::url::Action;
use tokio_tungstenite::tungstenite::Message;

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|f| event_of(f).1).collect()
}

fn rejected(frames: &[Frame]) -> Vec<(u64, RejectCode)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Reject { seq, code, .. } => Some((*seq, *code)),
            _ => None,
        })
        .collect()
}

fn acks(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Ack { seq } => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Once READY has arrived, an event published at once reaches the subscriber: every time, with
/// no wait of any kind in between.
#[tokio::test]
async fn ready_means_every_later_event_arrives() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let mut p = connect(addr, Action::Publish, "live", "p").await;
    for round in 1..=30u64 {
        let (mut sub, seen) = subscribed(addr, "live", &format!("s{round}"), false, &[]).await;
        // READY lists where the publisher stands: the events before it are not replayed.
        let expected = if round == 1 {
            vec![]
        } else {
            vec![(id("p"), round - 1)]
        };
        assert_eq!(
            seen,
            [Frame::Ready {
                partial: false,
                positions: expected
            }]
        );
        send_frames(&mut p, &[publish(round, None, b"now")]).await;
        assert_eq!(seqs(&frames(&mut sub, 1).await), [round], "round {round}");
    }
    server.shutdown().await;
}

/// A subscriber that speaks version 1 gets no READY, and is written to in version 1.
#[tokio::test]
async fn a_version_1_subscriber_gets_version_1_and_no_ready() {
    use futures::StreamExt;
    let server = start(config()).await;
    let addr = server.local_addr();
    let mut p = connect(addr, Action::Publish, "old", "p").await;
    send_frames(&mut p, &[publish(1, None, b"one")]).await;
    until_ack(&mut p, 1).await;
    let mut sub = connect(addr, Action::Subscribe, "old", "s").await;
    let mut resume = MessageBuilder::with_version(1, 16);
    resume.push(&Frame::Resume {
        replay_unlisted: false,
        positions: vec![(id("p"), 0)],
    });
    sub.send(Message::Binary(resume.finish())).await.unwrap();
    let raw = loop {
        match tokio::time::timeout(LONG, sub.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => break b,
            Some(Ok(_)) => {}
            other => panic!("no message: {other:?}"),
        }
    };
    assert_eq!(raw[0], 1, "written in version 1");
    let limits = interrole_relay::frame::FrameLimits::default();
    let got = interrole_relay::frame::decode_message_bytes(&raw, &limits).unwrap();
    assert_eq!(seqs(&got), [1], "the replay, and no READY: {got:?}");
    server.shutdown().await;
}

/// A directed event refused because its target is away is delivered when it is resent after
/// the target came: never acknowledged and dropped. Its ACK does not go below the ACK before it.
#[tokio::test]
async fn a_refused_event_resent_is_delivered_and_acks_never_go_back() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let (mut a, _) = subscribed(addr, "resend", "a", false, &[]).await;
    let mut p = connect(addr, Action::Publish, "resend", "p").await;
    send_frames(
        &mut p,
        &[publish(1, Some("t"), b"for t"), publish(2, None, b"all")],
    )
    .await;
    let answer = until_ack(&mut p, 2).await;
    assert_eq!(rejected(&answer), [(1, RejectCode::TargetNotConnected)]);
    assert_eq!(seqs(&frames(&mut a, 1).await), [2]);

    let (mut t, _) = subscribed(addr, "resend", "t", false, &[]).await;
    send_frames(&mut p, &[publish(1, Some("t"), b"for t")]).await;
    let answer = frames(&mut p, 1).await;
    assert_eq!(answer, [Frame::Ack { seq: 2 }], "an ACK of 2, not 1");
    let got = frames(&mut t, 1).await;
    assert_eq!(event_of(&got[0]), ("p".into(), 1, b"for t".to_vec()));

    // A resend of an accepted event is a duplicate: acknowledged, delivered to no one. The next
    // event each subscriber gets is the marker published after it.
    send_frames(
        &mut p,
        &[publish(2, None, b"all"), publish(3, None, b"marker")],
    )
    .await;
    let answer = until_ack(&mut p, 3).await;
    assert!(rejected(&answer).is_empty(), "{answer:?}");
    assert_eq!(seqs(&frames(&mut a, 1).await), [3]);
    assert_eq!(seqs(&frames(&mut t, 1).await), [3]);
    server.shutdown().await;
}

/// The relay forgets the oldest of more than 4096 refusals of one publisher; a resend of one it
/// forgot is delivered (perhaps a second time), never dropped as a duplicate.
#[tokio::test]
async fn a_forgotten_refusal_is_delivered_rather_than_dropped() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let mut p = connect(addr, Action::Publish, "forget", "p").await;
    let refused: Vec<Frame> = (1..=4097).map(|s| publish(s, Some("t"), b"x")).collect();
    send_frames(&mut p, &refused).await;
    send_frames(&mut p, &[publish(4098, None, b"accepted")]).await;
    let answer = until_ack(&mut p, 4098).await;
    assert_eq!(rejected(&answer).len(), 4097);
    let (mut t, _) = subscribed(addr, "forget", "t", false, &[]).await;
    // 1 was forgotten, 4097 is remembered, 4098 was accepted (a duplicate now).
    send_frames(
        &mut p,
        &[
            publish(1, Some("t"), b"x"),
            publish(4097, Some("t"), b"x"),
            publish(4098, None, b"accepted"),
            publish(4099, None, b"marker"),
        ],
    )
    .await;
    let answer = until_ack(&mut p, 4099).await;
    assert!(rejected(&answer).is_empty(), "{answer:?}");
    assert_eq!(seqs(&frames(&mut t, 3).await), [1, 4097, 4099]);
    server.shutdown().await;
}

/// A message over a limit is refused whole: the frames before the one over it are not
/// delivered, kept or acknowledged.
#[tokio::test]
async fn a_message_refused_for_a_limit_is_not_acted_on_in_part() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let (mut a, _) = subscribed(addr, "whole", "a", false, &[]).await;
    let mut p = connect(addr, Action::Publish, "whole", "p").await;
    // 8193 frames: one over the limit of 8192 per message.
    let batch: Vec<Frame> = (1..=8193).map(|s| publish(s, None, b"x")).collect();
    send_frames(&mut p, &batch).await;
    let (code, answer) = until_closed(&mut p).await;
    assert_eq!(code, Some(1009));
    assert!(answer.is_empty(), "nothing is acknowledged: {answer:?}");
    // Nothing of it reached the subscriber, nor the window: the next event it gets is the
    // marker, and a new subscriber replaying everything gets only the marker too.
    let mut q = connect(addr, Action::Publish, "whole", "q").await;
    send_frames(&mut q, &[publish(1, None, b"marker")]).await;
    until_ack(&mut q, 1).await;
    assert_eq!(event_of(&frames(&mut a, 1).await[0]).0, "q");
    let (mut b, seen) = subscribed(addr, "whole", "b", true, &[]).await;
    let mut replay = after_ready(&seen);
    if replay.is_empty() {
        replay = frames(&mut b, 1).await;
    }
    assert_eq!(event_of(&replay[0]), ("q".into(), 1, b"marker".to_vec()));
    assert!(
        matches!(&seen[0], Frame::Ready { positions, .. } if positions == &[(id("q"), 1)]),
        "{seen:?}"
    );
    server.shutdown().await;
}

/// Over `limits.max_publish_rate`, events are refused with BUSY; resent with the same sequence
/// numbers, they are delivered: the subscriber gets every event.
#[tokio::test]
async fn over_the_publish_rate_events_are_busy_and_their_resends_delivered() {
    let mut c = config();
    c.limits.max_publish_rate = 5;
    let server = start(c).await;
    let addr = server.local_addr();
    let (mut a, _) = subscribed(addr, "rate", "a", false, &[]).await;
    let mut p = connect(addr, Action::Publish, "rate", "p").await;
    let batch: Vec<Frame> = (1..=10).map(|s| publish(s, None, b"x")).collect();
    send_frames(&mut p, &batch).await;
    let answer = until_ack(&mut p, 10).await;
    let mut busy: Vec<u64> = rejected(&answer)
        .into_iter()
        .map(|(s, code)| {
            assert_eq!(code, RejectCode::Busy);
            s
        })
        .collect();
    assert_eq!(busy.len(), 5, "a bucket of 5: {answer:?}");
    let deadline = tokio::time::Instant::now() + LONG;
    while !busy.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still busy: {busy:?}"
        );
        // Pace the resends to the rate; each round waits for the relay's answer.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let resend: Vec<Frame> = busy.iter().map(|&s| publish(s, None, b"x")).collect();
        send_frames(&mut p, &resend).await;
        let answer = until_ack(&mut p, 10).await;
        assert!(acks(&answer).iter().all(|&s| s == 10), "{answer:?}");
        busy = rejected(&answer).into_iter().map(|(s, _)| s).collect();
    }
    let mut got = seqs(&frames(&mut a, 10).await);
    got.sort_unstable();
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    server.shutdown().await;
}
