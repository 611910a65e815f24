"""A real OpenLDAP ``slapd`` on loopback with one mdb database per suffix, loaded from LDIF text.

:func:`run_slapd` writes a ``slapd.conf`` into a fresh temporary directory (schemas core, cosine and
inetorgperson from ``/etc/ldap/schema``; one ``mdb`` database per suffix, each in its own sub-directory, with
a 10 MiB map; ``access to * by * read`` so that anonymous binds read everything, the rootDSE included),
starts ``slapd -d 0`` (foreground) on ``ldap://127.0.0.1:PORT/`` with a free high port, waits until the
rootDSE answers, creates the suffix entries (``ou=``, ``dc=``, ``o=`` or ``cn=`` suffixes), loads the LDIF
given, and always stops the server (SIGTERM, then SIGKILL) and removes the directory when the ``with`` block
ends. :class:`SlapdFactory` does the same for pytest fixtures (``slapd_factory`` in
:mod:`hisp.testing.fixtures`).

Each database has the root DN ``cn=admin,<suffix>`` with the password :data:`ROOT_PASSWORD`; LDIF is loaded
with ``ldapadd`` bound as the root DN of the suffix each entry falls under. slapd runs as the current user
(``-u``/``-g`` are never passed, so as root it stays root): the temporary directory and the databases in it
belong to that user, which is all slapd needs.

The suffixes must be disjoint (none under another: slapd would need glue). Dead LDAP targets for failover
tests come from :func:`hisp.testing.process.refused_port` and :func:`hisp.testing.process.black_hole`.

Example::

    with run_slapd("ou=dcdt", ldif=entries) as server:
        print(server.ldapsearch("(mail=d3@domain2.example)", "mail"))
        # ldap3: Server(server.host, port=server.port) ... search(server.base_dn, ...)

Never expose it beyond loopback: it exists for tests.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hisp.testing.process import (
    DeadTarget,
    HarnessError,
    ManagedProcess,
    black_hole,
    free_port,
    refused_port,
    wait_until,
)

__all__ = [
    "ROOT_PASSWORD",
    "DeadTarget",
    "HarnessError",
    "SlapdFactory",
    "SlapdServer",
    "black_hole",
    "ldif_records",
    "refused_port",
    "run_slapd",
    "start_slapd",
]

#: The root DN password of every test database (loopback test servers only).
ROOT_PASSWORD = "hisp-test-secret"
#: Seconds to wait for slapd to answer.
START_TIMEOUT = 15.0
#: Where Debian keeps the schemas and the backend modules.
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIRS = (Path("/usr/lib/ldap"), Path("/usr/lib/x86_64-linux-gnu/ldap"), Path("/usr/lib64/openldap"))
SCHEMAS = ("core", "cosine", "inetorgperson")


def _normalise_dn(dn: str) -> str:
    return ",".join(part.strip() for part in dn.split(",")).lower()


def ldif_records(text: str) -> list[tuple[str, str]]:
    """Split LDIF text into records: ``(dn, record text)``, the DN decoded (``dn::`` is base64).

    Folded lines (a continuation starts with one space) and comments are handled; the ``version:`` line is
    dropped.

    :param text: LDIF content records (or change records).
    :returns: the records in order.
    :raises HarnessError: a record does not start with ``dn:``.

    Spec: RFC 2849 (LDIF).
    """
    records: list[tuple[str, str]] = []
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip("\n")):
        lines = [line for line in block.split("\n") if not line.startswith("#")]
        unfolded: list[str] = []
        for line in lines:
            if line.startswith(" ") and unfolded:
                unfolded[-1] += line[1:]
            else:
                unfolded.append(line)
        unfolded = [line for line in unfolded if line.strip() and not line.lower().startswith("version:")]
        if not unfolded:
            continue
        first = unfolded[0]
        if first.lower().startswith("dn::"):
            dn = base64.b64decode(first[4:].strip()).decode("utf-8")
        elif first.lower().startswith("dn:"):
            dn = first[3:].strip()
        else:
            raise HarnessError(f"LDIF record does not start with dn: {first[:80]!r}")
        records.append((dn, "\n".join(lines) + "\n"))
    return records


class SlapdServer:
    """A running ``slapd``: its address, suffixes, LDIF loading and searches.

    :ivar host: ``"127.0.0.1"``.
    :ivar port: the TCP port.
    :ivar suffixes: the database suffixes (the rootDSE's namingContexts), as given.
    :ivar directory: its temporary directory (``slapd.conf``, databases, ``server.log``).

    Spec: RFC 4511 (LDAP); RFC 4512 section 5.1 (rootDSE namingContexts).
    """

    def __init__(self, directory: Path, suffixes: Sequence[str], *, timeout: float = START_TIMEOUT) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.suffixes = tuple(suffixes)
        self.directory = directory
        self.timeout = timeout
        self._process = ManagedProcess(directory)

    @property
    def base_dn(self) -> str:
        """The first suffix."""
        return self.suffixes[0]

    @property
    def url(self) -> str:
        """``ldap://127.0.0.1:PORT``."""
        return f"ldap://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The slapd process id (None once stopped)."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether slapd is running."""
        return self._process.running

    def log(self) -> str:
        """slapd's output so far."""
        return self._process.log()

    def root_dn(self, suffix: str | None = None) -> str:
        """The root DN that may write under ``suffix`` (default: the first): ``cn=admin,<suffix>``."""
        return f"cn=admin,{suffix or self.base_dn}"

    def suffix_of(self, dn: str) -> str:
        """The suffix ``dn`` falls under.

        :raises HarnessError: it falls under none of them.
        """
        normal = _normalise_dn(dn)
        for suffix in self.suffixes:
            tail = _normalise_dn(suffix)
            if normal == tail or normal.endswith("," + tail):
                return suffix
        raise HarnessError(f"{dn!r} is under none of the suffixes {list(self.suffixes)}")

    def load_ldif(self, text: str, *, continue_on_error: bool = False) -> None:
        """Add the LDIF entries with ``ldapadd``, each bound as the root DN of its suffix.

        :param text: LDIF (content records; change records work too).
        :param continue_on_error: pass ``-c`` (keep going after an entry fails).
        :raises HarnessError: an entry is outside every suffix, or ldapadd fails (its message included).

        Spec: RFC 2849 (LDIF); RFC 4511 section 4.7 (Add).
        """
        groups: dict[str, list[str]] = {}
        for dn, record in ldif_records(text):
            groups.setdefault(self.suffix_of(dn), []).append(record)
        for suffix, records in groups.items():
            args = ["-c"] if continue_on_error else []
            self._tool("ldapadd", *args, "-D", self.root_dn(suffix), "-w", ROOT_PASSWORD, stdin="\n".join(records))

    def ldapsearch(self, filter: str = "(objectClass=*)", *attributes: str, base: str | None = None) -> str:
        """Run an anonymous ``ldapsearch -LLL`` (subtree) and return its LDIF output.

        :param filter: the RFC 4515 filter.
        :param attributes: attributes to return (default all).
        :param base: the base DN (default :attr:`base_dn`; ``""`` with ``-s base`` semantics is not offered here).
        :returns: the output.
        :raises HarnessError: ldapsearch fails.

        Spec: RFC 4511 section 4.5 (Search); RFC 4515 (filters).
        """
        return self._tool("ldapsearch", "-LLL", "-b", base if base is not None else self.base_dn, filter, *attributes)

    def stop(self) -> None:
        """Stop slapd and remove its directory (idempotent)."""
        self._process.stop()

    # -- internal ------------------------------------------------------------------------------------------

    def _tool(self, program: str, *args: str, stdin: str | None = None) -> str:
        if shutil.which(program) is None:
            raise HarnessError(f"{program} is not installed (Debian package ldap-utils)")
        try:
            result = subprocess.run(
                [program, "-x", "-H", self.url, "-o", "nettimeout=5", *args],
                input=stdin, capture_output=True, text=True, timeout=30, check=False,
            )
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{program} did not finish in 30 s") from None
        if result.returncode != 0:
            raise HarnessError(f"{program} exited {result.returncode}: {result.stderr.strip()} {result.stdout[-500:]}")
        return result.stdout

    def _write_conf(self) -> Path:
        module_dir = next((d for d in MODULE_DIRS if (d / "back_mdb.so").exists()), None)
        lines = [f"include {SCHEMA_DIR / (name + '.schema')}" for name in SCHEMAS]
        if module_dir is not None:
            lines += [f"modulepath {module_dir}", "moduleload back_mdb"]
        lines += [
            f"pidfile {self.directory / 'slapd.pid'}",
            f"argsfile {self.directory / 'slapd.args'}",
            "access to * by * read",
        ]
        for index, suffix in enumerate(self.suffixes):
            database = self.directory / f"db{index}"
            database.mkdir(exist_ok=True)
            lines += [
                "",
                "database mdb",
                "maxsize 10485760",
                f'suffix "{suffix}"',
                f'rootdn "{self.root_dn(suffix)}"',
                f"rootpw {ROOT_PASSWORD}",
                f"directory {database}",
            ]
        conf = self.directory / "slapd.conf"
        conf.write_text("\n".join(lines) + "\n", "utf-8")
        return conf

    def _start(self, *, create_suffix_entries: bool, ldif: str) -> None:
        if not all(SCHEMA_DIR.joinpath(name + ".schema").exists() for name in SCHEMAS):
            raise HarnessError(f"the OpenLDAP schemas are not in {SCHEMA_DIR} (Debian package slapd)")
        conf = self._write_conf()
        last = ""
        for _attempt in range(3):
            self.port = free_port()
            self._process.start(["slapd", "-d", "0", "-f", str(conf), "-h", f"ldap://{self.host}:{self.port}/"])
            answered = wait_until(lambda: not self._process.running or self._answers(), timeout=self.timeout)
            if answered and self._process.running:
                break
            last = self._process.log_tail()
            self._process.terminate()
            if "address already in use" not in last.lower():
                raise HarnessError(f"slapd did not start; log:\n{last}")
        else:
            raise HarnessError(f"slapd did not start; log:\n{last}")
        if create_suffix_entries:
            self.load_ldif("\n".join(_suffix_entry(suffix) for suffix in self.suffixes))
        if ldif.strip():
            self.load_ldif(ldif)

    def _answers(self) -> bool:
        argv = ["ldapsearch", "-x", "-H", self.url, "-o", "nettimeout=1", "-LLL", "-s", "base", "-b", ""]
        result = subprocess.run(
            [*argv, "namingContexts"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return result.returncode == 0 and "namingContexts" in result.stdout


def _suffix_entry(suffix: str) -> str:
    first = suffix.split(",")[0].strip()
    attribute, _, value = first.partition("=")
    kind = attribute.strip().lower()
    classes = {"ou": "organizationalUnit", "dc": "domain", "o": "organization", "cn": "organizationalRole"}
    if kind not in classes:
        raise HarnessError(f"cannot create a suffix entry for {suffix!r}: pass create_suffix_entries=False and LDIF")
    return f"dn: {suffix}\nobjectClass: {classes[kind]}\n{kind}: {value.strip()}\n"


@contextmanager
def run_slapd(
    suffixes: str | Sequence[str] = "ou=dcdt",
    *,
    ldif: str = "",
    create_suffix_entries: bool = True,
    timeout: float = START_TIMEOUT,
) -> Iterator[SlapdServer]:
    """Run ``slapd`` for the ``with`` block; it is always stopped and its directory removed afterwards.

    :param suffixes: one suffix or several (disjoint), e.g. ``"ou=dcdt"`` or ``["dc=domain1,dc=example"]``.
    :param ldif: entries to load after start (see :meth:`SlapdServer.load_ldif`).
    :param create_suffix_entries: add the suffix entries themselves (``ou``/``dc``/``o``/``cn`` suffixes).
    :param timeout: seconds to wait for the server to answer.
    :returns: a context manager yielding the running :class:`SlapdServer`.
    :raises HarnessError: slapd or the schemas are missing, it does not answer in time, or the LDIF fails.

    Spec: RFC 4511 (LDAP); RFC 2849 (LDIF); RFC 2798 (inetOrgPerson).
    """
    server = start_slapd(suffixes, ldif=ldif, create_suffix_entries=create_suffix_entries, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


def start_slapd(
    suffixes: str | Sequence[str] = "ou=dcdt",
    *,
    ldif: str = "",
    create_suffix_entries: bool = True,
    timeout: float = START_TIMEOUT,
) -> SlapdServer:
    """Start ``slapd`` (see :func:`run_slapd`); the caller must call :meth:`SlapdServer.stop`.

    :param suffixes: as :func:`run_slapd`.
    :param ldif: as :func:`run_slapd`.
    :param create_suffix_entries: as :func:`run_slapd`.
    :param timeout: as :func:`run_slapd`.
    :returns: the running server.
    :raises HarnessError: as :func:`run_slapd`.

    Spec: RFC 4511.
    """
    names = [suffixes] if isinstance(suffixes, str) else list(suffixes)
    if not names:
        raise HarnessError("give at least one suffix")
    server = SlapdServer(Path(tempfile.mkdtemp(prefix="hisp-slapd-")), names, timeout=timeout)
    try:
        server._start(create_suffix_entries=create_suffix_entries, ldif=ldif)
    except BaseException:
        server.stop()
        raise
    return server


class SlapdFactory:
    """Starts servers on demand and stops them all in :meth:`close` (for pytest fixtures).

    Spec: RFC 4511.
    """

    def __init__(self, *, timeout: float = START_TIMEOUT) -> None:
        self.timeout = timeout
        self.servers: list[SlapdServer] = []

    def __call__(
        self, suffixes: str | Sequence[str] = "ou=dcdt", *, ldif: str = "", create_suffix_entries: bool = True
    ) -> SlapdServer:
        """Start a server (see :func:`run_slapd`).

        :raises HarnessError: as :func:`run_slapd`.
        """
        server = start_slapd(suffixes, ldif=ldif, create_suffix_entries=create_suffix_entries, timeout=self.timeout)
        self.servers.append(server)
        return server

    def close(self) -> None:
        """Stop every server started here."""
        while self.servers:
            self.servers.pop().stop()
