"""``python -m sweeper {status,report,promote,dashboard,storage-proxy} [options] [overrides...]``

The overrides are the sweep's own (``sweep=demo``, ``hydra.sweeper.storage=...``,
``hydra.sweep.dir=...``): they name the study exactly as the sweep did.
User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from train.errors import UserError

COMMANDS = {
    "status": "a table of the study's trials: state, value, params, fail/prune reason",
    "report": "write a static HTML report (leaderboard, grids, Optuna's plots), readable offline",
    "promote": "copy the best trial's best checkpoint into the registry, with a manifest, and tag it in W&B",
    "dashboard": "serve optuna-dashboard on the study storage, on localhost",
    "storage-proxy": "serve the study's database to workers through Optuna's gRPC storage proxy",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sweeper", description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, text in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("overrides", nargs="*", help="the sweep's overrides, e.g. sweep=demo")
        if name != "storage-proxy":  # the proxy serves a database server named by hydra.sweeper.storage
            sub.add_argument("--sweep-dir", help="the sweep dir (default: the newest one holding the study)")
        if name == "report":
            sub.add_argument("--out", help="output file (default: <sweep dir>/report.html)")
            sub.add_argument("--top", type=int, default=4, help="trials in the side-by-side grid (default 4)")
        if name == "promote":
            sub.add_argument("--trial", type=int, help="promote this trial instead of the rule's choice")
        if name == "dashboard":
            sub.add_argument("--port", type=int, default=8080)
            sub.add_argument("--host", default="127.0.0.1")
        if name == "storage-proxy":
            sub.add_argument("--port", type=int, default=13000, help="Optuna's default, 13000")
            sub.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other hosts (default: this one)")
    return parser.parse_args(argv)


def _promote(ref, args) -> None:
    from sweeper.results.promote import promote

    result = promote(ref, args.trial)
    manifest = result.manifest
    if not result.changed:
        print(f"trial {manifest['trial']} is already promoted as v{manifest['version']:03d}: nothing changed")
    else:
        print(f"promoted trial {manifest['trial']} (step {manifest['step']}) as v{manifest['version']:03d}: {result.path}")
        print(f"  chosen by: {manifest['chosen_by']}")
        if result.replaced:
            old = result.replaced
            print(f"  replaces v{old['version']:03d} (trial {old['trial']}), kept in {result.path.parent / 'versions'}")
        if "wandb" in manifest:
            print(f"  W&B artifact {manifest['wandb']['artifact']} ({manifest['wandb']['mode']})")
    print(f"  sha256 {manifest['sha256']}")


def _dashboard(ref, args) -> None:
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on http://{args.host}:{args.port} for {ref.where} (Ctrl-C stops it)")
    run_server(ref.storage, host=args.host, port=args.port)


def _storage_proxy(args) -> None:
    from sweeper.results.locate import compose_sweep, sweeper_settings
    from sweeper.store.proxy import serve_storage_proxy
    from train.errors import ConfigError

    url = sweeper_settings(compose_sweep(args.overrides)).storage
    if url is None:
        raise ConfigError(
            "hydra.sweeper.storage: name the database the proxy serves, as the controllers do "
            "(e.g. hydra.sweeper.storage=postgresql://user:pass@db:5432/optuna)"
        )
    serve_storage_proxy(str(url), args.host, args.port)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    from sweeper.results.locate import locate_study

    try:
        if args.command == "storage-proxy":
            _storage_proxy(args)
            return 0
        ref = locate_study(args.overrides, args.sweep_dir)
        if ref.sweep_dir is not None:
            print(f"sweep dir: {ref.sweep_dir}", file=sys.stderr)
        if args.command == "status":
            from sweeper.results.status import print_status

            print_status(ref.study, ref.where)
        elif args.command == "report":
            from sweeper.report.report import render_report

            print(f"report: {render_report(ref, args.out, args.top)}")
        elif args.command == "promote":
            _promote(ref, args)
        else:
            _dashboard(ref, args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
