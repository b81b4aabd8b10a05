//! Linearizability of client histories against a sequential model: the Wing & Gong / Lowe
//! search with memoization of (operations placed, model state), as in Knossos and Porcupine.
//! The simulation records what each client invoked and what it was answered; [`check`] says
//! whether one sequential order explains every answer and, if not, which operations could not
//! be placed. Pure and deterministic: the search order depends only on the history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Debug};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// States [`check`] explores before it answers [`Violation::Undecided`]; each takes a few
/// hundred bytes for a history of a few thousand operations.
pub const STATES_MAX_DEFAULT: usize = 1_000_000;
/// Operations at the end of the longest linearization that a report shows.
const REPORT_PREFIX_OPS_MAX: usize = 8;
/// Characters of one state, operation or answer that a report shows.
const REPORT_VALUE_CHARS_MAX: usize = 120;

/// A sequential specification.
pub trait Model: Clone + Eq + Hash + Debug {
    /// What a client asks.
    type Op: Debug;
    /// What a client is answered.
    type Ret: PartialEq + Debug;
    /// Applies `op` to the state and returns what a correct system answers.
    fn step(&self, op: &Self::Op) -> (Self, Self::Ret);
}

/// One client operation as observed: invoked at `call`, answered at `returned.0` with
/// `returned.1`. `returned: None` means the outcome is unknown (timeout, crash): it may have
/// taken effect at any time after `call`, or never. A precedes B iff A returned strictly before
/// B's call.
#[derive(Debug, Clone)]
pub struct Operation<M: Model> {
    /// Who invoked it; only for reports.
    pub client: u64,
    /// When it was invoked.
    pub call: u64,
    /// When and what it was answered, if it was.
    pub returned: Option<(u64, M::Ret)>,
    /// What was asked.
    pub op: M::Op,
}

impl<M: Model> Operation<M> {
    /// An operation invoked at `call` and answered `ret` at `ret_at`.
    pub fn answered(client: u64, call: u64, ret_at: u64, op: M::Op, ret: M::Ret) -> Self {
        let returned = Some((ret_at, ret));
        Self {
            client,
            call,
            returned,
            op,
        }
    }

    /// An operation invoked at `call` whose outcome is unknown.
    pub fn unknown(client: u64, call: u64, op: M::Op) -> Self {
        Self {
            client,
            call,
            returned: None,
            op,
        }
    }
}

