//! The randomness behind timing choices (election timeouts, retry jitter): a per-thread RNG
//! that the simulation seeds, so a run repeats exactly. In production each thread seeds
//! itself from the OS.

use std::cell::RefCell;

use rand::{rngs::StdRng, RngCore, SeedableRng};

thread_local! {
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
}

/// Seeds this thread's RNG. The simulation calls it once per run, before any node starts.
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|rng| *rng.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// A handle on this thread's seeded RNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRng;

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|rng| rng.borrow_mut().next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        RNG.with(|rng| rng.borrow_mut().next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|rng| rng.borrow_mut().fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        RNG.with(|rng| rng.borrow_mut().try_fill_bytes(dest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_the_sequence() {
        seed_thread_rng(42);
        let first: Vec<u64> = (0..4).map(|_| ThreadRng.next_u64()).collect();
        seed_thread_rng(42);
        let second: Vec<u64> = (0..4).map(|_| ThreadRng.next_u64()).collect();
        assert_eq!(first, second);
        seed_thread_rng(43);
        assert_ne!(ThreadRng.next_u64(), first[0]);
    }
}
