"""`logbus review list|show|approve|reject`: how a person decides an agent's submitted pipeline.

Like `logbus pipelines`, it works on the data directory directly, whether or not a server runs:
approving deploys the reviewed text as the pipeline's next version through the registry, and a
running server starts it within its poll interval. The agent sees the decision and the comment
in `get_pipeline`.

Who decides: a person at this machine (who can read the data directory anyway) acts as a
reviewer of the tenant given by `--tenant`, named by `--reviewer` or their user name. With
`--token`, the token decides instead: its tenant, and its role must be reviewer or admin; an
author's token is refused, so an agent holding one cannot approve its own change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # handlers import it when they run: building the parser stays cheap (`logbus --help`)
    from server.reviews import Reviews

EXAMPLES = """\
  logbus review list
  logbus review show rev_1a2b3c4d5e6f
  logbus review approve rev_1a2b3c4d5e6f --comment "thresholds look right"
  logbus review reject rev_1a2b3c4d5e6f --comment "also match 'Invalid user' lines"
  logbus review approve rev_1a2b3c4d5e6f --token "$REVIEWER_TOKEN" --json
"""


@dataclass(frozen=True)
class Reviewer:
    tenant: str
    role: str
    name: str


def add_review_commands(sub: Any) -> None:
    """Register `review` and its actions on the top-level subparsers."""
    review = _sub(sub, "review", "list, show, approve or reject agents' pipeline review requests",
                  "An agent's submit_pipeline opens a review request holding the exact tested spec. A "
                  "reviewer approves it (deployed as the pipeline's next version; a running server starts it "
                  "within a second) or rejects it with a comment. The agent sees the decision and comment in "
                  "get_pipeline. Acts as a reviewer of --tenant (default: default), or as --token says.")
    actions = review.add_subparsers(title="actions", metavar="ACTION")
    r_list = _sub(actions, "list", "list review requests (newest first)",
                  "List review requests with pipeline, status, author and summary.")
    r_list.add_argument("--status", choices=("pending_review", "approved", "rejected"), default=None,
                        help="only this status (default: all)")
    r_list.add_argument("--pipeline", default=None, help="only this pipeline")
    r_list.set_defaults(handler=_cmd_list)
    r_show = _sub(actions, "show", "show one request: summary, tested run, the exact spec, comments",
                  "Show a review request: the author's summary, the passing test run it was submitted with "
                  "(events, outputs, signals per step), the exact spec text that approval deploys, and the "
                  "decision and comments so far.")
    r_show.add_argument("review_id", metavar="REVIEW_ID")
    r_show.set_defaults(handler=_cmd_show)
    r_approve = _sub(actions, "approve", "approve and deploy a request",
                     "Approve the request: its exact spec text is deployed as the pipeline's next version.")
    r_approve.add_argument("review_id", metavar="REVIEW_ID")
    r_approve.add_argument("--comment", default="", help="a note for the author (optional)")
    r_approve.set_defaults(handler=_cmd_decide, decision="approve")
    r_reject = _sub(actions, "reject", "reject a request with a comment",
                    "Reject the request; the comment tells the author what to change (required).")
    r_reject.add_argument("review_id", metavar="REVIEW_ID")
    r_reject.add_argument("--comment", required=True, help="what the author should change")
    r_reject.set_defaults(handler=_cmd_decide, decision="reject")
    for parser in (r_list, r_show, r_approve, r_reject):
        parser.add_argument("--tenant", default=None, help="tenant (default: default, or the token's)")
        parser.add_argument("--reviewer", default=None, metavar="NAME",
                            help="who decides, for the audit log (default: your user name)")
        parser.add_argument("--token", default=None, help="act as this bearer token (role reviewer or admin)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--data", metavar="DIR", default=None,
                            help="data directory (default: $LOGBUS_DATA, else ./logbus-data)")

    def usage(args: argparse.Namespace) -> int:
        review.print_help(sys.stderr)
        return 2

    review.set_defaults(handler=usage)


def _sub(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description,
                                                     epilog="examples:\n" + EXAMPLES,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _reviewer(args: argparse.Namespace) -> Reviewer:
    """Who acts: the token's tenant and role, or the local operator as a reviewer of --tenant."""
    from server.operator import local_actor
    from server.reviews import REVIEWER_ROLES, ReviewError
    from server.tokens import TokenStore

    name = args.reviewer or local_actor()
    if args.token is None:
        return Reviewer(args.tenant or "default", "reviewer", name)
    store = TokenStore(_data(args))
    try:
        principal = store.verify(args.token.strip())
    finally:
        store.close()
    if principal is None:
        raise ReviewError("forbidden", "unknown or revoked token")
    if args.tenant is not None and args.tenant != principal.tenant:
        raise ReviewError("forbidden", f"the token is for tenant {principal.tenant!r}, not {args.tenant!r}")
    if principal.role not in REVIEWER_ROLES:
        raise ReviewError("forbidden", "reviewing needs a token of role reviewer (or admin); this one "
                          f"has role {principal.role!r}. Agents cannot approve their own changes")
    return Reviewer(principal.tenant, principal.role, args.reviewer or f"token-{principal.token_id}")


