//! The failures a caller may want to tell apart reach it typed: a [`NatsError`] as the source of
//! the transport error, of the kind that says whether to retry.

mod common;

use interrole_core::testkit::Recorder;
use interrole_core::{InstanceId, OpenSpec, Topic, Transport, TransportError, TransportErrorKind};
use interrole_nats::{Durable, NatsAuth, NatsError, NatsOptions, NatsTransport};

/// Why opening a connection with `options` fails.
async fn open_error(options: NatsOptions) -> TransportError {
    let spec = OpenSpec::new(Topic::new("t").unwrap(), InstanceId::new("a").unwrap());
    NatsTransport::new(options)
        .open(spec, Recorder::new())
        .await
        .expect_err("the connection should not open")
}

/// A URL on 127.0.0.1 where nothing listens.
fn nobody_listening() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("nats://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn a_configuration_error_is_typed_and_fatal() {
    let error = open_error(NatsOptions::new(" , ")).await;
    assert!(
        matches!(NatsError::of(&error), Some(NatsError::NoServer)),
        "{error}"
    );
    assert_eq!(error.kind(), TransportErrorKind::Protocol);

    let error = open_error(NatsOptions::new("nats://bad host:4222")).await;
    assert!(
        matches!(NatsError::of(&error), Some(NatsError::InvalidAddress { address, .. }) if address == "nats://bad host:4222"),
        "{error}"
    );
    assert!(!error.is_transient());

    let missing = std::env::temp_dir().join("interrole-nats-no-such.creds");
    let options = NatsOptions::new(&nobody_listening()).with_auth(NatsAuth::CredsFile(missing));
    let error = open_error(options).await;
    assert!(
        matches!(
            NatsError::of(&error),
            Some(NatsError::CredentialsFile { .. })
        ),
        "{error}"
    );
    assert_eq!(error.kind(), TransportErrorKind::Unauthorized);
}

#[tokio::test]
async fn no_server_answering_is_typed_and_transient() {
    let error = open_error(NatsOptions::new(&nobody_listening())).await;
    let Some(NatsError::Connect { servers, .. }) = NatsError::of(&error) else {
        panic!("not a connect error: {error}");
    };
    assert_eq!(servers.len(), 1);
    assert!(error.is_transient(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn durable_mode_on_a_server_without_jetstream_is_typed_and_fatal() {
    let server = common::NatsServer::start("durable_mode_on_a_server_without_jetstream");
    let options = NatsOptions::new(&server.url()).with_durable(Durable::default());
    let error = open_error(options).await;
    assert!(
        matches!(NatsError::of(&error), Some(NatsError::JetStreamDisabled { port, .. }) if *port == server.addr.port()),
        "{error}"
    );
    assert_eq!(error.kind(), TransportErrorKind::Protocol);
    assert!(error.to_string().contains("start it with --js"), "{error}");
}
