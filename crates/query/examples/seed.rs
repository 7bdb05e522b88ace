//! Benchmark fixture: migrates the database at `--url` and writes `--days` days of realistic
//! rows (three models a day, a few sessions and users) into metrics table `agno_metrics`
//! through the aggregator, ending yesterday (UTC). Used by `scripts/bench-query.sh`.
#![expect(
    clippy::print_stdout,
    reason = "a command-line fixture reports what it wrote"
)]

use std::str::FromStr;

use anyhow::Context;
use bigdecimal::BigDecimal;
use chrono::{Days, Utc};
use clap::Parser;
use diesel::{Connection, PgConnection};
use metrics_aggregator::TableName;
use metrics_events::{Event, EventKind, RunCompleted, SessionCreated, SessionType, Tokens, Usage};

#[derive(Debug, Parser)]
struct Args {
    /// The database to seed.
    #[arg(long)]
    url: String,
    /// How many days of rows to write.
    #[arg(long, default_value_t = 400)]
    days: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut conn = PgConnection::establish(&args.url).context("connecting")?;
    metrics_aggregator::migrate(&mut conn).context("migrating")?;
    let table = metrics_aggregator::register_table(&mut conn, &TableName::default())?;
    let today = Utc::now().date_naive();
    let models = [
        ("gpt-4o", "OpenAI"),
        ("claude-sonnet-4", "Anthropic"),
        ("gemini-2.5-pro", "Google"),
    ];
    for day in 1..=args.days {
        let date = today - Days::new(day);
        let mut events = Vec::new();
        for session in 0..4_u32 {
            let session_id = format!("{date}-s{session}");
            let session_type = SessionType::ALL[(session % 3) as usize];
            let user_id = Some(format!("user-{}", session % 3));
            let at = |minute: u32| {
                date.and_hms_opt(10 + session, minute, 0)
                    .map(|time| time.and_utc())
                    .context("a valid time")
            };
            events.push(Event {
                source: "bench".to_owned(),
                id: format!("{session_id}-created"),
                time: at(0)?,
                kind: EventKind::SessionCreated(SessionCreated {
                    session_id: session_id.clone(),
                    session_type,
                    user_id: user_id.clone(),
                }),
            });
            for run in 0..5_u32 {
                let (model, provider) = models[((run + session) % 3) as usize];
                let tokens = i64::from(100 * run + 37 * session + 11);
                events.push(Event {
                    source: "bench".to_owned(),
                    id: format!("{session_id}-r{run}"),
                    time: at(run + 1)?,
                    kind: EventKind::RunCompleted(RunCompleted {
                        run_id: format!("{session_id}-r{run}"),
                        session_id: session_id.clone(),
                        session_type,
                        user_id: user_id.clone(),
                        parent_run_id: None,
                        model: Some(model.to_owned()),
                        model_provider: Some(provider.to_owned()),
                        usage: Usage {
                            tokens: Tokens {
                                input_tokens: tokens,
                                output_tokens: tokens / 3,
                                total_tokens: tokens + tokens / 3,
                                audio_tokens: 0,
                                input_audio_tokens: 0,
                                output_audio_tokens: 0,
                                cached_tokens: tokens / 5,
                                cache_write_tokens: tokens / 7,
                                reasoning_tokens: tokens / 11,
                            },
                            cost: BigDecimal::from_str("0.000125")? * BigDecimal::from(tokens),
                        },
                    }),
                });
            }
        }
        metrics_aggregator::apply(&mut conn, table, &events)?;
    }
    println!("seeded {} days of agno_metrics", args.days);
    Ok(())
}