/// Why a history was not accepted; its message is for the person replaying the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// No sequential order of the operations explains every answer.
    NotLinearizable {
        /// The longest linearization found and the operations that could not follow it.
        explanation: String,
    },
    /// The search gave up after exploring `states_max` states.
    Undecided {
        /// The budget that ran out.
        states_max: usize,
        /// The longest linearization found so far.
        explanation: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLinearizable { explanation } => write!(f, "not linearizable: {explanation}"),
            Self::Undecided {
                states_max,
                explanation,
            } => {
                write!(
                    f,
                    "undecided after {states_max} states (raise the budget): {explanation}"
                )
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Whether `history`, started from `initial`, is linearizable; explores at most
/// [`STATES_MAX_DEFAULT`] states. Panics if an operation is answered before its call.
pub fn check<M: Model>(initial: &M, history: &[Operation<M>]) -> Result<(), Violation> {
    check_with_budget(initial, history, STATES_MAX_DEFAULT)
}

/// Whether `history`, started from `initial`, is linearizable; explores at most `states_max`
/// states (operations placed, model state), then answers [`Violation::Undecided`].
pub fn check_with_budget<M: Model>(
    initial: &M,
    history: &[Operation<M>],
    states_max: usize,
) -> Result<(), Violation> {
    match Search::new(history).run(initial, states_max) {
        Outcome::Linearizable => Ok(()),
        Outcome::Exhausted(best) => {
            let explanation = explain(initial, history, &best);
            Err(Violation::NotLinearizable { explanation })
        }
        Outcome::OutOfBudget(best) => {
            let explanation = explain(initial, history, &best);
            Err(Violation::Undecided {
                states_max,
                explanation,
            })
        }
    }
}

/// How a search ended; the operations are the longest linearization found, in order.
enum Outcome {
    Linearizable,
    Exhausted(Vec<usize>),
    OutOfBudget(Vec<usize>),
}

/// The node before the first event.
const HEAD: usize = 0;

/// The calls and returns of a history as a doubly linked list in time order, from which
/// placed operations are lifted, and restored in the reverse order.
struct Search<'h, M: Model> {
    history: &'h [Operation<M>],
    /// Per node: its operation and whether it is the call. The head comes first, then the
    /// events in time order, then the tail, which counts as a return.
    events: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per operation: its call node and its return node.
    nodes: Vec<(usize, Option<usize>)>,
    /// Per operation: its bit among the known-outcome or among the unknown-outcome ones.
    slot: Vec<usize>,
}

impl<'h, M: Model> Search<'h, M> {
    fn new(history: &'h [Operation<M>]) -> Self {
        let (mut order, mut slot, mut counts) = (Vec::new(), Vec::new(), [0, 0]);
        for (i, o) in history.iter().enumerate() {
            order.push((o.call, false, i));
            if let Some((at, _)) = &o.returned {
                assert!(o.call <= *at, "#{i} was answered at {at}, before its call");
                order.push((*at, true, i));
            }
            slot.push(counts[usize::from(o.returned.is_some())]);
            counts[usize::from(o.returned.is_some())] += 1;
        }
        // At equal times calls come first: intervals that touch overlap.
        order.sort_unstable();
        let tail = order.len() + 1;
        let (mut events, mut nodes) = (vec![(0, false); tail + 1], vec![(0, None); history.len()]);
        for (k, &(_, is_return, i)) in order.iter().enumerate() {
            events[k + 1] = (i, !is_return);
            match is_return {
                true => nodes[i].1 = Some(k + 1),
                false => nodes[i].0 = k + 1,
            }
        }
        let next = (1..=tail).chain([tail]).collect();
        let prev = [HEAD].into_iter().chain(0..tail).collect();
        Self {
            history,
            events,
            next,
            prev,
            nodes,
            slot,
        }
    }

    fn lift(&mut self, op: usize) {
        let (call, ret) = self.nodes[op];
        for node in [Some(call), ret].into_iter().flatten() {
            let (p, n) = (self.prev[node], self.next[node]);
            self.next[p] = n;
            self.prev[n] = p;
        }
    }

    fn unlift(&mut self, op: usize) {
        let (call, ret) = self.nodes[op];
        for node in [ret, Some(call)].into_iter().flatten() {
            let (p, n) = (self.prev[node], self.next[node]);
            assert!(
                self.next[p] == n && self.prev[n] == p,
                "unlifted out of order"
            );
            self.next[p] = node;
            self.prev[n] = node;
        }
    }

    /// Depth-first: place the first call (in time order) that the model agrees with and that
    /// leads to a new state; on reaching a return, nothing invoked later may go first, so undo
    /// the last placement and try the call after it. Unknown-outcome operations are tried after
    /// the known ones, so that the memo meets states with fewer of them placed first.
    fn run(&mut self, initial: &M, states_max: usize) -> Outcome {
        let history = self.history;
        let known = |op: usize| usize::from(history[op].returned.is_some());
        let mut known_left = (0..history.len()).map(known).sum::<usize>();
        let unknown_total = history.len() - known_left;
        let mut placed = [
            vec![0; unknown_total.div_ceil(64)],
            vec![0; known_left.div_ceil(64)],
        ];
        let (mut state, mut stack, mut best) = (initial.clone(), Vec::<(usize, M)>::new(), vec![]);
        let mut memo = Memo {
            seen: HashMap::new(),
            len: 0,
        };
        memo.visit(&placed, &state);
        let (mut unknown_pass, mut node) = (false, self.next[HEAD]);
        while known_left > 0 {
            let (op, is_call) = self.events[node];
            if !is_call && !unknown_pass {
                (unknown_pass, node) = (true, self.next[HEAD]);
            } else if !is_call {
                if stack.len() > best.len() {
                    best = stack.iter().map(|(op, _)| *op).collect();
                }
                let Some((op, before)) = stack.pop() else {
                    return Outcome::Exhausted(best);
                };
                toggle(&mut placed[known(op)], self.slot[op]);
                (known_left, state) = (known_left + known(op), before);
                self.unlift(op);
                (unknown_pass, node) = (known(op) == 0, self.next[self.nodes[op].0]);
            } else if known(op) == usize::from(unknown_pass) {
                node = self.next[node];
            } else {
                let (after, ret) = state.step(&history[op].op);
                let fits = history[op].returned.as_ref().is_none_or(|(_, r)| *r == ret);
                toggle(&mut placed[known(op)], self.slot[op]);
                if !fits || !memo.visit(&placed, &after) {
                    toggle(&mut placed[known(op)], self.slot[op]);
                    node = self.next[node];
                    continue;
                }
                stack.push((op, std::mem::replace(&mut state, after)));
                if memo.len > states_max {
                    let path: Vec<usize> = stack.into_iter().map(|(op, _)| op).collect();
                    return Outcome::OutOfBudget(if path.len() > best.len() { path } else { best });
                }
                known_left -= known(op);
                self.lift(op);
                (unknown_pass, node) = (false, self.next[HEAD]);
            }
        }
        Outcome::Linearizable
    }
}

fn toggle(bits: &mut [u64], i: usize) {
    bits[i / 64] ^= 1 << (i % 64);
}

/// The states explored: each (known-outcome operations placed, model state) pair with the sets
/// of unknown-outcome operations placed when it was reached. Reaching a pair again with a
/// superset of one of those leads nowhere new: placing fewer leaves every choice open.
struct Memo<M> {
    seen: HashMap<(Vec<u64>, M), Vec<Vec<u64>>>,
    len: usize,
}

impl<M: Model> Memo<M> {
    /// Records `[unknown, known]` operations placed and the `state` reached; false if not new.
    fn visit(&mut self, [unknown, known]: &[Vec<u64>; 2], state: &M) -> bool {
        let sets = self.seen.entry((known.clone(), state.clone())).or_default();
        let subset = |set: &Vec<u64>| set.iter().zip(unknown).all(|(s, u)| s & !u == 0);
        if sets.iter().any(subset) {
            return false;
        }
        sets.push(unknown.clone());
        self.len += 1;
        true
    }
}

/// `text` cut to [`REPORT_VALUE_CHARS_MAX`] characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(REPORT_VALUE_CHARS_MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// What the model answers instead of `observed`: whole if short, else where the two differ.
fn instead(observed: &str, expected: &str) -> String {
    let (o, e): (Vec<char>, Vec<char>) = (observed.chars().collect(), expected.chars().collect());
    if o.len().max(e.len()) <= REPORT_VALUE_CHARS_MAX {
        return format!("the model answers {expected}");
    }
    let start = o.iter().zip(&e).take_while(|(a, b)| a == b).count();
    let same_end = |(a, b): &(&char, &char)| a == b;
    let end = o[start..]
        .iter()
        .rev()
        .zip(e[start..].iter().rev())
        .take_while(same_end)
        .count();
    let text = |chars: &[char]| cut(&chars.iter().collect::<String>());
    let (context, o, e) = (
        &o[start.saturating_sub(40)..start],
        &o[start..o.len() - end],
        &e[start..e.len() - end],
    );
    format!(
        "after «…{}» it has «{}» where the model has «{}»",
        text(context),
        text(o),
        text(e)
    )
}

/// `#index client [call, return] op -> answer`, as a report names an operation.
fn describe<M: Model>(history: &[Operation<M>], i: usize) -> String {
    let o = &history[i];
    let (op, client, call) = (cut(&format!("{:?}", o.op)), o.client, o.call);
    match &o.returned {
        Some((at, ret)) => format!(
            "#{i} client {client} [{call}, {at}] {op} -> {}",
            cut(&format!("{ret:?}"))
        ),
        None => format!("#{i} client {client} [{call}, ?] {op} -> unknown outcome"),
    }
}

/// The report: the end of the longest linearization, the state it leaves, and each operation
/// that could go next with what the model answers there.
fn explain<M: Model>(initial: &M, history: &[Operation<M>], best: &[usize]) -> String {
    let (mut state, mut placed) = (initial.clone(), vec![false; history.len()]);
    for &op in best {
        state = state.step(&history[op].op).0;
        placed[op] = true;
    }
    let mut out = format!(
        "the longest linearization found places {} of {} operations",
        best.len(),
        history.len()
    );
    out += "; it ends with (oldest first):";
    for &op in &best[best.len().saturating_sub(REPORT_PREFIX_OPS_MAX)..] {
        out += &format!("\n  {}", describe(history, op));
    }
    out += &format!("\nleaving the state {}", cut(&format!("{state:?}")));
    let pending = (0..history.len()).filter(|&i| !placed[i]);
    let returns = pending
        .clone()
        .filter_map(|i| Some((history[i].returned.as_ref()?.0, i)));
    let Some((deadline, blocker)) = returns.min() else {
        return out;
    };
    out += &format!("\n#{blocker} was answered at {deadline}, so one of these must go next:");
    let mut unknown = Vec::new();
    for i in pending.filter(|&i| history[i].call <= deadline) {
        let Some((_, observed)) = &history[i].returned else {
            unknown.push(format!("#{i}"));
            continue;
        };
        let (_, expected) = state.step(&history[i].op);
        let note = match *observed == expected {
            true => "it fits, but leads nowhere new".to_owned(),
            false => instead(&format!("{observed:?}"), &format!("{expected:?}")),
        };
        out += &format!("\n  {}\n    {note}", describe(history, i));
    }
    if !unknown.is_empty() {
        let unknown = unknown.join(", ");
        out += &format!("\n  or one of unknown outcome, which fit but lead nowhere new: {unknown}");
    }
    out
}

/// A set of named objects created with idempotent request ids. `Registry::default()`
/// remembers the answer of every request id, which costs time in long histories with many;
/// [`Registry::for_history`] remembers only those the history needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    names: Arc<BTreeSet<String>>,
    /// The XOR of the names' hashes, so that hashing a state does not walk its names.
    names_digest: u64,
    /// The first answer each remembered request id got; a retry gets it again.
    answers: Arc<BTreeMap<String, RegistryRet>>,
    /// The request ids whose answers are remembered; `None`: all.
    remembered: Option<Arc<BTreeSet<String>>>,
}

