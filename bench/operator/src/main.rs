//! `sluice-bench-operator`: how fast the operator brings many DataApis to Ready on a real
//! control plane, how much memory it takes, and how many API writes it makes, converging and
//! on a no-op resync. Prints the figures with a PASS/FAIL mark against issue 9's targets.
//!
//! Each run is a child process of its own (this binary with `--one-run`), so that each starts
//! on a fresh control plane: the harness keeps one per process and removes it when it exits.
//! With `--floor`, each run also measures the harness's floor (`floor.rs`) in another child.

mod audit;
mod cpu;
mod floor;
mod objects;
mod run;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::audit::Writes;
use crate::cpu::ControlPlaneCpu;
use crate::floor::FloorFigures;
use crate::run::{Figures, Settings};

/// Target: every DataApi Ready within this many seconds of the first apply.
const READY_TARGET_SECONDS: f64 = 60.0;
/// Target: the operator's peak resident set, in MiB.
const PEAK_RSS_TARGET_MIB: f64 = 100.0;

/// Benchmarks a `sluice-operator` process on the test control plane (etcd, kube-apiserver,
/// kube-controller-manager, kube-scheduler and kwok's fake node).
#[derive(Parser, Debug)]
#[command(name = "sluice-bench-operator", about)]
struct Args {
    /// The `sluice-operator` binary to measure (a release build).
    #[arg(long)]
    operator: PathBuf,
    /// DataApis to apply, each with two ApiRoles holding one generated API key each.
    #[arg(long, default_value_t = 1000)]
    data_apis: usize,
    /// The operator's resync period; one full period is observed after all are Ready.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Server-side applies in flight at once.
    #[arg(long, default_value_t = 32)]
    apply_concurrency: usize,
    /// Seconds to wait for every DataApi to become Ready before giving up on the run.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
    /// More arguments for `sluice-operator` (repeat it), e.g. `--operator-arg=--concurrency=32`.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// Runs, each on a fresh control plane; the table shows the median (min–max).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Directory for the operator's kubeconfig while it runs.
    #[arg(long, default_value = "/var/tmp/sluice-bench")]
    work_dir: PathBuf,
    /// Also measure, in each run, the harness's floor: the same objects and the children the
    /// operator would apply, applied by the benchmark with no operator running.
    #[arg(long)]
    floor: bool,
    /// Measure once in this process and print the figures as JSON (what each run's child does).
    #[arg(long, hide = true, value_enum)]
    one_run: Option<RunKind>,
}

/// What a run's child process measures.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RunKind {
    Operator,
    Floor,
}

