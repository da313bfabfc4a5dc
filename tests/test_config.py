from __future__ import annotations

from pathlib import Path

import pytest

from xmodal.config import load_settings
from xmodal.errors import ConfigError


def test_defaults_are_the_embedded_system() -> None:
    s = load_settings({})
    assert s.embedded_broker and s.embedded_index
    assert s.spaces == ("mini",)
    assert s.data_dir == Path(".xmodal")
    assert (s.media_topic, s.dlq_topic) == ("xmodal.media", "xmodal.media.dlq")
    assert (s.requests_topic, s.replies_topic) == ("xmodal.search.requests", "xmodal.search.replies")


def test_variables_are_read_and_parsed() -> None:
    s = load_settings(
        {
            "XMODAL_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "XMODAL_TOPIC_PREFIX": "acme",
            "XMODAL_SPACES": "clip, clap",
            "XMODAL_MEDIA_ROOTS": "/srv/media:/data/in",
            "XMODAL_ALLOW_HTTP": "true",
            "XMODAL_BATCH_SIZE": "128",
            "XMODAL_QDRANT_API_KEY": "s3cret",
        }
    )
    assert s.kafka_bootstrap == "k1:9092,k2:9092" and not s.embedded_broker
    assert s.media_topic == "acme.media"
    assert s.spaces == ("clip", "clap")
    assert s.media_roots == (Path("/srv/media"), Path("/data/in"))
    assert s.allow_http is True and s.batch_size == 128
    assert "s3cret" not in repr(s)  # secrets never reach logs


def test_kafka_client_settings_pass_through() -> None:
    s = load_settings({"XMODAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "XMODAL_KAFKA_SASL_MECHANISM": "PLAIN"})
    assert s.kafka_extra == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}


def test_settings_are_frozen() -> None:
    s = load_settings({})
    with pytest.raises(Exception):
        s.batch_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"XMODAL_BATCH_SIZE": "many"}, "XMODAL_BATCH_SIZE=many"),
        ({"XMODAL_BATCH_SIZE": "0"}, "XMODAL_BATCH_SIZE=0"),
        ({"XMODAL_ALLOW_HTTP": "perhaps"}, "XMODAL_ALLOW_HTTP=perhaps"),
        ({"XMODAL_TOPIC_PREFIX": "has space"}, "XMODAL_TOPIC_PREFIX"),
        ({"XMODAL_SPACES": " , "}, "XMODAL_SPACES"),
        ({"XMODAL_DEVICE": "tpu"}, "XMODAL_DEVICE=tpu"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert named in str(caught.value)


def test_a_misspelt_variable_is_an_error_that_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"XMODAL_SPACE": "clip"})
    assert "XMODAL_SPACE" in str(caught.value) and "XMODAL_SPACES" in str(caught.value)


def test_unknown_space_lists_valid_spaces() -> None:
    from xmodal.encoders.registry import build_spaces

    with pytest.raises(ConfigError) as caught:
        build_spaces(load_settings({"XMODAL_SPACES": "mini,imagebind"}))
    assert caught.value.code == "unknown_space"
    assert "clap, clip, mini" in str(caught.value)
