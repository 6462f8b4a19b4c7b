"""Signed checkpoints and the checks over them (backstop.core.anchor), the service role's SCRAM verifier, and the
command line's refusal of a DSN that carries a password."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from pathlib import Path

import pytest

from backstop.adapters.postgres.roles import _saslprep, scram_verifier
from backstop.core.anchor import (
    JOURNAL_GENESIS,
    Adoption,
    AnchorKey,
    AnchorKeyError,
    Checkpoint,
    JournalRowText,
    SignedCheckpoint,
    check_heads,
    check_journal,
    check_signatures,
    journal_step,
)
from backstop.core.hashing import GENESIS_HASH, canonical_json, combine
from backstop.entrypoints.cli import build_parser, main
from backstop.settings import Settings

KEY = AnchorKey.from_bytes(b"k" * 40 + b"\n", source="key")
OTHER = AnchorKey.from_bytes(b"o" * 40, source="other")


def journal(count: int) -> list[JournalRowText]:
    rows = []
    for seq in range(1, count + 1):
        payload = b'{"seq":%d}' % seq
        rows.append((seq, "backstop.fills", 0, seq + 100, payload, hashlib.sha256(payload).hexdigest()))
    return rows


def digests(rows: list[JournalRowText]) -> dict[int, str]:
    digest, out = JOURNAL_GENESIS, {}
    for seq, topic, partition, offset, _, payload_hash in rows:
        digest = out[seq] = journal_step(digest, seq, topic, partition, offset, payload_hash)
    return out


def ledger(seqs: list[int]) -> list[dict[str, object]]:
    return [{"seq": seq, "hash": hashlib.sha256(b"%d:%d" % (n, seq)).hexdigest()} for n, seq in enumerate(seqs)]


def checkpoints(rows: list[JournalRowText], at: list[int], entries: list[dict[str, object]],
                key: AnchorKey = KEY) -> list[SignedCheckpoint]:
    by_seq, signed, previous = digests(rows), [], 0
    for seq in at:
        count = sum(1 for e in entries if int(str(e["seq"])) <= seq)
        head = str(entries[count - 1]["hash"]) if count else GENESIS_HASH
        signed.append(key.sign(Checkpoint(seq, previous, 0, by_seq[seq], combine(head, GENESIS_HASH), head, count,
                                          GENESIS_HASH, 0)))
        previous = seq
    return signed


def test_a_checkpoint_verifies_with_its_key_only_and_unaltered() -> None:
    signed = checkpoints(journal(3), [3], [])[0]
    assert KEY.verifies(signed)
    assert not OTHER.verifies(signed)
    assert not OTHER.verifies(dataclasses.replace(signed, key_id=OTHER.key_id))
    for name, value in (("seq", 4), ("prev_seq", 1), ("adopted_seq", 3), ("journal_digest", "0" * 64),
                        ("ledger_entries", 1), ("adl_events", 1), ("ledger_head", "1" * 64)):
        assert not KEY.verifies(dataclasses.replace(signed, checkpoint=dataclasses.replace(signed.checkpoint,
                                                                                            **{name: value}))), name


def test_the_key_never_shows_and_a_short_one_is_refused() -> None:
    assert "k" * 10 not in repr(KEY) and "k" * 10 not in KEY.key_id
    assert KEY.key_id == AnchorKey.from_bytes(b"  " + b"k" * 40, source="again").key_id  # whitespace around it ignored
    with pytest.raises(AnchorKeyError, match=r"the anchor key in short has 31 bytes, fewer than 32 \(make one with: "
                                             r"openssl rand -hex 32 > short\)"):
        AnchorKey.from_bytes(b"x" * 31 + b"\n", source="short")


def test_an_adoption_names_a_seq_and_a_journal_digest() -> None:
    assert Adoption.parse(f"14:{'ab' * 32}") == Adoption(14, "ab" * 32)
    for bad in ("14", f"x:{'ab' * 32}", "14:abc", f"14:{'AB' * 32}", f"-1:{'ab' * 32}"):
        with pytest.raises(AnchorKeyError, match="BACKSTOP_ANCHOR_ADOPT is"):
            Adoption.parse(bad)


def test_an_untouched_journal_matches_every_checkpoint() -> None:
    rows = journal(10)
    problem, last, digest = check_journal(rows, checkpoints(rows, [3, 7, 10], []))
    assert (problem, last, digest) == (None, 10, digests(rows)[10])


@pytest.mark.parametrize(("changed", "reason"), [
    (5, "journal rewritten between seq 4 and seq 7: the stored rows do not give the journal digest signed in the "
        "checkpoint at seq 7 (the checkpoint at seq 3 matches)"),
    (2, "journal rewritten between seq 1 and seq 3: the stored rows do not give the journal digest signed in the "
        "checkpoint at seq 3"),
    (8, "journal rewritten at seq 8: the stored rows do not give the journal digest signed in the checkpoint at "
        "seq 8 (the checkpoint at seq 7 matches)"),
])
def test_a_rewritten_journal_row_is_placed_between_two_checkpoints(changed: int, reason: str) -> None:
    rows = journal(10)
    signed = checkpoints(rows, [3, 7, 8, 10], [])
    payload = b'{"seq":%d,"forged":true}' % changed
    seq, topic, partition, offset, _, _ = rows[changed - 1]
    rows[changed - 1] = (seq, topic, partition, offset, payload, hashlib.sha256(payload).hexdigest())
    assert check_journal(rows, signed)[0] == reason


def test_gaps_altered_payloads_and_a_truncated_journal_are_named() -> None:
    rows = journal(5)
    signed = checkpoints(rows, [5], [])
    assert check_journal(rows[:2] + rows[3:], signed)[0] == "journal: seq 4 follows seq 2: journal rows were removed"
    altered = [*rows[:3], (*rows[3][:4], b'{"seq":99}', rows[3][5]), rows[4]]
    assert check_journal(altered, signed)[0] == "journal seq 4: its payload_hash is not the hash of its payload"
    assert check_journal(rows[:4], signed)[0] == ("checkpoint at seq 5: the journal ends at seq 4: journal rows were "
                                                  "removed")


def test_removed_altered_and_foreign_checkpoints_are_named() -> None:
    rows = journal(6)
    signed = checkpoints(rows, [2, 4, 6], [])
    assert check_signatures(signed, [KEY]) is None
    assert check_signatures(signed, [OTHER, KEY]) is None  # the keys of several periods
    assert check_signatures([signed[0], signed[2]], [KEY]) == (
        "checkpoint at seq 6: it follows the checkpoint at seq 4, but the one before it is at seq 2: checkpoints were "
        "removed")
    forged = dataclasses.replace(signed[1], checkpoint=dataclasses.replace(signed[1].checkpoint, ledger_entries=9))
    assert check_signatures([signed[0], forged, signed[2]], [KEY]) == (
        "checkpoint at seq 4: its signature does not verify: the checkpoint was altered")
    assert check_signatures(signed, [OTHER]) == (
        f"checkpoint at seq 2: signed with key id {KEY.key_id}, which no given anchor key has (given: "
        f"{OTHER.key_id})")
    adopted = KEY.sign(Checkpoint(6, 0, 4, digests(rows)[6], combine(GENESIS_HASH, GENESIS_HASH), GENESIS_HASH, 0,
                                  GENESIS_HASH, 0))
    assert check_signatures([signed[0], adopted], [KEY]) is None  # an adoption starts the chain again


def test_a_rewritten_ledger_is_placed_between_two_checkpoints() -> None:
    rows, entries = journal(9), ledger([2, 5, 5, 8])
    signed = checkpoints(rows, [3, 6, 9], entries)
    assert check_heads(signed, entries, []) is None
    forged = [*entries[:2], {"seq": 5, "hash": "f" * 64}, entries[3]]
    assert check_heads(signed, forged, []) == (
        f"fund ledger rewritten between seq 4 and seq 6: up to seq 6 the stored records are 3 with head "
        f"{'f' * 16}, the checkpoint signed 3 with head {str(entries[2]['hash'])[:16]}")
    assert check_heads(signed, entries[:3], []) is not None  # the last entry removed



def with_postings(signed: list[SignedCheckpoint], postings: list[dict[str, object]]) -> list[SignedCheckpoint]:
    """The same checkpoints signed as the service signs them since migration 0009: with the postings' head and count."""
    out = []
    for each in signed:
        seq = each.checkpoint.seq
        count = sum(1 for p in postings if int(str(p["seq"])) <= seq)
        head = str(postings[count - 1]["hash"]) if count else GENESIS_HASH
        out.append(KEY.sign(dataclasses.replace(each.checkpoint, postings_head=head, postings_count=count)))
    return out


