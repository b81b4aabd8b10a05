//! `qvctl events` and `--watch`: the cluster's events followed by blocking queries.

use std::process::ExitCode;

use qvdc_cluster::{
    client::Client,
    follow::{Follower, FOLLOW_WAIT_MS},
    output::{self, Format},
};
use qvdc_transport::protocol::{ApiRequest, EventsPage};

/// Prints the page's events: lines, or one JSON object per event.
fn print(page: &EventsPage, format: Format, changes_only: bool) {
    let mut page = page.clone();
    if changes_only {
        page.reported.clear();
        page.resync = None;
    }
    match format {
        Format::Table => {
            for line in output::event_lines(&page) {
                println!("{line}");
            }
        }
        Format::Json => {
            let json = |v: serde_json::Value| println!("{v}");
            if let Some(gap) = &page.gap {
                json(serde_json::json!({ "gap": gap }));
            }
            for change in &page.changes {
                json(serde_json::json!({ "change": change }));
            }
            if let Some(resync) = &page.resync {
                json(serde_json::json!({ "resync": resync, "leader": page.leader }));
            }
            for event in &page.reported {
                json(serde_json::json!({ "reported": event }));
            }
        }
    }
}

/// `qvctl events`.
pub(crate) async fn events(
    client: &mut Client,
    since: Option<u64>,
    last: u64,
    follow: bool,
    changes_only: bool,
    format: Format,
) -> ExitCode {
    let started = match since {
        Some(since) => Ok(Follower::from(since)),
        None => Follower::last(client, last).await,
    };
    let mut follower = match started {
        Ok(follower) => follower,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    loop {
        let wait = if follow { FOLLOW_WAIT_MS } else { 0 };
        match follower.next(client, wait).await {
            Ok(page) => {
                let more = page.changes.len() >= 1_000;
                print(&page, format, changes_only);
                if !follow && !more {
                    return ExitCode::SUCCESS;
                }
            }
            // A follower keeps going through elections and restarts: the cursor holds.
            Err(e) if follow => {
                eprintln!("events: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(e.exit_code() as u8);
            }
        }
    }
}

/// `--watch`: prints `request`'s answer, then again after each event, until interrupted.
pub(crate) async fn watch(client: &mut Client, request: ApiRequest, format: Format) -> ExitCode {
    let mut follower = Follower::now(client).await;
    loop {
        match client.request(request.clone()).await {
            Ok(response) => println!("{}", output::render(&response, format)),
            Err(e) => eprintln!("watch: {e}; retrying"),
        }
        // Wait for news, then print the answer again.
        loop {
            match follower.next(client, FOLLOW_WAIT_MS).await {
                Ok(page) if !page.changes.is_empty() || !page.reported.is_empty() => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("watch: {e}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        if format == Format::Table {
            println!();
        }
    }
}
