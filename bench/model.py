"""Failure-model quality, and what the model sees on the simulated fleet.

1. On AI4I 2020's stratified 80/20 split (random_state=0): plain logistic regression on the raw
   signals, the twin's model, and scikit-learn's HistGradientBoosting. Each threshold is chosen on
   its own out-of-fold predictions on the 80%; figures are on the 20%.
2. A seeded simulated fleet (devices/, AI4I physics), scored reading by reading by the twin's
   model fitted on all of AI4I: risk by tool wear and around tool changes; how many failures
   risk above the threshold preceded, how early (in simulated minutes of tool use), and how many
   alarm episodes no failure followed.

Run: `python -m bench.model [--machines 50] [--steps 2000] [--seed 1]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from devices.simulator import make_fleet
from twin.model import BUNDLED_CSV, Predictor, feature_row, fit, read_ai4i_csv
from twin.model.registry import manifest_for
from twin.model.training import build_pipeline, split_report

_RAW = 5  # the five canonical signals lead the feature row


def raw_logistic() -> Pipeline:
    """Plain logistic regression on the raw signals only (the reference point)."""
    pick = ColumnTransformer([("raw", "passthrough", list(range(_RAW)))])
    return make_pipeline(pick, StandardScaler(), LogisticRegression(max_iter=5000))


def boosting() -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(random_state=0)


def quality_table() -> None:
    data = read_ai4i_csv(BUNDLED_CSV)
    print("AI4I 2020, stratified 80/20 split (random_state=0), figures on the 20% held out")
    print(f"{'model':32} {'AP':>6} {'ROC-AUC':>8} {'F1':>6} {'prec.':>6} {'recall':>6} {'time':>6}")
    for name, make in [
        ("logistic, raw signals", raw_logistic),
        ("twin model (spline logistic)", build_pipeline),
        ("HistGradientBoosting", boosting),
    ]:
        started = time.perf_counter()
        q = split_report(data, make)
        print(
            f"{name:32} {q['average_precision']:>6.3f} {q['roc_auc']:>8.3f} {q['f1']:>6.3f} "
            f"{q['precision']:>6.3f} {q['recall']:>6.3f} {time.perf_counter() - started:>5.1f}s"
        )


def simulated_fleet(machines: int, steps: int, seed: int, horizon_min: float) -> None:
    data = read_ai4i_csv(BUNDLED_CSV)
    fitted = fit(data, full_report=False)
    model = Predictor(fitted.pipeline, manifest_for(fitted, data, "default"))
    fleet = make_fleet(machines, seed)
    print(
        f"\nSimulated fleet: {machines} machines x {steps} processes, seed {seed}; "
        f"threshold {model.threshold:.3f}; horizon {horizon_min:.0f} simulated minutes"
    )
    wear_risk: dict[int, list[float]] = defaultdict(list)
    before_change, after_change = [], []
    caught, missed, leads, false_alarms, episodes = 0, 0, [], 0, 0
    by_mode: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for machine in fleet:
        rows, events, clock = [], [], []
        minutes = 0.0
        for _ in range(steps):
            values, step_events = machine.step()
            minutes += machine.process_minutes
            rows.append(feature_row(values, machine.type))
            events.append(step_events)
            clock.append(minutes)
        risk, _ = model.score(np.asarray(rows))
        alarm = risk >= model.threshold
        for i, row in enumerate(rows):
            wear_risk[int(row[4] // 50) * 50].append(risk[i])
            if any(e.code == "tool_change" for e in events[i]) and 0 < i < steps - 1:
                before_change.append(risk[i])
                after_change.append(risk[i + 1])
        # Alarm episodes: runs of readings at or above the threshold.
        starts = [i for i in range(steps) if alarm[i] and (i == 0 or not alarm[i - 1])]
        failures = [(i, e.code) for i in range(steps) for e in events[i] if e.type == "failure"]
        for i, mode in failures:
            window = [s for s in starts if s <= i and clock[i] - clock[s] <= horizon_min]
            hit = bool(alarm[i]) or bool(window)
            by_mode[mode][0 if hit else 1] += 1
            if hit:
                caught += 1
                leads.append(clock[i] - clock[min(window)] if window else 0.0)
            else:
                missed += 1
        for s in starts:
            episodes += 1
            if not any(s <= i and clock[i] - clock[s] <= horizon_min for i, _ in failures):
                false_alarms += 1
    print(
        "mean risk by tool wear (min): "
        + ", ".join(f"{w}-{w + 49}: {np.mean(r):.3f}" for w, r in sorted(wear_risk.items()))
    )
    print(
        f"risk at a tool change {np.mean(before_change):.3f} -> next process "
        f"{np.mean(after_change):.3f} ({len(before_change)} changes)"
    )
    total = caught + missed
    print(
        f"failures preceded by risk >= threshold: {caught}/{total} ({caught / max(total, 1):.0%})"
    )
    for mode, (hit, miss) in sorted(by_mode.items()):
        print(f"  {mode}: {hit}/{hit + miss}")
    if leads:
        lead = np.asarray(leads)
        print(
            f"warning before failure (simulated minutes): median {np.median(lead):.0f}, "
            f"p90 {np.percentile(lead, 90):.0f}, warned >= 10 min ahead: {(lead >= 10).mean():.0%}"
        )
    print(f"alarm episodes: {episodes}, not followed by a failure: {false_alarms}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2000, help="processes per machine")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--horizon", type=float, default=60.0, help="simulated minutes")
    args = parser.parse_args()
    quality_table()
    simulated_fleet(args.machines, args.steps, args.seed, args.horizon)
    return 0


if __name__ == "__main__":
    sys.exit(main())