def test_a_checkpoint_signed_before_migration_0009_keeps_its_message_and_verifies() -> None:
    """A checkpoint without the postings is the message a service before 0009 signed, field for field, so its MAC
    verifies as it was written; with them, the message covers both and neither can be altered or dropped."""
    old = checkpoints(journal(3), [3], [])[0]
    checkpoint = old.checkpoint
    before_0009 = b"backstop checkpoint v1\n" + canonical_json({
        "seq": 3, "prev_seq": 0, "adopted_seq": 0, "journal_digest": checkpoint.journal_digest,
        "head_hash": checkpoint.head_hash, "ledger_head": GENESIS_HASH, "ledger_entries": 0, "adl_head": GENESIS_HASH,
        "adl_events": 0})
    assert checkpoint.message() == before_0009
    assert old.mac == hmac.new(b"k" * 40, before_0009, hashlib.sha256).hexdigest()
    signed = with_postings([old], ledger([1, 2]))[0]
    assert KEY.verifies(signed) and signed.mac != old.mac
    for name, value in (("postings_head", "1" * 64), ("postings_count", 1), ("postings_head", None),
                        ("postings_count", None)):
        assert not KEY.verifies(dataclasses.replace(signed, checkpoint=dataclasses.replace(signed.checkpoint,
                                                                                            **{name: value}))), name
    assert not KEY.verifies(dataclasses.replace(signed, checkpoint=dataclasses.replace(
        signed.checkpoint, postings_head=None, postings_count=None)))  # stripped back to the old form


