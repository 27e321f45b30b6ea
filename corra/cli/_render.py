"""What the command line prints: the process table, a process in words, a transition in
words, JSON. Every command prints through here, whether it read a service or a state dir."""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any

from corra.processes._lifecycle import Result, describe, handle_field
from corra.processes._record import ProcessRecord, Transition
from corra.processes._statuses import summary

#: The widest a status is in `corra ps`.
STATUS_WIDTH = 40


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_ps(items: list[dict[str, Any]], *, corrupt: int) -> None:
    """`corra ps`: the processes (as `corra.api._wire.record_json` gives them) as a table;
    ``corrupt`` records that could not be read are counted on stderr."""
    rows = [("ID", "NAME", "PHASE", "ATTEMPT", "RC", "UPDATED", "STATUS", "REASON")]
    for item in items:
        if item["returncode"] is not None:
            rc = str(item["returncode"])
        elif item["signal"] is not None:
            rc = f"sig{item['signal']}"
        else:
            rc = ""
        updated = time.strftime("%H:%M:%S", time.localtime(item["updated_at"]))
        rows.append(
            (
                item["id"],
                item["name"],
                _phase_text(item),
                str(item["attempt"]),
                rc,
                updated,
                status_text(item.get("status"), STATUS_WIDTH),
                item["reason"] or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
    if corrupt:
        print(f"({corrupt} record(s) could not be read; see corra show)", file=sys.stderr)


def status_text(status: dict[str, Any] | None, width: int | None = None) -> str:
    """A status (as `corra.processes._statuses.ProgramStatus.json` gives it) in a few words,
    or "" for none."""
    if not status:
        return ""
    return summary(status.get("value"), status.get("error"), width)


def print_counts(counts: dict[str, int], *, more: str | None) -> None:
    """`corra ps`'s footer: how many processes there are per phase (the phases that have
    some), and how to go on when the listing stopped at its --limit."""
    some = [f"{count} {phase}" for phase, count in counts.items() if count]
    total = sum(counts.values())
    print(
        f"\n{total} process{'' if total == 1 else 'es'}" + (f": {', '.join(some)}" if some else "")
    )
    if more is not None:
        print(f"(more: --cursor {more})")


def _phase_text(item: dict[str, Any]) -> str:
    """The phase as `corra ps` shows it: what the chaperone recorded of a program that no
    runtime watches (``exited 0, not yet collected``) when it says more than the record."""
    found = item.get("recorded")
    if found is None or found["state"] not in ("exited", "lost"):
        return str(item["phase"])
    if item["phase"] == "paused":
        return f"paused; {found['summary']}"
    return str(found["summary"])


def print_show(data: dict[str, Any], as_json: bool, show_env: bool) -> None:
    """`corra show`: one process (as `corra.api._wire.detail_json` gives it) in words, or
    JSON."""
    if as_json:
        print_json(data)
        return
    print(f"{data['name']} ({data['id']}): {data['phase']}, attempt {data['attempt']}")
    note = data.get("note")
    if note is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(note["at"]))
        print(f"  note:    {note['text']} (since {since})")
    status = data.get("status")
    if status is not None:
        seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["at"]))
        label = "status: " if data["phase"] in ("launching", "running") else "last status:"
        print(f"  {label} {status_text(status)} (at {seen})")
        if status.get("error"):
            print(f"           a later line was refused: {status['error']}")
    print(f"  argv:    {shlex.join(data['argv'])}")
    env = data["spec"]["env"]
    if env:  # (the values as the shell would read them, if asked for)
        pairs = (f"{k}={shlex.quote(v) if show_env else v}" for k, v in env.items())
        print(f"  env:     {' '.join(pairs)}")
    if data["reason"]:
        print(f"  reason:  {data['reason']}")
    found = data.get("recorded")
    if found is not None and found["state"] in ("exited", "lost"):
        who = (
            "`corra resume` collects it"
            if data["phase"] == "paused"
            else "no runtime watches it: the next `corra run` or `corra serve` collects it"
        )
        print(f"  program: {found['summary']} ({who})")
    if data["result"] is not None:
        result = Result(**data["result"])
        maxrss = "unknown" if result.maxrss_kb is None else f"{result.maxrss_kb} KiB"
        print(
            f"  result:  {describe(result)}; cpu {result.utime + result.stime:.2f}s, "
            f"maxrss {maxrss}, stdout {result.stdout_bytes} B{_dropped(result.stdout_dropped)}, "
            f"stderr {result.stderr_bytes} B{_dropped(result.stderr_dropped)}"
        )
        value = value_text(data["result"])
        if value is not None:
            print(f"  value:   {value}")
    print("  history:")
    print_history(data["history"], indent="    ")


def print_history(transitions: list[dict[str, Any]], *, indent: str = "") -> None:
    """Transitions (as JSON: `transition_json`), one line each."""
    for t in transitions:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["at"]))
        reason = f"  ({t['reason']})" if t["reason"] else ""
        print(f"{indent}{stamp}  {t['event']:<8} {t['source']} -> {t['target']}{reason}")


#: The most characters of a value `corra show` prints (the rest: ``--json``).
VALUE_SHOWN = 200


def value_text(result: dict[str, Any]) -> str | None:
    """The value of a result (as JSON: `detail_json`'s) in words: compact JSON, cut at
    `VALUE_SHOWN` characters; where it is kept; why it was refused; None: there is none."""
    if result.get("value_error"):
        return str(result["value_error"])  # ($CORRA_RESULT refused: why)
    if not result.get("has_value"):
        return None
    if result.get("value_file"):
        return f"kept in {result['value_file']} (too large for the record)"
    text = json.dumps(result.get("value"), separators=(",", ":"), ensure_ascii=False)
    if len(text) > VALUE_SHOWN:
        size = len(text.encode())
        return f"{text[:VALUE_SHOWN]}... ({size} bytes, --json for all)"
    return text


def _dropped(size: int) -> str:
    return f" (and {size} B dropped past the output limit)" if size else ""


def print_control(record: dict[str, Any], as_json: bool) -> None:
    """What `corra pause`, `resume` and `kill` say of the process they acted on."""
    if as_json:
        print_json(record)
        return
    reason = f" ({record['reason']})" if record.get("reason") else ""
    print(f"{record['name']} ({record['id']}): {record['phase']}{reason}")


def happened(record: ProcessRecord, transition: Transition) -> str | None:
    """One transition in words, for `corra run`'s plain progress lines (None: not worth a
    line)."""
    event = transition.event
    result = record.state.result
    if event == "launch":
        return None
    if event == "submit":
        return "submitted"
    if event == "started":
        pid = handle_field(record.state.handle, "pid")
        return f"running (attempt {record.state.attempt}" + (f", pid {pid})" if pid else ")")
    if event == "retry":
        return f"will run again: {transition.reason}"
    if event == "rerun":
        return f"rerun as attempt {transition.attempt}"
    if event in ("succeed", "fail", "killed") and result is not None:
        took = ""
        if result.started_at is not None and result.ended_at is not None:
            took = f" after {result.ended_at - result.started_at:.1f}s"
        verb = {"succeed": "finished", "fail": "failed", "killed": "killed"}[event]
        return f"{verb}: {describe(result)}{took}"
    if transition.reason:
        return f"{transition.target} ({transition.reason})"
    return transition.target
