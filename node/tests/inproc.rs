//! Protocol tests on netsim's in-process tier: many real nodes (own identity, encrypted store,
//! event loop, guild layer) in this one process, over libp2p's memory transport.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use securecomm_netsim::inproc::Cluster;

/// Twelve members, each sends five messages at once: every member ends with all sixty, each
/// exactly once and in each sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_members_get_every_message_once_in_sender_order() {
    let started = std::time::Instant::now();
    let c = Cluster::start(12).await.unwrap();
    let gid = c.guild("inproc", 0).await.unwrap();
    eprintln!("12 nodes keyed in {:?}", started.elapsed());
    for round in 0..5 {
        for n in &c.nodes {
            n.send(&gid, "general", &format!("{} #{round}", n.name))
                .await
                .unwrap();
        }
    }
    let total = c.nodes.len() * 5;
    c.until("every member to hold every message", || {
        c.nodes
            .iter()
            .all(|n| n.texts(&gid, "general").is_ok_and(|t| t.len() >= total))
    })
    .await
    .unwrap();
    for n in &c.nodes {
        let texts = n.texts(&gid, "general").unwrap();
        assert_eq!(texts.len(), total, "{} holds {texts:?}", n.name);
        let mut seen: HashMap<&str, Vec<u32>> = HashMap::new();
        for t in &texts {
            let (who, round) = t.split_once(" #").unwrap();
            seen.entry(who).or_default().push(round.parse().unwrap());
        }
        for (who, rounds) in seen {
            assert_eq!(rounds, vec![0, 1, 2, 3, 4], "{}: {who}'s order", n.name);
        }
    }
    eprintln!("done in {:?}", started.elapsed());
    c.stop().await;
}
