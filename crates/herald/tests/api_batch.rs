//! `POST /api/publish/batch` against the real binary: many publications for many channels in one
//! request (a JSON array or NDJSON), each item answered on its own, in order per channel, bounded
//! by `limits.max_batch_items`; and `POST /api/publish` requests pipelined on one connection
//! (HTTP/1.1: written back to back, answered in order).

mod support;

use serde_json::{Value, json};
use support::*;

/// A default namespace, and one whose `data` may hold 64 bytes (oversized items).
const CONFIG: &str = "[namespaces.default]\n[namespaces.small]\nmax_message_bytes = 64\n";

/// POSTs `body` as it is with this content type; returns (status, body).
async fn post_raw(hub: &Hub, body: String, content_type: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(hub.http("/api/publish/batch"))
        .header("x-api-key", API_KEY)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("http request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON answer"))
}

/// The batch's `results`, after checking the request as a whole was answered 200.
async fn batch(hub: &Hub, items: Value) -> Vec<Value> {
    let (status, body) = hub.api("POST", "/api/publish/batch", Some(items)).await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().expect("results").clone()
}

/// The channel's history, oldest first.
async fn history(hub: &Hub, channel: &str) -> Vec<Value> {
    let (status, body) =
        hub.api("GET", &format!("/api/history?channel={channel}&limit=1000"), None).await;
    assert_eq!(status, 200, "{body}");
    body["publications"].as_array().expect("publications").clone()
}

#[tokio::test]
async fn a_batch_over_five_channels_publishes_each_channel_in_order() {
    let hub = Hub::start(CONFIG);
    let channels: Vec<String> = (0..5).map(|c| format!("room-{c}")).collect();
    let items: Vec<Value> =
        (0..500).map(|i| json!({"channel": channels[i % 5], "data": {"seq": i}})).collect();
    let results = batch(&hub, Value::Array(items)).await;
    assert_eq!(results.len(), 500);
    for (i, r) in results.iter().enumerate() {
        assert!(r.get("error").is_none(), "item {i}: {r}");
        assert_eq!(r["channel"], channels[i % 5], "results are in item order");
        assert_eq!(r["offset"], (i / 5 + 1) as u64, "item {i}: {r}");
    }
    for (c, channel) in channels.iter().enumerate() {
        let pubs = history(&hub, channel).await;
        assert_eq!(pubs.len(), 100, "{channel}");
        for (k, p) in pubs.iter().enumerate() {
            assert_eq!(p["offset"], k as u64 + 1, "{channel}: contiguous offsets");
            assert_eq!(p["data"]["seq"], (k * 5 + c) as u64, "{channel}: items in the order given");
        }
    }
}

#[tokio::test]
async fn a_bad_item_gets_its_error_and_the_others_are_published() {
    let hub = Hub::start(CONFIG);
    let items = json!([
        {"channel": "a", "data": 1},
        {"channel": "nope:x", "data": 2},
        {"channel": "small:x", "data": "x".repeat(100)},
        {"data": 3},
        42,
        {"channel": "a", "data": 4, "colour": "red"},
        {"channel": "small:x", "data": "fits"},
        {"channel": "a", "data": 5},
        // Objects inside an item that is no object are not items; a mistyped field fails its
        // item alone, and the items after it are still read.
        [{"channel": "a", "data": 6}],
        {"channel": 7, "data": 7},
        {"channel": "a", "data": 8},
    ]);
    let results = batch(&hub, items).await;
    let codes: Vec<Option<u64>> = results.iter().map(|r| r["error"]["code"].as_u64()).collect();
    let bad = Some(107);
    assert_eq!(codes, [None, Some(102), Some(111), bad, bad, bad, None, None, bad, bad, None]);
    for r in results.iter().filter(|r| r.get("error").is_some()) {
        assert!(r["error"]["name"].is_string() && r["error"]["message"].is_string(), "{r}");
    }
    assert!(results[5]["error"]["message"].as_str().unwrap().contains("colour"), "named field");
    assert!(results[9]["error"]["message"].as_str().unwrap().contains("`channel`"), "named field");
    let offsets = [0, 7, 10].map(|i| results[i]["offset"].as_u64());
    assert_eq!(offsets, [Some(1), Some(2), Some(3)]);
    let data: Vec<Value> = history(&hub, "a").await.iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, [json!(1), json!(5), json!(8)]);
    assert_eq!(history(&hub, "small:x").await.len(), 1);
}

