//! `qvsim`: runs the deterministic simulation over many seeds, and replays one seed with its
//! event trace.

use std::{ops::Range, process::ExitCode, sync::Mutex, time::Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use qvdc_simulation::{catch_up, pool_flow, vm_flow, Disruption, SimConfig};
use qvdc_transport::sim::Impairment;

/// Run qvdc's deterministic simulation: real control-plane nodes and host agents in a
/// simulated network, with the leader crashed and restarted in every run.
///
/// Examples:
///   qvsim run --seeds 0..100
///   qvsim replay --seed 42 --trace
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a range of seeds on all cores and summarise.
    Run {
        /// Seeds as START..END (END excluded).
        #[arg(long, value_parser = parse_range, default_value = "0..20")]
        seeds: Range<u64>,
        #[command(flatten)]
        shape: Shape,
    },
    /// Run one seed and print what it did.
    Replay {
        #[arg(long)]
        seed: u64,
        /// Print the full event trace.
        #[arg(long)]
        trace: bool,
        #[command(flatten)]
        shape: Shape,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// Pool create with a failing host, leader taken away, old leader back.
    PoolFlow,
    /// A follower misses the purged log and catches up by snapshot.
    CatchUp,
    /// A VM placed, started, kept on its host across a leader loss, stopped and deleted.
    VmFlow,
}

#[derive(Debug, Clone, clap::Args)]
struct Shape {
    /// Number of host agents.
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Hosts (1-based, comma-separated) whose pool mounts fail.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    failing_hosts: Vec<usize>,
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "pool-flow")]
    scenario: Scenario,
    /// How the leader is taken away once the pool is up (pool-flow).
    #[arg(long, value_enum, default_value = "crash")]
    disruption: Disruption,
    /// Datagrams lost on every link, per thousand, for the whole run (QUIC retransmits).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=500))]
    loss_per_mille: u32,
    /// Datagrams delivered twice, per thousand, for the whole run.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=500))]
    duplicate_per_mille: u32,
}

impl Shape {
    fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            hosts: self.hosts,
            failing_hosts: self.failing_hosts.clone(),
            disruption: self.disruption,
            retention: Default::default(),
            impairment: Impairment {
                loss_per_mille: self.loss_per_mille,
                duplicate_per_mille: self.duplicate_per_mille,
            },
        }
    }

    fn flags(&self) -> String {
        let failing: Vec<String> = self.failing_hosts.iter().map(ToString::to_string).collect();
        let disruption = match self.disruption {
            Disruption::Crash => "crash",
            Disruption::Isolate => "isolate",
        };
        let scenario = match self.scenario {
            Scenario::PoolFlow => "pool-flow",
            Scenario::CatchUp => "catch-up",
            Scenario::VmFlow => "vm-flow",
        };
        format!(
            "--scenario {scenario} --hosts {} --failing-hosts {} --disruption {disruption} \
             --loss-per-mille {} --duplicate-per-mille {}",
            self.hosts,
            failing.join(","),
            self.loss_per_mille,
            self.duplicate_per_mille
        )
    }
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or("expected START..END, e.g. 0..100")?;
    let start: u64 = start
        .parse()
        .map_err(|_| format!("{start:?} is not a number"))?;
    let end: u64 = end
        .parse()
        .map_err(|_| format!("{end:?} is not a number"))?;
    if start >= end {
        return Err(format!("{text} is empty"));
    }
    Ok(start..end)
}

fn run(seeds: Range<u64>, shape: &Shape) -> ExitCode {
    let started = Instant::now();
    let total = seeds.end - seeds.start;
    let next = Mutex::new(seeds);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(seed) = next.lock().expect("seed lock").next() else {
                    return;
                };
                let result = match shape.scenario {
                    Scenario::PoolFlow => pool_flow::run(&shape.config(seed)).map(drop),
                    Scenario::CatchUp => catch_up::run(seed).map(drop),
                    Scenario::VmFlow => vm_flow::run(&shape.config(seed)).map(drop),
                };
                if let Err(e) = result {
                    failures
                        .lock()
                        .expect("failure lock")
                        .push((seed, format!("{e:#}")));
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("failure lock");
    failures.sort();
    let elapsed = started.elapsed().as_secs_f64();
    for (seed, error) in &failures {
        println!(
            "seed {seed} FAILED: {error}\n  replay: qvsim replay --seed {seed} {} --trace",
            shape.flags()
        );
    }
    println!(
        "{} passed, {} failed ({total} seeds in {elapsed:.1} s on {workers} threads, {:.0} seeds/min)",
        total as usize - failures.len(),
        failures.len(),
        total as f64 / elapsed * 60.0
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn replay(seed: u64, trace: bool, shape: &Shape) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Scenario::CatchUp = shape.scenario {
        let outcome = catch_up::run(seed).with_context(|| format!("seed {seed}"))?;
        if trace {
            outcome.trace.iter().for_each(|event| println!("{event}"));
        }
        println!(
            "seed {seed}: ok in {:.2} s wall; trace {:016x}; node {} crashed at index {}, the leader \
             purged through {}, the node caught up with snapshot {}",
            started.elapsed().as_secs_f64(),
            outcome.trace_hash,
            outcome.follower,
            outcome.applied_before_crash,
            outcome.leader_purged,
            outcome.follower_snapshot
        );
        return Ok(());
    }
    if let Scenario::VmFlow = shape.scenario {
        let outcome = vm_flow::run(&shape.config(seed)).with_context(|| format!("seed {seed}"))?;
        if trace {
            outcome.trace.iter().for_each(|event| println!("{event}"));
        }
        println!(
            "seed {seed}: ok in {:.2} s wall; trace {:016x}; VM placed on {}, running {:?} after \
             create (simulated time)",
            started.elapsed().as_secs_f64(),
            outcome.trace_hash,
            outcome.host,
            outcome.create_to_running
        );
        return Ok(());
    }
    let outcome = pool_flow::run(&shape.config(seed)).with_context(|| format!("seed {seed}"))?;
    if trace {
        for event in &outcome.trace {
            println!("{event}");
        }
    }
    println!(
        "seed {seed}: ok in {:.2} s wall; trace {:016x} ({} events); pool create -> aggregate {:?}; \
         leader cp{} crash -> same aggregate {:?} (simulated time)",
        started.elapsed().as_secs_f64(),
        outcome.trace_hash,
        outcome.trace.len(),
        outcome.create_to_aggregate,
        outcome.crashed_node,
        outcome.crash_to_aggregate
    );
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { seeds, shape } => run(seeds, &shape),
        Command::Replay { seed, trace, shape } => match replay(seed, trace, &shape) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