def test_rewritten_postings_are_placed_between_two_checkpoints() -> None:
    rows, postings = journal(9), ledger([1, 2, 5, 5, 8])
    signed = with_postings(checkpoints(rows, [3, 6, 9], []), postings)
    assert check_signatures(signed, [KEY]) is None
    assert check_heads(signed, [], [], postings) is None
    forged = [*postings[:3], {"seq": 5, "hash": "f" * 64}, postings[4]]
    assert check_heads(signed, [], [], forged) == (
        f"postings rewritten between seq 4 and seq 6: up to seq 6 the stored records are 4 with head {'f' * 16}, the "
        f"checkpoint signed 4 with head {str(postings[3]['hash'])[:16]}")
    assert check_heads(signed, [], [], postings[:4]) == (
        f"postings rewritten between seq 7 and seq 9: up to seq 9 the stored records are 4 with head "
        f"{str(postings[3]['hash'])[:16]}, the checkpoint signed 5 with head {str(postings[4]['hash'])[:16]}")
    # checkpoints signed before 0009 carry no postings: only the ones signed since are checked
    upgraded = [*checkpoints(rows, [3, 6], []), *with_postings(checkpoints(rows, [3, 6, 9], []), postings)[2:]]
    assert check_heads(upgraded, [], [], postings) is None
    assert check_heads(upgraded, [], [], postings[:4]) is not None

