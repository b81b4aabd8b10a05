//! Proposals to Raft, batched. Operator writes and host registrations that arrive while an
//! earlier batch is being committed wait together and go into the log as one entry: one
//! append, one fsync and one replication round for all of them. A lone write is proposed at
//! once, so batching adds no latency when the cluster is quiet (see ADR 10).

use openraft::{
    error::{ClientWriteError, RaftError},
    ServerState,
};
use qvdc_raft::{
    model::{BATCH_BYTES_MAX, COMMAND_BYTES_MAX},
    Command, Outcome, Raft,
};
use qvdc_transport::bugs::{self, Bug};
use tokio::sync::{mpsc, oneshot};

/// Most commands carried by one log entry. With openraft sending up to
/// `qvdc_raft::ENTRIES_PER_APPEND_MAX` entries per message, this keeps a replication message
/// well below the transport's frame limit.
pub(crate) const BATCH_COMMANDS_MAX: usize = 256;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ProposeError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("the write was not committed: {0}")]
    Failed(String),
}

type Reply = oneshot::Sender<Result<Outcome, ProposeError>>;

/// The queue of commands waiting to be proposed. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Proposer {
    queue: mpsc::UnboundedSender<(Command, usize, Reply)>,
}

impl Proposer {
    /// Starts the task that proposes what is queued, one batch at a time.
    pub(crate) fn start(raft: Raft) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, waiting) = mpsc::unbounded_channel();
        (Self { queue }, tokio::spawn(propose_batches(raft, waiting)))
    }

    /// Commits `command` (with whatever else is waiting) and returns its own outcome.
    pub(crate) async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        let (reply, outcome) = oneshot::channel();
        let bytes = qvdc_transport::codec::encoded_len(&command);
        assert!(
            bytes <= COMMAND_BYTES_MAX,
            "the API refuses commands over the limit"
        );
        self.queue
            .send((command, bytes, reply))
            .map_err(|_| ProposeError::Failed("the node is shutting down".into()))?;
        outcome
            .await
            .unwrap_or_else(|_| Err(ProposeError::Failed("the node is shutting down".into())))
    }
}

type Queued = (Command, usize, Reply);
type Waiting = mpsc::UnboundedReceiver<Queued>;

