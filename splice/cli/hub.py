"""``splice hub push | pull | list | rm``: the local adapter registry (:class:`splice.hub.Hub`).

``--root`` picks the registry's folder (else ``$SPLICE_HUB``, else
``~/.cache/splice/hub``); it may come before or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..hub import DEFAULT_ROOT, ENV_VAR, Hub
from .common import Steps, adapter_path, add_command, describe_base, human_size, shared_options, table


def register(commands: argparse._SubParsersAction) -> None:
    # --root (like the shared options) is accepted on the group and on each subcommand; SUPPRESS keeps a
    # subcommand's default from hiding a value given to the group.
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument("--root", default=argparse.SUPPRESS,
                      help=f"registry folder (default: ${ENV_VAR}, else {DEFAULT_ROOT})")
    common = [shared_options(top=False), root]
    group = add_command(commands, "hub", help="push, pull, list and remove adapters in the local registry",
                        description="The local adapter registry: splice adapter folders stored as name@version, "
                                    "content-addressed, every file's sha256 checked on every read.",
                        parents=[root])
    actions = group.add_subparsers(title="subcommands", dest="action", metavar="ACTION", required=True)

    push = actions.add_parser("push", parents=common, help="store a splice adapter folder as NAME@VERSION")
    push.add_argument("folder", metavar="FOLDER",
                      help="a splice adapter folder (model.save wrote it) or a splice train run folder")
    push.add_argument("name", metavar="NAME", help="the adapter's name in the registry")
    push.add_argument("--version", help="a label such as 1.0 (default: the first 12 hex digits of the content hash)")
    push.set_defaults(run=run_push)

    pull = actions.add_parser("pull", parents=common, help="copy NAME@VERSION to a folder, verifying every byte")
    pull.add_argument("ref", metavar="REF", help="name@version")
    pull.add_argument("dest", metavar="DEST", help="folder to write (new, empty, or an earlier adapter save)")
    pull.set_defaults(run=run_pull)

    listing = actions.add_parser("list", parents=common, help="list the stored adapters")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(run=run_list)

    rm = actions.add_parser("rm", parents=common, help="remove NAME@VERSION from the registry")
    rm.add_argument("ref", metavar="REF", help="name@version")
    rm.set_defaults(run=run_rm)


def _hub(args: argparse.Namespace) -> Hub:
    return Hub(getattr(args, "root", None))


def run_push(args: argparse.Namespace) -> int:
    hub = _hub(args)
    with Steps(args.quiet)(f"pushing {args.folder} to {hub.root}"):
        ref = hub.push(adapter_path(args.folder), args.name, args.version)
    print(ref)
    return 0


def run_pull(args: argparse.Namespace) -> int:
    hub = _hub(args)
    with Steps(args.quiet)(f"pulling {args.ref} from {hub.root}"):
        dest = hub.pull(args.ref, args.dest)
    print(dest)
    return 0


def run_list(args: argparse.Namespace) -> int:
    hub = _hub(args)
    entries = hub.list()
    if args.json:
        print(json.dumps([{"ref": entry.ref, **asdict(entry)} for entry in entries], indent=2))
    elif not entries:
        print(f"(the hub at {hub.root} is empty: splice hub push FOLDER NAME)")
    else:
        rows = [(e.name, e.version, e.method or "?", describe_base(e.base), human_size(e.size), e.created)
                for e in entries]
        print(table(("name", "version", "method", "base", "size", "created"), rows, right=(4,)))
    return 0


def run_rm(args: argparse.Namespace) -> int:
    hub = _hub(args)
    hub.rm(args.ref)
    if not args.quiet:
        print(f"removed {args.ref} from {hub.root}")
    return 0
