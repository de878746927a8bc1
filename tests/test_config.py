import dataclasses

import pytest

from raftlite.actors.config import Config, ConfigError


def test_defaults_are_valid():
    assert Config().validate() == Config()


@pytest.mark.parametrize(
    "changes, complaint",
    [
        ({"election_timeout_ms": 0}, "election_timeout_ms must be positive"),
        ({"heartbeat_interval_ms": 600, "election_timeout_ms": 1000}, "at most half"),
        ({"message_bytes_max": 1024}, "append_batch_bytes_max must not exceed"),
        ({"inflight_bytes_max": 1024}, "inflight_bytes_max must hold"),
        ({"inflight_appends_max": "8"}, "must be a number"),
        ({"outbound_queue_messages_max": True}, "must be a number"),
    ],
)
def test_bad_values_are_named(changes, complaint):
    with pytest.raises(ConfigError, match=complaint):
        Config(**changes).validate()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().election_timeout_ms = 5
