"""Site models end to end: public and synthetic fleets replayed over MQTT into `twin serve`,
trained through `POST /model/train`, and scored live, reading by reading, on other machines.

Two fleets, each beside an offline logistic regression on the same rows:

- NASA C-MAPSS FD001 (turbofans run to failure; a cycle is an hour here): the training engines'
  histories and failures are the site's history; the test engines are then replayed cycle by
  cycle and their live risk is scored against the RUL file (label: fails within 30 cycles). The
  same test engines replay a second time without one informative sensor (`--drop`), so the
  score on a machine missing a signal is measured beside the full one. The offline reference is
  a logistic regression on each cycle's sensor values.
- A synthetic fleet whose failures come from error events and machine age, not from sensors
  (`tests.payloads.event_history`): 80% of the machines are the history, the others join and
  are scored hour by hour over their last `--scored-hours`. The offline reference is a
  logistic regression given the true features (the `E1` errors of the last 24 h, the age).

The C-MAPSS files are NASA's (A. Saxena, K. Goebel, D. Simon, N. Eklund, "Damage Propagation
Modeling for Aircraft Engine Run-to-Failure Simulation", PHM08, 2008), read from `--cmapss`;
none is shipped. Also printed: the default AI4I model's table (it must not change).

Run: `python -m bench.site_model [--cmapss ../shared/data/cmapss] [--machines 50] [--hours 1440]`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.ingest import RANGES, _cpu_seconds
from bench.model import quality_table
from tests.payloads import HOUR_MS, event_history
from tests.services import Mosquitto, TwinProcess, wait_until

CMAPSS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmapss"
NAMES = [f"setting{i}" for i in range(1, 4)] + [f"s{i}" for i in range(1, 22)]
Messages = list[tuple[str, bytes]]


class Api:
    """`twin serve`'s HTTP API, as a user's script calls it."""

    def __init__(self, twin: TwinProcess) -> None:
        self.base = f"http://127.0.0.1:{twin.port}"
        self.get = twin.get

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.base + path,
            json.dumps(body).encode(),
            {"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"POST {path}: {exc.code} {exc.read().decode()}") from None

    def machines(self, site: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            page = self.get(f"/machines?site={site}&limit=1000&offset={offset}")
            out.update((m["machine"], m) for m in page["items"])
            offset += len(page["items"])
            if offset >= page["total"] or not page["items"]:
                return out

    def applied(self, site: str, messages: Messages) -> Callable[[], bool]:
        """A check that the site's machines have applied the readings and events of `messages`,
        and the journal (with the history store) has committed everything received."""
        readings = events = 0
        for topic, payload in messages:
            if topic.endswith("/telemetry"):
                body = json.loads(payload)
                readings += len(body) if isinstance(body, list) else 1
            events += topic.endswith("/event")
        return lambda: self._applied(site, readings, events)

    def _applied(self, site: str, readings: int, events: int) -> bool:
        machines = self.machines(site).values()
        return (
            sum(m["counters"]["received"] for m in machines) >= readings
            and sum(sum(m["counters"]["events"].values()) for m in machines) >= events
            and self.get("/health")["journal"]["lag"] == 0
        )

    def train(self, body: dict[str, Any]) -> dict[str, Any]:
        self.post("/model/train", body)
        started = time.monotonic()
        while True:
            job: dict[str, Any] = self.get("/model")["training"]
            if job["state"] != "running":
                break
            print(f"  training: {job['progress']} ({time.monotonic() - started:.0f} s)", end="\r")
            time.sleep(1)
        print(f"  training {job['state']} in {time.monotonic() - started:.0f} s" + " " * 30)
        if job["state"] != "done":
            raise SystemExit(f"training failed: {job.get('error')}")
        return job


class Publisher:
    """One MQTT connection at QoS 1; `send` returns once the broker has every message."""

    def __init__(self, url: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-site-model")
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, messages: Iterable[tuple[str, bytes]]) -> None:
        pending = []
        for topic, payload in messages:
            pending.append(self.client.publish(topic, payload, qos=1))
            if len(pending) == 10_000:  # well within paho's 65,535 message ids
                self._wait(pending)
        self._wait(pending)

    @staticmethod
    def _wait(pending: list[mqtt.MQTTMessageInfo]) -> None:
        for info in pending:
            info.wait_for_publish(60)
        pending.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def reading(machine: str, site: str, ts: int, seq: int, values: dict[str, float]) -> Any:
    body = {"ts": ts, "seq": seq, "values": values}
    return f"factory/{site}/{machine}/telemetry", msgspec.json.encode(body)


def replay_live(
    api: Api,
    publisher: Publisher,
    site: str,
    rounds: list[Messages],
    expected: list[dict[str, int]],
    poll_s: float = 0.05,
) -> dict[tuple[str, int], float | None]:
    """Send each round, wait until every machine it names has applied its reading of ts
    `expected[round][machine]` (its last message) and been scored after it; the live
    probabilities by (machine, ts), None where the twin did not score (its reason is counted)."""
    risks: dict[tuple[str, int], float | None] = {}
    reasons: dict[str, int] = defaultdict(int)
    started = time.monotonic()
    for i, (messages, wanted) in enumerate(zip(rounds, expected, strict=True)):
        publisher.send(messages)

        def scored(wanted: dict[str, int] = wanted) -> bool:
            machines = api.machines(site)
            for machine, ts in wanted.items():
                m = machines.get(machine)
                if m is None or max((v["ts"] for v in m["values"].values()), default=0) < ts:
                    return False
                if m["risk"] is None and m["risk_reason"] in (None, "not scored yet"):
                    return False
                if m["risk"] is not None and m["risk"]["updated_at"] < m["last_seen"]:
                    return False
            for machine, ts in wanted.items():
                m = machines[machine]
                risks[(machine, ts)] = None if m["risk"] is None else m["risk"]["probability"]
                if m["risk"] is None:
                    reasons[m["risk_reason"].split(" (")[0]] += 1
            return True

        deadline = time.monotonic() + 60
        while not scored():  # each poll reads the whole site: `poll_s` keeps it light
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {i} not scored after 60 s")
            time.sleep(poll_s)
        if i % 20 == 0:
            rate = (i + 1) / (time.monotonic() - started)
            print(f"  scored {i + 1} of {len(rounds)} rounds ({rate:.1f}/s)", end="\r")
    print(" " * 60, end="\r")
    for reason, count in reasons.items():
        print(f"  not scored {count} times: {reason}")
    return risks


def quality(y: np.ndarray, p: np.ndarray) -> str:
    if len(set(y.tolist())) < 2:
        return "undefined: these rows hold one class only (score more hours)"
    return f"AP {average_precision_score(y, p):.3f}, ROC-AUC {roc_auc_score(y, p):.3f}"


def offline_logistic(X: np.ndarray, y: np.ndarray, X_test: np.ndarray) -> np.ndarray:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=10_000))
    scores: np.ndarray = model.fit(X, y).predict_proba(X_test)[:, 1]
    return scores


def cmapss(api: Api, publisher: Publisher, directory: Path, args: argparse.Namespace) -> None:
    train = np.loadtxt(directory / "train_FD001.txt")
    test = np.loadtxt(directory / "test_FD001.txt")
    rul = np.loadtxt(directory / "RUL_FD001.txt")
    horizon = args.horizon_cycles
    longest = int(max(train[:, 1].max() + 200, test[:, 1].max())) + 1
    now_h = int(time.time() * 1000) // HOUR_MS
    base = (now_h - longest - int(test[:, 1].max()) - 48) * HOUR_MS
    test_base = (now_h - int(test[:, 1].max()) - 2) * HOUR_MS

    # The training engines enter service over 200 hours: their histories and failures.
    history: Messages = []
    for unit in np.unique(train[:, 0]).astype(int).tolist():
        rows = train[train[:, 0] == unit]
        start = base + (unit * 37 % 100) * 2 * HOUR_MS
        machine = f"tr{unit:03d}"
        batch = [
            {
                "ts": start + int(c) * HOUR_MS,
                "seq": int(c),
                "values": dict(zip(NAMES, r, strict=True)),
            }
            for c, r in zip(rows[:, 1], rows[:, 2:].tolist(), strict=True)
        ]
        for k in range(0, len(batch), 1000):
            topic = f"factory/cmapss/{machine}/telemetry"
            history.append((topic, msgspec.json.encode(batch[k : k + 1000])))
        failure = {"type": "failure", "code": "engine", "ts": batch[-1]["ts"] + HOUR_MS}
        history.append((f"factory/cmapss/{machine}/event", msgspec.json.encode(failure)))
    print(f"C-MAPSS FD001: {len(train)} cycles of {len(np.unique(train[:, 0]))} training engines")
    publisher.send(history)
    wait_until(api.applied("cmapss", history), 120, "the training engines applied")
    job = api.train(
        {
            "site": "cmapss",
            "label_horizon": f"{horizon}h",
            "windows": args.windows.split(","),
        }
    )
    report(api, job)

    # The test engines, cycle by cycle: each in full, and again without one sensor.
    units = np.unique(test[:, 0]).astype(int).tolist()
    by_unit = {u: test[test[:, 0] == u] for u in units}
    rounds: list[Messages] = []
    expected: list[dict[str, int]] = []
    truth: dict[tuple[str, int], int] = {}
    for cycle in range(1, int(test[:, 1].max()) + 1):
        messages: Messages = []
        wanted: dict[str, int] = {}
        for u in units:
            rows = by_unit[u]
            if cycle > len(rows):
                continue
            values = dict(zip(NAMES, rows[cycle - 1, 2:].tolist(), strict=True))
            ts = test_base + cycle * HOUR_MS
            label = int(rul[u - 1] + len(rows) - cycle <= horizon)
            for machine, sent in (
                (f"te{u:03d}", values),
                (f"td{u:03d}", {k: v for k, v in values.items() if k != args.drop}),
            ):
                messages.append(reading(machine, "cmapss", ts, cycle, sent))
                wanted[machine] = ts
                truth[(machine, ts)] = label
        rounds.append(messages)
        expected.append(wanted)
    print(f"replaying {len(test)} cycles of {len(units)} test engines, twice, live")
    started = time.monotonic()
    risks = replay_live(api, publisher, "cmapss", rounds, expected)
    print(f"  {len(risks)} live scores in {time.monotonic() - started:.0f} s")

    # The offline reference: a logistic regression on each cycle's values, the same rows.
    X = train[:, 2:]
    y = np.concatenate(
        [
            (rows[:, 1].max() - rows[:, 1] < horizon).astype(int)
            for rows in (train[train[:, 0] == u] for u in np.unique(train[:, 0]))
        ]
    )
    labels = [
        truth[(f"te{u:03d}", test_base + c * HOUR_MS)]
        for u in units
        for c in range(1, len(by_unit[u]) + 1)
    ]
    X_test = np.vstack([by_unit[u][:, 2:] for u in units])
    offline = offline_logistic(X, y, X_test)
    rows_out = []
    for prefix, name in (("te", "twin, every sensor"), ("td", f"twin, {args.drop} never sent")):
        keys = [k for k in risks if k[0].startswith(prefix)]
        scored = [k for k in keys if risks[k] is not None]
        yk = np.asarray([truth[k] for k in scored])
        pk = np.asarray([risks[k] for k in scored], dtype=float)
        rows_out.append((name, f"{len(scored)}/{len(keys)}", quality(yk, pk)))
    rows_out.append(
        (
            "offline logistic regression, each cycle's values",
            str(len(labels)),
            quality(np.asarray(labels), offline),
        )
    )
    table("C-MAPSS FD001, test engines scored cycle by cycle", rows_out)


def fleet_cost(
    api: Api, publisher: Publisher, twin: TwinProcess, directory: Path, args: argparse.Namespace
) -> None:
    """What live scoring costs at a fleet's size: `--fleet` machines on the C-MAPSS site (each
    with a week of hourly history, so every window is full) and as many on a site the default
    AI4I model scores, side by side in one run: rounds of one reading per machine, each timed
    until every machine is scored again, and the twin's CPU per machine scored."""
    engines = np.loadtxt(directory / "train_FD001.txt")
    runs = [engines[engines[:, 0] == u][:, 2:].tolist() for u in np.unique(engines[:, 0])]
    week, rounds = 168, args.fleet_rounds
    start = (int(time.time() * 1000) // HOUR_MS - week - rounds - 2) * HOUR_MS
    rng = random.Random(args.seed)

    def cmapss_values(m: int, hour: int) -> dict[str, float]:
        run = runs[m % len(runs)]
        return dict(zip(NAMES, run[hour % len(run)], strict=True))

    def ai4i_values(m: int, hour: int) -> dict[str, float]:
        return {n: round(rng.uniform(lo, hi), 1) for n, (lo, hi) in RANGES.items()}

    results: dict[str, tuple[float, float]] = {}
    print(f"live scoring at {args.fleet} machines, {rounds} rounds of a reading each")
    for site, prefix, values, history_hours in (
        ("cmapss", "f", cmapss_values, week),
        ("ai4i", "a", ai4i_values, 0),  # the default model reads the latest values alone
    ):
        names = [f"{prefix}{m:05d}" for m in range(args.fleet)]
        history: Messages = []
        for m, machine in enumerate(names):
            status = {"state": "online", "type": "M"}
            history.append((f"factory/{site}/{machine}/status", msgspec.json.encode(status)))
            batch = [
                {"ts": start + h * HOUR_MS, "seq": h, "values": values(m, h)}
                for h in range(history_hours)
            ]
            if batch:
                topic = f"factory/{site}/{machine}/telemetry"
                history.append((topic, msgspec.json.encode(batch)))
        hours = range(week, week + rounds)
        timed = [
            [reading(n, site, start + h * HOUR_MS, h, values(m, h)) for m, n in enumerate(names)]
            for h in hours
        ]
        expected = [dict.fromkeys(names, start + h * HOUR_MS) for h in hours]
        publisher.send(history)
        wait_until(api.applied(site, history), 300, f"the {site} fleet applied")
        replay_live(api, publisher, site, timed[:1], expected[:1], 0.25)  # warm: rows built once
        began, cpu = time.monotonic(), _cpu_seconds(twin.pid)
        replay_live(api, publisher, site, timed[1:], expected[1:], 0.25)
        results[site] = (
            (time.monotonic() - began) / (rounds - 1),
            (_cpu_seconds(twin.pid) - cpu) / (args.fleet * (rounds - 1)) * 1000,
        )
    (site_s, site_ms), (ai4i_s, ai4i_ms) = results["cmapss"], results["ai4i"]
    table(
        f"live scoring, {args.fleet} machines, a reading each a round (the twin's CPU covers "
        "ingest, scoring and the API polled four times a second for the round's end)",
        [
            (
                "site model (C-MAPSS: 24 signals, windows 3h/24h/7d)",
                str(args.fleet),
                f"{site_s:.2f} s a round, {site_ms:.2f} ms CPU a machine "
                f"({site_s / ai4i_s:.2f}x and {site_ms / ai4i_ms:.2f}x the default's)",
            ),
            (
                "default AI4I model (5 signals)",
                str(args.fleet),
                f"{ai4i_s:.2f} s a round, {ai4i_ms:.2f} ms CPU a machine",
            ),
        ],
    )


def events_fleet(api: Api, publisher: Publisher, args: argparse.Namespace) -> None:
    messages = event_history(args.machines, args.hours, args.seed)
    by_machine: dict[str, Messages] = defaultdict(list)
    for topic, payload in messages:
        by_machine[topic.split("/")[2]].append((topic, payload))
    names = sorted(by_machine, key=lambda m: int(m[1:]))
    cut = round(len(names) * 0.8)
    older, newer = names[:cut], names[cut:]
    print(f"event-driven fleet: {len(names)} machines over {args.hours} h, seed {args.seed}")
    history = [m for name in older for m in by_machine[name]]
    publisher.send(history)
    wait_until(api.applied("plant3", history), 120, "the older machines applied")
    report(api, api.train({"site": "plant3", "label_horizon": "24h"}))

    # The newer machines: their first hours at once, then the last `--scored-hours` hour by
    # hour. A round is the last hour's events, then this hour's reading, scored before this
    # hour's events (a failure at the hour would leak into it).
    first = args.hours - args.scored_hours
    start = json.loads(by_machine[names[0]][0][1])["ts"]  # the status, first
    rounds: list[Messages] = [[] for _ in range(args.scored_hours)]
    expected: list[dict[str, int]] = [{} for _ in range(args.scored_hours)]
    before: Messages = []
    for name in newer:
        for topic, payload in by_machine[name]:
            ts = json.loads(payload)["ts"]
            hour = (ts - start) // HOUR_MS + topic.endswith("event") - first
            if hour < 0:
                before.append((topic, payload))
            elif hour < args.scored_hours:
                rounds[hour].append((topic, payload))
                if topic.endswith("telemetry"):
                    expected[hour][name] = ts
    for messages in rounds:  # each round's events before its reading
        messages.sort(key=lambda m: not m[0].endswith("event"))
    publisher.send(before)
    print(f"scoring {len(newer)} newer machines live over their last {args.scored_hours} h")
    risks = replay_live(api, publisher, "plant3", rounds, expected)

    def rows(machines: list[str]) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
        """The true features (E1 errors in the last 24 h, age) and labels, hourly."""
        X, y, keys = [], [], []
        for name in machines:
            decoded = [(t.rsplit("/", 1)[1], json.loads(p)) for t, p in by_machine[name]]
            age = next(b["properties"]["age_years"] for k, b in decoded if k == "status")
            events = [b for k, b in decoded if k == "event"]
            errors = np.asarray([b["ts"] for b in events if b["code"] == "E1"])
            failures = np.asarray([b["ts"] for b in events if b["type"] == "failure"])
            for kind, body in decoded:
                if kind != "telemetry":
                    continue
                ts = body["ts"]
                count = int(((errors > ts - 24 * HOUR_MS) & (errors <= ts)).sum())
                X.append([count, age])
                y.append(int(((failures > ts) & (failures <= ts + 24 * HOUR_MS)).any()))
                keys.append((name, ts))
        return np.asarray(X, dtype=float), np.asarray(y), keys

    X, y, _ = rows(older)
    X_test, y_test, keys = rows(newer)
    live_rows = np.asarray([k in risks for k in keys])  # the hours scored live
    offline = offline_logistic(X, y, X_test[live_rows])
    y_test, keys = y_test[live_rows], [k for k in keys if k in risks]
    scored = [i for i, k in enumerate(keys) if risks[k] is not None]
    live = np.asarray([risks[keys[i]] for i in scored], dtype=float)
    table(
        "event-driven fleet, the newer machines scored hour by hour",
        [
            ("twin, site model", f"{len(scored)}/{len(keys)}", quality(y_test[scored], live)),
            (
                "offline logistic regression, the true features",
                str(len(keys)),
                quality(y_test, offline),
            ),
        ],
    )


def report(api: Api, job: dict[str, Any]) -> None:
    """The gate's candidates (from the model's manifest), what it chose, the two evaluations."""
    candidate = job["candidate"]
    manifest = next(m for m in api.get("/model")["stored"] if m["version"] == candidate["version"])
    print("  the gate (AP on the latest slice of the training time):")
    for tried in manifest["metrics"]["gate"]["candidates"]:
        crossed = f", {len(tried['interactions'])} interactions" if tried["interactions"] else ""
        named = f"{'+'.join(tried['families'])}, {tried['shape']}{crossed}"
        print(f"    {named:<48} {tried['average_precision']:.4f}")
    crossed = ", ".join("*".join(p) for p in manifest["fleet"]["interactions"]) or "no interactions"
    print(f"  chosen: {'+'.join(candidate['families'])}, {candidate['shape']}, {crossed}")
    print(f"  held out (latest 20% of time): {candidate['metrics']}")
    print(f"  held out (machines never seen): {candidate['grouped']}")


def table(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}\n")
    print("| model | rows scored | quality |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cmapss", type=Path, help=f"folder of train_FD001.txt (default: {CMAPSS}, if there)"
    )
    parser.add_argument("--windows", default="3h,24h,7d", help="C-MAPSS training windows")
    parser.add_argument(
        "--horizon-cycles", type=int, default=30, help="C-MAPSS label: fails within this many"
    )
    parser.add_argument("--drop", default="s11", help="the sensor the second replay lacks")
    parser.add_argument(
        "--fleet", type=int, default=1000, help="machines of each model scored for the cost"
    )
    parser.add_argument("--fleet-rounds", type=int, default=6, help="their rounds, 1 warm-up")
    parser.add_argument("--machines", type=int, default=50, help="event-driven fleet size")
    parser.add_argument("--hours", type=int, default=24 * 60, help="its history, hours")
    parser.add_argument(
        "--scored-hours", type=int, default=24 * 20, help="the newer machines' last hours, live"
    )
    parser.add_argument("--seed", type=int, default=1, help="the event-driven fleet's")
    parser.add_argument(
        "--skip",
        choices=["cmapss", "fleet", "events", "ai4i"],
        nargs="*",
        default=[],
        help="parts left out",
    )
    args = parser.parse_args()
    if "fleet" not in args.skip and "cmapss" in args.skip:
        parser.error("the fleet cost scores with the C-MAPSS site model: skip fleet too")
    if args.fleet_rounds < 2:
        parser.error("--fleet-rounds must be at least 2 (the first warms up)")
    if not 0 < args.scored_hours <= args.hours:
        parser.error("--scored-hours must be within --hours")
    if args.cmapss is not None and not (args.cmapss / "train_FD001.txt").exists():
        parser.error(f"no C-MAPSS FD001 in {args.cmapss}")
    if args.cmapss is None and "cmapss" not in args.skip:
        if (CMAPSS / "train_FD001.txt").exists():
            args.cmapss = CMAPSS
        else:
            print(f"C-MAPSS FD001 is not in {CMAPSS}: skipped (--cmapss DIR names it)")
            args.skip += ["cmapss", "fleet"]
    work = Path(tempfile.mkdtemp(prefix="bench-site-model-"))
    broker = Mosquitto()
    broker.start()
    env = {
        "TWIN_MQTT_URL": broker.url,
        "TWIN_DATA_DIR": str(work / "data"),
        "TWIN_HISTORY_BUCKET_S": "3600",  # a C-MAPSS cycle, an hour of the synthetic fleet
        "TWIN_FEATURE_WINDOW_S": str(7 * 86_400),
        "TWIN_LOG_LEVEL": "WARNING",
        "TWIN_SCORE_INTERVAL_MS": "10",  # a round is scored sooner; the scores are the same
    }
    twin = TwinProcess(env, work / "twin.log")
    publisher: Publisher | None = None
    try:
        twin.start(timeout=120)
        api = Api(twin)
        publisher = Publisher(broker.url)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("cmapss", lambda: cmapss(api, publisher, args.cmapss, args)),
            ("fleet", lambda: fleet_cost(api, publisher, twin, args.cmapss, args)),
            ("events", lambda: events_fleet(api, publisher, args)),
            ("ai4i", quality_table),
        ]
        for name, step in steps:
            if name not in args.skip:
                step()
    finally:
        if publisher is not None:
            publisher.close()
        twin.close()
        broker.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
