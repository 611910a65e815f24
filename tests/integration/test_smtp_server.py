"""The SMTP listeners on loopback, against independent clients: swaks (edge) and aiosmtplib (peer HISP).

What this proves: the submission listener's STARTTLS + AUTH (PLAIN, LOGIN) rules and sender ownership, the
backbone's no-open-relay rule, size and line rules, connection limit and timeout, and the adapter's contract
with the ``accept`` callback: exact bytes handed on, a HispError becomes its own reply, and no 250 unless the
callback returned success (a recording fake stands in for the pipeline: it is the contract, not a mock).
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from cryptography.hazmat.primitives import serialization

from hisp.adapters.smtp_server import (
    EdgeUser,
    ListenerKind,
    ListenerSettings,
    SmtpEnvelope,
    SmtpListener,
    StaticAuthenticator,
    server_tls_context,
)
from hisp.core import devca
from hisp.core.smtp_policy import hash_password
from hisp.errors import (
    CertificateNotFound,
    DecryptionError,
    DiscoveryUnavailable,
    HispError,
    MessageFormatError,
    PolicyViolation,
    SignatureError,
    StorageError,
    TrustError,
)

SENDER = "dr.smith@direct.clinic.example"
HOSTED = "dr.jones@direct.hospital.example"
PASSWORD = "correct horse battery staple"


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A server certificate and key from a throw-away development CA, as PEM files."""
    now = datetime.now(UTC)
    ca = devca.create_ca("hisp SMTP test CA", at=now)
    leaf = devca.issue_certificate(ca, at=now, domain="mail.hisp.test")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(leaf.certificate.to_pem() + ca.certificate.to_pem())
    key.write_bytes(
        leaf.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert), str(key)


@pytest.fixture(scope="module")
def users() -> StaticAuthenticator:
    return StaticAuthenticator([EdgeUser.create("smith", hash_password(PASSWORD), [SENDER])])


class Recorder:
    """The pipeline's side of the contract: records every call; stores only when it answers success."""

    def __init__(self, behaviour: Callable[[], str] | None = None) -> None:
        self.calls: list[tuple[SmtpEnvelope, bytes]] = []
        self.stored: list[bytes] = []
        self.behaviour = behaviour

    async def __call__(self, envelope: SmtpEnvelope, raw: bytes) -> str:
        self.calls.append((envelope, raw))
        reply = self.behaviour() if self.behaviour else "250 2.0.0 Ok: queued as 1"
        self.stored.append(raw)
        return reply


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def message(sender: str = SENDER, to: str = HOSTED, body: str = "Referral attached.\r\n") -> bytes:
    return (
        f"From: Dr Smith <{sender}>\r\nTo: {to}\r\nSubject: referral\r\nMessage-ID: <1@clinic>\r\n\r\n{body}"
    ).encode()


async def swaks(*args: str) -> tuple[int, str]:
    assert shutil.which("swaks"), "swaks is not installed (Debian package swaks; .ci/run installs it)"
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", "127.0.0.1", "--helo", "edge.clinic.test", "--timeout", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode("utf-8", "replace")


def submission(tls_files: tuple[str, str], **options: Any) -> ListenerSettings:
    return ListenerSettings(
        ListenerKind.SUBMISSION, tls_context=server_tls_context(*tls_files), hostname="hisp.clinic.test",
        auth_failure_delay=options.pop("auth_failure_delay", 0.3), **options,
    )


def backbone(**options: Any) -> ListenerSettings:
    return ListenerSettings(ListenerKind.BACKBONE, hostname="hisp.hospital.test", **options)


def hosted(address: str) -> bool:
    return address == HOSTED


# -- submission, with swaks as the edge client -------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth_submits_exact_bytes(tls_files: tuple[str, str], users: StaticAuthenticator,
                                                 mechanism: str, tmp_path: Path) -> None:
    data = message(body="line one\r\n.leading dot survives\r\n")
    (tmp_path / "msg").write_bytes(data[:-2])  # swaks ends the data with CRLF . CRLF itself

    async def scenario() -> tuple[int, str, Recorder]:
        recorder = Recorder()
        async with SmtpListener(submission(tls_files), recorder, authenticator=users) as listener:
            code, out = await swaks(
                "--port", str(listener.port), "--tls", "--auth", mechanism, "--auth-user", "smith",
                "--auth-password=" + PASSWORD, "--from", SENDER, "--to", "someone@elsewhere.example",
                "--data", "@" + str(tmp_path / "msg"),
            )
        return code, out, recorder

    code, out, recorder = run(scenario())
    assert code == 0, out
    assert "235 2.7.0" in out
    assert len(recorder.stored) == 1
    envelope, raw = recorder.calls[0]
    assert raw == data
    assert envelope.listener is ListenerKind.SUBMISSION
    assert envelope.auth_user == "smith" and envelope.tls and envelope.tls_version
    assert envelope.mail_from == SENDER and envelope.recipients == ("someone@elsewhere.example",)