impl RunKind {
    fn flag(self) -> &'static str {
        match self {
            Self::Operator => "--one-run=operator",
            Self::Floor => "--one-run=floor",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.one_run {
        Some(RunKind::Operator) => one_run(&args),
        Some(RunKind::Floor) => one_floor_run(&args),
        None => all_runs(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench-operator: ERROR: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn one_run(args: &Args) -> Result<()> {
    let settings = Settings {
        operator: args.operator.clone(),
        data_apis: args.data_apis,
        resync: Duration::from_secs(args.resync_seconds),
        apply_concurrency: args.apply_concurrency.max(1),
        timeout: Duration::from_secs(args.timeout_seconds),
        operator_args: args.operator_args.clone(),
    };
    std::fs::create_dir_all(&args.work_dir).with_context(|| format!("cannot create {}", args.work_dir.display()))?;
    print_figures(run::run(&settings, &args.work_dir))
}

fn one_floor_run(args: &Args) -> Result<()> {
    print_figures(floor::run(
        args.data_apis,
        args.apply_concurrency.max(1),
        Duration::from_secs(args.timeout_seconds),
    ))
}

/// Measures once, then prints the figures as the JSON line the parent reads.
fn print_figures<T: Serialize>(measure: impl Future<Output = Result<T>>) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    let figures = runtime.block_on(measure)?;
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

fn all_runs(args: &Args) -> Result<()> {
    if !args.operator.is_file() {
        bail!("no operator binary at {}", args.operator.display());
    }
    let mut runs = Vec::with_capacity(args.runs);
    let mut floors = Vec::new();
    for number in 1..=args.runs.max(1) {
        eprintln!("bench-operator: run {number} of {}", args.runs.max(1));
        runs.push(child_run::<Figures>(RunKind::Operator, number)?);
        if args.floor {
            eprintln!("bench-operator: the floor of run {number}");
            floors.push(child_run::<FloorFigures>(RunKind::Floor, number)?);
        }
    }
    print!("{}", report(args, &runs, &floors));
    Ok(())
}

/// Runs this binary again as a run's child measuring `kind`, and reads the figures it prints.
fn child_run<T: DeserializeOwned>(kind: RunKind, number: usize) -> Result<T> {
    let output = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .arg(kind.flag())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start a run")?;
    if !output.status.success() {
        bail!("run {number} failed ({}); its error is printed above", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().context("a run printed no figures")?;
    serde_json::from_str(last).context("a run printed figures that are not JSON")
}

/// The table of figures over `runs`, each cell the median (min–max), and the writes by request
/// of the median run.
fn report(args: &Args, runs: &[Figures], floors: &[FloorFigures]) -> String {
    let all_ready = runs.iter().all(|run| run.ready_seconds.is_some());
    let ready_cell = if all_ready {
        spread(runs.iter().filter_map(|run| run.ready_seconds).collect(), 1)
    } else {
        let counts: Vec<String> = runs.iter().map(|run| run.ready.to_string()).collect();
        format!(
            "not all Ready within {} s ({} of {} per run)",
            args.timeout_seconds,
            counts.join(", "),
            args.data_apis
        )
    };
    let ready_median = median(runs.iter().filter_map(|run| run.ready_seconds).collect());
    let peak = median(runs.iter().map(|run| run.peak_rss_mib).collect());
    let resync_writes = median(runs.iter().map(|run| run.resync_writes.total as f64).collect());
    let mark = |pass: bool| if pass { "PASS" } else { "FAIL" };
    let mut rows = vec![
        [
            format!("{} DataApis Ready, s from the first apply", args.data_apis),
            ready_cell,
            format!("< {READY_TARGET_SECONDS}"),
            mark(all_ready && ready_median < READY_TARGET_SECONDS).to_owned(),
        ],
        [
            "operator peak RSS (VmHWM), MiB".to_owned(),
            spread(runs.iter().map(|run| run.peak_rss_mib).collect(), 1),
            format!("< {PEAK_RSS_TARGET_MIB}"),
            mark(peak < PEAK_RSS_TARGET_MIB).to_owned(),
        ],
        [
            "operator writes over a no-op resync".to_owned(),
            spread(runs.iter().map(|run| run.resync_writes.total as f64).collect(), 0),
            "0".to_owned(),
            mark(all_ready && resync_writes == 0.0).to_owned(),
        ],
        [
            "operator writes while converging".to_owned(),
            spread(runs.iter().map(|run| run.converge_writes.total as f64).collect(), 0),
            String::new(),
            String::new(),
        ],
        [
            "reconciles while converging, DataApi + ApiRole".to_owned(),
            format!(
                "{} + {}",
                spread(
                    runs.iter().map(|run| run.converge_reconciles.data_api as f64).collect(),
                    0
                ),
                spread(
                    runs.iter().map(|run| run.converge_reconciles.api_role as f64).collect(),
                    0
                )
            ),
            String::new(),
            String::new(),
        ],
        [
            "mean reconcile while converging, ms, DataApi + ApiRole".to_owned(),
            format!(
                "{} + {}",
                spread(runs.iter().map(|run| run.converge_reconciles.mean_ms().0).collect(), 0),
                spread(runs.iter().map(|run| run.converge_reconciles.mean_ms().1).collect(), 0)
            ),
            String::new(),
            String::new(),
        ],
        [
            "reconciles during the resync period".to_owned(),
            spread(runs.iter().map(|run| run.resync_reconciles as f64).collect(), 0),
            String::new(),
            String::new(),
        ],
        [
            "operator CPU while converging, s".to_owned(),
            spread(runs.iter().map(|run| run.converge_cpu_seconds).collect(), 1),
            String::new(),
            String::new(),
        ],
        [
            "control plane CPU while converging, s: kube-apiserver / etcd / all".to_owned(),
            control_plane_cpu_cell(runs.iter().map(|run| run.converge_control_plane_cpu)),
            String::new(),
            String::new(),
        ],
        [
            "operator RSS after the resync, MiB".to_owned(),
            spread(runs.iter().map(|run| run.final_rss_mib).collect(), 1),
            String::new(),
            String::new(),
        ],
        [
            "benchmark's applies, s (part of Ready)".to_owned(),
            spread(runs.iter().map(|run| run.apply_seconds).collect(), 1),
            String::new(),
            String::new(),
        ],
    ];
    if !floors.is_empty() {
        let cell = if floors.iter().all(|floor| floor.complete_seconds.is_some()) {
            spread(floors.iter().filter_map(|floor| floor.complete_seconds).collect(), 1)
        } else {
            let counts: Vec<String> = floors.iter().map(|floor| floor.complete.to_string()).collect();
            format!("not all complete ({} of {} per run)", counts.join(", "), args.data_apis)
        };
        rows.push([
            "floor: no operator, children applied with the objects, s to all rollouts complete".to_owned(),
            cell,
            String::new(),
            String::new(),
        ]);
        rows.push([
            "floor: its applies, s".to_owned(),
            spread(floors.iter().map(|floor| floor.apply_seconds).collect(), 1),
            String::new(),
            String::new(),
        ]);
        rows.push([
            "floor: control plane CPU, s: kube-apiserver / etcd / all".to_owned(),
            control_plane_cpu_cell(floors.iter().map(|floor| floor.control_plane_cpu)),
            String::new(),
            String::new(),
        ]);
        rows.push([
            format!("left for the operator: {READY_TARGET_SECONDS} s less the floor, s"),
            spread(
                floors
                    .iter()
                    .filter_map(|floor| floor.complete_seconds)
                    .map(|floor| READY_TARGET_SECONDS - floor)
                    .collect(),
                1,
            ),
            String::new(),
            String::new(),
        ]);
        rows.push([
            "what the operator added: Ready less its floor, s".to_owned(),
            spread(
                runs.iter()
                    .zip(floors)
                    .filter_map(|(run, floor)| Some(run.ready_seconds? - floor.complete_seconds?))
                    .collect(),
                1,
            ),
            String::new(),
            String::new(),
        ]);
        rows.push([
            "kube-apiserver CPU, operator run / its floor".to_owned(),
            spread(
                runs.iter()
                    .zip(floors)
                    .map(|(run, floor)| run.converge_control_plane_cpu.api_server / floor.control_plane_cpu.api_server)
                    .collect(),
                2,
            ),
            String::new(),
            String::new(),
        ]);
    }
    let mut out = format!(
        "operator: {} run(s), {} DataApis with 2 ApiRoles each (one generated API key per role), one DSN Secret; \
         --resync-seconds {}{}; {} applies in flight; cells are the median (min–max) when there are several runs; \
         marks use the median\n\n",
        runs.len(),
        args.data_apis,
        args.resync_seconds,
        args.operator_args
            .iter()
            .map(|arg| format!(" {arg}"))
            .collect::<String>(),
        args.apply_concurrency
    );
    out.push_str(&table(["figure", "measured", "target", "mark"], &rows));
    let median_run = runs
        .iter()
        .min_by(|a, b| {
            let distance = |run: &Figures| (run.converge_writes.total as f64 - median_writes(runs)).abs();
            distance(a).total_cmp(&distance(b))
        })
        .expect("at least one run");
    out.push_str("\nwrites by request (the run with the median writes while converging):\n");
    out.push_str(&breakdown("converging", &median_run.converge_writes));
    out.push_str(&breakdown("no-op resync", &median_run.resync_writes));
    out
}

fn median_writes(runs: &[Figures]) -> f64 {
    median(runs.iter().map(|run| run.converge_writes.total as f64).collect())
}

fn breakdown(phase: &str, writes: &Writes) -> String {
    let mut out = format!("  {phase}: {}\n", writes.total);
    for (request, count) in &writes.by_request {
        out.push_str(&format!("    {count:>6}  {request}\n"));
    }
    out
}

/// One cell for the control plane's CPU over several runs: kube-apiserver / etcd / all.
fn control_plane_cpu_cell(samples: impl Iterator<Item = ControlPlaneCpu> + Clone) -> String {
    let part = |pick: fn(&ControlPlaneCpu) -> f64| spread(samples.clone().map(|sample| pick(&sample)).collect(), 1);
    format!(
        "{} / {} / {}",
        part(|sample| sample.api_server),
        part(|sample| sample.etcd),
        part(|sample| sample.total)
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// `median (min–max)`, or the one value, with `decimals` decimals.
fn spread(mut values: Vec<f64>, decimals: usize) -> String {
    values.sort_by(f64::total_cmp);
    match values.as_slice() {
        [] => "-".to_owned(),
        [one] => format!("{one:.decimals$}"),
        [min, .., max] => format!(
            "{:.decimals$} ({min:.decimals$}–{max:.decimals$})",
            median(values.clone())
        ),
    }
}

/// A Markdown table with padded columns.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|cell| cell.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|cell| (*cell).to_owned()).collect());
    out.push_str(&line(widths.iter().map(|width| "-".repeat(*width)).collect()));
    for row in rows {
        out.push_str(&line(row.to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_shows_the_median_and_range() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0], 1), "2.0 (1.0–3.0)");
        assert_eq!(spread(vec![4.0, 1.0], 0), "2 (1–4)");
        assert_eq!(spread(vec![7.25], 1), "7.2");
    }

    #[test]
    fn table_pads_every_column() {
        let rendered = table(["a", "bb"], &[["ccc".to_owned(), "d".to_owned()]]);

        assert_eq!(rendered, "| a   | bb |\n| --- | -- |\n| ccc | d  |\n");
    }
}
