//! Presence and volatile events through the Rust client against the real hub (protocol §15,
//! §16): two clients see each other join, update and leave with equal member maps; a client cut
//! through the proxy while members change resumes its map (with `presence_since`, no fresh list)
//! to what `GET /api/presence` lists; volatile events reach the other client with the sender's
//! ids; counts follow joins and leaves. Needs `cargo build --bins` first (the hub binary is not
//! built by the tests).

mod support;

use herald_client::{
    BackoffPolicy, Client, Member, PresenceMode, SubEvent, SubscribeOptions, Subscription,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use support::proxy::{Cut, Proxy};

const API_KEY: &str = "testkey";
const SECRET: &str = "testsecret";
const CHANNEL: &str = "room:1";
const WAIT: Duration = Duration::from_secs(10);

/// What the tests compare of a member: user and info (the list carries `client` and `node`,
/// events do not).
type Members = BTreeMap<String, (String, Option<Value>)>;

fn start_hub() -> herald_testkit::HeraldProcess {
    let config = "[limits]\ncommands_per_second = 0\n\n[namespaces.room]\npresence = true\n\
                  client_publish = true\npresence_window = \"50ms\"\n";
    herald_testkit::HeraldProcess::start(
        &herald_testkit::herald_bin(),
        config,
        &["--api-key", API_KEY, "--token-secret", SECRET],
    )
}

fn client(url: &str, user: &str) -> Client {
    let exp = herald_testkit::unix_now() + 3600;
    let token = herald_testkit::hs256_token(
        SECRET,
        &json!({"sub": user, "exp": exp, "channels": ["room:*"], "publish": ["room:*"]}),
    );
    Client::builder()
        .url(url)
        .token(token)
        .backoff(BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: true,
            breaker_after: None,
        })
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn following(info: Value) -> SubscribeOptions {
    SubscribeOptions::default().presence(PresenceMode::Members).info(info)
}

fn project(members: &BTreeMap<String, Member>) -> Members {
    members.iter().map(|(id, m)| (id.clone(), (m.user.clone(), m.info.clone()))).collect()
}

/// Every member of `channel` as `GET /api/presence` lists them.
async fn api_members(hub: &herald_testkit::HeraldProcess) -> Members {
    let url = format!("{}/api/presence?channel={CHANNEL}&limit=1000", hub.http_url());
    let body: Value = reqwest::Client::new()
        .get(url)
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("GET /api/presence")
        .json()
        .await
        .expect("presence body");
    body["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let info = m.get("info").filter(|v| !v.is_null()).cloned();
            (m["member"].as_str().unwrap().into(), (m["user"].as_str().unwrap().into(), info))
        })
        .collect()
}

/// `GET /api/presence_stats`: (members, users).
async fn api_counts(hub: &herald_testkit::HeraldProcess) -> (u64, u64) {
    let url = format!("{}/api/presence_stats?channel={CHANNEL}", hub.http_url());
    let body: Value = reqwest::Client::new()
        .get(url)
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("GET /api/presence_stats")
        .json()
        .await
        .expect("stats body");
    (body["members"].as_u64().unwrap(), body["users"].as_u64().unwrap())
}

async fn next(sub: &mut Subscription) -> SubEvent {
    match tokio::time::timeout(WAIT, sub.next_event()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("subscription to {} ended", sub.channel()),
        Err(_) => {
            panic!("no event on {} within {WAIT:?}; members {:?}", sub.channel(), sub.presence())
        }
    }
}

/// Reads events until the member map satisfies `done`; returns the events read.
async fn until(
    sub: &mut Subscription,
    done: impl Fn(&BTreeMap<String, Member>) -> bool,
) -> Vec<SubEvent> {
    let mut seen = Vec::new();
    while !done(sub.presence()) {
        let event = next(sub).await;
        if let SubEvent::Ended { error } = &event {
            panic!("subscription ended: {error}");
        }
        seen.push(event);
    }
    seen
}

/// The member id a client's subscriptions get by default.
fn id(user: &str, c: &Client) -> String {
    format!("{user}/{}", c.member_id())
}