#[tokio::test]
async fn ndjson_is_one_item_per_line() {
    let hub = Hub::start(CONFIG);
    let body = "{\"channel\":\"a\",\"data\":1}\r\n\n{\"channel\":\"b\",\"data\":2}\n{\"channel\":\"a\",\"data\":3}\n";
    let (status, answer) = post_raw(&hub, body.into(), "application/x-ndjson").await;
    assert_eq!(status, 200, "{answer}");
    let offsets: Vec<Option<u64>> =
        answer["results"].as_array().unwrap().iter().map(|r| r["offset"].as_u64()).collect();
    assert_eq!(offsets, [Some(1), Some(1), Some(2)]);
    let data: Vec<Value> = history(&hub, "a").await.iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, [json!(1), json!(3)]);

    // A line that is not JSON refuses the whole request: nothing is published.
    let body = "{\"channel\":\"c\",\"data\":1}\n{\"channel\":\n";
    let (status, answer) = post_raw(&hub, body.into(), "application/x-ndjson").await;
    assert_eq!((status, answer["error"]["code"].as_u64()), (400, Some(107)), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("line 2"), "{answer}");
    assert!(history(&hub, "c").await.is_empty());
}

#[tokio::test]
async fn a_body_that_is_not_an_array_is_refused_whole() {
    let hub = Hub::start(CONFIG);
    for body in [r#"{"channel":"a","data":1}"#, "", r#"[{"channel":"a","data":1}"#] {
        let (status, answer) = post_raw(&hub, body.into(), "application/json").await;
        assert_eq!((status, answer["error"]["code"].as_u64()), (400, Some(107)), "{body:?}");
    }
    assert!(history(&hub, "a").await.is_empty());
}

#[tokio::test]
async fn more_items_than_the_limit_are_refused() {
    let hub = Hub::start(&format!("[limits]\nmax_batch_items = 10\n{CONFIG}"));
    let items = |n: usize| Value::Array(vec![json!({"channel": "a", "data": 1}); n]);
    let (status, answer) = hub.api("POST", "/api/publish/batch", Some(items(11))).await;
    assert_eq!((status, answer["error"]["code"].as_u64()), (413, Some(111)), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("max_batch_items"));
    assert!(history(&hub, "a").await.is_empty(), "nothing of a refused batch is published");
    assert_eq!(batch(&hub, items(10)).await.len(), 10, "the limit itself is allowed");
}

#[tokio::test]
async fn idempotency_keys_dedupe_within_and_across_batches() {
    let hub = Hub::start(CONFIG);
    let results = batch(
        &hub,
        json!([
            {"channel": "a", "data": 1, "idempotency_key": "k1"},
            {"channel": "a", "data": 2, "idempotency_key": "k1"},
            {"channel": "a", "data": 3, "idempotency_key": "k2"},
        ]),
    )
    .await;
    assert_eq!(results[0].get("duplicate"), None);
    assert_eq!(results[1]["duplicate"], true);
    assert_eq!(results[1]["offset"], results[0]["offset"], "the first result is returned");
    assert_eq!(results[2]["offset"], 2);
    // A later batch and a single publish dedupe against the batch's keys, and the other way.
    let again = batch(&hub, json!([{"channel": "a", "data": 9, "idempotency_key": "k2"}])).await;
    assert_eq!(
        (again[0]["duplicate"].as_bool(), again[0]["offset"].as_u64()),
        (Some(true), Some(2))
    );
    let (_, single) =
        hub.publish_with(json!({"channel": "a", "data": 9, "idempotency_key": "k1"})).await;
    assert_eq!(single["duplicate"], true, "{single}");
    hub.publish_with(json!({"channel": "a", "data": 4, "idempotency_key": "k3"})).await;
    let after = batch(&hub, json!([{"channel": "a", "data": 9, "idempotency_key": "k3"}])).await;
    assert_eq!(after[0]["duplicate"], true);
    let data: Vec<Value> = history(&hub, "a").await.iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, [json!(1), json!(3), json!(4)]);
}

