//! How a host follows its leader: it moves to a new leader as soon as the old one's
//! transport goes silent and another node names a newer leadership (not a request timeout
//! later), and it keeps the session of a leader that is alive but slow to answer (a
//! re-dial would only add a handshake to a busy leader's load).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use qvdc_host::agent::REQUEST_TIMEOUT_MS;
use qvdc_transport::{
    protocol::{HostMessage, HostReply, LeaderHint, Leadership, Request, Response},
    quic, Endpoint,
};
use tokio::{net::UdpSocket, sync::mpsc, time::Instant};

mod support;

use support::{certificates, identity, start_sim_agent_in};

const OLD: Leadership = Leadership { term: 5, node: 1 };
const NEW: Leadership = Leadership { term: 6, node: 2 };

/// A stand-in control-plane node: answers every host request on every connection with
/// `answer`, after `delay`; reports each request (and on which connection, by number).
fn serve(
    endpoint: Endpoint,
    delay: Duration,
    answer: impl Fn(&HostMessage) -> HostReply + Send + Sync + 'static,
) -> (
    mpsc::UnboundedReceiver<(usize, HostMessage)>,
    Arc<AtomicUsize>,
) {
    serve_any(endpoint, delay, move |message| {
        Response::Host(answer(message))
    })
}

/// [`serve`], with answers that need not be host replies (a follower's `NotLeader`).
fn serve_any(
    endpoint: Endpoint,
    delay: Duration,
    answer: impl Fn(&HostMessage) -> Response + Send + Sync + 'static,
) -> (
    mpsc::UnboundedReceiver<(usize, HostMessage)>,
    Arc<AtomicUsize>,
) {
    let (seen, requests) = mpsc::unbounded_channel();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(connection) = incoming.await else {
                continue;
            };
            let number = accepted.fetch_add(1, Ordering::SeqCst) + 1;
            let (seen, answer) = (seen.clone(), answer.clone());
            tokio::spawn(async move {
                while let Ok((send, mut recv)) = connection.accept_bi().await {
                    let (seen, answer) = (seen.clone(), answer.clone());
                    tokio::spawn(async move {
                        let Ok(Request::Host(message)) = quic::read_request(&mut recv).await else {
                            return;
                        };
                        let reply = answer(&message);
                        let _ = seen.send((number, message));
                        tokio::time::sleep(delay).await;
                        let _ = quic::respond(send, &reply).await;
                    });
                }
            });
        }
    });
    (requests, connections)
}

fn standard(leadership: Leadership) -> impl Fn(&HostMessage) -> HostReply {
    move |message| match message {
        HostMessage::Register { .. } => HostReply::Registered { leadership },
        _ => HostReply::HeartbeatAck,
    }
}

/// A UDP relay in front of `to` that can be cut: from then on it drops every datagram
/// both ways, as a machine that lost power would (nothing is closed, nothing refused).
async fn relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    {
        let (front, back, cut, client) = (front.clone(), back.clone(), cut.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                if !cut.load(Ordering::SeqCst) {
                    let _ = back.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    {
        let cut = cut.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let to_client = *client.lock().unwrap();
                if let (false, Some(to_client)) = (cut.load(Ordering::SeqCst), to_client) {
                    let _ = front.send_to(&buf[..n], to_client).await;
                }
            }
        });
    }
    (addr, cut)
}

fn node(dir: &std::path::Path, name: &str) -> Endpoint {
    Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity(dir, name), true).unwrap()
}

async fn next(
    requests: &mut mpsc::UnboundedReceiver<(usize, HostMessage)>,
    within: Duration,
) -> (usize, HostMessage) {
    tokio::time::timeout(within, requests.recv())
        .await
        .expect("the host sent nothing in time")
        .expect("the stand-in stopped")
}

