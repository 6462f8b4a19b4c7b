"""The `backstop` command line. Each subcommand parses its arguments and calls one adapter or use case."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from backstop import __version__
from backstop.collector import raise_young_threshold
from backstop.core.errors import one_line


class DsnArgument(argparse.Action):
    """A PostgreSQL DSN on the command line, never one that carries a password: a command line is visible to every
    user of the machine (ps, /proc) and stays in shell history. The password comes from the environment or a file."""

    def __init__(self, *args: object, env: str | None = None, **kwargs: object) -> None:
        self.env = env
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from backstop.settings import dsn_password

        if dsn_password(str(values)) is not None:
            instead = f"the DSN in {self.env} or {self.env}_FILE, or " if self.env else ""
            parser.exit(2, f"{parser.prog}: refused: {option_string} carries a password, which a command line shows "
                           f"to every user of this machine: give {instead}the password in PGPASSWORD or a password "
                           f"file (PGPASSFILE)\n")
        setattr(namespace, self.dest, values)


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from backstop.adapters.postgres.migrations import MigrationError, migrate
    from backstop.adapters.postgres.roles import ServiceLogin, ensure_service_role
    from backstop.settings import Settings

    settings = Settings()
    dsn = args.dsn or settings.owner_dsn()

    async def migrate_and_provision() -> tuple[list[str], str]:
        login = ServiceLogin.from_dsn(settings.dsn())
        applied = await migrate(dsn)
        return applied, await ensure_service_role(dsn, login)

    try:
        applied, role = asyncio.run(migrate_and_provision())
    except MigrationError as error:
        print(f"backstop db migrate: refused: {error}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as error:  # a store that cannot be read: 2, as every command says it
        print(f"backstop db migrate: cannot reach PostgreSQL ({_one_line(error)}); is it running? "
              "(deploy/local/postgres start)", file=sys.stderr)
        return 2
    except (asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError) as error:
        print(f"backstop db migrate: cannot use the database ({_one_line(error)})", file=sys.stderr)
        return 2
    except asyncpg.PostgresError as error:
        print(f"backstop db migrate: PostgreSQL refused ({_one_line(error)}); "
              "nothing of the failing migration was applied", file=sys.stderr)
        return 1
    except (ValueError, asyncpg.InterfaceError) as error:  # a DSN asyncpg cannot use (another scheme, bad syntax)
        print(f"backstop db migrate: {_one_line(error)}", file=sys.stderr)
        return 2
    for version in applied:
        print(f"applied {version}")
    print(f"schema up to date ({len(applied)} migration(s) applied now)")
    print(role)
    return 0


ENGINE_CHOICES = ("reference", "compiled")
DEFAULT_ENGINE = "compiled"


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default=None,
                        help=f"which engine applies the rules (default {DEFAULT_ENGINE}; the reference when the "
                             "compiled engine is not built here, saying so)")


def _engine_for(args: argparse.Namespace) -> Literal["reference", "compiled"]:
    """The engine asked for, else the compiled one; the default falls back to the reference engine, saying so on
    stderr, when the compiled engine is not built here."""
    from backstop.engines import compiled_available

    if args.engine is not None:
        chosen: Literal["reference", "compiled"] = args.engine
        return chosen
    missing = compiled_available()
    if missing is None:
        return "compiled"
    if not os.environ.get("BACKSTOP_ENGINE_FALLBACK_SAID"):  # ./backstop said it when it found no cargo
        print(f"backstop: {missing}; using the reference engine", file=sys.stderr)
    return "reference"


def _cmd_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backstop.engines import EngineUnavailable
    from backstop.entrypoints.replay import Carried, ReplayError, ReplayOptions, replay, replay_lines

    sources = [bool(args.journal), bool(args.from_postgres), bool(args.from_kafka)]
    if sum(sources) != 1:
        print("backstop replay: give exactly one of INPUT.jsonl, --from-postgres DSN, --from-kafka BOOTSTRAP",
              file=sys.stderr)
        return 2
    try:
        policy = adl_policy_of(args)
    except ValueError as error:
        print(f"backstop replay: {error}", file=sys.stderr)
        return 2
    options = ReplayOptions(journal=Path(args.journal) if args.journal else None, out=Path(args.out),
                            strict=args.strict, snapshot_every=args.snapshot_every,
                            from_snapshot=Path(args.from_snapshot) if args.from_snapshot else None,
                            check_conservation=args.check_conservation, adl_policy=policy,
                            adl_quantiles=_quantile_points(args), full_adl_metrics=args.adl_metrics == "full",
                            engine=_engine_for(args))
    stored: dict[str, Any] | None = None
    try:
        if args.journal:
            result = replay(options)
        else:
            import asyncio  # only a stored journal is read asynchronously

            try:
                lines, stored = asyncio.run(_stored_journal(args))
            except _store_errors() as error:
                print(f"backstop replay: cannot read the stored journal: {_one_line(error)}", file=sys.stderr)
                return 2
            carried = Carried(stored["duplicates"], stored["rejected"], stored["dead_letters"]) \
                if "dead_letters" in stored else None
            result = replay_lines(options, lambda skip: list(enumerate(lines, start=1))[skip:],
                                  sum(len(x) + 1 for x in lines), carried=carried)
    except ReplayError as error:
        print(f"backstop replay: {error}", file=sys.stderr)
        return error.exit_code
    except EngineUnavailable as error:
        print(f"backstop replay: {error} (or use --engine reference)", file=sys.stderr)
        return 2
    print(f"applied {result['events_applied']} events ({result['duplicates']} duplicates, "
          f"{result['rejected']} rejected); {result['fund_ledger_entries']} fund-ledger entries, "
          f"{result['adl_events']} ADL events, {result['findings']} findings")
    for fund_id, fund in result["funds"].items():
        print(f"fund {fund_id}: balance {fund['balance']} {fund['settle_asset']}")
    print(f"head hash  {result['head_hash']}")
    print(f"state hash {result['state_hash']}")
    print(f"outputs in {str(args.out).rstrip('/') or '/'}/")
    if stored is None and not result["events_applied"] and not result["duplicates"] and not args.from_snapshot:
        # exit 0 as ever (every line is in dead-letter.jsonl), but a journal of which nothing applied is seldom meant
        print(f"backstop replay: note: no line of {args.journal} was applied"
              + (f" ({result['rejected']} rejected: see dead-letter.jsonl)" if result["rejected"] else
                 ": it holds no record"), file=sys.stderr)
    if stored is not None:
        return _compare_stored(result, stored)
    return 0


def _store_errors() -> tuple[type[BaseException], ...]:
    """What reading a store can raise on a bad DSN, a server that is down or refuses, or a broken stored stream."""
    import asyncpg
    from aiokafka.errors import KafkaError

    from backstop.core.errors import InvariantViolation

    return (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError,
            InvariantViolation)


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    name = type(error).__name__
    return message if message.startswith(name) else f"{name}: {message}" if message else name


async def _stored_journal(args: argparse.Namespace) -> tuple[list[bytes], dict[str, Any]]:
    from backstop.entrypoints.sources import kafka_journal, postgres_journal
    from backstop.settings import Settings

    if args.from_postgres:
        return await postgres_journal(args.from_postgres)
    return await kafka_journal(Settings(kafka_bootstrap=args.from_kafka))


def _quantile_points(args: argparse.Namespace) -> bool:
    """--adl-quantiles / --no-adl-quantiles; unsaid: off for a journal file, on for the service's journal (its
    setting BACKSTOP_ADL_QUANTILES defaults to on), so that its state hash is reproduced."""
    return bool(args.adl_quantiles) if args.adl_quantiles is not None else not args.journal


def _compare_stored(result: dict[str, Any], stored: dict[str, Any]) -> int:
    problems = []
    for key in ("duplicates", "rejected"):  # the service's counts; its journal itself replays without either
        if key in stored and stored[key] != result[key]:
            problems.append(f"the service counted {stored[key]} {key}, the replay of its journal adds "
                            f"{result[key] - stored[key]}")
    if stored.get("seq") != result["events_applied"]:
        problems.append(f"the store is at seq {stored.get('seq')}, its journal replays {result['events_applied']}")
    if stored.get("seq") and stored.get("head_hash") != result["head_hash"]:
        problems.append(f"stored head hash {stored.get('head_hash')} != replayed {result['head_hash']}")
    if stored.get("state_hash") is not None and stored.get("state_hash_seq") == result["events_applied"]:
        if stored["state_hash"] != result["state_hash"]:
            problems.append(f"stored state hash {stored['state_hash']} != replayed {result['state_hash']} (quantile "
                            f"points move it: replay with the service's BACKSTOP_ADL_QUANTILES setting)")
        else:
            print("stored state hash reproduced")
    for problem in problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    if not problems:
        print("stored head hash reproduced")
    return 1 if problems else 0


def _cmd_schemas(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backstop.wire import schemas

    directory = Path(args.dir)
    if args.check:
        drifted = schemas.drift(directory)
        if drifted:
            print(f"schemas out of date in {directory}: {', '.join(drifted)} "
                  f"(run `backstop schemas write`)", file=sys.stderr)
            return 1
        print(f"schemas in {directory} match the models")
        return 0
    for path in schemas.write(directory):
        print(f"wrote {path}")
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from backstop.engines import EngineUnavailable
    from backstop.entrypoints.audit import AuditError, verify_journal, verify_output, verify_postgres

    if sum(map(bool, (args.out, args.dsn))) > 1 or not (args.out or args.dsn or args.journal):
        print("backstop audit verify: give a replay output DIR (with its --journal), a --journal alone, or --dsn",
              file=sys.stderr)
        return 2
    if args.anchor_key_file and not args.dsn:
        print("backstop audit verify: --anchor-key-file goes with --dsn", file=sys.stderr)
        return 2
    if args.dsn and args.journal:  # the database is checked against the journal it stores
        print("backstop audit verify: --journal does not go with --dsn (the database's own journal is replayed)",
              file=sys.stderr)
        return 2
    engine = _engine_for(args)
    try:
        if args.dsn:
            checked, problem = asyncio.run(verify_postgres(args.dsn, [Path(f) for f in args.anchor_key_file or ()],
                                                           engine))
        elif not args.out:
            checked, problem = verify_journal(Path(args.journal), engine)
        else:
            checked, problem = verify_output(Path(args.out), Path(args.journal) if args.journal else None, engine)
    except (AuditError, EngineUnavailable) as error:
        print(f"backstop audit verify: {error}", file=sys.stderr)
        return 2
    for line in checked:
        print(f"ok    {line}")
    if problem is not None:
        print(f"FAIL  {problem}")
        return 1
    if args.dsn and not args.anchor_key_file:
        print("ledger verified (not against the signed checkpoints: give --anchor-key-file, without which a "
              "history rewritten with its hash chains recomputed passes too)")
        return 0
    print("ledger verified" + ("" if args.journal or args.dsn else " (the files against summary.json only: give "
                                                                   "--journal to re-derive every record)"))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from backstop.core.anchor import AnchorKeyError
    from backstop.service.app import ServeRefused, ServeStopped, serve
    from backstop.settings import Settings

    try:
        serve(Settings())
    except (ServeRefused, AnchorKeyError) as error:
        print(f"backstop serve: {error}", file=sys.stderr)
        return 2
    except ServeStopped as error:
        print(f"backstop serve: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from backstop.adapters.kafka.tools import ensure_topics
    from backstop.settings import Settings

    settings = Settings()
    try:
        created = ensure_topics(settings)
    except (KafkaError, OSError) as error:
        print(f"backstop topics create: Kafka at {settings.kafka_bootstrap}: {_one_line(error)}", file=sys.stderr)
        return 2
    print(f"created {len(created)} topic(s){': ' + ', '.join(created) if created else ' (all existed)'}")
    return 0


def _cmd_journal_export(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from backstop.adapters.files import OutputError, write_file_atomically, written_in_place
    from backstop.adapters.journal_file import journal_bytes
    from backstop.entrypoints.sources import postgres_journal
    from backstop.settings import Settings

    try:
        lines, stored = asyncio.run(postgres_journal(args.dsn or Settings().dsn()))
    except _store_errors() as error:
        print(f"backstop journal export: cannot read the stored journal: {_one_line(error)}", file=sys.stderr)
        return 2
    try:
        write_file_atomically(Path(args.out), lambda path: path.write_bytes(journal_bytes(lines)))
    except (OutputError, OSError) as error:
        print(f"backstop journal export: {_os_message(error)}", file=sys.stderr)
        return 2
    what = (f"{len(lines)} journal records (seq 1..{len(lines)}, head hash {stored.get('head_hash')})" if lines
            else "an empty journal (nothing stored yet)")
    print(f"wrote {what} to {args.out}", file=sys.stderr if written_in_place(Path(args.out)) else sys.stdout)
    return 0


# `backstop produce` exits with this when some lines could not be routed (each said on stderr) and the rest were sent.
PRODUCE_SOME_NOT_SENT = 1


def _cmd_produce(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from aiokafka.errors import KafkaError
    from kafka.errors import KafkaError as AdminError

    from backstop.adapters.journal_file import JournalFileError
    from backstop.adapters.kafka.tools import produce_file
    from backstop.settings import Settings

    settings = Settings()
    try:
        # the topics as the service lays them out, so producing before the service's first start loses nothing
        produced = asyncio.run(produce_file(settings, Path(args.journal), create_topics=True))
    except JournalFileError as error:
        print(f"backstop produce: {error}", file=sys.stderr)
        return 2
    except (KafkaError, AdminError, OSError) as error:
        print(f"backstop produce: Kafka at {settings.kafka_bootstrap}: {_one_line(error)} (lines before the error "
              f"may have been sent)", file=sys.stderr)
        return 2
    for number, reason in produced.not_sent:
        print(f"backstop produce: {args.journal} line {number} not sent: {one_line(reason)}", file=sys.stderr)
    print("produced " + (", ".join(f"{n} {t}" for t, n in produced.counts.items()) or "nothing")
          + (f"; {len(produced.not_sent)} line(s) not sent" if produced.not_sent else ""))
    return PRODUCE_SOME_NOT_SENT if produced.not_sent else 0


def _cmd_tail(args: argparse.Namespace) -> int:
    import asyncio

    from aiokafka.errors import KafkaError

    from backstop.adapters.kafka.tools import tail
    from backstop.settings import Settings

    settings = Settings()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(tail(settings, args.stream, follow=args.follow))
    except (KafkaError, OSError, ValueError) as error:
        print(f"backstop tail: Kafka at {settings.kafka_bootstrap}: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    import orjson

    from backstop.core.adl_policy import document
    from backstop.entrypoints.explain import ExplainError, explain, recorded_policy, render_text

    try:
        journal, policy = Path(args.journal), adl_policy_of(args)
        recorded = recorded_policy(journal)  # a run's journal is explained under the policy its run applied
        if recorded is not None and policy is not None and document(recorded) != document(policy):
            print(f"backstop explain: note: {journal.parent / 'summary.json'} says the journal ran under the ADL "
                  f"policy {orjson.dumps(document(recorded)).decode()}; explaining it under the one given",
                  file=sys.stderr)
        explanation = explain(args.id, journal, policy or recorded)
    except (ExplainError, ValueError) as error:
        print(f"backstop explain: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(explanation, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_text(explanation))
    return 0


def _cmd_statement(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backstop.adapters.files import OutputError, written_in_place
    from backstop.adapters.output_reader import OutputReadError, read_stream, read_summary
    from backstop.core.fund_statement import (
        OPEN_END,
        StatementError,
        account_entries,
        account_statement,
        statement,
    )
    from backstop.entrypoints.statement import (
        check_fund_balance,
        check_stream_chain,
        default_target,
        opening_balance,
        parse_time,
        read_entries,
        write_statement,
    )

    directory = Path(args.dir)
    name = args.fund if args.fund is not None else args.account
    target = Path(args.out) if args.out else default_target(name, args.format)
    try:
        period = {"period_from": parse_time(args.period_from) if args.period_from is not None else 0,
                  "period_to": parse_time(args.period_to) if args.period_to is not None else OPEN_END}
        if period["period_from"] > period["period_to"]:
            raise ValueError(f"--from {args.period_from} is after --to {args.period_to}")
        if directory.resolve() in target.resolve().parents:  # it would replace or add to the outputs it states
            raise ValueError(f"{target} lies inside the replay output directory {directory}: write the statement "
                             f"elsewhere (--out)")
        summary = read_summary(directory)
        start = summary.get("from_snapshot")
        if start and (args.period_from is not None or args.period_to is not None):
            # entries before the snapshot are not here, and event times do not say which came before it (a record
            # applied earlier can carry a later ts): no period of such a directory can be told right
            raise ValueError(f"{directory} holds only what came after the snapshot at seq {start['seq']}: a "
                             f"statement over a period needs the outputs of a replay from the journal's start "
                             f"(without --from and --to, it runs from the snapshot's balances)")
        if args.fund is not None:
            funds = summary["funds"]
            if args.fund not in funds:
                raise ValueError(f"no fund {args.fund} in {directory} (its funds: "
                                 f"{', '.join(sorted(funds)) or 'none'})")
            entries = read_entries(directory)
            check_stream_chain(entries, "fund-ledger.jsonl", summary)
            check_fund_balance(entries, args.fund, summary)
            result = statement(entries, args.fund, **period, opening=opening_balance(summary, args.fund))
            source = directory / "fund-ledger.jsonl"
        else:
            postings = read_stream(directory, "postings.jsonl")
            check_stream_chain(postings, "postings.jsonl", summary)
            if not account_entries(postings, args.account):
                accounts = sorted({p[side] for p in postings for side in ("debit_account", "credit_account")})
                raise ValueError(f"no postings move {args.account} in {directory} (its accounts: "
                                 f"{', '.join(accounts[:12]) or 'none'}{' ...' if len(accounts) > 12 else ''})")
            result = account_statement(postings, args.account, **period, from_start=not summary.get("from_snapshot"))
            source = directory / "postings.jsonl"
        write_statement(result, target, args.format, inputs=[source, directory / "summary.json"])
    except StatementError as error:
        print(f"backstop statement: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError, OutputError, OutputReadError) as error:
        print(f"backstop statement: {_os_message(error)}", file=sys.stderr)
        return 2
    figures = result.as_json()  # canonical decimals, as the statement writes them
    flows = ", ".join(f"{k} {v}" for k, v in figures["by_kind"].items()) or "none"
    print(f"{'fund' if args.fund is not None else 'account'} {name}: opening {figures['opening_balance']}, flows "
          f"{flows}, closing {figures['closing_balance']} ({len(result.entries)} entries) -> {target}",
          file=sys.stderr if written_in_place(target) else sys.stdout)  # not into the statement on stdout
    return 0


def _bad_setting(error: BaseException) -> str | None:
    """One line for a BACKSTOP_* environment variable the settings refuse (pydantic is loaded once settings are
    read; a command that never reads them never loads it)."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(error, pydantic.ValidationError) or error.title != "Settings":
        return None
    first = error.errors()[0]
    name = f"BACKSTOP_{first['loc'][0]}".upper() if first["loc"] else "a BACKSTOP_* setting"
    return f"bad setting {name}={str(first.get('input'))[:60]!r}: {first['msg']}"


