"""`evalloop dashboard`: the page on loopback over the stores `status` reads (docs/dashboard.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("evalloop.dashboard")
DEFAULT_GATE1 = Path("data/trec2011crowd/raters.jsonl")


def register(subparsers: Any) -> None:
    """Add the `dashboard` subcommand."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the dashboard: quality over time, alerts, judgments, teacher health, Gate 1",
        description="Serves one page on loopback (no CDN, no script). Links in alerts point here "
        "when EVALLOOP_DASHBOARD_URL is its address.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=port_number, default=8050, help="port (0: a free one; default 8050)")
    parser.add_argument(
        "--policy", type=Path, default=None, help="policy YAML (default: settings.policy_file)"
    )
    parser.add_argument(
        "--window", default="1h", help="window of each chart point, e.g. 30m, 1h, 3h (default 1h)"
    )
    parser.add_argument(
        "--gate1",
        type=Path,
        default=DEFAULT_GATE1,
        help=f"ratings JSONL for the Gate 1 section (default {DEFAULT_GATE1})",
    )
    parser.add_argument(
        "--golden", type=Path, default=None, help="golden JSONL the review page edits (default: the policy's)"
    )
    parser.add_argument(
        "--review-file",
        type=Path,
        default=None,
        help="the Gate 2 disagreements `evalloop gate2` wrote (default .evalloop/gate2-review.json)",
    )
    parser.add_argument(
        "--author", default=None, help="name recorded in the audit line of review edits (default $USER)"
    )
    parser.add_argument(
        "--allow-review-edits",
        action="store_true",
        help="let /review write golden versions when listening beyond loopback (there is no login: "
        "put your own access control in front)",
    )
    parser.set_defaults(func=run)


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (argparse reports anything else as a usage error)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def gate1_json(path: Path) -> dict[str, Any]:
    """Gate 1 on a ratings file, as `evalloop gate1 --json` prints it."""
    from judges.agreement import gate1_report
    from judges.gate1_io import load_ratings

    return gate1_report(load_ratings(path)).to_json_dict()


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def review_desk(args: argparse.Namespace, policy: Any, gate1: Any) -> Any:
    """The review page's desk over the golden file (its path as given, else the policy's)."""
    import getpass

    from evalloop.review import DEFAULT_REVIEW_FILE, ReviewDesk
    from schemas.settings import resolve_path

    golden = args.golden or resolve_path(policy.golden.file)
    author = args.author or getpass.getuser() or "policy author"
    writable = args.host in LOOPBACK or args.allow_review_edits
    return ReviewDesk(policy, golden, args.review_file or DEFAULT_REVIEW_FILE, author, gate1, writable)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from evalloop.dashboard.server import Dashboard, serve
    from evalloop.dashboard.sources import Sources
    from schemas.policy import PolicyError, load_policy, parse_duration
    from schemas.settings import load_settings
    from streams.config import StreamSettings
    from streams.services import ServiceUnavailable, require_redis
    from streams.status import redis_from_settings

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        policy = load_policy(args.policy or settings.policy_file)
        window_s = parse_duration(args.window)
        client = redis_from_settings(settings)
        require_redis(settings, client)
    except (PolicyError, ValueError, OSError, ServiceUnavailable) as error:
        print(f"evalloop dashboard: error: {error}", file=sys.stderr)
        return 2
    sources = Sources(settings, policy, client, StreamSettings().bucket_seconds).start()
    sources.gate1_file = args.gate1 if args.gate1 and args.gate1.exists() else None
    gate1 = lambda: sources.gate1(gate1_json)  # noqa: E731  # shared by both pages
    desk = review_desk(args, policy, gate1)
    dashboard = Dashboard(sources, window_s, gate1, desk)
    try:
        server = serve(dashboard, args.host, args.port)
    except OSError as error:
        print(
            f"evalloop dashboard: error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr
        )
        sources.stop()
        return 2
    print(f"evalloop dashboard: http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sources.stop()
    return 0