impl Registry {
    /// An empty registry for checking `history`, which remembers the answers only of request
    /// ids that `history` sends more than once: no later request asks for the others, so no
    /// answer changes, and unknown-outcome creates stop multiplying the states to search.
    pub fn for_history(history: &[Operation<Registry>]) -> Self {
        let (mut sent, mut repeated) = (BTreeSet::new(), BTreeSet::new());
        for operation in history {
            if let RegistryOp::Create { request_id, .. } | RegistryOp::Delete { request_id, .. } =
                &operation.op
            {
                if !sent.insert(request_id) {
                    repeated.insert(request_id.clone());
                }
            }
        }
        Self {
            remembered: Some(Arc::new(repeated)),
            ..Self::default()
        }
    }
}

/// Hashes the digest: equal states still hash equally, and states that differ only in
/// `answers` are few, because the observed answers pin them.
impl Hash for Registry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.names_digest, self.answers.len()).hash(state);
    }
}

/// What a client asks a [`Registry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOp {
    /// Create `name`, unless `request_id` was seen before.
    Create { name: String, request_id: String },
    /// Delete `name`, unless `request_id` was seen before.
    Delete { name: String, request_id: String },
    /// List every name.
    Read,
}

/// What a [`Registry`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegistryRet {
    /// The request created the name.
    Created,
    /// The name existed before the request.
    AlreadyExists,
    /// The request deleted the name.
    Deleted,
    /// The name did not exist when the delete was applied.
    NotFound,
    /// Every name.
    Names(BTreeSet<String>),
}

