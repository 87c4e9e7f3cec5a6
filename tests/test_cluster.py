"""Cluster mode against a real nats-server: devices publish MQTT to its listener, `twin worker`
processes hold the partitions, `twin api` serves the fleet from the streams."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest

from devices.fleet import Fleet, FleetOptions
from devices.publisher import DevicePublisher, NetworkLoop
from tests.payloads import BAD_PAYLOADS, BAD_REASONS, wear_history
from tests.services import (
    ClusterProcess,
    InfluxDB1,
    NatsServer,
    PlantLeaf,
    TcpLink,
    free_port,
    wait_until,
)
from twin.alerts import Alert
from twin.cluster.episodes import KvEpisodes, episode_id, episode_key
from twin.cluster.layout import to_nats
from twin.config import Settings
from twin.model.predictor import Predictor
from twin.model.registry import DEFAULT_SCOPE, manifest_for
from twin.model.training import BUNDLED_CSV, fit, read_ai4i_csv
from twin.topics import Topics

pytestmark = pytest.mark.integration

PARTITIONS = 12


class Cluster:
    """Workers and APIs on one nats-server, each a real process with its own data dir."""

    def __init__(
        self,
        nats: NatsServer,
        tmp: Path,
        models: Path,
        partitions: int = PARTITIONS,
        urls: str | None = None,  # every node's, for a cluster of them
        replicas: int = 1,
        plants: str = "",  # TWIN_NATS_PLANTS
    ):
        self.nats = nats
        self.urls = urls or nats.url
        self.replicas = replicas
        self.plants = plants
        self.tmp = tmp
        self.models = models
        self.partitions = partitions
        self.workers: dict[str, ClusterProcess] = {}
        self.api_port = free_port()
        self.api: ClusterProcess | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "TWIN_NATS_URL": self.urls,
            "TWIN_NATS_PARTITIONS": str(self.partitions),
            "TWIN_NATS_REPLICAS": str(self.replicas),
            "TWIN_CLUSTER_SNAPSHOT_S": "1",
            "TWIN_NATS_PLANTS": self.plants,
            **extra,
        }

    def init(self) -> str:
        done = self.try_init()
        assert done.returncode == 0, done.stderr
        return done.stdout

    def try_init(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "twin", "cluster", "init"],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def worker(self, name: str, models: bool = True) -> ClusterProcess:
        """Start a worker; with `models`, its data dir has a default model already."""
        data = self.tmp / name
        if models and not (data / "models").exists():
            shutil.copytree(self.models, data / "models")
        env = self.env(TWIN_WORKER_ID=name, TWIN_DATA_DIR=str(data))
        worker = self.workers[name] = ClusterProcess(["worker"], env, self.tmp / f"{name}.log")
        worker.start()
        return worker

    def share_out(self, *names: str) -> None:
        """Start these workers and the API; wait until the workers hold every partition."""
        for name in names:
            self.worker(name)
        self.start_api()
        wait_until(lambda: self.settled(set(names)), 90, f"{len(names)} workers to share out")

    def start_api(self) -> None:
        args = ["api", "--port", str(self.api_port)]
        self.api = ClusterProcess(args, self.env(), self.tmp / "api.log")
        self.api.start()
        wait_until(self._answers, 30, "twin api to answer")

    def _answers(self) -> bool:
        assert self.api is not None
        self.api.logged("")  # raises if it exited
        try:
            self.get("/machines?limit=1")
            return True
        except OSError:
            return False

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.api_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def health(self) -> dict[str, Any]:
        """/health's body, which a degraded cluster sends with a 503."""
        try:
            found: dict[str, Any] = self.get("/health")
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
            found = json.load(exc)
        return found

    def owners(self) -> dict[int, str | None]:
        return {p["partition"]: p["owner"] for p in self.get("/cluster")["partitions"]}

    def held(self) -> dict[str, list[int]]:
        return {w["id"]: w["partitions"] for w in self.get("/cluster")["workers"] if w["live"]}

    def settled(self, names: set[str]) -> bool:
        """Every partition owned by one of `names`, none of them above its fair share."""
        cluster = self.get("/cluster")
        owners = [p["owner"] for p in cluster["partitions"]]
        share = -(-self.partitions // len(names))
        counts = [owners.count(n) for n in names]
        return all(o in names for o in owners) and max(counts) <= share

    def machines(self) -> dict[str, dict[str, Any]]:
        page = self.get("/machines?limit=1000")
        items = page["items"]
        while len(items) < page["total"]:
            page = self.get(f"/machines?limit=1000&offset={len(items)}")
            items += page["items"]
        return {m["machine"]: m for m in items}

    def close(self) -> None:
        for process in [*self.workers.values(), self.api]:
            if process is not None:
                process.close()


@pytest.fixture
def cluster(nats_server: NatsServer, tmp_path: Path, models_dir: Path) -> Iterator[Cluster]:
    running = Cluster(nats_server, tmp_path, models_dir)
    running.init()
    try:
        yield running
    finally:
        running.close()


def fleet(
    nats: NatsServer | PlantLeaf,
    machines: int,
    count: int,
    rate: float,
    site: str = "s1",
    prefix: str = "m",
) -> Fleet:
    """The simulator, publishing MQTT 3.1.1 at QoS 1 to nats-server's MQTT listener."""
    broker = Settings(_env_file=None, mqtt_url=nats.mqtt_url).broker  # type: ignore[call-arg]
    options = FleetOptions(machines, rate, site, 7, 1, count, "3.1.1", prefix)
    devices = Fleet(broker, Topics(), options)
    devices.start(connect_timeout=60)
    return devices


def finish(devices: Fleet, timeout: float = 120) -> None:
    """Wait until the simulator has published everything and the broker acknowledged it all
    (a device reconnecting resends what was not), then stop it."""
    assert devices.wait(timeout), "the simulator did not finish"
    wait_until(
        lambda: all(p.delivered >= p.published for p in devices.publishers),
        timeout,
        "the broker to acknowledge every reading",
    )
    devices.stop()


def all_received(cluster: Cluster, machines: int, count: int) -> bool:
    seen = cluster.machines()
    return len(seen) == machines and all(m["counters"]["received"] == count for m in seen.values())


def alert_changes(nats: NatsServer) -> list[dict[str, Any]]:
    """Every message of the alerts stream, oldest first."""

    async def read() -> list[dict[str, Any]]:
        nc = await nats_client.connect(nats.url)
        js, found = nc.jetstream(), []
        pending = (await js.stream_info("TWIN_ALERTS")).state.messages
        if pending:
            sub = await js.subscribe("factory.*.*.alert", ordered_consumer=True)
            while len(found) < pending:
                found.append(json.loads((await sub.next_msg(timeout=10)).data))
            await sub.unsubscribe()
        await nc.close()
        return found

    return asyncio.run(read())


def raised_twice(changes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(machine, rule) pairs that had a second episode raised while one was still open."""
    episodes: dict[int, dict[str, Any]] = {}
    for change in changes:
        episode = episodes.setdefault(change["id"], dict(change))
        episode["cleared_at"] = change["cleared_at"] or episode["cleared_at"]
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for episode in episodes.values():
        by_pair.setdefault((episode["machine"], episode["rule"]), []).append(episode)
    twice = []
    for pair, found in by_pair.items():
        found.sort(key=lambda e: e["raised_at"])
        for first, second in itertools.pairwise(found):
            if first["cleared_at"] is None or first["cleared_at"] > second["raised_at"]:
                twice.append(pair)
    return twice


def quiet(cluster: Cluster) -> bool:
    """Nothing left to apply: every device said it went offline, no partition lags."""
    offline = not any(m["online"] for m in cluster.machines().values())
    return offline and all(p["lag"] == 0 for p in cluster.get("/cluster")["partitions"])


@contextmanager
def polling(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """Poll the API all along; record failures and any partition two live workers held."""
    record: dict[str, Any] = {"polls": 0, "failures": [], "overlaps": []}
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                cluster.get("/machines?limit=10&sort=-risk")
                held = cluster.held()
                record["polls"] += 1
            except OSError as exc:
                record["failures"].append(repr(exc))
                continue
            seen: dict[int, str] = {}
            for worker, partitions in held.items():
                for p in partitions:
                    if p in seen:
                        record["overlaps"].append((p, seen[p], worker))
                    seen[p] = worker
            stop.wait(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        stop.set()
        thread.join(30)


def test_init_is_idempotent_and_a_worker_refuses_another_layout(cluster: Cluster) -> None:
    again = cluster.init()
    assert "stream TWIN_IN is as configured" in again
    assert f"0 created, 0 updated, {PARTITIONS} as configured" in again
    other = Cluster(cluster.nats, cluster.tmp, cluster.models, partitions=PARTITIONS + 1)
    refused = other.try_init()
    assert refused.returncode == 1
    assert "changing the partition count is a migration" in refused.stderr
    worker = other.worker("odd")
    assert worker.process is not None
    assert worker.process.wait(60) == 1
    assert (
        f"TWIN_IN has {PARTITIONS} partitions, TWIN_NATS_PARTITIONS says" in worker.log.read_text()
    )


def test_a_worker_killed_mid_stream_loses_nothing_and_applies_nothing_twice(
    cluster: Cluster,
) -> None:
    machines, count = 2000, 10
    cluster.share_out("w1", "w2", "w3")
    with polling(cluster) as polls:
        devices = fleet(cluster.nats, machines, count, rate=1.0)
        time.sleep(4)
        victim = cluster.held()["w2"]
        cluster.workers["w2"].kill()  # kill -9, mid-stream
        killed_at = time.monotonic()
        wait_until(lambda: cluster.settled({"w1", "w3"}), 60, "w2's partitions to be owned again")
        failover_s = time.monotonic() - killed_at
        finish(devices)
        wait_until(lambda: all_received(cluster, machines, count), 120, "every reading applied")
        wait_until(lambda: quiet(cluster), 90, "every partition acknowledged (lag 0)")
    seen = cluster.machines()
    assert sum(m["counters"]["received"] for m in seen.values()) == machines * count
    assert all(m["counters"]["received"] == count for m in seen.values())  # none applied twice
    owners = cluster.owners()
    assert all(owners[p] in ("w1", "w3") for p in victim)
    assert polls["failures"] == []
    assert polls["polls"] > 10
    assert polls["overlaps"] == []
    assert failover_s < 60
    assert cluster.get("/health")["status"] == "ok"
    changes = alert_changes(cluster.nats)
    assert changes  # the devices said offline at the end, at least
    assert raised_twice(changes) == []


def test_a_restarted_worker_resumes_from_its_snapshots(cluster: Cluster) -> None:
    machines = 200
    worker = cluster.worker("w1")
    cluster.start_api()
    wait_until(lambda: cluster.settled({"w1"}), 60, "w1 to hold every partition")
    devices = fleet(cluster.nats, machines, 5, rate=5.0)
    finish(devices)
    wait_until(lambda: all_received(cluster, machines, 5), 60, "the first readings")
    wait_until(lambda: quiet(cluster), 60, "the devices' last status messages applied")
    assert worker.terminate() == 0  # SIGTERM: snapshot, ack, give back
    assert f"gave back {PARTITIONS}" in worker.log.read_text()

    worker = cluster.worker("w1")
    wait_until(lambda: cluster.settled({"w1"}), 60, "w1 to take its partitions again")
    log = worker.log.read_text().split("gave back")[-1]
    assert "replayed 0 messages" in log
    assert "replayed 1" not in log
    devices = fleet(cluster.nats, machines, 5, rate=5.0, site="s1")
    finish(devices)
    wait_until(lambda: all_received(cluster, machines, 10), 60, "the second readings on top")


def test_a_fourth_worker_takes_its_share_and_one_leaves_cleanly(cluster: Cluster) -> None:
    machines, count = 300, 30
    cluster.share_out("w1", "w2", "w3")
    with polling(cluster) as polls:
        devices = fleet(cluster.nats, machines, count, rate=2.0)
        cluster.worker("w4")
        wait_until(lambda: cluster.settled({"w1", "w2", "w3", "w4"}), 60, "w4 to take its share")
        assert list(cluster.owners().values()).count("w4") == PARTITIONS // 4
        # /plans as twin serve's: a site's capacity is its healthy machines' worth (s9 has
        # none). Which machines are under the threshold moves from one reading to the next,
        # so the count is checked against the fleet's bounds, not a second count.
        plan = {
            "sites": [{"name": "s1", "unit_cost": 1}, {"name": "s9", "unit_cost": 1}],
            "demands": [{"id": "d", "quantity": 10 * machines, "shortfall_cost": 10}],
            "capacity_per_machine": 2,
        }
        capacities = {c["site"]: c["capacity"] for c in cluster.post("/plans", plan)["capacities"]}
        assert 0 < capacities["s1"] <= 2 * machines
        assert capacities["s1"] % 2 == 0
        assert capacities["s9"] == 0
        assert cluster.workers["w1"].terminate() == 0
        wait_until(lambda: cluster.settled({"w2", "w3", "w4"}), 60, "w1's share to move")
        finish(devices)
        wait_until(lambda: all_received(cluster, machines, count), 60, "every reading applied")
    assert polls["failures"] == []
    assert polls["overlaps"] == []


def test_two_workers_never_open_the_same_alert(cluster: Cluster) -> None:
    """A former owner's open alert is taken over, acks written elsewhere survive a change,
    and a cleared episode lets the next one open."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def connect() -> tuple[Any, KvEpisodes, KvEpisodes]:
        nc = await nats_client.connect(cluster.nats.url)
        kv = await nc.jetstream().key_value("twin_alerts")
        first, second = KvEpisodes(), KvEpisodes()
        await first.start(kv)
        await second.start(kv)
        return nc, first, second

    nc, first, second = run(connect())
    try:
        now = int(time.time() * 1000)

        def offline(at: int) -> Alert:
            return Alert(0, "m.1", "s1", "offline", "offline", "major", "active", "gone", at, at)

        alert = offline(now)
        opened = first.open(alert)
        assert opened is alert
        assert alert.id == episode_id(alert)
        again = Alert(
            0, "m.1", "s1", "offline", "offline", "major", "active", "gone", now + 5, now + 5
        )
        taken = second.open(again)  # the next owner, replaying the same readings
        assert taken is not again
        assert (taken.id, taken.raised_at) == (alert.id, now)

        async def acknowledge_elsewhere() -> None:  # what `twin api` does
            kv = await nc.jetstream().key_value("twin_alerts")
            entry = await kv.get(episode_key("s1", "m.1", "offline"))
            stored = json.loads(entry.value)
            stored.update(acknowledged=True, acknowledged_by="ops")
            await kv.update(entry.key, json.dumps(stored).encode(), last=entry.revision)

        run(acknowledge_elsewhere())
        taken.severity, taken.updated_at = "critical", now + 10
        second.changed(taken)
        assert taken.acknowledged
        assert taken.acknowledged_by == "ops"
        second.close(taken)
        later = Alert(
            0, "m.1", "s1", "offline", "offline", "major", "active", "gone", now + 20, now + 20
        )
        assert first.open(later) is later
        assert later.id != alert.id
    finally:
        run(first.stop())
        run(second.stop())
        run(nc.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_bad_input_gets_the_reasons_and_dead_letters_it_gets_in_twin_serve(
    cluster: Cluster,
) -> None:
    cluster.worker("w1")
    cluster.start_api()
    wait_until(lambda: cluster.settled({"w1"}), 60, "w1 to hold every partition")
    broker = Settings(_env_file=None, mqtt_url=cluster.nats.mqtt_url).broker  # type: ignore[call-arg]
    loop = NetworkLoop()
    device = DevicePublisher(broker, Topics(), "s1", "m1", "L", loop=loop, protocol="3.1.1")
    device.start()
    assert device.wait_connected(30)
    for round_ in range(20):
        for payload in BAD_PAYLOADS:
            device.publish_raw(payload)
        device.publish_raw(json.dumps({"seq": round_, "values": {"x": round_}}).encode())
    assert device.wait_delivered(30)
    device.stop()
    loop.close()

    def counters() -> dict[str, Any]:
        try:
            return dict(cluster.get("/machines/m1")["counters"])
        except OSError:
            return {}

    wait_until(lambda: counters().get("received") == 20, 30, "the 20 good readings")
    expected = {reason: 20 * n for reason, n in BAD_REASONS.items()}
    wait_until(lambda: counters()["rejected_by_reason"] == expected, 30, "every rejection")
    total = 20 * sum(BAD_REASONS.values())
    wait_until(
        lambda: cluster.get("/deadletters?machine=m1&limit=1000")["total"] == total,
        30,
        "the dead letters",
    )
    by_reason = cluster.get("/deadletters")["by_reason"]
    assert by_reason == expected
    url = f"http://127.0.0.1:{cluster.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        metrics = response.read().decode()
    assert "twin_cluster_workers 1.0" in metrics
    assert "twin_cluster_partitions_unowned 0.0" in metrics
    assert "twin_readings_applied_total 20.0" in metrics
    assert 'twin_rejections_total{reason="not_json"} 40.0' in metrics


def test_a_three_node_cluster_loses_nothing_when_a_node_stops_under_load(
    tmp_path: Path, models_dir: Path
) -> None:
    """Two workers on three nodes (R3), devices publishing through node 0's listener; another
    node, not the input stream's leader, stops under load: every reading is applied once."""
    ports = [free_port() for _ in range(3)]
    nodes = [
        NatsServer(tmp_path / f"n{i}", f"n{i}", ports[i], [p for p in ports if p != ports[i]])
        for i in range(3)
    ]
    urls = ",".join(node.url for node in nodes)
    cluster = Cluster(nodes[0], tmp_path, models_dir, urls=urls, replicas=3)
    try:
        for node in nodes:
            node.start()
        wait_until(lambda: _init_ok(cluster), 60, "the three nodes to elect a meta leader")
        for name in ("w1", "w2"):
            cluster.worker(name)
        cluster.start_api()
        wait_until(lambda: cluster.settled({"w1", "w2"}), 90, "two workers to share out")
        machines, count = 500, 20
        with polling(cluster) as polls:
            devices = fleet(nodes[0], machines, count, rate=2.0)  # through node 0's listener
            time.sleep(4)
            # Under load, a node goes: the consumers, buckets and MQTT streams it leads move to
            # the other two. Not the input stream's leader: nats-server's MQTT listener
            # acknowledges a message before that stream stores it, so what it acknowledged
            # while that leader moved can be lost (README, "Scaling out").
            leader = stream_leader(nodes[0], "TWIN_IN")
            victim = next(n for n in nodes[1:] if n.server_name != leader)
            victim.stop()
            finish(devices)
            wait_until(lambda: all_received(cluster, machines, count), 120, "every reading")
        assert polls["failures"] == []
        seen = cluster.machines()
        assert sum(m["counters"]["received"] for m in seen.values()) == machines * count
    finally:
        cluster.close()
        for node in nodes:
            node.close()


def stream_leader(node: NatsServer, stream: str) -> str:
    async def ask() -> str:
        nc = await nats_client.connect(node.url)
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"")).data)
        await nc.close()
        return str(info["cluster"]["leader"])

    return asyncio.run(ask())


