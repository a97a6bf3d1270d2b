"""The topic tree under the base topic, and which base topics are refused."""

from __future__ import annotations

import pytest

from kwsd.errors import ConfigError
from kwsd.mqtt import Topics


def test_topics_and_base_topic_validation() -> None:
    topics = Topics.for_base("kwsd/kitchen")
    assert topics.detection == "kwsd/kitchen/detection"
    assert topics.command_verb("kwsd/kitchen/cmd/keywords/set") == "keywords/set"
    assert topics.command_verb("kwsd/other/cmd/pause") is None
    assert not topics.is_command_topic(topics.command_result)
    for bad in ("", "kwsd/#", "/kwsd", "kwsd//x", "$SYS/kwsd", "kw\0sd"):
        with pytest.raises(ConfigError, match=r"mqtt\.base_topic"):
            Topics.for_base(bad)
