//! Precision and recall of the secret detectors over the generated secrets
//! corpus (`leash-agent/corpus/secrets.jsonl`, made by
//! `generate_secrets.py` from the vendors' documented formats,
//! independently of the detectors): per detector and per group, with the
//! floors CI enforces for `high` detectors (precision ≥ 0.99, recall ≥
//! 0.97). `medium` detectors are reported, not held to a floor.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{Value, json};

use super::detect::{Confidence, Detectors, SecretGroup};

const CORPUS: &str = include_str!("../../corpus/secrets.jsonl");
const HIGH_PRECISION: f64 = 0.99;
const HIGH_RECALL: f64 = 0.97;

struct Row {
    text: String,
    label: Option<String>,
    kind: String,
}

fn rows() -> Vec<Row> {
    CORPUS
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Row {
                text: v["text"].as_str().unwrap().to_owned(),
                label: v["labels"][0].as_str().map(str::to_owned),
                kind: v["kind"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

/// (true positives, false positives, false negatives)
#[derive(Default, Clone, Copy)]
struct Counts(u32, u32, u32);

impl Counts {
    fn precision(self) -> f64 {
        f64::from(self.0) / f64::from((self.0 + self.1).max(1))
    }
    fn recall(self) -> f64 {
        f64::from(self.0) / f64::from((self.0 + self.2).max(1))
    }
}

fn r3(x: f64) -> String {
    format!("{x:.3}")
}

#[test]
#[allow(clippy::too_many_lines, reason = "one measurement, one report")]
fn secret_detectors_meet_their_floors() {
    let d = Detectors::new(&[]).unwrap();
    let rows = rows();
    let secret: BTreeMap<String, (SecretGroup, Confidence)> = d
        .all()
        .filter_map(|x| x.secret.map(|s| (x.name.clone(), s)))
        .collect();
    assert!(rows.len() >= 1000, "corpus too small: {}", rows.len());
    assert!(secret.len() >= 60, "{} secret detectors", secret.len());
    // Every kind in the corpus is a detector, and every detector has
    // positives.
    for r in &rows {
        assert!(
            r.kind == "none" || secret.contains_key(&r.kind),
            "corpus kind {} has no detector",
            r.kind
        );
    }
    let mut by_detector: BTreeMap<String, Counts> = secret
        .keys()
        .map(|k| (k.clone(), Counts::default()))
        .collect();
    let mut by_group: BTreeMap<SecretGroup, Counts> = BTreeMap::new();
    let mut problems = Vec::new();
    for r in &rows {
        let mut found = Vec::new();
        d.scan(&r.text, &mut found);
        let mut fired: Vec<&str> = found
            .iter()
            .map(|f| d.get(f.detector).name.as_str())
            .filter(|n| secret.contains_key(*n))
            .collect();
        fired.sort_unstable();
        fired.dedup();
        for name in &fired {
            let c = by_detector.get_mut(*name).unwrap();
            if r.label.as_deref() == Some(*name) {
                c.0 += 1;
            } else {
                c.1 += 1;
                problems.push(format!("{name} fired on {}: {:?}", r.kind, r.text));
            }
        }
        if let Some(label) = &r.label
            && !fired.contains(&label.as_str())
        {
            by_detector.get_mut(label).unwrap().2 += 1;
            problems.push(format!("{label} missed (fired {fired:?}): {:?}", r.text));
        }
        // Groups: the group of the label against the groups that fired.
        let want = r.label.as_ref().map(|l| secret[l].0);
        let mut groups: Vec<SecretGroup> = fired.iter().map(|n| secret[*n].0).collect();
        groups.sort_unstable();
        groups.dedup();
        for g in &groups {
            let c = by_group.entry(*g).or_default();
            if Some(*g) == want {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        if let Some(w) = want
            && !groups.contains(&w)
        {
            by_group.entry(w).or_default().2 += 1;
        }
    }
    let mut report = String::from(
        "detector                     group     conf    precision recall (tp/fp/fn)\n",
    );
    let mut detectors = Vec::new();
    for (name, c) in &by_detector {
        let (group, confidence) = secret[name];
        let _ = writeln!(
            report,
            "{name:<28} {:<9} {:<7} {:>9.3} {:>6.3} ({}/{}/{})",
            group.name(),
            confidence.name(),
            c.precision(),
            c.recall(),
            c.0,
            c.1,
            c.2
        );
        detectors.push(json!({
            "detector": name, "group": group.name(), "confidence": confidence.name(),
            "precision": r3(c.precision()), "recall": r3(c.recall()),
            "tp": c.0, "fp": c.1, "fn": c.2,
        }));
    }
    let mut groups = Vec::new();
    for g in SecretGroup::ALL {
        let c = by_group.get(&g).copied().unwrap_or_default();
        let members: Vec<&String> = secret
            .iter()
            .filter(|(_, s)| s.0 == g)
            .map(|(n, _)| n)
            .collect();
        let _ = writeln!(
            report,
            "group {:<9} {:>2} detectors {:>9.3} {:>6.3} ({}/{}/{})",
            g.name(),
            members.len(),
            c.precision(),
            c.recall(),
            c.0,
            c.1,
            c.2
        );
        groups.push(json!({
            "group": g.name(), "detectors": members.len(),
            "precision": r3(c.precision()), "recall": r3(c.recall()),
            "tp": c.0, "fp": c.1, "fn": c.2,
        }));
    }
    let conf = |level: Confidence| {
        by_detector
            .iter()
            .filter(|(n, _)| secret[*n].1 == level)
            .fold(Counts::default(), |a, (_, c)| {
                Counts(a.0 + c.0, a.1 + c.1, a.2 + c.2)
            })
    };
    let (high, medium) = (conf(Confidence::High), conf(Confidence::Medium));
    for p in &problems {
        let _ = writeln!(report, "{p}");
    }
    eprintln!("{report}");
    for (name, c) in &by_detector {
        if secret[name].1 == Confidence::High {
            assert!(c.0 > 0, "{name}: no positives in the corpus\n{report}");
            assert!(
                c.precision() >= HIGH_PRECISION && c.recall() >= HIGH_RECALL,
                "{name}: precision {:.3}, recall {:.3} below the high floors\n{report}",
                c.precision(),
                c.recall()
            );
        }
    }
    // Per group: its high detectors together meet the same floors.
    for g in SecretGroup::ALL {
        let c = by_detector
            .iter()
            .filter(|(n, _)| secret[*n] == (g, Confidence::High))
            .fold(Counts::default(), |a, (_, c)| {
                Counts(a.0 + c.0, a.1 + c.1, a.2 + c.2)
            });
        if c.0 + c.1 + c.2 > 0 {
            assert!(
                c.precision() >= HIGH_PRECISION && c.recall() >= HIGH_RECALL,
                "group {}: high detectors at precision {:.3}, recall {:.3}\n{report}",
                g.name(),
                c.precision(),
                c.recall()
            );
        }
    }
    let positives = rows.iter().filter(|r| r.label.is_some()).count();
    super::corpus::record(
        "secrets_corpus",
        &json!({
            "samples": rows.len(),
            "positives": positives,
            "negatives": rows.len() - positives,
            "detectors": secret.len(),
            "high": {"detectors": secret.values().filter(|s| s.1 == Confidence::High).count(),
                     "precision": r3(high.precision()), "recall": r3(high.recall())},
            "medium": {"detectors": secret.values().filter(|s| s.1 == Confidence::Medium).count(),
                       "precision": r3(medium.precision()), "recall": r3(medium.recall())},
            "floors": {"high_precision": HIGH_PRECISION, "high_recall": HIGH_RECALL},
            "high_precision": r3(high.precision()),
            "high_recall": r3(high.recall()),
            "medium_precision": r3(medium.precision()),
            "medium_recall": r3(medium.recall()),
            "groups": groups,
            "by_detector": detectors,
        }),
    );
}

/// The committed corpus is what the generator makes (no hand edits).
#[test]
fn the_corpus_is_what_the_generator_makes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus");
    let out = std::process::Command::new("python3")
        .arg("generate_secrets.py")
        .current_dir(dir)
        .output()
        .expect("python3 runs the generator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == CORPUS.as_bytes(),
        "corpus/secrets.jsonl differs from generate_secrets.py's output: run `python3 generate_secrets.py > secrets.jsonl` in leash-agent/corpus"
    );
}