def _init_ok(cluster: Cluster) -> bool:
    try:
        cluster.init()
        return True
    except AssertionError:
        return False


def plant_readings(plant: PlantLeaf) -> int:
    """How many readings the plant's own stream holds."""

    async def count() -> int:
        nc = await nats_client.connect(plant.url)
        try:
            return int((await nc.jetstream().stream_info("TWIN_PLANT")).state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def test_a_plant_leaf_keeps_accepting_through_a_cut_link_and_the_centre_converges(
    tmp_path: Path, models_dir: Path
) -> None:
    """Devices of plant1 publish to its leaf node, others to the centre; the WAN link (a TCP
    forwarder) is cut for 30 s under load. The plant keeps taking readings, the centre sees
    none of them meanwhile, then every reading of both is applied once."""
    hub = NatsServer(tmp_path / "hub", leaf_port=free_port())
    hub.start()
    link = TcpLink(hub.leaf_port or 0)
    plant = PlantLeaf(tmp_path / "plant1", "plant1", f"nats-leaf://127.0.0.1:{link.port}")
    plant.start()
    cluster = Cluster(hub, tmp_path, models_dir, plants="plant1")
    try:
        wait_until(lambda: cluster.try_init().returncode == 0, 30, "init to reach plant1")
        again = cluster.init()
        assert "stream TWIN_PLANT on plant plant1 is as configured" in again
        assert "stream TWIN_IN is as configured" in again
        cluster.share_out("w1", "w2")
        local, remote = 40, 60  # machines at the centre and at the plant
        count = 40
        central = fleet(hub, local, count, rate=1.0, site="s1")
        devices = fleet(plant, remote, count, rate=1.0, site="s2", prefix="p")
        wait_until(lambda: plant_readings(plant) > 0, 30, "the plant's first readings")
        time.sleep(3)
        link.cut()
        cut_at = time.monotonic()
        time.sleep(3)  # what was in flight lands
        seen_then = sum(
            m["counters"]["received"] for m in cluster.machines().values() if m["site"] == "s2"
        )
        held_then = plant_readings(plant)
        wait_until(
            lambda: not cluster.get("/cluster")["plants"][0]["linked"], 30, "plant1 unlinked"
        )
        health = cluster.health()
        assert health["status"] == "degraded"
        assert any("plant plant1 not reached" in p for p in health["problems"])
        time.sleep(max(0.0, 30 - (time.monotonic() - cut_at)))
        assert plant_readings(plant) > held_then + remote * 10  # the plant kept accepting
        seen_now = sum(
            m["counters"]["received"] for m in cluster.machines().values() if m["site"] == "s2"
        )
        assert seen_now == seen_then  # and none of it reached the centre: the link was cut
        link.restore()
        finish(central)
        finish(devices)
        wait_until(
            lambda: all_received(cluster, local + remote, count), 120, "every reading applied"
        )
        seen = cluster.machines()
        assert sum(m["counters"]["received"] for m in seen.values()) == (local + remote) * count
        assert {m["site"] for m in seen.values()} == {"s1", "s2"}
        wait_until(lambda: cluster.health()["status"] == "ok", 30, "health ok again")
        plants = cluster.get("/cluster")["plants"]
        assert [(p["domain"], p["linked"], p["lag"]) for p in plants] == [("plant1", True, 0)]
    finally:
        cluster.close()
        plant.close()
        link.close()
        hub.close()


def stream_events(cluster: Cluster, kinds: set[str], timeout: float) -> dict[str, Any]:
    """The first event of each of `kinds` on the API's `/stream`."""
    found: dict[str, Any] = {}
    url = f"http://127.0.0.1:{cluster.api_port}/stream"
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url, timeout=timeout) as response:
        kind = None
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind in kinds:
                found.setdefault(kind, json.loads(line.removeprefix("data: ")))
            if set(found) == kinds or time.monotonic() > deadline:
                break
    assert set(found) == kinds, f"only {sorted(found)} on /stream after {timeout} s"
    return found