impl Model for Registry {
    type Op = RegistryOp;
    type Ret = RegistryRet;

    fn step(&self, op: &RegistryOp) -> (Self, RegistryRet) {
        let (name, request_id, create) = match op {
            RegistryOp::Read => {
                let names = BTreeSet::clone(&self.names);
                return (self.clone(), RegistryRet::Names(names));
            }
            RegistryOp::Create { name, request_id } => (name, request_id, true),
            RegistryOp::Delete { name, request_id } => (name, request_id, false),
        };
        if let Some(first) = self.answers.get(request_id) {
            return (self.clone(), first.clone());
        }
        let mut next = self.clone();
        let answer = match (create, next.names.contains(name)) {
            (true, true) => RegistryRet::AlreadyExists,
            (false, false) => RegistryRet::NotFound,
            (true, false) => {
                Arc::make_mut(&mut next.names).insert(name.clone());
                RegistryRet::Created
            }
            (false, true) => {
                Arc::make_mut(&mut next.names).remove(name);
                RegistryRet::Deleted
            }
        };
        if answer == RegistryRet::Created || answer == RegistryRet::Deleted {
            // Adding and removing a name flip the same bits: the digest is of the set.
            let mut hasher = std::hash::DefaultHasher::new();
            name.hash(&mut hasher);
            next.names_digest ^= hasher.finish();
        }
        if self
            .remembered
            .as_ref()
            .is_none_or(|ids| ids.contains(request_id))
        {
            Arc::make_mut(&mut next.answers).insert(request_id.clone(), answer.clone());
        }
        (next, answer)
    }
}

