//! Spreading requests across an upstream's servers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Weighted round-robin. With equal weights it is a lock-free counter; otherwise it is the smooth
/// variant, which interleaves servers (weights 5,1,1 give a a b a c a a, not a a a a a b c) so a
/// heavy server never takes a burst.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    weights: Vec<i64>,
    total: i64,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Even(AtomicUsize),
    Smooth(Mutex<Vec<i64>>),
}

impl WeightedRoundRobin {
    /// A balancer over servers with these weights (at least one, each at least 1).
    pub fn new(weights: Vec<u32>) -> Self {
        assert!(!weights.is_empty(), "an upstream has at least one server");
        let even = weights.iter().all(|&weight| weight == weights[0]);
        let weights: Vec<i64> = weights.into_iter().map(i64::from).collect();
        let total = weights.iter().sum();
        let mode =
            if even { Mode::Even(AtomicUsize::new(0)) } else { Mode::Smooth(Mutex::new(vec![0; weights.len()])) };
        Self { weights, total, mode }
    }

    /// Index of the next server.
    pub fn next(&self) -> usize {
        match &self.mode {
            Mode::Even(counter) => counter.fetch_add(1, Ordering::Relaxed) % self.weights.len(),
            Mode::Smooth(current) => {
                let mut current = current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let mut best = 0;
                for (index, weight) in self.weights.iter().enumerate() {
                    current[index] += weight;
                    if current[index] > current[best] {
                        best = index;
                    }
                }
                current[best] -= self.total;
                best
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_interleaves_by_weight() {
        let balancer = WeightedRoundRobin::new(vec![5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| balancer.next()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn shares_follow_weights() {
        let balancer = WeightedRoundRobin::new(vec![3, 1]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[balancer.next()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn even_weights_rotate() {
        let balancer = WeightedRoundRobin::new(vec![1, 1, 1]);
        let picks: Vec<usize> = (0..6).map(|_| balancer.next()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }
}