def influx_count(influxdb: InfluxDB1, query: str) -> int:
    series = influxdb.query(query, db="twin")["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_one_forwarder_writes_every_point_once_through_an_influxdb_outage_and_a_restart(
    cluster: Cluster, influxdb: InfluxDB1
) -> None:
    """Two workers, one `twin forward`: InfluxDB stops mid-stream and the forwarder is
    restarted while it is down; every reading lands once, with risk and alert points."""
    machines, count = 60, 40
    cluster.share_out("w1", "w2")
    sink = {"TWIN_INFLUX_URL": influxdb.url, "TWIN_INFLUX_DB": "twin"}

    def forwarder() -> ClusterProcess:
        process = ClusterProcess(["forward"], cluster.env(**sink), cluster.tmp / "forward.log")
        process.start()
        return process

    forward = forwarder()
    devices = fleet(cluster.nats, machines, count, rate=4.0)
    events = stream_events(cluster, {"twin", "alert"}, 60)  # /stream, as twin serve's
    assert events["twin"]["site"] == "s1"
    assert events["alert"]["machine"].startswith("m")
    telemetry = "SELECT count(torque_nm) FROM telemetry"
    wait_until(lambda: influx_count(influxdb, telemetry) > 200, 60, "the first points")
    influxdb.stop()
    time.sleep(3)
    assert forward.terminate() == 0  # SIGTERM while its write retries: handed back, not lost
    assert "sink influxdb1 failing" in forward.log.read_text()
    forward = forwarder()
    time.sleep(2)
    influxdb.start()
    finish(devices)
    wait_until(lambda: all_received(cluster, machines, count), 60, "every reading applied")
    wait_until(
        lambda: influx_count(influxdb, telemetry) == machines * count, 60, "every reading written"
    )
    assert influx_count(influxdb, "SELECT count(probability) FROM risk") > 0
    wait_until(
        lambda: influx_count(influxdb, "SELECT count(id) FROM alert") > 0, 30, "alert points"
    )
    log = forward.log.read_text()
    assert "forwarding from in, risk, alerts" in log
    forwarders = cluster.get("/cluster")["forwarders"]
    assert {f["consumer"] for f in forwarders} == {
        f"forward-influxdb1-{kind}" for kind in ("in", "risk", "alerts")
    }
    wait_until(
        lambda: all(f["pending"] == 0 for f in cluster.get("/cluster")["forwarders"]),
        30,
        "the forwarder to catch up",
    )
    assert forward.terminate() == 0
    assert "wrote" in forward.log.read_text().splitlines()[-1]
    assert cluster.get("/health")["status"] == "ok"