/// Starts an agent with `cluster` and waits until it registers with the first node, whose
/// requests `to_first` reports.
async fn registered_with(
    dir: &std::path::Path,
    cluster: [SocketAddr; 2],
    to_first: &mut mpsc::UnboundedReceiver<(usize, HostMessage)>,
) -> tokio::task::JoinHandle<()> {
    let agent = start_sim_agent_in(dir, cluster.to_vec(), None);
    let (_, first) = next(to_first, Duration::from_secs(10)).await;
    assert!(matches!(first, HostMessage::Register { .. }), "{first:?}");
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_moves_to_a_new_leader_as_soon_as_the_old_one_goes_silent() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let old = node(dir.path(), "node-1");
    let (old_relayed, cut) = relay(old.local_addr().unwrap()).await;
    let (mut to_old, _) = serve(old, Duration::ZERO, standard(OLD));
    // node-2 follows node-1 until the cut, and leads at term 6 from then on.
    let new = node(dir.path(), "node-2");
    let new_addr = new.local_addr().unwrap();
    let elected = Arc::new(AtomicBool::new(false));
    let leads = elected.clone();
    let (mut to_new, _) = serve(new, Duration::ZERO, move |message| match message {
        HostMessage::WhoLeads { .. } if leads.load(Ordering::SeqCst) => HostReply::Leader {
            leadership: Some(NEW),
            addr: Some(new_addr.to_string()),
        },
        HostMessage::WhoLeads { .. } => HostReply::Leader {
            leadership: Some(OLD),
            addr: Some(old_relayed.to_string()),
        },
        other => standard(NEW)(other),
    });

    let within = Duration::from_secs(10);
    let _agent = registered_with(dir.path(), [old_relayed, new_addr], &mut to_old).await;
    // Heartbeats flow (every 200 ms in these tests).
    for _ in 0..3 {
        next(&mut to_old, within).await;
    }
    cut.store(true, Ordering::SeqCst);
    elected.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let registered = loop {
        let (_, message) = next(&mut to_new, within).await;
        if matches!(message, HostMessage::Register { .. }) {
            break cut_at.elapsed();
        }
    };
    eprintln!("old leader silent -> registered with the new one after {registered:?}");
    assert!(
        registered < Duration::from_millis(REQUEST_TIMEOUT_MS) * 3 / 4,
        "the host waited {registered:?} for a leader that acknowledged nothing; it should \
         have asked another node within a fraction of a second"
    );
    let (_, heartbeat) = next(&mut to_new, within).await;
    assert!(
        matches!(heartbeat, HostMessage::Capabilities { .. }),
        "{heartbeat:?}"
    );
}

