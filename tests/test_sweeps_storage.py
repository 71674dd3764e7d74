"""Where the study lives: a journal (cut short by a crash, damaged, a link) or a database every worker
opens (a real PostgreSQL server); its password never shown nor written, whatever it holds."""

import json
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sweeps_helpers import SEARCH, cli, space_file, started_sweep

from fashionlab.errors import ConfigError, FashionlabError, RunError
from fashionlab.sweeps import storage, sweep
from fashionlab.sweeps.storage import check_storage_url, open_storage, secrets_kept
from fashionlab.urls import masked, url_label


def test_a_database_password_is_never_printed(tmp_path, synthetic):
    assert url_label("postgresql://me:secret@db/fl") == "postgresql://***@db/fl"
    assert url_label("postgresql+psycopg://me:secret@db:5432/fl") == "postgresql+psycopg://***@db:5432/fl"
    assert url_label("postgresql://me@db/fl?password=secret") == "postgresql://***@db/fl?..."
    assert url_label("postgresql://me:p@ss/w?rd#@db/fl") == "postgresql://***@db/fl"  # not what a parser sees
    for mistyped in ("postgresql:/me:secret@db/fl", "secret.journal", "/dev/null", "me:secret@db"):
        with pytest.raises(ConfigError, match="must be a database URL") as e:
            sweep(space_file(tmp_path, SEARCH), tmp_path / "out", storage=mistyped, data=synthetic)
        assert "secret" not in str(e.value) and "null" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path, synthetic):
    with pytest.raises(RunError, match="cannot use the study storage postgresql://\\*\\*\\*@127.0.0.1:9/x") as e:
        sweep(space_file(tmp_path, SEARCH), tmp_path / "out", trials=2, storage="postgresql://me:pw@127.0.0.1:9/x",
              data=synthetic)
    assert "pw" not in str(e.value).replace("psycopg", "")
    assert not (tmp_path / "out").exists()  # refused: the folder made for it is gone


def test_a_journal_line_cut_short_by_a_crash_is_dropped_and_the_sweep_goes_on(tmp_path, synthetic):
    space = space_file(tmp_path, SEARCH)
    out = tmp_path / "out"
    sweep(space, out, trials=2, sampler="random", pruner="none", data=synthetic)
    journal = out / "study.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "user_at')  # a write cut short
    again = sweep(space, out, trials=3, sampler="random", pruner="none", data=synthetic)
    assert list(again.trials["state"]) == ["complete"] * 3
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().endswith(b"\n")


def test_a_damaged_journal_is_named_in_one_line(tmp_path, synthetic):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"study": "space", "storage": str((out / "study.journal").resolve())}))
    (out / "study.journal").write_text('{"op_code": 0, "worker_id": "x", "study_name": "space", "directions": [1]}\n'
                                       '{"op_code": 4, "worker_id": "x"\n')
    with pytest.raises(RunError, match=r"study.journal.*damaged.*move.* away"):
        sweep(space_file(tmp_path, SEARCH), out, trials=2, data=synthetic)


def test_a_journal_that_is_a_link_is_never_written_through(tmp_path, synthetic):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("victim content\n")
    (out / "study.journal").symlink_to(victim)
    with pytest.raises(RunError, match="study.journal is a symbolic link, not a regular file; .* move it away"):
        sweep(space_file(tmp_path, SEARCH), out, trials=1, force=True, data=synthetic)
    assert victim.read_text() == "victim content\n" and sorted(p.name for p in out.iterdir()) == ["study.journal"]


def test_a_journal_operation_optuna_cannot_replay_is_named(tmp_path, synthetic):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    with open(journal, "a") as file:  # a trial attribute operation with two attributes: an AssertionError
        file.write('{"op_code":4,"worker_id":"x","study_id":0,"datetime_start":"2026-12-07T05:05:20.000000+00:00"}\n'
                   '{"op_code":8,"worker_id":"x","trial_id":0,"user_attr":{"a":1,"b":2}}\n')
    with pytest.raises(RunError, match=r"is damaged \(an operation Optuna cannot replay: AssertionError\); move it"):
        sweep(space_path, out, trials=1, sampler="random", pruner="none", data=synthetic)


def test_a_journal_whose_last_line_nests_too_deeply_is_damaged(tmp_path, synthetic):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    with open(journal, "a") as file:
        file.write('{"op_code":2,"worker_id":"e","study_id":0,"user_attr":{"j":' + "[" * 100_000 + "]" * 100_000
                   + "}}\n")
    with pytest.raises(RunError, match="is damaged \\(its last line: maximum recursion depth exceeded"):
        sweep(space_path, out, trials=1, sampler="random", pruner="none", data=synthetic)


# Passwords a URL parser misreads (the last one's end becomes the host the driver names), the first one's
# every four characters holding one that no report or base64 image does.
NASTY = ["a@b/c?d#e:f%g h€i", "x:y@z%40w#v?u/t s", "ü@ß/€?é#ñ:ø%2Få@", "qx7@zv9kq2"]


def pieces(secret: str) -> set[str]:
    """The password and every piece of it four characters long (longer pieces hold one)."""
    return {secret[i:i + 4] for i in range(len(secret) - 3)} | {secret}


