//! The Server-Sent Events fallbacks: `/sse/{channel}` (live publications, and resume with
//! `Last-Event-ID`) and the multiplexed `/sse` carrying the wire protocol.

mod support;

use serde_json::{Value, json};
use support::*;

const CONFIG: &str = "[namespaces.default]\n[namespaces.feed]\n";

/// One SSE event.
#[derive(Debug, Default)]
struct Event {
    event: String,
    id: String,
    data: String,
}

/// Reads an SSE response event by event.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(hub: &Hub, channel: &str, last_event_id: Option<&str>) -> Events {
        Events::open_as(hub, "sse", channel, last_event_id).await
    }

    async fn open_as(hub: &Hub, user: &str, channel: &str, last_event_id: Option<&str>) -> Events {
        let mut req = reqwest::Client::new()
            .get(hub.http(&format!("/sse/{channel}")))
            .header("authorization", format!("Bearer {}", token(user, &["feed:*"])));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Events { resp, buf: String::new() }
    }

    async fn next(&mut self) -> Event {
        self.next_or_end().await.expect("stream still open")
    }

    /// The next event, or None when the server ended the stream.
    async fn next_or_end(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = Event::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        e.event = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        e.id = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    }
                }
                // As an EventSource reads it: data lines joined with `\n`, type `message` when
                // none is given.
                e.data = data.join("\n");
                if e.event.is_empty() && !data.is_empty() {
                    e.event = "message".into();
                }
                if !e.event.is_empty() {
                    return Some(e);
                }
                continue; // keep-alive comment
            }
            let chunk =
                tokio::time::timeout(WAIT, self.resp.chunk()).await.expect("an event in time");
            match chunk.expect("SSE body") {
                Some(chunk) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                None => return None,
            }
        }
    }
}

#[tokio::test]
async fn sse_streams_and_resumes_with_last_event_id() {
    let hub = Hub::start(CONFIG);
    let mut events = Events::open(&hub, "feed:1", None).await;
    let subscribed = events.next().await;
    assert_eq!(subscribed.event, "subscribed");
    assert!(subscribed.id.ends_with(":0"), "{subscribed:?}");
    hub.publish("feed:1", json!({"n": 1})).await;
    let e = events.next().await;
    assert_eq!(e.event, "pub");
    let p: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!((p["offset"].as_u64(), &p["data"]), (Some(1), &json!({"n": 1})));
    assert_eq!(e.id, format!("{}:1", p["epoch"].as_str().unwrap()));
    drop(events);
    for n in 2..=4 {
        hub.publish("feed:1", json!({"n": n})).await;
    }
    // What an EventSource does on reconnect: send the last id it saw.
    let mut events = Events::open(&hub, "feed:1", Some(&e.id)).await;
    let resumed = events.next().await;
    assert_eq!(resumed.event, "subscribed");
    let r: Value = serde_json::from_str(&resumed.data).unwrap();
    assert_eq!(r["recovered"], true);
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![2, 3, 4]);
    assert!(resumed.id.ends_with(":4"));
    hub.publish("feed:1", json!({"n": 5})).await;
    assert!(events.next().await.id.ends_with(":5"));
    // A channel the token does not grant ends the stream with an error event: 103 forbidden;
    // an unknown namespace: 102.
    for (channel, code) in [("plain", 103), ("other:1", 102)] {
        let mut denied = Events::open(&hub, channel, None).await;
        let e = denied.next().await;
        assert_eq!(e.event, "error", "{channel}: {e:?}");
        assert_eq!(serde_json::from_str::<Value>(&e.data).unwrap()["code"], code, "{e:?}");
        assert!(denied.next_or_end().await.is_none(), "the stream ends after `error`");
    }
}

/// Sends one command to a redis-server over RESP; returns its first reply line.
async fn redis(port: u16, args: &[&str]) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.write_all(cmd.as_bytes()).await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, BufReader::new(conn).read_line(&mut line))
        .await
        .expect("a redis reply in time")
        .unwrap();
    line.trim_end().to_string()
}

/// The offset in an SSE id `EPOCH:OFFSET`.
fn id_offset(id: &str) -> u64 {
    id.rsplit_once(':').and_then(|(_, o)| o.parse().ok()).unwrap_or_else(|| panic!("id {id:?}"))
}

