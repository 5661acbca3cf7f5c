//! Upstream servers written as DNS names, resolved through a name server the test runs on
//! loopback: answers are kept for their TTL, and a changed record moves new connections to the
//! new address once the old answer has expired.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use http::Response;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, get};
use tokio::net::UdpSocket;

/// An authoritative name server for a few names, answering A queries from `zone` and counting
/// them.
#[derive(Default)]
struct Zone {
    records: Mutex<HashMap<String, (Ipv4Addr, u32)>>,
    a_queries: Mutex<HashMap<String, usize>>,
}

impl Zone {
    fn set(&self, name: &str, address: Ipv4Addr, ttl: u32) {
        self.records.lock().unwrap().insert(name.to_owned(), (address, ttl));
    }

    fn queries(&self, name: &str) -> usize {
        self.a_queries.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .set_authoritative(true);
        response.add_queries(request.queries().to_vec());
        for question in request.queries() {
            let name = question.name().to_ascii().trim_end_matches('.').to_owned();
            let Some((address, ttl)) = self.records.lock().unwrap().get(&name).copied() else {
                response.set_response_code(ResponseCode::NXDomain);
                continue;
            };
            if question.query_type() == RecordType::A {
                *self.a_queries.lock().unwrap().entry(name).or_default() += 1;
                response.add_answer(Record::from_rdata(question.name().clone(), ttl, RData::A(A::from(address))));
            }
        }
        response.to_bytes().ok()
    }
}

async fn name_server(zone: Arc<Zone>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind name server");
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
            if let Some(answer) = zone.answer(&buffer[..length]) {
                let _ = socket.send_to(&answer, peer).await;
            }
        }
    });
    address
}

/// An origin on `ip:port` naming itself in its body.
async fn origin_on(ip: Ipv4Addr, port: u16, name: &'static str) -> Origin {
    Origin::start_on(SocketAddr::from((ip, port)), move |_| Box::pin(async move { Response::new(body::full(name)) }))
        .await
}

#[tokio::test]
async fn names_are_resolved_on_their_ttl_and_changes_followed() {
    // Two origins on one port at two loopback addresses: where a name points decides which answers.
    let first = Origin::start(|_| Box::pin(async { Response::new(body::full("first")) })).await;
    let port = first.addr.port();
    let second = origin_on(Ipv4Addr::new(127, 0, 0, 2), port, "second").await;
    let zone = Arc::new(Zone::default());
    zone.set("cached.test", Ipv4Addr::LOCALHOST, 3600);
    zone.set("live.test", Ipv4Addr::LOCALHOST, 0);
    let dns = name_server(zone.clone()).await;

    // No idle connections are kept, so every request opens a connection and resolves its name.
    let proxy = TestProxy::start(&format!(
        "[resolver]\nnameservers = [\"{dns}\"]\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\n\
         [upstream.cached]\nservers = [{{ addr = \"cached.test:{port}\" }}]\npool_max_idle_per_server = 0\n\
         [upstream.live]\nservers = [{{ addr = \"live.test:{port}\" }}]\npool_max_idle_per_server = 0\n\
         [[route]]\nhost = \"cached.example\"\nupstream = \"cached\"\n\
         [[route]]\nhost = \"live.example\"\nupstream = \"live\"\n"
    ))
    .await;

    for _ in 0..3 {
        assert_eq!(get(&proxy, "cached.example", "/").await.text(), "first");
        assert_eq!(get(&proxy, "live.example", "/").await.text(), "first");
    }
    assert_eq!(zone.queries("cached.test"), 1, "an hour's TTL: asked once, then answered from the cache");
    assert!(zone.queries("live.test") >= 3, "a zero TTL is asked again for each connection");

    zone.set("cached.test", Ipv4Addr::new(127, 0, 0, 2), 3600);
    zone.set("live.test", Ipv4Addr::new(127, 0, 0, 2), 0);
    assert_eq!(get(&proxy, "live.example", "/").await.text(), "second", "the changed record is followed");
    assert_eq!(get(&proxy, "cached.example", "/").await.text(), "first", "the cached answer is still valid");
    assert_eq!(zone.queries("cached.test"), 1);
    drop(second);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_fails_its_requests_with_502() {
    let zone = Arc::new(Zone::default());
    let dns = name_server(zone.clone()).await;
    let proxy = TestProxy::start(&format!(
        "[resolver]\nnameservers = [\"{dns}\"]\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
         [upstream.gone]\nservers = [{{ addr = \"missing.test:80\" }}]\n[[route]]\nupstream = \"gone\"\n"
    ))
    .await;
    let response = get(&proxy, "app.example", "/").await;
    assert_eq!(response.status, 502);
}
