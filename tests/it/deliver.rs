//! Delivery acceptance tests (issue 5): the in-process sender against the std-only [`Sink`]
//! under every fault the issue lists; the invariant checked everywhere is "all events arrive,
//! in log order, exactly once" (or are dead-lettered when the backend refuses them for good).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use healert_agent::deliver::http_client::{ApiKey, BackendUrl, Client};
use healert_agent::deliver::{
    self, check_backend, DeliveryOptions, DeliveryStats, Room, SenderHandle,
};
use healert_agent::detect::event::FrictionEvent;
use healert_agent::detect::rules::Severity;
use healert_agent::operate::metrics::Metrics;
use healert_agent::source::position::{FileId, Position};

type Queue = healert_agent::deliver::Queue<Position>;

/// A queue with counters of its own.
fn new_queue(capacity: usize) -> Arc<Queue> {
    Queue::new(capacity, Arc::new(Metrics::new()))
}

/// A sender with counters of its own.
fn spawn_sender(q: Arc<Queue>, client: Client, opts: DeliveryOptions) -> SenderHandle<Position> {
    deliver::spawn_sender(q, client, opts, Arc::new(Metrics::new()))
}

use crate::sink::{Action, Malformed, Sink};
use crate::support::{RefusedPort, TempDir};

/// Hang guard for whole scenarios (never an expectation about speed).
const GUARD: Duration = Duration::from_secs(60);

fn quiet_logs() {
    // 1 000-event runs would print a line per event; warnings and errors stay visible.
    healert_agent::operate::log::init(
        healert_agent::operate::log::Level::Warn,
        healert_agent::operate::log::Format::Text,
    );
}

fn pos(offset: u64) -> Position {
    Position {
        file: FileId {
            dev: 1,
            ino: 2,
            fingerprint: 3,
            fingerprint_len: 64,
        },
        offset,
    }
}

fn event(seq: usize) -> FrictionEvent {
    FrictionEvent {
        entity_ref: format!("component:team-{}/app-{}", seq % 3, seq % 7),
        kind: "kubectl-exec".into(),
        severity: Severity::High,
        actor: "alice@example.com".into(),
        workflow: "debugging".into(),
        description: format!("seq-{seq} exec into pod"),
        timestamp: "2026-11-25T22:50:01Z".into(),
        namespace: format!("team-{}", seq % 3),
        service: format!("app-{}", seq % 7),
        repeat: Default::default(),
    }
}

fn client(sink: &Sink, key: Option<&str>, timeout: Duration) -> Client {
    let url = BackendUrl::parse(&sink.url()).unwrap();
    Client::new(url, key.map(|k| ApiKey::new(k.into())), timeout)
}

fn fast_opts() -> DeliveryOptions {
    DeliveryOptions {
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        auth_retry: Duration::from_millis(50),
        log_each_event: false,
        ..DeliveryOptions::default()
    }
}

/// Pushes `n` events, one per line of 100 bytes, with an event-less line every 5th; like the
/// pipeline's feeder, waits for room before each event (a push itself never blocks).
fn push_all(q: &Queue, n: usize) {
    let mut off = 0;
    for seq in 0..n {
        if seq % 5 == 0 {
            assert!(q.advance_to(pos(off + 50)));
            off += 50;
        }
        while q.wait_for_room(Duration::from_millis(50)) == Room::Full {}
        assert!(q.push_line(pos(off), pos(off + 100), 0, vec![event(seq)]));
        off += 100;
    }
}

fn end_offset(n: usize) -> u64 {
    (n as u64) * 100 + (n as u64).div_ceil(5) * 50
}