/// A host learns of a new leader from the node it watches, when the election ends, even
/// while its old leader still acknowledges and answers everything (a deposed leader that
/// does not know it yet, or a dead one whose heartbeat is not due).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_moves_when_the_node_it_watches_names_a_newer_leader() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let old = node(dir.path(), "node-1");
    let old_addr = old.local_addr().unwrap();
    let (mut to_old, _) = serve(old, Duration::ZERO, standard(OLD));
    let new = node(dir.path(), "node-2");
    let new_addr = new.local_addr().unwrap();
    let elected = Arc::new(AtomicBool::new(false));
    let leads = elected.clone();
    let (mut to_new, _) = serve(new, Duration::ZERO, move |message| match message {
        HostMessage::WatchLeader { newer_than, .. } => {
            assert_eq!(
                *newer_than, OLD,
                "the host watches for a leader after its own"
            );
            let known = if leads.load(Ordering::SeqCst) {
                NEW
            } else {
                OLD
            };
            HostReply::Leader {
                leadership: Some(known),
                addr: Some(if known == NEW { new_addr } else { old_addr }.to_string()),
            }
        }
        other => standard(NEW)(other),
    });

    let within = Duration::from_secs(10);
    let _agent = registered_with(dir.path(), [old_addr, new_addr], &mut to_old).await;
    // The host watches from node-2 while it heartbeats to node-1.
    assert!(matches!(
        next(&mut to_new, within).await.1,
        HostMessage::WatchLeader { .. }
    ));
    elected.store(true, Ordering::SeqCst);
    let elected_at = Instant::now();
    let (connection, registered) = loop {
        let (connection, message) = next(&mut to_new, within).await;
        if matches!(message, HostMessage::Register { .. }) {
            break (connection, elected_at.elapsed());
        }
    };
    eprintln!("new leader named -> registered with it after {registered:?}");
    // Watches are asked again at most once a second; the old leader never went silent, so
    // without the watch the host would have stayed with it.
    assert!(
        registered < Duration::from_millis(1_500),
        "the host took {registered:?} to follow the leader its watched node named"
    );
    assert_eq!(
        connection, 1,
        "the host registers on the watch's own connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_leader_keeps_its_hosts_on_their_connections() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let leader = node(dir.path(), "node-1");
    let addr = leader.local_addr().unwrap();
    // Every answer takes half again the time after which a silent leader counts as lost.
    let slow = Duration::from_millis(REQUEST_TIMEOUT_MS * 3 / 2);
    let (mut requests, connections) = serve(leader, slow, standard(OLD));
    let _agent = start_sim_agent_in(dir.path(), vec![addr], None);
    let within = Duration::from_secs(20);
    let mut heartbeats = 0;
    let started = Instant::now();
    while heartbeats < 3 {
        let (connection, message) = next(&mut requests, within).await;
        assert_eq!(
            connection,
            1,
            "the host dialed again after {:?} ({message:?}): a leader that is slow but \
             acknowledges must keep its session",
            started.elapsed()
        );
        heartbeats += usize::from(matches!(message, HostMessage::Heartbeat { .. }));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// While the cluster elects its first leader, nodes refuse a host's registration or send it
/// elsewhere; a node that answered is alive, so the host keeps its connection for the next
/// registration there and for its watch: one handshake per node, not one per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_dials_each_node_once_while_the_first_leader_is_elected() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let first = node(dir.path(), "node-1");
    let first_addr = first.local_addr().unwrap();
    let second = node(dir.path(), "node-2");
    let second_addr = second.local_addr().unwrap();
    // node-1 knows of no leader at first, then names node-2; it is watched afterwards.
    let asked_first = AtomicUsize::new(0);
    let (mut to_first, dialed_first) =
        serve_any(first, Duration::ZERO, move |message| match message {
            HostMessage::Register { .. } if asked_first.fetch_add(1, Ordering::SeqCst) == 0 => {
                Response::NotLeader { leader: None }
            }
            HostMessage::Register { .. } => Response::NotLeader {
                leader: Some(LeaderHint {
                    node_id: 2,
                    addr: second_addr.to_string(),
                }),
            },
            HostMessage::WatchLeader { newer_than, .. } => Response::Host(HostReply::Leader {
                leadership: Some(*newer_than),
                addr: Some(second_addr.to_string()),
            }),
            other => Response::Host(standard(NEW)(other)),
        });
    // node-2 is still electing itself when first asked.
    let asked_second = AtomicUsize::new(0);
    let (mut to_second, dialed_second) =
        serve_any(second, Duration::ZERO, move |message| match message {
            HostMessage::Register { .. } if asked_second.fetch_add(1, Ordering::SeqCst) == 0 => {
                Response::NotLeader { leader: None }
            }
            other => Response::Host(standard(NEW)(other)),
        });

    let within = Duration::from_secs(10);
    let _agent = start_sim_agent_in(dir.path(), vec![first_addr, second_addr], None);
    let mut registrations = 0;
    while registrations < 2 {
        let (_, message) = next(&mut to_second, within).await;
        registrations += usize::from(matches!(message, HostMessage::Register { .. }));
    }
    // Registered with node-2 at its second answer; it watches node-1 from then on.
    loop {
        let (_, message) = next(&mut to_first, within).await;
        if matches!(message, HostMessage::WatchLeader { .. }) {
            break;
        }
    }
    // A few heartbeats more, in case a late dial is on its way.
    for _ in 0..3 {
        next(&mut to_second, within).await;
    }
    assert_eq!(
        (
            dialed_first.load(Ordering::SeqCst),
            dialed_second.load(Ordering::SeqCst)
        ),
        (1, 1),
        "connections the host made to node-1 (refused, redirected, watched) and to \
         node-2 (refused, registered): one each"
    );
}
