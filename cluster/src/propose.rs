//! Proposals to Raft, batched. Operator writes and host registrations that arrive while an
//! earlier batch is being committed wait together and go into the log as one entry: one
//! append, one fsync and one replication round for all of them. A lone write is proposed at
//! once, so batching adds no latency when the cluster is quiet (see ADR 10).

use openraft::error::{ClientWriteError, RaftError};
use qvdc_raft::{
    model::{BATCH_BYTES_MAX, COMMAND_BYTES_MAX},
    Command, Outcome, Raft,
};
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

type Waiting = mpsc::UnboundedReceiver<(Command, usize, Reply)>;

async fn propose_batches(raft: Raft, mut waiting: Waiting) {
    // A command taken from the queue that would have made the last batch too large.
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(first) => first,
            None => match waiting.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = first.1;
        let mut batch = vec![(first.0, first.2)];
        while batch.len() < BATCH_COMMANDS_MAX {
            match waiting.try_recv() {
                Ok(next) if bytes + next.1 > BATCH_BYTES_MAX => {
                    held = Some(next);
                    break;
                }
                Ok((command, size, reply)) => {
                    bytes += size;
                    batch.push((command, reply));
                }
                Err(_) => break,
            }
        }
        let (mut commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
        let entry = if commands.len() == 1 {
            commands.pop().expect("one command")
        } else {
            Command::Batch(commands.into())
        };
        let outcomes: Vec<Result<Outcome, ProposeError>> = match raft.client_write(entry).await {
            Ok(written) => match written.data {
                Outcome::Batch(outcomes) if replies.len() > 1 => {
                    assert_eq!(outcomes.len(), replies.len(), "one outcome per command");
                    outcomes.into_iter().map(Ok).collect()
                }
                outcome => vec![Ok(outcome)],
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                vec![Err(ProposeError::NotLeader); replies.len()]
            }
            Err(e) => vec![Err(ProposeError::Failed(e.to_string())); replies.len()],
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}