def test_the_scram_verifier_is_the_one_of_rfc_7677() -> None:
    """RFC 7677's exchange (user "user", password "pencil"): the server's signature and the client's proof follow
    from the verifier's keys, so PostgreSQL accepts that password against it."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_verifier("pencil", salt=salt, iterations=4096)
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256" and rest.startswith("4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    stored_key, server_key = (base64.b64decode(x) for x in rest.split("$")[1].split(":"))
    auth_message = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_key = bytes(a ^ b for a, b in zip(proof, hmac.new(stored_key, auth_message, hashlib.sha256).digest(),
                                             strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key


def test_saslprep_maps_as_rfc_4013_and_keeps_what_it_cannot_prepare() -> None:
    """As PostgreSQL and asyncpg prepare a password before SCRAM: a verifier made otherwise would never match."""
    assert _saslprep("I\u00adX") == b"IX"  # the soft hyphen maps to nothing
    assert _saslprep("\u2168") == b"IX"  # NFKC
    assert _saslprep("a\u00a0b") == b"a b"  # a non-ASCII space maps to a space
    assert _saslprep("a\u0007b") == b"a\x07b"  # ASCII as it is
    assert _saslprep("\u0627\u2168") == "\u0627\u2168".encode()  # right-to-left beside "IX": the raw password


@pytest.mark.parametrize("argv", [
    ["db", "migrate", "--dsn", "postgresql://owner:s3cr3t@db.internal/backstop"],
    ["db", "migrate", "--dsn=postgresql://owner:s3cr3t@db.internal/backstop"],
    ["audit", "verify", "--dsn", "postgresql://auditor@db.internal/backstop?password=s3cr3t"],
    ["replay", "--from-postgres", "postgres://u:s3cr3t@h/db", "--out", "x"],
    ["journal", "export", "--out", "x.jsonl", "--dsn", "host=h user=u password=s3cr3t"],
])
def test_a_dsn_with_a_password_is_refused_on_the_command_line(argv: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and "s3cr3t" not in captured.err
    assert " carries a password, which a command line shows to every user of this machine: give " in captured.err
    assert "in PGPASSWORD or a password file (PGPASSFILE)" in captured.err
    if argv[0] == "db":
        assert captured.err.startswith("backstop db migrate: refused: --dsn carries a password")
        assert "give the DSN in BACKSTOP_PG_OWNER_DSN or BACKSTOP_PG_OWNER_DSN_FILE, or the password" in captured.err


def test_a_dsn_without_a_password_is_taken() -> None:
    args = build_parser().parse_args(["audit", "verify", "--dsn", "postgresql://auditor@db.internal/backstop",
                                      "--anchor-key-file", "a.key", "--anchor-key-file", "b.key"])
    assert args.dsn == "postgresql://auditor@db.internal/backstop"
    assert args.anchor_key_file == ["a.key", "b.key"]


def test_the_settings_separate_the_service_from_the_owner_and_read_the_key_from_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BACKSTOP_PG_DSN", "BACKSTOP_PG_DSN_FILE", "BACKSTOP_PG_OWNER_DSN", "BACKSTOP_PG_OWNER_DSN_FILE",
                 "BACKSTOP_ANCHOR_KEY_FILE", "BACKSTOP_ANCHOR_ADOPT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.dsn() == "postgresql://backstop_svc@127.0.0.1:5432/backstop"
    assert settings.owner_dsn() == "postgresql://backstop@127.0.0.1:5432/backstop"
    assert settings.anchor() is None

    owner_file, key_file = tmp_path / "owner.dsn", tmp_path / "anchor.key"
    owner_file.write_text("postgresql://owner:s3cr3t@db/backstop\n")
    key_file.write_text("k" * 40 + "\n")
    monkeypatch.setenv("BACKSTOP_PG_OWNER_DSN_FILE", str(owner_file))
    monkeypatch.setenv("BACKSTOP_ANCHOR_KEY_FILE", str(key_file))
    monkeypatch.setenv("BACKSTOP_ANCHOR_ADOPT", f"7:{'cd' * 32}")
    settings = Settings()
    assert settings.owner_dsn() == "postgresql://owner:s3cr3t@db/backstop"
    assert "s3cr3t" not in repr(settings)
    anchor = settings.anchor()
    assert anchor is not None and anchor.key == KEY and anchor.adopt == Adoption(7, "cd" * 32)

    missing = Settings(anchor_key_file=tmp_path / "missing.key")
    with pytest.raises(AnchorKeyError, match=r"^cannot read the anchor key \(BACKSTOP_ANCHOR_KEY_FILE\): "):
        missing.anchor()