/// A single integer register, initially empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Register(pub Option<u64>);

/// What a client asks a [`Register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOp {
    /// Replace the value.
    Write(u64),
    /// Read the value.
    Read,
}

/// What a [`Register`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterRet {
    /// The write took effect.
    Ok,
    /// The value read.
    Value(Option<u64>),
}

impl Model for Register {
    type Op = RegisterOp;
    type Ret = RegisterRet;

    fn step(&self, op: &RegisterOp) -> (Self, RegisterRet) {
        match *op {
            RegisterOp::Write(v) => (Register(Some(v)), RegisterRet::Ok),
            RegisterOp::Read => (*self, RegisterRet::Value(self.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use RegistryRet::{AlreadyExists, Created};

    const R: Register = Register(None);

    fn w(client: u64, call: u64, ret_at: u64, v: u64) -> Operation<Register> {
        Operation::answered(client, call, ret_at, RegisterOp::Write(v), RegisterRet::Ok)
    }

    fn r(client: u64, call: u64, ret_at: u64, v: Option<u64>) -> Operation<Register> {
        Operation::answered(
            client,
            call,
            ret_at,
            RegisterOp::Read,
            RegisterRet::Value(v),
        )
    }

    fn lost(client: u64, call: u64, v: u64) -> Operation<Register> {
        Operation::unknown(client, call, RegisterOp::Write(v))
    }

    fn create(
        client: u64,
        call: u64,
        ret_at: u64,
        id: &str,
        ret: RegistryRet,
    ) -> Operation<Registry> {
        let op = RegistryOp::Create {
            name: "vm".into(),
            request_id: id.into(),
        };
        Operation::answered(client, call, ret_at, op, ret)
    }

    fn rejection<M: Model>(initial: &M, history: &[Operation<M>]) -> String {
        match check(initial, history) {
            Err(Violation::NotLinearizable { explanation }) => explanation,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn sequential_and_concurrent_histories_are_accepted() {
        let sequential = [
            w(1, 0, 1, 1),
            r(2, 2, 3, Some(1)),
            w(1, 4, 5, 2),
            r(2, 6, 7, Some(2)),
        ];
        assert_eq!(check(&R, &sequential), Ok(()));
        // The first read overlaps both writes; the second starts as the last write returns.
        let concurrent = [
            w(1, 0, 10, 1),
            r(2, 5, 15, Some(2)),
            w(3, 8, 12, 2),
            r(4, 12, 20, Some(2)),
        ];
        assert_eq!(check(&R, &concurrent), Ok(()));
        // A read invoked at the very instant a write returns may still precede it.
        assert_eq!(check(&R, &[w(1, 0, 10, 1), r(2, 10, 20, None)]), Ok(()));
    }

    #[test]
    fn stale_read_is_rejected_and_named() {
        let explanation = rejection(&R, &[w(1, 0, 10, 1), r(2, 20, 30, None)]);
        println!("{explanation}");
        let wanted =
            "#1 client 2 [20, 30] Read -> Value(None)\n    the model answers Value(Some(1))";
        assert!(explanation.contains(wanted), "{explanation}");
    }

    #[test]
    fn read_of_a_write_invoked_after_it_returned_is_rejected() {
        rejection(&R, &[r(1, 0, 10, Some(1)), w(2, 11, 20, 1)]);
    }

    #[test]
    fn unknown_write_may_or_may_not_have_happened_but_not_both() {
        assert_eq!(check(&R, &[lost(1, 0, 1), r(2, 50, 60, Some(1))]), Ok(()));
        assert_eq!(
            check(&R, &[lost(1, 0, 1), r(2, 50, 60, None), r(2, 70, 80, None)]),
            Ok(())
        );
        rejection(
            &R,
            &[lost(1, 0, 1), r(2, 50, 60, Some(1)), r(3, 70, 80, None)],
        );
        rejection(&R, &[r(2, 0, 10, Some(1)), lost(1, 20, 1)]);
    }

    #[test]
    fn registry_racing_creates_one_wins() {
        let initial = Registry::default();
        let race = [
            create(1, 0, 10, "r1", AlreadyExists),
            create(2, 2, 12, "r2", Created),
        ];
        assert_eq!(check(&initial, &race), Ok(()));
        rejection(
            &initial,
            &[
                create(1, 0, 10, "r1", Created),
                create(2, 2, 12, "r2", Created),
            ],
        );
    }

    #[test]
    fn registry_delete_frees_the_name_once() {
        use RegistryRet::{Deleted, NotFound};
        let delete = |client, call, ret_at, id: &str, ret| {
            let op = RegistryOp::Delete {
                name: "vm".into(),
                request_id: id.into(),
            };
            Operation::answered(client, call, ret_at, op, ret)
        };
        let initial = Registry::default();
        let cycle = [
            delete(1, 0, 1, "d0", NotFound),
            create(1, 2, 3, "c1", Created),
            delete(2, 4, 6, "d1", Deleted),
            delete(3, 5, 7, "d2", NotFound),
            create(1, 8, 9, "c2", Created),
        ];
        assert_eq!(check(&initial, &cycle), Ok(()));
        // Two racing deletes cannot both have deleted it.
        let twice = [
            create(1, 0, 1, "c1", Created),
            delete(2, 2, 6, "d1", Deleted),
            delete(3, 3, 7, "d2", Deleted),
        ];
        rejection(&initial, &twice);
        // A read after an acknowledged delete must not see the name.
        let names = |v: &[&str]| RegistryRet::Names(v.iter().map(|n| n.to_string()).collect());
        let stale = [
            create(1, 0, 1, "c1", Created),
            delete(1, 2, 3, "d1", Deleted),
            Operation::answered(2, 4, 5, RegistryOp::Read, names(&["vm"])),
        ];
        rejection(&initial, &stale);
    }

    #[test]
    fn registry_retry_gets_its_first_answer() {
        let initial = Registry::default();
        let retried = [
            create(1, 0, 10, "r1", Created),
            create(1, 20, 30, "r1", Created),
        ];
        assert_eq!(check(&initial, &retried), Ok(()));
        let timed_out = Operation::unknown(
            1,
            0,
            RegistryOp::Create {
                name: "vm".into(),
                request_id: "r1".into(),
            },
        );
        let after_timeout = [
            timed_out,
            create(2, 5, 8, "r2", AlreadyExists),
            create(1, 20, 30, "r1", Created),
        ];
        assert_eq!(check(&initial, &after_timeout), Ok(()));
        let changed = [
            create(1, 0, 10, "r1", Created),
            create(2, 20, 30, "r2", AlreadyExists),
            create(2, 40, 50, "r2", Created),
        ];
        rejection(&initial, &changed);
        assert!(
            rejection(&Registry::for_history(&changed), &changed).contains("#2 client 2 [40, 50]")
        );
    }

    /// Marsaglia's xorshift64: a seeded, dependency-free source of test histories.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Whether some order explains `history`, by trying them all.
    fn brute_force(
        history: &[Operation<Register>],
        placed: &mut Vec<bool>,
        state: Register,
    ) -> bool {
        let pending = || (0..history.len()).filter(|&i| !placed[i]);
        let returns = pending().filter_map(|i| history[i].returned.as_ref().map(|(at, _)| *at));
        let Some(deadline) = returns.min() else {
            return true;
        };
        let candidates: Vec<usize> = pending().filter(|&i| history[i].call <= deadline).collect();
        candidates.into_iter().any(|i| {
            let (after, ret) = state.step(&history[i].op);
            let fits = history[i].returned.as_ref().is_none_or(|(_, r)| *r == ret);
            placed[i] = true;
            let found = fits && brute_force(history, placed, after);
            placed[i] = false;
            found
        })
    }

    #[test]
    fn small_random_histories_agree_with_brute_force() {
        let mut rng = XorShift(0xbad5eed);
        let mut verdicts = [0, 0];
        for _ in 0..3_000 {
            let history: Vec<_> = (0..1 + rng.below(6))
                .map(|client| {
                    let (call, value) = (rng.below(20), rng.below(3));
                    let op = match rng.below(2) {
                        0 => RegisterOp::Write(value),
                        _ => RegisterOp::Read,
                    };
                    let ret = match op {
                        RegisterOp::Write(_) => RegisterRet::Ok,
                        RegisterOp::Read => RegisterRet::Value(value.checked_sub(1)),
                    };
                    match rng.below(5) {
                        0 => Operation::unknown(client, call, op),
                        _ => Operation::answered(client, call, call + rng.below(10), op, ret),
                    }
                })
                .collect();
            let expected = brute_force(&history, &mut vec![false; history.len()], R);
            assert_eq!(check(&R, &history).is_ok(), expected, "{history:#?}");
            verdicts[usize::from(expected)] += 1;
        }
        assert!(verdicts.iter().all(|&n| n > 300), "{verdicts:?}");
    }

    /// A correct history: operations take effect one after another, 10 apart, each on a free
    /// client and within an interval stretching up to 40 either side, so ~8 overlap. One in a
    /// hundred times out: half of those took effect, half never did.
    fn generate<M: Model>(
        initial: &M,
        seed: u64,
        mut pick: impl FnMut(&mut XorShift, u64) -> M::Op,
    ) -> Vec<Operation<M>> {
        let (mut rng, mut state, mut at, mut last_ret) =
            (XorShift(seed), initial.clone(), 0u64, [0; 8]);
        let mut history = Vec::new();
        for k in 0..2_000 {
            at += 10;
            let client = loop {
                let c = rng.below(8) as usize;
                if last_ret[c] < at {
                    break c;
                }
                at += 1;
            };
            let earliest = (last_ret[client] + 1).max(at.saturating_sub(40));
            let call = earliest + rng.below(at - earliest + 1);
            last_ret[client] = at + rng.below(41);
            let op = pick(&mut rng, k);
            let (next, ret) = state.step(&op);
            let lost = rng.below(100) == 0;
            if !lost || rng.below(2) == 0 {
                state = next;
            }
            history.push(match lost {
                true => Operation::unknown(client as u64, call, op),
                false => Operation::answered(client as u64, call, last_ret[client], op, ret),
            });
        }
        history
    }

    /// Checks `history` as it is, then with the first answered read from #1000 on `corrupted`;
    /// returns the rejection.
    fn check_large<M: Model>(
        what: &str,
        initial: &M,
        mut history: Vec<Operation<M>>,
        is_read: impl Fn(&M::Op) -> bool,
        corrupt: impl Fn(&mut M::Ret),
    ) -> String {
        let started = Instant::now();
        assert_eq!(check(initial, &history), Ok(()));
        let took = started.elapsed();
        println!(
            "{what}: {} operations found linearizable in {took:?}",
            history.len()
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let i = (1_000..)
            .find(|&i| is_read(&history[i].op) && history[i].returned.is_some())
            .unwrap();
        corrupt(&mut history[i].returned.as_mut().unwrap().1);
        let started = Instant::now();
        let explanation = rejection(initial, &history);
        let took = started.elapsed();
        println!("{what}: #{i} corrupted, rejected in {took:?}:\n{explanation}");
        assert!(
            explanation.contains(&format!("#{i} client ")),
            "{explanation}"
        );
        // A guard against blowups only: the search is exhaustive here, and debug builds are slow.
        assert!(took < Duration::from_secs(10), "took {took:?}");
        let starved = check_with_budget(initial, &history, 100);
        assert!(
            matches!(
                starved,
                Err(Violation::Undecided {
                    states_max: 100,
                    ..
                })
            ),
            "{starved:?}"
        );
        explanation
    }

    #[test]
    fn large_register_history_is_checked_fast() {
        let pick = |rng: &mut XorShift, _| match rng.below(2) {
            0 => RegisterOp::Read,
            _ => RegisterOp::Write(rng.below(8)),
        };
        let history = generate(&R, 0x5eed, pick);
        let is_read = |op: &RegisterOp| *op == RegisterOp::Read;
        let explanation = check_large("register", &R, history, is_read, |ret| {
            *ret = RegisterRet::Value(Some(99))
        });
        assert!(
            explanation.contains("Read -> Value(Some(99))\n    the model answers Value("),
            "{explanation}"
        );
    }

    #[test]
    fn large_registry_history_is_checked_fast() {
        let mut sent: Vec<RegistryOp> = Vec::new();
        let pick = |rng: &mut XorShift, k: u64| match rng.below(10) {
            0..=2 => RegistryOp::Read,
            3 if !sent.is_empty() => sent[rng.below(sent.len() as u64) as usize].clone(),
            _ => {
                let op = RegistryOp::Create {
                    name: format!("vm{}", rng.below(64)),
                    request_id: format!("r{k}"),
                };
                sent.push(op.clone());
                op
            }
        };
        let history = generate(&Registry::default(), 0xc0ffee, pick);
        let started = Instant::now();
        assert_eq!(check(&Registry::default(), &history), Ok(()));
        println!(
            "registry remembering every request id: linearizable in {:?}",
            started.elapsed()
        );
        let is_read = |op: &RegistryOp| *op == RegistryOp::Read;
        let corrupt = |ret: &mut RegistryRet| {
            if let RegistryRet::Names(names) = ret {
                names.insert("ghost".into());
            }
        };
        let explanation = check_large(
            "registry",
            &Registry::for_history(&history),
            history,
            is_read,
            corrupt,
        );
        assert!(
            explanation.contains(r#"it has «ghost", "» where the model has «»"#),
            "{explanation}"
        );
    }
}
