"""`validator-admin import` and `export`: restrictions in and out as JSON lines, restore included."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from validator.admin.api import Admin, Change, ImportLine, PreparedPut
from validator.admin.cli.output import (
    _NOTES_SHOWN,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    PROG,
    CliError,
    Output,
    _has_rich,
    _unsound,
)
from validator.errors import (
    InvalidEntry,
)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        file = Path(path).open("rb")  # noqa: SIM115 - closed below, after the yield
    except OSError as error:
        raise CliError(EXIT_REFUSED, f"cannot read {path}: {error.strerror}") from None
    with file:
        yield file


def _read_import(
    admin: Admin, path: str, allow_private: bool
) -> tuple[list[PreparedPut], list[str], list[str]]:
    """Every valid record of the file, the problems (one per bad line), and normalisation notes."""
    prepared: list[PreparedPut] = []
    problems: list[str] = []
    notes: list[str] = []
    first_line: dict[str, int] = {}
    decoder = msgspec.json.Decoder(ImportLine)
    with _opened(path) as file:
        for number, raw in enumerate(file, 1):
            if not raw.strip():
                continue
            try:
                record = admin.prepare(decoder.decode(raw), allow_private=allow_private)
            except (msgspec.ValidationError, InvalidEntry) as error:
                problems.append(f"line {number}: {error}")
                continue
            except msgspec.DecodeError as error:
                problems.append(f"line {number}: not valid JSON ({error})")
                continue
            seen = first_line.setdefault(record.token_hash, number)
            if seen != number:
                problems.append(f"line {number}: the same token as line {seen}")
                continue
            prepared.append(record)
            notes.extend(f"line {number}: {note}" for note in record.notes)
    return prepared, problems, notes


@contextlib.contextmanager
def _progress(total: int, show: bool) -> Iterator[Any]:
    if not show or not _has_rich():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("import", total=total)
        yield lambda n: progress.advance(task, n)


async def cmd_import(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    started = time.perf_counter()
    prepared, problems, notes = _read_import(admin, args.file, args.allow_private)
    source = "standard input" if args.file == "-" else args.file
    if problems:
        for problem in problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        raise CliError(
            EXIT_REFUSED,
            f"{len(problems)} bad line(s) in {source}: nothing was imported (fix them and run it again)",
        )
    for note in notes[:_NOTES_SHOWN]:
        print(f"{PROG}: {note}", file=sys.stderr)
    if len(notes) > _NOTES_SHOWN:
        print(f"{PROG}: ... and {len(notes) - _NOTES_SHOWN} more entries normalised", file=sys.stderr)
    if args.force and not args.restore:
        raise CliError(EXIT_USAGE, "--force goes with --restore (it lets a restore mark an evicting store)")
    if args.dry_run and not args.restore and (state := await admin.store.marker_state()) != "ok":
        out.warn(f"the import itself would be refused: {_unsound(state)}")
    counts = {"created": 0, "changed": 0, "unchanged": 0}
    batch_size = args.batch_size
    batches = [prepared[start : start + batch_size] for start in range(0, len(prepared), batch_size)]
    show_progress = sys.stderr.isatty() and not out.json and len(prepared) > batch_size
    with _progress(len(prepared), show_progress) as advance:
        async for kinds in _import_kinds(admin, batches, args):
            for kind in kinds:
                counts[kind] += 1
            if advance is not None:
                advance(len(kinds))
    seconds = time.perf_counter() - started
    if out.json:
        out.data(
            {"records": len(prepared), **counts, "dry_run": args.dry_run}
            | {"restore": args.restore, "seconds": round(seconds, 3)}
        )
    elif args.dry_run:
        out.line(
            f"dry run: {len(prepared)} valid records in {source}; would create {counts['created']}, "
            f"change {counts['changed']}, leave {counts['unchanged']} unchanged; nothing was written"
        )
    else:
        rate = len(prepared) / seconds if seconds else 0.0
        done = "restored" if args.restore else "imported"
        marked = "; the store is marked: validators trust it again" if args.restore else ""
        out.line(
            f"{done} {len(prepared)} records from {source} in {seconds:.1f} s ({rate:,.0f}/s): "
            f"{counts['created']} created, {counts['changed']} changed, {counts['unchanged']} unchanged"
            + marked
        )
    return EXIT_OK


async def _import_kinds(
    admin: Admin, batches: Sequence[Sequence[PreparedPut]], args: argparse.Namespace
) -> AsyncIterator[list[str]]:
    """Per batch, what importing each record does: "created", "changed" or "unchanged"."""
    if args.dry_run:
        for batch in batches:
            stored = await admin.read_many([p.token_hash for p in batch])
            yield [
                "created" if current is None else "unchanged" if p.same_as(current) else "changed"
                for p, current in zip(batch, stored, strict=True)
            ]
        return
    # A restore marks the store after its last record, never before: validators fail closed
    # until every record is back.
    writes = admin.restore(batches, force=args.force) if args.restore else _put_batches(admin, batches)
    async for changes in writes:
        yield [
            "unchanged"
            if not change.changed
            else "created"
            if change.restrictions is not None and change.restrictions.version == 1
            else "changed"
            for change in changes
        ]


async def _put_batches(admin: Admin, batches: Sequence[Sequence[PreparedPut]]) -> AsyncIterator[list[Change]]:
    for batch in batches:
        yield await admin.put_many(batch)


async def cmd_export(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    encoder = msgspec.json.Encoder()
    count = 0
    if args.file in (None, "-"):
        async for record in admin.export(args.batch_size):
            sys.stdout.buffer.write(encoder.encode(record) + b"\n")
            count += 1
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = Path(args.file)
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as file:
            async for record in admin.export(args.batch_size):
                file.write(encoder.encode(record) + b"\n")
                count += 1
        # Written whole or not at all: a failed export never leaves a truncated file behind.
        partial.replace(target)
    except OSError as error:
        raise CliError(EXIT_REFUSED, f"cannot write {args.file}: {error.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    if out.json:
        out.data({"records": count, "file": args.file})
    else:
        out.line(f"exported {count} records to {args.file}")
    return EXIT_OK
