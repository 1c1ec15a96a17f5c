//! berthd: Berth's CRI daemon.

mod authority;
mod config;
mod cri;
mod listener;
mod live;
mod logging;
mod metrics;
mod notify;
mod nri;
mod reload;
mod rlimit;
mod rpc_trace;
mod state_dirs;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;

use berth_proto::cri::image_service_server::ImageServiceServer;
use berth_proto::cri::runtime_service_server::RuntimeServiceServer;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::{Config, LogFormat, Overrides, Sources};

/// How long in-flight RPCs may run on after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "berthd",
    version,
    about = "Berth: a Kubernetes CRI container runtime"
)]
struct Cli {
    /// Main config file; a missing file is an error only when given here.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Drop-in dir whose *.toml files apply after the main file, in lexical order.
    #[arg(long, global = true, value_name = "DIR", default_value = config::DEFAULT_DROP_IN_DIR)]
    config_dir: PathBuf,
    /// Persistent state root.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Volatile state root.
    #[arg(long, global = true, value_name = "DIR")]
    run_root: Option<PathBuf>,
    /// CRI unix socket path.
    #[arg(long, global = true, value_name = "SOCKET")]
    listen: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace or tracing directives.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Runtime handler for pods that name none.
    #[arg(long, global = true, value_name = "NAME")]
    default_runtime: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the effective configuration as TOML and exit.
    Config,
}

fn main() -> ExitCode {
    // SAFETY: first thing, while berthd has a single thread.
    unsafe { notify::take_socket() };
    let cli = Cli::parse();
    let sources = Sources {
        file_required: cli.config.is_some(),
        file: cli
            .config
            .clone()
            .unwrap_or_else(|| config::DEFAULT_CONFIG_FILE.into()),
        drop_in_dir: cli.config_dir.clone(),
    };
    let overrides = Overrides {
        root: cli.root,
        run_root: cli.run_root,
        listen: cli.listen,
        log_level: cli.log_level,
        log_format: cli.log_format,
        default_runtime: cli.default_runtime,
    };
    // Kept for SIGHUP, which reloads from the same files and flags.
    let reload_from = (sources.clone(), overrides.clone());
    let config = match config::load(&sources, &overrides) {
        Ok(loaded) => loaded.config,
        Err(err) => {
            eprintln!("berthd: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Config) => match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("berthd: cannot print the config: {err}");
                ExitCode::FAILURE
            }
        },
        None => serve(config, reload_from),
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    #[error(transparent)]
    StateDir(#[from] state_dirs::StateDirError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Images(#[from] berth_image::StoreError),
    #[error("cannot start the streaming server on {addr}: {source}")]
    Streaming {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Containers(#[from] berth_runtime::record::StoreError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Nri(#[from] berth_nri::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

fn serve(config: Config, reload_from: (Sources, Overrides)) -> ExitCode {
    let log = logging::init(&config.log_level, config.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)
        .and_then(|runtime| runtime.block_on(run(config, reload_from, log)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("berthd: {err}");
            ExitCode::FAILURE
        }
    }
}

/// berthd's start-up in order: state dirs, lock, stores, recovery, the
/// streaming and metrics servers, the socket, signals, then serving until
/// a stop. Long because the order is the contract (DESIGN.md).
async fn run(
    config: Config,
    (sources, overrides): (Sources, Overrides),
    log: logging::LevelHandle,
) -> Result<(), ServeError> {
    if let Some(name) = berth_failpoint::armed() {
        if berth_failpoint::ALL.contains(&name) {
            tracing::warn!("failpoint {name} armed: berthd kills itself with SIGKILL there");
        } else {
            tracing::warn!("{} names no failpoint: {name:?}", berth_failpoint::ENV);
        }
    }
    // First: SIGHUP's default action would end the process.
    let mut sighup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    // A lower limit only costs containers later, so it is not fatal.
    match rlimit::raise_nofile() {
        Ok(limit) => tracing::debug!("open-file limit {limit}"),
        Err(err) => tracing::warn!("{err}"),
    }
    state_dirs::secure(&config.root, &config.run_root)?;
    let _root_lock = listener::lock(&config.root.join("berthd.lock"), "state root", &config.root)?;
    let images = cri::open_store(&config)?;
    let socket_lock_path = PathBuf::from(format!("{}.lock", config.listen.display()));
    let _socket_lock = listener::lock(&socket_lock_path, "socket", &config.listen)?;
    // Before the socket, so a taken metrics port leaves no socket behind.
    let metrics_listener = match config.metrics.enabled {
        true => Some(metrics::bind(config.metrics.address).await?),
        false => None,
    };
    // Before the socket too: a bad address or TLS file stops start-up.
    let streaming = cri::start_server(&config.streaming)
        .await
        .map_err(|source| ServeError::Streaming {
            addr: (config.streaming.address, config.streaming.port).into(),
            source,
        })?;
    // Handlers before the socket: clients (and a supervisor's stop) act once
    // the socket exists, and a signal's default action would kill berthd.
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let socket = listener::bind(&config.listen)?;

    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!("{name} received; finishing in-flight RPCs");
        if let Err(err) = notify::stopping() {
            tracing::warn!("{err}");
        }
        let _ = stopping_tx.send(true);
    });
    let stop_requested = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };

    let listen = config.listen.clone();
    tracing::info!(
        socket = %listen.display(),
        root = %config.root.display(),
        run_root = %config.run_root.display(),
        streaming = %streaming.base_url(),
        version = env!("CARGO_PKG_VERSION"),
        "berthd serving CRI v1"
    );
    let nri_config = config.nri.clone();
    let service = cri::CriService::new(config, images, streaming)?;
    nri::start(&nri_config, &service)?;
    service.register_metrics(metrics::global());
    if let Some(listener) = metrics_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "serving metrics at http://{address}/metrics");
        }
        tokio::spawn(metrics::serve(listener));
    }
    let reloader = reload::Reloader {
        sources,
        overrides,
        live: service.live().clone(),
        images: service.images().clone(),
        log,
    };
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading the config");
            reloader.reload();
        }
    });
    if let Err(err) = notify::ready() {
        tracing::warn!("{err}");
    }
    // Every client's :authority is accepted (authority.rs), under the same
    // frame and header limits the filter enforces (hyper's defaults).
    let incoming =
        UnixListenerStream::new(socket).map(|conn| conn.map(authority::AuthorityFilter::new));
    let server = tonic::transport::Server::builder()
        .max_frame_size(authority::MAX_FRAME_SIZE)
        .http2_max_header_list_size(authority::MAX_HEADER_LIST_SIZE)
        .layer(rpc_trace::RpcTraceLayer)
        .add_service(RuntimeServiceServer::new(service.clone()))
        .add_service(ImageServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, stop_requested(stopping.clone()));
    // Graceful shutdown waits for every client to close its connection, and a
    // kubelet never does: after the grace period, in-flight work is abandoned.
    let grace_expired = async {
        stop_requested(stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let served = tokio::select! {
        served = server => served,
        () = grace_expired => {
            tracing::warn!("RPCs still running {SHUTDOWN_GRACE:?} after the stop signal; exiting anyway");
            Ok(())
        }
    };
    if let Err(err) = std::fs::remove_file(&listen) {
        tracing::warn!("cannot remove socket {}: {err}", listen.display());
    }
    served?;
    tracing::info!("berthd stopped");
    Ok(())
}
