"""metaclaw-mcp: an MCP server that lets any agent learn from its own work."""
__version__ = "0.1.0"

from .config import MetaClawConfig, load_config  # noqa: E402
from .errors import ConfigError, Conflict, InvalidInput, MetaClawError, NotFound  # noqa: E402

__all__ = ["__version__", "MetaClawConfig", "load_config", "MetaClawError", "ConfigError", "InvalidInput",
           "NotFound", "Conflict", "App", "open_app", "build_server"]


def __getattr__(name: str):  # the app and server pull in the MCP SDK: import them on first use
    if name in ("App", "open_app"):
        from . import app
        return getattr(app, name)
    if name == "build_server":
        from .server import build_server
        return build_server
    raise AttributeError(name)
