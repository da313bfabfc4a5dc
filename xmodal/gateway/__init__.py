"""HTTP gateway and web page: a client of the Kafka query path (docs/http.md)."""

from xmodal.gateway.app import Gateway, create_app
from xmodal.gateway.server import GatewayServer

__all__ = ["Gateway", "GatewayServer", "create_app"]