/// Issue 11 item 3: after the adapter's own resubscribe (a publication lost on the Redis
/// pub/sub connection), what it recovered arrives as `pub` events, each with its id, and no
/// event's id moves `Last-Event-ID` past a publication not yet delivered as `pub`.
#[tokio::test]
async fn sse_resubscribe_delivers_what_it_recovered_as_pub_events() {
    let redis_server = herald_testkit::RedisProcess::start();
    let url = redis_server.url();
    let hub = Hub::start_with(CONFIG, &["--engine", "redis", "--redis-url", &url]);
    let mut events = Events::open(&hub, "feed:lossy", None).await;
    assert_eq!(events.next().await.event, "subscribed");
    for n in 1..=3 {
        hub.publish("feed:lossy", json!({"n": n})).await;
    }
    let mut last_id = String::new();
    for n in 1..=3 {
        let e = events.next().await;
        assert_eq!((e.event.as_str(), id_offset(&e.id)), ("pub", n), "{e:?}");
        last_id = e.id;
    }
    // A pub/sub output limit of one byte: Redis drops the node's pub/sub connection with the
    // next publication on it, so that publication (offset 4) is never delivered live; only the
    // resubscribe with `since` can bring it. A large one, beyond Redis' fixed reply buffer.
    let set_limit = |limit: &'static str| {
        let port = redis_server.port;
        async move {
            let r = redis(port, &["CONFIG", "SET", "client-output-buffer-limit", limit]).await;
            assert_eq!(r, "+OK");
        }
    };
    set_limit("pubsub 1 1 0").await;
    hub.publish("feed:lossy", json!({"n": 4, "pad": "x".repeat(40_000)})).await;
    set_limit("pubsub 32mb 8mb 60").await;
    for n in 5..=8 {
        hub.publish("feed:lossy", json!({"n": n})).await;
    }
    let mut offsets = Vec::new();
    let mut resubscribes = 0;
    for _ in 0..100 {
        if offsets.last() == Some(&8) {
            break;
        }
        let e = events.next().await;
        let delivered = offsets.last().copied().unwrap_or(3);
        match e.event.as_str() {
            "pub" => {
                let p: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(id_offset(&e.id), p["offset"].as_u64().unwrap(), "{e:?}");
                offsets.push(id_offset(&e.id));
            }
            "subscribed" => {
                resubscribes += 1;
                let r: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(r["recovered"], true, "{r}");
                assert!(r.get("publications").is_none(), "recovered ones come as pub: {r}");
                assert_eq!(id_offset(&e.id), delivered, "subscribed id past undelivered: {e:?}");
            }
            _ => panic!("unexpected event {e:?}"),
        }
        if !e.id.is_empty() {
            last_id = e.id.clone();
        }
        // What an EventSource would resume from never skips an undelivered publication.
        assert_eq!(id_offset(&last_id), offsets.last().copied().unwrap_or(3), "{e:?}");
    }
    assert_eq!(offsets, (4..=8).collect::<Vec<_>>(), "each once, in order, as pub");
    assert!(resubscribes >= 1, "the lost publication made the adapter resubscribe");
}

