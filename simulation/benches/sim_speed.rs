//! How fast the simulation runs: simulated seconds per wall-clock second, and seeds per
//! minute on every core, for the default chaos scenario (3 nodes, all faults) with 10 and
//! with 100 hosts — and, as floors under it, the same world quiet (no operator, no fault:
//! only the system's own heartbeats) and turmoil alone (as many machines, doing nothing).
//!
//! cargo bench -p qvdc-simulation --bench sim_speed
//! QVSIM_BENCH_SEEDS=N seeds per shape (default 20; the quiet and empty worlds run at most 4).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use qvdc_simulation::{chaos, steady, trace, SimConfig, TICK_MS};

/// Simulated time a run covered: the stamp of its last trace event.
fn simulated(trace: &[String]) -> Duration {
    Duration::from_millis(
        trace
            .last()
            .and_then(|line| trace::at_ms(line))
            .unwrap_or(0),
    )
}

/// Runs `seeds` seeds of `run` on every core; returns (wall, simulated) per run and the
/// wall time of the whole batch.
fn sweep(
    seeds: u64,
    workers: usize,
    run: impl Fn(u64) -> Duration + Sync,
) -> (Vec<(Duration, Duration)>, Duration) {
    let next = Mutex::new(0..seeds);
    let runs = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(seed) = next.lock().unwrap().next() else {
                    return;
                };
                let run_started = Instant::now();
                let sim = run(seed);
                runs.lock().unwrap().push((run_started.elapsed(), sim));
            });
        }
    });
    (runs.into_inner().unwrap(), started.elapsed())
}

fn row(world: &str, hosts: usize, runs: &[(Duration, Duration)], elapsed: Duration) {
    let wall: Duration = runs.iter().map(|r| r.0).sum();
    let sim: Duration = runs.iter().map(|r| r.1).sum();
    let n = runs.len() as u32;
    println!(
        "{world:<13} | {hosts:>5} | {:>9.0} | {:>32.1} | {:>9.2?} | {:>14.2?}",
        f64::from(n) / elapsed.as_secs_f64() * 60.0,
        sim.as_secs_f64() / wall.as_secs_f64(),
        wall / n,
        sim / n
    );
}

/// turmoil's own cost: `machines` machines that only wait, stepped like the harness steps
/// its worlds, for `simulated` time.
fn empty_world(machines: usize, simulated: Duration) {
    let mut world = turmoil::Builder::new()
        .simulation_duration(simulated * 2)
        .tick_duration(Duration::from_millis(TICK_MS))
        .build();
    for i in 0..machines {
        world.host(format!("m{i}"), || async {
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    while world.elapsed() < simulated {
        world.step().expect("an empty world cannot fail");
    }
}

fn main() {
    let seeds: u64 = std::env::var("QVSIM_BENCH_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "3 nodes, default phase ({} ms steps), {seeds} seeds per shape, {workers} threads",
        TICK_MS
    );
    println!(
        "world         | hosts | seeds/min | simulated s per wall s (one run) | mean run  | mean simulated"
    );
    for hosts in [10, 100] {
        let config = |seed| SimConfig {
            seed,
            hosts,
            ..Default::default()
        };
        let (runs, elapsed) = sweep(seeds, workers, |seed| {
            let outcome = chaos::run(&config(seed))
                .unwrap_or_else(|e| panic!("chaos seed {seed} with {hosts} hosts failed: {e:#}"));
            simulated(&outcome.trace)
        });
        row("chaos", hosts, &runs, elapsed);
        let mean_simulated = runs.iter().map(|r| r.1).sum::<Duration>() / runs.len() as u32;

        let (runs, elapsed) = sweep(seeds.min(4), workers, |seed| {
            steady::run(&config(seed))
                .unwrap_or_else(|e| panic!("quiet seed {seed} with {hosts} hosts failed: {e:#}"))
                .simulated
        });
        row("quiet", hosts, &runs, elapsed);

        // Nodes, hosts and the operator's machine, for as long as a chaos run; as many
        // worlds at once as the other rows, which share the cores the same way.
        let machines = 3 + hosts + 1;
        let (runs, elapsed) = sweep(seeds.min(4), workers, |_| {
            empty_world(machines, mean_simulated);
            mean_simulated
        });
        row("turmoil alone", hosts, &runs, elapsed);
    }
}
