"""`metaclaw-mcp dashboard`: the dashboard alone on loopback, for stdio users (`serve.serve_dashboard`).

The main command line registers it with `cli.command("dashboard")(dashboard)`; it reads the main
command's `--config` and `--home` from the root context.
"""
from __future__ import annotations

import logging
import sys

import typer

from .serve import DEFAULT_PORT


def dashboard(ctx: typer.Context,
              port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="Port on loopback."),
              host: str = typer.Option("127.0.0.1", "--host", help="A loopback address (127.0.0.1, ::1, localhost).")
              ) -> None:
    """Serve the dashboard on loopback over the configured database, until Ctrl-C: turns, rewards,
    skills with their credit, evolution runs and training, with the actions of `skills` and `train`.

    Example: metaclaw-mcp dashboard --port 8766   (then open http://127.0.0.1:8766/dashboard)"""
    from ..config import load_config
    from ..errors import MetaClawError
    from .serve import serve_dashboard

    root = ctx.find_root().params
    try:
        config = load_config(root.get("config"), home=root.get("home"))
        logging.basicConfig(level=config.log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        serve_dashboard(config, host, port)
    except MetaClawError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass
