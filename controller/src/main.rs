//! The `lazyxds` binary: parses the command line and runs it (`run` is
//! [`lazyxds::runtime`]).
// One FFI call, to the allocator this binary links (`memory::release_free_pages`).
#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use lazyxds::filemode;
use lazyxds::runtime::{RunArgs, ScopingArgs};
use lazyxds_index::{desired, report, Index};

/// mimalloc gives freed memory back to the system: with glibc's malloc the pages that
/// watch lists and writer passes use for a moment stay resident (bench P7: about three
/// times the live heap at 100k pods).
/// (`--features system-alloc`: glibc's malloc instead, so heaptrack can see every
/// allocation; for profiling only.)
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// After a burst (a flood of gateway streams or connections, a big pass) mimalloc keeps
/// the pages each thread freed for that thread's next allocations: memory held for
/// nothing (issue 15 item 7: a flood's 16 MiB of heap stayed after it ended). Each
/// runtime worker hands its free pages back when it goes idle, at most once per
/// [`RELEASE_EVERY`] (a forced collect costs some 30 µs on a 20 MB heap); a worker that
/// went idle too soon after its last collect is woken once more to do it.
mod memory {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::time::{Duration, Instant};

    pub const RELEASE_EVERY: Duration = Duration::from_secs(1);

    /// Workers that went idle with pages perhaps not handed back.
    static PENDING: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
        static OWED: Cell<bool> = const { Cell::new(false) };
    }

    /// `on_thread_park`: hands the worker's free pages back, or owes it.
    pub fn on_park() {
        let now = Instant::now();
        let due = LAST
            .get()
            .is_none_or(|at| now.saturating_duration_since(at) >= RELEASE_EVERY);
        if due {
            LAST.set(Some(now));
            if OWED.replace(false) {
                PENDING.fetch_sub(1, Relaxed);
            }
            release_free_pages();
        } else if !OWED.replace(true) {
            PENDING.fetch_add(1, Relaxed);
        }
    }

    /// Wakes owing workers (a no-op task each; they collect as they park again).
    pub fn nudge_owing_workers(runtime: tokio::runtime::Handle) {
        std::thread::spawn(move || loop {
            std::thread::sleep(RELEASE_EVERY);
            for _ in 0..PENDING.load(Relaxed) {
                drop(runtime.spawn(async {}));
            }
        });
    }

    #[cfg(feature = "system-alloc")]
    fn release_free_pages() {}

    #[cfg(not(feature = "system-alloc"))]
    #[allow(unsafe_code)]
    fn release_free_pages() {
        extern "C" {
            /// mimalloc's own (`mimalloc.h`), in the library the global allocator links.
            fn mi_collect(force: bool);
        }
        // SAFETY: no preconditions; it frees nothing still in use, only the calling
        // thread's empty pages and the arenas' pages due to be purged.
        unsafe { mi_collect(true) }
    }
}

/// lazyxds: learns workload dependencies from gateway edges and keeps Istio Sidecars
/// scoped to them.
#[derive(Debug, Parser)]
#[command(name = "lazyxds", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller: accept gateway edge streams (gRPC) and serve debug/health
    /// endpoints (HTTP). With --file/--out: learn dependencies for the workloads of a
    /// topology file and keep their Sidecars, as YAML files, in a directory.
    Run(RunArgs),
    /// Per workload: hosts visible without scoping vs with, and the clusters and
    /// endpoints scoping removes from its sidecar.
    Report(ReportArgs),
    /// Print the manifests installing lazyxds into an Istio mesh (controller, RBAC, lazy
    /// egress gateway, filter module, gateway routing):
    /// `lazyxds install | kubectl apply --server-side -f -`.
    Install(lazyxds::install::cli::InstallArgs),
    /// Print what to delete, in a safe order, including every Sidecar the controller
    /// wrote (read from the cluster): `lazyxds uninstall | kubectl delete --ignore-not-found -f -`.
    Uninstall(lazyxds::install::cli::UninstallArgs),
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Topology YAML describing the mesh (the file given to `run --file`).
    #[arg(long, env = "LAZYXDS_FILE")]
    file: PathBuf,
    /// Directory of the Sidecars `run --out` wrote (their learned deps are the state).
    #[arg(long, env = "LAZYXDS_OUT")]
    sidecars: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    scoping: ScopingArgs,
}

fn main() {
    // One line, no backtrace: these are operator errors (bad flag, busy port).
    if let Err(error) = try_main() {
        eprintln!("lazyxds: {error:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging(args.log_level.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_park(memory::on_park)
                .build()
                .context("cannot start the tokio runtime")?;
            memory::nudge_owing_workers(runtime.handle().clone());
            let result = runtime.block_on(args.run());
            // A topology still being parsed on a blocking thread must not hold the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
        Command::Report(args) => print_report(&args),
        Command::Install(args) => print_install(&args),
        Command::Uninstall(args) => print_uninstall(&args),
    }
}

fn print_install(args: &lazyxds::install::cli::InstallArgs) -> Result<()> {
    let install = lazyxds::install::render(&args.to_config()?)?;
    match &args.out_dir {
        Some(dir) => {
            for name in install.write_dir(dir)? {
                eprintln!("wrote {}", dir.join(name).display());
            }
        }
        None => print!("{}", install.to_yaml()?),
    }
    Ok(())
}

fn print_uninstall(args: &lazyxds::install::cli::UninstallArgs) -> Result<()> {
    let config = args.to_config()?;
    if args.wait {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?
            .block_on(async {
                let client = kube::Client::try_default().await.context(
                    "no Kubernetes credentials (in-cluster, KUBECONFIG or ~/.kube/config)",
                )?;
                let timeout = std::time::Duration::from_secs(args.wait_timeout_secs);
                let log = |line: String| eprintln!("lazyxds uninstall: {line}");
                lazyxds::install::cluster::drain(&client, &config, timeout, &log).await
            });
    }
    let owned = if args.offline {
        Vec::new()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?
            .block_on(async {
                let client = kube::Client::try_default().await.context(
                    "no Kubernetes credentials (KUBECONFIG or ~/.kube/config) to list the \
                     Sidecars to delete; --offline renders without them",
                )?;
                lazyxds::install::cluster::list_owned(&client)
                    .await
                    .context("listing the objects lazyxds owns")
            })?
    };
    let refs = lazyxds::install::uninstall(&config, &owned)?;
    print!(
        "{}",
        lazyxds::install::uninstall_yaml(&refs, !args.offline)?
    );
    Ok(())
}

fn print_report(args: &ReportArgs) -> Result<()> {
    let topology = filemode::load_topology(&args.file)?;
    let mut index = Index::new(args.scoping.index_config());
    // A report changes nothing: it reads whatever is there.
    filemode::load_state((&args.file, &topology), &args.sidecars, &mut index, 100)?;
    let render = topology.render_config(args.scoping.render_config());
    let desired = desired(&index, &render);
    let report = report(&index, &desired, &render);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

fn init_logging(level: Option<&str>) -> Result<()> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escape codes only for people; tests and log collectors read plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}
