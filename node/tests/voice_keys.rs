//! Voice keys and hostile packets, against a real voice layer on netsim's in-process tier.
//!
//! Alice runs the real [`VoiceService`]. Bob and Carol are guild members whose voice side is
//! played by this test at the protocol level (`RawParticipant`): they announce themselves over
//! libp2p, answer Alice's probes on their own UDP sockets and keep every frame and key they get.
//! That lets the test check what a participant can decrypt, which a normal node never exposes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use rand_core::{OsRng, RngCore};
use securecomm_netsim::inproc::{Cluster, InNode};
use securecomm_node::net::Event;
use securecomm_node::voice::call::Device;
use securecomm_node::voice::device::{AudioSink, WavSink};
use securecomm_node::voice::pipeline::VoiceSender;
use securecomm_node::voice::service::{JoinOptions, VoiceService};
use securecomm_node::voice::wire::{
    self, Announce, PROBE, PROBE_ACK, PeerPacket, SenderKey, VOICE_VERSION, VoiceRequest,
    VoiceResponse,
};
use securecomm_node::voice::{FRAME_SAMPLES, codec::CodecConfig};
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::frame::{BaseKey, FrameReceiver, FrameSender, SframeHeader};
use securecomm_noise::secret::Secret32;
use serde_json::{Value, json};

#[derive(Default)]
struct RawState {
    /// The probe key Alice chose for us (our acknowledgements are MACed with it).
    out_key: Option<Secret32>,
    /// Alice's sender keys as we received them.
    keys: Vec<(u64, Secret32)>,
    /// Voice requests that carried a key after we left.
    keys_after_leave: usize,
    left: bool,
    /// Alice's media frames as received.
    frames: Vec<Vec<u8>>,
    /// Alice's receiver reports (nonce, loss in basis points, mean burst in tenths of a
    /// frame) with a valid MAC.
    reports: Vec<(u64, u16, u8)>,
    /// Alice's media packets by type: plain, with redundant copies.
    plain: u64,
    red: u64,
}

struct RawParticipant {
    ssrc: u32,
    addr: SocketAddr,
    sock: Arc<tokio::net::UdpSocket>,
    in_key: Secret32,
    key: (u64, Secret32),
    state: Arc<Mutex<RawState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RawParticipant {
    async fn start(node: &InNode) -> Self {
        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let ssrc = OsRng.next_u32();
        let in_key = Secret32::random(&mut OsRng);
        let state = Arc::new(Mutex::new(RawState::default()));
        let mut tasks = Vec::new();
        // Voice requests (Alice's rotations and presence announces).
        let (net, st) = (node.net.clone(), state.clone());
        let mut events = node.net.events();
        tasks.push(tokio::spawn(async move {
            while let Some(e) = events.next().await {
                let Event::DirectRequest { id, data, .. } = e else {
                    continue;
                };
                if data.first() != Some(&VOICE_VERSION) {
                    continue;
                }
                let left = {
                    let mut s = st.lock().unwrap();
                    if let Ok(VoiceRequest::Announce(a)) = VoiceRequest::from_bytes(&data) {
                        if s.left {
                            s.keys_after_leave += usize::from(a.key.is_some());
                        } else {
                            s.out_key = Some(a.probe_key.clone());
                            if let Some(k) = a.key {
                                s.keys.push((k.kid, k.base));
                            }
                        }
                    }
                    s.left
                };
                let resp = if left {
                    VoiceResponse::NotInRoom
                } else {
                    VoiceResponse::Ok
                };
                let _ = net.respond(id, resp.to_bytes()).await;
            }
        }));
        // UDP: acknowledge Alice's probes, keep her frames.
        let (s2, st, k, me) = (sock.clone(), state.clone(), in_key.clone(), ssrc);
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = s2.recv_from(&mut buf).await {
                let ack = {
                    let mut s = st.lock().unwrap();
                    match wire::parse_packet(&buf[..n]) {
                        Ok(PeerPacket::Probe { ssrc, nonce, mac })
                            if wire::probe_ok(PROBE, &k, ssrc, nonce, &mac) =>
                        {
                            s.out_key
                                .as_ref()
                                .map(|o| wire::probe_packet(PROBE_ACK, o, me, nonce))
                        }
                        Ok(PeerPacket::Media { frame, kind, .. }) => {
                            if kind == wire::MEDIA_RED {
                                s.red += 1;
                            } else {
                                s.plain += 1;
                                if s.frames.len() < 20_000 {
                                    s.frames.push(frame.to_vec());
                                }
                            }
                            None
                        }
                        Ok(PeerPacket::Report {
                            ssrc,
                            nonce,
                            loss,
                            burst,
                            mac,
                        }) if wire::report_ok(&k, ssrc, nonce, loss, burst, &mac) => {
                            if s.reports.len() < 10_000 {
                                s.reports.push((nonce, loss, burst));
                            }
                            None
                        }
                        _ => None,
                    }
                };
                if let Some(a) = ack {
                    let _ = s2.send_to(&a, from).await;
                }
            }
        }));
        Self {
            ssrc,
            addr,
            sock,
            in_key,
            key: (0, Secret32::random(&mut OsRng)),
            state,
            tasks,
        }
    }

    fn announce(&self, guild: &Value, channel: u64) -> Announce {
        let g = hex::decode(guild.as_str().unwrap()).unwrap();
        Announce {
            guild: securecomm_crdt::schema::GuildId(g.try_into().unwrap()),
            channel: securecomm_crdt::schema::ChannelId(channel),
            ssrc: self.ssrc,
            candidates: vec![self.addr],
            probe_key: self.in_key.clone(),
            key: Some(SenderKey {
                kid: self.key.0,
                base: self.key.1.clone(),
            }),
            relays: Vec::new(),
            muted: false,
            deafened: false,
        }
    }

    /// A receiver holding every key of Alice's this participant was given.
    fn receiver(&self) -> FrameReceiver {
        let mut r = FrameReceiver::new(64);
        for (kid, base) in &self.state.lock().unwrap().keys {
            r.add_key(*kid, &BaseKey::from_bytes(*base.expose()))
                .unwrap();
        }
        r
    }

    fn frames(&self) -> Vec<Vec<u8>> {
        self.state.lock().unwrap().frames.clone()
    }
}