/// The `seq-N` of every accepted event, in arrival order.
fn seqs(sink: &Sink) -> Vec<usize> {
    sink.events_json()
        .iter()
        .map(|v| {
            let d = v["description"].as_str().expect("description");
            d.trim_start_matches("seq-")
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Runs the sender over `n` queued events until the queue drains (hang guard: `GUARD`).
fn deliver_all(sink: &Sink, n: usize, client: Client, opts: DeliveryOptions) -> DeliveryStats {
    let q = new_queue(10_000);
    push_all(&q, n);
    let h = spawn_sender(q.clone(), client, opts);
    assert!(
        sink.wait_for_events(n, GUARD),
        "only {} of {n} events arrived",
        sink.events().len()
    );
    let stats = h.finish(Instant::now() + Duration::from_secs(5));
    assert_eq!(q.ack_position(), Some((pos(end_offset(n)), 0)));
    stats
}

fn assert_in_order_exactly_once(sink: &Sink, n: usize) {
    let got = seqs(sink);
    let want: Vec<usize> = (0..n).collect();
    if got != want {
        let dup = got.len() - {
            let mut s = got.clone();
            s.sort();
            s.dedup();
            s.len()
        };
        panic!(
            "{} events arrived ({} duplicates); first difference at {:?}",
            got.len(),
            dup,
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
}

#[test]
fn thousand_events_survive_429_refusal_503_and_a_hung_request() {
    quiet_logs();
    let sink = Sink::builder()
        .every_nth_429(10, Some("1"))
        .down_after(200, Duration::from_secs(5))
        .unavailable_after(500, Duration::from_secs(3))
        .no_answer_once_after(700)
        .chunked()
        .start();
    // Retry-After: 1 is honoured (see `honours_retry_after_seconds`); here it is capped so
    // a hundred 429s do not cost a hundred seconds.
    let opts = DeliveryOptions {
        retry_after_max: Duration::from_millis(30),
        ..fast_opts()
    };
    let stats = deliver_all(
        &sink,
        1000,
        client(&sink, None, Duration::from_secs(1)),
        opts,
    );
    assert_eq!(
        (stats.sent, stats.dead_lettered, stats.pending),
        (1000, 0, 0)
    );
    assert_in_order_exactly_once(&sink, 1000);
    let statuses = sink.statuses();
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 100);
    assert!(statuses.contains(&503));
    assert!(statuses.contains(&0), "the unanswered request happened");
    // The down window really refused connections: the sender had to reconnect after it.
    assert!(sink.connections() >= 2);
}

#[test]
fn thousand_events_over_close_after_each_response() {
    quiet_logs();
    let sink = Sink::builder().close_after_each().start();
    let stats = deliver_all(
        &sink,
        1000,
        client(&sink, None, Duration::from_secs(5)),
        fast_opts(),
    );
    assert_eq!(stats.sent, 1000);
    assert_in_order_exactly_once(&sink, 1000);
    assert_eq!(sink.connections(), 1000, "one connection per response");
}

#[test]
fn thousand_events_reuse_one_connection_and_measure_throughput() {
    quiet_logs();
    let sink = Sink::start();
    let started = Instant::now();
    let stats = deliver_all(
        &sink,
        1000,
        client(&sink, Some("k3y"), Duration::from_secs(5)),
        fast_opts(),
    );
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "delivery throughput (debug build unless --release): {:.0} events/s over one connection",
        1000.0 / secs
    );
    assert_eq!(stats.sent, 1000);
    assert_in_order_exactly_once(&sink, 1000);
    assert_eq!(
        sink.connections(),
        1,
        "keep-alive: one TCP connection for the run"
    );
    let req = &sink.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/events")
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("authorization"), Some("Bearer k3y"));
    assert_eq!(
        req.header("user-agent"),
        Some(format!("healert-agent/{}", healert_agent::VERSION).as_str())
    );
    assert_eq!(req.header("host"), Some(sink.addr().to_string().as_str()));
    assert_eq!(
        req.header("content-length"),
        Some(req.body.len().to_string().as_str())
    );
}

#[test]
fn unauthorized_keeps_events_until_restarted_with_the_right_key() {
    quiet_logs();
    let sink = Sink::builder().api_key("right-key").start();
    let q = new_queue(100);
    push_all(&q, 50);
    let wrong = client(&sink, Some("wrong-key"), Duration::from_secs(5));
    assert!(!format!("{wrong:?}").contains("wrong-key"));
    let h = spawn_sender(q.clone(), wrong, fast_opts());
    let until = Instant::now() + GUARD;
    while sink.statuses().iter().filter(|s| **s == 401).count() < 3 {
        assert!(Instant::now() < until, "no 401 retries seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = h.abort();
    assert_eq!((stats.sent, stats.pending), (0, 50));
    assert!(sink.events().is_empty());
    // The checkpoint would still point at the first event: nothing was acknowledged.
    assert_eq!(q.ack_position(), Some((pos(50), 0)));

    // "Fix the Secret and restart": a sender with the right key drains the same events.
    let right = client(&sink, Some("right-key"), Duration::from_secs(5));
    let h = spawn_sender(q.clone(), right, fast_opts());
    assert!(sink.wait_for_events(50, GUARD));
    let stats = h.finish(Instant::now() + Duration::from_secs(5));
    assert_eq!((stats.sent, stats.pending), (50, 0));
    assert_in_order_exactly_once(&sink, 50);
}

#[test]
fn refused_events_are_dead_lettered_and_the_rest_delivered() {
    quiet_logs();
    let sink = Sink::builder()
        .reject_containing("seq-13 ", 422)
        .reject_containing("seq-50 ", 400)
        .start();
    let dir = TempDir::new("deliver", "dead-letter");
    let dl = dir.join("dead-letter.jsonl");
    let opts = DeliveryOptions {
        dead_letter_path: Some(dl.clone()),
        ..fast_opts()
    };
    let m = Arc::new(Metrics::new());
    let q = Queue::new(1000, Arc::clone(&m));
    push_all(&q, 100);
    let h = deliver::spawn_sender(
        q.clone(),
        client(&sink, None, Duration::from_secs(5)),
        opts,
        Arc::clone(&m),
    );
    assert!(sink.wait_for_events(98, GUARD));
    let stats = h.finish(Instant::now() + Duration::from_secs(5));
    assert_eq!((stats.sent, stats.dead_lettered, stats.pending), (98, 2, 0));
    let want: Vec<usize> = (0..100).filter(|s| *s != 13 && *s != 50).collect();
    assert_eq!(seqs(&sink), want);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["description"], "seq-13 exec into pod");
    assert_eq!(lines[1]["description"], "seq-50 exec into pod");
    assert_eq!(q.ack_position(), Some((pos(end_offset(100)), 0)));
    // This sender's own counters: exact.
    assert_eq!(
        m.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let rejected = m.events_rejected.lock().unwrap().clone();
    assert_eq!(rejected, [(400, 1), (422, 1)].into_iter().collect());
    assert_eq!(m.events_sent.lock().unwrap().get("kubectl-exec"), Some(&98));
}

#[test]
fn malformed_responses_are_survived_and_retried() {
    quiet_logs();
    let sink = Sink::builder()
        .script(vec![
            Action::Malformed(Malformed::NoStatusLine),
            Action::Malformed(Malformed::HugeHeader(10 * 1024 * 1024)),
            Action::Malformed(Malformed::NegativeContentLength),
            Action::Malformed(Malformed::BadChunkSize),
            Action::Malformed(Malformed::Slowloris),
            Action::Close,
            Action::Status(500),
            Action::RetryAfter(503, "garbage".into()),
        ])
        .start();
    let stats = deliver_all(
        &sink,
        20,
        client(&sink, None, Duration::from_millis(800)),
        fast_opts(),
    );
    assert_eq!((stats.sent, stats.pending), (20, 0));
    assert_in_order_exactly_once(&sink, 20);
    // All eight faults hit the first event, which was then delivered on the ninth try.
    assert_eq!(&sink.statuses()[..9], &[0, 0, 0, 0, 0, 0, 500, 503, 200]);
}

#[test]
fn honours_retry_after_seconds() {
    quiet_logs();
    let sink = Sink::builder().every_nth_429(3, Some("1")).start();
    deliver_all(
        &sink,
        4,
        client(&sink, None, Duration::from_secs(5)),
        fast_opts(),
    );
    assert_in_order_exactly_once(&sink, 4);
    let posts: Vec<_> = sink
        .requests()
        .into_iter()
        .filter(|r| r.path == "/events")
        .collect();
    let statuses = sink.statuses();
    assert_eq!(&statuses[..4], &[200, 200, 429, 200]);
    // Lower bound only: the retry must not come before the backend said.
    assert!(posts[3].at.duration_since(posts[2].at) >= Duration::from_millis(950));
}

#[test]
fn pacing_spaces_requests() {
    quiet_logs();
    let sink = Sink::start();
    let opts = DeliveryOptions {
        max_events_per_minute: 120,
        ..fast_opts()
    };
    deliver_all(&sink, 4, client(&sink, None, Duration::from_secs(5)), opts);
    let posts = sink.requests();
    // Lower bound only, 500 ms apart at the client; 100 ms of slack for the time a request
    // takes to reach the sink on a loaded machine.
    for w in posts.windows(2) {
        assert!(w[1].at.duration_since(w[0].at) >= Duration::from_millis(400));
    }
}

#[test]
fn full_queue_pauses_the_producer_and_loses_nothing() {
    quiet_logs();
    let sink = Sink::builder().delay(Duration::from_millis(1)).start();
    let q = new_queue(8);
    let h = spawn_sender(
        q.clone(),
        client(&sink, None, Duration::from_secs(5)),
        fast_opts(),
    );
    let (tx, rx) = mpsc::channel();
    let qp = Arc::clone(&q);
    std::thread::spawn(move || {
        push_all(&qp, 200);
        let _ = tx.send(());
    });
    let mut max_len = 0;
    while rx.try_recv().is_err() {
        max_len = max_len.max(q.len());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(max_len <= 8, "queue held {max_len} > capacity");
    assert!(sink.wait_for_events(200, GUARD));
    h.finish(Instant::now() + Duration::from_secs(5));
    assert_in_order_exactly_once(&sink, 200);
}

#[test]
fn finish_deadline_interrupts_backoff_and_keeps_events() {
    quiet_logs();
    let q = new_queue(10);
    push_all(&q, 5);
    // Production options; the second answer asks for 10 minutes (Retry-After: 600).
    let opts = DeliveryOptions {
        log_each_event: false,
        ..DeliveryOptions::default()
    };
    let sink = Sink::builder()
        .script(vec![
            Action::Status(503),
            Action::RetryAfter(503, "600".into()),
        ])
        .start();
    let h = spawn_sender(q.clone(), client(&sink, None, Duration::from_secs(5)), opts);
    let until = Instant::now() + GUARD;
    while sink.statuses().len() < 2 {
        assert!(Instant::now() < until);
        std::thread::sleep(Duration::from_millis(10));
    }
    // The sender now waits 10 minutes: finish, given 200 ms, must return soon after them. The
    // bound (10 s) is 50 times the deadline and 60 times shorter than the wait it interrupts.
    let (tx, rx) = mpsc::channel();
    let asked = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(h.finish(Instant::now() + Duration::from_millis(200)));
    });
    let stats = rx.recv_timeout(GUARD).expect("finish hung");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "finish took {took:?} with a 200 ms deadline"
    );
    assert_eq!((stats.sent, stats.pending), (0, 5));
    assert_eq!(q.ack_position().map(|p| p.1), Some(0));
}

#[test]
fn backend_check_reports_version_and_auth() {
    let sink = Sink::start();
    let h = check_backend(&mut client(&sink, None, Duration::from_secs(5))).unwrap();
    assert_eq!((h.version.as_str(), h.auth_enabled), ("test", false));
    assert_eq!(h.to_string(), "version=test auth=disabled");
    let authed = Sink::builder().api_key("x").start();
    let h = check_backend(&mut client(&authed, None, Duration::from_secs(5))).unwrap();
    assert!(h.auth_enabled);

    let wrong_base = BackendUrl::parse(&format!("{}/nope/", sink.url())).unwrap();
    let e = check_backend(&mut Client::new(wrong_base, None, Duration::from_secs(5))).unwrap_err();
    assert!(
        e.contains("404") && e.contains("HEALERT_BACKEND_URL"),
        "{e}"
    );

    let refused = RefusedPort::new();
    let down = BackendUrl::parse(&refused.url()).unwrap();
    let e = check_backend(&mut Client::new(down, None, Duration::from_secs(2))).unwrap_err();
    assert!(e.contains("cannot connect"), "{e}");
}

#[test]
fn delivers_over_ipv6_loopback() {
    quiet_logs();
    let sink = Sink::builder().ipv6().try_start().unwrap_or_else(|e| {
        panic!(
            "this test delivers over the IPv6 loopback [::1] and cannot run without it ({e}); \
             enable IPv6 on `lo` (sysctl net.ipv6.conf.lo.disable_ipv6=0)"
        )
    });
    assert!(sink.url().starts_with("http://[::1]:"));
    deliver_all(
        &sink,
        10,
        client(&sink, None, Duration::from_secs(5)),
        fast_opts(),
    );
    assert_in_order_exactly_once(&sink, 10);
}

#[test]
fn connection_closed_while_idle_is_resent_without_a_retry() {
    quiet_logs();
    let sink = Sink::builder()
        .idle_close(Duration::from_millis(30))
        .start();
    let q = new_queue(10);
    let h = spawn_sender(
        q.clone(),
        client(&sink, None, Duration::from_secs(5)),
        fast_opts(),
    );
    for seq in 0..3 {
        let off = seq as u64 * 100;
        assert!(q.push_line(pos(off), pos(off + 100), 0, vec![event(seq)]));
        assert!(sink.wait_for_events(seq + 1, GUARD));
        // The sink's idle timeout closes the kept-alive connection: wait until it has.
        let until = Instant::now() + GUARD;
        while sink.open_connections() > 0 {
            assert!(
                Instant::now() < until,
                "the sink never closed the idle connection"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let stats = h.finish(Instant::now() + Duration::from_secs(5));
    assert_eq!((stats.sent, stats.retries), (3, 0));
    assert_in_order_exactly_once(&sink, 3);
    assert_eq!(sink.connections(), 3);
}

#[test]
fn sink_serves_stored_events_by_entity_ref() {
    quiet_logs();
    let sink = Sink::start();
    deliver_all(
        &sink,
        21,
        client(&sink, None, Duration::from_secs(5)),
        fast_opts(),
    );
    let mut c = client(&sink, None, Duration::from_secs(5));
    let r = c.get("/friction/component%3Ateam-1/app-1").unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["entityRef"], "component:team-1/app-1");
    assert_eq!(v["frictionScore"]["bypassCount"], 1);
    let got: Vec<&str> = v["recentEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["description"].as_str().unwrap())
        .collect();
    // seq % 3 == 1 and seq % 7 == 1: 1 and 1 + 21 (out of range).
    assert_eq!(got, ["seq-1 exec into pod"]);
}

/// Issue 17 finding 2: a backend (or a proxy in front of it) answering 404 for a while — a
/// wrong base path, a reconfiguration — then 200 loses no event and acknowledges nothing
/// early: 404 is retried with backoff like a 5xx, never dead-lettered, and the acknowledged
/// position stays at the first event for as long as the 404s last.
#[test]
fn a_backend_answering_404_for_a_while_then_200_loses_nothing_and_acknowledges_nothing_early() {
    quiet_logs();
    let sink = Sink::builder()
        .status_for(404, Duration::from_secs(3))
        .start();
    let dir = TempDir::new("deliver", "404-window");
    let dl = dir.join("dead-letter.jsonl");
    let opts = DeliveryOptions {
        dead_letter_path: Some(dl.clone()),
        ..fast_opts()
    };
    let m = Arc::new(Metrics::new());
    let q = Queue::new(1000, Arc::clone(&m));
    push_all(&q, 20);
    let h = deliver::spawn_sender(
        q.clone(),
        client(&sink, None, Duration::from_secs(5)),
        opts,
        Arc::clone(&m),
    );
    // While the 404s last, the front stays the first event (seq 0, after an event-less line).
    // The sender counts a 2xx before it pops the event: a position read while nothing was
    // counted yet was read before anything could be acknowledged.
    let sent = || m.events_sent.lock().unwrap().values().sum::<u64>();
    let until = Instant::now() + GUARD;
    let mut seen_404 = 0;
    while sent() == 0 {
        assert!(Instant::now() < until, "the 404 window never ended");
        let acked = q.ack_position();
        if sent() == 0 {
            assert_eq!(acked, Some((pos(50), 0)), "acknowledged during the 404s");
        }
        seen_404 = sink.statuses().iter().filter(|s| **s == 404).count();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(seen_404 >= 2, "the sink answered 404 only {seen_404} times");
    assert!(sink.wait_for_events(20, GUARD));
    let stats = h.finish(Instant::now() + Duration::from_secs(5));
    assert_eq!((stats.sent, stats.dead_lettered, stats.pending), (20, 0, 0));
    assert!(stats.retries >= 2, "{stats:?}");
    assert_in_order_exactly_once(&sink, 20);
    assert!(!dl.exists(), "something was dead-lettered");
    assert_eq!(q.ack_position(), Some((pos(end_offset(20)), 0)));
}
