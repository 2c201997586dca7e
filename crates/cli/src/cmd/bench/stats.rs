//! Repeats: every benchmark measures each figure several times and reports
//! the median with its spread (min and max), so that one lucky or unlucky
//! run on a shared machine cannot make a ratio. Ratios are taken inside
//! each round (both sides measured back to back, under the same load) and
//! their median reported, rather than a ratio of two medians measured
//! minutes apart.

/// The default number of repeats of every benchmark.
pub const DEFAULT_REPEATS: u64 = 5;

/// One figure over all rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// The median of the rounds (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest round.
    pub min: f64,
    /// The largest round.
    pub max: f64,
}

impl Stat {
    /// The statistics of `v` (NaN everywhere when empty).
    pub fn of(v: &[f64]) -> Self {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if s.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        s.sort_by(f64::total_cmp);
        let m = s.len() / 2;
        let median = if s.len() % 2 == 1 {
            s[m]
        } else {
            (s[m - 1] + s[m]) / 2.0
        };
        Self {
            median,
            min: s[0],
            max: s[s.len() - 1],
        }
    }

    /// `median [min–max]` with `prec` decimals, the median right-aligned in
    /// `width` characters.
    pub fn show(&self, width: usize, prec: usize) -> String {
        format!(
            "{:>width$.prec$} [{:.prec$}–{:.prec$}]",
            self.median, self.min, self.max
        )
    }
}

/// The figures of all rounds of one benchmark, in the order first recorded.
#[derive(Debug, Default)]
pub struct Samples {
    rounds: usize,
    names: Vec<String>,
    values: Vec<Vec<f64>>,
}

impl Samples {
    /// Records `v` for figure `name` in the current round.
    pub fn add(&mut self, name: impl Into<String>, v: f64) {
        let name = name.into();
        match self.names.iter().position(|n| *n == name) {
            Some(i) => self.values[i].push(v),
            None => {
                self.names.push(name);
                self.values.push(vec![v]);
            }
        }
    }

    /// The statistics of figure `name` (NaN if never recorded).
    pub fn get(&self, name: &str) -> Stat {
        match self.names.iter().position(|n| n == name) {
            Some(i) => Stat::of(&self.values[i]),
            None => Stat::of(&[]),
        }
    }

    /// Rounds run.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// One flat JSON object: every figure's median under its own name, its
    /// spread as `<name>_min` and `<name>_max`, then `repeats`, then
    /// `extra` as given (configuration, not measured).
    pub fn json(&self, extra: &[(&str, f64)]) -> String {
        let mut fields: Vec<(String, f64)> = Vec::new();
        for (i, n) in self.names.iter().enumerate() {
            let s = Stat::of(&self.values[i]);
            fields.push((n.clone(), s.median));
            fields.push((format!("{n}_min"), s.min));
            fields.push((format!("{n}_max"), s.max));
        }
        fields.push(("repeats".into(), self.rounds as f64));
        fields.extend(extra.iter().map(|(k, v)| ((*k).to_string(), *v)));
        let f: Vec<(&str, f64)> = fields.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        crate::json::object(&f)
    }
}

/// Runs `round` `repeats` times (at least once), each time with the round
/// number and the samples to add its figures to.
pub fn repeat(
    repeats: u64,
    mut round: impl FnMut(u64, &mut Samples) -> Result<(), String>,
) -> Result<Samples, String> {
    let mut s = Samples::default();
    for i in 0..repeats.max(1) {
        round(i, &mut s)?;
        s.rounds += 1;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_of_odd_and_even_counts() {
        let s = Stat::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = Stat::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Stat::of(&[]).median.is_nan());
    }

    #[test]
    fn repeat_collects_every_round_and_json_carries_medians_and_spreads() {
        let s = repeat(5, |i, s| {
            s.add("x", i as f64);
            s.add("y", 10.0);
            Ok(())
        })
        .unwrap();
        assert_eq!(s.rounds(), 5);
        assert_eq!(s.get("x").median, 2.0);
        assert_eq!(
            s.json(&[("qd", 32.0)]),
            r#"{"x": 2, "x_min": 0, "x_max": 4, "y": 10, "y_min": 10, "y_max": 10, "repeats": 5, "qd": 32}"#
        );
    }

    #[test]
    fn a_failing_round_stops_the_repeats() {
        let mut n = 0;
        let r = repeat(5, |i, _| {
            n += 1;
            if i == 1 {
                Err("boom".into())
            } else {
                Ok(())
            }
        });
        assert_eq!((r.unwrap_err().as_str(), n), ("boom", 2));
    }
}