def _os_message(error: BaseException) -> str:
    """One line for an error; an OSError by what failed and on which file (its str() lists errno and all)."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return " ".join(str(error).split())


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backstop.adapters.output_reader import OutputReadError
    from backstop.entrypoints.statement import reconcile

    try:
        lines, problems = reconcile(Path(args.dir))
    except (OSError, ValueError, OutputReadError) as error:
        print(f"backstop reconcile: {_os_message(error)}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    for problem in problems:
        print(f"MISMATCH {problem}")
    print("reconciled" if not problems else f"{len(problems)} mismatch(es)")
    return 1 if problems else 0


def _cmd_whatif(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backstop.entrypoints.policy_lab import parse_policies, render_policies, whatif_policies
    from backstop.entrypoints.whatif import render, whatif
    from backstop.scenarios import WhatIfError, WhatIfFile, load_params

    inputs = [Path(args.params)] if args.params else []
    left_out: list[tuple[int, str]] = []
    try:
        params = load_params(Path(args.params)) if args.params else WhatIfFile()
        engine = _engine_for(args)
        if args.policies is not None:
            comparison = whatif_policies(Path(args.journal), params, parse_policies(args.policies), Path(args.out),
                                         report=args.report, inputs=inputs, engine=engine, left_out=left_out)
        else:
            comparison = whatif(Path(args.journal), params, Path(args.out), report=args.report, inputs=inputs,
                                engine=engine, left_out=left_out)
    except WhatIfError as error:
        print(f"backstop whatif: {error}", file=sys.stderr)
        return 2
    if left_out:
        number, reason = left_out[0]
        print(f"backstop whatif: {len(left_out)} line(s) of {args.journal} are not valid records, left out of every "
              f"run (first: line {number}: {one_line(reason[:200])}); `backstop replay` dead-letters them",
              file=sys.stderr)
    runs = comparison["runs"] if args.policies is not None else {
        name: comparison[name] for name in ("baseline", "alternative")}
    rejected = [f"{name} {run['rejected']}" for name, run in runs.items() if run["rejected"]]
    if rejected:  # a scenario can make the journal's own records invalid (a fund's sale of lots it no longer holds)
        print(f"backstop whatif: the engine rejected records of the journal ({', '.join(rejected)}): each run's "
              f"dead-letter.jsonl in {args.out}/ says which and why", file=sys.stderr)
    print(render_policies(comparison) if args.policies is not None else render(comparison))
    print(f"runs, journals and comparison.json in {args.out}/" + (f"; report: {args.out}/report.html"
                                                                   if args.report else ""))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backstop.adapters.files import OutputError
    from backstop.entrypoints.demo import run_demo
    from backstop.entrypoints.policy_lab import parse_policies
    from backstop.scenarios import WhatIfError

    try:
        policies = () if args.no_policies else tuple(parse_policies(args.policies))
        result = run_demo(Path(args.out), seed=args.seed, accounts=args.accounts, report=not args.no_report,
                          progress=sys.stderr.isatty(), policies=policies, engine=_engine_for(args))
    except (OutputError, WhatIfError, OSError) as error:
        print(f"backstop demo: {_os_message(error)}", file=sys.stderr)
        return 2
    print(f"backstop demo: {result['input_records']:,} input records, seed {args.seed}")
    print(result["table"])
    print(f"head hash  {result['summary']['head_hash']}")
    if policies:
        print(f"\nADL policies on the same cascade (each run in {args.out}/policies/, its journal replays with "
              f"backstop replay --adl-policy NAME):")
        print(result["policies_table"])
    print(f"outputs in {args.out}/" + ("" if args.no_report else f"; report: {args.out}/report.html" + (
        f", {args.out}/policies/report.html" if policies else "")))
    return 0


def add_adl_policy_arguments(parser: argparse.ArgumentParser, *, metrics: bool = True) -> None:
    """The ADL policy of a replay (docs/design.md §11): a preset and the options that adjust it (and, `metrics`,
    which fairness figures its rounds record)."""
    from backstop.core.adl_policy import PRESETS, PRICES

    group = parser.add_argument_group("ADL policy (docs/design.md §11; what-if runs record theirs)")
    group.add_argument("--adl-policy", choices=[*PRESETS, "bitmex"], default=None, metavar="NAME",
                       help=f"one of {', '.join(PRESETS)} (default queue: BitMEX's queue at the lot's BP, §4, "
                            f"also named bitmex; from a snapshot, the snapshot's)")
    group.add_argument("--adl-rule", dest="adl_policy", choices=[*PRESETS, "bitmex"], help=argparse.SUPPRESS)
    group.add_argument("--adl-price", choices=PRICES, default=None,
                       help="price counterparties are closed at: the lot's bankruptcy price (default), the mark, or "
                            "floor (OKX: the mark while the fund can pay the deficit above its floor)")
    group.add_argument("--adl-floor", type=_amount, default=None, metavar="AMOUNT",
                       help="the fund's balance floor: it keeps inventory only above it (default 0)")
    group.add_argument("--adl-drawdown", type=_amount, default=None, metavar="RATIO",
                       help="Bybit's trigger, under any policy (so do --adl-stop and --adl-window-hours): ADL when "
                            "a symbol's fund PnL is more than RATIO of the pool's max balance below its max PnL over "
                            "the window (bybit: 0.3)")
    group.add_argument("--adl-stop", type=_amount, default=None, metavar="RATIO",
                       help="... and it stops once that fall is back under RATIO (bybit: 0.25)")
    group.add_argument("--adl-window-hours", type=_window_hours, default=None, metavar="H",
                       help="the window of event time (bybit: 8)")
    if not metrics:
        return
    group.add_argument("--adl-metrics", choices=["basic", "full"], default="basic",
                       help="full: also rank inversions and the eligible population's quantiles in adl-rounds.jsonl "
                            "and the summary (O(N log N) per round over every opposite position)")


def adl_policy_of(args: argparse.Namespace) -> Any:
    """The AdlPolicy the options name, None if none is given; ValueError says what is wrong."""
    from backstop.core.adl_policy import configured

    options = (args.adl_policy, args.adl_price, args.adl_floor, args.adl_drawdown, args.adl_stop,
               args.adl_window_hours)
    if all(option is None for option in options):
        return None
    return configured(args.adl_policy or "queue", price=args.adl_price, floor=args.adl_floor,
                      drawdown_ratio=args.adl_drawdown, stop_ratio=args.adl_stop, window_hours=args.adl_window_hours)


def _path(value: str) -> str:
    """A path option: an empty one would name the working directory (`--out ""` wrote the outputs there)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return value


