//! The up/down state of one probe target, with hysteresis: it changes only
//! after a run of consecutive results that contradict it, so a single lost
//! probe (or a single lucky one) never flips an endpoint.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    up: bool,
    /// Consecutive results contradicting `up`.
    streak: u32,
}

impl Default for Hysteresis {
    /// Up: a new endpoint takes traffic until its probes say otherwise.
    fn default() -> Hysteresis {
        Hysteresis {
            up: true,
            streak: 0,
        }
    }
}

impl Hysteresis {
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one probe result; down after `retries` consecutive failures,
    /// up again after `rise` consecutive successes. True when the state flipped.
    pub fn record(&mut self, ok: bool, retries: u32, rise: u32) -> bool {
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { retries } else { rise };
        if self.streak < needed.max(1) {
            return false;
        }
        self.up = ok;
        self.streak = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Hysteresis;

    /// Feeds results; returns the state after each.
    fn run(h: &mut Hysteresis, results: &str) -> String {
        results
            .chars()
            .map(|c| {
                h.record(c == '+', 3, 2);
                if h.is_up() {
                    'U'
                } else {
                    'D'
                }
            })
            .collect()
    }

    #[test]
    fn down_only_after_consecutive_failures() {
        let mut h = Hysteresis::default();
        assert!(h.is_up());
        assert_eq!(run(&mut h, "--+--+-+--"), "UUUUUUUUUU", "no 3 in a row");
        assert_eq!(run(&mut h, "-"), "D", "the 3rd in a row (after 2)");
    }

    #[test]
    fn up_only_after_consecutive_successes() {
        let mut h = Hysteresis::default();
        assert_eq!(run(&mut h, "---"), "UUD");
        assert_eq!(
            run(&mut h, "+-+-+-"),
            "DDDDDD",
            "a flapping endpoint stays down"
        );
        assert_eq!(run(&mut h, "++"), "DU");
        assert_eq!(run(&mut h, "+"), "U");
    }

    #[test]
    fn the_flip_is_reported_once() {
        let mut h = Hysteresis::default();
        let flips: Vec<bool> = [false, false, false, false, true, true, true]
            .iter()
            .map(|&ok| h.record(ok, 2, 2))
            .collect();
        assert_eq!(flips, [false, true, false, false, false, true, false]);
    }

    #[test]
    fn a_count_of_one_flips_at_once() {
        let mut h = Hysteresis::default();
        assert!(h.record(false, 1, 1));
        assert!(h.record(true, 1, 1));
    }
}