def assert_unsaid(text: str, password: str) -> None:
    shown = [p for secret in {password, unquote(password)} for p in pieces(secret) if p in text]
    assert not shown, (shown, text)


@settings(max_examples=300, deadline=None)
@given(password=st.text(st.sampled_from("@/?#:%&=+; ") | st.characters(exclude_characters="*",
                                                                         exclude_categories=["Cs"]),
                        min_size=4, max_size=30),
       encoded=st.booleans(), query=st.booleans())
def test_no_piece_of_a_password_is_ever_shown_whatever_it_holds(password, encoded, query):
    written = quote(password, safe="") if encoded else password
    url = (f"postgresql+psycopg://me:{written}@db-host:5432/fl" if not query else
           f"postgresql://me@db-host/fl?sslmode=require&password={written}")
    message = f"connection to {url} failed: password {written} for {password} ({password[1:-1]}) was refused"
    for said in (url_label(url), masked(message, url)):
        assert_unsaid(said, password)
        assert_unsaid(said, written)


def test_only_the_secrets_of_a_query_are_masked_not_the_host_or_port_it_names():
    url = "postgresql://me@db-host/fl?password=s3cr&t;x&host=db-host&port=5432&sslmode=require"
    message = 'connection to server at "db-host", port 5432 failed: password s3cr&t;x refused (sslmode require)'
    assert masked(message, url) == 'connection to server at "db-host", port 5432 failed: password *** refused ' \
                                   '(sslmode require)'


def test_an_error_leaving_the_sweep_says_nothing_of_the_password():
    url = "postgresql://me:qx7@zv9kq2@db/fl"
    with pytest.raises(RuntimeError) as e, secrets_kept(url):  # a bug, or a driver's error, quoting it
        raise ValueError(f"could not use {url} (host 'zv9kq2@db')")
    assert str(e.value) == "ValueError: could not use postgresql://me:***@db/fl (host '***@db')"
    with pytest.raises(RunError) as e, secrets_kept(url):
        raise RunError("`storage` qx7@zv9kq2 failed", terms=["storage"])
    assert str(e.value) == "`storage` *** failed" and e.value.terms == ("storage",)
    with pytest.raises(ValueError, match="nothing secret"), secrets_kept(url):
        raise ValueError("nothing secret")


def test_a_password_is_never_shown_nor_written_whatever_it_holds(tmp_path, synthetic, postgres, monkeypatch):
    monkeypatch.setattr(storage, "STORAGE_ATTEMPTS", 1)
    space = space_file(tmp_path, SEARCH, epochs=2)
    for password in NASTY:  # a server that is not there: what the driver says, of the URL as it read it
        for written in (password, quote(password, safe="")):
            url = f"postgresql://me:{written}@127.0.0.1:9/x"
            with pytest.raises(FashionlabError) as refused:
                sweep(space, tmp_path / "refused", trials=1, storage=url, data=synthetic)
            assert_unsaid(str(refused.value), password)
            assert not (tmp_path / "refused").exists()
            with pytest.raises(RunError) as refused:  # as a worker opens it
                open_storage(url)
            assert_unsaid(str(refused.value), password)
    password, lines = NASTY[0], []  # a server that lets anyone in: every line and file of a whole sweep
    url = postgres.replace("postgresql://fashionlab@", f"postgresql://fashionlab:{quote(password, safe='')}@")
    result = sweep(space, tmp_path / "out", trials=1, storage=url, study="nasty", sampler="random", pruner="none",
                   data=synthetic, progress=lines.append)
    assert result.best is not None and result.tests
    assert_unsaid("\n".join(lines) + result.summary, password)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix not in (".keras", ".png")]
    assert {"sweep.json", "trials.csv", "summary.md", "report.html", "run.json", "metrics.json"} <= \
        {p.name for p in written}
    for path in written:
        assert_unsaid(path.read_bytes().decode("utf-8", "replace"), password)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared",
                                 "sqlite:///study.db?mode=memory&cache=shared", "sqlite://host/study.db",
                                 "mongodb://me:secret@host/db", "redis://host:6379/0"])
def test_a_storage_the_workers_cannot_share_is_refused_before_anything_is_written(tmp_path, url):
    result = cli(str(space_file(tmp_path, SEARCH)), "--storage", url, "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("fashionlab: error: --storage ") and "secret" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_database_every_worker_can_open_is_accepted(tmp_path, synthetic):
    for url in ("postgresql://me@db/fl", "postgres://db/fl", "postgresql+psycopg://me:pw@db:5432/fl",
                "mysql://me@db/fl", "mysql+pymysql://me:pw@db/fl", "sqlite:///study.db", "sqlite:////srv/study.db"):
        check_storage_url(url)
    result = sweep(space_file(tmp_path, SEARCH, epochs=2), tmp_path / "out", trials=1, sampler="random",
                   pruner="none", storage=f"sqlite:///{tmp_path / 'study.db'}", data=synthetic)
    assert list(result.trials["state"]) == ["complete"] and (tmp_path / "study.db").is_file()
