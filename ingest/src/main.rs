//! `ingest`: publish carbonflow's inputs and manage its topics.

use anyhow::Context;
use clap::{Parser, Subcommand};

use carbonflow_schemas::bus::KafkaArgs;

#[derive(Parser)]
#[command(
    name = "ingest",
    version,
    about = "Publish carbonflow inputs and manage its topics"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage carbonflow's topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create every topic that does not exist yet (idempotent) and check partition counts.
    Create {
        /// Replication factor of new topics (1 for a single local broker).
        #[arg(long, env = "CARBONFLOW_REPLICATION", default_value_t = 1)]
        replication: i32,
    },
    /// Print the topic names this configuration uses.
    Names,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Topics {
            action: TopicsAction::Create { replication },
        } => {
            let lines = carbonflow_ingest::topics::create(&cli.kafka, replication)
                .await
                .with_context(|| format!("creating topics on {}", cli.kafka.brokers))?;
            for l in lines {
                println!("{l}");
            }
        }
        Command::Topics {
            action: TopicsAction::Names,
        } => {
            for n in carbonflow_ingest::topics::names(&cli.kafka) {
                println!("{n}");
            }
        }
    }
    Ok(())
}
