//! How fast the simulation runs: simulated seconds per wall-clock second, and seeds per
//! minute on every core, for the default chaos scenario (3 nodes, all faults) with 10 and
//! with 100 hosts.
//!
//! cargo bench -p qvdc-simulation --bench sim_speed
//! QVSIM_BENCH_SEEDS=N seeds per shape (default 20).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use qvdc_simulation::{chaos, SimConfig};

/// Simulated time a run covered: the stamp of its last trace event.
fn simulated(trace: &[String]) -> Duration {
    let ms = trace
        .last()
        .and_then(|line| line.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

fn main() {
    let seeds: u64 = std::env::var("QVSIM_BENCH_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "chaos scenario (3 nodes, all faults, default phase), {seeds} seeds per shape, {workers} threads"
    );
    println!("hosts | seeds/min | simulated s per wall s (one run) | mean run | mean simulated");
    for hosts in [10, 100] {
        let next = Mutex::new(0..seeds);
        let runs = Mutex::new(Vec::new());
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let Some(seed) = next.lock().unwrap().next() else {
                        return;
                    };
                    let config = SimConfig {
                        seed,
                        hosts,
                        ..Default::default()
                    };
                    let run_started = Instant::now();
                    let outcome = chaos::run(&config)
                        .unwrap_or_else(|e| panic!("seed {seed} with {hosts} hosts failed: {e:#}"));
                    let wall = run_started.elapsed();
                    runs.lock().unwrap().push((wall, simulated(&outcome.trace)));
                });
            }
        });
        let elapsed = started.elapsed();
        let runs = runs.into_inner().unwrap();
        let wall: Duration = runs.iter().map(|r| r.0).sum();
        let sim: Duration = runs.iter().map(|r| r.1).sum();
        let n = runs.len() as u32;
        println!(
            "{hosts:>5} | {:>9.0} | {:>32.1} | {:>8.2?} | {:>14.2?}",
            f64::from(n) / elapsed.as_secs_f64() * 60.0,
            sim.as_secs_f64() / wall.as_secs_f64(),
            wall / n,
            sim / n
        );
    }
}
