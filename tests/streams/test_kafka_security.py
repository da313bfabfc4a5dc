"""The XMODAL_KAFKA_* pass-through reaches both Kafka clients: librdkafka as is, Faust mapped."""

from __future__ import annotations

import ssl

import faust
import pytest

from xmodal.config import load_settings
from xmodal.errors import ConfigError
from xmodal.streams.app import faust_credentials
from xmodal.streams.kafka import producer_config


def test_plaintext_needs_no_credentials() -> None:
    assert faust_credentials(load_settings({})) == {}


def test_sasl_ssl_with_scram_maps_onto_faust() -> None:
    settings = load_settings(
        {
            "XMODAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "XMODAL_KAFKA_SASL_MECHANISMS": "SCRAM-SHA-512",
            "XMODAL_KAFKA_SASL_USERNAME": "indexer",
            "XMODAL_KAFKA_SASL_PASSWORD": "hunter2",
        }
    )
    credentials = faust_credentials(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("indexer", "hunter2")
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    config = producer_config(settings, "k:9093")
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512" and config["security.protocol"] == "SASL_SSL"
    assert "hunter2" not in repr(settings)


def test_tls_only() -> None:
    credentials = faust_credentials(load_settings({"XMODAL_KAFKA_SECURITY_PROTOCOL": "SSL"}))["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"XMODAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "XMODAL_KAFKA_SASL_MECHANISMS": "GSSAPI"}, "GSSAPI"),
        ({"XMODAL_KAFKA_SECURITY_PROTOCOL": "TLS"}, "TLS"),
    ],
)
def test_what_the_agents_cannot_do_fails_at_start_up(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        faust_credentials(load_settings(env))
    assert named in str(caught.value)


def test_kafka_extra_is_not_a_variable() -> None:
    with pytest.raises(ConfigError, match="XMODAL_KAFKA_EXTRA"):
        load_settings({"XMODAL_KAFKA_EXTRA": "x"})