def _amount(value: str) -> Any:
    from decimal import Decimal, InvalidOperation

    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"must be a decimal >= 0, not {value!r}")
    return amount


MAX_COUNT = 10**15  # a count an option takes: far inside both engines' 64-bit integers
MAX_DEMO_ACCOUNTS = 50_000  # memory and time grow with them: 1.3 GB and 3 minutes at 20,000 (2 cores)


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An option's whole number from `low` to `high`, or argparse's one-line error."""

    def parse(value: str) -> int:
        if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, not {value[:40]!r}")
        return int(value)

    return parse


_count, _positive, _demo_accounts = _whole(0, MAX_COUNT), _whole(1, MAX_COUNT), _whole(1, MAX_DEMO_ACCOUNTS)


def _window_hours(value: str) -> int:
    from backstop.core.adl_policy import HOUR_MS, MAX_WINDOW_MS

    return _whole(1, MAX_WINDOW_MS // HOUR_MS)(value)


class _OneLineErrors(argparse.ArgumentParser):
    """A usage error in one line that names the command and where its help is (argparse prints the usage first);
    every subcommand's parser is of this class too (add_subparsers takes the parent's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(parsed_by=self)  # the deepest command's parser: it names arguments no parser took

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="backstop",
        description="Event-sourced insurance-fund and ADL ledger for perpetual-futures venues.",
    )
    parser.add_argument("--version", action="version", version=f"backstop {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    replay = commands.add_parser("replay", help="replay a JSONL journal through the engine into an output dir")
    replay.add_argument("journal", metavar="INPUT.jsonl", nargs="?", help="journal file, one record per line")
    replay.add_argument("--from-postgres", metavar="DSN", action=DsnArgument,
                        help="replay the journal the service stored in PostgreSQL and check the stored head and state "
                             "hashes (the password from PGPASSWORD or PGPASSFILE, never here)")
    replay.add_argument("--from-kafka", metavar="BOOTSTRAP", help="replay the journal topic and check the head hash "
                                                                  "the output topics carry (BACKSTOP_TOPIC_PREFIX)")
    replay.add_argument("--out", type=_path, required=True, metavar="DIR", help="output directory (created if missing)")
    replay.add_argument("--strict", action="store_true", help="stop at the first bad record (exit 1)")
    replay.add_argument("--snapshot-every", type=_count, default=0, metavar="N",
                        help="write a snapshot of engine state every N applied events into DIR/snapshots")
    replay.add_argument("--from-snapshot", metavar="FILE",
                        help="start from a snapshot written by --snapshot-every and replay the rest")
    replay.add_argument("--check-conservation", action="store_true",
                        help="re-check that all ledger balances sum to zero after every event (the reference "
                             "engine) or every batch of lines (the compiled one)")
    replay.add_argument("--adl-quantiles", action=argparse.BooleanOptionalAction, default=None,
                        help="publish ADL quantiles and risk levels at each quantile point of event time into "
                             "adl-quantiles.jsonl, as the service does (default: off for a journal file, since it "
                             "makes a replay slower; on with --from-postgres / --from-kafka, as the service)")
    add_adl_policy_arguments(replay)
    add_engine_argument(replay)
    replay.set_defaults(handler=_cmd_replay)

    schemas = commands.add_parser("schemas", help="write (or --check) the JSON Schemas of the wire records")
    schemas.add_argument("action", choices=["write"], nargs="?", default="write")
    schemas.add_argument("--dir", default="schemas/json", help="target directory (default: schemas/json)")
    schemas.add_argument("--check", action="store_true", help="exit 1 if the files differ from the models")
    schemas.set_defaults(handler=_cmd_schemas)

    audit = commands.add_parser("audit", help="verify the integrity of a ledger")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="AUDIT_COMMAND", required=True)
    verify = audit_commands.add_parser(
        "verify", help="check hash chains, balances and conservation, and re-derive every record from the journal")
    verify.add_argument("out", metavar="DIR", nargs="?", help="a `backstop replay` output directory")
    verify.add_argument("--dsn", action=DsnArgument,
                        help="verify the service's PostgreSQL database instead (its journal included); the password "
                             "from PGPASSWORD or PGPASSFILE, never here")
    verify.add_argument("--anchor-key-file", metavar="FILE", action="append",
                        help="with --dsn: check the stored history against the checkpoints the service signed with "
                             "this key (BACKSTOP_ANCHOR_KEY_FILE); repeat it for the keys of earlier periods")
    verify.add_argument("--journal", metavar="INPUT.jsonl", help="the journal it came from: re-derive everything")
    add_engine_argument(verify)
    verify.set_defaults(handler=_cmd_audit_verify)

    serve = commands.add_parser("serve", help="run the service: Kafka in, PostgreSQL and Kafka out "
                                                 "(configured by BACKSTOP_* environment variables)")
    serve.set_defaults(handler=_cmd_serve)

    topics = commands.add_parser("topics", help="Kafka topics of the wire contract")
    topic_commands = topics.add_subparsers(dest="topics_command", metavar="TOPICS_COMMAND", required=True)
    create_topics = topic_commands.add_parser("create", help="create the input and output topics if missing")
    create_topics.set_defaults(handler=_cmd_topics_create)

    journal = commands.add_parser("journal", help="the journal the service stored")
    journal_commands = journal.add_subparsers(dest="journal_command", metavar="JOURNAL_COMMAND", required=True)
    export = journal_commands.add_parser("export", help="write the stored journal as a file `backstop replay` reads")
    export.add_argument("--out", type=_path, required=True, metavar="FILE.jsonl")
    export.add_argument("--dsn", action=DsnArgument, env="BACKSTOP_PG_DSN",
                        help="PostgreSQL DSN without a password (default: $BACKSTOP_PG_DSN)")
    export.set_defaults(handler=_cmd_journal_export)

    produce = commands.add_parser("produce", help="produce a journal file's records to the input topics")
    produce.add_argument("journal", metavar="INPUT.jsonl")
    produce.set_defaults(handler=_cmd_produce)

    tail = commands.add_parser("tail", help="print an output topic's records (JSON lines)")
    tail.add_argument("stream", choices=["adl-events", "fund-ledger", "journal", "dead-letter", "postings",
                                        "adl-quantiles"])
    tail.add_argument("--follow", "-f", action="store_true", help="keep waiting for new records")
    tail.set_defaults(handler=_cmd_tail)

    explain = commands.add_parser("explain", help="the causal chain behind a fund-ledger entry, an ADL event or a "
                                                  "liquidation, re-derived from the journal")
    explain.add_argument("id", help="fl-SEQ-N (fund ledger), adl-SEQ-N (ADL event), p-SEQ-N (posting), or a "
                                    "liquidation id")
    explain.add_argument("--journal", required=True, metavar="INPUT.jsonl")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    add_adl_policy_arguments(explain, metrics=False)  # by default the policy of the summary.json beside the journal
    explain.set_defaults(handler=_cmd_explain)

    statement = commands.add_parser("statement", help="a fund's or any ledger account's statement over a period "
                                                      "from a replay output dir")
    statement.add_argument("dir", metavar="DIR", help="a `backstop replay` output directory")
    whose = statement.add_mutually_exclusive_group(required=True)
    whose.add_argument("--fund", help="a fund id: its fund-ledger entries")
    whose.add_argument("--account", metavar="ACCOUNT", help="any account of the general ledger, as postings.jsonl "
                                                            "names it (wallet:<account>:<asset>, fund:<fund>, "
                                                            "settlement:<symbol>, fees:<asset>, external:<asset> ...)")
    statement.add_argument("--from", dest="period_from", metavar="TIME", help="ms since the epoch or ISO time (UTC)")
    statement.add_argument("--to", dest="period_to", metavar="TIME", help="exclusive; ms or ISO time")
    statement.add_argument("--format", choices=["csv", "json", "parquet"], default="csv")
    statement.add_argument("--out", type=_path, metavar="FILE", help="default: statement-<fund or account>.<format>")
    statement.set_defaults(handler=_cmd_statement)

    reconcile = commands.add_parser("reconcile", help="fund balances against the sum of their entries, by kind and "
                                                      "by symbol, and the general ledger's zero sum")
    reconcile.add_argument("dir", metavar="DIR", help="a `backstop replay` output directory")
    reconcile.set_defaults(handler=_cmd_reconcile)

    whatif = commands.add_parser("whatif", help="replay the same input under a baseline and an alternative "
                                                "parameter set, side by side")
    whatif.add_argument("journal", metavar="INPUT.jsonl")
    whatif.add_argument("--params", metavar="ALT.toml", help="[baseline] and [alternative] overrides (see docs)")
    whatif.add_argument("--policies", metavar="A,B,...",
                        help="replay once per ADL policy (queue, binance, pro_rata, capped_pro_rata, min_max_leverage, "
                             "socialized, bybit, okx) on the [baseline] scenario and compare their fairness")
    whatif.add_argument("--out", type=_path, required=True, metavar="DIR")
    whatif.add_argument("--report", action="store_true", help="also write report.html with baseline and alternative "
                                                              "charted on the same axes")
    add_engine_argument(whatif)
    whatif.set_defaults(handler=_cmd_whatif)

    demo = commands.add_parser("demo", help="a seeded cascade on the real BTCUSDT path of 10 Oct 2025, through "
                                            "simulation mode, with a report")
    demo.add_argument("--out", type=_path, default="out/demo", metavar="DIR")
    demo.add_argument("--seed", type=_count, default=2025, metavar="N",
                      help="the cascade's seed, a whole number >= 0 (default: %(default)s)")
    demo.add_argument("--accounts", type=_demo_accounts, default=3000,
                      help=f"accounts in the cascade, 1 to {MAX_DEMO_ACCOUNTS:,} (default: %(default)s)")
    demo.add_argument("--no-report", action="store_true", help="skip the HTML report and charts")
    comparison = demo.add_mutually_exclusive_group()
    comparison.add_argument("--policies", default="queue,pro_rata,capped_pro_rata,min_max_leverage,socialized",
                            metavar="A,B,...",
                            help="the ADL policies to compare on the same cascade (default: %(default)s)")
    comparison.add_argument("--no-policies", action="store_true", help="skip the ADL policy comparison")
    add_engine_argument(demo)
    demo.set_defaults(handler=_cmd_demo)

    db = commands.add_parser("db", help="PostgreSQL schema management")
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    migrate = db_commands.add_parser("migrate", help="apply pending schema migrations and create the service's login "
                                                     "role named by $BACKSTOP_PG_DSN (idempotent; run as the tables' "
                                                     "owner)")
    migrate.add_argument("--dsn", action=DsnArgument, env="BACKSTOP_PG_OWNER_DSN",
                         help="the tables' owner's DSN without a password (default: $BACKSTOP_PG_OWNER_DSN)")
    migrate.set_defaults(handler=_cmd_db_migrate)
    return parser