/// Polls `/api/channels` (the event waited for has no push) until `channel` has no subscriber.
async fn wait_channel_gone(hub: &Hub, channel: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = hub.api("GET", "/api/channels", None).await;
        assert_eq!(status, 200, "{body}");
        let listed = body["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["channel"] == channel && c["subscribers"].as_u64() > Some(0));
        if !listed {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{channel} still subscribed: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Issue 11 item 3: a closed tab on a quiet channel ends its session and subscription without
/// waiting for a publication to notice.
#[tokio::test]
async fn sse_closed_client_ends_its_session_without_a_publication() {
    let hub = Hub::start(CONFIG);
    let mut events = Events::open(&hub, "feed:quiet", None).await;
    assert_eq!(events.next().await.event, "subscribed");
    let (_, body) = hub.api("GET", "/api/channels", None).await;
    assert_eq!(body["channels"], json!([{"channel": "feed:quiet", "subscribers": 1}]), "{body}");
    let (_, info) = hub.api("GET", "/api/info", None).await;
    assert_eq!(info["nodes"][0]["connections"], 1, "{info}");
    drop(events);
    wait_channel_gone(&hub, "feed:quiet").await;
    let (_, info) = hub.api("GET", "/api/info", None).await;
    assert_eq!(info["nodes"][0]["connections"], 0, "the session is gone too: {info}");
}

/// Reads until the `disconnect` event; asserts that the stream ends after it. Returns its data
/// and the pub offsets before it.
async fn read_to_disconnect(events: &mut Events, max_events: usize) -> (Value, Vec<u64>) {
    let mut offsets = Vec::new();
    for _ in 0..max_events {
        let e = events.next_or_end().await.expect("a disconnect event before the end");
        match e.event.as_str() {
            "pub" => offsets.push(id_offset(&e.id)),
            "subscribed" => {}
            "disconnect" => {
                assert!(events.next_or_end().await.is_none(), "the stream ends after disconnect");
                return (serde_json::from_str(&e.data).unwrap(), offsets);
            }
            _ => panic!("unexpected event {e:?}"),
        }
    }
    panic!("no disconnect within {max_events} events");
}

/// Issue 11 item 8: a kick (4503, final) and a shutdown (4000) reach an SSE client as a
/// `disconnect` event carrying the close code and reason, and the stream ends.
#[tokio::test]
async fn sse_kick_and_shutdown_are_disconnect_events() {
    let mut hub = Hub::start(CONFIG);
    let mut events = Events::open_as(&hub, "kicked-user", "feed:k", None).await;
    assert_eq!(events.next().await.event, "subscribed");
    let (status, r) =
        hub.api("POST", "/api/disconnect", Some(json!({"user": "kicked-user"}))).await;
    assert_eq!((status, &r["disconnected"]), (200, &json!(1)), "{r}");
    let (d, _) = read_to_disconnect(&mut events, 4).await;
    assert_eq!((&d["code"], &d["reconnect"]), (&json!(4503), &json!(false)), "{d}");
    assert!(!d["reason"].as_str().unwrap().is_empty(), "{d}");

    let mut events = Events::open(&hub, "feed:s", None).await;
    assert_eq!(events.next().await.event, "subscribed");
    // SIGTERM; the process's exit is awaited off the runtime, the stream read on it.
    let status = tokio::task::spawn_blocking(move || {
        let status = hub.terminate();
        (hub, status)
    });
    let (d, _) = read_to_disconnect(&mut events, 4).await;
    assert_eq!((&d["code"], &d["reconnect"]), (&json!(4000), &json!(true)), "{d}");
    let (_hub, status) = status.await.unwrap();
    assert!(status.success(), "{status}");
}

/// Issue 11 item 8: an SSE reader too slow for its queue is closed with a `disconnect` event
/// (4001, reconnect) after what was in flight, even when it took nothing during the drain grace,
/// and resumes from its last id without loss.
#[tokio::test]
async fn sse_slow_consumer_gets_a_disconnect_event_and_resumes() {
    let config = format!("{CONFIG}[limits]\noutbound_queue_messages = 16\n");
    let hub = Hub::start(&config);
    let mut events = Events::open(&hub, "feed:slow", None).await;
    assert_eq!(events.next().await.event, "subscribed");
    // Not reading: the body, the TCP buffers and then the session's queue fill up. Publish
    // until the hub has dropped the subscriber (the close took it out of the fan-out).
    let pad = "y".repeat(32_000);
    let mut published = 0;
    for n in 1..=2_000u64 {
        hub.publish("feed:slow", json!({"n": n, "pad": pad})).await;
        published = n;
        if n % 50 == 0 {
            let (_, body) = hub.api("GET", "/api/channels", None).await;
            if body["channels"].as_array().unwrap().is_empty() {
                break;
            }
        }
    }
    let (_, body) = hub.api("GET", "/api/channels", None).await;
    assert_eq!(body["channels"], json!([]), "closed as a slow consumer after {published}");
    // Still not reading until the session is gone: its drain grace (10 s) runs out with the
    // pipeline full, and the `disconnect` must reach the reader all the same.
    let deadline = std::time::Instant::now() + 2 * WAIT;
    loop {
        let (_, info) = hub.api("GET", "/api/info", None).await;
        if info["nodes"][0]["connections"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the session outlived its grace: {info}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (d, offsets) = read_to_disconnect(&mut events, 3_000).await;
    assert_eq!((&d["code"], &d["reconnect"]), (&json!(4001), &json!(true)), "{d}");
    let last = offsets.last().copied().unwrap_or(0);
    assert_eq!(offsets, (1..=last).collect::<Vec<_>>(), "in order, no gap, before the close");
    assert!(last < published, "the close came before the end: {last} of {published}");
    // What an EventSource does next: reconnect with the last id; nothing is lost.
    let epoch = hub.api("GET", "/api/history?channel=feed:slow&limit=1", None).await.1["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = Events::open(&hub, "feed:slow", Some(&format!("{epoch}:{last}"))).await;
    let r = events.next().await;
    let r: Value = serde_json::from_str(&r.data).unwrap();
    assert_eq!(r["recovered"], true, "{r}");
    let mut next = last + 1;
    for p in r["publications"].as_array().into_iter().flatten() {
        assert_eq!(p["offset"].as_u64(), Some(next), "{p}");
        next += 1;
    }
    for _ in 0..3_000 {
        if next > published {
            break;
        }
        let e = events.next().await;
        assert_eq!((e.event.as_str(), id_offset(&e.id)), ("pub", next), "{e:?}");
        next += 1;
    }
    assert_eq!(next, published + 1, "every publication after the resume");
}

/// A multiplexed SSE session (`GET /sse`): its id, and its stream of frames.
struct Mux {
    id: String,
    events: Events,
    /// Protocol messages read but not yet taken.
    pending: std::collections::VecDeque<Value>,
    /// Events that carried a frame of several lines.
    multi_line: usize,
}

impl Mux {
    async fn open(hub: &Hub) -> Mux {
        let resp = reqwest::get(hub.http("/sse")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut events = Events { resp, buf: String::new() };
        let first = events.next().await;
        assert_eq!(first.event, "session", "{first:?}");
        let id = serde_json::from_str::<Value>(&first.data).unwrap()["session"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(id.len() >= 22 && id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        Mux { id, events, pending: Default::default(), multi_line: 0 }
    }

    /// POSTs a body to the session; returns the status and the body.
    async fn post(hub: &Hub, id: &str, body: String) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(hub.http(&format!("/sse/session/{id}")))
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn send(&self, hub: &Hub, lines: &[Value]) {
        let body = lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
        let (status, r) = Mux::post(hub, &self.id, body).await;
        assert_eq!(status, 204, "{r}");
    }

    /// The next protocol message (each `message` event is one frame, lines split by `\n`);
    /// pings are answered as a WebSocket client would.
    async fn next(&mut self, hub: &Hub) -> Value {
        loop {
            if let Some(m) = self.pending.pop_front() {
                if m["push"] == "ping" {
                    self.send(hub, &[json!({"cmd": "pong"})]).await;
                    continue;
                }
                return m;
            }
            let e = self.events.next().await;
            assert_eq!(e.event, "message", "{e:?}");
            self.multi_line += usize::from(e.data.contains('\n'));
            for line in e.data.split('\n') {
                self.pending.push_back(serde_json::from_str(line).expect("a JSON line"));
            }
        }
    }
}

/// Issue 16 item 5: `GET /sse` carries the wire protocol: `connect` and `subscribe` POSTed as
/// NDJSON lines, replies and publications as `message` events whose data is the frame's text.
#[tokio::test]
async fn mux_sse_carries_the_wire_protocol() {
    let hub = Hub::start(CONFIG);
    let mut mux = Mux::open(&hub).await;
    hub.publish("feed:m", json!({"n": 1})).await;
    let connect = json!({"id": 1, "cmd": "connect", "token": token("mux", &["feed:*"])});
    let subscribe = json!({"id": 2, "cmd": "subscribe", "channel": "feed:m", "since": null});
    mux.send(&hub, &[connect, subscribe]).await;
    let reply = mux.next(&hub).await;
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["result"]["client"].is_string(), "{reply}");
    let reply = mux.next(&hub).await;
    assert_eq!(reply["id"], 2, "{reply}");
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    // A burst, so that frames carry several lines (joined by `\n` across data lines).
    let items: Vec<Value> =
        (2..=200).map(|n| json!({"channel": "feed:m", "data": {"n": n}})).collect();
    let (status, r) = hub.api("POST", "/api/publish/batch", Some(Value::Array(items))).await;
    assert_eq!(status, 200, "{r}");
    for offset in 2..=200 {
        let p = mux.next(&hub).await;
        let p = &p["pub"];
        assert_eq!(
            (&p["channel"], &p["offset"], &p["data"]["n"]),
            (&json!("feed:m"), &json!(offset), &json!(offset)),
            "{p}"
        );
    }
    assert!(mux.multi_line > 0, "a burst is batched into frames of several lines");
    // A command error is a reply like any other; the session stays.
    mux.send(&hub, &[json!({"id": 3, "cmd": "subscribe", "channel": "feed:m"})]).await;
    let reply = mux.next(&hub).await;
    assert_eq!((&reply["id"], &reply["error"]["code"]), (&json!(3), &json!(105)), "{reply}");
}

/// A POST to an id no session has is 404 with 121; a body over `limits.max_frame_bytes` (default
/// 81920) is 413 with 111 and the session goes on.
#[tokio::test]
async fn mux_sse_unknown_session_and_oversized_body() {
    let hub = Hub::start(CONFIG);
    let (status, r) = Mux::post(&hub, "00000000000000000000000000000000", "{}".into()).await;
    assert_eq!((status, &r["error"]["code"]), (404, &json!(121)), "{r}");
    assert_eq!(r["error"]["name"], "unknown_session", "{r}");

    let mut mux = Mux::open(&hub).await;
    let big = json!({"id": 1, "cmd": "publish", "channel": "feed:x", "data": "x".repeat(100_000)});
    let (status, r) = Mux::post(&hub, &mux.id, big.to_string()).await;
    assert_eq!((status, &r["error"]["code"]), (413, &json!(111)), "{r}");
    let connect = json!({"id": 2, "cmd": "connect", "token": token("mux", &["feed:*"])});
    mux.send(&hub, &[connect]).await;
    let reply = mux.next(&hub).await;
    assert_eq!(reply["id"], 2, "the session outlives the refused body: {reply}");
    assert!(reply["result"].is_object(), "{reply}");
}

/// When the GET stream closes, the session ends (its connection count released) and its id is
/// forgotten: a POST to it is 404.
#[tokio::test]
async fn mux_sse_session_is_forgotten_after_the_stream_closes() {
    let hub = Hub::start(CONFIG);
    let mut mux = Mux::open(&hub).await;
    let connect = json!({"id": 1, "cmd": "connect", "token": token("mux", &["feed:*"])});
    mux.send(&hub, &[connect]).await;
    assert_eq!(mux.next(&hub).await["id"], 1);
    let (_, info) = hub.api("GET", "/api/info", None).await;
    assert_eq!(info["nodes"][0]["connections"], 1, "{info}");
    let id = mux.id.clone();
    drop(mux);
    // No push announces the end: poll until the id is gone, within the deadline.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, r) = Mux::post(&hub, &id, json!({"cmd": "pong"}).to_string()).await;
        if status == 404 {
            assert_eq!(r["error"]["code"], 121, "{r}");
            break;
        }
        assert_eq!(status, 204, "{r}");
        assert!(std::time::Instant::now() < deadline, "session {id} still open");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, info) = hub.api("GET", "/api/info", None).await;
    assert_eq!(info["nodes"][0]["connections"], 0, "the session is gone too: {info}");
}

/// A close reaches the client as the `disconnect` push, and the stream ends right after it: the
/// session's close handshake (which waits up to 1 s for a WebSocket client's close frame) is not
/// waited for, so a client on SSE reconnects at once.
#[tokio::test]
async fn mux_sse_stream_ends_with_the_disconnect_push() {
    let hub = Hub::start(CONFIG);
    let mut mux = Mux::open(&hub).await;
    let connect = json!({"id": 1, "cmd": "connect", "token": token("mux-kicked", &["feed:*"])});
    mux.send(&hub, &[connect]).await;
    assert_eq!(mux.next(&hub).await["id"], 1);
    let (status, r) = hub.api("POST", "/api/disconnect", Some(json!({"user": "mux-kicked"}))).await;
    assert_eq!((status, &r["disconnected"]), (200, &json!(1)), "{r}");
    let push = mux.next(&hub).await;
    assert_eq!((&push["push"], &push["code"]), (&json!("disconnect"), &json!(4503)), "{push}");
    let end = tokio::time::timeout(std::time::Duration::from_millis(500), mux.events.next_or_end());
    assert!(matches!(end.await, Ok(None)), "the stream ends after the disconnect push");
}
