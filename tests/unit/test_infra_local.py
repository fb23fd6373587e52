"""Table-driven tests of the pure helpers in infra.local (no services needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import kafka_server, processes, redis_server
from schemas.settings import TopicSpec


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:19092", ("127.0.0.1", 19092)),
        ("localhost:9092", ("127.0.0.1", 9092)),
        (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
        ("[::1]:19092", ("::1", 19092)),
        ("kafka.example.com:9092", None),
        ("127.0.0.1:19092,127.0.0.1:19094", None),
        ("127.0.0.1", None),
        ("127.0.0.1:port", None),
        ("PLAINTEXT://127.0.0.1:9092", None),
    ],
)
def test_loopback_endpoint(address: str, expected: tuple[str, int] | None) -> None:
    assert kafka_server.loopback_endpoint(address) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:16379/0", ("127.0.0.1", 16379)),
        ("redis://localhost/0", ("127.0.0.1", 6379)),
        ("rediss://127.0.0.1:16379/0", None),
        ("redis://cache.internal:6379/0", None),
        ("unix:///run/redis.sock", None),
    ],
)
def test_redis_loopback_endpoint(url: str, expected: tuple[str, int] | None) -> None:
    assert redis_server.redis_loopback_endpoint(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1234\n", 1234), ("  42 ", 42), ("", None), ("0", None), ("-5", None), ("abc", None), ("12 34", None)],
)
def test_parse_pid(text: str, expected: int | None) -> None:
    assert processes.parse_pid(text) == expected


@pytest.mark.parametrize(
    ("pom", "expected"),
    [
        ("<properties><kafka.version>4.3.1</kafka.version></properties>", "4.3.1"),
        ("<kafka.version>\n  3.9.0\n</kafka.version>", "3.9.0"),
    ],
)
def test_pinned_kafka_version(pom: str, expected: str) -> None:
    assert kafka_server.pinned_kafka_version(pom) == expected


def test_pinned_kafka_version_missing() -> None:
    with pytest.raises(processes.ServiceError):
        kafka_server.pinned_kafka_version("<project/>")


def test_repo_pom_pins_a_kafka_version() -> None:
    assert kafka_server.kafka_version().split(".")[0].isdigit()


def test_render_server_properties_from_repo_template() -> None:
    text = kafka_server.render_server_properties(
        kafka_server.PROPERTIES_TEMPLATE.read_text(), "127.0.0.1", 19092, Path("/state/kafka/data")
    )
    props = dict(
        line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    expected = {
        "process.roles": "broker,controller",
        "listeners": "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:19092",
        "controller.quorum.voters": "1@127.0.0.1:19093",
        "log.dirs": "/state/kafka/data",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    assert {key: props.get(key) for key in expected} == expected
    assert "$" not in text


@pytest.mark.parametrize(
    ("password", "username", "present", "absent"),
    [
        (None, None, ['save ""', "bind 127.0.0.1", "port 16379", "appendonly no"], ["requirepass", "user "]),
        ("s3cret", None, ['requirepass "s3cret"'], ["user "]),
        ('we"ird\\', None, ['requirepass "we\\"ird\\\\"'], []),
        ("pw", "loop", ['requirepass "pw"', 'user loop on ">pw" ~* &* +@all'], []),
        ("pw", "default", ['requirepass "pw"'], ["user "]),
    ],
)
def test_render_redis_conf(
    password: str | None, username: str | None, present: list[str], absent: list[str]
) -> None:
    conf = redis_server.render_redis_conf("127.0.0.1", 16379, Path("/state/redis"), password, username)
    lines = conf.splitlines()
    assert 'dir "/state/redis"' in lines
    for line in present:
        assert line in lines
    for fragment in absent:
        assert not any(line.startswith(fragment) for line in lines)


def test_new_cluster_id_is_valid_and_unique() -> None:
    ids = {kafka_server.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(kafka_server.is_cluster_id(each) and len(each) == 22 for each in ids)


@pytest.mark.parametrize(
    ("text", "valid"),
    [("MkU3OEVBNTcwNTJENDM2Qk", True), ("-kU3OEVBNTcwNTJENDM2Qk", False), ("short", False), ("", False)],
)
def test_is_cluster_id(text: str, valid: bool) -> None:
    assert kafka_server.is_cluster_id(text) is valid


SPECS = [
    TopicSpec(name="a", partitions=4),
    TopicSpec(name="b", partitions=1),
    TopicSpec(name="c", partitions=8),
]


@pytest.mark.parametrize(
    ("existing", "create", "too_few"),
    [
        ({}, ["a", "b", "c"], []),
        ({"a": 4, "b": 1, "c": 8}, [], []),
        ({"a": 2, "b": 3}, ["c"], [("a", 2, 4)]),
        ({"c": 1, "other": 9}, ["a", "b"], [("c", 1, 8)]),
    ],
)
def test_plan_topics(
    existing: dict[str, int], create: list[str], too_few: list[tuple[str, int, int]]
) -> None:
    missing, fewer = kafka_server.plan_topics(SPECS, existing)
    assert [spec.name for spec in missing] == create
    assert fewer == too_few


def test_paths_layout() -> None:
    paths = processes.Paths(Path(".evalloop"))
    assert paths.pid_file("kafka") == Path(".evalloop/run/kafka.pid")
    assert paths.log_file("redis") == Path(".evalloop/logs/redis.log")
    assert paths.kafka_libs == Path(".evalloop/kafka/libs")
    assert paths.ray == Path(".evalloop/ray")


@pytest.mark.parametrize(("lines", "expected"), [(2, "c\nd"), (10, "a\nb\nc\nd")])
def test_tail(tmp_path: Path, lines: int, expected: str) -> None:
    log = tmp_path / "x.log"
    log.write_text("a\nb\nc\nd\n")
    assert processes.tail(log, lines) == expected
    assert processes.tail(tmp_path / "missing.log") == ""


def test_process_helpers_on_this_process() -> None:
    import os

    assert processes.process_alive(os.getpid())
    assert "python" in processes.cmdline(os.getpid())
    assert not processes.process_alive(2**22 + 1)


@pytest.mark.parametrize(
    ("roots", "expected"),
    [
        ([10], {10, 11, 12, 13}),
        ([12], {12, 13}),
        ([20], {20}),
        ([], set()),
    ],
)
def test_with_descendants(roots: list[int], expected: set[int]) -> None:
    parents = {10: 1, 11: 10, 12: 10, 13: 12, 20: 1, 21: 2}
    assert processes.with_descendants(roots, parents) == expected


def test_parent_pids_knows_this_process() -> None:
    import os

    assert processes.parent_pids()[os.getpid()] == os.getppid()


def test_reset_keeps_the_jars_and_removes_data_logs_and_state(tmp_path: Path) -> None:
    from infra.local import reset
    from infra.processes import Paths

    paths = Paths(tmp_path / "state")
    for kept in (paths.kafka_libs / "kafka_2.13-4.3.1.jar", paths.run / "infra-local.lock"):
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text("x")
    gone = [
        paths.kafka_data / "meta.properties",
        paths.kafka_cluster_id,
        paths.redis / "redis.conf",
        paths.logs / "kafka.log",
        paths.state / "reliability" / "x.json",
    ]
    for path in gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    messages = reset(paths)
    assert (paths.kafka_libs / "kafka_2.13-4.3.1.jar").is_file() and (
        paths.run / "infra-local.lock"
    ).is_file()
    assert not any(path.exists() for path in gone)
    assert not paths.kafka_data.exists() and not paths.logs.exists()
    assert "kept the jars" in messages[-1]


def test_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    import socket

    from infra.processes import LISTEN_PORTS, free_port

    port = free_port()
    assert LISTEN_PORTS[0] <= port < LISTEN_PORTS[1] < 32768
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
