//! Helpers for the exact-resume tests (`tests/tests/exact_resume.rs`): a seeded random source
//! for the break schedule, concurrent publishers with known payloads, and a [`Ledger`] that
//! checks what one client received against what was published, channel by channel.

use std::{collections::HashMap, time::Duration};

use serde_json::json;
use tokio::task::JoinHandle;

use crate::{Msg, Node, Publisher, cursor};

/// Environment variable that fixes the seed of a run (otherwise taken from the clock).
pub const SEED_ENV: &str = "HERALD_E2E_SEED";

/// A small deterministic random source (SplitMix64): the break schedule of a run is a
/// function of its seed, printed so a failure can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64().is_multiple_of(n)
    }

    /// An index below `len`.
    pub fn index(&mut self, len: usize) -> usize {
        (self.next_u64() % len as u64) as usize
    }
}

/// The seed for the test `name`: [`SEED_ENV`] if set, else derived from the clock. Printed,
/// so a failing run can be repeated with the same break schedule (thread scheduling and
/// network timing still vary from run to run).
pub fn seed(name: &str) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={v:?} is not a u64")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            // Different tests started in the same instant get different seeds.
            name.bytes().fold(nanos, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        }
    };
    println!("{name}: seed {seed} (replay the break schedule with {SEED_ENV}={seed})");
    seed
}

/// One publisher task per channel, each publishing `{"ch": i, "n": k}` for `k` in
/// `0..per_channel` to channel `i` over its own gRPC connection, one message per `period`.
pub struct Publishers {
    tasks: Vec<JoinHandle<Vec<u64>>>,
}

impl Publishers {
    /// Connects one [`Publisher`] per channel to `node`, then starts them all.
    pub async fn start(
        node: &Node,
        channels: &[String],
        per_channel: usize,
        period: Duration,
    ) -> Publishers {
        let mut publishers = Vec::with_capacity(channels.len());
        for _ in channels {
            publishers.push(Publisher::connect(node).await);
        }
        let tasks = publishers
            .into_iter()
            .zip(channels.iter().cloned())
            .enumerate()
            .map(|(i, (mut p, name))| {
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    let mut ids = Vec::with_capacity(per_channel);
                    for k in 0..per_channel {
                        tick.tick().await;
                        let c = p.publish(&name, &json!({"ch": i, "n": k})).await;
                        ids.push(cursor(&c));
                    }
                    ids
                })
            })
            .collect();
        Publishers { tasks }
    }

    /// True once every publisher has finished (or failed).
    pub fn finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every publisher; the cursors of channel `i`'s messages `0..per_channel`.
    pub async fn join(mut self) -> Vec<Vec<u64>> {
        let mut out = Vec::with_capacity(self.tasks.len());
        for t in std::mem::take(&mut self.tasks) {
            match t.await {
                Ok(ids) => out.push(ids),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("publisher task: {e}"),
            }
        }
        out
    }
}

