#!/usr/bin/env python3
"""The seed's Hybrid Connections listener, ported to Python 3 and websocket-client.

It opens the control channel, and for every accept opens the rendezvous with
create_connection, receives one message, sends back the processed result and closes.

Usage: listener.py SERVICE_NAMESPACE ENTITY_PATH [TOKEN]
  SERVICE_NAMESPACE  the relay's host, with its port (e.g. 127.0.0.1:9400)
  ENTITY_PATH        the hybrid connection's path
  TOKEN              a shared access signature with the Listen right (else $RELAY_TOKEN)

The relay's certificate is trusted through the standard SSL_CERT_FILE variable.
"""
import json
import os
import sys
import urllib.parse

from websocket import WebSocketApp, create_connection

service_namespace = sys.argv[1] if len(sys.argv) > 1 else os.environ["RELAY_NAMESPACE"]
entity_path = sys.argv[2] if len(sys.argv) > 2 else os.environ["RELAY_PATH"]
token = sys.argv[3] if len(sys.argv) > 3 else os.environ["RELAY_TOKEN"]


def process(message):
    """The processing: the message reversed, prefixed."""
    return "processed: " + message[::-1]


def on_message(ws, message):
    data = json.loads(message)
    if "accept" not in data:
        # A control channel notification, not a sender.
        return
    url = data["accept"]["address"]
    rendezvous = None
    try:
        rendezvous = create_connection(url)
        connected = rendezvous.connected
        if connected:
            receive_msg = rendezvous.recv()
            if isinstance(receive_msg, bytes):
                receive_msg = receive_msg.decode("utf-8")
            message_process_result = process(receive_msg)
            rendezvous.send(message_process_result)
        else:
            print("rendezvous not connected", flush=True)
    except Exception as ex:
        print("rendezvous failed: %s" % ex, flush=True)
    finally:
        if rendezvous is not None:
            rendezvous.close()


def on_error(ws, error):
    print("error: %s" % error, flush=True)


def on_close(ws, close_status_code, close_msg):
    print("closed: %s %s" % (close_status_code, close_msg), flush=True)


def on_open(ws):
    print("listening on %s" % entity_path, flush=True)


if __name__ == "__main__":
    wss_uri = "wss://{0}/$hc/{1}?sb-hc-action=listen".format(
        service_namespace, entity_path
    ) + "&sb-hc-token=" + urllib.parse.quote(token)
    ws = WebSocketApp(
        wss_uri,
        on_open=on_open,
        on_message=on_message,
        on_error=on_error,
        on_close=on_close,
    )
    ws.run_forever()