impl Drop for RawParticipant {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn kid_of(frame: &[u8]) -> u64 {
    SframeHeader::parse_prefix(frame).unwrap().0.kid
}

async fn join_raw(
    node: &InNode,
    alice: PeerId,
    raw: &RawParticipant,
    guild: &Value,
    channel: u64,
) -> Announce {
    let req = VoiceRequest::Announce(raw.announce(guild, channel)).to_bytes();
    let resp = node.net.request(alice, req).await.unwrap();
    match VoiceResponse::from_bytes(&resp).unwrap() {
        VoiceResponse::Announce(a) => {
            let mut s = raw.state.lock().unwrap();
            s.out_key = Some(a.probe_key.clone());
            let k = a.key.clone().expect("alice may speak");
            s.keys.push((k.kid, k.base));
            a
        }
        other => panic!("alice answered {other:?}"),
    }
}

async fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Push-to-talk sends silence until the key goes down; what travels never holds plaintext; a
/// member who leaves cannot decrypt what is said after it left; and hostile packets (garbage,
/// truncations, replays) are dropped while the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_cannot_decrypt_the_next_epoch_and_bad_packets_are_dropped() {
    let c = Cluster::start(3).await.unwrap();
    let gid = c.guild("voice keys", 0).await.unwrap();
    let (alice, bob, carol) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let channel = c.voice_channel(&gid, 0, "Lounge").await.unwrap();
    let guild = Value::String(gid.clone());