/// The next batch: the held command or the next to arrive, then whatever is already waiting,
/// up to [`BATCH_COMMANDS_MAX`] commands and [`BATCH_BYTES_MAX`] bytes (a lone command may
/// be larger, up to `COMMAND_BYTES_MAX`). A command that would overflow the batch is held
/// for the next one. `None` once the queue is closed and empty.
async fn next_batch(
    waiting: &mut Waiting,
    held: &mut Option<Queued>,
) -> Option<Vec<(Command, Reply)>> {
    let first = match held.take() {
        Some(first) => first,
        None => waiting.recv().await?,
    };
    let mut bytes = first.1;
    let mut batch = vec![(first.0, first.2)];
    while batch.len() < BATCH_COMMANDS_MAX {
        match waiting.try_recv() {
            Ok(next) if bytes + next.1 > BATCH_BYTES_MAX => {
                *held = Some(next);
                break;
            }
            Ok((command, size, reply)) => {
                bytes += size;
                batch.push((command, reply));
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn propose_batches(raft: Raft, mut waiting: Waiting) {
    // A command taken from the queue that would have made the last batch too large.
    let mut held = None;
    while let Some(batch) = next_batch(&mut waiting, &mut held).await {
        let (mut commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
        let entry = if commands.len() == 1 {
            commands.pop().expect("one command")
        } else {
            Command::Batch(commands.into())
        };
        let outcomes: Vec<Result<Outcome, ProposeError>> = match write(&raft, entry).await {
            Ok(Outcome::Batch(outcomes)) if replies.len() > 1 => {
                assert_eq!(outcomes.len(), replies.len(), "one outcome per command");
                outcomes.into_iter().map(Ok).collect()
            }
            Ok(outcome) => vec![Ok(outcome)],
            Err(e) => vec![Err(e); replies.len()],
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

/// Appends `entry` and waits for its outcome while this node leads in the term it was
/// proposed in (see [`while_leading`]). Once that leadership ends, whether the entry
/// committed is unknown: the answer is "not the leader", and the request id of a retry sent
/// to the new leader settles it (the request log answers a committed request again instead
/// of applying it twice).
async fn write(raft: &Raft, entry: Command) -> Result<Outcome, ProposeError> {
    match while_leading(raft, raft.client_write(entry)).await {
        Some(Ok(written)) => Ok(written.data),
        Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) | None => {
            Err(ProposeError::NotLeader)
        }
        Some(Err(e)) => Err(ProposeError::Failed(e.to_string())),
    }
}

/// Runs `change` (a write to the log, or a membership change) while this node leads in the
/// term it leads in now; `None` if it does not lead now or that leadership ends first.
/// openraft answers a write whose entry a newer leader kept or overwrote, but not one whose
/// entry this node later received inside a snapshot (it never applies that entry itself):
/// waiting past the leadership could wait for good, and the proposer, which commits one
/// batch at a time, would hold every later write behind it.
pub(crate) async fn while_leading<F: std::future::Future>(
    raft: &Raft,
    change: F,
) -> Option<F::Output> {
    let mut metrics = raft.metrics();
    let term = {
        let m = metrics.borrow_and_update();
        if m.state != ServerState::Leader {
            return None;
        }
        m.current_term
    };
    let leadership_ended = async {
        if bugs::active(Bug::WaitPastLeadership) {
            std::future::pending::<()>().await;
        }
        loop {
            {
                // Terms only grow and a node leads at most once per term, so a step-down and
                // a re-election folded into one reading still show another term.
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader || m.current_term != term {
                    return;
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        // An outcome that is there wins over the end of leadership noticed at the same time.
        biased;
        done = change => Some(done),
        () = leadership_ended => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(waiting: &mpsc::UnboundedSender<Queued>, sizes: &[usize]) {
        for (i, size) in sizes.iter().enumerate() {
            let command = Command::DeletePool {
                pool: format!("p{i}"),
            };
            waiting
                .send((command, *size, oneshot::channel().0))
                .unwrap();
        }
    }

    fn names(batch: &[(Command, Reply)]) -> Vec<String> {
        batch
            .iter()
            .map(|(command, _)| match command {
                Command::DeletePool { pool } => pool.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// A batch stops before the command that would take it over `BATCH_BYTES_MAX`; that
    /// command opens the next batch; nothing is lost or reordered.
    #[tokio::test]
    async fn batches_stay_within_their_byte_bound() {
        let (queue_to, mut waiting) = mpsc::unbounded_channel();
        let third = BATCH_BYTES_MAX / 3;
        queue(&queue_to, &[third, third, third, 1, COMMAND_BYTES_MAX, 1]);
        drop(queue_to);
        let mut held = None;
        let mut batches = Vec::new();
        while let Some(batch) = next_batch(&mut waiting, &mut held).await {
            batches.push(names(&batch));
        }
        assert_eq!(
            batches,
            [vec!["p0", "p1", "p2"], vec!["p3"], vec!["p4"], vec!["p5"],],
            "BATCH_BYTES_MAX = {BATCH_BYTES_MAX}"
        );
    }

    #[tokio::test]
    async fn batches_stay_within_their_command_bound() {
        let (queue_to, mut waiting) = mpsc::unbounded_channel();
        queue(&queue_to, &vec![1; BATCH_COMMANDS_MAX + 1]);
        drop(queue_to);
        let mut held = None;
        let first = next_batch(&mut waiting, &mut held).await.unwrap();
        assert_eq!(first.len(), BATCH_COMMANDS_MAX);
        let second = next_batch(&mut waiting, &mut held).await.unwrap();
        assert_eq!(names(&second), [format!("p{BATCH_COMMANDS_MAX}")]);
        assert!(next_batch(&mut waiting, &mut held).await.is_none());
    }
}
