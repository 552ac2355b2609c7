"""The command line, run as a real process against a real SQLite file.

Each test calls the installed ``chargegrid`` console script with ``--database-url`` pointing at a
file in ``tmp_path`` and looks at the exit status, the output and the database itself (read with
the standard library's sqlite3, independently of chargegrid's store).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CHARGEGRID = Path(sys.executable).with_name("chargegrid")


class Cli:
    """Runs ``chargegrid`` with a clean environment in a scratch directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db_file = tmp_path / "cli.db"
        self.url = f"sqlite+aiosqlite:///{self.db_file}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEGRID_")}
        self.env["CHARGEGRID_AUTH_KEY_HASH_ITERATIONS"] = "1000"

    def run(
        self, *args: str, db: bool = True, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        command = [str(CHARGEGRID), *args]
        if db:
            command += ["--database-url", self.url]
        return subprocess.run(
            command,
            cwd=self.tmp_path,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, **kwargs: object) -> str:
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == 0, f"{args}: rc={result.returncode} {result.stderr}"
        return result.stdout

    def fails(self, *args: str, **kwargs: object) -> str:
        """Run a command that must fail; its error output."""
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode != 0, f"{args} succeeded: {result.stdout}"
        assert "Traceback" not in result.stderr, result.stderr
        return result.stderr

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db_file) as connection:
            return connection.execute(sql).fetchall()

    def identities(self) -> list[str]:
        return [str(r[0]) for r in self.query("SELECT identity FROM charge_points ORDER BY 1")]

    def write(self, name: str, content: str) -> Path:
        path = self.tmp_path / name
        path.write_text(content, encoding="utf-8")
        return path


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database migrated by ``chargegrid migrate``, copied for each test (saves a process)."""
    template = Cli(tmp_path_factory.mktemp("template"))
    template.ok("migrate")
    return template.db_file


@pytest.fixture
def migrated(cli: Cli, migrated_template: Path) -> Cli:
    for suffix in ("", "-wal", "-shm"):
        source = migrated_template.with_name(migrated_template.name + suffix)
        if source.exists():
            shutil.copyfile(source, cli.db_file.with_name(cli.db_file.name + suffix))
    return cli


# --- migrate -------------------------------------------------------------------------------------


def test_migrate_creates_the_schema_and_is_idempotent(cli: Cli) -> None:
    assert "up to date" in cli.ok("migrate")
    tables = {r[0] for r in cli.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"charge_points", "id_tags", "transactions", "meter_values", "events"} <= tables
    assert "up to date" in cli.ok("migrate")


def test_version() -> None:
    result = subprocess.run(
        [str(CHARGEGRID), "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "chargegrid" in result.stdout


# --- charge-points -------------------------------------------------------------------------------


def test_charge_points_add_list_update_remove(migrated: Cli) -> None:
    cli = migrated
    assert "added charge point CP-A" in cli.ok("charge-points", "add", "CP-A")
    cli.ok(
        "charge-points",
        "add",
        "CP-B",
        "--security-profile",
        "1",
        "--auth-key",
        "0123456789abcdef0123",
        "--registration",
        "Pending",
    )
    listing = cli.ok("charge-points", "list")
    lines = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert lines["CP-A"][:4] == ["CP-A", "0", "Accepted", "no"]
    assert lines["CP-B"][:4] == ["CP-B", "1", "Pending", "no"]

    # The key is stored as a salted hash, never as itself.
    (key_hash,) = cli.query("SELECT auth_key_hash FROM charge_points WHERE identity = 'CP-B'")[0]
    assert str(key_hash).startswith("pbkdf2_sha256$")
    assert "0123456789abcdef0123" not in str(key_hash)

    assert "updated charge point CP-A" in cli.ok(
        "charge-points", "update", "CP-A", "--registration", "Rejected"
    )
    cli.ok("charge-points", "update", "CP-B", "--security-profile", "2")
    lines = {
        line.split()[0]: line.split() for line in cli.ok("charge-points", "list").splitlines()[1:]
    }
    assert lines["CP-A"][2] == "Rejected"
    assert lines["CP-B"][1] == "2"

    assert "removed charge point CP-A" in cli.ok("charge-points", "remove", "CP-A")
    assert cli.identities() == ["CP-B"]
    assert "CP-A" not in cli.ok("charge-points", "list")


def test_charge_points_add_works_without_a_prior_migrate(cli: Cli) -> None:
    cli.ok("charge-points", "add", "CP1")
    assert cli.identities() == ["CP1"]


def test_charge_points_add_twice_is_an_error(migrated: Cli) -> None:
    migrated.ok("charge-points", "add", "CP1")
    assert "already exists" in migrated.fails("charge-points", "add", "CP1")
    assert migrated.identities() == ["CP1"]


def test_charge_points_add_profile_1_needs_a_key(migrated: Cli) -> None:
    error = migrated.fails("charge-points", "add", "CP1", "--security-profile", "1")
    assert "auth key" in error
    assert migrated.identities() == []


@pytest.mark.parametrize("key", ["short", "x" * 15, "y" * 41])
def test_charge_points_add_rejects_keys_of_the_wrong_length(migrated: Cli, key: str) -> None:
    error = migrated.fails(
        "charge-points", "add", "CP1", "--security-profile", "1", "--auth-key", key
    )
    assert "16 to 40" in error
    assert migrated.identities() == []


def test_charge_points_add_rejects_a_bad_identity(migrated: Cli) -> None:
    assert "invalid charge point identity" in migrated.fails("charge-points", "add", "a/b")


def test_charge_points_update_and_remove_unknown(migrated: Cli) -> None:
    assert "no charge point" in migrated.fails(
        "charge-points", "update", "NOPE", "--registration", "Pending"
    )
    assert "no charge point" in migrated.fails("charge-points", "remove", "NOPE")


def test_charge_points_add_profile_3_needs_no_key(migrated: Cli) -> None:
    """Security Profile 3: the client certificate is the credential (gateway/client_cert.py)."""
    migrated.ok("charge-points", "add", "CP3", "--security-profile", "3")
    assert migrated.query(
        "SELECT security_profile, auth_key_hash FROM charge_points WHERE identity = 'CP3'"
    ) == [(3, None)]
    assert "0<=x<=3" in migrated.fails("charge-points", "add", "CP4", "--security-profile", "4")


def test_charge_points_update_to_profile_1_without_any_key_is_an_error(migrated: Cli) -> None:
    migrated.ok("charge-points", "add", "CP1")
    assert "auth key" in migrated.fails("charge-points", "update", "CP1", "--security-profile", "1")
    assert migrated.query("SELECT security_profile FROM charge_points") == [(0,)]


def test_charge_points_import(migrated: Cli) -> None:
    csv_file = migrated.write(
        "cps.csv",
        "identity,auth_key,security_profile\nIMP1,,\nIMP2,abcdefghijklmnop,1\nIMP3,,0\n",
    )
    assert "imported 3 charge points, skipped 0" in migrated.ok(
        "charge-points", "import", str(csv_file)
    )
    assert migrated.identities() == ["IMP1", "IMP2", "IMP3"]
    assert migrated.query(
        "SELECT identity, security_profile, auth_key_hash IS NOT NULL FROM charge_points "
        "ORDER BY identity"
    ) == [("IMP1", 0, 0), ("IMP2", 1, 1), ("IMP3", 0, 0)]
    listing = migrated.ok("charge-points", "list")
    assert all(identity in listing for identity in ("IMP1", "IMP2", "IMP3"))


def test_charge_points_import_identity_only_header_and_bom(migrated: Cli) -> None:
    csv_file = migrated.tmp_path / "bom.csv"
    csv_file.write_bytes("\ufeffidentity\r\nB1\r\nB2\r\n".encode())
    migrated.ok("charge-points", "import", str(csv_file))
    assert migrated.identities() == ["B1", "B2"]


def test_charge_points_import_bad_row_adds_nothing_and_names_the_line(migrated: Cli) -> None:
    migrated.ok("charge-points", "add", "EXISTING")
    csv_file = migrated.write(
        "bad.csv",
        "identity,auth_key,security_profile\n"
        "NEW1,,0\n"
        "NEW2,,0\n"
        "NEW3,,1\n"  # profile 1 without a key: line 4
        "NEW4,,0\n",
    )
    error = migrated.fails("charge-points", "import", str(csv_file))
    assert "line 4" in error
    assert "auth key" in error
    assert migrated.identities() == ["EXISTING"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("X2,,7", "security profile"),
        ("X2,,one", "security_profile"),
        ("X2,short,1", "16 to 40"),
        (",,0", "identity"),
    ],
)
def test_charge_points_import_bad_values(migrated: Cli, row: str, message: str) -> None:
    csv_file = migrated.write("bad.csv", f"identity,auth_key,security_profile\nX1,,0\n{row}\n")
    error = migrated.fails("charge-points", "import", str(csv_file))
    assert "line 3" in error
    assert message in error
    assert migrated.identities() == []


def test_charge_points_import_existing_fails_without_skip_existing(migrated: Cli) -> None:
    migrated.ok("charge-points", "add", "OLD")
    csv_file = migrated.write("cps.csv", "identity\nNEW1\nOLD\nNEW2\n")
    error = migrated.fails("charge-points", "import", str(csv_file))
    assert "line 3" in error
    assert "already exists" in error
    assert migrated.identities() == ["OLD"]


def test_charge_points_import_skip_existing(migrated: Cli) -> None:
    migrated.ok("charge-points", "add", "OLD", "--registration", "Pending")
    csv_file = migrated.write(
        "cps.csv", "identity,auth_key,security_profile\nNEW1,,0\nOLD,0123456789abcdef,1\nNEW2,,\n"
    )
    output = migrated.ok("charge-points", "import", str(csv_file), "--skip-existing")
    assert "imported 2 charge points, skipped 1" in output
    assert migrated.identities() == ["NEW1", "NEW2", "OLD"]
    # The existing charge point is left as it was.
    assert migrated.query(
        "SELECT security_profile, registration_status, auth_key_hash FROM charge_points "
        "WHERE identity = 'OLD'"
    ) == [(0, "Pending", None)]


def test_charge_points_import_unknown_column(migrated: Cli) -> None:
    csv_file = migrated.write("cps.csv", "identity,colour\nC1,red\n")
    error = migrated.fails("charge-points", "import", str(csv_file))
    assert "unknown CSV columns: colour" in error
    assert migrated.identities() == []


def test_charge_points_import_without_identity_header(migrated: Cli) -> None:
    csv_file = migrated.write("cps.csv", "name\nC1\n")
    assert "header" in migrated.fails("charge-points", "import", str(csv_file))
    assert migrated.identities() == []


def test_charge_points_import_duplicate_in_file(migrated: Cli) -> None:
    csv_file = migrated.write("cps.csv", "identity\nD1\nD2\nD1\n")
    error = migrated.fails("charge-points", "import", str(csv_file))
    assert "line 4" in error
    assert "duplicate identity 'D1'" in error
    assert migrated.identities() == []
    # --skip-existing does not excuse a duplicate inside the file either.
    error = migrated.fails("charge-points", "import", str(csv_file), "--skip-existing")
    assert "duplicate" in error
    assert migrated.identities() == []


def test_charge_points_import_missing_file(migrated: Cli) -> None:
    error = migrated.fails("charge-points", "import", str(migrated.tmp_path / "nope.csv"))
    assert "nope.csv" in error


# --- id-tags -------------------------------------------------------------------------------------


def test_id_tags_add_list_remove(migrated: Cli) -> None:
    cli = migrated
    assert "added id tag TAG1" in cli.ok("id-tags", "add", "TAG1")
    cli.ok("id-tags", "add", "PARENT")
    cli.ok(
        "id-tags",
        "add",
        "TAG2",
        "--status",
        "Blocked",
        "--expiry",
        "2030-01-01T00:00:00+02:00",
        "--parent",
        "PARENT",
    )
    cli.ok("id-tags", "add", "T" * 20)
    listing = cli.ok("id-tags", "list")
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows["TAG1"] == ["TAG1", "Accepted", "-", "-"]
    # The expiry is shown in UTC.
    assert rows["TAG2"] == ["TAG2", "Blocked", "2029-12-31T22:00:00.000Z", "PARENT"]
    assert "T" * 20 in rows

    assert "removed id tag TAG1" in cli.ok("id-tags", "remove", "TAG1")
    assert "TAG1" not in cli.ok("id-tags", "list").split()
    assert "no id tag" in cli.fails("id-tags", "remove", "TAG1")


def test_id_tags_add_twice_is_an_error(migrated: Cli) -> None:
    migrated.ok("id-tags", "add", "TAG1")
    assert "already exists" in migrated.fails("id-tags", "add", "TAG1")


def test_id_tags_bad_status(migrated: Cli) -> None:
    error = migrated.fails("id-tags", "add", "TAG1", "--status", "Sometimes")
    assert "--status" in error
    assert migrated.query("SELECT COUNT(*) FROM id_tags") == [(0,)]


def test_id_tags_bad_expiry(migrated: Cli) -> None:
    error = migrated.fails("id-tags", "add", "TAG1", "--expiry", "next tuesday")
    assert "expiry must be an ISO 8601 date-time" in error
    assert migrated.query("SELECT COUNT(*) FROM id_tags") == [(0,)]


def test_id_tags_too_long(migrated: Cli) -> None:
    error = migrated.fails("id-tags", "add", "T" * 21)
    assert "1 to 20 characters" in error
    assert migrated.query("SELECT COUNT(*) FROM id_tags") == [(0,)]


def test_id_tags_too_long_parent(migrated: Cli) -> None:
    error = migrated.fails("id-tags", "add", "TAG1", "--parent", "P" * 21)
    assert "1 to 20 characters" in error


# --- settings ------------------------------------------------------------------------------------


def test_config_file_supplies_the_database_url(cli: Cli) -> None:
    db_file = cli.tmp_path / "from-config.db"
    config = cli.write("chargegrid.toml", f'database_url = "sqlite+aiosqlite:///{db_file}"\n')
    cli.ok("--config", str(config), "charge-points", "add", "CFG1", db=False)
    assert db_file.exists()
    assert not cli.db_file.exists()
    assert "CFG1" in cli.ok("--config", str(config), "charge-points", "list", db=False)
    # The same file named by the environment variable.
    assert "CFG1" in cli.ok(
        "charge-points", "list", db=False, env={"CHARGEGRID_CONFIG": str(config)}
    )


def test_database_url_option_wins_over_config_file(cli: Cli) -> None:
    other = cli.tmp_path / "other.db"
    config = cli.write("chargegrid.toml", f'database_url = "sqlite+aiosqlite:///{other}"\n')
    cli.ok("--config", str(config), "charge-points", "add", "CP1")
    assert cli.identities() == ["CP1"]
    assert not other.exists()


def test_config_file_with_an_unknown_key(cli: Cli) -> None:
    config = cli.write("chargegrid.toml", "databse_url = 'sqlite+aiosqlite:///x.db'\n")
    error = cli.fails("--config", str(config), "migrate", db=False)
    assert "invalid settings" in error
    assert "databse_url" in error


def test_config_file_with_an_invalid_value(cli: Cli) -> None:
    config = cli.write("chargegrid.toml", "commit_max_items = 0\n")
    error = cli.fails("--config", str(config), "migrate")
    assert "commit_max_items" in error


def test_config_file_missing(cli: Cli) -> None:
    error = cli.fails("--config", str(cli.tmp_path / "missing.toml"), "migrate")
    assert "missing.toml" in error


def test_config_file_not_toml(cli: Cli) -> None:
    config = cli.write("chargegrid.toml", "this is = = not toml\n")
    result = cli.run("--config", str(config), "migrate")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr


def test_serve_rejects_an_unsupported_database_url(cli: Cli) -> None:
    result = cli.run("serve", "--port", "0", "--database-url", "mysql://x", db=False, timeout=30)
    assert result.returncode != 0
    assert "database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_admin_command_rejects_an_unsupported_database_url(cli: Cli) -> None:
    result = cli.run("charge-points", "list", "--database-url", "mysql://x", db=False)
    assert result.returncode != 0
    assert "database_url must start with" in result.stderr


def test_database_url_from_the_environment(cli: Cli) -> None:
    cli.ok("charge-points", "add", "ENV1", db=False, env={"CHARGEGRID_DATABASE_URL": cli.url})
    assert cli.identities() == ["ENV1"]


def test_serve_with_an_unknown_log_level_exits_with_a_clear_message(cli: Cli) -> None:
    result = cli.run("serve", "--port", "0", env={"CHARGEGRID_LOG_LEVEL": "verbose"}, timeout=30)
    assert result.returncode != 0
    assert "log_level" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_serve_on_a_busy_port_exits_non_zero(cli: Cli) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli.run("serve", "--port", str(port), timeout=30)
    assert result.returncode != 0
    assert "address already in use" in (result.stderr + result.stdout).lower()
