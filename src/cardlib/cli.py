"""`cardlib run | store | verify | gallery | recognize | hailo` — thin wrappers over the library."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cardlib.params import ParamsError, load_params
from cardlib.recognize_cli import add_commands


def _params(args) -> "object":
    return load_params(args.params, args.set)


_PAPERMILL_CHATTER = ("Executing Cell", "Ending Cell", "Working directory", "Input Notebook", "Output Notebook",
                      "Executing notebook", "Executing:")


def cmd_run(args) -> int:
    from cardlib.pipeline import RunSetupError, StageFailed, run_pipeline

    # the notebooks' own output (tqdm bars of epochs and steps, prints) reaches the terminal through papermill's logger
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    papermill_log = logging.getLogger("papermill")
    papermill_log.setLevel(logging.INFO)
    papermill_log.addFilter(lambda r: not str(r.msg).startswith(_PAPERMILL_CHATTER))

    if args.resume and not args.params:
        params = load_params(Path(args.runs_dir) / args.resume / "params.yaml", args.set)
    else:
        params = load_params(args.params or "params/default.yaml", args.set)
    try:
        result = run_pipeline(params, notebooks_dir=args.notebooks, runs_dir=args.runs_dir,
                              reports_dir=args.reports_dir, resume=args.resume, from_=args.from_,
                              only=args.only, kernel=args.kernel)
    except StageFailed as e:
        print(f"cardlib run: {e}", file=sys.stderr)
        return 1
    except RunSetupError as e:
        print(f"cardlib run: {e}", file=sys.stderr)
        return 2
    local = Path(args.reports_dir).resolve() / result.run_id / "index.html"
    print(f"run {result.run_id} completed\n  report index: {local}\n  published:    {result.index}")
    return 0


def cmd_store(args) -> int:
    from cardlib.store import Layout, open_store

    params = _params(args)
    s = params.store
    store = open_store(args.store or s.uri, args.region or s.region, multipart_threshold_mb=s.multipart_threshold_mb,
                       multipart_chunksize_mb=s.multipart_chunksize_mb, max_concurrency=s.max_concurrency)
    if args.action == "init":
        created = store.init(Layout.from_params(params))
        print(f"{store.uri}: {len(created)} folder(s) created" + "".join(f"\n  {c}/" for c in created))
    elif args.action == "ls":
        for key in store.list(args.key or ""):
            print(key)
    elif args.action == "put":
        info = store.put(args.path, args.key)
        print(f"{info.uri}  {info.size} B  sha256 {info.sha256}")
    elif args.action == "get":
        print(store.get(args.key, args.path))
    return 0


def cmd_verify(args) -> int:
    from cardlib.registry.verify import verify_main

    return verify_main(args.store, _params(args))


def add_params_args(p: argparse.ArgumentParser, default: str | None = "params/default.yaml") -> None:
    p.add_argument("-p", "--params", default=default, help="params YAML (may `extends:` another)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. teacher.epochs=2")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cardlib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the numbered notebooks with papermill and publish reports")
    add_params_args(r, default=None)
    r.add_argument("--from", dest="from_", metavar="NN", help="start at notebook NN")
    r.add_argument("--only", action="append", metavar="NN", help="run only notebook NN (repeatable)")
    r.add_argument("--resume", metavar="RUN_ID", help="continue a run from its first incomplete stage")
    r.add_argument("--notebooks", default="notebooks")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--reports-dir", default="reports")
    r.add_argument("--kernel", default="cardlib")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("store", help="the project store: init, ls, put, get")
    s.add_argument("action", choices=["init", "ls", "put", "get"])
    s.add_argument("key", nargs="?", help="store key (put/get) or prefix (ls)")
    s.add_argument("path", nargs="?", help="local path (put/get)")
    s.add_argument("--store", help="store URI (default: store.uri from params)")
    s.add_argument("--region")
    add_params_args(s)
    s.set_defaults(func=cmd_store)

    v = sub.add_parser("verify", help="prove every manifest claim has a byte-identical object")
    v.add_argument("--store", help="store URI (default: store.uri from params)")
    add_params_args(v)
    v.set_defaults(func=cmd_verify)

    add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "store" and args.action in ("put", "get") and not (args.key and args.path):
        print("cardlib store put|get needs KEY and PATH", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ParamsError as e:
        print(f"cardlib: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