SIGPIPE_EXIT = 128 + 13  # the status a shell shows for a command ended by SIGPIPE
INTERRUPTED_EXIT = 128 + 2  # as a shell shows a command ended by SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    from backstop.entrypoints.interrupts import interrupts_held_in_imports

    with interrupts_held_in_imports(sigterm=True):  # SIGTERM as Ctrl-C: a command cleans up as after it
        try:
            return _main(argv)
        except KeyboardInterrupt:  # before the command was known
            print("backstop: interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.parsed_by.error(f"unrecognized arguments: {' '.join(unknown)}")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    raise_young_threshold()
    if handler is not _cmd_serve:
        for name in ("aiokafka", "kafka"):  # a tool says what failed in one line; the clients' logs would repeat it
            client_log = logging.getLogger(name)
            if not any(isinstance(h, logging.NullHandler) for h in client_log.handlers):
                client_log.addHandler(logging.NullHandler())
    if handler is _cmd_serve:  # it has its own shutdown on SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        result: int = handler(args)
    except BrokenPipeError:
        # the reader went away (`backstop explain ... | head`): stop quietly, as a command killed by SIGPIPE does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        return SIGPIPE_EXIT
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: an output directory or file being written was discarded on the way out (staged)
        print(f"{args.parsed_by.prog}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as error:
        setting = _bad_setting(error)
        if setting is not None:
            print(f"backstop {args.command}: {setting}", file=sys.stderr)
            return 2
        if not _interrupted(error):
            raise
        # the interrupt came inside a callback of C code, which turned it into an error of its own (orjson's
        # `default`: a TypeError caused by it)
        print(f"{args.parsed_by.prog}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    return result


def _interrupted(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `error`."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