#[tokio::test]
async fn two_clients_see_each_other_join_update_and_leave() {
    let hub = start_hub();
    let alice = client(&hub.ws_url(), "alice");
    let bob = client(&hub.ws_url(), "bob");
    let (a_id, b_id) = (id("alice", &alice), id("bob", &bob));

    let mut a = alice.subscribe(CHANNEL, following(json!({"name": "Alice"})));
    assert!(matches!(next(&mut a).await, SubEvent::Subscribed { .. }));
    assert!(matches!(next(&mut a).await, SubEvent::PresenceList { .. }));
    until(&mut a, |m| m.contains_key(&a_id)).await;

    let mut b = bob.subscribe(CHANNEL, following(json!({"name": "Bob"})));
    until(&mut b, |m| m.len() == 2).await;
    let joined = until(&mut a, |m| m.contains_key(&b_id)).await;
    assert!(
        joined.iter().any(|e| matches!(e, SubEvent::Join { member } if member.member == b_id
            && member.user == "bob" && member.info == Some(json!({"name": "Bob"})))),
        "alice saw bob's join: {joined:?}"
    );
    assert_eq!(project(a.presence()), project(b.presence()));
    assert_eq!(project(a.presence()), api_members(&hub).await);
    // The list carries where each member is connected.
    let alice_in_bobs = &b.presence()[&a_id];
    assert_eq!(alice_in_bobs.client.as_deref(), alice.connect_info().map(|i| i.client).as_deref());

    b.set_presence(json!({"name": "Bob", "editing": "t1"})).await.expect("presence_update");
    let edited = |m: &BTreeMap<String, Member>| {
        m.get(&b_id).is_some_and(|b| b.info == Some(json!({"name": "Bob", "editing": "t1"})))
    };
    let updated = until(&mut a, edited).await;
    assert!(
        updated.iter().any(|e| matches!(e, SubEvent::Update { member } if member.member == b_id))
    );
    until(&mut b, edited).await;
    assert_eq!(project(a.presence()), project(b.presence()));
    assert_eq!(project(a.presence()), api_members(&hub).await);

    drop(b);
    let left = until(&mut a, |m| !m.contains_key(&b_id)).await;
    assert!(
        left.iter().any(|e| matches!(e, SubEvent::Leave { member } if member.member == b_id
            && member.info == Some(json!({"name": "Bob", "editing": "t1"})))),
        "a leave yields the member as it was held: {left:?}"
    );
    assert_eq!(a.presence().keys().collect::<Vec<_>>(), [&a_id]);
    assert_eq!(project(a.presence()), api_members(&hub).await);
}

#[tokio::test]
async fn a_cut_client_resumes_presence_to_the_hubs_members() {
    let hub = start_hub();
    let proxy = Proxy::start(hub.addr).await;
    let (alice, watcher) = (client(&proxy.ws_url(), "alice"), client(&hub.ws_url(), "watcher"));
    let (bob, carol) = (client(&hub.ws_url(), "bob"), client(&hub.ws_url(), "carol"));
    let (a_id, w_id) = (id("alice", &alice), id("watcher", &watcher));
    let (b_id, c_id) = (id("bob", &bob), id("carol", &carol));

    let mut w = watcher.subscribe(CHANNEL, following(json!({"w": true})));
    let b = bob.subscribe(CHANNEL, following(json!({"name": "Bob"})));
    let mut a = alice.subscribe(CHANNEL, following(json!({"name": "Alice"})));
    let all = [&a_id, &w_id, &b_id];
    until(&mut a, |m| all.iter().all(|id| m.contains_key(*id))).await;
    until(&mut w, |m| all.iter().all(|id| m.contains_key(*id))).await;

    // Cut alice and keep her away while bob changes, carol joins and bob leaves again.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    proxy.set_upstream(dead);
    proxy.cut_all(Cut::Rst);
    b.set_presence(json!({"name": "Bob", "editing": "t2"})).await.expect("presence_update");
    let c = carol.subscribe(CHANNEL, SubscribeOptions::default().info(json!({"name": "Carol"})));
    until(&mut w, |m| {
        !m.contains_key(&a_id)
            && m.contains_key(&c_id)
            && m.get(&b_id).is_some_and(|b| b.info == Some(json!({"name": "Bob", "editing": "t2"})))
    })
    .await;
    drop(b);
    until(&mut w, |m| !m.contains_key(&b_id)).await;

    proxy.set_upstream(hub.addr);
    let resumed =
        until(&mut a, |m| m.contains_key(&a_id) && m.contains_key(&c_id) && !m.contains_key(&b_id))
            .await;
    assert!(
        !resumed.iter().any(|e| matches!(e, SubEvent::PresenceList { .. })),
        "the resume was served from presence_since, without a fresh list: {resumed:?}"
    );
    assert!(
        resumed.iter().any(|e| matches!(e, SubEvent::Leave { member } if member.member == a_id)),
        "alice's own leave while she was away is among what she missed: {resumed:?}"
    );
    until(&mut w, |m| m.contains_key(&a_id)).await;
    let api = api_members(&hub).await;
    assert_eq!(project(a.presence()), api);
    assert_eq!(project(w.presence()), api);
    assert_eq!(api.keys().collect::<Vec<_>>(), {
        let mut ids = vec![&a_id, &c_id, &w_id];
        ids.sort();
        ids
    });
    drop(c);
}

