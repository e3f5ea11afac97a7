//! Multicast publish/subscribe through a real relay.

mod common;

use common::*;
use interrole_relay::frame::Frame;
use interrole_relay::url::Action;
use interrole_relay_server::SlowConsumerPolicy;

#[tokio::test]
async fn publish_reaches_every_subscriber_once_in_order_and_is_acked() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let mut subs = Vec::new();
    // Each subscriber registered before publishing (a later one only gets live events).
    for i in 0..5 {
        subs.push(
            subscribed(addr, "orders", &format!("s{i}"), false, &[])
                .await
                .0,
        );
    }
    let mut publisher = connect(addr, Action::Publish, "orders", "p1").await;
    let batch: Vec<Frame> = (1..=50)
        .map(|i| publish(i, None, format!("e{i}").as_bytes()))
        .collect();
    send_frames(&mut publisher, &batch[..20]).await;
    send_frames(&mut publisher, &batch[20..]).await;
    let acks = until_ack(&mut publisher, 50).await;
    assert!(
        acks.iter().all(|f| matches!(f, Frame::Ack { .. })),
        "{acks:?}"
    );
    for sub in &mut subs {
        let got: Vec<_> = frames(sub, 50).await.iter().map(event_of).collect();
        let want: Vec<_> = (1..=50)
            .map(|i| ("p1".to_owned(), i, format!("e{i}").into_bytes()))
            .collect();
        assert_eq!(got, want);
    }
    // Exactly once: a duplicate is acknowledged, not delivered; the next event arrives alone.
    send_frames(
        &mut publisher,
        &[publish(50, None, b"dup"), publish(51, None, b"last")],
    )
    .await;
    until_ack(&mut publisher, 51).await;
    for sub in &mut subs {
        let got = frames(sub, 1).await;
        assert_eq!(
            got.iter().map(event_of).collect::<Vec<_>>(),
            vec![("p1".into(), 51, b"last".to_vec())]
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn directed_delivery_and_no_echo() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let (mut a, _) = subscribed(addr, "jobs", "a", false, &[]).await;
    let (mut b, _) = subscribed(addr, "jobs", "b", false, &[]).await;
    let (mut own, _) = subscribed(addr, "jobs", "p", false, &[]).await; // the publisher's own instance
    let mut p = connect(addr, Action::Publish, "jobs", "p").await;
    send_frames(
        &mut p,
        &[
            publish(1, Some("b"), b"for b"),
            publish(2, Some("nobody"), b"lost"),
            publish(3, None, b"all"),
        ],
    )
    .await;
    let answer = until_ack(&mut p, 3).await;
    assert!(
        matches!(&answer[0], Frame::Reject { seq: 2, code, .. } if *code == interrole_relay::frame::RejectCode::TargetNotConnected),
        "{answer:?}"
    );
    assert_eq!(
        event_of(&frames(&mut a, 1).await[0]),
        ("p".into(), 3, b"all".to_vec())
    );
    let got: Vec<_> = frames(&mut b, 2).await.iter().map(event_of).collect();
    assert_eq!(
        got,
        vec![
            ("p".into(), 1, b"for b".to_vec()),
            ("p".into(), 3, b"all".to_vec())
        ]
    );
    // The publisher's own subscriber saw nothing: a later directed event to it is the next frame.
    let mut q = connect(addr, Action::Publish, "jobs", "q").await;
    send_frames(&mut q, &[publish(1, Some("p"), b"to p")]).await;
    until_ack(&mut q, 1).await;
    assert_eq!(
        event_of(&frames(&mut own, 1).await[0]),
        ("q".into(), 1, b"to p".to_vec())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn resume_after_reconnect_replays_what_was_missed() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let (mut sub, _) = subscribed(addr, "feed", "s", false, &[]).await;
    let mut p = connect(addr, Action::Publish, "feed", "p").await;
    send_frames(&mut p, &[publish(1, None, b"1"), publish(2, None, b"2")]).await;
    until_ack(&mut p, 2).await;
    assert_eq!(frames(&mut sub, 2).await.len(), 2);
    drop(sub);
    // While the subscriber is away.
    send_frames(&mut p, &[publish(3, None, b"3"), publish(4, None, b"4")]).await;
    until_ack(&mut p, 4).await;
    let mut q = connect(addr, Action::Publish, "feed", "q").await;
    send_frames(&mut q, &[publish(7, None, b"q7")]).await;
    until_ack(&mut q, 7).await;
    // READY says where each sender stands; the replay follows it.
    let (mut sub, seen) = subscribed(addr, "feed", "s", true, &[("p", 2)]).await;
    let ready = seen
        .iter()
        .find(|f| matches!(f, Frame::Ready { .. }))
        .unwrap();
    let id = |s: &str| interrole_core::InstanceId::new(s).unwrap();
    assert_eq!(
        *ready,
        Frame::Ready {
            partial: false,
            positions: vec![(id("p"), 4), (id("q"), 7)]
        }
    );
    let mut replayed = after_ready(&seen);
    if replayed.len() < 3 {
        replayed.extend(frames(&mut sub, 3 - replayed.len()).await);
    }
    let got: Vec<_> = replayed.iter().map(event_of).collect();
    assert_eq!(
        got,
        vec![
            ("p".into(), 3, b"3".to_vec()),
            ("p".into(), 4, b"4".to_vec()),
            ("q".into(), 7, b"q7".to_vec())
        ]
    );
    // Live events follow the replay.
    send_frames(&mut p, &[publish(5, None, b"5")]).await;
    assert_eq!(event_of(&frames(&mut sub, 1).await[0]).1, 5);
    server.shutdown().await;
}

#[tokio::test]
async fn resume_beyond_the_window_reports_missed() {
    let mut c = config();
    c.replay.max_events = 3;
    let server = start(c).await;
    let addr = server.local_addr();
    let mut p = connect(addr, Action::Publish, "w", "p").await;
    let batch: Vec<_> = (1..=10).map(|i| publish(i, None, b"x")).collect();
    send_frames(&mut p, &batch).await;
    until_ack(&mut p, 10).await;
    let mut sub = subscribe(addr, "w", "s", false, &[("p", 2)]).await;
    let got = frames(&mut sub, 5).await;
    let p = interrole_core::InstanceId::new("p").unwrap();
    assert_eq!(
        got[0],
        Frame::Missed {
            sender: Some(p.clone()),
            count: 5
        }
    );
    assert_eq!(
        got[1],
        Frame::Ready {
            partial: false,
            positions: vec![(p, 10)]
        }
    );
    let seqs: Vec<u64> = got[2..].iter().map(|f| event_of(f).1).collect();
    assert_eq!(seqs, vec![8, 9, 10]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_newer_connection_replaces_the_older() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let (mut old, _) = subscribed(addr, "r", "s", false, &[]).await;
    let _new = subscribe(addr, "r", "s", false, &[]).await;
    assert_eq!(until_closed(&mut old).await.0, Some(4001));
    server.shutdown().await;
}

/// Publishes `n` events of `size` bytes from `p`, in batches, waiting for the ACKs.
async fn flood(p: &mut Ws, from: u64, n: u64, size: usize) {
    let payload = vec![7u8; size];
    let mut seq = from;
    while seq < from + n {
        let end = (seq + 10).min(from + n);
        let batch: Vec<_> = (seq..end).map(|i| publish(i, None, &payload)).collect();
        send_frames(p, &batch).await;
        until_ack(p, end - 1).await;
        seq = end;
    }
}

#[tokio::test]
async fn a_slow_subscriber_gets_missed_and_does_not_slow_the_others() {
    let mut c = config();
    c.subscribers.queue_len = 512;
    let server = start(c).await;
    let addr = server.local_addr();
    // Never reads: its socket buffers fill, then its queue, then events are dropped for it.
    // The fast one first: the slow one then never has a later subscriber's probe to read.
    let (mut fast, _) = subscribed(addr, "s", "fast", false, &[]).await;
    let (mut slow, _) = subscribed(addr, "s", "slow", false, &[]).await;
    let mut p = connect(addr, Action::Publish, "s", "p").await;
    let n = 2000;
    let reader = tokio::spawn(async move {
        let got = frames(&mut fast, n as usize).await;
        got.iter().map(|f| event_of(f).1).collect::<Vec<_>>()
    });
    flood(&mut p, 1, n, 16 * 1024).await;
    let seqs = reader.await.unwrap();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert!(server.metrics().dropped_events() > 0);
    // Now the slow one reads: it sees events and a MISSED for what was dropped.
    let mut events = 0u64;
    let mut missed = 0u64;
    while events + missed < n {
        for f in frames(&mut slow, 1).await {
            match f {
                Frame::Event { .. } => events += 1,
                Frame::Missed { count, .. } => missed += count,
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(missed > 0);
    assert_eq!(events + missed, n);
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_subscriber_is_disconnected_under_the_disconnect_policy() {
    let mut c = config();
    c.subscribers.queue_len = 512;
    c.subscribers.slow_consumer = SlowConsumerPolicy::Disconnect;
    let server = start(c).await;
    let addr = server.local_addr();
    // The fast one first: the slow one then never has a later subscriber's probe to read.
    let (mut fast, _) = subscribed(addr, "s", "fast", false, &[]).await;
    let (mut slow, _) = subscribed(addr, "s", "slow", false, &[]).await;
    let mut p = connect(addr, Action::Publish, "s", "p").await;
    let n = 2000;
    let reader = tokio::spawn(async move { frames(&mut fast, n as usize).await.len() });
    flood(&mut p, 1, n, 16 * 1024).await;
    assert_eq!(reader.await.unwrap(), n as usize);
    let (code, _) = until_closed(&mut slow).await;
    assert_eq!(code, Some(4000));
    server.shutdown().await;
}
