//! The `switchboard` command: `serve` runs the broker, `ctl` queries a running one.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use switchboard::ctl::{run_listing, LISTINGS};
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
    /// Load-test an AMQP broker: publishers -> queue -> consumers, on 127.0.0.1 by default.
    Bench {
        /// AMQP address of the broker.
        #[arg(long, default_value = "127.0.0.1:5672")]
        addr: std::net::SocketAddr,
        #[arg(long, default_value = "guest")]
        user: String,
        #[arg(long, default_value = "guest")]
        password: String,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 1)]
        consumers: usize,
        /// Body size in bytes (at least 8: the body carries a timestamp).
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Seconds to publish for (at most 600).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Acknowledge manually (one multiple-ack per read) with this prefetch instead of auto-ack.
        #[arg(long)]
        manual_ack: Option<u16>,
        /// Messages published but not yet consumed before publishers pause.
        #[arg(long, default_value_t = 100_000)]
        max_in_flight: u64,
        #[arg(long, default_value = "switchboard-bench")]
        queue: String,
        /// Persistent messages (delivery mode 2) to a durable queue.
        #[arg(long)]
        persistent: bool,
        /// Publisher confirms, with at most this many unconfirmed messages per publisher.
        #[arg(long)]
        confirm: Option<u32>,
        /// Stop publishing after this many messages in all (besides --duration).
        #[arg(long)]
        messages: Option<u64>,
        /// The broker's pid: report its CPU seconds per million messages.
        #[arg(long)]
        broker_pid: Option<u32>,
    },
    /// Query a running broker through its HTTP API, like rabbitmqctl.
    Ctl {
        /// Base URL of the broker's HTTP API.
        #[arg(long, default_value = "http://127.0.0.1:15672")]
        url: String,
        #[arg(long, default_value = "guest")]
        user: String,
        #[arg(long, default_value = "guest")]
        password: String,
        /// Virtual host to list.
        #[arg(short = 'p', long, default_value = "/")]
        vhost: String,
        /// Print only the rows, without the informational line.
        #[arg(short, long)]
        quiet: bool,
        /// list_queues, list_exchanges, list_bindings or list_connections
        command: String,
        /// Columns to show (as rabbitmqctl's info items).
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
        Command::Bench {
            addr,
            user,
            password,
            publishers,
            consumers,
            size,
            duration,
            manual_ack,
            max_in_flight,
            queue,
            persistent,
            confirm,
            messages,
            broker_pid,
        } => {
            let scenario = switchboard::bench::AmqpScenario {
                addr,
                user,
                password,
                publishers,
                consumers,
                size: size.max(8),
                duration: std::time::Duration::from_secs(duration.min(600)),
                manual_ack: manual_ack.is_some(),
                prefetch: manual_ack.unwrap_or(0),
                max_in_flight,
                queue,
                persistent,
                confirm_window: confirm,
                messages,
                broker_pid,
            };
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let report = runtime.block_on(switchboard::bench::run_amqp(scenario))?;
            println!("{}", report.render());
            Ok(())
        }
        Command::Ctl {
            url,
            user,
            password,
            vhost,
            quiet,
            command,
            columns,
        } => {
            let listing = LISTINGS
                .iter()
                .find(|l| l.command == command)
                .with_context(|| {
                    let known: Vec<_> = LISTINGS.iter().map(|l| l.command).collect();
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
        wait_for_signal().await;
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
