import pytest

from twin.topics import BadTopic, Topics


def test_topics_are_built_under_the_root() -> None:
    topics = Topics("plant")
    assert topics.telemetry("s1", "m1") == "plant/s1/m1/telemetry"
    assert topics.status("s1", "m1") == "plant/s1/m1/status"
    assert topics.event("s1", "m1") == "plant/s1/m1/event"
    assert topics.alert("s1", "m1") == "plant/s1/m1/alert"
    assert topics.twin("s1", "m1") == "plant/s1/m1/twin"
    assert topics.twin_status == "plant/$twin/status"


def test_subscriptions_cover_inbound_kinds_only() -> None:
    subs = Topics().subscriptions()
    assert subs == ["factory/+/+/telemetry", "factory/+/+/status", "factory/+/+/event"]


def test_parse_returns_site_machine_and_kind() -> None:
    address = Topics().parse("factory/site-A/press_1.2/telemetry")
    assert (address.site, address.machine, address.kind) == ("site-A", "press_1.2", "telemetry")


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("factory/s1/m1", "expected factory/{site}/{machine}/{kind}"),
        ("other/s1/m1/telemetry", "expected factory/"),
        ("factory/s1/m1/twin", "unknown message kind"),
        ("factory/s 1/m1/telemetry", "site"),
        ("factory/s1/" + "m" * 65 + "/telemetry", "machine"),
        ("factory/s1/mäschine/telemetry", "machine"),
        ("factory/s1/m1/telemetry/extra", "expected"),
    ],
)
def test_parse_rejects_topics_outside_the_contract(topic: str, message: str) -> None:
    with pytest.raises(BadTopic, match=message):
        Topics().parse(topic)