    let voice = VoiceService::start(alice.net.clone(), alice.guilds.clone());
    // Alice speaks (a tone), so her frames carry real Opus payloads.
    let dir = tempfile::tempdir().unwrap();
    let tone_path = dir.path().join("alice.wav");
    let mut sink = WavSink::create(&tone_path).unwrap();
    for k in 0..1500 {
        let f: [i16; FRAME_SAMPLES] = std::array::from_fn(|i| {
            let n = (k * FRAME_SAMPLES + i) as f64;
            ((n * std::f64::consts::TAU * 440.0 / 48_000.0).sin() * 9000.0) as i16
        });
        sink.write_frame(&f).unwrap();
    }
    sink.finish().unwrap();
    // Push-to-talk: nothing but silence until the key goes down.
    let opts = JoinOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        input: Device::Wav(tone_path),
        push_to_talk: true,
        ..JoinOptions::default()
    };
    voice.join(&gid, "Lounge", opts).await.unwrap();
    let alice_peer = alice.net.peer_id();

    let b = RawParticipant::start(bob).await;
    let cr = RawParticipant::start(carol).await;
    let a_ann = join_raw(bob, alice_peer, &b, &guild, channel).await;
    join_raw(carol, alice_peer, &cr, &guild, channel).await;
    let alice_addr = a_ann.candidates[0];

    // Both get Alice's frames and can decrypt them with the keys she gave them.
    for (name, raw) in [("bob", &b), ("carol", &cr)] {
        wait(&format!("{name} to decrypt 25 of alice's frames"), || {
            let mut r = raw.receiver();
            raw.frames()
                .iter()
                .filter(|f| r.decrypt(f, b"").is_ok())
                .count()
                >= 25
        })
        .await;
    }

    // Key up: silence so far (DTX: one-byte frames, and a comfort-noise update now and then).
    let mut r = b.receiver();
    let sizes: Vec<usize> = b
        .frames()
        .iter()
        .filter_map(|f| r.decrypt(f, b"").ok())
        .map(|d| d.plaintext.len())
        .collect();
    let big = sizes.iter().filter(|n| **n > 10).count();
    assert!(
        sizes.len() >= 25 && big * 10 <= sizes.len(),
        "push-to-talk up sent more than silence: {sizes:?}"
    );
    voice.set_transmit(true).unwrap();
    wait(
        "bob to get 25 frames of speech after the key went down",
        || {
            let mut r = b.receiver();
            b.frames()
                .iter()
                .filter_map(|f| r.decrypt(f, b"").ok())
                .filter(|d| d.plaintext.len() >= 16)
                .count()
                >= 25
        },
    )
    .await;

    // What travels (and what a media relay would forward: it passes these bytes unchanged)
    // never contains the Opus plaintext.
    let mut r = b.receiver();
    let mut checked = 0;
    for f in b.frames() {
        let Ok(d) = r.decrypt(&f, b"") else { continue };
        if d.plaintext.len() >= 16 {
            checked += 1;
            assert!(
                !f.windows(8).any(|w| d.plaintext.windows(8).any(|p| p == w)),
                "a frame on the wire shares 8 bytes with its plaintext"
            );
        }
    }
    assert!(checked >= 20, "only {checked} frames with speech to check");

    // Carol leaves. Alice rotates and hands the new key to Bob only.
    let epoch_before = voice.status()["epoch"].as_u64().unwrap();
    let carol_keys: Vec<u64> = cr.state.lock().unwrap().keys.iter().map(|k| k.0).collect();
    cr.state.lock().unwrap().left = true;
    let bye = VoiceRequest::Leave {
        guild: a_ann.guild,
        channel: a_ann.channel,
    };
    let r = carol.net.request(alice_peer, bye.to_bytes()).await.unwrap();
    assert_eq!(VoiceResponse::from_bytes(&r).unwrap(), VoiceResponse::Ok);
    wait("alice to rotate after carol left", || {
        voice.status()["epoch"].as_u64().unwrap() > epoch_before
    })
    .await;
    let new_kid = voice.status()["epoch"].as_u64().unwrap();
    assert!(
        carol_keys.iter().all(|k| *k < new_kid),
        "carol had {carol_keys:?}"
    );
    wait("bob to get 25 frames of the new epoch", || {
        b.frames().iter().filter(|f| kid_of(f) >= new_kid).count() >= 25
    })
    .await;
    let next: Vec<Vec<u8>> = b
        .frames()
        .into_iter()
        .filter(|f| kid_of(f) >= new_kid)
        .collect();
    let mut bob_rx = b.receiver();
    let mut carol_rx = cr.receiver();
    for f in &next {
        bob_rx.decrypt(f, b"").expect("bob decrypts the new epoch");
        assert!(
            carol_rx.decrypt(f, b"").is_err(),
            "carol decrypted a frame of the epoch after she left"
        );
    }
    // Alice's presence announces to Carol (now outside the call) carry no key.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(cr.state.lock().unwrap().keys_after_leave, 0);
    assert_eq!(voice.status()["participants"].as_array().unwrap().len(), 1);

    // Hostile packets at Alice's voice port: garbage, truncations, unknown streams, forged
    // probes, and replays of Bob's real frames. Bob's fresh frames must still be played.
    let mut sender = VoiceSender::new(
        CodecConfig::default(),
        FrameSender::new(b.key.0, &BaseKey::from_bytes(*b.key.1.expose())),
    )
    .unwrap();
    let tone: Vec<i16> = (0..FRAME_SAMPLES)
        .map(|i| ((i as f64 * 0.07).sin() * 6000.0) as i16)
        .collect();
    let frame: [i16; FRAME_SAMPLES] = tone.try_into().unwrap();
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for i in 0..100u32 {
        let mut p = Vec::new();
        wire::media_header(b.ssrc, &mut p);
        p.extend_from_slice(&sender.send(&frame).unwrap());
        b.sock.send_to(&p, alice_addr).await.unwrap();
        // Replay every frame, and an older one.
        b.sock.send_to(&p, alice_addr).await.unwrap();
        if let Some(old) = sent.first() {
            b.sock.send_to(old.as_slice(), alice_addr).await.unwrap();
        }
        // Garbage of every shape.
        let mut junk = vec![0u8; (i as usize * 37) % 1500];
        OsRng.fill_bytes(&mut junk);
        b.sock.send_to(&junk, alice_addr).await.unwrap();
        b.sock.send_to(&p[..p.len() / 2], alice_addr).await.unwrap();
        let mut flipped = p.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        b.sock.send_to(&flipped, alice_addr).await.unwrap();
        let forged = wire::probe_packet(PROBE, &Secret32::random(&mut OsRng), b.ssrc, 7);
        b.sock.send_to(&forged, alice_addr).await.unwrap();
        sent.push(p);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = voice.status();
    let me = &st["participants"][0];
    let (accepted, rejected) = (
        me["accepted"].as_u64().unwrap(),
        me["rejected"].as_u64().unwrap(),
    );
    eprintln!(
        "alice from bob: accepted {accepted}, rejected {rejected}; engine {}",
        st["engine"]
    );
    assert_eq!(accepted, 100, "every fresh frame once: {st}");
    assert!(
        rejected >= 290,
        "replays, truncations and flips rejected: {st}"
    );
    assert!(st["engine"]["dropped"].as_u64().unwrap() >= 100, "{st}");
    assert_eq!(st["engine"]["running"], true, "{st}");
    // Every fresh frame was played from its packet, or accounted for by timing (it came after
    // its deadline, or the buffer skipped it to shrink), or still waits: none was lost to the
    // hostile packets. How many count as late depends on the machine's load (the sender is
    // paced by a timer), so the share that played is only required to be substantial.
    let n = |k: &str| me[k].as_u64().unwrap();
    let (decoded, late, skipped, buffered) =
        (n("decoded"), n("late_packets"), n("skipped"), n("buffered"));
    assert!(
        decoded + late + skipped + buffered >= accepted,
        "accepted frames unaccounted for: {st}"
    );
    assert!(decoded >= 25, "bob's frames were played: {st}");

    voice.stop().await;
    drop(b);
    drop(cr);
    c.stop().await;
}