def test_a_pushed_model_scores_every_partition_and_a_new_worker_starts_with_it(
    cluster: Cluster,
) -> None:
    """The workers share the cluster's default model; `twin cluster model push` of another one
    reaches every worker and every machine's score, and a worker started later fetches it."""
    machines = 40
    cluster.worker("w2", models=False)  # would fit a default of its own, but takes w1's
    cluster.worker("w1")
    cluster.start_api()
    wait_until(lambda: cluster.settled({"w1", "w2"}), 90, "two workers to share out")
    first = cluster.get("/model")["active"][DEFAULT_SCOPE]["version"]

    def scoring_with(version: str) -> bool:
        workers = cluster.get("/cluster")["workers"]
        return all(w["models"].get(DEFAULT_SCOPE) == version for w in workers)

    # One default for the cluster, not one each: w2, had it fitted its own, switches.
    wait_until(lambda: scoring_with(first), 30, "both workers to score with the first default")

    data = read_ai4i_csv(BUNDLED_CSV)
    fitted = fit(data, full_report=False)
    trained = Predictor(fitted.pipeline, manifest_for(fitted, data, DEFAULT_SCOPE))
    trained.save(cluster.tmp / "trained")
    pushed = subprocess.run(
        [sys.executable, "-m", "twin", "cluster", "model", "push", str(cluster.tmp / "trained")],
        env={**os.environ, **cluster.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert f"model {trained.version} is now active for default" in pushed.stdout

    wait_until(lambda: scoring_with(trained.version), 30, "every worker to use the pushed one")
    assert cluster.get("/model")["active"][DEFAULT_SCOPE]["version"] == trained.version
    devices = fleet(cluster.nats, machines, 10, rate=5.0)
    finish(devices)
    wait_until(lambda: all_received(cluster, machines, 10), 60, "every reading applied")
    wait_until(
        lambda: (
            {m["risk"]["model_version"] for m in cluster.machines().values() if m["risk"]}
            == {trained.version}
        ),
        30,
        "every machine scored by the pushed model",
    )
    late = cluster.worker("w3")
    wait_until(lambda: late.logged(f"fetched model {trained.version}"), 60, "w3 to fetch it")


def publish(nats: NatsServer, messages: list[tuple[str, bytes]]) -> None:
    """Device messages straight into the input stream, each acknowledged by it."""

    async def send() -> None:
        nc = await nats_client.connect(nats.url)
        js = nc.jetstream()
        for start in range(0, len(messages), 500):
            chunk = messages[start : start + 500]
            await asyncio.gather(*(js.publish(to_nats(t), p, timeout=30) for t, p in chunk))
        await nc.close()

    asyncio.run(send())


def training(cluster: Cluster) -> dict[str, Any]:
    """The cluster's training job, once it has ended."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        found.update(cluster.get("/model")["training"] or {"state": "running"})
        return found["state"] != "running"

    wait_until(ended, 120, "the training job to end")
    return found


def test_training_reads_the_history_stream_and_its_model_reaches_every_worker(
    cluster: Cluster,
) -> None:
    """The workers send history to TWIN_HISTORY; `POST /model/train` on `twin api` trains on
    it as `twin serve` does on its own, every worker scores the site with the promoted model,
    and an API started later reads the history again and shows the job."""
    machines, steps = 8, 900
    cluster.share_out("w1", "w2")
    with pytest.raises(urllib.error.HTTPError) as refused:
        cluster.post("/model/train", {"site": "plant2"})
    assert refused.value.code == 422  # no history yet
    assert "0 failure events" in json.load(refused.value)["detail"]
    refused.value.close()

    publish(cluster.nats, wear_history(machines=machines, steps=steps, seed=4))
    wait_until(lambda: all_received(cluster, machines, steps), 90, "every reading applied")
    wait_until(
        lambda: all(p["lag"] == 0 for p in cluster.get("/cluster")["partitions"]),
        60,
        "every partition snapshotted and acknowledged",
    )
    streams = cluster.get("/cluster")["layout"]["streams"]
    assert streams["TWIN_HISTORY"]["messages"] > 0

    started = cluster.post("/model/train", {"site": "plant2", "label_horizon": "6h"})
    assert started["scope"] == "site:plant2"
    assert started["state"] == "running"
    result = training(cluster)
    assert result["state"] == "done", result
    assert result["promoted"] is True
    assert result["candidate"]["metrics"]["average_precision"] > 0.3
    version = result["candidate"]["version"]
    models = cluster.get("/model")
    assert models["active"]["site:plant2"]["version"] == version
    assert "vibration_mm_s" in models["active"]["site:plant2"]["features"]

    def scoring_with(version: str) -> bool:
        workers = cluster.get("/cluster")["workers"]
        return all(w["models"].get("site:plant2") == version for w in workers)

    wait_until(lambda: scoring_with(version), 30, "both workers to score plant2 with it")
    wait_until(
        lambda: all(
            (m["risk"] or {}).get("model_version") == version for m in cluster.machines().values()
        ),
        30,
        "every plant2 machine scored by the site model",
    )

    assert cluster.api is not None
    cluster.api.close()
    cluster.start_api()  # stateless: the history and the job come from the cluster
    assert cluster.get("/model")["training"]["candidate"]["version"] == version
    wait_until(
        lambda: _train_accepted(cluster, {"site": "plant2", "label_horizon": "6h"}),
        60,
        "the new twin api to read the history and take the job",
    )
    second = training(cluster)
    assert second["state"] == "done", second
    assert second["active"]["version"] == version  # measured next to the model active now
    assert second["active"]["metrics"]["average_precision"] > 0.3
    stored = {m["version"] for m in cluster.get("/model")["stored"]}
    assert {version, second["candidate"]["version"]} <= stored


def history_rows(nats: NatsServer) -> tuple[set[tuple[str, int]], set[tuple[str, int, str]]]:
    """The distinct (machine, start) buckets and (machine, ts, type) events in TWIN_HISTORY."""

    async def read() -> tuple[set[tuple[str, int]], set[tuple[str, int, str]]]:
        nc = await nats_client.connect(nats.url)
        js, buckets, events = nc.jetstream(), set(), set()
        pending = (await js.stream_info("TWIN_HISTORY")).state.messages
        sub = await js.subscribe("twin.history.>", ordered_consumer=True)
        for _ in range(pending):
            records = json.loads((await sub.next_msg(timeout=10)).data)
            buckets |= {(m, start) for m, start, _ in records["buckets"]}
            events |= {(m, ts, kind) for m, ts, kind, _ in records["events"]}
        await sub.unsubscribe()
        await nc.close()
        return buckets, events

    return asyncio.run(read())


def test_no_snapshot_covers_history_the_history_stream_did_not_store(cluster: Cluster) -> None:
    """With TWIN_HISTORY gone, a worker applies readings but acknowledges none of them (a
    snapshot would cover history that is lost); once `twin cluster init` makes the stream
    again, the history held back is stored, whole, and the partitions are acknowledged."""
    machines, steps = 4, 60
    cluster.share_out("w1")

    async def drop() -> None:
        nc = await nats_client.connect(cluster.nats.url)
        await nc.jetstream().delete_stream("TWIN_HISTORY")
        await nc.close()

    asyncio.run(drop())
    messages = wear_history(machines=machines, steps=steps, seed=2)
    publish(cluster.nats, messages)
    wait_until(lambda: all_received(cluster, machines, steps), 60, "every reading applied")
    worker = cluster.workers["w1"]
    wait_until(lambda: worker.logged("did not store"), 30, "the worker to hold history back")
    time.sleep(2)  # snapshot rounds that must not acknowledge
    assert sum(p["lag"] for p in cluster.get("/cluster")["partitions"]) == len(messages)

    assert "created stream TWIN_HISTORY" in cluster.init()
    wait_until(
        lambda: all(p["lag"] == 0 for p in cluster.get("/cluster")["partitions"]),
        30,
        "every partition acknowledged once the history is stored",
    )
    buckets, events = history_rows(cluster.nats)
    assert len(buckets) == machines * (steps - 1)  # each reading closed the bucket before it
    sent_events = [p for t, p in messages if t.endswith("/event")]
    assert len(events) == len(sent_events)


def _train_accepted(cluster: Cluster, body: dict[str, Any]) -> bool:
    """POST /model/train; False while the API answers 409 (it is still reading the history)."""
    try:
        cluster.post("/model/train", body)
        return True
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 409:
            raise
        return False


def test_allocations_are_kept_in_the_cluster_for_every_api_and_marked_when_machines_go(
    cluster: Cluster,
) -> None:
    """An allocation made on one `twin api` is read on another; the machines it uses going
    offline mark it (once, though both APIs follow the alerts), and a replan moves its work."""
    machines = 12
    cluster.share_out("w1")
    port = free_port()
    other = ClusterProcess(["api", "--port", str(port)], cluster.env(), cluster.tmp / "api2.log")
    other.start()

    def read(path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return json.load(response)

    try:
        wait_until(lambda: _answers(read), 30, "the second twin api to answer")
        devices = fleet(cluster.nats, machines, 1000, rate=2.0)  # stopped below
        wait_until(
            lambda: len([m for m in cluster.machines().values() if m["risk"]]) == machines,
            60,
            "every machine scored",
        )
        tasks = [{"id": f"t{i}", "duration_min": 60} for i in range(machines)]
        body = {"tasks": tasks, "horizon_min": 480, "max_risk": 1.0}
        made = cluster.post("/allocations", body)
        assert len(made["assignments"]) == machines
        assert read(f"/allocations/{made['id']}")["assignments"] == made["assignments"]
        assert cluster.post("/allocations", body)["id"] == made["id"] + 1  # one id sequence
        used = {a["machine"] for a in made["assignments"]}
        devices.stop()  # each device says it goes offline: offline alerts
        wait_until(
            lambda: {x["machine"] for x in read(f"/allocations/{made['id']}")["affected"]} == used,
            60,
            "the allocation marked for every machine it used",
        )
        marked = cluster.get(f"/allocations/{made['id']}")["affected"]
        assert len({x["machine"] for x in marked}) == len(marked)  # each once
        wait_until(
            lambda: not any(m["online"] for m in cluster.machines().values()),
            30,
            "the fleet offline in the API's view",
        )
        replanned = cluster.post(f"/allocations/{made['id']}/replan", {})
        assert replanned["replans"] == 1
        assert replanned["affected"] == []
        assert len(replanned["unassigned"]) == machines  # no machine is online to take them
        with pytest.raises(urllib.error.HTTPError) as missing:
            read("/allocations/999")
        missing.value.close()
        assert missing.value.code == 404
    finally:
        other.close()


def _answers(read: Any) -> bool:
    try:
        read("/machines?limit=1")
        return True
    except OSError:
        return False