#[tokio::test]
async fn volatile_events_reach_the_other_client() {
    let hub = start_hub();
    let (alice, bob) = (client(&hub.ws_url(), "alice"), client(&hub.ws_url(), "bob"));
    let mut a = alice.subscribe(CHANNEL, SubscribeOptions::default());
    assert!(matches!(next(&mut a).await, SubEvent::Subscribed { .. }));
    bob.wait_connected(WAIT).await.expect("bob connects");
    bob.volatile(CHANNEL, "cursor", &json!({"x": 120, "y": 80})).await.expect("volatile");
    let bob_client = bob.connect_info().expect("bob is connected").client;
    // Plain subscribers on a presence namespace are members too, but follow no list: the next
    // event is the volatile one, and it is no publication.
    match next(&mut a).await {
        SubEvent::Volatile { kind, data, user, client } => {
            assert_eq!((kind.as_str(), user.as_str()), ("cursor", "bob"));
            assert_eq!(data, json!({"x": 120, "y": 80}));
            assert_eq!(client, bob_client);
        }
        other => panic!("expected the volatile event, got {other:?}"),
    }
    let history = alice
        .history(herald_client::herald_protocol::command::HistoryQuery {
            channel: CHANNEL.into(),
            ..Default::default()
        })
        .await
        .expect("history");
    assert!(history.publications.is_empty(), "volatile events are kept in no history");
}

#[tokio::test]
async fn counts_follow_joins_and_leaves() {
    let hub = start_hub();
    let watcher = client(&hub.ws_url(), "watcher");
    let mut w =
        watcher.subscribe(CHANNEL, SubscribeOptions::default().presence(PresenceMode::Counts));
    assert!(matches!(next(&mut w).await, SubEvent::Subscribed { .. }));
    /// Reads counts until they are `target` (intermediate ones may be seen first).
    async fn wait_counts(w: &mut Subscription, target: (u64, u64)) {
        loop {
            match next(w).await {
                SubEvent::PresenceCounts { members, users } if (members, users) == target => return,
                SubEvent::PresenceCounts { .. } => {}
                other => panic!("counts mode yields counts only: {other:?}"),
            }
        }
    }
    wait_counts(&mut w, (1, 1)).await;
    let (alice, alice_phone) = (client(&hub.ws_url(), "alice"), client(&hub.ws_url(), "alice"));
    let a = alice.subscribe(CHANNEL, SubscribeOptions::default());
    let phone = alice_phone.subscribe(CHANNEL, SubscribeOptions::default().member("phone"));
    wait_counts(&mut w, (3, 2)).await;
    assert_eq!(api_counts(&hub).await, (3, 2));
    assert!(w.presence().is_empty(), "counts keep no member map");
    drop(phone);
    wait_counts(&mut w, (2, 2)).await;
    assert_eq!(api_counts(&hub).await, (2, 2));
    drop(a);
}
