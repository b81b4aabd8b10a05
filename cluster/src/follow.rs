//! Following the cluster's events from a client (`qvctl events --follow`, `--watch`, the
//! dashboard): blocking queries, each continuing where the last answer ended, across
//! reconnections and leader changes. Changes to desired state come in sequence-number order
//! with nothing skipped (a gap the trail no longer keeps is reported in the page).

use qvdc_transport::protocol::{ApiRequest, ApiResponse, EventsPage, ReportedCursor};

use crate::client::{Client, ClientError};

/// How long each query may wait for news on the server.
pub const FOLLOW_WAIT_MS: u32 = 2_500;

/// Where a subscriber stands in both streams.
#[derive(Debug, Clone, Default)]
pub struct Follower {
    /// The next change's sequence number.
    pub since: u64,
    pub reported: Option<ReportedCursor>,
}

impl Follower {
    /// Starting at change `since` (1: the oldest kept).
    pub fn from(since: u64) -> Self {
        Self {
            since,
            reported: None,
        }
    }

    /// Starting with the last `last` changes, as the trail ends now.
    pub async fn last(client: &mut Client, last: u64) -> Result<Self, ClientError> {
        let page = Self::from(u64::MAX).query(client, 0).await?;
        Ok(Self::from(page.latest.saturating_sub(last).max(1)))
    }

    /// Starting from now: the next change and what hosts report from here on. Asks until
    /// the cluster answers (a follower positioned nowhere would never see a change).
    pub async fn now(client: &mut Client) -> Self {
        loop {
            match Self::from(u64::MAX).query(client, 0).await {
                Ok(page) => {
                    return Self {
                        since: page.latest.max(1),
                        reported: Some(page.reported_cursor),
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "positioning an events follower; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn query(&self, client: &mut Client, wait_ms: u32) -> Result<EventsPage, ClientError> {
        let request = ApiRequest::Events {
            since: self.since,
            reported: self.reported,
            wait_ms,
            max: 1_000,
        };
        match client.request(request).await? {
            ApiResponse::Events(page) => Ok(page),
            other => Err(ClientError::Protocol(format!(
                "the cluster answered an events query with {other:?}"
            ))),
        }
    }

    /// The next page: what happened since the last one, waiting up to `wait_ms` for
    /// something to happen. Moves the cursors past what it returns.
    pub async fn next(
        &mut self,
        client: &mut Client,
        wait_ms: u32,
    ) -> Result<EventsPage, ClientError> {
        let page = self.query(client, wait_ms).await?;
        self.since = page.next;
        self.reported = Some(page.reported_cursor);
        Ok(page)
    }
}
