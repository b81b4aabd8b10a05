//! `qvsim`: runs the deterministic simulation over many seeds, and replays one seed with its
//! event trace.

use std::{
    collections::BTreeSet,
    io::Read,
    ops::Range,
    process::{ExitCode, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use qvdc_simulation::{
    adoption, catch_up, chaos, deposed_leader, ha_flow, lease_edge, move_flow, pool_flow,
    retried_requests, stranded_write, vm_flow, Bug, Chaos, Disruption, FaultKind, LogLifecycle,
    SimConfig,
};
use qvdc_transport::sim::Impairment;

/// Run qvdc's deterministic simulation: real control-plane nodes and host agents in a
/// simulated network. The default scenario has operators working concurrently while faults
/// drawn from the seed hit nodes, links and hosts, then heals and checks that the system
/// converged to what the operators were told. A failing seed prints the command that
/// replays it exactly.
///
/// Examples:
///   qvsim run --seeds 0..200
///   qvsim run --seeds 0..50 --faults node-crash,host-partition
///   qvsim replay --seed 42 --trace
///   qvsim run --scenario vm-flow --hosts 3 --seeds 0..100
///   qvsim swarm --dev qvdc-dev --hosts 1000   (real cluster, real time; see --help)
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
        /// Wall-clock seconds one seed may take before it counts as hung (a deadlock or a
        /// livelock in the run) and its process is killed.
        #[arg(long, default_value_t = 300)]
        seed_timeout_seconds: u64,
        #[command(flatten)]
        shape: Shape,
    },
    /// Run one seed in this process and report on one line to `run`, which starts one such
    /// process per seed so that a seed that panics or aborts fails alone.
    #[command(hide = true)]
    Seed {
        #[arg(long)]
        seed: u64,
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
    /// Load a real cluster with thousands of host agents in this process and measure what
    /// its leader spends. Not simulated: real time, real QUIC, real certificates (issued in
    /// memory by the cluster's CA); the agents are qvdc's own with simulated hypervisors,
    /// mounters and networkers. Start the cluster first, e.g. `qvdc dev --dir /tmp/swarm
    /// --hosts 1`; agents share sockets, so no open-files limit needs raising.
    /// QVSIM_LOG=qvdc_host=warn prints the agents' logs.
    #[command(verbatim_doc_comment)]
    Swarm {
        /// The `qvdc dev --dir` of the cluster to load (its nodes.json and certs/).
        #[arg(long, default_value = "qvdc-dev")]
        dev: std::path::PathBuf,
        /// How many hosts to run (named swarm-1, swarm-2, ...).
        #[arg(long, default_value_t = 1_000)]
        hosts: usize,
        /// Hosts the measured pool is assigned to (at most 1,024 per pool).
        #[arg(long, default_value_t = 1_000)]
        pool_hosts: usize,
        /// Seconds of steady state over which the leader's CPU is measured.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// How many `pool show` calls are timed.
        #[arg(long, default_value_t = 200)]
        pool_reads: usize,
        /// How many hosts are stopped at the end to time their loss's detection.
        #[arg(long, default_value_t = 20)]
        losses: usize,
        /// Agents per UDP socket.
        #[arg(long, default_value_t = 250)]
        per_socket: usize,
        /// The agents' heartbeat interval, in milliseconds.
        #[arg(long, default_value_t = qvdc_host::agent::HEARTBEAT_INTERVAL_MS_DEFAULT)]
        heartbeat_ms: u64,
        /// After the steady window, `kill -9` the leader and time the hosts' move to the
        /// new one (the killed node stays down; restart the dev cluster afterwards).
        #[arg(long)]
        kill_leader: bool,
        /// Run the agents without their watch for the next leader (ADR 32), to measure what
        /// it costs the followers and what it buys after a leader kill.
        #[arg(long)]
        without_leader_watch: bool,
        /// Worker threads of this process's runtime.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Concurrent operators under faults drawn from the seed, then healing and convergence.
    Chaos,
    /// Pool create with a failing host, leader taken away, old leader back.
    PoolFlow,
    /// A follower misses the purged log and catches up by snapshot.
    CatchUp,
    /// A VM placed, started, kept on its host across a leader loss, stopped and deleted.
    VmFlow,
    /// HA: a host's power loss with a leader crash, a host's isolation, an agent killed
    /// with its guest running; VMs restarted elsewhere, never twice.
    HaFlow,
    /// Moves: live and cold migrations, a leader crash and a source's power loss mid-copy,
    /// a host's evacuation for maintenance; never twice.
    MoveFlow,
    /// A host left with only a deposed leader, whose state is stale, must not obey it.
    DeposedLeader,
    /// A domain qvdc did not create adopted, driven across a leader loss, and released.
    Adoption,
    /// A leader with a slow clock cut off from its peers, read right after its successor's
    /// acknowledged write: the lease at its edge.
    LeaseEdge,
    /// A create and a reboot carried out, their answers lost with their leader, retried
    /// with the same request ids through the next: nothing happens twice.
    RetriedRequests,
    /// A write left waiting on a leader cut off from its peers, whose successor's snapshot
    /// later replaces that leader's log: it is answered as soon as the leadership ends.
    StrandedWrite,
}

#[derive(Debug, Clone, clap::Args)]
struct Shape {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "chaos")]
    scenario: Scenario,
    /// Number of control-plane nodes (chaos, pool-flow, vm-flow; the others use 3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=7))]
    nodes: u64,
    /// Number of host agents.
    #[arg(long, default_value_t = 10)]
    hosts: usize,
    /// Hosts (1-based, comma-separated) whose pool mounts always fail (pool-flow, vm-flow).
    #[arg(long, value_delimiter = ',')]
    failing_hosts: Vec<usize>,
    /// How the leader is taken away once the pool is up (pool-flow, vm-flow).
    #[arg(long, value_enum, default_value = "crash")]
    disruption: Disruption,
    /// Faults the chaos phase draws from (comma-separated), or `none`.
    #[arg(long, value_delimiter = ',', value_parser = parse_fault, default_value = "all")]
    faults: Vec<Option<Vec<FaultKind>>>,
    /// Simulated seconds of the chaos phase.
    #[arg(long, default_value_t = qvdc_simulation::faults::CHAOS_MS_DEFAULT / 1000)]
    chaos_seconds: u64,
    /// Datagrams lost on every link, per thousand, for the whole run (QUIC retransmits).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=500))]
    loss_per_mille: u32,
    /// Datagrams delivered twice, per thousand, for the whole run.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=500))]
    duplicate_per_mille: u32,
    /// A deliberate bug to switch on, to see the checkers catch it (repeatable; needs a build
    /// with `--features deliberate-bugs`; `--bug help` lists them; docs/simulation.md says
    /// which checker catches each).
    #[arg(long = "bug")]
    bugs: Vec<Bug>,
    /// Chaos: keep the membership fixed. Without it, one more node starts empty, and during
    /// the chaos phase it is added (as a learner, then a voter) and removed again, under the
    /// faults in effect then.
    #[arg(long)]
    fixed_membership: bool,
}

