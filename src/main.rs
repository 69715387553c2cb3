//! The `switchboard` command: `serve` runs the broker, `ctl` queries a running one, `bench`
//! load-tests one.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use switchboard::ctl::api::Api;
use switchboard::ctl::cluster as ctl_cluster;
use switchboard::ctl::quorum as ctl_quorum;
use switchboard::ctl::{manage, operate, run_listing, LISTINGS};
use switchboard::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A message broker for AMQP 0-9-1, MQTT and STOMP"
)]
struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, global = true, default_value = "info", env = "SWITCHBOARD_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (on the embedded default configuration unless --config is given).
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write the bound addresses as JSON here once listening (for tools and tests).
        #[arg(long)]
        ports_file: Option<PathBuf>,
    },
    /// Load-test a broker (AMQP, STOMP, cross-protocol) on 127.0.0.1 by default.
    Bench(Box<switchboard::bench::cli::BenchArgs>),
    /// Query and manage a running broker through its HTTP API, like rabbitmqctl.
    Ctl {
        /// Base URL of the broker's HTTP API.
        #[arg(long, default_value = "http://127.0.0.1:15672")]
        url: String,
        #[arg(long, default_value = "guest")]
        user: String,
        #[arg(long, default_value = "guest")]
        password: String,
        /// Virtual host to list or change.
        #[arg(short = 'p', long, default_value = "/")]
        vhost: String,
        /// Print only the rows, without the informational line.
        #[arg(short, long)]
        quiet: bool,
        /// list_queues, list_exchanges, list_bindings, list_connections, or a user, vhost or
        /// permission command (add_user, set_permissions, list_users, ...)
        command: String,
        /// Columns to show (as rabbitmqctl's info items), or the command's arguments.
        #[arg(allow_hyphen_values = true)]
        columns: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log_level).context("bad --log-level")?)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve { config, ports_file } => serve(config, ports_file),
        Command::Bench(args) => switchboard::bench::cli::main(*args),
        Command::Ctl {
            url,
            user,
            password,
            vhost,
            quiet,
            command,
            columns,
        } => {
            let api = Api::new(&url, &user, &password);
            let result = operate::run(&api, &vhost, &command, &columns)
                .or_else(|| manage::run(&api, &vhost, &command, &columns))
                .or_else(|| ctl_cluster::run(&api, &command, &columns))
                .or_else(|| ctl_quorum::run(&api, &vhost, &command, &columns));
            if let Some(result) = result {
                let out = result?;
                if !quiet {
                    eprintln!("{}", out.info);
                }
                for line in out.lines {
                    println!("{line}");
                }
                return Ok(());
            }
            let listing = LISTINGS
                .iter()
                .find(|l| l.command == command)
                .with_context(|| {
                    let known: Vec<_> = LISTINGS
                        .iter()
                        .map(|l| l.command)
                        .chain(manage::COMMANDS.iter().map(|c| c.0))
                        .chain(operate::COMMANDS.iter().map(|c| c.0))
                        .chain(ctl_cluster::COMMANDS.iter().map(|c| c.0))
                        .chain(ctl_quorum::COMMANDS.iter().map(|c| c.0))
                        .collect();
                    format!(
                        "unknown ctl command '{command}'; known: {}",
                        known.join(", ")
                    )
                })?;
            if !quiet {
                if listing.per_vhost {
                    eprintln!("Listing {} for vhost {vhost} ...", listing.what);
                } else {
                    eprintln!("Listing {} ...", listing.what);
                }
            }
            for line in run_listing(listing, &url, &user, &password, &vhost, &columns)? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

fn serve(config: Option<PathBuf>, ports_file: Option<PathBuf>) -> anyhow::Result<()> {
    switchboard::core::process_memory::use_one_malloc_arena();
    let config = Config::load(config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let running = switchboard::start(config).await?;
        if let Some(path) = ports_file {
            running.write_ports_file(&path)?;
        }
        tracing::info!(addrs = ?running.addrs, "Switchboard is running");
        // A signal, or `ctl stop` through the HTTP API.
        let mut stopping = running.broker.shutdown_signal();
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        anyhow::Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