impl Drop for Publishers {
    /// Stops publishers still running (the test failed before joining them).
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Everything one client received, kept per channel, judged against what was published.
///
/// Only per-channel order is required by the protocol; the order *across* channels on one
/// connection is counted ([`Ledger::cross_channel_inversions`]) for information, never
/// asserted.
#[derive(Debug)]
pub struct Ledger {
    names: Vec<String>,
    index: HashMap<String, usize>,
    per_channel: usize,
    /// `n` of each message received on channel `i`, in arrival order.
    got: Vec<Vec<u64>>,
    /// Its `id`, in arrival order.
    ids: Vec<Vec<u64>>,
    gaps: Vec<String>,
    connection: usize,
    previous_on_connection: Option<u64>,
    inversions: usize,
    last_id: Option<u64>,
}

impl Ledger {
    /// A ledger for `channels` (channel `i` carries `{"ch": i, "n": 0..per_channel}`).
    pub fn new(channels: &[String], per_channel: usize) -> Ledger {
        Ledger {
            names: channels.to_vec(),
            index: channels
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i))
                .collect(),
            per_channel,
            got: vec![Vec::new(); channels.len()],
            ids: vec![Vec::new(); channels.len()],
            gaps: Vec::new(),
            connection: 0,
            previous_on_connection: None,
            inversions: 0,
            last_id: None,
        }
    }

    /// Marks the start of a new connection (or poll sequence) of the client.
    pub fn new_connection(&mut self) {
        self.connection += 1;
        self.previous_on_connection = None;
    }

    /// Records a received message; panics if it is not one this test published.
    pub fn record(&mut self, m: &Msg) {
        let i = *self
            .index
            .get(&m.channel)
            .unwrap_or_else(|| panic!("message on a channel not subscribed: {m:?}"));
        assert_eq!(
            m.data["ch"].as_u64(),
            Some(i as u64),
            "message data names another channel: {m:?}"
        );
        let n = m.data["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("message data without n: {m:?}"));
        self.got[i].push(n);
        self.ids[i].push(m.id);
        if self.previous_on_connection.is_some_and(|p| m.id < p) {
            self.inversions += 1;
        }
        self.previous_on_connection = Some(m.id);
        self.last_id = Some(m.id);
    }

    /// Records a `gap` for `channel`.
    pub fn gap(&mut self, channel: &str) {
        self.gaps.push(format!(
            "gap for {channel} on connection #{}",
            self.connection
        ));
    }

    /// The `id` of the last message received (in arrival order, any channel).
    pub fn last_id(&self) -> Option<u64> {
        self.last_id
    }

    /// True once every channel's last received message is its last published one.
    pub fn complete(&self) -> bool {
        let last = self.per_channel as u64 - 1;
        self.got.iter().all(|g| g.last() == Some(&last))
    }

    /// Messages received, all channels together.
    pub fn received(&self) -> usize {
        self.got.iter().map(Vec::len).sum()
    }

    /// Times a message arrived with a lower `id` than the one before it on the same
    /// connection (necessarily on another channel). Allowed; reported for information.
    pub fn cross_channel_inversions(&self) -> usize {
        self.inversions
    }

    /// Everything that differs from "each channel `i` received exactly `0..per_channel` in
    /// order, with the published ids, and no gap". `published[i][k]` is the cursor of
    /// channel `i`'s message `k`.
    pub fn problems(&self, published: &[Vec<u64>]) -> Vec<String> {
        const SHOW: usize = 20;
        fn list(v: &[u64]) -> String {
            let shown: Vec<String> = v.iter().take(SHOW).map(u64::to_string).collect();
            let more = v.len().saturating_sub(SHOW);
            if more > 0 {
                format!("[{}, ... {more} more]", shown.join(", "))
            } else {
                format!("[{}]", shown.join(", "))
            }
        }
        let mut out = self.gaps.clone();
        for (i, got) in self.got.iter().enumerate() {
            let n = self.per_channel as u64;
            let mut count = vec![0usize; self.per_channel];
            let mut foreign = Vec::new();
            for &k in got {
                match count.get_mut(k as usize) {
                    Some(c) => *c += 1,
                    None => foreign.push(k),
                }
            }
            let missing: Vec<u64> = (0..n).filter(|&k| count[k as usize] == 0).collect();
            let repeated: Vec<u64> = (0..n).filter(|&k| count[k as usize] > 1).collect();
            let mut disorder = Vec::new();
            for (j, w) in got.windows(2).enumerate() {
                if w[1] <= w[0] {
                    disorder.push(format!("n={} after n={} (arrival #{})", w[1], w[0], j + 1));
                }
            }
            let mut wrong_ids = Vec::new();
            for (&k, &id) in got.iter().zip(&self.ids[i]) {
                let want = published.get(i).and_then(|p| p.get(k as usize));
                if want.is_some_and(|w| *w != id) {
                    wrong_ids.push(format!("n={k} has id {id}, published as {}", want.unwrap()));
                }
            }
            if missing.is_empty()
                && repeated.is_empty()
                && foreign.is_empty()
                && disorder.is_empty()
                && wrong_ids.is_empty()
            {
                continue;
            }
            let mut line = format!(
                "channel {i} ({}): received {} messages for {n} published",
                self.names[i],
                got.len()
            );
            if !missing.is_empty() {
                line += &format!("; MISSING {} n={}", missing.len(), list(&missing));
            }
            if !repeated.is_empty() {
                line += &format!("; REPEATED {} n={}", repeated.len(), list(&repeated));
            }
            if !foreign.is_empty() {
                line += &format!("; never published n={}", list(&foreign));
            }
            if !disorder.is_empty() {
                let shown: Vec<&str> = disorder.iter().take(5).map(String::as_str).collect();
                line += &format!(
                    "; OUT OF ORDER {} times: {}",
                    disorder.len(),
                    shown.join(", ")
                );
            }
            if !wrong_ids.is_empty() {
                let shown: Vec<&str> = wrong_ids.iter().take(5).map(String::as_str).collect();
                line += &format!("; WRONG ID {} times: {}", wrong_ids.len(), shown.join(", "));
            }
            out.push(line);
        }
        out
    }
}