/// A fault kind's name, `all` or `none`.
fn parse_fault(text: &str) -> Result<Option<Vec<FaultKind>>, String> {
    match text {
        "all" => Ok(Some(FaultKind::ALL.to_vec())),
        "none" => Ok(None),
        name => <FaultKind as clap::ValueEnum>::from_str(name, false)
            .map(|k| Some(vec![k]))
            .map_err(|_| {
                let names: Vec<String> = FaultKind::ALL.iter().map(|k| fault_name(*k)).collect();
                format!(
                    "no fault named {name:?}; the faults are all, none, {}",
                    names.join(", ")
                )
            }),
    }
}

fn fault_name(kind: FaultKind) -> String {
    name_of(&kind)
}

/// A value's name on the command line.
fn name_of(value: &impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

impl Shape {
    fn config(&self, seed: u64) -> SimConfig {
        let kinds: BTreeSet<FaultKind> = self.faults.iter().flatten().flatten().copied().collect();
        SimConfig {
            seed,
            nodes: self.nodes,
            hosts: self.hosts,
            failing_hosts: self.failing_hosts.clone(),
            disruption: self.disruption,
            retention: None,
            impairment: Impairment {
                loss_per_mille: self.loss_per_mille,
                duplicate_per_mille: self.duplicate_per_mille,
            },
            chaos: Chaos {
                kinds,
                duration: Duration::from_secs(self.chaos_seconds),
            },
            bugs: self.bugs.clone(),
            joining_node: self.scenario == Scenario::Chaos && !self.fixed_membership,
        }
    }

    /// The flags that reproduce this shape.
    fn flags(&self) -> String {
        let failing: Vec<String> = self.failing_hosts.iter().map(ToString::to_string).collect();
        let config = self.config(0);
        let faults: Vec<String> = config.chaos.kinds.iter().map(|k| fault_name(*k)).collect();
        let faults = if faults.is_empty() {
            "none".to_owned()
        } else {
            faults.join(",")
        };
        let mut flags = format!(
            "--scenario {} --nodes {} --hosts {} --disruption {} --faults {faults} \
             --chaos-seconds {} --loss-per-mille {} --duplicate-per-mille {}",
            name_of(&self.scenario),
            self.nodes,
            self.hosts,
            name_of(&self.disruption),
            self.chaos_seconds,
            self.loss_per_mille,
            self.duplicate_per_mille
        );
        if !failing.is_empty() {
            flags.push_str(&format!(" --failing-hosts {}", failing.join(",")));
        }
        for bug in &self.bugs {
            flags.push_str(&format!(" --bug {}", bug.name()));
        }
        if self.fixed_membership {
            flags.push_str(" --fixed-membership");
        }
        flags
    }

    /// Runs one seed.
    fn run_one(&self, seed: u64) -> anyhow::Result<SeedRun> {
        let config = self.config(seed);
        let mut log = LogLifecycle::default();
        let run = match self.scenario {
            Scenario::Chaos => {
                let o = chaos::run(&config)?;
                let summary = format!(
                    "{} faults, {} registry operations ({} unknown outcome) linearizable, {} VMs, \
                     {} membership changes; converged {:?} after healing (simulated); {}",
                    o.faults.injected,
                    o.operations,
                    o.unknown,
                    o.vms,
                    o.membership_changes,
                    o.heal,
                    lifecycle(&o.log)
                );
                log = o.log;
                (o.trace, o.trace_hash, summary)
            }
            Scenario::CatchUp => {
                let o = catch_up::run(seed)?;
                let summary = format!(
                    "node {} crashed at index {}, the leader purged through {}, the node caught \
                     up with snapshot {}",
                    o.follower, o.applied_before_crash, o.leader_purged, o.follower_snapshot
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::DeposedLeader => {
                let o = deposed_leader::run(&config)?;
                let summary = format!(
                    "cp{} deposed by cp{}; the host refused it {} times and kept its state",
                    o.old, o.new, o.refusals
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::Adoption => {
                let o = adoption::run(&config)?;
                let summary = format!(
                    "legacy-db adopted (id recorded {:?} after the request), driven across a leader loss and released untouched (simulated)",
                    o.adopted_in
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::LeaseEdge => {
                let o = lease_edge::run(&config)?;
                let answered = o.rounds.iter().filter(|r| r.answered).count();
                let writes: Vec<String> = o
                    .rounds
                    .iter()
                    .map(|r| format!("cp{}→cp{} {:?}", r.old, r.new, r.cut_to_write))
                    .collect();
                let summary = format!(
                    "{} rounds (cut → successor's write: {}); the cut-off leader answered {} \
                     of the reads after it, each with the write (simulated)",
                    o.rounds.len(),
                    writes.join(", "),
                    answered
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::RetriedRequests => {
                let o = retried_requests::run(&config)?;
                let summary = format!(
                    "create retried {:?} after cp{} crashed, reboot retried {:?} after cp{} \
                     crashed; each took effect once (simulated)",
                    o.retried_in[0], o.crashed[0], o.retried_in[1], o.crashed[1]
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::StrandedWrite => {
                let o = stranded_write::run(&config)?;
                let summary = format!(
                    "the write stranded on deposed cp{} answered {:?} after the cut healed, \
                     through cp{} (simulated)",
                    o.old, o.answered_in, o.new
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::VmFlow => {
                let o = vm_flow::run(&config)?;
                let summary = format!(
                    "VM placed on {}, running {:?} after create (simulated)",
                    o.host, o.create_to_running
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::HaFlow => {
                let o = ha_flow::run(&config)?;
                let summary = format!(
                    "power loss -> VMs running elsewhere after {:?}; isolation -> after {:?} \
                     (simulated)",
                    o.restarts, o.isolation_restart
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::MoveFlow => {
                let o = move_flow::run(&config)?;
                let summary = format!(
                    "live move done {:?} after vm migrate; maintenance moved db to {} \
                     (simulated)",
                    o.live_move, o.evacuated_to
                );
                (o.trace, o.trace_hash, summary)
            }
            Scenario::PoolFlow => {
                let o = pool_flow::run(&config)?;
                let summary = format!(
                    "pool create -> aggregate {:?}; leader cp{} crash -> same aggregate {:?} \
                     (simulated)",
                    o.create_to_aggregate, o.crashed_node, o.crash_to_aggregate
                );
                (o.trace, o.trace_hash, summary)
            }
        };
        let (trace, trace_hash, summary) = run;
        Ok(SeedRun {
            trace,
            trace_hash,
            summary,
            log,
        })
    }
}

/// What one seed's run did: its trace, the trace's hash, a one-line summary and, for the
/// chaos scenario, what the nodes did with their logs.
struct SeedRun {
    trace: Vec<String>,
    trace_hash: u64,
    summary: String,
    log: LogLifecycle,
}

/// What the nodes did with their logs, in words.
fn lifecycle(log: &LogLifecycle) -> String {
    format!(
        "{} snapshots built, {} installed, {} log purges",
        log.snapshots_built, log.snapshots_installed, log.purges
    )
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

/// What the report line of a seed's process starts with when its run passed...
const SEED_PASSED: &str = "qvsim-seed-report passed";
/// ... and when it failed with an error (a panic or an abort prints no such line).
const SEED_FAILED: &str = "qvsim-seed-report failed: ";

/// Runs every seed in a process of its own, as many at once as there are cores: a seed
/// whose run panics, even where unwinding cannot be caught (a destructor panicking while a
/// runtime shuts down aborts the process), fails alone, with its replay command, and the
/// other seeds still run.
fn run(seeds: Range<u64>, limit: Duration, shape: &Shape) -> ExitCode {
    let started = Instant::now();
    let total = seeds.end - seeds.start;
    let next = Mutex::new(seeds);
    let failures = Mutex::new(Vec::new());
    let log = Mutex::new(LogLifecycle::default());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(seed) = next.lock().expect("seed lock").next() else {
                    return;
                };
                match run_in_process(seed, limit, shape) {
                    Ok(counted) => log.lock().expect("log lock").add(counted),
                    Err(e) => failures
                        .lock()
                        .expect("failure lock")
                        .push((seed, format!("{e:#}"))),
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
    let log = log.into_inner().expect("log lock");
    let exercised = if shape.scenario == Scenario::Chaos {
        format!("; the passed runs: {}", lifecycle(&log))
    } else {
        String::new()
    };
    println!(
        "{} passed, {} failed ({total} seeds in {elapsed:.1} s on {workers} threads, {:.0} seeds/min){exercised}",
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

/// Runs `seed` in a child process (this program's hidden `seed` command) and reads its
/// verdict: its report line, or else the first panic it printed and how it ended. A child
/// that runs longer than `limit` is killed and reported as hung.
fn run_in_process(seed: u64, limit: Duration, shape: &Shape) -> anyhow::Result<LogLifecycle> {
    let program = std::env::current_exe().context("finding this program to run a seed")?;
    let mut command = std::process::Command::new(program);
    command.args(["seed", "--seed", &seed.to_string()]);
    command.args(shape.flags().split_whitespace());
    // The first panic's message is what the report needs; backtraces would bury it.
    command.env("RUST_BACKTRACE", "0");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a process for the seed")?;
    // Read both pipes while waiting, so a chatty child never blocks on a full one.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the seed's process")? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "the run did not finish within {} s of wall time (a deadlock or a livelock; \
                 a replay shows where it stops, e.g. with QVSIM_LOG=debug)",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = stdout.lines().rev().find(|l| is_report(l));
    if report.is_none_or(|line| line.starts_with(SEED_FAILED)) {
        // QVSIM_DUMP=1 (or QVSIM_LOG) made the child print its trace (or logs) to stderr.
        if std::env::var_os("QVSIM_DUMP").is_some() || std::env::var_os("QVSIM_LOG").is_some() {
            eprintln!("--- seed {seed} ---\n{stderr}");
        }
    }
    match report {
        Some(line) if line.starts_with(SEED_FAILED) => {
            let error = line.strip_prefix(SEED_FAILED).unwrap_or(line);
            return Err(anyhow::anyhow!("{error}"));
        }
        // A pass counts only from a process that also ended well.
        Some(line) if output.status.success() => return parse_counts(line),
        _ => {}
    }
    let ended = match (output.status.code(), exit_signal(&output.status)) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(6)) => "aborted (SIGABRT)".to_owned(),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without a status".to_owned(),
    };
    match first_panic(&stderr) {
        Some(panic) => anyhow::bail!("the run panicked, and its process {ended}: {panic}"),
        None => anyhow::bail!(
            "its process {ended} without a report; its last words: {}",
            stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        ),
    }
}

fn is_report(line: &str) -> bool {
    line.starts_with(SEED_PASSED) || line.starts_with(SEED_FAILED)
}

/// The counts of a passed report line: `SEED_PASSED BUILT INSTALLED PURGES`.
fn parse_counts(line: &str) -> anyhow::Result<LogLifecycle> {
    let counts: Vec<usize> = line
        .strip_prefix(SEED_PASSED)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("a seed's report line {line:?}"))?;
    let [snapshots_built, snapshots_installed, purges] = counts[..] else {
        anyhow::bail!("a seed's report line {line:?} has not three counts");
    };
    Ok(LogLifecycle {
        snapshots_built,
        snapshots_installed,
        purges,
    })
}

#[cfg(unix)]
fn exit_signal(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn exit_signal(_: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// The first panic in a process's standard error: where it happened and its message.
fn first_panic(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("panicked at"));
    let at = lines.next()?;
    let at = &at[at.find("panicked at")?..];
    let message = lines.next().unwrap_or_default();
    Some(format!("{} {message}", at.trim_end_matches(':')))
}

/// The hidden `seed` command: runs one seed and prints its report line.
fn seed(seed: u64, shape: &Shape) -> ExitCode {
    match shape.run_one(seed) {
        Ok(SeedRun { log, .. }) => {
            println!(
                "{SEED_PASSED} {} {} {}",
                log.snapshots_built, log.snapshots_installed, log.purges
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line: the error's chain joined, newlines folded.
            let error = format!("{e:#}").replace('\n', " ");
            println!("{SEED_FAILED}{error}");
            ExitCode::FAILURE
        }
    }
}

fn replay(seed: u64, trace: bool, shape: &Shape) -> anyhow::Result<()> {
    let started = Instant::now();
    let SeedRun {
        trace: events,
        trace_hash: hash,
        summary,
        ..
    } = shape
        .run_one(seed)
        .with_context(|| format!("seed {seed}"))?;
    if trace {
        events.iter().for_each(|event| println!("{event}"));
    }
    println!(
        "seed {seed}: ok in {:.2} s wall; trace {hash:016x} ({} events); {summary}",
        started.elapsed().as_secs_f64(),
        events.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            seeds,
            seed_timeout_seconds,
            shape,
        } => run(seeds, Duration::from_secs(seed_timeout_seconds), &shape),
        Command::Seed { seed: n, shape } => seed(n, &shape),
        Command::Replay { seed, trace, shape } => match replay(seed, trace, &shape) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Swarm {
            dev,
            hosts,
            pool_hosts,
            seconds,
            pool_reads,
            losses,
            per_socket,
            heartbeat_ms,
            kill_leader,
            without_leader_watch,
            threads,
        } => {
            let config = qvdc_simulation::swarm::SwarmConfig {
                dev_dir: dev,
                hosts,
                per_socket: per_socket.max(1),
                pool_hosts: pool_hosts.min(hosts),
                steady: Duration::from_secs(seconds),
                pool_reads,
                losses: losses.min(hosts),
                heartbeat_ms,
                kill_leader,
                leader_watch: !without_leader_watch,
            };
            match swarm(&config, threads) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn swarm(config: &qvdc_simulation::swarm::SwarmConfig, threads: usize) -> anyhow::Result<()> {
    // The agents' logs, as for a replay: QVSIM_LOG=qvdc_host=warn (any tracing filter).
    if let Ok(filter) = std::env::var("QVSIM_LOG") {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(qvdc_simulation::swarm::run(config))?;
    let view = match report.heartbeat_to_view {
        Some((p50, p99)) => format!("p50 <= {p50:.1} ms, p99 <= {p99:.1} ms"),
        None => "not served (start the nodes with --metrics-listen)".into(),
    };
    println!(
        "swarm of {} hosts: registered in {:.1} s ({} sessions failed meanwhile)",
        report.hosts,
        report.registered_in.as_secs_f64(),
        report.session_ends_registering
    );
    println!(
        "  leader: {:.3} cores, {:.0} MiB resident; heartbeat to view {view} ({:.0} pool reports/s)",
        report.leader_cores, report.leader_rss_mib, report.pool_reports_per_s
    );
    let followers: Vec<String> = (report.follower_cores.iter())
        .map(|cores| format!("{cores:.3}"))
        .collect();
    println!("  followers: {} cores", followers.join(" and "));
    println!(
        "  this process (the swarm): {:.3} cores",
        report.swarm_cores
    );
    println!(
        "  pool show of a pool on {} hosts: {}",
        report.pool_hosts, report.pool_show
    );
    if let Some(kill) = &report.leader_kill {
        let elected = kill
            .elected_after
            .map_or("not seen".into(), |d| format!("{} ms", d.as_millis()));
        println!(
            "  leader kill -9: new leader named after {elected}; {} of {} hosts registered with it, {}; at most {} shown Unreachable; {} sessions failed meanwhile",
            kill.registered_count, report.hosts, kill.registered, kill.unreachable_max, kill.sessions_failed
        );
    }
    println!("  host loss detection: {}", report.detection);
    Ok(())
}