def _data(args: argparse.Namespace) -> Any:
    from server.serve import data_dir_from

    return data_dir_from(args.data)


def _reviews(args: argparse.Namespace) -> Reviews:
    from server.reviews import Reviews
    from stream.registry import PipelineRegistry

    return Reviews(_data(args), PipelineRegistry(_data(args)))


def _cmd_list(args: argparse.Namespace) -> int:
    return _run(args, "list", lambda who, reviews: reviews.list(who.tenant, status=args.status,
                                                                pipeline=args.pipeline))


def _cmd_show(args: argparse.Namespace) -> int:
    def show(who: Reviewer, reviews: Reviews) -> dict[str, Any]:
        from server.lifecycle import RunStore

        review = reviews.show(who.tenant, args.review_id)
        with contextlib.closing(RunStore(_data(args))) as runs:
            review["run"] = runs.get(who.tenant, review["run_id"])
        return review

    return _run(args, "show", show)


def _cmd_decide(args: argparse.Namespace) -> int:
    def decide(who: Reviewer, reviews: Reviews) -> dict[str, Any]:
        if args.decision == "approve":
            return reviews.approve(who.tenant, args.review_id, reviewer=who.name, role=who.role,
                                   comment=args.comment)
        return reviews.reject(who.tenant, args.review_id, reviewer=who.name, role=who.role,
                              comment=args.comment)

    return _run(args, args.decision, decide)


def _run(args: argparse.Namespace, action: str, call: Any) -> int:
    from server.reviews import ReviewError
    from stream.registry import RegistryError

    try:
        who = _reviewer(args)
        reviews = _reviews(args)
        try:
            result = call(who, reviews)
        finally:
            reviews.close()
    except (ReviewError, RegistryError) as exc:
        code = getattr(exc, "code", "invalid")
        if args.json:
            print(json.dumps({"ok": False, "error": code, "message": str(exc)}))
        print(f"logbus review {action}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, default=str))
    elif action == "list":
        _print_list(result)
    elif action == "show":
        _print_review(result)
    else:
        deployed = f", deployed as version {result['version']}" if result["version"] is not None else ""
        print(f"{result['review_id']}: {result['status']} by {result['reviewer']} "
              f"({result['pipeline']}{deployed})")
    return 0


def _print_list(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no review requests")
        return
    cells = [["REVIEW", "PIPELINE", "STATUS", "AUTHOR", "CREATED", "SUMMARY"]]
    cells += [[r["review_id"], r["pipeline"], r["status"], r["author"], _when(r["created_at"]),
               " ".join(str(r["summary"]).split())[:60]] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def _print_review(review: dict[str, Any]) -> None:
    print(f"review {review['review_id']}: {review['pipeline']}, {review['status']}")
    print(f"  author: {review['author']}, {_when(review['created_at'])}")
    print(f"  code_hash: {review['code_hash']}")
    if review["reviewer"]:
        print(f"  decided by {review['reviewer']} at {_when(review['decided_at'])}"
              + (f": {review['comment']}" if review["comment"] else ""))
    print("summary:\n  " + "\n  ".join(str(review["summary"]).splitlines()))
    run = review.get("run")
    if run:
        counts = run["summary"]
        print(f"test run {run['run_id']}: {'passed' if run['ok'] else 'FAILED'}, "
              f"{counts.get('events_read', 0)} events -> {counts.get('output_count', 0)} outputs, "
              f"{counts.get('signal_count', 0)} signals, {counts.get('dead_letters', 0)} dead letters")
        for step in counts.get("steps", []):
            print(f"  {step.get('id')} ({step.get('kind')}): in {step.get('in')}, out {step.get('out')}, "
                  f"errors {step.get('errors')}")
    for note in review["comments"]:
        print(f"comment by {note['author']} at {_when(note['at'])}: {note['text']}")
    print("spec (approval deploys exactly this):")
    print("  " + "\n  ".join(str(review["spec_text"]).splitlines()))


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