/// Receiver reports: Alice tells Bob the loss she sees on his stream and how bursty it is, and
/// tunes her own FEC and redundant copies to what Bob reports on hers; a forged report, a
/// replayed one and one from an unknown stream change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_reports_tune_fec_and_forged_or_replayed_ones_are_ignored() {
    let c = Cluster::start(2).await.unwrap();
    let gid = c.guild("voice reports", 0).await.unwrap();
    let (alice, bob) = (&c.nodes[0], &c.nodes[1]);
    let channel = c.voice_channel(&gid, 0, "Lounge").await.unwrap();
    let guild = Value::String(gid.clone());
    let voice = VoiceService::start(alice.net.clone(), alice.guilds.clone());
    let opts = JoinOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        input: Device::Null,
        ..JoinOptions::default()
    };
    voice.join(&gid, "Lounge", opts).await.unwrap();
    let b = RawParticipant::start(bob).await;
    let ann = join_raw(bob, alice.net.peer_id(), &b, &guild, channel).await;
    let alice_addr = ann.candidates[0];
    wait("bob to get alice's frames", || b.frames().len() >= 10).await;
    let status = || voice.status()["engine"].clone();
    let me = || voice.status()["participants"][0].clone();

    // Bob speaks with every fourth frame lost on the way: Alice reports the loss to him.
    let mut sender = VoiceSender::new(
        CodecConfig::default(),
        FrameSender::new(b.key.0, &BaseKey::from_bytes(*b.key.1.expose())),
    )
    .unwrap();
    let frame: [i16; FRAME_SAMPLES] =
        std::array::from_fn(|i| ((i as f64 * 0.07).sin() * 6000.0) as i16);
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    for i in 0..150u32 {
        interval.tick().await;
        let mut p = Vec::new();
        wire::media_header(b.ssrc, &mut p);
        p.extend_from_slice(&sender.send(&frame).unwrap());
        if i % 4 != 3 {
            b.sock.send_to(&p, alice_addr).await.unwrap();
        }
    }
    wait("alice to report bob's loss to him", || {
        b.state
            .lock()
            .unwrap()
            .reports
            .iter()
            .any(|(_, l, _)| *l >= 1000)
    })
    .await;
    let reports = b.state.lock().unwrap().reports.clone();
    assert!(
        reports.windows(2).all(|w| w[1].0 > w[0].0),
        "report nonces grow: {reports:?}"
    );
    // Every fourth frame: isolated losses, a mean run of one frame.
    let last = reports.last().unwrap();
    assert!(
        (10..=12).contains(&last.2),
        "burst of isolated losses: {reports:?}"
    );
    eprintln!("alice's reports to bob: {reports:?}");

    // Until Bob reports, Alice tunes to the loss she sees herself.
    assert_eq!(status()["fec_tuned_by"], "incoming", "{}", voice.status());

    // Bob reports 0.9% loss in isolated frames on Alice's stream: FEC alone.
    let key = b.state.lock().unwrap().out_key.clone().unwrap();
    let light = wire::report_packet(&key, b.ssrc, 8, 0.009, 1.0);
    b.sock.send_to(&light, alice_addr).await.unwrap();
    wait("alice to tune her FEC to bob's light report", || {
        let s = status();
        s["fec_tuned_by"] == "reports"
            && s["fec_expected_percent"] == 3
            && s["redundancy"] == json!([])
    })
    .await;

    // 25% in isolated frames: copies of the two previous frames in every packet, and FEC.
    let report = wire::report_packet(&key, b.ssrc, 10, 0.25, 1.1);
    b.sock.send_to(&report, alice_addr).await.unwrap();
    wait("alice to add copies for bob's report", || {
        let s = status();
        s["redundancy"] == json!([1, 2]) && s["fec_expected_percent"] == 27
    })
    .await;
    assert_eq!(me()["reports"], 2);
    assert!((me()["reported_loss"].as_f64().unwrap() - 0.25).abs() < 1e-3);
    let red_before = b.state.lock().unwrap().red;
    wait("bob to get packets with copies", || {
        b.state.lock().unwrap().red >= red_before + 10
    })
    .await;

    // The same loss in bursts of three frames: copies of frames 3 and 6 back, no FEC.
    let bursty = wire::report_packet(&key, b.ssrc, 11, 0.25, 3.0);
    b.sock.send_to(&bursty, alice_addr).await.unwrap();
    wait("alice to spread her copies for bursts", || {
        let s = status();
        s["redundancy"] == json!([3, 6]) && s["fec_expected_percent"] == 0
    })
    .await;

    // Forged (another key), replayed (an old nonce with a valid MAC), from an unknown stream,
    // and a report claiming more than 100%: none counts.
    let dropped_before = status()["dropped"].as_u64().unwrap();
    let forged = wire::report_packet(&Secret32::random(&mut OsRng), b.ssrc, 12, 0.0, 1.0);
    let replayed = wire::report_packet(&key, b.ssrc, 9, 0.0, 1.0);
    let stranger = wire::report_packet(&key, b.ssrc ^ 1, 13, 0.0, 1.0);
    let mut too_much = wire::report_packet(&key, b.ssrc, 14, 1.0, 1.0);
    too_much[13..15].copy_from_slice(&20_000u16.to_be_bytes());
    for p in [
        &forged[..],
        &replayed[..],
        &stranger[..],
        &too_much[..],
        &report[..],
    ] {
        b.sock.send_to(p, alice_addr).await.unwrap();
    }
    wait("alice to drop the five bad reports", || {
        status()["dropped"].as_u64().unwrap() >= dropped_before + 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(me()["reports"], 3, "{}", voice.status());
    assert_eq!(status()["redundancy"], json!([3, 6]), "{}", voice.status());

    // A fresh report of no loss stops the copies; plain packets again.
    b.sock
        .send_to(&wire::report_packet(&key, b.ssrc, 15, 0.0, 1.0), alice_addr)
        .await
        .unwrap();
    wait("alice to follow bob's new report", || {
        let s = status();
        s["fec_expected_percent"] == 0 && s["redundancy"] == json!([])
    })
    .await;
    assert_eq!(me()["reports"], 4);
    let plain_before = b.state.lock().unwrap().plain;
    wait("bob to get plain packets again", || {
        b.state.lock().unwrap().plain >= plain_before + 10
    })
    .await;

    voice.stop().await;
    drop(b);
    c.stop().await;
}
