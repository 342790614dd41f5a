"""run's webhook options: ask for a dynamic webhook per job, and where to receive it."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from .._errors import UsageError

if TYPE_CHECKING:  # the receiver loads Starlette and PyJWT: only a run with webhooks needs them
    from .._webhooks import WebhookSettings

#: Where the built-in emulator publishes its webhook keys (emulator/_app.JWKS_PATH).
EMULATOR_JWKS_PATH = "/.well-known/jwks.json"

#: A static (project) webhook's signing secret: from the environment only, so it never
#: shows in a process listing or a shell history.
SECRET_ENV = "GEMBATCH_WEBHOOK_SECRET"
JWKS_ENV = "GEMBATCH_WEBHOOK_JWKS_URL"
#: Between polls without webhooks, and as the fallback with them (a webhook wakes the
#: watcher sooner; a lost one is caught by this poll).
POLL_SECONDS = 30.0
FALLBACK_POLL_SECONDS = 300.0
DEFAULT_LISTEN = "127.0.0.1:8788"


def add_webhook_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--webhook-url",
        default=None,
        metavar="URL",
        help="ask the service to post each job's end to URL (a public URL that reaches "
        "--webhook-listen); polling falls back to every 300 s unless --interval says",
    )
    run.add_argument(
        "--webhook-listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="where run receives webhooks (default: %(default)s)",
    )
    run.add_argument(
        "--webhook-jwks-url",
        default=os.environ.get(JWKS_ENV) or None,
        metavar="URL",
        help=f"the key set that signs dynamic webhooks (default: ${JWKS_ENV}, the "
        "emulator's with --emulator, else Google's)",
    )


def poll_interval(args: argparse.Namespace) -> float:
    """--interval, else the default for the mode (long when webhooks wake the watcher)."""
    if args.interval is not None:
        return float(args.interval)
    return FALLBACK_POLL_SECONDS if args.webhook_url else POLL_SECONDS


def webhook_settings(args: argparse.Namespace, base_url: str | None) -> WebhookSettings | None:
    """The receiver's settings; ``base_url`` is the emulator's when --emulator serves
    (its deliveries are signed by its own key set)."""
    if not args.webhook_url:
        return None
    from .._webhooks import DEFAULT_JWKS_URL, WebhookSettings

    host, sep, port = str(args.webhook_listen).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--webhook-listen wants HOST:PORT, got {args.webhook_listen!r}")
    return WebhookSettings(
        url=args.webhook_url,
        listen_host=host.strip("[]"),
        listen_port=int(port),
        jwks_url=args.webhook_jwks_url or _default_jwks(args, base_url) or DEFAULT_JWKS_URL,
        secret=os.environ.get(SECRET_ENV) or None,
    )


def _default_jwks(args: argparse.Namespace, base_url: str | None) -> str | None:
    """The emulator's key set when --emulator serves; None: Google's."""
    if args.emulator and base_url:
        return f"{base_url.rstrip('/')}{EMULATOR_JWKS_PATH}"
    return None