def test_swaks_wrong_password_535_after_delay(tls_files: tuple[str, str], users: StaticAuthenticator) -> None:
    async def scenario() -> tuple[int, str, float, Recorder]:
        recorder = Recorder()
        settings = submission(tls_files, auth_failure_delay=0.8)
        async with SmtpListener(settings, recorder, authenticator=users) as listener:
            start = asyncio.get_running_loop().time()
            code, out = await swaks(
                "--port", str(listener.port), "--tls", "--auth", "PLAIN", "--auth-user", "smith",
                "--auth-password=wrong", "--from", SENDER, "--to", HOSTED,
            )
            elapsed = asyncio.get_running_loop().time() - start
        return code, out, elapsed, recorder

    code, out, elapsed, recorder = run(scenario())
    assert code != 0
    assert "535 5.7.8" in out
    assert elapsed >= 0.8
    assert recorder.calls == []


def test_each_failed_auth_logged_once_with_peer_and_name_never_the_password(
    tls_files: tuple[str, str], users: StaticAuthenticator, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator sees every failed login (fail2ban can act on it): peer and name tried, never the password."""

    def plain(name: bytes, password: bytes) -> bytes:
        return base64.b64encode(b"\0" + name + b"\0" + password)

    async def scenario() -> tuple[list[int], int]:
        codes: list[int] = []
        async with SmtpListener(submission(tls_files, auth_failure_delay=0.05), Recorder(),
                                authenticator=users) as listener:
            async def connect() -> aiosmtplib.SMTP:
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, start_tls=False, timeout=5)
                await client.connect()
                await client.ehlo()
                await client.starttls(tls_context=client_tls())
                await client.ehlo()
                return client

            client = await connect()  # aiosmtpd allows 3 AUTH commands per session
            for name, password in ((b"smith", b"wrong password one"), (b"nobody", b"wrong password two"),
                                   (b"evil\r\nhisp.smtp WARNING forged", b"wrong password three")):
                codes.append((await client.execute_command(b"AUTH", b"PLAIN", plain(name, password))).code)
            client.close()
            client = await connect()
            ok = await client.execute_command(b"AUTH", b"PLAIN", plain(b"smith", PASSWORD.encode()))
            client.close()
            return codes, ok.code

    with caplog.at_level("INFO", logger="hisp.smtp"):
        codes, ok = run(scenario())
    assert codes == [535, 535, 535] and ok == 235
    failed = [r for r in caplog.records if r.name == "hisp.smtp" and r.levelname == "WARNING"]
    assert len(failed) == 3  # once per attempt, and none for the successful one
    lines = [r.getMessage() for r in failed]
    assert all(line.startswith("AUTH PLAIN failed from 127.0.0.1:") for line in lines)
    assert lines[0].endswith("for user 'smith'") and lines[1].endswith("for user 'nobody'")
    assert "\n" not in lines[2] and "'evil\\r\\nhisp.smtp WARNING forged'" in lines[2]  # escaped, not forged
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "wrong password" not in logged and PASSWORD not in logged
    assert any("authenticated as smith" in r.getMessage() for r in caplog.records if r.levelname == "INFO")


def test_swaks_spoofed_mail_from_550(tls_files: tuple[str, str], users: StaticAuthenticator) -> None:
    async def scenario() -> tuple[int, str, Recorder]:
        recorder = Recorder()
        async with SmtpListener(submission(tls_files), recorder, authenticator=users) as listener:
            code, out = await swaks(
                "--port", str(listener.port), "--tls", "--auth", "LOGIN", "--auth-user", "smith",
                "--auth-password=" + PASSWORD, "--from", "dr.jones@direct.hospital.example", "--to", HOSTED,
            )
        return code, out, recorder

    code, out, recorder = run(scenario())
    assert code != 0
    assert "550 5.7.1" in out
    assert recorder.calls == []


def test_swaks_spoofed_from_header_550(tls_files: tuple[str, str], users: StaticAuthenticator,
                                       tmp_path: Path) -> None:
    (tmp_path / "msg").write_bytes(message(sender="boss@direct.clinic.example"))

    async def scenario() -> tuple[int, str, Recorder]:
        recorder = Recorder()
        async with SmtpListener(submission(tls_files), recorder, authenticator=users) as listener:
            code, out = await swaks(
                "--port", str(listener.port), "--tls", "--auth", "PLAIN", "--auth-user", "smith",
                "--auth-password=" + PASSWORD, "--from", SENDER, "--to", HOSTED, "--data", "@" + str(tmp_path / "msg"),
            )
        return code, out, recorder

    code, out, recorder = run(scenario())
    assert code != 0
    assert "550 5.7.1 From header" in out
    assert recorder.calls == []


def test_swaks_without_tls_cannot_auth_or_send(tls_files: tuple[str, str], users: StaticAuthenticator) -> None:
    async def scenario() -> tuple[int, str, Recorder]:
        recorder = Recorder()
        async with SmtpListener(submission(tls_files), recorder, authenticator=users) as listener:
            code, out = await swaks(
                "--port", str(listener.port), "--auth", "PLAIN", "--auth-user", "smith",
                "--auth-password=" + PASSWORD, "--from", SENDER, "--to", HOSTED,
            )
        return code, out, recorder

    code, out, recorder = run(scenario())
    assert code != 0
    assert "250-STARTTLS" in out and "AUTH" not in out.replace("--auth", "")  # AUTH is not offered in clear
    assert "did not advertise authentication" in out
    assert recorder.calls == []


def test_auth_and_mail_before_starttls_refused(tls_files: tuple[str, str], users: StaticAuthenticator) -> None:
    async def scenario() -> list[tuple[int, str]]:
        async with SmtpListener(submission(tls_files), Recorder(), authenticator=users) as listener:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, start_tls=False, timeout=5)
            await client.connect()
            ehlo = await client.ehlo()
            auth = await client.execute_command(b"AUTH", b"PLAIN", b"AHNtaXRoAHg=")
            mail = await client.execute_command(b"MAIL", b"FROM:<" + SENDER.encode() + b">")
            await client.starttls(tls_context=client_tls())
            await client.ehlo()
            after_tls_mail = await client.execute_command(b"MAIL", b"FROM:<" + SENDER.encode() + b">")
            assert "auth" in client.esmtp_extensions
            client.close()
            return [(ehlo.code, ehlo.message), (auth.code, auth.message), (mail.code, mail.message),
                    (after_tls_mail.code, after_tls_mail.message)]

    ehlo, auth, mail, after_tls_mail = run(scenario())
    assert "STARTTLS" in ehlo[1] and "AUTH" not in ehlo[1]
    assert auth[0] == 530 and auth[1].startswith("5.7.0")
    assert mail[0] == 530
    assert after_tls_mail[0] == 530 and "Authentication required" in after_tls_mail[1]


def test_swaks_size_limit_552(tls_files: tuple[str, str], users: StaticAuthenticator, tmp_path: Path) -> None:
    (tmp_path / "msg").write_bytes(message(body="x" * 70 + "\r\n") * 100)

    async def scenario() -> tuple[int, str, Recorder, int]:
        recorder = Recorder()
        settings = submission(tls_files, max_message_size=4000)
        async with SmtpListener(settings, recorder, authenticator=users) as listener:
            code, out = await swaks(
                "--port", str(listener.port), "--tls", "--auth", "PLAIN", "--auth-user", "smith",
                "--auth-password=" + PASSWORD, "--from", SENDER, "--to", HOSTED, "--data", "@" + str(tmp_path / "msg"),
            )
            # SIZE is advertised, and a declared size over it is refused at MAIL already
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, start_tls=True, timeout=5,
                                     tls_context=client_tls(), username="smith", password=PASSWORD)
            await client.connect()
            assert client.esmtp_extensions.get("size") == "4000"
            declared = await client.execute_command(b"MAIL", b"FROM:<" + SENDER.encode() + b">", b"SIZE=5000")
            client.close()
        return code, out, recorder, declared.code

    code, out, recorder, declared = run(scenario())
    assert code != 0
    assert "552 5.3.4" in out
    assert declared == 552
    assert recorder.calls == []


def test_swaks_bare_lf_refused(tls_files: tuple[str, str], users: StaticAuthenticator, tmp_path: Path) -> None:
    # --no-data-fixup sends the file verbatim, so it carries its own end-of-data line
    (tmp_path / "msg").write_bytes(message().replace(b"\r\nSubject", b"\nSubject") + b".\r\n")

    async def scenario() -> tuple[int, str, Recorder]:
        recorder = Recorder()
        async with SmtpListener(submission(tls_files), recorder, authenticator=users) as listener:
            code, out = await swaks(
                "--port", str(listener.port), "--tls", "--auth", "PLAIN", "--auth-user", "smith",
                "--auth-password=" + PASSWORD, "--from", SENDER, "--to", HOSTED, "--data", "@" + str(tmp_path / "msg"),
                "--no-data-fixup",
            )
        return code, out, recorder

    code, out, recorder = run(scenario())
    assert code != 0
    assert "554 5.6.0" in out
    assert recorder.calls == []


# -- backbone, with aiosmtplib as the peer HISP -----------------------------------------------------------


def test_backbone_no_open_relay_and_unknown_recipient() -> None:
    async def scenario() -> tuple[list[tuple[int, str]], Recorder]:
        recorder = Recorder()
        async with SmtpListener(backbone(), recorder, is_hosted=hosted) as listener:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, timeout=5)
            await client.connect()
            assert client.supports_extension("starttls") is False  # no TLS context given here
            assert "auth" not in client.esmtp_extensions
            await client.mail("peer@direct.other.example")
            replies = []
            for rcpt in ("victim@gmail.example", "nobody@direct.hospital.example", HOSTED.upper()):
                reply = await client.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
                replies.append((reply.code, reply.message))
            data = await client.data(message(sender="peer@direct.other.example"))
            replies.append((data.code, data.message))
            client.close()
        return replies, recorder

    replies, recorder = run(scenario())
    assert replies[0][0] == 550 and replies[0][1].startswith("5.1.1")
    assert replies[1][0] == 550 and replies[1][1].startswith("5.1.1")
    assert replies[2][0] == 250
    assert replies[3][0] == 250
    assert [env.recipients for env, _ in recorder.calls] == [(HOSTED,)]


def test_backbone_starttls_offered_not_required_and_exact_bytes(tls_files: tuple[str, str]) -> None:
    data = message(sender="peer@direct.other.example", body=".\r\n..\r\n.x\r\nend\r\n") + b"\xe9\xff 8bit\r\n"

    async def scenario() -> Recorder:
        recorder = Recorder()
        settings = backbone(tls_context=server_tls_context(*tls_files))
        async with SmtpListener(settings, recorder, is_hosted=hosted) as listener:
            for start_tls in (False, True):
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, timeout=5,
                                         start_tls=start_tls, tls_context=client_tls())
                await client.connect()
                await client.sendmail("" if start_tls else "peer@direct.other.example", [HOSTED], data)
                await client.quit()
        return recorder

    recorder = run(scenario())
    assert [raw for _, raw in recorder.calls] == [data, data]
    assert [env.tls for env, _ in recorder.calls] == [False, True]
    assert [env.mail_from for env, _ in recorder.calls] == ["peer@direct.other.example", ""]


ERRORS = [
    (SignatureError("bad signature"), 554, "5.7.5"),
    (DecryptionError("not encrypted to us"), 554, "5.7.5"),
    (TrustError("untrusted signer", reason="untrusted signer"), 554, "5.7.1"),
    (PolicyViolation("message is not encrypted"), 554, "5.7.1"),
    (MessageFormatError("not MIME"), 554, "5.6.0"),
    (CertificateNotFound("no certificate for sender"), 550, "5.7.31"),
    (DiscoveryUnavailable("LDAP down"), 451, "4.4.3"),
    (StorageError("disk full"), 451, "4.3.0"),
    (RuntimeError("secret /etc/hisp/key.pem stack detail"), 451, "4.3.0"),
]


@pytest.mark.parametrize(("error", "code", "status"), ERRORS, ids=[type(e[0]).__name__ for e in ERRORS])
def test_accept_errors_map_to_their_reply_and_nothing_stored(error: Exception, code: int, status: str) -> None:
    def fail() -> str:
        raise error

    async def scenario() -> tuple[int, str, Recorder]:
        recorder = Recorder(fail)
        async with SmtpListener(backbone(), recorder, is_hosted=hosted) as listener:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, timeout=5)
            await client.connect()
            with pytest.raises(aiosmtplib.SMTPDataError) as caught:
                await client.sendmail("peer@direct.other.example", [HOSTED], message())
            client.close()
        return caught.value.code, caught.value.message, recorder

    reply_code, text, recorder = run(scenario())
    assert (reply_code, text.split()[0]) == (code, status)
    if isinstance(error, HispError):
        assert text == f"{status} {error.message}"
    else:
        assert "secret" not in text and "RuntimeError" not in text
    assert len(recorder.calls) == 1 and recorder.stored == []


@pytest.mark.parametrize("returned", [None, "OK", "250 ok\r\n250 smuggled", "2xx fine"], ids=["None", "no-code",
                                                                                               "crlf", "bad-code"])
def test_accept_malformed_return_is_451(returned: Any) -> None:
    async def scenario() -> int:
        async def accept(envelope: SmtpEnvelope, raw: bytes) -> Any:
            return returned

        async with SmtpListener(backbone(), accept, is_hosted=hosted) as listener:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, timeout=5)
            await client.connect()
            with pytest.raises(aiosmtplib.SMTPDataError) as caught:
                await client.sendmail("peer@direct.other.example", [HOSTED], message())
            client.close()
        return caught.value.code

    assert run(scenario()) == 451


def test_line_too_long_500_and_connection_limit_and_timeout() -> None:
    async def scenario() -> tuple[int, bytes, bytes, Recorder]:
        recorder = Recorder()
        settings = backbone(max_connections=2, command_timeout=0.5)
        async with SmtpListener(settings, recorder, is_hosted=hosted) as listener:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, timeout=5)
            await client.connect()
            with pytest.raises(aiosmtplib.SMTPDataError) as caught:
                await client.sendmail("peer@direct.other.example", [HOSTED], message(body="y" * 1200 + "\r\n"))
            # second connection is admitted; a third is told 421 and closed
            reader2, writer2 = await asyncio.open_connection("127.0.0.1", listener.port)
            await reader2.readline()
            reader3, writer3 = await asyncio.open_connection("127.0.0.1", listener.port)
            refused = await reader3.read(200)
            # an idle connection is closed after the command timeout
            idle = await asyncio.wait_for(reader2.read(200), 3)
            client.close()
            writer2.close()
            writer3.close()
        return caught.value.code, refused, idle, recorder

    code, refused, idle, recorder = run(scenario())
    assert code == 500
    assert refused.startswith(b"421 4.7.0")
    assert idle == b""
    assert recorder.calls == []


def test_reuse_port_lets_two_listeners_share_one_port_and_both_answer() -> None:
    """``reuse_port`` (``hisp serve --workers N``): a second listener binds the same port; without it, it cannot."""

    async def scenario() -> tuple[int, int]:
        first, second = Recorder(), Recorder()
        async with SmtpListener(backbone(reuse_port=True), first, is_hosted=hosted) as a, \
                SmtpListener(backbone(port=a.port, reuse_port=True), second, is_hosted=hosted) as b:
            assert b.port == a.port
            with pytest.raises(OSError):
                await SmtpListener(backbone(port=a.port), Recorder(), is_hosted=hosted).start()
            for _ in range(40):  # the kernel spreads connections: both get some (not a fixed share)
                if first.calls and second.calls:
                    break
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=a.port, timeout=5)
                await client.connect()
                await client.sendmail("peer@direct.other.example", [HOSTED], message(sender="p@x.example"))
                await client.quit()
        return len(first.calls), len(second.calls)

    first, second = run(scenario())
    assert first >= 1 and second >= 1


def test_malformed_paths_are_syntax_errors_and_usual_ones_accepted() -> None:
    # RFC 5321 section 4.1.2: a Path is "<" Mailbox ">"; a lone "<" is a malformed address, 553 5.1.3 (aiosmtpd's
    # stdlib parser alone would crash on it and answer "500 Error: (IndexError) ...")
    async def scenario() -> list[tuple[int, str]]:
        async with SmtpListener(backbone(), Recorder(), is_hosted=hosted) as listener:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, timeout=5)
            await client.connect()
            replies = []
            for arg in (b"FROM:<", b"FROM:<peer@direct.other.example> SIZE=99"):
                reply = await client.execute_command(b"MAIL", arg)
                replies.append((reply.code, reply.message))
            reply = await client.execute_command(b"RCPT", f"TO:<{HOSTED}>".encode())
            replies.append((reply.code, reply.message))
            client.close()
        return replies

    replies = run(scenario())
    assert [code for code, _ in replies] == [553, 250, 250], replies
    assert replies[0][1].startswith("5.1.3")