/// On the Redis engine the channels of a batch are published concurrently: 40 channels, 25
/// interleaved items each (some repeating an idempotency key of their channel), and every
/// channel still gets its items in the order given with contiguous offsets, every result sits
/// at its item's place, and a repeated key answers the first item's position.
#[tokio::test]
async fn on_redis_each_channel_keeps_its_order_and_its_keys() {
    let redis = herald_testkit::RedisProcess::start();
    let config = format!("[engine]\nkind = \"redis\"\nredis_url = \"{}\"\n{CONFIG}", redis.url());
    let hub = Hub::start(&config);
    const CHANNELS: usize = 40;
    const PER: usize = 25;
    let mut items = Vec::new();
    for i in 0..CHANNELS * PER {
        let (c, k) = (i % CHANNELS, i / CHANNELS);
        let mut item = json!({"channel": format!("r-{c}"), "data": {"k": k}});
        // Item k = 10 of each channel repeats the key of its item 3.
        if k == 3 || k == 10 {
            item["idempotency_key"] = json!(format!("key-{c}"));
        }
        items.push(item);
    }
    let results = batch(&hub, Value::Array(items)).await;
    assert_eq!(results.len(), CHANNELS * PER);
    for (i, r) in results.iter().enumerate() {
        let (c, k) = (i % CHANNELS, i / CHANNELS);
        assert!(r.get("error").is_none(), "item {i}: {r}");
        assert_eq!(r["channel"], format!("r-{c}"), "results are in item order");
        // Offsets 1..=10 for k 0..=9; k 10 is the duplicate of k 3; after it one fewer.
        let want = match k {
            10 => 4,
            k if k < 10 => k as u64 + 1,
            k => k as u64,
        };
        assert_eq!(r["offset"], want, "item {i} (channel {c}, k {k}): {r}");
        assert_eq!(r.get("duplicate").is_some(), k == 10, "item {i}: {r}");
    }
    for c in 0..CHANNELS {
        let pubs = history(&hub, &format!("r-{c}")).await;
        let ks: Vec<u64> = pubs.iter().map(|p| p["data"]["k"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (0..PER as u64).filter(|k| *k != 10).collect();
        assert_eq!(ks, want, "channel r-{c}: its items, in the order given, once");
        for (n, p) in pubs.iter().enumerate() {
            assert_eq!(p["offset"], n as u64 + 1, "r-{c}: contiguous offsets");
        }
    }
}

/// The first whole HTTP answer in `buf` (status, JSON body) and its length, if it is all there.
fn parse_answer(buf: &[u8]) -> Option<((u16, Value), usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(buf).expect("an HTTP answer") else {
        return None;
    };
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
        .expect("content-length");
    let body = buf.get(head..head + length)?;
    Some(((response.code.unwrap(), serde_json::from_slice(body).unwrap()), head + length))
}

#[tokio::test]
async fn pipelined_publishes_on_one_connection_are_answered_and_delivered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = Hub::start(CONFIG);
    let mut ws = hub.client("u", &["room"]).await;
    ws.subscribe("room").await;
    // 100 requests in one write, the 51st for a namespace that does not exist: it gets its
    // error and the requests behind it are still served.
    const BAD: usize = 50;
    let mut out = String::new();
    for i in 0..100 {
        let channel = if i == BAD { "nope:x" } else { "room" };
        let body = json!({"channel": channel, "data": {"seq": i}}).to_string();
        out.push_str(&format!(
            "POST /api/publish HTTP/1.1\r\nhost: hub\r\nx-api-key: {API_KEY}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    tcp.write_all(out.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    let mut buf = Vec::new();
    while answers.len() < 100 {
        if let Some((answer, used)) = parse_answer(&buf) {
            buf.drain(..used);
            answers.push(answer);
            continue;
        }
        let n = tokio::time::timeout(WAIT, tcp.read_buf(&mut buf)).await.expect("answers");
        assert!(n.unwrap() > 0, "connection closed after {} answers", answers.len());
    }
    let mut offset = 0;
    for (i, (status, body)) in answers.iter().enumerate() {
        if i == BAD {
            assert_eq!((*status, body["error"]["code"].as_u64()), (404, Some(102)), "{body}");
            continue;
        }
        offset += 1;
        assert_eq!((*status, body["offset"].as_u64()), (200, Some(offset)), "answer {i}: {body}");
    }
    for i in (0..100).filter(|i| *i != BAD) {
        let p = ws.next_pub().await;
        let data: Value = serde_json::from_str(p.data.get()).unwrap();
        assert_eq!(data["seq"], i, "delivered in the order written");
    }
}
